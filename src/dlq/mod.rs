//! The DLQ logger: consumes `P.dead` and commits dead letters to the delivery log in batches
//! (whatever has arrived, up to [`BATCH`], in one transaction) before acking them with one
//! `multiple` ack. While the store is down it keeps retrying the batch and holds it unacked, so
//! the dead letters stay in `P.dead` until they are safely stored. Storing is idempotent (keyed
//! by the dead letter's id), so a batch delivered again after a lost ack is stored once.
//! `webhook-dispatcher dlq drain` stores through the same [`Logger::store_and_ack`], one
//! message at a time. Only a dead letter whose seal verifies is believed
//! ([`Logger::records_in`]); a bundle of dead letters is one message and many records.

mod record;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{Consumer, DEAD_PREFETCH, Inbound};
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

/// The most dead letters committed in one transaction: half of what the logger may hold
/// unacked ([`DEAD_PREFETCH`]) — messages, or the dead letters their bundles say they hold, a
/// batch closing once either reaches it (the bundle that passes it still goes in). Under a
/// full-rate outage batches fill up while the previous one commits; at a trickle each dead
/// letter is stored on its own at once.
pub const BATCH: usize = DEAD_PREFETCH as usize / 2;

pub async fn run(mut consumer: Consumer, logger: Logger, stop: CancellationToken) {
    while let Some(first) = consumer.next_until(&stop, "dead letters").await {
        let mut held = first.dead_letters_claimed().unwrap_or(1);
        let mut batch = vec![first];
        while batch.len() < BATCH && held < BATCH {
            match consumer.ready_now() {
                Some(message) => {
                    held += message.dead_letters_claimed().unwrap_or(1);
                    batch.push(message);
                }
                None => break,
            }
        }
        let stored = logger
            .store_batch_and_ack(&batch, &stop, Patience::UNTIL_STOPPED)
            .await;
        if let Err(Stored::Stopped) = stored {
            return;
        }
    }
}

/// A batch committed (and acked, unless `ack_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Records the batch added to the store.
    pub new: usize,
    /// Records that were already there (of redelivered copies).
    pub duplicates: usize,
    /// The ack failed: the broker delivers the batch again, and it is stored once.
    pub ack_failed: bool,
}

/// What became of one message from `P.dead` ([`Logger::store_and_ack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Committed to the store, then acked: its records (one, or a bundle's), `new` of them
    /// added and `duplicates` already there (a redelivered copy's).
    Committed { new: usize, duplicates: usize },
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
        match self
            .store_batch_and_ack(std::slice::from_ref(message), stop, patience)
            .await
        {
            Ok(done) if done.ack_failed => Stored::AckFailed,
            Ok(done) => Stored::Committed {
                new: done.new,
                duplicates: done.duplicates,
            },
            Err(not_acked) => not_acked,
        }
    }

    /// The records of `messages`, ready to store: sanitized, with their trust and whether
    /// RabbitMQ made them.
    async fn records_of(
        &self,
        messages: &[Inbound],
    ) -> Result<Vec<record::Record>, record::NotYet> {
        let mut records = Vec::with_capacity(messages.len());
        for message in messages {
            for record in self.records_in(message).await? {
                records.push(record::Record {
                    dead: record.dead.sanitized(),
                    ..record
                });
            }
        }
        Ok(records)
    }

    /// One try at storing `messages`' records: the records, and which of them were new.
    async fn try_store(
        &self,
        messages: &[Inbound],
    ) -> Result<(Vec<record::Record>, Vec<bool>), String> {
        let records = self.records_of(messages).await.map_err(|e| e.to_string())?;
        let rows: Vec<(&DeadLetter, Trust)> = records.iter().map(|r| (&r.dead, r.trust)).collect();
        let inserted = self
            .store
            .insert_dead_letters(&rows)
            .await
            .map_err(|e| e.to_string())?;
        Ok((records, inserted))
    }

    /// Commits the records of `messages` in one transaction (retrying while the store fails,
    /// until `stop` or as `patience` says), and only then acks them all with one `multiple`
    /// ack on the last: `messages` must be every unsettled message of their channel, in
    /// delivery order. `Err` is [`Stored::Stopped`] or [`Stored::GaveUp`]: nothing acked.
    pub async fn store_batch_and_ack(
        &self,
        messages: &[Inbound],
        stop: &CancellationToken,
        patience: Patience<'_>,
    ) -> Result<Committed, Stored> {
        let Some(last) = messages.last() else {
            return Ok(Committed {
                new: 0,
                duplicates: 0,
                ack_failed: false,
            });
        };
        let mut wait = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let log = patience.log;
        // The records are made again at each try: what they are made from (the keys, a
        // subscription) is read from the store too, and a failure to read it must not be
        // frozen into a record (a genuine dead letter taken for a forged one).
        let (records, inserted) = loop {
            match self.try_store(messages).await {
                Ok(done) => break done,
                Err(e) => {
                    if let Some(limit) = patience.give_up_after {
                        let left = limit.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Err(Stored::GaveUp(e.to_string()));
                        }
                        wait = wait.min(left);
                    }
                    log(
                        &|| tracing::error!(error = %e, dead_letters = messages.len(), retry_in = ?wait, "cannot persist dead letters; keeping them in the queue"),
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return Err(Stored::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut done = Committed {
            new: 0,
            duplicates: 0,
            ack_failed: false,
        };
        for (record, new) in records.iter().zip(inserted) {
            let dead = &record.dead;
            // Every forged message taken off the queue counts, a copy already stored too.
            if let Some(forgery) = &record.forged {
                self.metrics.forged_message("dead", forgery);
            }
            if !new {
                done.duplicates += 1;
                tracing::debug!(id = %dead.id, "dead letter already persisted");
                continue;
            }
            done.new += 1;
            let trusted = record.trust == Trust::Verified;
            self.metrics
                .dead_letter_persisted(&dead.id, &dead.event_id, &dead.reason, trusted);
            if record.broker_made {
                self.metrics.dead_lettered(event_label(dead), &dead.reason);
            }
        }
        if done.new > 0 {
            tracing::info!(
                stored = done.new,
                duplicates = done.duplicates,
                "dead letters persisted"
            );
        }
        if !last.ack_through().await {
            log(&|| {
                self.metrics.ack_failed(
                    "persisted dead letters (their redelivery is stored once, same ids)",
                    messages.len() as u64,
                )
            });
            done.ack_failed = true;
        }
        Ok(done)
    }
}

/// The `event` label of a dead letter: one of the six names or `unknown`.
fn event_label(dead: &DeadLetter) -> &'static str {
    dead.event
        .as_deref()
        .and_then(EventKind::parse)
        .map_or("unknown", EventKind::as_str)
}
