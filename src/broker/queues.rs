//! Queue operations beyond consuming: counting (the queue sampler, `dlq stats`), reading one
//! message at a time (`dlq drain`), and what `migrate-queues` needs to move the events queue.
//! Each probe that may fail with a channel error (a missing queue, other arguments) gets a
//! channel of its own, since the broker closes the channel on such an error.

use lapin::Channel;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::connection::close_channel;
use super::declare::declare_queue;
use super::{Broker, BrokerError, Inbound, Route};

/// What a passive declare reports of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready (those a consumer holds unacked are not counted).
    pub ready: u32,
    pub consumers: u32,
}

impl Broker {
    /// Ready messages and consumers of `queue`; `None` when it does not exist.
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<QueueCounts>, BrokerError> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let counts = match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => Some(QueueCounts {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            }),
            Err(e) => match BrokerError::or_not_found(e, || queue.to_string()) {
                BrokerError::NotFound(_) => None,
                other => return Err(other),
            },
        };
        close_channel(&channel, "probed").await;
        Ok(counts)
    }

    /// A reader of `queue`, one message at a time.
    pub async fn reader(&self, queue: &str) -> Result<QueueReader, BrokerError> {
        Ok(QueueReader {
            channel: self.channel().await?,
            queue: queue.to_string(),
        })
    }

    /// Whether `queue` exists with the events queue's arguments of this version.
    pub async fn has_events_arguments(&self, queue: &str) -> Result<bool, BrokerError> {
        let channel = self.channel().await?;
        match declare_queue(&channel, queue, self.topology.events_args()).await {
            Ok(()) => {
                close_channel(&channel, "probed").await;
                Ok(true)
            }
            Err(BrokerError::TopologyMismatch { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Declares `queue` with the events queue's arguments of this version (the events queue
    /// itself, or the holding queue of a migration).
    pub async fn declare_with_events_arguments(&self, queue: &str) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        declare_queue(&channel, queue, self.topology.events_args()).await?;
        close_channel(&channel, "declared").await;
        Ok(())
    }

    /// Binds `bind` to the events exchange (`#`), then, on the same channel straight after,
    /// unbinds `unbind` (if given): new events switch queues with no moment where none is bound.
    pub async fn switch_events_binding(
        &self,
        bind: &str,
        unbind: Option<&str>,
    ) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let exchange = self.topology.exchange.as_str();
        channel
            .queue_bind(
                bind.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if let Some(unbind) = unbind {
            unbind_events(&channel, unbind, exchange).await?;
        }
        close_channel(&channel, "bound").await;
        Ok(())
    }

    /// Removes `queue`'s binding to the events exchange (nothing if there is none).
    pub async fn unbind_events(&self, queue: &str) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        unbind_events(&channel, queue, &self.topology.exchange).await?;
        close_channel(&channel, "unbound").await;
        Ok(())
    }

    /// Moves every message from `from` to `to` through the default exchange, each published
    /// unchanged (properties and headers kept) with a confirm before it is acked. Returns how
    /// many; an ack that fails leaves the message in both queues (same id), and is an error.
    pub async fn move_all(&self, from: &str, to: &str) -> Result<u64, BrokerError> {
        let reader = self.reader(from).await?;
        let mut moved = 0;
        while let Some((message, _)) = reader.next().await? {
            let (body, props) = message.parts();
            self.publisher
                .publish(Route::queue(to), body, props.clone())
                .await?;
            if !message.ack().await {
                return Err(BrokerError::Nacked(format!(
                    "the ack in {from} of a message copied to {to} (it is in both now)"
                )));
            }
            moved += 1;
        }
        reader.close().await;
        Ok(moved)
    }

    /// Deletes `queue` and returns how many messages went with it (quorum queues refuse the
    /// `if_empty` condition, so the caller checks for itself). A missing queue is deleted.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.channel().await?;
        let deleted = match channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
        {
            Ok(n) => n,
            Err(e) => match BrokerError::or_not_found(e, || queue.to_string()) {
                BrokerError::NotFound(_) => return Ok(0),
                other => return Err(other),
            },
        };
        close_channel(&channel, "deleted").await;
        Ok(deleted)
    }
}

async fn unbind_events(channel: &Channel, queue: &str, exchange: &str) -> Result<(), BrokerError> {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            "#".into(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Reads a queue one message at a time (`basic.get`) on a channel of its own.
pub struct QueueReader {
    channel: Channel,
    queue: String,
}

impl QueueReader {
    /// The next message and how many were left after it; `None` when the queue is empty.
    pub async fn next(&self) -> Result<Option<(Inbound, u32)>, BrokerError> {
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| BrokerError::or_not_found(e, || format!("queue {}", self.queue)))?;
        Ok(got.map(|message| {
            let left = message.message_count;
            (Inbound::new(message.delivery), left)
        }))
    }

    /// Closes the channel; what was taken and not acked goes back to the queue. An empty
    /// `basic.get` before is a round trip through the queue, so the acks before it are applied.
    pub async fn close(self) {
        close_channel(&self.channel, "done").await;
    }
}
