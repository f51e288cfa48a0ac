//! The broker's share of scenario 9, alone: the same topology the service declares (a quorum
//! events queue, quorum delay queues of 2, 4 and 8 s dead-lettering back into it at least once,
//! `P.dead`), and a bare loop that does only the broker's part of a failing delivery — consume,
//! publish to the next delay queue (or, after the third, to `P.dead`) with a confirm, ack
//! (gathered, as the service does) — no HTTP, no store. What it reaches is the most any dispatcher could reach on this broker and
//! machine; scenario 9's rows are read against it as well as against the ceiling.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use webhook_dispatcher::broker::Topology;
use webhook_dispatcher::config::{QueueSettings, QueueType, RetryDelays};

use crate::ceiling::{channel, consumer, drop_queue, gather_acks, publish_all};
use crate::support::closed;
use crate::{Options, event};

/// Which delay queues a message has been through.
const ROUND: &str = "x-bench-round";

/// What the broker alone carries of the retry path, per second.
pub struct RetryCeiling {
    /// First rounds handed to the first delay queue (over the span from the first to the last).
    pub handed_off: f64,
    /// Messages arriving in `P.dead` after three delays (over the span from the first to the last).
    pub dead: f64,
}

/// Times of the first and the last of `n` events.
#[derive(Default)]
struct Span {
    first: Option<Instant>,
    last: Option<Instant>,
    seen: u64,
}

impl Span {
    fn mark(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.seen += 1;
    }

    fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => self.seen as f64 / (b - a).as_secs_f64(),
            _ => f64::NAN,
        }
    }
}

fn round_of(props: &BasicProperties) -> usize {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ROUND).cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n as usize),
            _ => None,
        })
        .unwrap_or(0)
}

/// `n` events preloaded into a fresh copy of the service's topology, then the bare retry loop
/// with `concurrency` messages in hand (the benchmark's prefetch), until all `n` are in `P.dead`.
pub async fn retry_ceiling(o: &Options, conn: &Connection) -> RetryCeiling {
    let n = o.events;
    let settings = QueueSettings {
        queue_prefix: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        queue_type: if o.classic {
            QueueType::Classic
        } else {
            QueueType::Quorum
        },
        retry_delays: RetryDelays(vec![
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(8),
        ]),
        delivery_limit: 20,
        bundles: false,
    };
    let exchange = format!("{}.exchange", settings.queue_prefix);
    let topology = Topology::with(&exchange, &settings);
    topology
        .declare(|| async { Ok(conn.create_channel().await?) })
        .await
        .expect("the benchmark's topology declares");
    let publisher = channel(conn).await;
    publish_all(
        &publisher,
        "",
        &topology.events,
        (0..n).map(|i| event("retry-ceiling", i)),
    )
    .await;

    let handed = Arc::new(Mutex::new(Span::default()));
    let dead = Arc::new(Mutex::new(Span::default()));
    let (dead_ch, mut dead_deliveries) =
        consumer(conn, &topology.dead, o.prefetch, "bench-retry").await;
    let dead_seen = dead.clone();
    let dead_task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = dead_deliveries.next().await {
            dead_seen.lock().unwrap().mark();
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });

    let (events_ch, mut events) = consumer(conn, &topology.events, o.prefetch, "bench-retry").await;
    let out = Arc::new(channel(conn).await);
    let topology = Arc::new(topology);
    let gather = gather_acks(Arc::new(AtomicU64::new(0)));
    let worker = {
        let (handed, out, topology) = (handed.clone(), out.clone(), topology.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = events.next().await {
                let (handed, out, topology, gather) = (
                    handed.clone(),
                    out.clone(),
                    topology.clone(),
                    gather.clone(),
                );
                tokio::spawn(async move {
                    let round = round_of(&delivery.properties);
                    let to = topology
                        .retries
                        .get(round)
                        .map_or(topology.dead.as_str(), |q| q.name.as_str());
                    let mut headers = FieldTable::default();
                    headers.insert(ROUND.into(), AMQPValue::LongLongInt(round as i64 + 1));
                    let props = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers);
                    publish(&out, to, &delivery.data, props).await;
                    if round == 0 {
                        handed.lock().unwrap().mark();
                    }
                    let _ = gather.send((delivery.delivery_tag, delivery.acker));
                });
            }
        })
    };
    let start = Instant::now();
    while dead.lock().unwrap().seen < n as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the bare retry loop: {} of {n} in P.dead after 600 s",
            dead.lock().unwrap().seen
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = RetryCeiling {
        handed_off: handed.lock().unwrap().rate(),
        dead: dead.lock().unwrap().rate(),
    };
    closed(events_ch.close(200, "done".into())).await;
    let _ = worker.await;
    dead_task.abort();
    closed(dead_ch.close(200, "done".into())).await;
    for queue in topology.queues() {
        drop_queue(conn, queue).await;
    }
    let _ = publisher
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = publisher
        .exchange_delete(topology.control.as_str().into(), Default::default())
        .await;
    result
}

/// Publishes to `queue` through the default exchange and waits for the broker's confirm.
async fn publish(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker refused a benchmark message");
}
