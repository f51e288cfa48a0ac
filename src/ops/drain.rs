//! `dlq drain`: stores every dead letter waiting in `P.dead` and exits once none is ready. It
//! takes messages one at a time (`basic.get`) and stores each through the DLQ logger's own
//! [`Logger::store_and_ack`] — committed before acked — so it can run next
//! to a live service (two consumers of one queue) and stops with nothing of its own unacked.
//! The final empty `basic.get` is a round trip through the queue, so the acks before it are
//! applied before the channel closes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::OpsError;
use crate::broker::{Broker, BrokerError};
use crate::dlq::{Logger, Patience, Stored};
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Dead letters taken off the queue and safely in the store (a bundle's each count).
    pub drained: u64,
    /// Of those, how many the store already held (redelivered copies).
    pub already_stored: u64,
    /// `stop` fired: the drain ended early; the message in hand went back to the queue.
    pub interrupted: bool,
}

/// How long the drain waits for a failing store before it gives up (exit 1): an operator
/// running it by hand wants an answer, not a command that waits silently forever.
pub const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Drains `P.dead` into `store`. `progress(done, remaining)` follows each message (messages
/// taken, messages left; a bundle is one); `log` runs
/// each log line (see [`Patience::log`]).
pub async fn drain(
    broker: &Broker,
    store: &Store,
    stop: &CancellationToken,
    progress: &mut (dyn FnMut(u64, u64) + Send),
    log: &(dyn Fn(&dyn Fn()) + Sync),
) -> Result<DrainReport, OpsError> {
    let patience = Patience {
        give_up_after: Some(STORE_PATIENCE),
        log,
    };
    let queue = broker.topology.dead.as_str();
    let logger = Logger {
        store: store.clone(),
        keys: super::load_keys(store).await?,
        // The service counts what it stores; a drain's counts would go nowhere.
        metrics: Metrics::new(),
        events_queue: broker.topology.events.clone(),
    };
    let reader = broker.reader(queue).await?;
    let mut report = DrainReport::default();
    let mut taken = 0;
    loop {
        if stop.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let next = reader.next().await.map_err(|e| match e {
            BrokerError::NotFound(_) => OpsError::BadInput(format!(
                "queue {queue} does not exist: check QUEUE_PREFIX (the service declares it when it starts)"
            )),
            other => OpsError::Broker(other),
        })?;
        let Some((message, remaining)) = next else {
            break;
        };
        let stored = logger.store_and_ack(&message, stop, patience).await;
        match stored {
            Stored::Committed { new, duplicates } => {
                report.drained += (new + duplicates) as u64;
                report.already_stored += duplicates as u64;
            }
            Stored::Stopped => {
                report.interrupted = true;
                break;
            }
            Stored::GaveUp(error) => {
                reader.close().await;
                return Err(OpsError::Failed(format!(
                    "the store kept failing for {}s ({error}); gave up after {} drained. The dead \
                     letter in hand was not acked and stays in {queue}: fix the store and run the \
                     drain again",
                    STORE_PATIENCE.as_secs(),
                    report.drained
                )));
            }
            Stored::AckFailed => {
                return Err(OpsError::Failed(format!(
                    "stored a dead letter but its ack failed after {} drained; the broker delivers it \
                     again and it is stored once — run the drain again",
                    report.drained
                )));
            }
        }
        taken += 1;
        progress(taken, u64::from(remaining));
    }
    reader.close().await;
    Ok(report)
}
