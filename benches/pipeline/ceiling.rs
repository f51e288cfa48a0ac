//! The ceiling: the least any dispatcher must do per message — consume, POST the body, ack —
//! as a bare loop in this process, and the broker helpers it and the scenarios share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Semaphore;
use webhook_dispatcher::broker::Topology;
use webhook_dispatcher::config::{QueueSettings, QueueType, RetryDelays};

use crate::receiver::Counters;
use crate::support::wait_until_every;
use crate::{MAX_IN_FLIGHT, Options, event};

/// A channel on `conn` in publisher-confirm mode.
pub async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch
}

/// Publishes persistent messages with confirms, pipelined in windows of 1,000.
pub async fn publish_all(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) {
    let mut pending = Vec::with_capacity(1000);
    for body in bodies {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == 1000 {
            for c in join_all(pending.drain(..)).await {
                assert!(c.unwrap().is_ack(), "broker refused a benchmark message");
            }
        }
    }
    for c in join_all(pending).await {
        assert!(c.unwrap().is_ack());
    }
}

/// The arguments the service gives its queues, for the bare loop's queue.
fn queue_args(o: &Options) -> FieldTable {
    let kind = if o.classic {
        QueueType::Classic
    } else {
        QueueType::Quorum
    };
    let queues = QueueSettings {
        queue_prefix: "bench".into(),
        queue_type: kind,
        retry_delays: RetryDelays(Vec::new()),
    };
    Topology::queues_only(&queues).plain_args()
}

/// The bare loop: consume, POST the body, ack — the least any dispatcher must do per message.
/// Its HTTP pool keeps a connection per concurrent request, so it never reconnects mid-run.
/// Runs until its channel closes; counts acks in `acked`.
pub fn bare_loop(
    mut consumer: lapin::Consumer,
    url: String,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
            tokio::spawn(async move {
                let resp = client
                    .post(&url)
                    .body(delivery.data)
                    .send()
                    .await
                    .expect("receiver answers");
                assert!(resp.status().is_success());
                if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                drop(permit);
            });
        }
    })
}

/// A fresh queue for the bare loop, `preload` messages published into it, then a consumer on it
/// with the benchmark's prefetch.
pub async fn bare_queue(
    o: &Options,
    conn: &Connection,
    label: &str,
    preload: usize,
) -> (String, Channel, lapin::Consumer) {
    let queue = format!("bench-{}.{label}", uuid::Uuid::new_v4().simple());
    let ch = channel(conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, queue_args(o))
        .await
        .unwrap();
    publish_all(&ch, "", &queue, (0..preload).map(|i| event(label, i))).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(o.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            label.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (queue, consumer_ch, consumer)
}

pub async fn drop_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Scenario 1: the bare loop over N preloaded persistent messages.
pub async fn ceiling(
    o: &Options,
    conn: &Connection,
    receiver: SocketAddr,
    counters: &Arc<Counters>,
) -> f64 {
    let (queue, consumer_ch, consumer) = bare_queue(o, conn, "ceiling", o.events).await;
    counters.reset();
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let worker = bare_loop(consumer, format!("http://{receiver}/ok"), acked.clone());
    // Done when every message is acked, as for the service (which acks after the POST).
    wait_until_every(
        "the ceiling loop",
        Duration::from_secs(600),
        Duration::from_millis(5),
        || async { acked.load(Ordering::SeqCst) as usize >= o.events },
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(counters.ok.load(Ordering::SeqCst) as usize, o.events);
    let _ = consumer_ch.close(200, "done".into()).await;
    let _ = worker.await;
    drop_queue(conn, &queue).await;
    o.events as f64 / elapsed
}
