//! `migrate-queues`: gives an events queue declared by an earlier version this version's
//! arguments, without losing a message. RabbitMQ cannot change a queue's arguments, so the queue
//! is declared again, its messages kept meanwhile in a holding queue (`P.events.migrating`):
//!
//! 1. the holding queue (this version's arguments) is bound to the events exchange, then the old
//!    events queue unbound, so new events go to the holding queue (none unrouted: for a moment
//!    both are bound, and an event published then is in both, under one id);
//! 2. the old queue's messages are moved into the holding queue (each published with a confirm
//!    before it is acked) until it and every delay queue are empty: the delay queues still hand
//!    their retries to the old queue by name;
//! 3. the old queue is deleted (only if empty and unused, else back to 2), declared again with
//!    this version's arguments and bound, and the holding queue unbound;
//! 4. the holding queue's messages are moved back, and the holding queue deleted.
//!
//! Every step can be run again, so an interrupted migration is finished by running the command
//! again. It needs every instance stopped (no consumer on the events queue): a running one would
//! lose its queue under it.

use std::time::Duration;

use super::OpsError;
use crate::broker::Broker;

/// Longest wait for the delay queues to hand their last retries over (past their longest TTL).
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// What a migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    /// The events queue had this version's arguments already and nothing was held: no change.
    pub already_current: bool,
    /// Messages moved out of the old events queue.
    pub moved_out: u64,
    /// Messages moved from the holding queue into the new events queue.
    pub moved_back: u64,
}

/// Runs the migration (see the module doc); `step` is told what is happening.
pub async fn migrate(
    broker: &Broker,
    step: &mut (dyn FnMut(&str) + Send),
) -> Result<MigrateReport, OpsError> {
    let events = broker.topology.events.as_str();
    let holding = broker.topology.holding_queue();
    for queue in [events, holding.as_str()] {
        if let Some(n) = broker
            .queue_counts(queue)
            .await?
            .map(|c| c.consumers)
            .filter(|&n| n > 0)
        {
            return Err(OpsError::Failed(format!(
                "{queue} has {n} consumer(s): stop every instance of the service first"
            )));
        }
    }
    let mut report = MigrateReport::default();
    let exists = broker.queue_counts(events).await?.is_some();
    let held = broker.queue_counts(&holding).await?.is_some();
    if !exists && !held {
        return Err(OpsError::BadInput(format!(
            "queue {events} does not exist: nothing to migrate (check QUEUE_PREFIX)"
        )));
    }
    let current = exists && broker.has_events_arguments(events).await?;
    if exists && !current {
        step(&format!("routing new events to {holding}"));
        broker.declare_with_events_arguments(&holding).await?;
        broker.switch_events_binding(&holding, Some(events)).await?;
        report.moved_out = empty_old_queue(broker, &holding, step).await?;
    }
    if !current {
        step(&format!("declaring {events} with this version's arguments"));
        broker.declare_with_events_arguments(events).await?;
        // An event published between the bind and the unbind is in both queues.
        broker.switch_events_binding(events, Some(&holding)).await?;
    }
    if broker.queue_counts(&holding).await?.is_some() {
        step(&format!("moving the held messages back from {holding}"));
        broker.unbind_events(&holding).await?;
        report.moved_back = broker.move_all(&holding, events).await?;
        delete_emptied(broker, &holding).await?;
    } else if current {
        report.already_current = true;
    }
    Ok(report)
}

/// Step 2 and the deletion of step 3: moves everything from the old events queue into
/// `holding` until it and the delay queues are empty, then deletes it.
async fn empty_old_queue(
    broker: &Broker,
    holding: &str,
    step: &mut (dyn FnMut(&str) + Send),
) -> Result<u64, OpsError> {
    let events = broker.topology.events.as_str();
    let started = tokio::time::Instant::now();
    let mut moved = 0;
    loop {
        moved += broker.move_all(events, holding).await?;
        let mut waiting = 0;
        for retry in &broker.topology.retries {
            waiting += broker
                .queue_counts(&retry.name)
                .await?
                .map_or(0, |c| c.ready);
        }
        if waiting > 0 {
            if started.elapsed() > DRAIN_PATIENCE {
                return Err(OpsError::Failed(format!(
                    "the delay queues still hold {waiting} message(s) after {}s: is an instance \
                     still running? Nothing was lost; run the command again",
                    DRAIN_PATIENCE.as_secs()
                )));
            }
            step(&format!(
                "waiting for {waiting} retries to leave the delay queues"
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        // Once more just before the delete: nothing should have come since, but a retry handed
        // over in the meantime would.
        moved += broker.move_all(events, holding).await?;
        delete_emptied(broker, events).await?;
        return Ok(moved);
    }
}

/// Deletes `queue`, just emptied, which nothing routes to any more. Quorum queues refuse
/// `if_empty`, so emptiness cannot be a condition of the delete; the delete reports what it
/// removed instead, and a message that arrived in the instant between (only a direct publish to
/// the queue during the migration could) is reported as lost rather than passed over.
async fn delete_emptied(broker: &Broker, queue: &str) -> Result<(), OpsError> {
    match broker.delete_queue(queue).await? {
        0 => Ok(()),
        lost => Err(OpsError::Failed(format!(
            "{lost} message(s) reached {queue} in the instant before it was deleted, and went \
             with it: something published straight to it during the migration (a replay?)"
        ))),
    }
}
