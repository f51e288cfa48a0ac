//! Consumes `P.events`: inbound events fan out to every matching subscription, delivery tasks
//! (retries, deferrals, replays, test events) go to their one subscription. One file a step:
//! consume and settle (here), [`route`] (event or task), [`attempt`] (one delivery) and
//! [`handoff`] (retry, defer, dead-letter). A message is acked only once each of its deliveries
//! has succeeded or been handed to a delay queue or `P.dead` with a confirm.

mod attempt;
mod handoff;
mod route;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::Activity;
use crate::broker::{BrokerError, Consumer, Inbound, Publisher, Session, Topology};
use crate::delivery::Deliverer;
use crate::delivery::limit::EndpointLimiter;
use crate::metrics::Metrics;
use crate::seal::Keyring;
use crate::subscriptions::{Directory, LookupError};

pub struct Dispatcher {
    directory: Arc<Directory>,
    activity: Arc<Activity>,
    deliverer: Deliverer,
    publisher: Publisher,
    topology: Arc<Topology>,
    metrics: Metrics,
    /// Seals the tasks and dead letters it publishes, and checks the tasks it consumes.
    keys: Arc<Keyring>,
    /// Bounds HTTP attempts in flight across all messages (`MAX_IN_FLIGHT`).
    limit: Semaphore,
    /// Bounds attempts in flight per subscription (`MAX_IN_FLIGHT_PER_ENDPOINT`).
    endpoints: EndpointLimiter,
}

/// What the dispatcher works with, built by the app.
pub struct Parts {
    pub directory: Arc<Directory>,
    pub activity: Arc<Activity>,
    pub deliverer: Deliverer,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub metrics: Metrics,
    pub keys: Arc<Keyring>,
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
}

/// Why a message could not be handled now; it is requeued and tried again.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

impl Dispatcher {
    pub fn new(parts: Parts) -> Dispatcher {
        Dispatcher {
            directory: parts.directory,
            activity: parts.activity,
            deliverer: parts.deliverer,
            publisher: parts.publisher,
            topology: parts.topology,
            metrics: parts.metrics,
            keys: parts.keys,
            limit: Semaphore::new(parts.max_in_flight),
            endpoints: EndpointLimiter::new(parts.max_in_flight_per_endpoint),
        }
    }

    /// Takes messages from `consumer` until `stop` fires or the consumer ends (connection lost),
    /// handling each in its own task on `tracker`. Each task holds the session, so its channels
    /// stay open until the task has settled its message.
    pub async fn consume(
        self: Arc<Self>,
        mut consumer: Consumer,
        session: Arc<Session>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        while let Some(message) = consumer.next_until(&stop, "events").await {
            tracker.spawn(self.clone().settle(message, session.clone()));
        }
    }

    /// Routes one message, then acks it, or hands it back when its outcome could not be made
    /// safe in the broker.
    async fn settle(self: Arc<Self>, message: Inbound, _session: Arc<Session>) {
        match self.route(&message).await {
            Ok(()) => {
                if !message.ack().await {
                    self.metrics.ack_failed("an events-queue message");
                }
            }
            Err(e) => {
                // Hand it back after a pause, so a broker in trouble is not hammered with it.
                tracing::error!(error = %e, "could not hand the message on; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = message.requeue().await;
            }
        }
    }
}
