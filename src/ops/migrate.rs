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

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::OpsError;
use super::stats::{is_not_found, queue_stats};
use crate::broker::{self, Broker, BrokerError, Route};

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
    let topology = &broker.topology;
    let events = topology.events.as_str();
    let holding = topology.holding_queue();
    for queue in [events, holding.as_str()] {
        if let Some(n) = queue_stats(broker, queue)
            .await?
            .consumers
            .filter(|&n| n > 0)
        {
            return Err(OpsError::Failed(format!(
                "{queue} has {n} consumer(s): stop every instance of the service first"
            )));
        }
    }
    let mut report = MigrateReport::default();
    let exists = queue_stats(broker, events).await?.ready.is_some();
    let held = queue_stats(broker, &holding).await?.ready.is_some();
    if !exists && !held {
        return Err(OpsError::BadInput(format!(
            "queue {events} does not exist: nothing to migrate (check QUEUE_PREFIX)"
        )));
    }
    let current = exists && declares(broker, events, topology.events_args()).await?;
    if exists && !current {
        step(&format!("routing new events to {holding}"));
        let channel = broker.channel().await?;
        declare(&channel, &holding, topology.events_args()).await?;
        bind(&channel, &holding, &topology.exchange).await?;
        unbind(&channel, events, &topology.exchange).await?;
        report.moved_out = empty_old_queue(broker, &holding, step).await?;
    }
    if !current {
        step(&format!("declaring {events} with this version's arguments"));
        let channel = broker.channel().await?;
        declare(&channel, events, topology.events_args()).await?;
        bind(&channel, events, &topology.exchange).await?;
        // At once, on the same channel: an event published between the two is in both queues.
        unbind(&channel, &holding, &topology.exchange).await?;
    }
    if queue_stats(broker, &holding).await?.ready.is_some() {
        step(&format!("moving the held messages back from {holding}"));
        let channel = broker.channel().await?;
        unbind(&channel, &holding, &topology.exchange).await?;
        report.moved_back = move_all(broker, &holding, events).await?;
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
        moved += move_all(broker, events, holding).await?;
        let mut waiting = 0;
        for retry in &broker.topology.retries {
            waiting += queue_stats(broker, &retry.name).await?.ready.unwrap_or(0);
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
        moved += move_all(broker, events, holding).await?;
        delete_emptied(broker, events).await?;
        return Ok(moved);
    }
}

/// Whether `queue` exists with exactly `args` (a declare with other arguments is refused).
async fn declares(broker: &Broker, queue: &str, args: FieldTable) -> Result<bool, OpsError> {
    let channel = broker.channel().await?;
    match declare(&channel, queue, args).await {
        Ok(()) => {
            let _ = channel.close(200, "probed".into()).await;
            Ok(true)
        }
        Err(OpsError::Broker(BrokerError::TopologyMismatch { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn declare(channel: &lapin::Channel, queue: &str, args: FieldTable) -> Result<(), OpsError> {
    Ok(broker::topology::declare_queue(channel, queue, args).await?)
}

async fn bind(channel: &lapin::Channel, queue: &str, exchange: &str) -> Result<(), OpsError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::from)?;
    Ok(())
}

/// Removes `queue`'s binding to `exchange` (nothing if there is none).
async fn unbind(channel: &lapin::Channel, queue: &str, exchange: &str) -> Result<(), OpsError> {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::from)?;
    Ok(())
}

/// Moves every message from `from` to `to` through the default exchange, each published with a
/// confirm (properties and headers kept) before it is acked. Returns how many.
async fn move_all(broker: &Broker, from: &str, to: &str) -> Result<u64, OpsError> {
    let channel = broker.channel().await?;
    let mut moved = 0;
    loop {
        let got = channel
            .basic_get(from.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::from)?;
        let Some(message) = got else { break };
        let delivery = &message.delivery;
        broker
            .publisher
            .publish(
                Route::queue(to),
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?;
        if !broker::ack(&delivery.acker).await {
            return Err(OpsError::Failed(format!(
                "a message was copied to {to} but its ack in {from} failed: it is in both \
                 (same id); run the command again"
            )));
        }
        moved += 1;
    }
    let _ = channel.close(200, "moved".into()).await;
    Ok(moved)
}

/// Deletes `queue`, just emptied, which nothing routes to any more. Quorum queues refuse
/// `if_empty`, so emptiness cannot be a condition of the delete; the delete reports what it
/// removed instead, and a message that arrived in the instant between (only a direct publish to
/// the queue during the migration could) is reported as lost rather than passed over.
async fn delete_emptied(broker: &Broker, queue: &str) -> Result<(), OpsError> {
    let channel = broker.channel().await?;
    match channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
    {
        Ok(0) => {
            let _ = channel.close(200, "deleted".into()).await;
            Ok(())
        }
        Ok(lost) => Err(OpsError::Failed(format!(
            "{lost} message(s) reached {queue} in the instant before it was deleted, and went \
             with it: something published straight to it during the migration (a replay?)"
        ))),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(OpsError::Broker(e.into())),
    }
}
