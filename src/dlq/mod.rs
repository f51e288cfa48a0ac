//! The DLQ logger: consumes `P.dead` and commits each dead letter to the delivery log before
//! acking it. While the store is down it keeps retrying and holds the message unacked, so the
//! dead letters stay in `P.dead` until they are safely stored. `webhook-dispatcher dlq drain`
//! stores through the same [`Logger::store_and_ack`]. Only a dead letter whose seal verifies is
//! believed ([`Logger::record_of`]).

mod record;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{Consumer, Inbound};
use crate::event::EventKind;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::store::{Store, Trust};
use crate::wire::DeadLetter;

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

pub async fn run(mut consumer: Consumer, logger: Logger, stop: CancellationToken) {
    while let Some(message) = consumer.next_until(&stop, "dead letters").await {
        logger
            .store_and_ack(&message, &stop, Patience::UNTIL_STOPPED)
            .await;
    }
}

/// What became of one message from `P.dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Committed to the store, then acked.
    New,
    /// A record with its id was already there (a redelivered copy); acked.
    Duplicate,
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
    /// Commits the record of `message` to the store (retrying while the store fails, until
    /// `stop` or as `patience` says), and only then acks it.
    pub async fn store_and_ack(
        &self,
        message: &Inbound,
        stop: &CancellationToken,
        patience: Patience<'_>,
    ) -> Stored {
        let record = self.record_of(message).await;
        let dead = record.dead.sanitized();
        let mut wait = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let log = patience.log;
        loop {
            match self.store.insert_dead_letter(&dead, record.trust).await {
                Ok(inserted) => {
                    if inserted {
                        let trusted = record.trust == Trust::Verified;
                        self.metrics.dead_letter_persisted(
                            &dead.id,
                            &dead.event_id,
                            &dead.reason,
                            trusted,
                        );
                        if record.broker_made {
                            self.metrics.dead_lettered(event_label(&dead), &dead.reason);
                        }
                    } else {
                        tracing::debug!(id = %dead.id, "dead letter already persisted");
                    }
                    if !message.ack().await {
                        log(&|| {
                            self.metrics.ack_failed(
                                "a persisted dead letter (its redelivery is stored once, same id)",
                            )
                        });
                        return Stored::AckFailed;
                    }
                    return if inserted {
                        Stored::New
                    } else {
                        Stored::Duplicate
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
}

/// The `event` label of a dead letter: one of the six names or `unknown`.
fn event_label(dead: &DeadLetter) -> &'static str {
    dead.event
        .as_deref()
        .and_then(EventKind::parse)
        .map_or("unknown", EventKind::as_str)
}
