//! Consumes `P.events`: inbound events fan out to every matching subscription, delivery tasks
//! (retries, deferrals, replays, test events) go to their one subscription. One file a step:
//! consume and settle (here; the consumer's channel and its moves in [`intake`], its acks in
//! [`acks`]), [`route`] (event or task), [`attempt`] (one delivery) and [`handoff`] (retry,
//! defer, dead-letter; what is handed on to the same queue at the same time travels as one
//! message, [`gather`]). A message is acked only once each of its deliveries
//! has succeeded or been handed to a delay queue or `P.dead` with a confirm.

mod acks;
mod attempt;
mod gather;
mod handoff;
mod intake;
pub mod lanes;
mod route;
mod shares;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::Activity;
use crate::broker::{Broker, BrokerError, Consumer, Inbound, Session};
use crate::delivery::Deliverer;
use crate::delivery::limit::EndpointLimiter;
use crate::endpoint_health::EndpointHealth;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::subscriptions::{Directory, LookupError};
use acks::{Acks, AcksWatch};
use gather::Gatherer;
use handoff::Parked;
use intake::{Intake, MAX_LEFT, Opening, Taken, next_of, opened};
use lanes::Lanes;
use shares::Shares;

pub struct Dispatcher {
    directory: Arc<Directory>,
    activity: Arc<Activity>,
    health: Arc<EndpointHealth>,
    deliverer: Deliverer,
    /// Its topology and publisher, and where a fresh events consumer comes from (see [`Intake`]).
    broker: Broker,
    metrics: Metrics,
    /// Seals the tasks and dead letters it publishes, and checks the tasks it consumes.
    keys: Arc<Keyring>,
    /// Hands tasks to the delay queues, gathered by queue and account.
    retries: Arc<Gatherer<Parked>>,
    /// Hands dead letters to `P.dead`, gathered.
    dead: Arc<Gatherer<crate::wire::DeadLetter>>,
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
    pub broker: Broker,
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
        let (publisher, bundles) = (&parts.broker.publisher, parts.broker.topology.bundles);
        let retries = Gatherer::new(publisher.clone(), parts.keys.clone(), bundles);
        let dead = Gatherer::new(publisher.clone(), parts.keys.clone(), bundles);
        Dispatcher {
            retries,
            dead,
            directory: parts.directory,
            activity: parts.activity,
            health: parts.health,
            deliverer: parts.deliverer,
            broker: parts.broker,
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
    /// task on `tracker` (at most `MAX_IN_FLIGHT` at once, half of them of one account). Each task
    /// holds the session, and its channel's ack gatherer the channel, so both stay open until the
    /// task has settled its message. When a delivery under way holds up the acks behind it, the
    /// consumer moves to a fresh channel ([`Intake`]). What still waits when this returns is not
    /// acked: the broker hands it out again when the channel closes.
    pub async fn consume(
        self: Arc<Self>,
        consumer: Consumer,
        session: Arc<Session>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let mut lanes = Lanes::new(self.per_account);
        let mut parking = ParkingBudget::new(self.window);
        let (finished, mut finishes) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut current = self.intake(consumer, &session, &tracker);
        // The consumer moved away from, while it still hands out what it was sent.
        let mut cancelled: Option<Intake> = None;
        let mut left: Vec<AcksWatch> = Vec::new();
        let mut moved = false;
        // A fresh consumer being opened: the broker's answer can take a while when it is busy (with
        // the very lone acks the move is for), and the intake must not stop meanwhile.
        let mut opening: Option<Opening<'_>> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(account) = finishes.recv() => lanes.finished(&account),
                permit = self.starts.clone().acquire_owned(), if lanes.ready() => {
                    let permit = permit.expect("semaphore never closed");
                    let (account, Taken { message, acks }) = lanes.pop().expect("checked: ready");
                    parking.earn();
                    // Reports the finish even if settling panics, or the account's turns stop.
                    let finish = Finish {
                        to: finished.clone(),
                        account: Some(account),
                    };
                    let settle = self.clone().settle(message, acks, session.clone(), permit, finish);
                    tracker.spawn(settle);
                }
                next = current.consumer.next_until(&stop, "events") => {
                    let Some(message) = next else { break };
                    self.admit(message, &current.acks, &mut lanes, &mut parking, &session, &tracker);
                }
                next = next_of(&mut cancelled, &stop) => match next {
                    Some(message) => {
                        let acks = cancelled.as_ref().expect("it handed one out").acks.clone();
                        self.admit(message, &acks, &mut lanes, &mut parking, &session, &tracker);
                    }
                    None => cancelled = None,
                },
                gap = current.acks.costly_gap(), if cancelled.is_none() && opening.is_none() => {
                    left.retain(|watch| !watch.ended());
                    let waiting = lanes.holds(|taken| {
                        taken.acks.same(&current.acks) && taken.message.delivery_tag() == gap
                    });
                    if waiting || left.len() >= MAX_LEFT {
                        continue;
                    }
                    tracing::debug!(gap, "a delivery under way holds up the acks of the messages after it; opening a fresh events consumer");
                    opening = Some(Box::pin(self.broker.events_consumer()));
                }
                fresh = opened(&mut opening) => match fresh {
                    Ok(fresh) => {
                        let old = std::mem::replace(&mut current, self.intake(fresh, &session, &tracker));
                        let moved_from = old.consumer.clone();
                        tracker.spawn(async move { moved_from.cancel().await });
                        old.acks.retire();
                        left.push(old.acks.watch());
                        cancelled = Some(old);
                        moved = true;
                        self.metrics.consumer_moved();
                        tracing::info!("a delivery under way held up the acks of the messages after it; the events consumer moved to a fresh channel");
                    }
                    Err(e) => tracing::warn!(error = %e, "could not open a fresh events consumer; acks go on one by one"),
                },
            }
            self.metrics.intake_waiting(lanes.len());
        }
        // What is settled from now on is acked without waiting above gaps: the process may end
        // before they close (the shutdown grace), and what is not acked is delivered again.
        current.acks.watch().flush();
        for watch in &left {
            watch.flush();
        }
        // The session's own consumer is cancelled with the session; one opened here, now (the
        // one moved away from already was).
        if moved {
            current.consumer.cancel().await;
        }
        // A consumer still being opened would take messages nobody handles until the session
        // closes (other replicas could not have them meanwhile): cancelled once it is open.
        if let Some(fresh) = opening.take()
            && let Ok(fresh) = fresh.await
        {
            fresh.cancel().await;
        }
        self.metrics.intake_waiting(0);
    }

    /// Queues `message` in its account's lane — or, when the window is full and that account
    /// holds more than its share of what waits, and its lane takes longer to turn over than the
    /// first delay, parks it in the first delay queue so the window keeps moving for everyone
    /// else.
    fn admit(
        self: &Arc<Self>,
        message: Inbound,
        acks: &Acks,
        lanes: &mut Lanes<Taken>,
        parking: &mut ParkingBudget,
        session: &Arc<Session>,
        tracker: &TaskTracker,
    ) {
        acks.received(message.delivery_tag());
        let account = lanes::account_of(message.body());
        let started = self.max_started - self.starts.available_permits();
        // Full: most of the window held, most of it waiting, and deeply (four rounds of an
        // account's quota: a shallow `PREFETCH` never parks, it would only churn) — or too many
        // bytes waiting.
        let waiting = lanes.len();
        let full = (waiting + started) * 8 >= self.window * 7
            && waiting * 2 >= self.window
            && waiting >= 4 * self.per_account;
        // Nothing is parkable without a delay queue to park it in.
        let first_delay = self.broker.topology.retries.first().map(|q| q.delay);
        // Past the byte budget anything parkable is parked (memory first); otherwise only an
        // account over its share whose lane is slower to turn over than the first delay (a
        // parked message comes back after it, at the end of the events queue: from a lane that
        // drains sooner it would only be late, and the window moves as fast without it — a
        // one-account backlog past the window drained at half speed when it was), and only as
        // fast as the budget allows (each message started earns a few parks), so a backlog
        // larger than the window is not cycled through the delay queue at the broker's full
        // speed.
        let park = !message.expires()
            && first_delay.is_some_and(|delay| {
                lanes.bytes() >= INTAKE_BYTES
                    || full
                        && lanes.over_share(&account)
                        && lanes.waited(&account) >= delay
                        && parking.spend()
            });
        if park {
            let aside = self
                .clone()
                .set_aside(message, account, acks.clone(), session.clone());
            tracker.spawn(aside);
            return;
        }
        let bytes = message.body().len();
        let acks = acks.clone();
        lanes.push(account, Taken { message, acks }, bytes);
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
        let queue = &self.broker.topology.retries[0];
        let parked = self.broker.publisher.park(&queue.name, &message).await;
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
            Ok(()) => acks.settled(message.into_settled()),
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
