//! A replay on PostgreSQL claims each batch while the one before it is sent (claims of different
//! records do not wait for each other there): still each record sent once, a `--limit` kept
//! exactly, and a batch claimed ahead of a refused one rolled back, never marked unsent.

use std::time::Duration;

use serde_json::{Value, json};
use webhook_dispatcher::store::Store;

use crate::support::*;

/// [`Replayable::start_on`] a fresh PostgreSQL database (returned too: drop it after the
/// service).
async fn replayable_on_postgresql(
    broker_url: &str,
    env: &[(&str, &str)],
    account: &str,
    records: usize,
) -> (Replayable, TempDatabase) {
    let db = TempDatabase::create().await;
    let replayable = Replayable::start_on(broker_url, Some(&db.url), env, account, records).await;
    (replayable, db)
}

/// Records that read as not replayed.
async fn not_replayed(store: &Store) -> i64 {
    store.count_delivery_logs().await.unwrap().not_replayed
}

#[tokio::test]
async fn a_postgresql_replay_claims_ahead_and_still_sends_each_record_once_within_its_limit() {
    // Three batches of up to 1,024: the second and third are claimed while the one before is
    // sent; `--limit 1500` ends inside the second.
    const RECORDS: usize = 2500;
    let (replayable, db) =
        replayable_on_postgresql(&amqp_url(), &[], "acct_pg_ahead", RECORDS).await;
    let Replayable {
        service,
        receiver,
        store,
        ..
    } = replayable;

    let first = service
        .cli(&["replay", "--all", "--yes", "--limit", "1500"], b"")
        .await;
    first.expect_code(0);
    assert!(
        first.stdout.contains("replayed 1500, skipped 0, failed 0"),
        "the limit counts the batch held ahead: {first:?}"
    );
    assert!(first.stdout.contains("more records match beyond --limit"));
    assert_eq!(not_replayed(&store).await, 1000);
    receiver.wait_distinct(1500, PATIENCE).await;

    let rest = service.cli(&["replay", "--all", "--yes"], b"").await;
    rest.expect_code(0);
    assert!(
        rest.stdout.contains("replayed 1000, skipped 0, failed 0"),
        "{rest:?}"
    );
    assert_eq!(not_replayed(&store).await, 0);
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.total(), RECORDS, "each record delivered once");
    store.close().await;
    drop(service);
    drop(db);
}

#[tokio::test]
async fn a_postgresql_replay_the_broker_refuses_rolls_back_the_batch_it_claimed_ahead() {
    const RECORDS: usize = 2100;
    let broker = PrivateBroker::start().await;
    let (replayable, db) =
        replayable_on_postgresql(&broker.amqp_url(), &[], "acct_pg_refused", RECORDS).await;
    let Replayable { service, store, .. } = replayable;

    // The memory alarm holds every publish unconfirmed: the first batch of 1,024 fails at the
    // confirm limit, while the second was claimed; neither may read as replayed.
    let alarm = broker.ctl(&["set_vm_memory_high_watermark", "0"]).await;
    assert!(alarm.status.success(), "{alarm:?}");
    let refused = service
        .cli_within(Duration::from_secs(40), &["replay", "--all", "--yes"], b"")
        .await;
    refused.expect_code(1);
    assert!(
        refused
            .stdout
            .contains("replayed 0, skipped 0, failed 1024"),
        "only the first batch was sent: {refused:?}"
    );
    assert!(
        refused
            .stderr
            .contains("stopped at the first replay the broker did not take"),
        "{refused:?}"
    );
    assert_eq!(
        not_replayed(&store).await,
        RECORDS as i64,
        "the batch claimed ahead was rolled back"
    );

    let cleared = broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).await;
    assert!(cleared.status.success(), "{cleared:?}");
    let run = service.cli(&["replay", "--all", "--yes"], b"").await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("replayed 2100, skipped 0, failed 0"),
        "{run:?}"
    );
    assert_eq!(not_replayed(&store).await, 0);
    store.close().await;
    drop(service);
    drop(db);
}

#[tokio::test]
async fn a_postgresql_replay_job_on_a_pool_of_one_connection_replays_everything() {
    // One connection: a batch claimed ahead would hold it while the run waits for its next
    // page on it. Such a replay takes turns instead.
    const RECORDS: usize = 2500;
    let pool_of_one = [("DATABASE_POOL_SIZE", "1")];
    let (replayable, db) =
        replayable_on_postgresql(&amqp_url(), &pool_of_one, "acct_pg_one", RECORDS).await;
    let Replayable {
        service,
        receiver,
        store,
        ..
    } = replayable;
    let (status, job) = service
        .post_json("/v1/replay-jobs", json!({"account_id": "acct_pg_one"}))
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/replay-jobs/{}", job["id"].as_str().unwrap());
    let job = || async {
        let resp = service.http.get(service.url(&path)).send().await.unwrap();
        resp.json::<Value>().await.unwrap()
    };
    // An answer without a state (the API waiting for the one connection) is not an end.
    wait_until("the job to end", PATIENCE, || async {
        job().await["state"]
            .as_str()
            .is_some_and(|s| s != "running")
    })
    .await;
    let ended = job().await;
    assert_eq!(ended["state"], "done", "{ended}");
    assert_eq!(ended["replayed"], RECORDS, "{ended}");
    assert_eq!(ended["failed"], 0, "{ended}");
    assert_eq!(not_replayed(&store).await, 0);
    receiver.wait_distinct(RECORDS, PATIENCE).await;
    store.close().await;
    drop(service);
    drop(db);
}
