//! The pooled connection (deadpool-lapin) and what is opened on it: sessions for the service,
//! a publisher for the operator commands. With several broker URLs (the nodes of a cluster) the
//! connection is made to the first that answers, in the order given, and when that node goes
//! away, to the next one, wrapping round: a replica never waits for a dead node while another
//! answers, and does not go back to the node it just lost before trying the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_lapin::{Pool, PoolConfig, Runtime, Timeouts};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ConnectionProperties};

use super::inbound::Consumer;
use super::session::Consuming;
use super::{BrokerError, EventsQueue, Publisher, Session, Topology};
use crate::config::AmqpSettings;

/// Longest wait for each step of closing the broker connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `channel`, waiting for the broker's answer at most [`CLOSE_TIMEOUT`]: lapin's close
/// waits for an answer that never comes once the connection's socket is gone (or while a
/// resource alarm blocks it), and nothing here is worth waiting for it.
pub(crate) async fn close_channel(channel: &lapin::Channel, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, why.into())).await;
}

/// One broker node: its pool and its URL as logs show it.
struct Node {
    pool: Pool,
    shown: String,
}

/// `P.dead`'s prefetch: what the DLQ logger may hold unacked, two of its batches, so the next
/// batch arrives while one commits.
pub const DEAD_PREFETCH: u16 = 1024;

/// The connection pools (one per node) plus everything needed to open a [`Session`].
#[derive(Clone)]
pub struct Broker {
    nodes: Arc<Vec<Node>>,
    /// The node connections are taken from.
    current: Arc<AtomicUsize>,
    pub topology: Arc<Topology>,
    pub publisher: Publisher,
    prefetch: u16,
}

impl Broker {
    /// A broker at `amqp` for `topology`; `prefetch` bounds what the events consumer is handed
    /// unacked. Connects lazily.
    pub fn new(
        amqp: &AmqpSettings,
        topology: Topology,
        prefetch: u16,
    ) -> Result<Broker, BrokerError> {
        let nodes = amqp
            .amqp_url
            .urls()
            .iter()
            .map(|url| {
                Ok(Node {
                    pool: node_pool(url.expose())?,
                    shown: url.redacted(),
                })
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        Ok(Broker {
            nodes: Arc::new(nodes),
            current: Arc::new(AtomicUsize::new(0)),
            topology: Arc::new(topology),
            publisher: Publisher::default(),
            prefetch,
        })
    }

    /// A fresh channel on the pooled connection of the current node (a dead connection is
    /// replaced first); if that node does not answer, on the next one that does.
    pub(super) async fn channel(&self) -> Result<Channel, BrokerError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..self.nodes.len() {
            let at = (start + step) % self.nodes.len();
            let node = &self.nodes[at];
            match node.pool.get().await {
                Ok(conn) => {
                    if at != start {
                        self.current.store(at, Ordering::Relaxed);
                        tracing::warn!(node = %node.shown, "moved to another broker node");
                    }
                    return Ok(conn.create_channel().await?);
                }
                Err(e) => failures.push(format!("{}: {e}", node.shown)),
            }
        }
        // Next time, start after the node that failed first.
        self.current
            .store((start + 1) % self.nodes.len(), Ordering::Relaxed);
        Err(BrokerError::Pool(failures.join("; ")))
    }

    /// Connects (or reuses the live pooled connection), declares the topology, installs a fresh
    /// confirm channel in the publisher and starts the consumers `consuming` asks for, and the
    /// control consumer.
    pub async fn open_session(&self, consuming: Consuming) -> Result<Session, BrokerError> {
        match self.topology.declare(|| self.channel()).await? {
            EventsQueue::Current => {}
            EventsQueue::Earlier("0.2") => tracing::warn!(
                queue = %self.topology.events,
                "the events queue was declared by an earlier version (0.2), without a delivery \
                 limit: DELIVERY_LIMIT is not applied (RabbitMQ 4 applies its default of 20). \
                 Stop every instance and run `webhook-dispatcher migrate-queues` to move it \
                 (README, Upgrading)"
            ),
            EventsQueue::Earlier(_) => tracing::error!(
                queue = %self.topology.events,
                "the events queue was declared by an earlier version (0.1), without a dead-letter \
                 target: RabbitMQ drops an event that expires in it (and on RabbitMQ 4 one handed \
                 back 20 times). It works otherwise. Stop every instance and run \
                 `webhook-dispatcher migrate-queues` to move it (README, Upgrading)"
            ),
        }

        let publish = self.confirm_channel().await?;
        let events = if consuming.events {
            Some(self.events_consumer().await?)
        } else {
            None
        };
        let dead = if consuming.dead {
            Some(
                self.consume(&self.topology.dead, DEAD_PREFETCH, "webhook-dispatcher-dlq")
                    .await?,
            )
        } else {
            None
        };
        let control = self.follow_control().await?;
        self.publisher.set(Some(publish));
        Ok(Session {
            events,
            dead,
            control,
        })
    }

    /// A consumer on the events queue, on a channel of its own: the session's, and the one the
    /// dispatcher moves to when the acks on its current channel stopped being gathered.
    pub async fn events_consumer(&self) -> Result<Consumer, BrokerError> {
        self.consume(&self.topology.events, self.prefetch, "webhook-dispatcher")
            .await
    }

    /// A consumer on `queue` with `prefetch` on a channel of its own.
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BrokerError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer::new(consumer, channel))
    }

    /// This replica's queue on the control exchange, `P.control.<random>` (inside the service's
    /// names, so the documented permissions cover it): exclusive (gone with the connection;
    /// RabbitMQ 4 deprecates transient queues that are not), consumed without acks.
    async fn follow_control(&self) -> Result<Consumer, BrokerError> {
        let channel = self.channel().await?;
        let name = format!(
            "{}.{}",
            self.topology.control,
            uuid::Uuid::new_v4().simple()
        );
        let queue = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().as_str().into(),
                self.topology.control.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "webhook-dispatcher-control".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer::new(consumer, channel))
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
        let node = &self.nodes[self.current.load(Ordering::Relaxed)];
        if let Ok(Ok(conn)) = tokio::time::timeout(CLOSE_TIMEOUT, node.pool.get()).await {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutting down".into())).await;
        }
        for node in self.nodes.iter() {
            node.pool.close();
        }
    }

    /// The node connections are taken from now, as logs show it.
    pub fn node(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed)].shown
    }
}

/// The pool of one node's connection; connects lazily.
fn node_pool(url: &str) -> Result<Pool, BrokerError> {
    let pool_cfg = deadpool_lapin::Config {
        url: Some(url.to_string()),
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
    pool_cfg
        .create_pool(
            || ConnectionProperties::default().with_connection_name("webhook-dispatcher".into()),
            Runtime::Tokio1,
        )
        .map_err(|e| BrokerError::Pool(e.to_string()))
}
