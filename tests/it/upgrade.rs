//! Upgrading a running deployment and rotating its message key: what an earlier version left in
//! the queues is kept, an events queue declared without a dead-letter target keeps working and
//! is moved by `migrate-queues` without losing a message, and a key rotation never fails a
//! retry already under way.

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use webhook_dispatcher::broker::task_message;
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::Store;
use webhook_dispatcher::wire::{DeliveryTask, TaskKind};

use crate::support::*;
use crate::trust::{headers, publish};

#[tokio::test]
async fn messages_an_earlier_version_left_in_the_queues_are_kept_but_not_believed() {
    let mut service = ServiceProcess::start(&[]).await;
    let receiver = Receiver::start().await;
    let sub = service.subscribe("acct_acme", &receiver.url).await;
    service.stop(PATIENCE).await;
    // As a version before sealing wrote them: a retry waiting in a delay queue, and a dead letter
    // waiting in P.dead (its store was down, say).
    let retry = json!({
        "event_id": "evt_old_retry", "account_id": "acct_acme", "subscription_id": sub,
        "event": "purchase", "body": "{\"event\":\"purchase\",\"timestamp\":\"2026-12-01T00:00:00Z\",\"data\":{\"visitor_id\":\"v\"}}",
        "attempts": [{"attempt": 1, "started_at": "2026-12-01T00:00:00.000Z", "duration_ms": 3, "status": 503, "error": "endpoint answered HTTP 503"}]
    });
    publish(
        "",
        &format!("{}.retry.2s", service.prefix),
        retry.to_string().as_bytes(),
        headers(&[("x-webhook-task", "delivery")]),
    )
    .await;
    let old_dead = exhausted_purchase("evt_old_dead", "acct_acme", &sub);
    publish(
        "",
        &service.dead_queue(),
        &serde_json::to_vec(&old_dead).unwrap(),
        headers(&[]),
    )
    .await;
    service.restart().await;

    let task = service.wait_for_logs("reason=forged_task", 1).await;
    assert!(
        task[0]["detail"].as_str().unwrap().contains("no signature"),
        "says why: {}",
        task[0]
    );
    assert_eq!(
        task[0]["payload"]["event_id"], "evt_old_retry",
        "the whole retry is kept: {}",
        task[0]
    );
    let dead = service.wait_for_logs("reason=forged_dead_letter", 1).await;
    assert_eq!(dead[0]["trusted"], false);
    assert_eq!(
        dead[0]["payload"]["event_id"], "evt_old_dead",
        "kept whole: {}",
        dead[0]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 0, "neither is delivered");
}

/// Replaces the service's events queue (empty, the service stopped) with one declared as
/// `version` did (0.1: no dead-letter target; 0.2: no delivery limit).
async fn declare_earlier_events_queue(service: &ServiceProcess, version: &str) {
    let (conn, channel) = confirm_channel(&amqp_url()).await;
    let events = service.events_queue();
    channel
        .queue_delete(events.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the events queue");
    let args = topology_of(service)
        .earlier_events_args()
        .into_iter()
        .find(|(v, _)| *v == version)
        .map(|(_, args)| args)
        .unwrap_or_else(|| panic!("no arguments of version {version}"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(events.as_str().into(), durable, args)
        .await
        .expect("declare the earlier events queue");
    channel
        .queue_bind(
            events.as_str().into(),
            service.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");
    closed(conn.close(200, "done".into())).await;
}

/// The topology the service declares.
fn topology_of(service: &ServiceProcess) -> webhook_dispatcher::broker::Topology {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(&service.prefix, &service.exchange, dir.path(), &[]);
    webhook_dispatcher::broker::Topology::new(&cfg)
}

/// Whether `queue` exists with the arguments this version declares for the events queue.
async fn has_current_events_arguments(service: &ServiceProcess) -> bool {
    let topology = topology_of(service);
    let (conn, channel) = confirm_channel(&amqp_url()).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let same = channel
        .queue_declare(
            topology.events.as_str().into(),
            durable,
            topology.events_args(),
        )
        .await
        .is_ok();
    closed(conn.close(200, "done".into())).await;
    same
}

#[tokio::test]
async fn an_events_queue_from_0_1_works_and_is_migrated_without_loss() {
    an_earlier_events_queue_works_and_is_migrated_without_loss("0.1").await;
}

#[tokio::test]
async fn an_events_queue_from_0_2_works_and_is_migrated_without_loss() {
    an_earlier_events_queue_works_and_is_migrated_without_loss("0.2").await;
}

async fn an_earlier_events_queue_works_and_is_migrated_without_loss(version: &str) {
    let mut service = ServiceProcess::start(&[]).await;
    let receiver = CountingReceiver::start(204, Duration::ZERO).await;
    service.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    service.stop(PATIENCE).await;
    declare_earlier_events_queue(&service, version).await;
    assert!(!has_current_events_arguments(&service).await);
    let ids = event_ids("migrate", 400);
    let producer = Producer::connect(&service.exchange).await;
    assert_eq!(producer.publish_events(&ids[..50]).await, 50);

    // The new version runs on the old queue, and says what to do about it.
    service.restart().await;
    receiver.wait_distinct(50, PATIENCE).await;
    let logs = service.current_logs();
    assert!(
        logs.contains(&format!("declared by an earlier version ({version})"))
            && logs.contains("migrate-queues"),
        "the log says which version and names the command"
    );
    let busy = service.cli(&["migrate-queues"], b"").await;
    busy.expect_code(1);
    assert!(busy.stderr.contains("stop every instance"), "{busy:?}");

    service.stop(PATIENCE).await;
    assert_eq!(producer.publish_events(&ids[50..100]).await, 50);
    // Producers keep publishing while the queue is moved.
    let publishing = {
        let exchange = service.exchange.clone();
        let later = ids[100..].to_vec();
        tokio::spawn(async move {
            let producer = Producer::connect(&exchange).await;
            let mut confirmed = 0;
            for batch in later.chunks(10) {
                confirmed += producer.publish_events(batch).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            confirmed
        })
    };
    let run = service.cli(&["migrate-queues"], b"").await;
    run.expect_code(0);
    assert!(run.stdout.starts_with("migrated "), "{run:?}");
    assert_eq!(publishing.await.unwrap(), 300);
    assert!(has_current_events_arguments(&service).await);
    let holding = format!("{}.migrating", service.events_queue());
    let (conn, channel) = confirm_channel(&amqp_url()).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert!(
        channel
            .queue_declare(holding.as_str().into(), passive, FieldTable::default())
            .await
            .is_err(),
        "the holding queue is gone"
    );
    closed(conn.close(200, "done".into())).await;
    let again = service.cli(&["migrate-queues"], b"").await;
    again.expect_code(0);
    assert!(again.stdout.contains("nothing to migrate"), "{again:?}");

    service.restart().await;
    if tokio::time::timeout(PATIENCE, receiver.wait_distinct(ids.len(), PATIENCE * 2))
        .await
        .is_err()
    {
        // What the service was doing, for a failure that is rare: stalled or lost?
        let metrics = service.metrics().await;
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("deferred")
                        || l.contains("intake_waiting")
                        || l.contains("in_flight")
                        || l.contains("queue_messages")
                        || l.contains("parked")
                        || l.contains("outcome=\"success\""))
            })
            .collect();
        panic!(
            "after the migration only {} of {} distinct deliveries arrived ({} requests); the service's metrics:\n{}",
            receiver.distinct(),
            ids.len(),
            receiver.total(),
            lines.join("\n")
        );
    }
    let counts = receiver.counts();
    let lost = ids.iter().filter(|id| !counts.contains_key(*id)).count();
    let duplicates: u32 = counts.values().map(|n| n - 1).sum();
    println!("migrate-queues from {version}: sent=400 lost={lost} duplicates={duplicates}");
    assert_eq!(lost, 0);
    // An event published in one of the two instants when both queues are bound is in both, and
    // is delivered twice under its one id; never more.
    assert!(counts.values().all(|&n| n <= 2), "{counts:?}");
    assert!(
        !service
            .current_logs()
            .contains("declared by an earlier version"),
        "no warning once migrated"
    );
}

#[tokio::test]
async fn a_key_rotation_keeps_retries_under_way_valid_and_new_keys_are_learned_at_once() {
    let service = ServiceProcess::start(&[("RETRY_DELAYS", "1s")]).await;
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Status(503), Reply::Status(204)]);
    let sub = service.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    let producer = Producer::connect(&service.exchange).await;
    let ids = event_ids("rotate", 1);
    producer.publish_events(&ids).await;
    receiver.wait_for(1, PATIENCE).await;

    // The retry waits in its delay queue, sealed with key 1, while the key is rotated.
    let rotated = service.cli(&["keys", "rotate"], b"").await;
    rotated.expect_code(0);
    let lines: Vec<&str> = rotated.stdout.lines().map(str::trim_start).collect();
    assert!(
        lines[1].starts_with("2 ") && lines[1].contains("seals and verifies"),
        "{rotated:?}"
    );
    assert!(
        lines[2].starts_with("1 ") && lines[2].contains("verifies"),
        "{rotated:?}"
    );
    let got = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(got[1].header("webhook-id"), ids[0], "the retry went out");

    // A task sealed with the new key (as another process would seal it now) is believed by a
    // service that has not reloaded its keys yet: it reloads on meeting the key.
    let store = Store::open_existing(&sqlite_url(service.db_path()))
        .await
        .unwrap();
    let keys = Keyring::load(std::sync::Arc::new(store.clone()))
        .await
        .unwrap();
    store.close().await;
    let task = DeliveryTask::first_attempt(
        "evt_new_key",
        LOAD_ACCOUNT,
        &sub,
        "purchase",
        r#"{"event":"purchase","timestamp":"2026-12-01T00:00:00Z","data":{"visitor_id":"v"}}"#
            .into(),
    );
    let (body, props) = task_message(&task, TaskKind::Test, &keys);
    assert_eq!(
        props.headers().as_ref().unwrap().inner()["x-webhook-key"],
        AMQPValue::LongString(b"2".to_vec().into())
    );
    publish("", &service.events_queue(), &body, props).await;
    let got = receiver.wait_for(3, PATIENCE).await;
    assert_eq!(got[2].header("webhook-id"), "evt_new_key");
    assert_eq!(
        service
            .metric_sum("webhook_forged_messages_total", "")
            .await,
        0.0
    );
}
