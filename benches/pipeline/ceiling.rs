//! The ceiling: the least any dispatcher must do per message — consume, POST the body, ack —
//! as a bare loop in this process, and the broker helpers it and the scenarios share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
use crate::support::{closed, wait_until_every};
use crate::{Options, event};

/// A channel on `conn` in publisher-confirm mode.
pub async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch
}

/// Publishes persistent JSON messages with confirms, pipelined in windows of 1,000.
pub async fn publish_all(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let messages = bodies.map(|body| (body, props.clone()));
    publish_all_with(ch, exchange, routing_key, messages).await;
}

/// [`publish_all`] with each message's own properties.
pub async fn publish_all_with(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
) {
    let mut pending = Vec::with_capacity(1000);
    for (body, props) in messages {
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
        delivery_limit: 20,
        bundles: false,
    };
    Topology::queues_only(&queues).plain_args()
}

/// How the bare loop acks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acking {
    /// Each message on its own, as soon as its POSTs are answered.
    Each,
    /// Gathered, as the service does: every 2 ms one `multiple` ack through the highest tag
    /// below which every message is answered.
    Gathered,
}

/// The bare loop: consume, POST the body `fan` times (one per subscription, as a fan-out
/// would), ack — the least any dispatcher must do per message — with at most `concurrency`
/// POSTs in flight. Its HTTP pool keeps a connection per concurrent request, so it never
/// reconnects mid-run. Runs until its channel closes; counts acks in `acked`.
pub fn bare_loop(
    mut consumer: lapin::Consumer,
    url: String,
    fan: usize,
    concurrency: usize,
    acking: Acking,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(concurrency));
    let gathered = (acking == Acking::Gathered).then(|| gather_acks(acked.clone()));
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let (client, url, acked, limit) =
                (client.clone(), url.clone(), acked.clone(), limit.clone());
            let gathered = gathered.clone();
            tokio::spawn(async move {
                let body = bytes::Bytes::from(delivery.data);
                let posts = (0..fan).map(|_| {
                    let (client, url, body, limit) =
                        (client.clone(), url.clone(), body.clone(), limit.clone());
                    async move {
                        let _permit = limit.acquire_owned().await.unwrap();
                        let resp = client
                            .post(&url)
                            .body(body)
                            .send()
                            .await
                            .expect("receiver answers");
                        assert!(resp.status().is_success());
                    }
                });
                join_all(posts).await;
                if let Some(gather) = gathered {
                    let _ = gather.send((delivery.delivery_tag, delivery.acker));
                } else if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    })
}

/// The bare loop's ack gatherer: answered messages by delivery tag (a fresh channel's tags
/// start at 1); every 2 ms one `multiple` ack through the last of the unbroken run from the
/// lowest tag not yet acked. A bare loop's POSTs all answer within milliseconds, so it needs
/// none of the service's care for messages held long (acks alone above them).
pub fn gather_acks(
    acked: Arc<AtomicU64>,
) -> tokio::sync::mpsc::UnboundedSender<(u64, lapin::Acker)> {
    let (to, mut answered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut waiting = std::collections::BTreeMap::<u64, lapin::Acker>::new();
        let mut next = 1;
        while let Some((tag, acker)) = answered.recv().await {
            waiting.insert(tag, acker);
            tokio::time::sleep(Duration::from_millis(2)).await;
            while let Ok((tag, acker)) = answered.try_recv() {
                waiting.insert(tag, acker);
            }
            let mut through = None;
            while let Some(acker) = waiting.remove(&next) {
                through = Some(acker);
                next += 1;
            }
            if let Some(acker) = through {
                let all = BasicAckOptions { multiple: true };
                if acker.ack(all).await.is_ok() {
                    acked.store(next - 1, Ordering::SeqCst);
                }
            }
        }
    });
    to
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
    let (consumer_ch, consumer) = consumer(conn, &queue, o.prefetch, label).await;
    (queue, consumer_ch, consumer)
}

/// A consumer tagged `tag` on `queue`, on a channel of its own with `prefetch`.
pub async fn consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> (Channel, lapin::Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (ch, consumer)
}

pub async fn drop_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// The concurrencies the ceiling tries; the best is the ceiling (more in flight against one
/// receiver on two cores is slower, fewer leaves it idle: the best depends on the machine).
fn concurrencies(o: &Options) -> &'static [usize] {
    if o.quick {
        &[64, 512]
    } else {
        &[32, 64, 128, 256, 512]
    }
}

/// The best bare loop: its rate, the concurrency that gave it, this process's CPU time per
/// delivery meanwhile (µs: the loop and the receiver), and every one tried.
pub struct Ceiling {
    pub rate: f64,
    pub concurrency: usize,
    pub acking: Acking,
    pub cpu_us: f64,
    pub tried: Vec<(usize, Acking, f64, f64)>,
}

impl Ceiling {
    /// `64: 7200/s · 64 gathered: 9100/s · 128: 8100/s …`, the best in bold.
    pub fn tried(&self) -> String {
        self.tried
            .iter()
            .map(|(c, acking, r, _)| {
                let how = match acking {
                    Acking::Each => "",
                    Acking::Gathered => " gathered",
                };
                if *c == self.concurrency && *acking == self.acking {
                    format!("**{c}{how}: {r:.0}/s**")
                } else {
                    format!("{c}{how}: {r:.0}/s")
                }
            })
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// The ceiling over `messages` preloaded persistent messages, each POSTed `fan` times: the bare
/// loop at each concurrency of [`concurrencies`], acking each message and gathering its acks,
/// timed like the service — deliveries over the span from the first to the last receipt — and
/// every receipt checked (exactly `fan` per message).
pub async fn ceiling(
    o: &Options,
    conn: &Connection,
    receiver: SocketAddr,
    counters: &Arc<Counters>,
    messages: usize,
    fan: usize,
) -> Ceiling {
    let mut tried = Vec::new();
    let runs = concurrencies(o)
        .iter()
        .flat_map(|&c| [(c, Acking::Each), (c, Acking::Gathered)]);
    for (concurrency, acking) in runs {
        let (queue, consumer_ch, consumer) = bare_queue(o, conn, "ceiling", messages).await;
        counters.reset();
        let cpu_before = crate::own_cpu_seconds();
        let acked = Arc::new(AtomicU64::new(0));
        let worker = bare_loop(
            consumer,
            format!("http://{receiver}/ok"),
            fan,
            concurrency,
            acking,
            acked.clone(),
        );
        wait_until_every(
            "the ceiling loop",
            Duration::from_secs(600),
            Duration::from_millis(5),
            || async { acked.load(Ordering::SeqCst) as usize >= messages },
        )
        .await;
        let rate = (messages * fan) as f64 / counters.span_secs();
        let cpu_us = (crate::own_cpu_seconds() - cpu_before) * 1e6 / (messages * fan) as f64;
        tokio::time::sleep(Duration::from_millis(200)).await;
        counters.assert_exactly("ceiling", 0..messages as u64, fan as u32);
        closed(consumer_ch.close(200, "done".into())).await;
        let _ = worker.await;
        drop_queue(conn, &queue).await;
        tried.push((concurrency, acking, rate, cpu_us));
    }
    let (concurrency, acking, rate, cpu_us) = tried
        .iter()
        .copied()
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .expect("at least one concurrency");
    Ceiling {
        rate,
        concurrency,
        acking,
        cpu_us,
        tried,
    }
}
