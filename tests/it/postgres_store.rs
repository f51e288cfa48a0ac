//! The store on PostgreSQL: the same service, API and CLI flows the other tests run on SQLite,
//! against the PostgreSQL at `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! in a database of the test's own that is dropped at the end. Every query is written once for
//! both (sqlx `Any`); this is where a PostgreSQL-only mistake (a type the driver cannot decode,
//! a placeholder, a text comparison) shows.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::*;

async fn get(service: &ServiceProcess, path: &str) -> Value {
    let resp = service
        .http
        .get(service.url(path))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("JSON")
}

async fn post(service: &ServiceProcess, path: &str, body: Value) -> (u16, Value) {
    service.post_json(path, body).await
}

#[tokio::test]
async fn the_service_and_the_operator_cli_work_on_postgresql() {
    let db = TempDatabase::create().await;
    let mut service =
        ServiceProcess::start(&[("DATABASE_URL", &db.url), ("RETRY_DELAYS", "100ms")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    let sub_a = service.subscribe("acct_a", &receiver.url).await;
    service.subscribe("acct_b", &receiver.url).await;

    // Secret rotation writes and reads the previous-secret columns.
    let (status, rotated) = post(
        &service,
        &format!("/v1/subscriptions/{sub_a}/rotate-secret"),
        json!({"overlap_seconds": 600}),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );

    let mut published = Vec::new();
    for account in ["acct_a", "acct_a", "acct_a", "acct_b"] {
        let data = r#"{"visitor_id":"v_1","amount":299.00}"#;
        let run = service
            .cli(
                &[
                    "publish",
                    "--event",
                    "purchase",
                    "--account",
                    account,
                    "--data",
                    data,
                ],
                b"",
            )
            .await;
        run.expect_code(0);
        published.push((account, run.stdout.trim().to_string()));
    }
    wait_until("4 dead letters in the store", PATIENCE, || async {
        get(&service, "/v1/delivery-logs").await["items"]
            .as_array()
            .is_some_and(|items| items.len() == 4)
    })
    .await;

    // They are in PostgreSQL, not in some SQLite file.
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("the test database");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_logs")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(rows, 4);
    conn.close().await.expect("close");

    // Time filters compare the stored text timestamps.
    let recent = get(&service, "/v1/delivery-logs?since=1h&account_id=acct_a").await;
    assert_eq!(recent["items"].as_array().unwrap().len(), 3, "{recent}");
    let old = get(&service, "/v1/delivery-logs?until=2000-01-01").await;
    assert_eq!(old["items"].as_array().unwrap().len(), 0, "{old}");

    // Grouped counts (sums PostgreSQL types differently from SQLite).
    let run = service.cli(&["dlq", "stats", "--json"], b"").await;
    run.expect_code(0);
    let stats: Value = serde_json::from_str(&run.stdout).expect("stats JSON");
    let log = &stats["delivery_log"];
    assert_eq!(
        (&log["total"], &log["not_replayed"]),
        (&json!(4), &json!(4))
    );
    assert_eq!(
        log["by_account"],
        json!([
            {"name": "acct_a", "total": 3, "not_replayed": 3},
            {"name": "acct_b", "total": 1, "not_replayed": 1}
        ]),
        "{stats}"
    );

    // Replay: dry run, then the real one, each record once.
    receiver.always(Reply::Status(200));
    let before = receiver.count();
    let dry = service
        .cli(
            &[
                "replay",
                "--account",
                "acct_a",
                "--since",
                "1h",
                "--dry-run",
            ],
            b"",
        )
        .await;
    dry.expect_code(0);
    assert!(dry.stdout.contains("would replay 3"), "{dry:?}");
    let run = service
        .cli(
            &["replay", "--account", "acct_a", "--since", "1h", "--yes"],
            b"",
        )
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("replayed 3, skipped 0, failed 0"),
        "{run:?}"
    );
    let got = receiver.wait_for(before + 3, PATIENCE).await;
    let mut ids: Vec<&str> = got[before..]
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    ids.sort();
    let mut expected: Vec<&str> = published
        .iter()
        .filter(|(account, _)| *account == "acct_a")
        .map(|(_, id)| id.as_str())
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "each of acct_a's events arrived once more");
    let again = service
        .cli(
            &["replay", "--account", "acct_a", "--since", "1h", "--yes"],
            b"",
        )
        .await;
    again.expect_code(0);
    assert!(again.stdout.contains("nothing to replay"), "{again:?}");

    // The bulk API sees what is left.
    let (status, bulk) = post(
        &service,
        "/v1/delivery-logs/replay",
        json!({"all": true, "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{bulk}");
    assert_eq!(bulk["matched"], 1, "only acct_b's record is left: {bulk}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), before + 3, "nothing else was delivered");

    service.stop(PATIENCE).await;
    drop(db);
}

/// A dead letter for the store-level checks: `event` None is a message rejected before matching.
fn stored_letter(event: Option<&str>) -> webhook_dispatcher::wire::DeadLetter {
    webhook_dispatcher::wire::DeadLetter {
        id: webhook_dispatcher::wire::new_dead_letter_id(),
        event_id: unique("evt"),
        account_id: Some("acct_store".into()),
        subscription_id: event.map(|_| "sub_store".into()),
        url: None,
        event: event.map(String::from),
        payload: webhook_dispatcher::wire::raw_payload(b"{}"),
        reason: "exhausted".into(),
        detail: None,
        attempts: Vec::new(),
        dead_lettered_at: webhook_dispatcher::time::now_rfc3339(),
    }
}

/// Runs `check` on the store at a fresh SQLite file's URL, then at a fresh PostgreSQL
/// database's (dropped after).
async fn on_sqlite_and_postgresql<F, Checked>(check: F)
where
    F: Fn(String) -> Checked,
    Checked: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    check(sqlite_url(&dir.path().join("store.db"))).await;
    let db = TempDatabase::create().await;
    check(db.url.clone()).await;
    drop(db);
}

#[tokio::test]
async fn a_batch_of_dead_letters_is_stored_whole_and_once_on_sqlite_and_postgresql() {
    on_sqlite_and_postgresql(|url| async move { batch_on(&url).await }).await;
}

/// More than one multi-row INSERT's worth, with a record already stored and a copy within the
/// batch: each new record is stored once and reported new once, every copy as a duplicate.
async fn batch_on(url: &str) {
    use webhook_dispatcher::store::{Store, Trust};
    let store = Store::connect(url).await.expect("store");
    let letters: Vec<_> = (0..300)
        .map(|i| {
            let mut letter = stored_letter(Some("purchase"));
            letter.account_id = Some(format!("acct_{i}"));
            letter.subscription_id = Some(format!("sub_{i}"));
            letter.url = Some(format!("https://example.com/{i}"));
            letter.payload =
                webhook_dispatcher::wire::raw_payload(format!("{{\"n\":{i}}}").as_bytes());
            letter.detail = Some(format!("detail {i}"));
            letter.attempts = serde_json::from_value(serde_json::json!([{
                "attempt": 1,
                "started_at": webhook_dispatcher::time::now_rfc3339(),
                "duration_ms": i,
                "status": 500,
                "error": null,
            }]))
            .unwrap();
            letter
        })
        .collect();
    assert!(
        store
            .insert_dead_letter(&letters[7], Trust::Verified)
            .await
            .unwrap()
    );
    let mut batch: Vec<_> = letters.iter().map(|l| (l, Trust::Verified)).collect();
    batch.push((&letters[250], Trust::Verified)); // redelivered within the batch
    let inserted = store.insert_dead_letters(&batch).await.unwrap();
    assert_eq!(inserted.len(), 301, "{url}");
    assert_eq!(inserted.iter().filter(|new| **new).count(), 299, "{url}");
    assert!(!inserted[7] && inserted[250] && !inserted[300], "{url}");
    let counts = store.count_delivery_logs().await.unwrap();
    assert_eq!(counts.total, 300, "{url}");
    let kept = store.delivery_log(&letters[299].id).await.unwrap().unwrap();
    assert_eq!(kept.event_id, letters[299].event_id, "{url}");
    assert_eq!(kept.trusted, Some(true), "{url}");
    // Every value in its own column of its own row: the statements bind hundreds of values,
    // numbered on PostgreSQL and in order on SQLite.
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    let read = store.delivery_logs_by_id(&ids).await.unwrap();
    assert_eq!(read.len(), 300, "{url}");
    for (got, want) in read.iter().zip(&letters) {
        let (got, want) = (
            serde_json::to_value(got.as_ref().unwrap()).unwrap(),
            serde_json::to_value(want).unwrap(),
        );
        for column in [
            "id",
            "event_id",
            "account_id",
            "subscription_id",
            "url",
            "event",
            "payload",
            "reason",
            "detail",
            "attempts",
            "dead_lettered_at",
        ] {
            assert_eq!(got[column], want[column], "{column} ({url})");
        }
        assert_eq!(got["trusted"], true, "{url}");
    }
    // The same batch again (a lost ack): nothing new, nothing doubled.
    let again = store.insert_dead_letters(&batch).await.unwrap();
    assert!(again.iter().all(|new| !new), "{url}");

    // A batch claim: dropped, nothing reads as replayed; committed with two released, the
    // other eight do, once; a second claim holds only the released two.
    let ids: Vec<String> = letters[..10].iter().map(|l| l.id.clone()).collect();
    let at = "2026-11-27T10:00:00.000Z";
    let dropped = store.claim_replays(&ids, at).await.unwrap();
    assert!(ids.iter().all(|id| dropped.holds(id)), "{url}");
    drop(dropped);
    let mut claim = store.claim_replays(&ids, at).await.unwrap();
    assert!(
        ids.iter().all(|id| claim.holds(id)),
        "claimable again ({url})"
    );
    claim.release(&ids[3]);
    claim.release(&ids[9]);
    claim.commit().await.unwrap();
    let logs = store.delivery_logs_by_id(&ids).await.unwrap();
    let replayed: Vec<bool> = logs
        .iter()
        .map(|l| l.as_ref().unwrap().replayed_at.is_some())
        .collect();
    assert_eq!(replayed.iter().filter(|r| **r).count(), 8, "{url}");
    assert!(!replayed[3] && !replayed[9], "{url}");
    let second = store.claim_replays(&ids, at).await.unwrap();
    let held: Vec<&String> = ids.iter().filter(|id| second.holds(id)).collect();
    assert_eq!(held, [&ids[3], &ids[9]], "{url}");
    drop(second);

    // The retention purge: only what is older than the bound, at most `limit` at a time.
    let mut old = stored_letter(Some("purchase"));
    old.dead_lettered_at = "2026-01-01T00:00:00.000Z".into();
    let mut older = stored_letter(None);
    older.dead_lettered_at = "2025-12-31T00:00:00.000Z".into();
    let aged = [(&old, Trust::Verified), (&older, Trust::Untrusted)];
    store.insert_dead_letters(&aged).await.unwrap();
    let bound = "2026-01-02T00:00:00.000Z";
    assert_eq!(
        store.purge_delivery_logs(bound, 1).await.unwrap(),
        1,
        "{url}"
    );
    assert_eq!(
        store.purge_delivery_logs(bound, 1).await.unwrap(),
        1,
        "{url}"
    );
    assert_eq!(
        store.purge_delivery_logs(bound, 1).await.unwrap(),
        0,
        "{url}"
    );
    assert_eq!(
        store.count_delivery_logs().await.unwrap().total,
        300,
        "{url}"
    );
    store.close().await;
}

/// Claims (dropped, committed, taken) and grouped counts, the same on both databases.
async fn claims_and_ties_on(url: &str) {
    use webhook_dispatcher::store::{GroupBy, Store, Trust};
    let store = Store::connect(url).await.expect("store");
    let letter = stored_letter(Some("purchase"));
    assert!(
        store
            .insert_dead_letter(&letter, Trust::Verified)
            .await
            .unwrap()
    );
    let id = letter.id.as_str();
    let first = "2026-11-27T10:00:00.000Z";
    // A claim dropped before its commit (a failed publish, a process that died) leaves the
    // record unreplayed; a committed one is final, and a second claim finds it taken.
    let dropped = store.claim_replay(id, first).await.unwrap();
    assert!(dropped.is_some(), "{url}");
    drop(dropped);
    let unclaimed = store.delivery_log(id).await.unwrap().unwrap();
    assert_eq!(unclaimed.replayed_at, None, "{url}");
    let claim = store
        .claim_replay(id, first)
        .await
        .unwrap()
        .expect("claimable again");
    claim.commit().await.unwrap();
    assert!(
        store
            .claim_replay(id, "2026-11-27T10:00:01.000Z")
            .await
            .unwrap()
            .is_none(),
        "a record is claimed once ({url})"
    );
    let kept = store.delivery_log(id).await.unwrap().unwrap();
    assert_eq!(kept.replayed_at.as_deref(), Some(first), "{url}");

    // Three groups of one: named ones by name, the null one last, on both databases.
    for event in [Some("identify"), None] {
        store
            .insert_dead_letter(&stored_letter(event), Trust::Verified)
            .await
            .unwrap();
    }
    let groups = store
        .count_delivery_logs_by(GroupBy::Event, 20)
        .await
        .unwrap();
    let names: Vec<Option<&str>> = groups.iter().map(|g| g.name.as_deref()).collect();
    assert_eq!(names, [Some("identify"), Some("purchase"), None], "{url}");
    store.close().await;
}

#[tokio::test]
async fn claims_releases_and_tie_order_agree_on_sqlite_and_postgresql() {
    on_sqlite_and_postgresql(|url| async move { claims_and_ties_on(&url).await }).await;
}

/// Portal sign-outs: recorded once however often, found by session id, and a row whose session
/// has expired goes with the next sign-out (its text timestamps compared the same on both).
async fn signouts_on(url: &str) {
    use webhook_dispatcher::store::Store;
    let store = Store::connect(url).await.expect("store");
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let now = at("2026-12-06T10:00:00Z");
    assert!(!store.session_signed_out("s_old").await.unwrap(), "{url}");
    store
        .sign_out_session("s_old", at("2026-12-06T11:00:00Z"), now)
        .await
        .unwrap();
    store
        .sign_out_session("s_old", at("2026-12-06T11:00:00Z"), now)
        .await
        .unwrap();
    assert!(store.session_signed_out("s_old").await.unwrap(), "{url}");
    assert!(!store.session_signed_out("s_other").await.unwrap(), "{url}");
    // Two hours on, "s_old" has expired: the next sign-out removes its row, not its own.
    store
        .sign_out_session(
            "s_new",
            at("2026-12-06T20:00:00Z"),
            at("2026-12-06T12:00:00Z"),
        )
        .await
        .unwrap();
    assert!(!store.session_signed_out("s_old").await.unwrap(), "{url}");
    assert!(store.session_signed_out("s_new").await.unwrap(), "{url}");
    store.close().await;
}

#[tokio::test]
async fn portal_sign_outs_are_kept_until_their_sessions_expire_on_sqlite_and_postgresql() {
    on_sqlite_and_postgresql(|url| async move { signouts_on(&url).await }).await;
}

/// A replay on a young PostgreSQL delivery log (never analyzed: autovacuum, kept away here, has
/// not come by) first gives the planner statistics, once; they then read as fresh until a tenth
/// of the log changes. Without them every replay page read and sorted every record the
/// selection's time bound admits (BENCHMARKS.md, "A young delivery log…"). SQLite needs none.
#[tokio::test]
async fn a_replay_first_gives_a_young_postgresql_delivery_log_planner_statistics() {
    use webhook_dispatcher::store::{Store, Trust};
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&sqlite_url(&dir.path().join("store.db")))
        .await
        .unwrap();
    assert!(!sqlite.refresh_log_statistics().await.unwrap());
    sqlite.close().await;

    let db = TempDatabase::create().await;
    let store = Store::connect(&db.url).await.expect("store");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE delivery_logs SET (autovacuum_enabled = false)")
        .execute(&mut conn)
        .await
        .unwrap();
    let letters: Vec<_> = (0..2000).map(|_| stored_letter(Some("purchase"))).collect();
    let batch: Vec<_> = letters.iter().map(|l| (l, Trust::Verified)).collect();
    store.insert_dead_letters(&batch).await.unwrap();
    let analyzed = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'delivery_logs'",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    };
    assert_eq!(analyzed(&mut conn).await, 0);
    // A VACUUM of the table under way (its lock, held here): the refresh gives up within its
    // lock timeout instead of holding the replay until the VACUUM ends.
    let mut vacuum = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut vacuum).await.unwrap();
    sqlx::query("LOCK TABLE delivery_logs IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut vacuum)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let waited = store.refresh_log_statistics().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = waited.expect_err("a refresh waiting for a VACUUM gives up");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    vacuum.close().await.unwrap();
    assert_eq!(analyzed(&mut conn).await, 0);
    assert!(
        store.refresh_log_statistics().await.unwrap(),
        "never analyzed"
    );
    assert_eq!(analyzed(&mut conn).await, 1);
    let estimate: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'delivery_logs'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(estimate, 2000.0, "the planner now knows the log's size");
    // Of the columns a replay selects by, not of the wide ones.
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_stats WHERE tablename = 'delivery_logs' ORDER BY attname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for column in ["account_id", "dead_lettered_at", "id", "replayed_at"] {
        assert!(kept.iter().any(|c| c == column), "{column}: {kept:?}");
    }
    for column in ["payload", "attempts"] {
        assert!(!kept.iter().any(|c| c == column), "{column}: {kept:?}");
    }
    assert!(!store.refresh_log_statistics().await.unwrap(), "fresh");
    assert_eq!(analyzed(&mut conn).await, 1);

    // Grown by more than a tenth (and a thousand): stale again, once PostgreSQL has counted the
    // new rows.
    let more: Vec<_> = (0..1500).map(|_| stored_letter(Some("purchase"))).collect();
    let batch: Vec<_> = more.iter().map(|l| (l, Trust::Verified)).collect();
    store.insert_dead_letters(&batch).await.unwrap();
    wait_until("PostgreSQL to count the new rows", PATIENCE, || {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let live: i64 = sqlx::query_scalar(
                "SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'delivery_logs'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            live == 3500
        }
    })
    .await;
    assert!(store.refresh_log_statistics().await.unwrap(), "grown");
    assert_eq!(analyzed(&mut conn).await, 2);
    conn.close().await.unwrap();
    store.close().await;
    drop(db);
}

#[tokio::test]
async fn the_cli_refuses_an_empty_postgresql_database_and_leaves_it_empty() {
    let db = TempDatabase::create().await;
    let env = [
        ("AMQP_URL".to_string(), amqp_url()),
        ("DATABASE_URL".to_string(), db.url.clone()),
    ];
    for args in [
        &["dlq", "stats"][..],
        &["dlq", "drain"],
        &["replay", "--all", "--dry-run"],
    ] {
        let run = run_cli(&env, args, b"").await;
        run.expect_code(2);
        assert!(
            run.stderr.contains("no delivery log at postgres://")
                && run
                    .stderr
                    .contains("start the service once with this DATABASE_URL"),
            "{args:?}: {run:?}"
        );
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing created or migrated");
    conn.close().await.unwrap();
    drop(db);
}

#[tokio::test]
async fn a_postgresql_outage_holds_dead_letters_in_the_queue_until_it_is_back() {
    // Like `faults::store_unavailable_holds_dead_letters` on SQLite: the store goes away (here
    // the server, behind a proxy the test cuts) while dead letters arrive; none is acked unstored,
    // and every one is stored once when it is back.
    const N: usize = 50;
    let db = TempDatabase::create().await;
    let server = url::Url::parse(&db.url).unwrap();
    let proxy = Proxy::start(format!(
        "{}:{}",
        server.host_str().unwrap(),
        server.port().unwrap_or(5432)
    ))
    .await;
    let mut through_proxy = server.clone();
    through_proxy.set_port(Some(proxy.addr.port())).unwrap();
    let service = ServiceProcess::start(&[
        ("DATABASE_URL", through_proxy.as_str()),
        ("RETRY_DELAYS", "100ms,200ms,300ms"),
    ])
    .await;
    let receiver = CountingReceiver::start(500, Duration::ZERO).await;
    service.subscribe(LOAD_ACCOUNT, &receiver.url).await;

    proxy.cut();
    wait_until("readiness to say the store is gone", PATIENCE, || async {
        service.readyz_status().await == Some(503)
    })
    .await;
    let ids = event_ids("pg_outage", N);
    let producer = Producer::connect(&service.exchange).await;
    assert_eq!(producer.publish_events(&ids).await, N);
    wait_until(&format!("{N} dead letters"), PATIENCE, || async {
        service
            .metric_sum("webhook_dead_letters_total", "reason=\"exhausted\"")
            .await
            == N as f64
    })
    .await;
    wait_until("the DLQ logger to fail on the store", PATIENCE, || async {
        service
            .current_logs()
            .contains("cannot persist dead letter")
    })
    .await;
    assert_eq!(
        service
            .metric_sum("webhook_dead_letters_persisted_total", "")
            .await,
        0.0,
        "nothing stored, nothing acked"
    );

    let restored = std::time::Instant::now();
    proxy.restore();
    wait_until("every dead letter stored", PATIENCE, || async {
        service
            .metric_sum("webhook_dead_letters_persisted_total", "")
            .await
            == N as f64
    })
    .await;
    let recover = restored.elapsed();
    let records = service.wait_for_logs("reason=exhausted", N).await;
    let mut per_event: std::collections::HashMap<String, u32> = Default::default();
    for record in &records {
        *per_event
            .entry(record["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(record["attempts"].as_array().unwrap().len(), 4);
    }
    let report = Report::new("postgres_unavailable", &ids, &per_event, recover, recover);
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicates, 0, "each stored once: {report}");
    assert_eq!(producer.ready(&service.dead_queue()).await, 0);
    assert_eq!(service.readyz_status().await, Some(200));
}

/// A rejected message's `event` and `account_id` go into indexed columns; PostgreSQL refuses an
/// index entry over ~2.7 KB, and one refused record held up every dead letter after it (the
/// logger retried its batch forever). The record keeps an event name's first 64 bytes and only
/// a valid account id; the raw message keeps everything.
#[tokio::test]
async fn a_rejected_message_with_huge_names_is_logged_and_holds_up_nothing_on_postgresql() {
    let db = TempDatabase::create().await;
    let app = spawn_app_with(&["--database-url", &db.url]).await;
    let purchase = fixture("purchase");
    let huge = |n: usize| {
        // Random, so PostgreSQL's compression cannot bring the index entry under its limit.
        (0..n)
            .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
            .collect::<String>()
    };
    let name = huge(6000);
    let unknown = purchase.replacen(r#""event":"purchase""#, &format!(r#""event":"{name}""#), 1);
    let bad_account = purchase.replacen(
        r#""account_id":"acct_acme""#,
        &format!(r#""account_id":"{}""#, huge(6000)),
        1,
    );
    let refund = purchase.replacen(r#""event":"purchase""#, r#""event":"refund""#, 1);
    for body in [&unknown, &bad_account, &refund] {
        app.publish("purchase", body.as_bytes()).await;
    }
    wait_until("three records in the delivery log", PATIENCE, || async {
        app.get("/v1/delivery-logs").await.1["items"]
            .as_array()
            .is_some_and(|items| items.len() == 3)
    })
    .await;
    let (_, logs) = app.get("/v1/delivery-logs").await;
    let by_reason = |reason: &str| -> Vec<Value> {
        logs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["reason"] == reason)
            .cloned()
            .collect()
    };
    let unknowns = by_reason("unknown_event");
    assert_eq!(unknowns.len(), 2, "{logs}");
    assert!(
        unknowns.iter().any(|l| l["event"] == "refund"),
        "the short name is kept: {logs}"
    );
    let [invalid] = by_reason("invalid_event")
        .try_into()
        .expect("one invalid_event");
    assert_eq!(invalid["account_id"], Value::Null, "{invalid}");
    let cut = format!("{}…", &name[..64]);
    let long = unknowns
        .iter()
        .find(|l| l["event"] == cut)
        .unwrap_or_else(|| panic!("the long name cut to its first 64 bytes: {logs}"));
    assert_eq!(
        long["payload"]["event"], name,
        "the raw message keeps it whole"
    );
    app.stop().await.unwrap();
}

/// The per-account limit holds on PostgreSQL when creates race for the last places (two
/// transactions counting at once would both see room without the account's lock).
#[tokio::test]
async fn creates_racing_for_an_accounts_last_places_stop_at_its_limit_on_postgresql() {
    let db = TempDatabase::create().await;
    let service = ServiceProcess::start(&[
        ("DATABASE_URL", &db.url),
        ("MAX_SUBSCRIPTIONS_PER_ACCOUNT", "3"),
    ])
    .await;
    for round in 0..3 {
        let account = format!("acct_race_{round}");
        let (statuses, codes) = create_at_once(&service.http, &service.url(""), &account, 12).await;
        assert_eq!(&statuses[..3], [201, 201, 201], "{statuses:?}");
        assert!(statuses[3..].iter().all(|s| *s == 409), "{statuses:?}");
        assert_eq!(codes.len(), 9);
        assert!(
            codes.iter().all(|c| c == "subscription_limit_reached"),
            "{codes:?}"
        );
        let listed = get(&service, &format!("/v1/subscriptions?account_id={account}")).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
    }
}

#[tokio::test]
async fn replays_are_kept_apart_read_from_either_place_and_purged_with_their_records() {
    on_sqlite_and_postgresql(|url| async move { replays_on(&url).await }).await;
}

#[tokio::test]
async fn a_claim_racing_another_waits_for_it_and_takes_what_it_left() {
    on_sqlite_and_postgresql(|url| async move { racing_claims_on(&url).await }).await;
}

/// Two claims of the same records: the second waits for the first, then holds only what the
/// first did not keep (its commit keeps them, its drop — a failed publish — gives them back).
async fn racing_claims_on(url: &str) {
    use webhook_dispatcher::store::{Store, Trust};
    let store = Store::connect(url).await.expect("store");
    let letters: Vec<_> = (0..4).map(|_| stored_letter(Some("purchase"))).collect();
    let batch: Vec<_> = letters.iter().map(|l| (l, Trust::Verified)).collect();
    store.insert_dead_letters(&batch).await.unwrap();
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    let at = "2026-12-07T10:00:00.000Z";
    let racing = |ids: &[String]| {
        let (store, ids) = (store.clone(), ids.to_vec());
        tokio::spawn(async move { store.claim_replays(&ids, at).await.unwrap() })
    };
    let held = |claim: &webhook_dispatcher::store::BatchClaim| -> Vec<String> {
        ids.iter().filter(|id| claim.holds(id)).cloned().collect()
    };

    let first = store.claim_replays(&ids[..2], at).await.unwrap();
    let second = racing(&ids);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second claim waits ({url})");
    first.commit().await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(
        held(&second),
        ids[2..],
        "what the first kept is taken ({url})"
    );
    drop(second);

    let third = store.claim_replays(&ids[2..], at).await.unwrap();
    let fourth = racing(&ids);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fourth.is_finished(), "the fourth claim waits ({url})");
    drop(third);
    let fourth = fourth.await.unwrap();
    assert_eq!(
        held(&fourth),
        ids[2..],
        "what the third gave back is free ({url})"
    );
    fourth.commit().await.unwrap();
    store.close().await;
}

/// A claim writes a short row of its own (`delivery_log_replays`); a record marked in its own
/// `replayed_at` (before 0.5, or by a 0.4 replica during a rolling upgrade) reads as replayed
/// too, is not selected or claimed again, and the purge takes a record's replay with it.
async fn replays_on(url: &str) {
    use webhook_dispatcher::store::{ReplaySelection, Store, Trust};
    let store = Store::connect(url).await.expect("store");
    sqlx::any::install_default_drivers();
    let mut raw = sqlx::AnyConnection::connect(url).await.unwrap();
    let replays = async |raw: &mut sqlx::AnyConnection| -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM delivery_log_replays")
            .fetch_one(raw)
            .await
            .unwrap()
    };
    let letters: Vec<_> = (0..4).map(|_| stored_letter(Some("purchase"))).collect();
    let batch: Vec<_> = letters.iter().map(|l| (l, Trust::Verified)).collect();
    store.insert_dead_letters(&batch).await.unwrap();
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();

    let claimed_at = "2026-12-07T10:00:00.000Z";
    let claim = store.claim_replays(&ids[..1], claimed_at).await.unwrap();
    claim.commit().await.unwrap();
    let marked_at = "2026-12-01T09:00:00.000Z";
    sqlx::query("UPDATE delivery_logs SET replayed_at = $1 WHERE id = $2")
        .bind(marked_at)
        .bind(&ids[1])
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(replays(&mut raw).await, 1, "a claim's own row ({url})");
    let marked = sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM delivery_logs WHERE replayed_at IS NOT NULL",
    )
    .fetch_one(&mut raw)
    .await
    .unwrap();
    assert_eq!(marked, 1, "the claim left the record's row alone ({url})");

    let read = |n: usize| {
        let store = store.clone();
        let id = ids[n].clone();
        async move { store.delivery_log(&id).await.unwrap().unwrap().replayed_at }
    };
    assert_eq!(read(0).await.as_deref(), Some(claimed_at), "{url}");
    assert_eq!(read(1).await.as_deref(), Some(marked_at), "{url}");
    assert_eq!(read(2).await, None, "{url}");
    assert_eq!(store.count_delivery_logs().await.unwrap().not_replayed, 2);
    let selection = ReplaySelection::default();
    assert_eq!(store.count_replay_candidates(&selection).await.unwrap(), 2);
    let candidates: Vec<String> = store
        .replay_candidates(&selection, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(candidates, ids[2..], "{url}");
    let after = async |cursor: &String| -> Vec<String> {
        let page = store.replay_candidates(&selection, Some(cursor), 10);
        page.await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect()
    };
    assert_eq!(after(&ids[0]).await, ids[2..], "past a cursor ({url})");
    assert_eq!(after(&ids[2]).await, ids[3..], "{url}");
    // A replay past the cursor (on PostgreSQL, the only replays a page looks for) counts.
    let late = store.claim_replays(&ids[3..], claimed_at).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(after(&ids[0]).await, ids[2..3], "{url}");
    assert_eq!(after(&ids[2]).await, Vec::<String>::new(), "{url}");
    sqlx::query("DELETE FROM delivery_log_replays WHERE id = $1")
        .bind(&ids[3])
        .execute(&mut raw)
        .await
        .unwrap();
    let again = store.claim_replays(&ids[..3], claimed_at).await.unwrap();
    let held: Vec<&String> = ids.iter().filter(|id| again.holds(id)).collect();
    assert_eq!(held, [&ids[2]], "{url}");
    drop(again);
    assert!(
        store
            .claim_replay(&ids[1], claimed_at)
            .await
            .unwrap()
            .is_none()
    );

    // Purged: the records and the replay row with them.
    let later = webhook_dispatcher::time::rfc3339(chrono::Utc::now() + chrono::Duration::hours(1));
    assert_eq!(store.purge_delivery_logs(&later, 10).await.unwrap(), 4);
    assert_eq!(replays(&mut raw).await, 0, "{url}");
    raw.close().await.unwrap();
    store.close().await;
}

/// The migration that moved replays to their own table copies those already marked: they stay
/// replayed, with their time.
#[tokio::test]
async fn records_replayed_before_the_upgrade_stay_replayed() {
    on_sqlite_and_postgresql(|url| async move { upgrade_on(&url).await }).await;
}

async fn upgrade_on(url: &str) {
    use webhook_dispatcher::store::Store;
    let all = sqlx::migrate!("./migrations");
    let mut before = sqlx::migrate!("./migrations");
    let last = all.migrations.len() - 1;
    assert_eq!(
        all.migrations[last].description, "replay claims",
        "the migration under test is the newest: move this test's cut when adding one"
    );
    before.migrations = all.migrations[..last].to_vec().into();
    sqlx::any::install_default_drivers();
    let options = format!(
        "{url}{}",
        if url.starts_with("sqlite:") {
            "?mode=rwc"
        } else {
            ""
        }
    );
    let pool = sqlx::AnyPool::connect(&options).await.unwrap();
    before.run(&pool).await.unwrap();
    for (id, replayed_at) in [
        ("dl_old_1", Some("2026-12-01T09:00:00.000Z")),
        ("dl_old_2", None),
    ] {
        sqlx::query(
            "INSERT INTO delivery_logs (id, event_id, payload, reason, attempts, dead_lettered_at, replayed_at, trusted) \
             VALUES ($1, 'evt', '{}', 'exhausted', '[]', '2026-11-30T09:00:00.000Z', $2, 1)",
        )
        .bind(id)
        .bind(replayed_at)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = Store::connect(url).await.expect("migrated");
    let copied: (String, String) =
        sqlx::query_as("SELECT id, replayed_at FROM delivery_log_replays")
            .fetch_one(&sqlx::AnyPool::connect(&options).await.unwrap())
            .await
            .unwrap();
    assert_eq!(
        copied,
        (
            "dl_old_1".to_string(),
            "2026-12-01T09:00:00.000Z".to_string()
        ),
        "{url}"
    );
    let old = store.delivery_log("dl_old_1").await.unwrap().unwrap();
    assert_eq!(old.replayed_at.as_deref(), Some("2026-12-01T09:00:00.000Z"));
    assert_eq!(store.count_delivery_logs().await.unwrap().not_replayed, 1);
    store.close().await;
}
