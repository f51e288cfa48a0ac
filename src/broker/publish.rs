//! Confirmed publishing on the current session's channel.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

use super::BrokerError;
use super::frame::{task_bundle_message, task_message};
use crate::seal::Keyring;
use crate::wire::{DeliveryTask, TaskKind};

/// Where a message goes: an exchange and a routing key.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

impl<'a> Route<'a> {
    /// Straight to a queue through the default exchange.
    pub fn queue(name: &'a str) -> Route<'a> {
        Route {
            exchange: "",
            routing_key: name,
        }
    }
}

/// Publishes with confirms on the current session's channel. Shared by the dispatcher, the DLQ
/// logger and the API; a publish made while disconnected fails at once with `NotConnected`.
#[derive(Clone, Default)]
pub struct Publisher {
    channel: Arc<RwLock<Option<Channel>>>,
}

impl Publisher {
    pub(super) fn set(&self, channel: Option<Channel>) {
        *self.channel.write().expect("publisher lock") = channel;
    }

    pub(super) fn take(&self) -> Option<Channel> {
        self.channel.write().expect("publisher lock").take()
    }

    pub fn is_connected(&self) -> bool {
        self.channel
            .read()
            .expect("publisher lock")
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// Resolves once the publish channel is gone (closed by the broker, or the connection lost).
    pub async fn lost(&self) {
        while self.is_connected() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Publishes a persistent message and waits for the broker's confirm. `mandatory` is set, so
    /// a message no queue takes is an error rather than silently dropped.
    pub async fn publish(
        &self,
        route: Route<'_>,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.send(route, body, props).await?.confirmed().await
    }

    /// [`publish`](Self::publish) without waiting for the confirm: returns once the message is
    /// on its way, with the confirm to await. Many can be in flight at once (a pipeline).
    pub async fn send(
        &self,
        route: Route<'_>,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Pending, BrokerError> {
        let channel = self
            .channel
            .read()
            .expect("publisher lock")
            .clone()
            .ok_or(BrokerError::NotConnected)?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let props = props.with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                route.exchange.into(),
                route.routing_key.into(),
                options,
                body,
                props,
            )
            .await
            .map_err(|e| {
                BrokerError::or_not_found(e, || format!("exchange {:?}", route.exchange))
            })?;
        Ok(Pending {
            confirm,
            exchange: route.exchange.to_string(),
            routing_key: route.routing_key.to_string(),
        })
    }

    /// Puts a delivery task on `events_queue` (`P.events`) through the default exchange, sealed
    /// with the newest message key, and waits for the confirm (at most [`TASK_CONFIRM_TIMEOUT`]):
    /// from there it is attempted, signed, retried, dead-lettered and counted like any delivery.
    pub async fn enqueue_task(
        &self,
        events_queue: &str,
        task: &DeliveryTask,
        kind: TaskKind,
        keys: &Keyring,
    ) -> Result<(), BrokerError> {
        let (body, props) = task_message(task, kind, keys);
        let publish = self.publish(Route::queue(events_queue), &body, props);
        tokio::time::timeout(TASK_CONFIRM_TIMEOUT, publish)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(TASK_CONFIRM_TIMEOUT))?
    }

    /// [`enqueue_task`](Self::enqueue_task) without waiting for the confirm (a pipelined
    /// replay): the caller awaits [`Pending::confirmed`] within [`TASK_CONFIRM_TIMEOUT`].
    pub async fn send_task(
        &self,
        events_queue: &str,
        task: &DeliveryTask,
        kind: TaskKind,
        keys: &Keyring,
    ) -> Result<Pending, BrokerError> {
        let (body, props) = task_message(task, kind, keys);
        self.send(Route::queue(events_queue), &body, props).await
    }

    /// [`send_task`](Self::send_task) for several tasks of `account_id` as one message (a
    /// bundle, [`crate::wire::bundle`]).
    pub async fn send_task_bundle(
        &self,
        events_queue: &str,
        account_id: &str,
        tasks: &[DeliveryTask],
        keys: &Keyring,
    ) -> Result<Pending, BrokerError> {
        let (body, props) = task_bundle_message(account_id, tasks.iter().collect(), keys);
        self.send(Route::queue(events_queue), &body, props).await
    }

    /// Puts `message` as it came (body, properties, headers) in `queue` — a delay queue, which
    /// hands it back to the events queue when its TTL expires — and waits for the confirm; the
    /// caller acks the original only then.
    pub async fn park(&self, queue: &str, message: &super::Inbound) -> Result<(), BrokerError> {
        self.publish(Route::queue(queue), message.body(), message.properties())
            .await
    }

    /// Publishes a control message (JSON) to the fanout exchange `exchange`, with a confirm.
    pub async fn publish_control(&self, exchange: &str, body: &[u8]) -> Result<(), BrokerError> {
        let route = Route {
            exchange,
            routing_key: "",
        };
        let props = BasicProperties::default().with_content_type("application/json".into());
        self.publish(route, body, props).await
    }

    /// [`publish`](Self::publish), tried again a few times over ~3 s while the broker is
    /// reachable: a nack under load should not push the whole message back to the queue.
    pub async fn publish_retrying(
        &self,
        route: Route<'_>,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.publish(route, body, props.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if wait <= Duration::from_secs(2) && self.is_connected() => {
                    tracing::warn!(error = %e, "publish failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A message sent and not yet confirmed ([`Publisher::send`]).
pub struct Pending {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Pending {
    /// Waits for the broker's confirm: `Ok` once it took the message into a queue.
    pub async fn confirmed(self) -> Result<(), BrokerError> {
        let exchange = self.exchange;
        let confirm = self
            .confirm
            .await
            .map_err(|e| BrokerError::or_not_found(e, || format!("exchange {exchange:?}")))?;
        let target = || format!("{:?}/{:?}", exchange, self.routing_key);
        match confirm {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(target())),
            lapin::Confirmation::Nack(_) => Err(BrokerError::Nacked(target())),
            lapin::Confirmation::NotRequested => {
                unreachable!("publisher channel is in confirm mode")
            }
        }
    }
}

/// Longest wait for the confirm of a task an operator enqueued (replay, test event). A broker
/// under a memory or disk alarm blocks publishers without a word; the caller (who holds a
/// replay claim, or an HTTP request) must get an answer. The message may still go out once the
/// alarm clears: the receiver sees the same `webhook-id` again at worst. Kept below the store's
/// [`SQLITE_BUSY_TIMEOUT`](crate::store::SQLITE_BUSY_TIMEOUT): a replay holds its claim (on
/// SQLite, the write lock) while it waits, and other writers must not time out behind it.
pub const TASK_CONFIRM_TIMEOUT: Duration = Duration::from_secs(4);
const _: () = assert!(
    TASK_CONFIRM_TIMEOUT.as_millis() < crate::store::SQLITE_BUSY_TIMEOUT.as_millis(),
    "a replay's claim must not outlast the store's busy_timeout"
);
