//! Consumes `P.events`: inbound events fan out to every matching subscription, delivery tasks
//! (retries and replays) go to their one subscription. A message is acked only once each of its
//! deliveries has succeeded or been handed to a delay queue or `P.dead` with a confirm.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, field};

use crate::broker::topology::RetryQueue;
use crate::broker::{
    self, BrokerError, Publisher, Route, Session, Topology, dead_letter_message, header_text,
    task_message,
};
use crate::delivery::limit::{EndpointLimiter, WAIT_FOR_SLOT};
use crate::delivery::{AttemptRecord, Deliverer, Outcome};
use crate::event::{self, EventKind};
use crate::metrics::Metrics;
use crate::retry::{Next, next_step};
use crate::seal::{Forgery, KEY_HEADER, Keyring, MAC_HEADER};
use crate::store::{Store, StoreError};
use crate::subscriptions::{Subscription, SubscriptionIndex};
use crate::time::now_rfc3339;
use crate::wire::{
    DeadLetter, DeliveryTask, TASK_HEADER, TaskKind, new_dead_letter_id, raw_payload,
};

pub struct Dispatcher {
    pub index: Arc<SubscriptionIndex>,
    pub store: Store,
    pub deliverer: Deliverer,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub metrics: Metrics,
    /// Seals the tasks and dead letters it publishes, and checks the tasks it consumes.
    pub keys: Arc<Keyring>,
    /// Bounds HTTP attempts in flight across all messages (`MAX_IN_FLIGHT`).
    pub limit: Arc<Semaphore>,
    /// Bounds attempts in flight per subscription (`MAX_IN_FLIGHT_PER_ENDPOINT`).
    pub endpoints: EndpointLimiter,
}

/// Why a message could not be handled now; it is requeued and tried again.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The event-level facts every delivery of one event shares.
struct EventRef<'a> {
    id: &'a str,
    account_id: &'a str,
    event: &'a str,
    body: &'a str,
}

impl EventRef<'_> {
    /// The task that carries this event's delivery to `subscription_id` to its next attempt.
    fn task(
        &self,
        subscription_id: &str,
        attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> DeliveryTask {
        DeliveryTask {
            event_id: self.id.to_string(),
            account_id: self.account_id.to_string(),
            subscription_id: subscription_id.to_string(),
            event: self.event.to_string(),
            body: self.body.to_string(),
            attempts,
            deferrals,
        }
    }
}

impl Dispatcher {
    /// Takes messages from the session's events consumer until `stop` fires or the consumer
    /// ends (connection lost), handling each in its own task on `tracker`. Each task holds the
    /// session, so its channels stay open until the task has acked.
    pub async fn consume(
        self: Arc<Self>,
        session: Arc<Session>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let mut consumer = session.events.clone();
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(self.clone().handle(delivery, session.clone()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "events consumer failed");
                    return;
                }
                None => return,
            }
        }
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, _session: Arc<Session>) {
        // A message that says it is a task is one only if its seal verifies (`handle_task`);
        // whichever route it came by proves nothing, since anyone can publish anywhere.
        let result = match header_text(&delivery.properties, TASK_HEADER) {
            Some(kind) => self.handle_task(&delivery, &kind).await,
            None => self.handle_event(&delivery).await,
        };
        match result {
            Ok(()) => {
                if !broker::ack(&delivery.acker).await {
                    tracing::warn!(
                        "ack failed or did not complete (channel gone); the broker will redeliver the message"
                    );
                }
            }
            Err(e) => {
                // Its outcome could not be made safe in the broker: hand it back, after a pause so
                // a broker in trouble is not hammered with the same message.
                tracing::error!(error = %e, "could not hand the message on; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = broker::requeue(&delivery.acker).await;
            }
        }
    }

    async fn handle_event(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        let event = match event::parse(&delivery.data, message_id) {
            Ok(event) => event,
            Err(err) => return self.reject(&delivery.data, message_id, &err).await,
        };
        self.metrics.event_consumed(event.kind.as_str());
        let subs = self.index.matching(&event.account_id, event.kind);
        if subs.is_empty() {
            tracing::debug!(event_id = %event.id, account_id = %event.account_id, "no subscription matches");
            return Ok(());
        }
        let ev = EventRef {
            id: &event.id,
            account_id: &event.account_id,
            event: event.kind.as_str(),
            body: &event.body,
        };
        let results = join_all(subs.iter().map(|sub| self.deliver(&ev, sub, Vec::new(), 0))).await;
        results.into_iter().collect()
    }

    /// Dead-letters an invalid inbound message with its reason.
    async fn reject(
        &self,
        raw: &[u8],
        message_id: Option<&str>,
        err: &event::EventError,
    ) -> Result<(), HandleError> {
        self.metrics.event_rejected(err.reason(), &err.to_string());
        let fields = event::rejected_fields(raw);
        let dead = DeadLetter {
            account_id: fields.account_id,
            event: fields.event,
            ..DeadLetter::for_raw(
                raw,
                event::fallback_id(message_id, raw),
                err.reason(),
                err.to_string(),
            )
        };
        self.dead_letter(&dead).await
    }

    async fn handle_task(&self, delivery: &Delivery, kind: &str) -> Result<(), HandleError> {
        let data = &delivery.data;
        let props = &delivery.properties;
        let key_id = header_text(props, KEY_HEADER);
        let mac = header_text(props, MAC_HEADER);
        if let Err(forgery) = self
            .keys
            .verify(kind, data, key_id.as_deref(), mac.as_deref())
            .await
        {
            return self.reject_forged_task(data, &forgery).await;
        }
        let task = match DeliveryTask::read(data) {
            Ok(task) => task,
            Err(detail) => {
                let dead =
                    DeadLetter::for_raw(data, event::derived_id(data), "invalid_task", detail);
                return self.dead_letter(&dead).await;
            }
        };
        let sub = match self.index.get(&task.subscription_id) {
            Some(sub) => Some(sub),
            // Perhaps created through another instance since the last refresh: ask the store
            // (one row, and only on this rare path).
            None => self
                .store
                .subscription(&task.subscription_id)
                .await?
                .map(Arc::new),
        };
        let ev = EventRef {
            id: &task.event_id,
            account_id: &task.account_id,
            event: &task.event,
            body: &task.body,
        };
        match sub {
            Some(sub) if sub.enabled && sub.account_id == task.account_id => {
                self.deliver(&ev, &sub, task.attempts, task.deferrals).await
            }
            Some(sub) if sub.account_id == task.account_id => {
                self.give_up(
                    &ev,
                    &task.subscription_id,
                    Some(&sub.url),
                    task.attempts,
                    "subscription_disabled",
                )
                .await
            }
            _ => {
                self.give_up(
                    &ev,
                    &task.subscription_id,
                    None,
                    task.attempts,
                    "subscription_deleted",
                )
                .await
            }
        }
    }

    /// Dead-letters a message that claims to be a delivery task but whose seal does not verify:
    /// nothing in it is believed, so it names no account or subscription and is never replayed;
    /// its bytes are kept for whoever investigates.
    async fn reject_forged_task(&self, raw: &[u8], forgery: &Forgery) -> Result<(), HandleError> {
        self.metrics.forged_message("events", forgery);
        let detail =
            format!("a delivery task that did not verify ({forgery}); nothing was delivered");
        let dead = DeadLetter::for_raw(raw, event::derived_id(raw), "forged_task", detail);
        self.dead_letter(&dead).await
    }

    /// One attempt to one subscription, then whatever [`next_step`] says — or, when the
    /// endpoint already has its fill of attempts in flight, a deferral.
    async fn deliver(
        &self,
        ev: &EventRef<'_>,
        sub: &Subscription,
        mut attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> Result<(), HandleError> {
        // The global permit first: a delivery holding its endpoint's slot must never sit waiting
        // for a global permit, or busy-but-healthy endpoints (a fan-out) would look stuck.
        let permit = self.limit.acquire().await.expect("semaphore never closed");
        let slot = self.endpoints.acquire(&sub.id, WAIT_FOR_SLOT).await;
        if slot.is_none() && !self.topology.retries.is_empty() {
            drop(permit);
            return self.defer(ev, sub, attempts, deferrals).await;
        }
        let number = attempts.len() as u32 + 1;
        let span = tracing::info_span!(
            "delivery",
            event_id = ev.id,
            subscription_id = %sub.id,
            attempt = number,
            event = ev.event,
            outcome = field::Empty,
        );
        async {
            let (outcome, record) = {
                let _gauge = InFlight::new(&self.metrics);
                let keys = sub.signing_keys(chrono::Utc::now());
                let attempt = self
                    .deliverer
                    .attempt(&sub.parsed_url, &keys, ev.id, ev.body, number)
                    .await;
                drop((slot, permit));
                attempt
            };
            Span::current().record("outcome", outcome.label());
            // A task's event name is not trusted as a label either (a forged task could carry
            // any name): one of the six, or `unknown`.
            self.metrics.attempt_finished(
                EventKind::parse(ev.event).map_or("unknown", EventKind::as_str),
                outcome.label(),
                record.duration_ms as f64 / 1000.0,
            );
            log_outcome(&outcome, &record);
            attempts.push(record);
            match next_step(&outcome, number, self.topology.retries.len()) {
                Next::Done => Ok(()),
                Next::Retry(index) => {
                    let queue = &self.topology.retries[index];
                    self.park(queue, &ev.task(&sub.id, attempts, 0), TaskKind::Delivery)
                        .await?;
                    self.metrics.retry_scheduled(&queue.label);
                    Ok(())
                }
                Next::Exhausted => {
                    self.give_up(ev, &sub.id, Some(&sub.url), attempts, "exhausted")
                        .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Puts the delivery back in a delay queue without spending an attempt: its endpoint is at
    /// its in-flight limit and has not freed a slot for a while.
    async fn defer(
        &self,
        ev: &EventRef<'_>,
        sub: &Subscription,
        attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> Result<(), HandleError> {
        // The longest delay: a deferred delivery's endpoint has just failed to free a slot for a
        // while, and every round trip through a delay queue costs the broker a publish.
        let queue = self
            .topology
            .retries
            .last()
            .expect("deferral needs a delay queue");
        self.park(
            queue,
            &ev.task(&sub.id, attempts, deferrals + 1),
            TaskKind::Deferred,
        )
        .await?;
        self.metrics.delivery_deferred(&sub.id, &queue.label);
        Ok(())
    }

    /// Publishes a delivery task to a delay queue, with a confirm.
    async fn park(
        &self,
        queue: &RetryQueue,
        task: &DeliveryTask,
        kind: TaskKind,
    ) -> Result<(), HandleError> {
        let (body, props) = task_message(task, kind, &self.keys);
        self.publisher
            .publish_retrying(Route::queue(&queue.name), &body, props)
            .await?;
        Ok(())
    }

    async fn give_up(
        &self,
        ev: &EventRef<'_>,
        subscription_id: &str,
        url: Option<&str>,
        attempts: Vec<AttemptRecord>,
        reason: &str,
    ) -> Result<(), HandleError> {
        let dead = DeadLetter {
            id: new_dead_letter_id(),
            event_id: ev.id.to_string(),
            account_id: Some(ev.account_id.to_string()),
            subscription_id: Some(subscription_id.to_string()),
            url: url.map(str::to_string),
            event: Some(ev.event.to_string()),
            payload: raw_payload(ev.body.as_bytes()),
            reason: reason.to_string(),
            detail: attempts.last().and_then(|a| a.error.clone()),
            attempts,
            dead_lettered_at: now_rfc3339(),
        };
        self.dead_letter(&dead).await
    }

    async fn dead_letter(&self, dead: &DeadLetter) -> Result<(), HandleError> {
        let (body, props) = dead_letter_message(dead, &self.keys);
        self.publisher
            .publish_retrying(Route::queue(&self.topology.dead), &body, props)
            .await?;
        // The label is one of the six event names or `unknown`, never what a producer wrote
        // (an unknown name of up to 256 KiB would be a new series each time).
        let event = dead
            .event
            .as_deref()
            .and_then(EventKind::parse)
            .map_or("unknown", EventKind::as_str);
        self.metrics.dead_lettered(event, &dead.reason);
        Ok(())
    }
}

fn log_outcome(outcome: &Outcome, record: &AttemptRecord) {
    match outcome {
        Outcome::Success(status) => {
            // Debug, not info: at thousands of deliveries a second a line per success cost ~30 %
            // of throughput (BENCHMARKS.md); successes are counted in the metrics.
            tracing::debug!(status, duration_ms = record.duration_ms, "delivered");
        }
        _ => tracing::warn!(
            status = record.status,
            error = record.error.as_deref().unwrap_or(""),
            duration_ms = record.duration_ms,
            "delivery attempt failed"
        ),
    }
}

/// Keeps `webhook_deliveries_in_flight` right even when an attempt is cancelled.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}
