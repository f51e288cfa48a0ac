//! The RabbitMQ side: a pooled connection (deadpool-lapin), the topology, confirmed publishing,
//! and [`Session`], one connected generation of channels and consumers. When a connection
//! dies the app builds a new session; lapin's own recovery is not relied on.

pub mod topology;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_lapin::{Pool, PoolConfig, Runtime, Timeouts};
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ConnectionProperties, Consumer};

pub use topology::{EventsQueue, Topology};

use crate::config::Config;
use crate::seal::{DEAD_LETTER_KIND, KEY_HEADER, Keyring, MAC_HEADER};
use crate::wire::{DeadLetter, DeliveryTask, TASK_HEADER, TaskKind};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ: {0}")]
    Pool(String),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "{kind} {name:?} already exists with other arguments; the service declares it with {wanted}; the broker says: {broker}. \
         Delete it (it is recreated on start) or change QUEUE_PREFIX/QUEUE_TYPE/RETRY_DELAYS to match"
    )]
    TopologyMismatch {
        kind: &'static str,
        name: String,
        wanted: String,
        broker: String,
    },
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("the broker refused the message (nack) for {0}")]
    Nacked(String),
    #[error("no queue took the message for {0} (unroutable)")]
    Unroutable(String),
    #[error(
        "the broker did not confirm the message within {0:?} (a resource alarm?); it may still be delivered once the broker takes it"
    )]
    ConfirmTimeout(Duration),
}

impl BrokerError {
    /// A problem retrying will not fix.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BrokerError::TopologyMismatch { .. })
    }
}

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
    fn set(&self, channel: Option<Channel>) {
        *self.channel.write().expect("publisher lock") = channel;
    }

    fn take(&self) -> Option<Channel> {
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
            .await?
            .await?;
        let target = || format!("{:?}/{:?}", route.exchange, route.routing_key);
        match confirm {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(target())),
            lapin::Confirmation::Nack(_) => Err(BrokerError::Nacked(target())),
            lapin::Confirmation::NotRequested => {
                unreachable!("publisher channel is in confirm mode")
            }
        }
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

/// Longest wait for each step of closing the broker connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for an ack or nack. On a live connection one completes as soon as its frame is
/// written; but lapin (4.12) can leave one that was under way when the connection dropped
/// pending forever. The broker requeues that message anyway, so waiting longer would only pin
/// the task — and with it the dead session, and graceful shutdown for its whole grace period.
/// A timed-out ack is not withdrawn: on a live connection its frame still goes out.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Acks a delivery; `false` when the ack failed or did not complete within [`SETTLE_TIMEOUT`]
/// (the broker will deliver the message again).
pub async fn ack(acker: &Acker) -> bool {
    settle(acker.ack(BasicAckOptions::default())).await
}

/// Hands a delivery back to its queue; bounded like [`ack`].
pub async fn requeue(acker: &Acker) -> bool {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    settle(acker.nack(requeue)).await
}

/// Whether an ack or nack completed within [`SETTLE_TIMEOUT`].
async fn settle(op: impl Future<Output = lapin::Result<bool>>) -> bool {
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, op).await, Ok(Ok(true)))
}

/// A delivery task as a message: its JSON, and properties with the task header saying why it
/// was published and the seal over both.
pub fn task_message(
    task: &DeliveryTask,
    kind: TaskKind,
    keys: &Keyring,
) -> (Vec<u8>, BasicProperties) {
    let body = serde_json::to_vec(task).expect("task serialises");
    let seal = keys.seal(kind.as_str(), &body);
    let headers = [
        (TASK_HEADER, kind.as_str()),
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    let props = json_props(&task.event_id, &headers);
    (body, props)
}

/// A dead letter as a message: its JSON, sealed, so the DLQ logger can tell it from a forgery.
pub fn dead_letter_message(dead: &DeadLetter, keys: &Keyring) -> (Vec<u8>, BasicProperties) {
    let body = serde_json::to_vec(dead).expect("dead letter serialises");
    let seal = keys.seal(DEAD_LETTER_KIND, &body);
    let headers = [
        (KEY_HEADER, seal.key_id.as_str()),
        (MAC_HEADER, seal.mac.as_str()),
    ];
    let props = json_props(&dead.id, &headers);
    (body, props)
}

/// Persistent JSON message properties with the given message id and headers.
pub fn json_props(message_id: &str, headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            (*k).into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if let Ok(id) = lapin::types::ShortString::try_new(message_id) {
        props = props.with_message_id(id);
    }
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    props
}

/// The text of header `name`, when present: a string header as it is (lossy UTF-8), any other
/// type as its debug form (a header anyone can set may be of any type; it then fails whatever
/// check it is read for, rather than reading as absent).
pub fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    })
}

/// How RabbitMQ dead-lettered a message: the newest entry of its `x-death` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `expired`, `delivery_limit`, `maxlen` or `rejected`.
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// When (unix seconds), if the broker said.
    pub time: Option<u64>,
    /// Times it was dead-lettered from that queue for that reason.
    pub count: Option<i64>,
}

/// The newest dead-lettering recorded in `props` (RabbitMQ keeps `x-death` newest first); `None`
/// for a message the broker never dead-lettered. The header can be written by any publisher
/// too: what it says decides nothing that matters for trust.
pub fn death(props: &BasicProperties) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = props.headers().as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| match newest.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    let count = match newest.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
        _ => None,
    };
    let time = match newest.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => Some(*t),
        _ => None,
    };
    Some(Death {
        reason: text("reason")?,
        queue: text("queue")?,
        time,
        count,
    })
}

/// The connection pool plus everything needed to open a [`Session`].
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    pub topology: Arc<Topology>,
    pub publisher: Publisher,
    prefetch: u16,
}

/// One connected generation: consumers on the events and dead-letter queues. Dropping it closes its channels (lapin closes a channel when its last
/// handle goes), so it must outlive every ack made on it.
pub struct Session {
    pub events: Consumer,
    pub dead: Consumer,
    pub events_channel: Channel,
    pub dead_channel: Channel,
}

impl Broker {
    pub fn new(cfg: &Config) -> Result<Broker, BrokerError> {
        let pool_cfg = deadpool_lapin::Config {
            url: Some(cfg.amqp_url.clone()),
            pool: Some(PoolConfig {
                max_size: 2,
                timeouts: Timeouts {
                    wait: Some(Duration::from_secs(10)),
                    create: Some(Duration::from_secs(10)),
                    recycle: Some(Duration::from_secs(2)),
                },
                ..PoolConfig::default()
            }),
        };
        let pool = pool_cfg
            .create_pool(
                || {
                    ConnectionProperties::default()
                        .with_connection_name("webhook-dispatcher".into())
                },
                Runtime::Tokio1,
            )
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        Ok(Broker {
            pool,
            topology: Arc::new(Topology::new(cfg)),
            publisher: Publisher::default(),
            prefetch: cfg.prefetch,
        })
    }

    /// A fresh channel on the pooled connection (a dead connection is replaced first).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        Ok(conn.create_channel().await?)
    }

    /// Connects (or reuses the live pooled connection), declares the topology, installs a fresh
    /// confirm channel in the publisher and starts both consumers.
    pub async fn open_session(&self) -> Result<Session, BrokerError> {
        if self.topology.declare(|| self.channel()).await? == EventsQueue::Legacy {
            tracing::error!(
                queue = %self.topology.events,
                "the events queue was declared by an earlier version, without a dead-letter \
                 target: RabbitMQ drops an event that expires in it. It works otherwise. Stop \
                 every instance and run `webhook-dispatcher migrate-queues` to move it (README, \
                 Upgrading)"
            );
        }

        let publish = self.confirm_channel().await?;

        let events_channel = self.channel().await?;
        events_channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let events = events_channel
            .basic_consume(
                self.topology.events.as_str().into(),
                "webhook-dispatcher".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let dead_channel = self.channel().await?;
        dead_channel
            .basic_qos(64, BasicQosOptions::default())
            .await?;
        let dead = dead_channel
            .basic_consume(
                self.topology.dead.as_str().into(),
                "webhook-dispatcher-dlq".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.publisher.set(Some(publish));
        Ok(Session {
            events,
            dead,
            events_channel,
            dead_channel,
        })
    }

    /// A fresh channel in publisher-confirm mode.
    async fn confirm_channel(&self) -> Result<Channel, BrokerError> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    /// Connects once for a one-shot command (the operator CLI): installs a confirm channel in
    /// the publisher; declares nothing and consumes nothing.
    pub async fn connect_publisher(&self) -> Result<(), BrokerError> {
        let publish = self.confirm_channel().await?;
        self.publisher.set(Some(publish));
        Ok(())
    }

    /// Forgets the session's publish channel (called when the session ends).
    pub fn disconnected(&self) {
        self.publisher.set(None);
    }

    /// Closes the pooled connections (on shutdown, after the session's work is finished).
    pub async fn close(&self) {
        // Close the publish channel and wait for the broker's answer before closing the
        // connection; a channel left to close itself on drop races the connection close.
        // Each step is bounded: a broker that stopped reading (a resource alarm blocks the
        // connection) never answers a close, and shutdown must not wait for it.
        if let Some(channel) = self.publisher.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutting down".into()))
                .await;
        }
        if let Ok(Ok(conn)) = tokio::time::timeout(CLOSE_TIMEOUT, self.pool.get()).await {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutting down".into())).await;
        }
        self.pool.close();
    }
}

impl Session {
    /// Stops both consumers; unacked messages go back to the broker when the channels close. On
    /// a quorum queue the cancel is a round trip through the queue, so acks sent before it are
    /// applied by the time it returns.
    pub async fn cancel_consumers(&self) {
        use lapin::options::BasicCancelOptions;
        let _ = self
            .events_channel
            .basic_cancel(self.events.tag(), BasicCancelOptions::default())
            .await;
        let _ = self
            .dead_channel
            .basic_cancel(self.dead.tag(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the channels; anything still unacked on them returns to its queue.
    pub async fn close(&self) {
        for channel in [&self.events_channel, &self.dead_channel] {
            let _ = channel.close(200, "shutting down".into()).await;
        }
    }
}
