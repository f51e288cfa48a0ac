//! The operator CLI (`publish`, `dlq stats`, `dlq drain`, `replay`) as an operator runs it: the
//! real binary, with a service's settings, against the real broker and the service's store.

use std::time::Duration;

use serde_json::{Value, json};
use webhook_dispatcher::broker::dead_letter_message;
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::{LogFilter, Store, Trust};
use webhook_dispatcher::wire::DeadLetter;

use crate::support::*;

/// A service retrying once after 100 ms, with one subscription per account (ids returned in
/// order) to a receiver that answers 503 until told otherwise.
async fn failing_service(accounts: &[&str]) -> (ServiceProcess, Receiver, Vec<String>) {
    let service = ServiceProcess::start(&[("RETRY_DELAYS", "100ms")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    let mut subs = Vec::new();
    for account in accounts {
        subs.push(service.subscribe(account, &receiver.url).await);
    }
    (service, receiver, subs)
}

/// A valid `purchase` envelope for `account` with event id `id`.
fn purchase(id: &str, account: &str) -> String {
    format!(
        r#"{{"id":"{id}","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"{account}","data":{{"visitor_id":"v_1","amount":299.00}}}}"#
    )
}

/// The service's delivery log, read through its API.
async fn logs(service: &ServiceProcess, query: &str) -> Vec<Value> {
    service.delivery_logs(query).await
}

/// The `webhook-id`s of the `n` deliveries `receiver` gets after its first `before`, sorted
/// (waiting for them).
async fn arrived_after(receiver: &Receiver, before: usize, n: usize) -> Vec<String> {
    let got = receiver.wait_for(before + n, PATIENCE).await;
    let mut ids: Vec<String> = got[before..]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    ids.sort();
    ids
}

async fn wait_for_logs(service: &ServiceProcess, query: &str, n: usize) -> Vec<Value> {
    service.wait_for_logs(query, n).await
}

/// Publishes `body` like a producer would, through the CLI's stdin; returns the printed id.
async fn publish(service: &ServiceProcess, body: &str) -> String {
    let run = service.cli(&["publish", "-"], body.as_bytes()).await;
    run.expect_code(0);
    run.stdout.trim().to_string()
}

/// Publishes `bodies` as they are (persistent, confirmed) to `exchange` with `routing_key`.
async fn publish_raw(exchange: &str, routing_key: &str, bodies: &[Vec<u8>]) {
    let messages: Vec<_> = bodies
        .iter()
        .map(|body| (body.clone(), lapin::BasicProperties::default()))
        .collect();
    publish_messages(exchange, routing_key, &messages).await;
}

/// `letters` as the dispatcher publishes them to `P.dead`: sealed with the service's message key
/// (read from its store), so the logger believes them.
async fn sealed(
    service: &ServiceProcess,
    letters: &[DeadLetter],
) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
    let keys = service_keys(service).await;
    letters
        .iter()
        .map(|dl| dead_letter_message(dl, &keys))
        .collect()
}

/// `letters` sealed by the service as one message, a bundle (as its dispatcher makes one when
/// they are dead-lettered together).
async fn sealed_bundle(
    service: &ServiceProcess,
    letters: &[DeadLetter],
) -> (Vec<u8>, lapin::BasicProperties) {
    let keys = service_keys(service).await;
    webhook_dispatcher::broker::dead_letter_bundle_message(letters.iter().collect(), &keys)
}

async fn service_keys(service: &ServiceProcess) -> Keyring {
    let store = Store::open_existing(&sqlite_url(service.db_path()))
        .await
        .expect("the service's store");
    let keys = Keyring::load(std::sync::Arc::new(store.clone()))
        .await
        .expect("the service's message key");
    store.close().await;
    keys
}

fn ids_of(records: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn publish_takes_a_file_stdin_or_flags_and_refuses_what_the_service_would_reject() {
    let service = ServiceProcess::start(&[]).await;
    let receiver = Receiver::start().await;
    service.subscribe("acct_acme", &receiver.url).await;

    let file = format!(
        "{}/tests/fixtures/events/purchase.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let from_file = service.cli(&["publish", &file], b"").await;
    from_file.expect_code(0);
    let from_stdin = service
        .cli(&["publish", "-"], fixture("identify").as_bytes())
        .await;
    from_stdin.expect_code(0);
    let from_flags = service
        .cli(
            &[
                "publish",
                "--event",
                "goal_achieved",
                "--account",
                "acct_acme",
                "--data",
                r#"{"visitor_id":"v_9","goal":"signup"}"#,
                "--id",
                "evt_cli_flags",
            ],
            b"",
        )
        .await;
    from_flags.expect_code(0);
    assert_eq!(from_flags.stdout, "evt_cli_flags\n");

    let got = receiver.wait_for(3, PATIENCE).await;
    let mut printed: Vec<&str> = [&from_file, &from_stdin, &from_flags]
        .iter()
        .map(|run| run.stdout.trim())
        .collect();
    let mut arrived: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    printed.sort();
    arrived.sort();
    assert_eq!(printed, arrived, "each printed id arrives as webhook-id");
    let by_flags = got
        .iter()
        .find(|r| r.header("webhook-id") == "evt_cli_flags")
        .unwrap();
    let body: Value = serde_json::from_slice(&by_flags.body).unwrap();
    assert_eq!(body["event"], "goal_achieved");
    assert_eq!(body["data"], json!({"visitor_id":"v_9","goal":"signup"}));

    // Invalid: the service's own reason, exit 2, nothing published.
    let unknown = service
        .cli(
            &["publish", "-"],
            br#"{"event":"refund","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_acme","data":{"visitor_id":"v"}}"#,
        )
        .await;
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains(
            r#"invalid event (unknown_event): unknown event "refund"; expected one of purchase"#
        ),
        "{unknown:?}"
    );
    let no_visitor = service
        .cli(
            &[
                "publish",
                "--event",
                "purchase",
                "--account",
                "acct_acme",
                "--data",
                "{}",
            ],
            b"",
        )
        .await;
    no_visitor.expect_code(2);
    assert!(
        no_visitor
            .stderr
            .contains("missing required field data.visitor_id"),
        "{no_visitor:?}"
    );
    let usage = service.cli(&["publish", "--event", "purchase"], b"").await;
    usage.expect_code(2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 3);
    assert_eq!(
        service
            .metric_sum("webhook_events_rejected_total", "")
            .await,
        0.0,
        "nothing invalid reached the service"
    );
    assert_eq!(
        service
            .metric_sum("webhook_events_consumed_total", "")
            .await,
        3.0
    );
}

#[tokio::test]
async fn the_cli_needs_no_token_and_names_an_unreachable_broker_without_its_password() {
    let service = ServiceProcess::start(&[]).await;
    let port = free_port();
    let url = format!("--amqp-url=amqp://guest:hunter2@127.0.0.1:{port}/%2f");
    let run = service
        .cli(&["publish", &url, "-"], fixture("purchase").as_bytes())
        .await;
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:{port}/%2f: "
        )),
        "{run:?}"
    );
    assert!(!run.stderr.contains("hunter2"), "{run:?}");

    // No ADMIN_TOKEN needed, even where `serve` would refuse to start without one; and nothing
    // is bound (every run here shares the running service's LISTEN_ADDR).
    let open = service
        .cli_with(&[("LISTEN_ADDR", "0.0.0.0:8080")], &["dlq", "stats"], b"")
        .await;
    open.expect_code(0);
}

#[tokio::test]
async fn dlq_stats_counts_queues_and_the_delivery_log() {
    let (service, receiver, _) = failing_service(&["acct_a", "acct_b"]).await;
    for (i, account) in ["acct_a", "acct_a", "acct_a", "acct_b"].iter().enumerate() {
        publish(&service, &purchase(&format!("evt_stats_{i}"), account)).await;
    }
    let invalid = br#"{"event":"refund","account_id":"acct_b"}"#;
    publish_raw(&service.exchange, "refund", &[invalid.to_vec()]).await;
    wait_for_logs(&service, "", 5).await;

    let run = service.cli(&["dlq", "stats", "--json"], b"").await;
    run.expect_code(0);
    let stats: Value = serde_json::from_str(&run.stdout).expect("stats JSON");
    let queues = stats["queues"].as_array().unwrap();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{}.events", service.prefix),
            format!("{}.retry.100ms", service.prefix),
            format!("{}.dead", service.prefix)
        ]
    );
    assert_eq!(queues[0]["ready"], 0);
    assert_eq!(queues[0]["consumers"], 1, "the service consumes events");
    assert_eq!(queues[2]["consumers"], 1, "and dead letters");
    let log = &stats["delivery_log"];
    assert_eq!(log["total"], 5);
    assert_eq!(log["not_replayed"], 5);
    assert_eq!(
        log["by_reason"],
        json!([
            {"name":"exhausted","total":4,"not_replayed":4},
            {"name":"unknown_event","total":1,"not_replayed":1}
        ])
    );
    assert_eq!(
        log["by_event"],
        json!([
            {"name":"purchase","total":4,"not_replayed":4},
            {"name":"refund","total":1,"not_replayed":1}
        ])
    );
    assert_eq!(
        log["by_account"],
        json!([
            {"name":"acct_a","total":3,"not_replayed":3},
            {"name":"acct_b","total":2,"not_replayed":2}
        ])
    );

    // One replayed (to a fixed endpoint): the not-replayed counts follow.
    receiver.always(Reply::Status(200));
    let first = &logs(&service, "account_id=acct_b&reason=exhausted").await[0];
    service
        .cli(
            &["replay", "--yes", "--id", first["id"].as_str().unwrap()],
            b"",
        )
        .await
        .expect_code(0);
    let text = service.cli(&["dlq", "stats"], b"").await;
    text.expect_code(0);
    let rows: Vec<Vec<&str>> = text
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for row in [
        vec![format!("{}.events", service.prefix), "0".into(), "1".into()],
        vec!["exhausted".into(), "4".into(), "3".into()],
        vec!["unknown_event".into(), "1".into(), "1".into()],
        vec!["acct_b".into(), "2".into(), "1".into()],
    ] {
        assert!(
            rows.contains(&row.iter().map(String::as_str).collect()),
            "{row:?} in\n{}",
            text.stdout
        );
    }
    assert!(
        text.stdout.contains(": 5 records, 4 not replayed"),
        "{}",
        text.stdout
    );
}

/// A dead letter in the wire format the dispatcher publishes to `P.dead`.
fn dead_letter(n: usize) -> DeadLetter {
    exhausted_purchase(&format!("evt_drain_{n}"), "acct_drain", "sub_gone")
}

#[tokio::test]
async fn dlq_drain_stores_every_dead_letter_once_while_the_service_is_down() {
    let mut service = ServiceProcess::start(&[]).await;
    service.stop(PATIENCE).await;
    let store = Store::connect(&sqlite_url(service.db_path()))
        .await
        .unwrap();
    let letters: Vec<DeadLetter> = (0..30).map(dead_letter).collect();
    // Five were stored already (a crash between commit and ack): they must not be doubled.
    for dl in &letters[..5] {
        assert!(store.insert_dead_letter(dl, Trust::Verified).await.unwrap());
    }
    let dead = service.dead_queue();
    // Twenty alone, the last ten as one bundle: 21 messages, 30 dead letters.
    let mut messages = sealed(&service, &letters[..20]).await;
    messages.push(sealed_bundle(&service, &letters[20..]).await);
    publish_messages("", &dead, &messages).await;
    publish_raw("", &dead, &[b"not a dead letter".to_vec()]).await;
    let stats: Value =
        serde_json::from_str(&service.cli(&["dlq", "stats", "--json"], b"").await.stdout).unwrap();
    assert_eq!(stats["queues"][4]["ready"], 22, "{stats}");

    let run = service.cli(&["dlq", "drain"], b"").await;
    run.expect_code(0);
    assert_eq!(run.stdout, "drained 31 dead letters (5 already stored)\n");
    let producer = Producer::connect(&service.exchange).await;
    assert_eq!(producer.ready(&dead).await, 0);

    let all = store
        .list_delivery_logs(&LogFilter::default(), None, 500)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 31);
    let mut ids: Vec<&str> = all.items.iter().map(|r| r.id.as_str()).collect();
    let mut sent: Vec<&str> = letters.iter().map(|dl| dl.id.as_str()).collect();
    ids.retain(|id| sent.contains(id));
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "every dead letter stored once");
    assert_eq!(
        all.items
            .iter()
            .filter(|r| r.reason == "unreadable")
            .count(),
        1
    );

    let again = service.cli(&["dlq", "drain"], b"").await;
    again.expect_code(0);
    assert_eq!(again.stdout, "drained 0 dead letters (0 already stored)\n");

    // The same unreadable bytes once more (a copy delivered again after a lost ack): its id
    // comes from the bytes, so it is the record already stored.
    publish_raw("", &dead, &[b"not a dead letter".to_vec()]).await;
    let copy = service.cli(&["dlq", "drain"], b"").await;
    copy.expect_code(0);
    assert_eq!(copy.stdout, "drained 1 dead letters (1 already stored)\n");
    let all = store
        .list_delivery_logs(&LogFilter::default(), None, 500)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 31, "stored once");
}

#[tokio::test]
async fn replay_selects_by_account_and_time_and_sends_each_record_once() {
    let (service, receiver, _) = failing_service(&["acct_a", "acct_b"]).await;
    for i in 0..2 {
        publish(&service, &purchase(&format!("evt_early_{i}"), "acct_a")).await;
    }
    wait_for_logs(&service, "account_id=acct_a", 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = webhook_dispatcher::time::now_rfc3339();
    for i in 0..3 {
        publish(&service, &purchase(&format!("evt_late_{i}"), "acct_a")).await;
    }
    publish(&service, &purchase("evt_other", "acct_b")).await;
    let late = {
        let all = wait_for_logs(&service, "account_id=acct_a", 5).await;
        wait_for_logs(&service, "account_id=acct_b", 1).await;
        let late: Vec<Value> = all
            .into_iter()
            .filter(|r| r["event_id"].as_str().unwrap().starts_with("evt_late_"))
            .collect();
        assert_eq!(late.len(), 3);
        assert!(
            late.iter()
                .all(|r| r["dead_lettered_at"].as_str().unwrap() >= since.as_str())
        );
        late
    };
    let attempts_before = receiver.count();
    let filter = ["--account", "acct_a", "--since", since.as_str()];

    // A dry run lists the three and changes nothing.
    let dry = service
        .cli(&[&["replay", "--dry-run"][..], &filter].concat(), b"")
        .await;
    dry.expect_code(0);
    assert!(
        dry.stdout.starts_with("dry run: would replay 3, skip 0\n"),
        "{dry:?}"
    );
    for record in &late {
        assert!(
            dry.stdout.contains(record["id"].as_str().unwrap()),
            "{dry:?}"
        );
    }
    // Not on a terminal and no --yes: refused before anything happens.
    let refused = service
        .cli(&[&["replay"][..], &filter].concat(), b"y\n")
        .await;
    refused.expect_code(2);
    assert!(refused.stderr.contains("pass --yes"), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), attempts_before);
    assert!(
        logs(&service, "")
            .await
            .iter()
            .all(|r| r["replayed_at"].is_null())
    );

    // The endpoint is fixed; replay exactly those three.
    receiver.always(Reply::Status(200));
    let run = service
        .cli(&[&["replay", "--yes"][..], &filter].concat(), b"")
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.ends_with("replayed 3, skipped 0, failed 0\n"),
        "{run:?}"
    );
    let replayed = arrived_after(&receiver, attempts_before, 3).await;
    assert_eq!(replayed, ["evt_late_0", "evt_late_1", "evt_late_2"]);
    let now = logs(&service, "").await;
    let marked: Vec<Value> = now
        .iter()
        .filter(|r| r["replayed_at"].is_string())
        .cloned()
        .collect();
    assert_eq!(ids_of(&marked), ids_of(&late));

    // A second run finds nothing left.
    let second = service
        .cli(&[&["replay", "--yes"][..], &filter].concat(), b"")
        .await;
    second.expect_code(0);
    assert_eq!(second.stdout, "nothing to replay\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), attempts_before + 3);
}

/// A record whose stored payload no longer reads back: a dry run counts and lists it as one that
/// would fail, and a run replays the others, names it on stderr and exits 1.
#[tokio::test]
async fn replay_names_a_record_that_cannot_be_read_and_replays_the_rest() {
    let (service, receiver, _) = failing_service(&["acct_a"]).await;
    for i in 0..3 {
        publish(&service, &purchase(&format!("evt_read_{i}"), "acct_a")).await;
    }
    let records = wait_for_logs(&service, "account_id=acct_a", 3).await;
    let damaged = records[1]["id"].as_str().unwrap().to_string();
    edit_store(
        service.db_path(),
        "UPDATE delivery_logs SET attempts = 'not json' WHERE id = $1",
        &[&damaged],
    )
    .await;

    let dry = service.cli(&["replay", "--all", "--dry-run"], b"").await;
    dry.expect_code(0);
    assert!(
        dry.stdout
            .starts_with("dry run: would replay 2, skip 0, fail 1\n"),
        "{dry:?}"
    );
    assert!(
        dry.stdout.contains("\nfailed\n") && dry.stdout.contains(&damaged),
        "{dry:?}"
    );

    receiver.always(Reply::Status(200));
    let attempts_before = receiver.count();
    let run = service.cli(&["replay", "--all", "--yes"], b"").await;
    run.expect_code(1);
    assert!(
        run.stdout.ends_with("replayed 2, skipped 0, failed 1\n"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "failed {damaged}: record {damaged} cannot be read (attempts:"
        )),
        "{run:?}"
    );
    let replayed = arrived_after(&receiver, attempts_before, 2).await;
    let mut expected: Vec<&str> = records
        .iter()
        .filter(|r| r["id"] != json!(damaged))
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    expected.sort();
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn replay_skips_what_cannot_be_sent_and_says_why() {
    let (service, _receiver, subs) = failing_service(&["acct_gone", "acct_off"]).await;
    let (deleted, disabled) = (&subs[0], &subs[1]);
    publish(&service, &purchase("evt_to_gone", "acct_gone")).await;
    publish(&service, &purchase("evt_to_off", "acct_off")).await;
    publish_raw(&service.exchange, "purchase", &[b"{not json".to_vec()]).await;
    wait_for_logs(&service, "", 3).await;
    let resp = service
        .http
        .delete(service.url(&format!("/v1/subscriptions/{deleted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = service
        .http
        .patch(service.url(&format!("/v1/subscriptions/{disabled}")))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let dry = service.cli(&["replay", "--all", "--dry-run"], b"").await;
    dry.expect_code(0);
    assert!(
        dry.stdout.starts_with(
            "dry run: would replay 0, skip 3 (1 not_replayable, 1 subscription_deleted, 1 subscription_disabled)\n"
        ),
        "{dry:?}"
    );
    for why in [
        format!("subscription {deleted} no longer exists"),
        format!("subscription {disabled} is disabled; enable it, then replay"),
        "rejected before matching (invalid_json)".to_string(),
    ] {
        assert!(dry.stdout.contains(&why), "{why} in {dry:?}");
    }
    let run = service.cli(&["replay", "--all", "--yes"], b"").await;
    run.expect_code(0);
    assert!(
        run.stdout.starts_with(
            "nothing to replay (1 not_replayable, 1 subscription_deleted, 1 subscription_disabled)\n"
        ),
        "{run:?}"
    );
    assert!(
        logs(&service, "")
            .await
            .iter()
            .all(|r| r["replayed_at"].is_null())
    );
    // Bad input is exit 2 with the reason.
    let no_filter = service.cli(&["replay", "--yes"], b"").await;
    no_filter.expect_code(2);
    assert!(
        no_filter.stderr.contains("at least one filter"),
        "{no_filter:?}"
    );
    let future = service
        .cli(&["replay", "--since", "2099-01-01", "--dry-run"], b"")
        .await;
    future.expect_code(2);
    assert!(future.stderr.contains("is in the future"), "{future:?}");
    let bad_time = service
        .cli(&["replay", "--since", "soonish", "--dry-run"], b"")
        .await;
    bad_time.expect_code(2);
    assert!(
        bad_time.stderr.contains("\"soonish\" is not a time"),
        "{bad_time:?}"
    );
}

#[tokio::test]
async fn dlq_drain_runs_next_to_the_services_own_logger() {
    let service = ServiceProcess::start(&[]).await;
    // More than the logger may hold unacked, so some wait ready in P.dead for the drain.
    let total = usize::from(webhook_dispatcher::broker::DEAD_PREFETCH) + 300;
    let letters: Vec<DeadLetter> = (0..total).map(dead_letter).collect();
    let sealed_letters = sealed(&service, &letters).await;
    // The store held while the dead letters arrive: the service's logger takes what its prefetch
    // allows and waits on the store; the rest stays ready in P.dead, for the drain.
    let lock = StoreLock::take(service.db_path()).await;
    publish_messages("", &service.dead_queue(), &sealed_letters).await;
    let producer = Producer::connect(&service.exchange).await;
    wait_until("the logger to hold its share", PATIENCE, || async {
        let ready = producer.ready(&service.dead_queue()).await;
        ready > 0 && ready < total as u32
    })
    .await;
    // Two consumers of P.dead: the service's logger and the drain, both waiting on the store.
    let drain = {
        let env = service.cli_env();
        tokio::spawn(async move { run_cli(&env, &["dlq", "drain"], b"").await })
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    lock.release().await;
    let run = drain.await.unwrap();
    run.expect_code(0);
    let drained: u64 = run
        .stdout
        .strip_prefix("drained ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count line: {run:?}"));
    let records = wait_for_logs(&service, "account_id=acct_drain", total).await;
    assert_eq!(records.len(), total, "every dead letter stored once");
    assert_eq!(producer.ready(&service.dead_queue()).await, 0);
    let by_service = service
        .metric_sum("webhook_dead_letters_persisted_total", "")
        .await as u64;
    println!("drained by the CLI: {drained}, by the service: {by_service}");
    assert!(
        drained > 0 && by_service > 0,
        "both consumers stored some (drain {drained}, service {by_service})"
    );
    assert_eq!(
        by_service + drained,
        total as u64,
        "the service stored what the drain did not"
    );
    let mut event_ids: Vec<&str> = records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), total, "each dead letter once");
}

#[tokio::test]
async fn a_replay_that_cannot_be_published_is_released_and_fails_the_run() {
    let (mut service, receiver, _) = failing_service(&["acct_a"]).await;
    publish(&service, &purchase("evt_unsent", "acct_a")).await;
    let record = wait_for_logs(&service, "account_id=acct_a", 1).await[0].clone();
    service.stop(PATIENCE).await;
    // The events queue is gone (deleted by hand, say): the broker takes the replay nowhere.
    let (_conn, channel) = confirm_channel(&amqp_url()).await;
    channel
        .queue_delete(service.events_queue().as_str().into(), Default::default())
        .await
        .expect("deleting the events queue");
    receiver.always(Reply::Status(200));

    let run = service.cli(&["replay", "--all", "--yes"], b"").await;
    run.expect_code(1);
    assert!(
        run.stdout.ends_with("replayed 0, skipped 0, failed 1\n"),
        "{run:?}"
    );
    let id = record["id"].as_str().unwrap();
    assert!(
        run.stderr
            .contains(&format!("failed {id}: no queue took the message")),
        "{run:?}"
    );
    let store = Store::connect(&sqlite_url(service.db_path()))
        .await
        .unwrap();
    let stored = store.delivery_log(id).await.unwrap().unwrap();
    assert_eq!(
        stored.replayed_at, None,
        "released: it can be replayed later"
    );
}

#[tokio::test]
async fn replay_limit_counts_replays_not_records_it_cannot_send() {
    let (service, receiver, _) = failing_service(&["acct_a"]).await;
    // The two oldest records can never be replayed; a limit spent on them would replay
    // nothing, run after run.
    publish_raw(&service.exchange, "purchase", &[b"{not json".to_vec()]).await;
    publish_raw(&service.exchange, "purchase", &[b"{nor this".to_vec()]).await;
    wait_for_logs(&service, "", 2).await;
    for i in 0..2 {
        publish(&service, &purchase(&format!("evt_limit_{i}"), "acct_a")).await;
        wait_for_logs(&service, "account_id=acct_a", i + 1).await;
    }
    receiver.always(Reply::Status(200));
    let before = receiver.count();
    let run = service
        .cli(&["replay", "--all", "--limit", "1", "--yes"], b"")
        .await;
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("replayed 1, skipped 2 (2 not_replayable), failed 0\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("more records match beyond --limit"),
        "{run:?}"
    );
    let got = receiver.wait_for(before + 1, PATIENCE).await;
    assert_eq!(
        got[before].header("webhook-id"),
        "evt_limit_0",
        "oldest first"
    );
    let next = service
        .cli(&["replay", "--all", "--limit", "1", "--yes"], b"")
        .await;
    next.expect_code(0);
    assert!(next.stdout.contains("replayed 1, skipped 2"), "{next:?}");
    let got = receiver.wait_for(before + 2, PATIENCE).await;
    assert_eq!(got[before + 1].header("webhook-id"), "evt_limit_1");
}

/// A service started once (topology and store in place), then stopped so that its own logger
/// takes nothing, with one dead letter waiting in `P.dead` (its name returned).
async fn stopped_service_with_a_dead_letter() -> (ServiceProcess, String) {
    let mut service = ServiceProcess::start(&[]).await;
    service.stop(PATIENCE).await;
    let dead = service.dead_queue();
    publish_messages("", &dead, &sealed(&service, &[dead_letter(0)]).await).await;
    (service, dead)
}

#[tokio::test]
async fn the_cli_creates_no_delivery_log_where_there_is_none() {
    let (service, dead) = stopped_service_with_a_dead_letter().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("webhook-dispatcher.db");
    let url = format!("--database-url={}", sqlite_url(&missing));
    for args in [
        &["dlq", "drain", url.as_str()][..],
        &["dlq", "stats", url.as_str()],
        &["replay", url.as_str(), "--all", "--dry-run"],
    ] {
        let run = service.cli(args, b"").await;
        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!(
                "no delivery log at {} (the database file does not exist): start the service once \
                 with this DATABASE_URL, or check the path",
                sqlite_url(&missing)
            )),
            "{args:?}: {run:?}"
        );
    }
    assert!(!missing.exists(), "no file was created");
    let producer = Producer::connect(&service.exchange).await;
    assert_eq!(
        producer.ready(&dead).await,
        1,
        "the dead letter stays in {dead}"
    );
    // `publish` needs no store at all.
    let published = service
        .cli_with(
            &[("DATABASE_URL", &sqlite_url(&missing))],
            &["publish", "-"],
            purchase("evt_no_store", "acct_x").as_bytes(),
        )
        .await;
    published.expect_code(0);
    assert!(!missing.exists());
}

#[tokio::test]
async fn cli_errors_name_the_exchange_and_hide_database_passwords() {
    let service = ServiceProcess::start(&[]).await;
    let exchange = unique("missing-x");
    let run = service
        .cli(
            &["publish", &format!("--events-exchange={exchange}"), "-"],
            fixture("purchase").as_bytes(),
        )
        .await;
    run.expect_code(2);
    assert!(run.stderr.contains(&exchange), "{run:?}");

    let port = free_port();
    for (url, shown) in [
        (
            format!("postgres://postgres:hunter2@127.0.0.1:{port}/app"),
            format!("postgres://postgres:***@127.0.0.1:{port}/app"),
        ),
        // A password the URL parser cannot read is masked whole.
        (
            format!("postgres://postgres:hun/ter2@127.0.0.1:{port}/app"),
            format!("postgres://***@127.0.0.1:{port}/app"),
        ),
    ] {
        let run = service
            .cli(&["dlq", "stats", &format!("--database-url={url}")], b"")
            .await;
        run.expect_code(1);
        assert!(run.stderr.contains(&shown), "{run:?}");
        assert!(
            !run.stderr.contains("hunter2") && !run.stderr.contains("ter2"),
            "{run:?}"
        );
    }
}

#[tokio::test]
async fn ctrl_c_stops_a_replay_between_batches_and_a_second_run_replays_the_rest_once() {
    const RECORDS: usize = 60;
    let Replayable {
        service,
        receiver,
        store,
        ..
    } = Replayable::start("acct_stop", RECORDS).await;
    // 20 a second: 3 s for all of them; ctrl-c after about one.
    let child = service
        .cli_command(&["replay", "--all", "--yes", "--rate", "20/s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning replay");
    let pid = libc::pid_t::try_from(child.id().expect("running")).expect("pid fits");
    wait_until("the first replays", PATIENCE, || async {
        receiver.total() >= 10
    })
    .await;
    // SAFETY: plain kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let run = child.wait_with_output().await.expect("replay exits");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let replayed: usize = stdout
        .split("replayed ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of replays in {stdout}"));
    assert!(
        (10..RECORDS).contains(&replayed),
        "stopped part way: {stdout}"
    );
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(service.db_path()))
            .await
            .unwrap();
    let marked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_log_replays")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        marked as usize, replayed,
        "what it said it replayed, and only that, is marked"
    );
    let again = service.cli(&["replay", "--all", "--yes"], b"").await;
    again.expect_code(0);
    assert!(
        again
            .stdout
            .contains(&format!("replayed {}, skipped 0", RECORDS - replayed)),
        "{again:?}"
    );
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), RECORDS, "each record delivered once");
    store.close().await;
}

#[tokio::test]
async fn a_second_ctrl_c_ends_a_stuck_command_at_once_with_130() {
    // `publish -` blocks reading a stdin that never ends: the first ctrl-c cannot stop it.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"))
        .args(["publish", "-"])
        .env_clear()
        .env("AMQP_URL", amqp_url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the CLI");
    let _stdin = child.stdin.take();
    let pid = libc::pid_t::try_from(child.id().expect("running")).expect("pid fits");
    let sigint = || {
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    };
    // Let it install its signal handler.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigint();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still stuck after one ctrl-c"
    );
    sigint();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the second ctrl-c ends it")
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[tokio::test]
async fn dlq_drain_gives_up_on_a_store_that_keeps_failing_and_acks_nothing() {
    let (service, dead) = stopped_service_with_a_dead_letter().await;
    // The store opens (its schema is migrated) but every insert fails.
    let url = sqlite_url(service.db_path());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE delivery_logs RENAME TO delivery_logs_away")
        .execute(&mut conn)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let run = service
        .cli_within(Duration::from_secs(60), &["dlq", "drain"], b"")
        .await;
    run.expect_code(1);
    assert!(started.elapsed() >= Duration::from_secs(30), "{run:?}");
    assert!(
        run.stderr.contains("the store kept failing for 30s")
            && run.stderr.contains(&format!("stays in {dead}")),
        "{run:?}"
    );
    // Not acked: back in the queue once the broker has handled the CLI's closed channel.
    let producer = Producer::connect(&service.exchange).await;
    wait_until(
        &format!("the dead letter back in {dead}"),
        PATIENCE,
        || async { producer.ready(&dead).await == 1 },
    )
    .await;
    sqlx::query("ALTER TABLE delivery_logs_away RENAME TO delivery_logs")
        .execute(&mut conn)
        .await
        .unwrap();
    let again = service.cli(&["dlq", "drain"], b"").await;
    again.expect_code(0);
    assert_eq!(again.stdout, "drained 1 dead letters (0 already stored)\n");
}

/// A replay held to a slow rate waits for each batch's turn before it claims the batch: the
/// store (on SQLite, one writer at a time) stays free between its sends. Before, each claim was
/// held through the wait for its turn and the next was taken as soon as it committed, so at
/// 2 a second a write beside it waited half a second or more, or failed "database is locked".
#[tokio::test]
async fn a_slow_replay_leaves_the_store_free_between_its_sends() {
    const RECORDS: usize = 6;
    let Replayable {
        service,
        receiver,
        subscription,
        store,
    } = Replayable::start("acct_slow", RECORDS).await;
    // 2 a second: a send every 500 ms, 2.5 s in all.
    let mut child = service
        .cli_command(&["replay", "--account", "acct_slow", "--yes", "--rate", "2/s"])
        .spawn()
        .expect("spawning replay");
    wait_until("the first replay", PATIENCE, || async {
        receiver.total() >= 1
    })
    .await;
    let mut slowest = Duration::ZERO;
    for n in 0..8 {
        let letter = exhausted_purchase(&format!("evt_beside_{n}"), "acct_other", &subscription);
        let started = std::time::Instant::now();
        store
            .insert_dead_letter(&letter, Trust::Verified)
            .await
            .expect("a write beside the replay");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(250),
        "the slowest write beside the replay took {slowest:?}"
    );
    assert!(
        child.try_wait().expect("replay status").is_none(),
        "the replay was still running during every write"
    );
    let status = child.wait().await.expect("replay exits");
    assert!(status.success(), "{status:?}");
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    store.close().await;
}

/// A replay whose store fails past its first page stops there and says what it did (the counts
/// and why it stopped), not only the error; what it did not reach stays replayable. The failure
/// here is a row whose very id the store cannot read (a blob, which SQLite sorts after every
/// text id: the last record, on the second page of 2,048). A record that reads but whose payload or
/// attempts do not fails alone instead (`replay_names_a_record_that_cannot_be_read…`).
#[tokio::test]
async fn a_replay_the_store_fails_midway_reports_what_it_did_and_the_rest_stays() {
    const RECORDS: usize = 2100;
    let Replayable {
        service,
        receiver,
        store,
        ..
    } = Replayable::start("acct_midway", RECORDS).await;
    store.close().await;
    edit_store(
        service.db_path(),
        "UPDATE delivery_logs SET id = CAST(id AS BLOB) \
         WHERE id = (SELECT id FROM delivery_logs ORDER BY id LIMIT 1 OFFSET 550)",
        &[],
    )
    .await;

    let run = service
        .cli(&["replay", "--account", "acct_midway", "--yes"], b"")
        .await;
    run.expect_code(1);
    assert!(
        run.stdout.contains("replayed 2048, skipped 0, failed 0"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("stopped when the store failed"),
        "{run:?}"
    );
    receiver.wait_distinct(2048, PATIENCE).await;

    edit_store(
        service.db_path(),
        "UPDATE delivery_logs SET id = CAST(id AS TEXT) WHERE typeof(id) = 'blob'",
        &[],
    )
    .await;
    let rest = service
        .cli(&["replay", "--account", "acct_midway", "--yes"], b"")
        .await;
    rest.expect_code(0);
    assert!(
        rest.stdout.contains("replayed 52, skipped 0, failed 0"),
        "{rest:?}"
    );
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), RECORDS, "each record delivered once");
}

#[tokio::test]
async fn replay_rate_spreads_the_sends_and_each_record_arrives_once() {
    const RECORDS: usize = 30;
    let Replayable {
        service,
        receiver,
        store,
        ..
    } = Replayable::start("acct_rate", RECORDS).await;
    store.close().await;
    let bad = service
        .cli(&["replay", "--all", "--yes", "--rate", "fast"], b"")
        .await;
    bad.expect_code(2);
    assert!(bad.stderr.contains("\"fast\" is not a rate"), "{bad:?}");

    // 20 a second: 30 records are 29 gaps of 50 ms, at least 1.45 s, however fast the broker.
    let started = std::time::Instant::now();
    let run = service
        .cli(&["replay", "--all", "--yes", "--rate", "20/s"], b"")
        .await;
    let took = started.elapsed();
    run.expect_code(0);
    assert!(run.stdout.contains("replayed 30, skipped 0"), "{run:?}");
    assert!(
        took >= Duration::from_millis(1450),
        "30 at 20/s took {took:?}"
    );
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), RECORDS, "each record delivered once");
    // Unpaced, a second run finds nothing left.
    let again = service.cli(&["replay", "--all", "--yes"], b"").await;
    again.expect_code(0);
    assert!(again.stdout.starts_with("nothing to replay"), "{again:?}");
}
