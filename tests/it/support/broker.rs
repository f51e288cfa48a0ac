//! The test's own side of the broker: confirm channels, publishing, a producer of load events,
//! queue depths, and deleting a test's topology afterwards.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::{LOAD_ACCOUNT, amqp_url};

/// Waits for a connection's or channel's close at most 5 s. lapin's close waits for the broker's
/// answer, which never comes once the socket is gone: a benchmark run once sat for good at its
/// last close, its connection's socket already closed. Every close in the tests and the
/// benchmark goes through here, as the service bounds its own.
pub async fn closed<E>(close: impl std::future::Future<Output = Result<(), E>>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
}

/// Deletes queues and an exchange, from a thread with its own runtime so it works in `Drop`
/// and in async code alike.
pub fn delete_topology(queues: Vec<String>, exchange: String) {
    delete_topology_at(amqp_url(), queues, exchange);
}

/// [`delete_topology`] on the broker at `url`. Gives up after 10 s (a broker that is down or
/// stuck in its boot), and ignores queues and exchanges that do not exist.
pub fn delete_topology_at(url: String, queues: Vec<String>, exchange: String) {
    let _ = std::thread::spawn(move || delete_topology_now(url, queues, exchange)).join();
}

fn delete_topology_now(url: String, queues: Vec<String>, exchange: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let delete = async move {
        let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
            return;
        };
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        // With the events queue `P.events` go what the service and `migrate-queues` make beside
        // it: the control exchange `P.control` and the holding queue `P.events.migrating`.
        let prefixes: Vec<String> = queues
            .iter()
            .filter_map(|q| q.strip_suffix(".events").map(str::to_string))
            .collect();
        let holding = prefixes.iter().map(|p| format!("{p}.events.migrating"));
        for queue in queues.iter().cloned().chain(holding) {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let control = prefixes.iter().map(|p| format!("{p}.control"));
        for exchange in std::iter::once(exchange).chain(control) {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        closed(conn.close(200, "bye".into())).await;
    };
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), delete).await });
}

/// A connection to the broker at `url` and a channel on it in publisher-confirm mode.
pub async fn confirm_channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("test connection to the broker");
    let channel = conn.create_channel().await.expect("test channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (conn, channel)
}

/// Publishes each (body, properties) pair (persistent, confirmed) to `exchange` with `routing_key`.
pub async fn publish_messages(
    exchange: &str,
    routing_key: &str,
    messages: &[(Vec<u8>, lapin::BasicProperties)],
) {
    let (_conn, channel) = confirm_channel(&amqp_url()).await;
    for (body, props) in messages {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                Default::default(),
                body,
                props.clone().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the message");
    }
}

/// A producer on its own direct broker connection (never through a test's proxy), publishing
/// with confirms; also reads queue depths.
pub struct Producer {
    conn: Connection,
    channel: lapin::Channel,
    exchange: String,
}

impl Producer {
    /// A producer on the shared broker.
    pub async fn connect(exchange: &str) -> Producer {
        Producer::connect_to(&amqp_url(), exchange).await
    }

    /// A producer on the broker at `url` (a private node).
    pub async fn connect_to(url: &str, exchange: &str) -> Producer {
        let (conn, channel) = confirm_channel(url).await;
        Producer {
            conn,
            channel,
            exchange: exchange.to_string(),
        }
    }

    /// Publishes one persistent `purchase` event per id (the id is the body's `id` and the
    /// AMQP `message_id`), 100 at a time, and returns how many the broker confirmed.
    pub async fn publish_events(&self, ids: &[String]) -> usize {
        let mut confirmed = 0;
        for batch in ids.chunks(100) {
            let mut pending = Vec::with_capacity(batch.len());
            for (i, id) in batch.iter().enumerate() {
                let body = format!(
                    r#"{{"id":"{id}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"{LOAD_ACCOUNT}","data":{{"visitor_id":"v_{i}","amount":299.00}}}}"#
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into());
                let confirm = self
                    .channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        "purchase".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .expect("publish");
                pending.push(confirm);
            }
            for confirm in pending {
                if confirm.await.expect("confirm").is_ack() {
                    confirmed += 1;
                }
            }
        }
        confirmed
    }

    /// Dead letters ready in `queue` (a dead-letter queue): each message counts one, a bundle
    /// as many as its `x-webhook-dead-letters` header says. Reads them without acking, then
    /// closes its channel, which hands them all back (a quorum queue takes them back a moment
    /// later: poll).
    pub async fn dead_letters_ready(&self, queue: &str) -> usize {
        let channel = self.conn.create_channel().await.expect("reading channel");
        let mut held = 0;
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
        {
            let count = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-webhook-dead-letters")? {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
                    _ => None,
                });
            held += count.unwrap_or(1);
        }
        closed(channel.close(200, "read".into())).await;
        held
    }

    /// Messages ready in `queue` (a passive declare; unacked messages are not counted).
    pub async fn ready(&self, queue: &str) -> u32 {
        // A channel per probe: a failed passive declare closes its channel.
        let channel = self.conn.create_channel().await.expect("probe channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        closed(channel.close(200, "probed".into())).await;
        q.message_count()
    }
}

/// How many of `queue`'s messages its consumers hold unacked, as the shared broker counts them
/// (`rabbitmqctl list_queues`: AMQP has no way to ask).
pub async fn messages_unacknowledged(queue: &str) -> u64 {
    let queue = queue.to_string();
    tokio::task::spawn_blocking(move || {
        let columns = ["name", "messages_unacknowledged"];
        let rows = super::rabbitmqctl_list("list_queues", "/", &columns);
        let row = rows
            .iter()
            .find(|row| row["name"] == queue.as_str())
            .unwrap_or_else(|| panic!("no queue {queue} on the broker"));
        row["messages_unacknowledged"]
            .as_u64()
            .expect("a count of unacked messages")
    })
    .await
    .expect("the rabbitmqctl thread")
}
