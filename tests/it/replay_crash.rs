//! A replay that dies while the broker has not confirmed its publish (SIGKILL, an evicted pod)
//! never leaves a record marked replayed without having been sent: the claim commits only after
//! the confirm. RabbitMQ's memory alarm (on a private node) holds every publish unconfirmed, so
//! the kill lands in that window every time.

use std::time::Duration;

use webhook_dispatcher::store::{LogFilter, Store, Trust};

use crate::support::*;

/// How many records read as replayed.
async fn replayed(store: &Store) -> usize {
    let page = store
        .list_delivery_logs(&LogFilter::default(), None, 500)
        .await
        .expect("delivery log");
    page.items
        .iter()
        .filter(|r| r.replayed_at.is_some())
        .count()
}

async fn set_memory_watermark(broker: &PrivateBroker, value: &str) {
    let out = broker.ctl(&["set_vm_memory_high_watermark", value]).await;
    assert!(
        out.status.success(),
        "rabbitmqctl set_vm_memory_high_watermark {value}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_replay_killed_before_the_broker_confirmed_leaves_the_record_unreplayed() {
    let broker = PrivateBroker::start().await;
    // The service once, to declare the topology and create the store; then stopped, so only
    // the CLI publishes.
    let mut service = ServiceProcess::start_on(&broker.amqp_url(), &[]).await;
    let receiver = Receiver::start().await;
    let subscription = service.subscribe("acct_alarm", &receiver.url).await;
    service.stop(PATIENCE).await;
    let store = Store::connect(&sqlite_url(service.db_path()))
        .await
        .expect("the service's store");
    for n in 0..3 {
        store
            .insert_dead_letter(
                &exhausted_purchase(&format!("evt_alarm_{n}"), "acct_alarm", &subscription),
                Trust::Verified,
            )
            .await
            .expect("insert");
    }

    // With the memory alarm up, RabbitMQ holds every publish: the first replay waits for its
    // confirm, and dies there.
    set_memory_watermark(&broker, "0").await;
    let mut replay = service
        .cli_command(&["replay", "--account", "acct_alarm", "--yes"])
        .spawn()
        .expect("spawning replay");
    // Kill only once the replay has claimed its first record (its claim transaction holds the
    // store's write lock — or, were the claim committed before the confirm, the record reads as
    // replayed already): a kill before the claim would prove nothing.
    wait_until("the replay to claim a record", PATIENCE, || async {
        write_lock_taken(service.db_path()).await || replayed(&store).await > 0
    })
    .await;
    assert!(
        replay.try_wait().expect("replay status").is_none(),
        "the replay waits for the broker"
    );
    replay.start_kill().expect("SIGKILL");
    replay.wait().await.expect("replay exits");
    assert_eq!(
        replayed(&store).await,
        0,
        "a replay killed before the confirm marks nothing replayed"
    );

    // Not killed, it gives up after the 4 s confirm limit and stops there: the three were sent
    // together (one batch) and none was confirmed, so all three failed and stay replayable.
    // They share the one limit (each would otherwise hold its claim, on SQLite the store's
    // write lock, for a limit of its own).
    let started = std::time::Instant::now();
    let run = service
        .cli_within(
            Duration::from_secs(40),
            &["replay", "--account", "acct_alarm", "--yes"],
            b"",
        )
        .await;
    run.expect_code(1);
    assert!(
        run.stdout.contains("replayed 0, skipped 0, failed 3"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("stopped at the first replay the broker did not take"),
        "{run:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "one confirm limit, not three: {:?}",
        started.elapsed()
    );
    assert_eq!(replayed(&store).await, 0);

    // The bulk API under the same alarm: the broker takes none, so a 503 as for one record
    // (not a 202 that queued nothing), and every record stays replayable.
    service.restart().await;
    let (status, body) = service
        .post_json(
            "/v1/delivery-logs/replay",
            serde_json::json!({"account_id": "acct_alarm"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    assert_eq!(replayed(&store).await, 0);
    service.stop(PATIENCE).await;

    // Alarm cleared: the next run replays all three.
    set_memory_watermark(&broker, "0.4").await;
    let run = service
        .cli(&["replay", "--account", "acct_alarm", "--yes"], b"")
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("replayed 3, skipped 0, failed 0"),
        "{run:?}"
    );
    assert_eq!(replayed(&store).await, 3);
}
