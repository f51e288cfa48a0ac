//! The DLQ logger: consumes `P.dead` and commits each dead letter to the delivery log before
//! acking it. While the store is down it keeps retrying and holds the message unacked, so the
//! dead letters stay in `P.dead` until they are safely stored. `webhook-dispatcher dlq drain`
//! stores through the same [`Logger::store_and_ack`]. Only a dead letter whose seal verifies is
//! believed ([`Logger::record_of`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Death, header_text};
use crate::event::{self, EventKind};
use crate::metrics::Metrics;
use crate::seal::{DEAD_LETTER_KIND, KEY_HEADER, Keyring, MAC_HEADER};
use crate::store::{Store, Trust};
use crate::time::now_rfc3339;
use crate::wire::{self, DeadLetter, DeliveryTask, TASK_HEADER};

/// What the logger needs to turn a message from `P.dead` into a delivery-log record.
#[derive(Clone)]
pub struct Logger {
    pub store: Store,
    pub keys: Arc<Keyring>,
    pub metrics: Metrics,
    /// `P.events`: what RabbitMQ dead-letters from there (expired, over the delivery limit) is
    /// kept too.
    pub events_queue: String,
}

pub async fn run(mut consumer: lapin::Consumer, logger: Logger, stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                logger
                    .store_and_ack(&delivery, &stop, Patience::UNTIL_STOPPED)
                    .await;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "dead-letter consumer failed");
                return;
            }
            None => return,
        }
    }
}

/// What became of one message from `P.dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Committed to the store, then acked.
    New,
    /// A record with its id was already there (a redelivered copy); acked.
    AlreadyStored,
    /// Committed, but the ack failed: the broker delivers it again, and it is stored once.
    AckFailed,
    /// `stop` fired before the store took it: not acked, it stays in the queue.
    Stopped,
    /// The store kept failing for [`Patience::give_up_after`] (the last error): not acked.
    GaveUp(String),
}

/// How long [`Logger::store_and_ack`] keeps trying while the store fails, and how it logs.
#[derive(Clone, Copy)]
pub struct Patience<'a> {
    /// Give the message up (unacked) after failing this long; `None`: until `stop`.
    pub give_up_after: Option<Duration>,
    /// Runs each log line, so a progress bar can hide itself around it (`ProgressBar::suspend`).
    pub log: &'a (dyn Fn(&dyn Fn()) + Sync),
}

impl Patience<'static> {
    /// The service's logger: retries until stopped, logs straight away.
    pub const UNTIL_STOPPED: Patience<'static> = Patience {
        give_up_after: None,
        log: &|line| line(),
    };
}

impl Logger {
    /// Commits the record of `delivery` to the store (retrying while the store fails, until
    /// `stop` or as `patience` says), and only then acks it.
    pub async fn store_and_ack(
        &self,
        delivery: &Delivery,
        stop: &CancellationToken,
        patience: Patience<'_>,
    ) -> Stored {
        let record = self.record_of(&delivery.data, &delivery.properties).await;
        let dead = record.dead.sanitized();
        let mut wait = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let log = patience.log;
        loop {
            match self.store.insert_dead_letter(&dead, record.trust).await {
                Ok(inserted) => {
                    if inserted {
                        self.metrics.dead_letters_persisted.inc();
                        if record.broker_made {
                            self.metrics.dead_lettered(event_label(&dead), &dead.reason);
                        }
                        tracing::info!(id = %dead.id, event_id = %dead.event_id, reason = %dead.reason, trusted = record.trust == Trust::Verified, "dead letter persisted");
                    } else {
                        tracing::debug!(id = %dead.id, "dead letter already persisted");
                    }
                    if !broker::ack(&delivery.acker).await {
                        log(
                            &|| tracing::warn!(id = %dead.id, "ack of a persisted dead letter failed; its redelivery is stored once (same id)"),
                        );
                        return Stored::AckFailed;
                    }
                    return if inserted {
                        Stored::New
                    } else {
                        Stored::AlreadyStored
                    };
                }
                Err(e) => {
                    if let Some(limit) = patience.give_up_after {
                        let left = limit.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Stored::GaveUp(e.to_string());
                        }
                        wait = wait.min(left);
                    }
                    log(
                        &|| tracing::error!(error = %e, id = %dead.id, retry_in = ?wait, "cannot persist dead letter; keeping it in the queue"),
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return Stored::Stopped,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// What a message from `P.dead` is recorded as. Three kinds arrive there:
    /// - a dead letter the service sealed: stored as it says (trusted);
    /// - a message RabbitMQ dead-lettered from `P.events` (its `x-death` names that queue): a
    ///   delivery task whose seal verifies becomes a replayable record of that delivery; any
    ///   other message (an inbound event that expired, say) is kept like a rejected one, raw,
    ///   naming no subscription;
    /// - anything else (no seal, a wrong one, not even JSON): kept raw as untrusted, naming no
    ///   account or subscription, never replayable, and counted as forged.
    async fn record_of(&self, data: &[u8], props: &BasicProperties) -> Record {
        if let Some(death) = broker::death(props).filter(|d| d.queue == self.events_queue) {
            return self.broker_dead_letter(data, props, &death).await;
        }
        let key_id = header_text(props, KEY_HEADER);
        let mac = header_text(props, MAC_HEADER);
        let verdict = self
            .keys
            .verify(DEAD_LETTER_KIND, data, key_id.as_deref(), mac.as_deref())
            .await;
        match verdict.map(|()| serde_json::from_slice::<DeadLetter>(data)) {
            Ok(Ok(dead)) => Record {
                dead,
                trust: Trust::Verified,
                broker_made: false,
            },
            // Sealed by the service, yet not a dead letter it can read (another version's?).
            Ok(Err(e)) => untrusted(
                data,
                "unreadable",
                format!("a sealed message that is not a dead letter this version reads: {e}"),
            ),
            Err(forgery) => {
                self.metrics.forged_message("dead", &forgery);
                let (reason, claim) = match serde_json::from_slice::<Claimed>(data) {
                    Ok(claimed) => (
                        "forged_dead_letter",
                        format!("; it claims reason {:?}", shorten(&claimed.reason)),
                    ),
                    Err(_) => ("unreadable", String::new()),
                };
                untrusted(data, reason, format!("not believed: {forgery}{claim}"))
            }
        }
    }

    /// The record of a message RabbitMQ dead-lettered from `P.events`.
    async fn broker_dead_letter(
        &self,
        data: &[u8],
        props: &BasicProperties,
        death: &Death,
    ) -> Record {
        let reason = match death.reason.as_str() {
            known @ ("expired" | "delivery_limit" | "maxlen" | "rejected") => known,
            _ => "dead_lettered",
        };
        let detail = format!(
            "dead-lettered by RabbitMQ from {} ({}{})",
            death.queue,
            death.reason,
            death
                .count
                .map(|n| format!(", {n} times"))
                .unwrap_or_default()
        );
        // Redelivered copies carry the same bytes and x-death, so they get the same id.
        let id = wire::raw_dead_letter_id(
            &[
                data,
                reason.as_bytes(),
                &death.time.unwrap_or(0).to_be_bytes(),
            ]
            .concat(),
        );
        let at = death
            .time
            .and_then(|t| chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            .map_or_else(now_rfc3339, crate::time::rfc3339);
        if let Some(task) = self.verified_task(data, props).await {
            let url = match self.store.subscription(&task.subscription_id).await {
                Ok(sub) => sub.map(|s| s.url),
                Err(_) => None,
            };
            let dead = DeadLetter {
                id,
                event_id: task.event_id,
                account_id: Some(task.account_id),
                subscription_id: Some(task.subscription_id),
                url,
                event: Some(task.event),
                payload: wire::raw_payload(task.body.as_bytes()),
                reason: reason.to_string(),
                detail: Some(detail),
                attempts: task.attempts,
                dead_lettered_at: at,
            };
            return Record {
                dead,
                trust: Trust::Verified,
                broker_made: true,
            };
        }
        // An inbound event (or whatever else was on the queue): kept raw, like a rejected one.
        let message_id = props.message_id().as_ref().map(|m| m.as_str());
        let (event_id, account_id, event) = match event::parse(data, message_id) {
            Ok(ev) => (
                ev.id,
                Some(ev.account_id),
                Some(ev.kind.as_str().to_string()),
            ),
            Err(_) => {
                let fields = event::rejected_fields(data);
                (
                    event::fallback_id(message_id, data),
                    fields.account_id,
                    fields.event,
                )
            }
        };
        let dead = DeadLetter {
            id,
            account_id,
            event,
            dead_lettered_at: at,
            ..DeadLetter::for_raw(data, event_id, reason, detail)
        };
        Record {
            dead,
            trust: Trust::Verified,
            broker_made: true,
        }
    }

    /// The delivery task in a message, if it is one and its seal verifies.
    async fn verified_task(&self, data: &[u8], props: &BasicProperties) -> Option<DeliveryTask> {
        let kind = header_text(props, TASK_HEADER)?;
        let key_id = header_text(props, KEY_HEADER);
        let mac = header_text(props, MAC_HEADER);
        self.keys
            .verify(&kind, data, key_id.as_deref(), mac.as_deref())
            .await
            .ok()?;
        DeliveryTask::read(data).ok()
    }
}

/// A message from `P.dead` as the delivery log will hold it.
struct Record {
    dead: DeadLetter,
    trust: Trust,
    /// Made from what RabbitMQ dead-lettered (not counted when it was published, as the
    /// service's own dead letters are): counted when stored.
    broker_made: bool,
}

/// What an unverified message claims, for the record's detail.
#[derive(serde::Deserialize)]
struct Claimed {
    reason: String,
}

/// The record of a message nothing in which is believed: its bytes, under an id derived from
/// them (a copy delivered again is stored once), naming no account, subscription or event.
fn untrusted(data: &[u8], reason: &str, detail: String) -> Record {
    let dead = DeadLetter {
        id: wire::raw_dead_letter_id(data),
        ..DeadLetter::for_raw(data, event::derived_id(data), reason, detail)
    };
    Record {
        dead,
        trust: Trust::Untrusted,
        broker_made: false,
    }
}

/// The `event` label of a dead letter: one of the six names or `unknown`.
fn event_label(dead: &DeadLetter) -> &'static str {
    dead.event
        .as_deref()
        .and_then(EventKind::parse)
        .map_or("unknown", EventKind::as_str)
}

/// Text from outside, cut for a record's detail.
fn shorten(text: &str) -> String {
    text.chars().take(60).collect()
}
