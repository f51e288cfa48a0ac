//! Failures handed on at the same time travel together: a burst of failed deliveries waits in a
//! delay queue as a few sealed bundles rather than a message each, comes back, and every
//! delivery is still attempted as often as the schedule says and ends in a record of its own.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::Store;
use webhook_dispatcher::wire::DeliveryTask;
use webhook_dispatcher::wire::bundle::TaskBundle;

use crate::support::*;

/// A service with `args` whose one subscription's endpoint answers 503 to everything, and `n`
/// events (ids labelled `label`) published to it at once.
async fn failing_burst(
    args: &[&str],
    label: &str,
    n: usize,
) -> (TestApp, CountingReceiver, Producer, Vec<String>) {
    let endpoint = CountingReceiver::start(503, Duration::ZERO).await;
    let app = spawn_app_with(args).await;
    app.subscribe(LOAD_ACCOUNT, &endpoint.url, &["purchase"])
        .await;
    let producer = Producer::connect(&app.exchange).await;
    let burst = event_ids(label, n);
    assert_eq!(producer.publish_events(&burst).await, burst.len());
    (app, endpoint, producer, burst)
}

/// Waits until the first attempts of `n` events are handed to the one delay queue of 60 s,
/// and returns its name.
async fn handed_to_the_delay_queue(app: &TestApp, n: usize) -> String {
    wait_until(
        "every first attempt handed to the delay queue",
        PATIENCE,
        || async {
            let page = app.metrics().await;
            metric_sum(&page, "webhook_retries_scheduled_total", "") >= n as f64
        },
    )
    .await;
    format!("{}.retry.60s", app.prefix)
}

#[tokio::test]
async fn a_burst_of_failures_waits_in_the_delay_queue_as_a_few_sealed_bundles() {
    // One long delay: the retries stay in the queue while the test reads them.
    let (app, _endpoint, producer, burst) =
        failing_burst(&["--retry-delays", "60s"], "bundled", 600).await;
    let queue = handed_to_the_delay_queue(&app, burst.len()).await;
    let messages = producer.ready(&queue).await as usize;
    println!("{} retries in {messages} messages", burst.len());
    assert!(
        messages < burst.len() / 2,
        "{} retries handed on within moments of each other took {messages} messages",
        burst.len()
    );
    // Every message is sealed by the service, and together they hold each retry once.
    let store = Store::open_existing(&sqlite_url(&app.db_path()))
        .await
        .unwrap();
    let keys = Keyring::load(std::sync::Arc::new(store.clone()))
        .await
        .unwrap();
    let (_conn, channel) = confirm_channel(&amqp_url()).await;
    let mut held: HashMap<String, usize> = HashMap::new();
    let mut bundles = 0;
    for _ in 0..messages {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message of those counted");
        let props = &message.delivery.properties;
        let header = |name: &str| match props.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        };
        let kind = header("x-webhook-task").expect("a task header");
        let body = &message.delivery.data;
        keys.verify(
            &kind,
            body,
            header("x-webhook-key").as_deref(),
            header("x-webhook-mac").as_deref(),
        )
        .await
        .unwrap_or_else(|e| panic!("the seal of a {kind} message: {e}"));
        let tasks = if kind == "bundle" {
            bundles += 1;
            TaskBundle::read(body).unwrap()
        } else {
            vec![DeliveryTask::read(body).unwrap()]
        };
        for task in tasks {
            assert_eq!(task.account_id, LOAD_ACCOUNT);
            assert_eq!(task.attempts.len(), 1, "one attempt made: {task:?}");
            *held.entry(task.event_id).or_default() += 1;
        }
    }
    assert!(bundles > 0, "no bundle among {messages} messages");
    assert_eq!(held.len(), burst.len(), "every retry is held");
    assert!(held.values().all(|&n| n == 1), "each retry once: {held:?}");
    store.close().await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_bundles_off_each_failure_travels_alone() {
    let args = ["--retry-delays", "60s", "--bundles", "false"];
    let (app, _endpoint, producer, burst) = failing_burst(&args, "alone", 200).await;
    let queue = handed_to_the_delay_queue(&app, burst.len()).await;
    wait_until("a message for each retry", PATIENCE, || async {
        producer.ready(&queue).await as usize == burst.len()
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bundled_retries_come_back_and_each_delivery_ends_in_a_record_of_its_own() {
    let (app, endpoint, _producer, burst) =
        failing_burst(&["--retry-delays", "100ms,200ms,300ms"], "exhausted", 400).await;

    let query = format!("account_id={LOAD_ACCOUNT}&limit=500");
    let logs = app.wait_for_logs(&query, burst.len()).await;
    // Settled: nothing more arrives after the last record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, page) = app.get(&format!("/v1/delivery-logs?{query}")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), burst.len());
    let mut recorded: HashMap<&str, usize> = HashMap::new();
    for log in &logs {
        assert_eq!(log["reason"], "exhausted", "{log}");
        assert_eq!(log["attempts"].as_array().unwrap().len(), 4, "{log}");
        *recorded
            .entry(log["event_id"].as_str().unwrap())
            .or_default() += 1;
    }
    let mut ids: Vec<&str> = recorded.keys().copied().collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = burst.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "a record for every event");
    assert!(recorded.values().all(|&n| n == 1), "one record each");
    let counts = endpoint.counts();
    assert_eq!(counts.len(), burst.len());
    assert!(
        counts.values().all(|&n| n == 4),
        "four attempts each: {:?}",
        counts.values().filter(|&&n| n != 4).count()
    );
    let page = app.metrics().await;
    assert_eq!(
        metric_sum(&page, "webhook_dead_letters_persisted_total", ""),
        burst.len() as f64
    );
    assert_eq!(
        metric_sum(&page, "webhook_retries_scheduled_total", ""),
        3.0 * burst.len() as f64
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_replay_sends_an_accounts_records_as_a_few_messages_and_each_arrives_once() {
    const RECORDS: usize = 300;
    for bundles in ["true", "false"] {
        let Replayable {
            mut service,
            receiver,
            store,
            ..
        } = Replayable::start("acct_bundle", RECORDS).await;
        // Stopped, so what the replay sends waits in the events queue to be counted.
        service.stop(PATIENCE).await;
        service
            .cli_with(&[("BUNDLES", bundles)], &["replay", "--all", "--yes"], b"")
            .await
            .expect_code(0);
        let producer = Producer::connect(&service.exchange).await;
        let messages = producer.ready(&service.events_queue()).await as usize;
        println!("BUNDLES={bundles}: {RECORDS} records replayed in {messages} messages");
        if bundles == "true" {
            assert!(
                messages <= RECORDS / 64,
                "{RECORDS} records of one account in {messages} messages"
            );
        } else {
            assert_eq!(messages, RECORDS, "each record alone");
        }
        service.restart().await;
        receiver
            .wait_distinct(RECORDS, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            receiver.counts().values().all(|&n| n == 1),
            "each record delivered once"
        );
        assert_eq!(receiver.total(), RECORDS);
        store.close().await;
    }
}
