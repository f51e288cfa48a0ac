//! Consumes `P.events`: inbound events fan out to every matching subscription, delivery tasks
//! (retries, deferrals, replays, test events) go to their one subscription. One file a step:
//! consume and settle (here), [`route`] (event or task), [`attempt`] (one delivery) and
//! [`handoff`] (retry, defer, dead-letter). A message is acked only once each of its deliveries
//! has succeeded or been handed to a delay queue or `P.dead` with a confirm.

mod acks;
mod attempt;
mod handoff;
pub mod lanes;
mod route;
mod shares;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::Activity;
use crate::broker::{BrokerError, Consumer, Inbound, Publisher, Session, Topology};
use crate::delivery::Deliverer;
use crate::delivery::limit::EndpointLimiter;
use crate::endpoint_health::EndpointHealth;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::subscriptions::{Directory, LookupError};
use acks::Acks;
use lanes::Lanes;
use shares::Shares;

pub struct Dispatcher {
    directory: Arc<Directory>,
    activity: Arc<Activity>,
    health: Arc<EndpointHealth>,
    deliverer: Deliverer,
    publisher: Publisher,
    topology: Arc<Topology>,
    metrics: Metrics,
    /// Seals the tasks and dead letters it publishes, and checks the tasks it consumes.
    keys: Arc<Keyring>,
    /// Bounds each account's deliveries under way (half of `MAX_IN_FLIGHT`, as `per_account`),
    /// taken before `limit`: see [`shares`].
    shares: Shares,
    /// Bounds HTTP attempts in flight across all messages (`MAX_IN_FLIGHT`).
    limit: Semaphore,
    /// Bounds attempts in flight per subscription (`MAX_IN_FLIGHT_PER_ENDPOINT`).
    endpoints: EndpointLimiter,
    /// Bounds the messages started (taken from their lanes) and not yet settled.
    starts: Arc<Semaphore>,
    max_started: usize,
    /// The intake window (`PREFETCH`).
    window: usize,
    /// Messages of one account under way at once, and its deliveries under way ([`shares`]):
    /// half of `MAX_IN_FLIGHT` (at least `MAX_IN_FLIGHT_PER_ENDPOINT`), so other accounts always
    /// find room to start and to deliver.
    per_account: usize,
}

/// Past this many bytes waiting in the lanes, every parkable message that arrives is parked (what
/// waits is held in memory; a window of 256 KiB events would otherwise hold gigabytes).
pub const INTAKE_BYTES: usize = 64 * 1024 * 1024;
/// Parks each message started earns.
const PARKS_PER_START: usize = 4;

/// How many messages may still be parked: earned by messages started, at most a quarter of the
/// window saved up.
struct ParkingBudget {
    left: usize,
    most: usize,
}

impl ParkingBudget {
    fn new(window: usize) -> ParkingBudget {
        let most = (window / 4).max(PARKS_PER_START);
        ParkingBudget { left: most, most }
    }

    fn earn(&mut self) {
        self.left = (self.left + PARKS_PER_START).min(self.most);
    }

    fn spend(&mut self) -> bool {
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }
}

/// Tells the consume loop, when dropped, that a message of `account` has finished.
struct Finish {
    to: tokio::sync::mpsc::UnboundedSender<String>,
    account: Option<String>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(account) = self.account.take() {
            let _ = self.to.send(account);
        }
    }
}

/// What the dispatcher works with, built by the app.
pub struct Parts {
    pub directory: Arc<Directory>,
    pub activity: Arc<Activity>,
    pub health: Arc<EndpointHealth>,
    pub deliverer: Deliverer,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub metrics: Metrics,
    pub keys: Arc<Keyring>,
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
    /// `PREFETCH`: what the broker hands this consumer before acks.
    pub prefetch: usize,
}

/// Why a message could not be handled now; it is requeued and tried again.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Keys(crate::seal::Unverified),
}

impl Dispatcher {
    pub fn new(parts: Parts) -> Dispatcher {
        let endpoints = EndpointLimiter::new(
            parts.max_in_flight_per_endpoint,
            Some(parts.metrics.endpoint_limits()),
        );
        let per_account = (parts.max_in_flight / 2).max(parts.max_in_flight_per_endpoint);
        Dispatcher {
            directory: parts.directory,
            activity: parts.activity,
            health: parts.health,
            deliverer: parts.deliverer,
            publisher: parts.publisher,
            topology: parts.topology,
            metrics: parts.metrics,
            keys: parts.keys,
            shares: Shares::new(per_account),
            limit: Semaphore::new(parts.max_in_flight),
            endpoints,
            starts: Arc::new(Semaphore::new(parts.max_in_flight)),
            max_started: parts.max_in_flight,
            window: parts.prefetch,
            per_account,
        }
    }

    /// Takes messages from `consumer` until `stop` fires or the consumer ends (connection lost):
    /// each waits in its account's lane ([`lanes`]) until its turn, then is handled in its own
    /// task on `tracker` (at most `MAX_IN_FLIGHT` at once, half of them of one account). Each task holds the session, so its
    /// channels stay open until the task has settled its message. What still waits when this
    /// returns is not acked: the broker hands it out again when the channel closes.
    pub async fn consume(
        self: Arc<Self>,
        mut consumer: Consumer,
        session: Arc<Session>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let mut lanes = Lanes::new(self.per_account);
        let mut parking = ParkingBudget::new(self.window);
        let (finished, mut finishes) = tokio::sync::mpsc::unbounded_channel::<String>();
        // The acks of this consumer's messages, gathered; the gatherer holds the session until
        // the last task's ack is out.
        let (acks, gatherer) = Acks::start(self.metrics.clone(), self.window);
        let held = session.clone();
        tracker.spawn(async move {
            gatherer.await;
            drop(held);
        });
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(account) = finishes.recv() => lanes.finished(&account),
                permit = self.starts.clone().acquire_owned(), if lanes.ready() => {
                    let permit = permit.expect("semaphore never closed");
                    let (account, message) = lanes.pop().expect("checked: ready");
                    parking.earn();
                    // Reports the finish even if settling panics, or the account's turns stop.
                    let finish = Finish {
                        to: finished.clone(),
                        account: Some(account),
                    };
                    let settle = self.clone().settle(message, acks.clone(), session.clone(), permit, finish);
                    tracker.spawn(settle);
                }
                next = consumer.next_until(&stop, "events") => {
                    let Some(message) = next else { break };
                    acks.received(message.delivery_tag());
                    self.admit(message, &mut lanes, &mut parking, &acks, &session, &tracker);
                }
            }
            self.metrics.intake_waiting(lanes.len());
        }
        self.metrics.intake_waiting(0);
    }

    /// Queues `message` in its account's lane — or, when the window is full and that account
    /// holds more than its share of what waits, parks it in the first delay queue so the window
    /// keeps moving for everyone else.
    fn admit(
        self: &Arc<Self>,
        message: Inbound,
        lanes: &mut Lanes,
        parking: &mut ParkingBudget,
        acks: &Acks,
        session: &Arc<Session>,
        tracker: &TaskTracker,
    ) {
        let account = lanes::account_of(message.body());
        let started = self.max_started - self.starts.available_permits();
        // Full: most of the window held, most of it waiting, and deeply (four rounds of an
        // account's quota: a shallow `PREFETCH` never parks, it would only churn) — or too many
        // bytes waiting.
        let waiting = lanes.len();
        let full = (waiting + started) * 8 >= self.window * 7
            && waiting * 2 >= self.window
            && waiting >= 4 * self.per_account;
        let parkable = !message.expires() && !self.topology.retries.is_empty();
        // Past the byte budget anything parkable is parked (memory first); otherwise only an
        // account over its share, and only as fast as the budget allows (each message started
        // earns a few parks), so a backlog larger than the window is not cycled through the
        // delay queue at the broker's full speed.
        let park = parkable
            && (lanes.bytes() >= INTAKE_BYTES
                || full && lanes.over_share(&account) && parking.spend());
        if park {
            let aside = self
                .clone()
                .set_aside(message, account, acks.clone(), session.clone());
            tracker.spawn(aside);
            return;
        }
        let bytes = message.body().len();
        lanes.push(account, message, bytes);
    }

    /// Puts `message` back in the first delay queue, confirmed, then acks it; requeues it if the
    /// broker did not take it.
    async fn set_aside(
        self: Arc<Self>,
        message: Inbound,
        account: String,
        acks: Acks,
        _session: Arc<Session>,
    ) {
        let queue = &self.topology.retries[0];
        let parked = self.publisher.park(&queue.name, &message).await;
        if parked.is_ok() {
            self.metrics.event_parked(&account, &queue.label);
        }
        self.conclude(message, parked.map_err(HandleError::from), &acks)
            .await;
    }

    /// Routes one message, then acks it, or hands it back when its outcome could not be made
    /// safe in the broker. `_started` is its place among the messages started.
    async fn settle(
        self: Arc<Self>,
        message: Inbound,
        acks: Acks,
        _session: Arc<Session>,
        _started: tokio::sync::OwnedSemaphorePermit,
        _finish: Finish,
    ) {
        let outcome = self.route(&message).await;
        self.conclude(message, outcome, &acks).await;
    }

    /// Has `message` acked once its outcome is safe in the broker (with others, see [`acks`]),
    /// else hands it back after a pause (so a broker in trouble is not hammered with it).
    async fn conclude(&self, message: Inbound, outcome: Result<(), HandleError>, acks: &Acks) {
        match outcome {
            Ok(()) => acks.settled(Box::new(message)),
            // Boxed: the rare path's future (the reject's) would otherwise be part of every
            // message's task, copied when it is spawned.
            Err(e) => Box::pin(hand_back(message, e, acks)).await,
        }
    }
}

/// Requeues `message` after a pause, since its outcome could not be made safe in the broker.
async fn hand_back(message: Inbound, error: HandleError, acks: &Acks) {
    tracing::error!(error = %error, "could not hand the message on; requeueing it");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = message.requeue().await;
    acks.handed_back(message.delivery_tag());
}
