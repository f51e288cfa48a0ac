//! Several replicas of the real binary on one broker (or a three-node cluster) and one
//! PostgreSQL store: changes reach every replica within a second, roles, several broker URLs,
//! the delivery limit, migrations when replicas start together, and nothing lost when a replica
//! is SIGKILLed or the node leading the events queue stops. The load tests print a report line
//! like `tests/it/faults.rs` (`cargo test --test it replicas -- --nocapture`).

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::support::*;

/// Replicas of one service: one queue prefix, one exchange, one PostgreSQL database. Declared
/// before its replicas, it is dropped after them: it deletes the shared queues once every
/// replica is gone (see [`ServiceProcess::shares_topology`]).
struct Group {
    db: TempDatabase,
    prefix: String,
    exchange: String,
    /// Where the queues are deleted.
    broker: String,
}

impl Group {
    async fn new(broker: &str) -> Group {
        Group {
            db: TempDatabase::create().await,
            prefix: unique("rq"),
            exchange: unique("rx"),
            broker: broker.to_string(),
        }
    }

    /// Starts a replica running `roles` on the broker(s) `amqp` (`broker` is where its queues
    /// are deleted afterwards), with `extra` settings.
    async fn start(
        &self,
        broker: &str,
        amqp: &str,
        roles: &str,
        extra: &[(&str, &str)],
    ) -> ServiceProcess {
        let mut env = vec![
            ("AMQP_URL", amqp),
            ("DATABASE_URL", self.db.url.as_str()),
            ("QUEUE_PREFIX", self.prefix.as_str()),
            ("EVENTS_EXCHANGE", self.exchange.as_str()),
            ("ROLES", roles),
        ];
        env.extend_from_slice(extra);
        let mut replica = ServiceProcess::start_on(broker, &env).await;
        replica.shares_topology();
        replica
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let queues = ["events", "retry.2s", "retry.4s", "retry.8s", "dead"]
            .iter()
            .map(|q| format!("{}.{q}", self.prefix))
            .collect();
        delete_topology_at(self.broker.clone(), queues, self.exchange.clone());
    }
}

/// Successful and failed delivery attempts a replica made.
async fn attempts(replica: &ServiceProcess) -> f64 {
    replica
        .metric_sum("webhook_delivery_attempts_total", "")
        .await
}

async fn consumed(replicas: &[&ServiceProcess]) -> f64 {
    let mut sum = 0.0;
    for replica in replicas {
        sum += replica
            .metric_sum("webhook_events_consumed_total", "")
            .await;
    }
    sum
}

/// Sends `method path body` to a replica's API; the status and JSON body.
async fn call(
    replica: &ServiceProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = replica.http.request(method, replica.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("API request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_change_through_an_api_replica_is_honoured_by_every_dispatcher_within_a_second() {
    let broker = amqp_url();
    let group = Group::new(&broker).await;
    // No periodic refresh to speak of: only the announcement can bring a change in time.
    let slow_refresh = [("SUBSCRIPTION_REFRESH", "1h"), ("PREFETCH", "1")];
    let api = group.start(&broker, &broker, "api", &slow_refresh).await;
    let d1 = group
        .start(&broker, &broker, "dispatcher", &slow_refresh)
        .await;
    let d2 = group
        .start(&broker, &broker, "dispatcher,dlq-logger", &slow_refresh)
        .await;
    let dispatchers = [&d1, &d2];

    // Roles: the api replica consumes nothing and is ready; the others serve no API.
    let (_, ready) = call(&api, reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(ready["roles"], json!(["api"]), "{ready}");
    let (status, body) = call(&d1, reqwest::Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 404, "a dispatcher replica serves no API: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api role")
    );
    wait_until("the consumers to be sampled", PATIENCE, || async {
        let page = api.metrics().await;
        metric_sum(
            &page,
            "webhook_queue_consumers",
            &format!("queue=\"{}.events\"", group.prefix),
        ) == 2.0
            && metric_sum(
                &page,
                "webhook_queue_consumers",
                &format!("queue=\"{}.dead\"", group.prefix),
            ) == 1.0
    })
    .await;

    let a = Receiver::start().await;
    let b = Receiver::start().await;
    let producer = Producer::connect(&group.exchange).await;
    let mut phase = 0;
    // Publishes 10 events one second after `changed` (the API's answer), waits until they were
    // handled by both dispatchers (each consumed some: prefetch 1 spreads them), and returns the
    // receivers' new arrivals.
    let mut after_a_second = async |changed: Instant, a: &Receiver, b: &Receiver| {
        phase += 1;
        let (a0, b0) = (a.count(), b.count());
        let before: Vec<f64> = futures_util::future::join_all(
            dispatchers
                .iter()
                .map(|d| async { d.metric_sum("webhook_events_consumed_total", "").await }),
        )
        .await;
        tokio::time::sleep_until((changed + Duration::from_secs(1)).into()).await;
        let ids = event_ids(&format!("phase{phase}"), 10);
        assert_eq!(producer.publish_events(&ids).await, 10);
        let total = before.iter().sum::<f64>() + 10.0;
        wait_until(
            "the dispatchers to consume the events",
            PATIENCE,
            || async { consumed(&dispatchers).await >= total },
        )
        .await;
        for (d, was) in dispatchers.iter().zip(&before) {
            let now = d.metric_sum("webhook_events_consumed_total", "").await;
            assert!(
                now > *was,
                "phase {phase}: every dispatcher took part ({was} → {now})"
            );
        }
        // Deliveries for what was consumed have had time to land.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (a.count() - a0, b.count() - b0)
    };

    // Create.
    let (status, sub) = call(
        &api,
        reqwest::Method::POST,
        "/v1/subscriptions",
        Some(json!({"account_id": LOAD_ACCOUNT, "url": a.url, "events": ["purchase"]})),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().unwrap().to_string();
    let first_secret = sub["secret"].as_str().unwrap().to_string();
    let created = Instant::now();
    let (to_a, _) = after_a_second(created, &a, &b).await;
    assert_eq!(
        to_a, 10,
        "a subscription created through the api replica delivers at once"
    );
    let attempts_each: Vec<f64> =
        futures_util::future::join_all(dispatchers.iter().map(|d| attempts(d))).await;
    assert!(attempts_each.iter().all(|&n| n > 0.0), "{attempts_each:?}");

    // URL change.
    let path = format!("/v1/subscriptions/{id}");
    let (status, _) = call(
        &api,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"url": b.url})),
    )
    .await;
    assert_eq!(status, 200);
    let (to_a, to_b) = after_a_second(Instant::now(), &a, &b).await;
    assert_eq!((to_a, to_b), (0, 10), "the new URL only");

    // Secret rotation, the old secret retired at once: the next deliveries verify with the new
    // one only.
    let (status, rotated) = call(
        &api,
        reqwest::Method::POST,
        &format!("{path}/rotate-secret"),
        Some(json!({"overlap_seconds": 0})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    let before = b.count();
    let (_, to_b) = after_a_second(Instant::now(), &a, &b).await;
    assert_eq!(to_b, 10);
    for received in &b.received()[before..] {
        assert!(
            signature_verifies(&new_secret, received),
            "signed with the new secret"
        );
        assert!(
            !signature_verifies(&first_secret, received),
            "and not with the old one"
        );
    }

    // Disable, then enable.
    let (status, _) = call(
        &api,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    let (to_a, to_b) = after_a_second(Instant::now(), &a, &b).await;
    assert_eq!((to_a, to_b), (0, 0), "a disabled subscription gets nothing");
    let (status, _) = call(
        &api,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, to_b) = after_a_second(Instant::now(), &a, &b).await;
    assert_eq!(to_b, 10, "enabled again");

    // Delete.
    let (status, _) = call(&api, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (to_a, to_b) = after_a_second(Instant::now(), &a, &b).await;
    assert_eq!((to_a, to_b), (0, 0), "a deleted subscription gets nothing");

    // Each dispatcher applied every change from the announcements.
    for d in dispatchers {
        let applied = d
            .metric_sum("webhook_control_messages_total", "result=\"applied\"")
            .await;
        assert!(applied >= 6.0, "{applied}");
    }
    assert!(
        api.metric_sum("webhook_control_messages_total", "result=\"announced\"")
            .await
            >= 6.0
    );
}

#[tokio::test]
async fn a_message_handed_back_past_the_delivery_limit_is_logged_as_delivery_limit() {
    // A replica that logs dead letters but does not dispatch: the test is the consumer of the
    // events queue that keeps handing a message back, as a consumer crashing on it would.
    let service =
        ServiceProcess::start(&[("ROLES", "dlq-logger,api"), ("DELIVERY_LIMIT", "2")]).await;
    let producer = Producer::connect(&service.exchange).await;
    let ids = event_ids("limit", 1);
    assert_eq!(producer.publish_events(&ids).await, 1);
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut handed_back = 0;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let got = channel
            .basic_get(
                service.events_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap();
        match got {
            Some(message) => {
                // A reject, as the service's own requeue sends: RabbitMQ 4 does not count a
                // nack toward the limit.
                message
                    .delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                    .unwrap();
                handed_back += 1;
            }
            None if handed_back > 0 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(
        handed_back, 3,
        "delivered twice within the limit, dead-lettered on the third return"
    );
    let records = service.wait_for_logs("reason=delivery_limit", 1).await;
    assert_eq!(records[0]["event_id"], ids[0].as_str(), "{records:?}");
    assert_eq!(records[0]["event"], "purchase");
    closed(conn.close(200, "bye".into())).await;
}

#[tokio::test]
async fn a_replica_whose_first_broker_url_is_down_is_ready_on_the_next() {
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let urls = format!("{dead},{}", amqp_url());
    let mut service = ServiceProcess::start(&[("AMQP_URL", urls.as_str())]).await;
    service.wait_ready(PATIENCE).await;
    let logs = service.logs();
    assert!(logs.contains("moved to another broker node"), "{logs}");
    assert!(!logs.contains("guest:guest"), "no password in the log");
    // And it works there.
    let receiver = CountingReceiver::start(200, Duration::ZERO).await;
    service.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    let producer = Producer::connect(&service.exchange).await;
    let ids = event_ids("next", 5);
    producer.publish_events(&ids).await;
    receiver.wait_distinct(5, PATIENCE).await;
    service.stop(PATIENCE).await;
}

#[tokio::test]
async fn replicas_starting_together_on_a_fresh_postgresql_migrate_it_once() {
    let broker = amqp_url();
    let group = Group::new(&broker).await;
    let started =
        futures_util::future::join_all((0..3).map(|_| group.start(&broker, &broker, "all", &[])))
            .await;
    assert_eq!(started.len(), 3);
    let mut conn = sqlx::PgConnection::connect(&group.db.url).await.unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, COUNT(*) FROM _sqlx_migrations WHERE success GROUP BY version ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    // All three are ready (a migration racing another fails its replica's start) and the schema
    // is whole.
    assert_eq!(rows.len(), migrations, "{rows:?}");
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM portal_keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        keys <= 1,
        "one portal key however many started at once: {keys}"
    );
}

/// The longest time without a new distinct delivery at `receiver`, from now until `done`
/// (polled every 10 ms): how long a fault really stopped deliveries.
fn longest_stall(
    receiver: CountingReceiver,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let (mut seen, mut since, mut longest) =
            (receiver.distinct(), Instant::now(), Duration::ZERO);
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = receiver.distinct();
            if now != seen {
                longest = longest.max(since.elapsed());
                (seen, since) = (now, Instant::now());
            }
        }
        longest
    })
}

/// Publishes one `purchase` per id to `exchange` at `url` with confirms, publishing again what
/// the broker nacks or loses while a node goes away (a producer that wants nothing lost).
async fn publish_reliably(url: String, exchange: String, ids: Vec<String>) {
    let mut pending: Vec<String> = ids;
    while !pending.is_empty() {
        let Ok((conn, channel)) = tokio::time::timeout(PATIENCE, async {
            let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((conn, channel))
        })
        .await
        .unwrap_or_else(|_| panic!("no broker at {url} within {PATIENCE:?}")) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut failed = Vec::new();
        for batch in pending.chunks(100) {
            let mut confirms = Vec::new();
            for id in batch {
                let body = format!(
                    r#"{{"id":"{id}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"{LOAD_ACCOUNT}","data":{{"visitor_id":"v"}}}}"#
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.as_str().into());
                let sent = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "purchase".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await;
                confirms.push((id.clone(), sent));
            }
            for (id, sent) in confirms {
                let acked = match sent {
                    Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
                    Err(_) => false,
                };
                if !acked {
                    failed.push(id);
                }
            }
        }
        closed(conn.close(200, "bye".into())).await;
        pending = failed;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn three_replicas_on_postgresql_lose_nothing_when_one_is_sigkilled_mid_load() {
    let broker = amqp_url();
    let group = Group::new(&broker).await;
    let receiver = CountingReceiver::start(200, Duration::from_millis(5)).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            group
                .start(&broker, &broker, "all", &[("PREFETCH", "64")])
                .await,
        );
    }
    replicas[0].subscribe(LOAD_ACCOUNT, &receiver.url).await;
    wait_until(
        "the subscription to reach every replica",
        PATIENCE,
        || async {
            let mut all = true;
            for r in &replicas {
                all &= r
                    .metric_sum("webhook_control_messages_total", "result=\"applied\"")
                    .await
                    >= 1.0;
            }
            all
        },
    )
    .await;
    let n = fault_events();
    let ids = event_ids("kill", n);
    let load = tokio::spawn(publish_reliably(
        broker.clone(),
        group.exchange.clone(),
        ids.clone(),
    ));
    wait_until(
        "a third of the load delivered",
        Duration::from_secs(60),
        || async { receiver.distinct() >= n / 3 },
    )
    .await;
    wait_until("deliveries in flight on the victim", PATIENCE, || async {
        replicas[0]
            .metric_sum("webhook_deliveries_in_flight", "")
            .await
            > 0.0
    })
    .await;
    replicas[0].sigkill();
    let killed = Instant::now();
    replicas[0].wait_exit(PATIENCE).await;
    load.await.unwrap();
    receiver.wait_distinct(n, Duration::from_secs(120)).await;
    let drain = killed.elapsed();
    let report = Report::new(
        "replica_sigkill",
        &ids,
        &receiver.counts(),
        Duration::ZERO,
        drain,
    )
    .with("replicas", 3)
    .with("prefetch", 64);
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(
        report.duplicates <= 64,
        "only what the killed replica held unacked (prefetch 64) may come twice: {report}"
    );
}

#[tokio::test]
async fn nothing_is_lost_when_the_node_leading_the_events_queue_stops_mid_load() {
    let cluster = Cluster::start(3).await;
    let group = Group::new(&cluster.nodes[0].amqp_url()).await;
    let n = 10_000;
    let receiver = CountingReceiver::start(200, Duration::ZERO).await;
    // Two replicas, each first on a different node, every node listed; one of them on the node
    // that leads the events queue.
    let settings = [("PREFETCH", "128"), ("QUEUE_TYPE", "quorum")];
    let home = cluster.nodes[0].amqp_url();
    let r1 = group
        .start(&home, &cluster.amqp_urls(0), "all", &settings)
        .await;
    let events = format!("{}.events", group.prefix);
    let (leader, members) = cluster.leader_of(&events).await;
    assert_eq!(
        members.len(),
        3,
        "{events} is replicated on all three nodes: {members:?}"
    );
    let r2_first = if leader == 0 { 1 } else { leader };
    let r2 = group
        .start(&home, &cluster.amqp_urls(r2_first), "all", &settings)
        .await;
    let on_leader = if leader == 0 { &r1 } else { &r2 };
    r1.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    wait_until(
        "the subscription to reach both replicas",
        PATIENCE,
        || async {
            r2.metric_sum("webhook_control_messages_total", "result=\"applied\"")
                .await
                >= 1.0
        },
    )
    .await;

    // The producer stays on a node that keeps running.
    let producer_node = (leader + 1) % 3;
    let ids = event_ids("leader", n);
    let load = tokio::spawn(publish_reliably(
        cluster.nodes[producer_node].amqp_url(),
        group.exchange.clone(),
        ids.clone(),
    ));
    wait_until(
        "a quarter of the load delivered",
        Duration::from_secs(120),
        || async { receiver.distinct() >= n / 4 },
    )
    .await;
    let mut cluster = cluster;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stalls = longest_stall(receiver.clone(), done.clone());
    let stopping = Instant::now();
    cluster.nodes[leader].stop().await;
    let stopped = Instant::now();
    load.await.unwrap();
    receiver.wait_distinct(n, Duration::from_secs(180)).await;
    let drain = stopped.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    // Recovery: the longest time without a new delivery from the stop until all arrived.
    let recover = stalls.await.unwrap();
    let (new_leader, _) = cluster.leader_of(&events).await;
    let report = Report::new("leader_node_stop", &ids, &receiver.counts(), recover, drain)
        .with("replicas", 2)
        .with("nodes", 3)
        .with("stop_ms", (stopped - stopping).as_millis())
        .with("old_leader", leader)
        .with("new_leader", new_leader);
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_ne!(new_leader, leader);
    assert!(
        on_leader.logs().contains("moved to another broker node"),
        "the replica on the stopped node moved to another"
    );
    assert!(
        report.duplicates <= 2 * 128,
        "at most what the two replicas held unacked (prefetch 128 each) comes twice: {report}"
    );
    drop((r1, r2));
}
