//! The DLQ logger: consumes `P.dead` and commits each dead letter to the delivery log before
//! acking it. While the store is down it keeps retrying and holds the message unacked, so the
//! dead letters stay in `P.dead` until they are safely stored. `webhook-dispatcher dlq drain`
//! stores through the same [`store_and_ack`].

use std::time::Duration;

use futures_util::StreamExt;
use lapin::Acker;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::event;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wire::{self, DeadLetter};

pub async fn run(
    mut consumer: lapin::Consumer,
    store: Store,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let patience = Patience::UNTIL_STOPPED;
                store_and_ack(
                    &delivery.data,
                    &delivery.acker,
                    &store,
                    &metrics,
                    &stop,
                    patience,
                )
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

/// How long [`store_and_ack`] keeps trying while the store fails, and how it logs.
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

/// Commits the dead letter in `data` to the store (retrying while the store fails, until
/// `stop` or as `patience` says), and only then acks it.
pub async fn store_and_ack(
    data: &[u8],
    acker: &Acker,
    store: &Store,
    metrics: &Metrics,
    stop: &CancellationToken,
    patience: Patience<'_>,
) -> Stored {
    let dead = read(data).sanitized();
    let mut wait = Duration::from_millis(100);
    let started = tokio::time::Instant::now();
    let log = patience.log;
    loop {
        match store.insert_dead_letter(&dead).await {
            Ok(inserted) => {
                if inserted {
                    metrics.dead_letters_persisted.inc();
                    tracing::info!(id = %dead.id, event_id = %dead.event_id, reason = %dead.reason, "dead letter persisted");
                } else {
                    tracing::debug!(id = %dead.id, "dead letter already persisted");
                }
                if !broker::ack(acker).await {
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

/// A dead letter from the queue; anything else that landed there (an operator's hand-published
/// message, say) is kept too, under reason `unreadable`, with its raw bytes and an id derived
/// from them (a copy delivered again is stored once).
fn read(data: &[u8]) -> DeadLetter {
    match serde_json::from_slice::<DeadLetter>(data) {
        Ok(dead) => dead,
        Err(e) => {
            let detail = format!("message in the dead-letter queue is not a dead letter: {e}");
            DeadLetter {
                id: wire::raw_dead_letter_id(data),
                ..DeadLetter::for_raw(data, event::derived_id(data), "unreadable", detail)
            }
        }
    }
}
