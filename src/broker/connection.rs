//! The pooled connection (deadpool-lapin) and what is opened on it: sessions for the service,
//! a publisher for the operator commands.

use std::sync::Arc;
use std::time::Duration;

use deadpool_lapin::{Pool, PoolConfig, Runtime, Timeouts};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ConnectionProperties};

use super::inbound::Consumer;
use super::{BrokerError, EventsQueue, Publisher, Session, Topology};
use crate::config::AmqpSettings;

/// Longest wait for each step of closing the broker connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection pool plus everything needed to open a [`Session`].
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
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
        let pool_cfg = deadpool_lapin::Config {
            url: Some(amqp.amqp_url.expose().to_string()),
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
            topology: Arc::new(topology),
            publisher: Publisher::default(),
            prefetch,
        })
    }

    /// A fresh channel on the pooled connection (a dead connection is replaced first).
    pub(super) async fn channel(&self) -> Result<Channel, BrokerError> {
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
            events: Consumer::new(events),
            dead: Consumer::new(dead),
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
