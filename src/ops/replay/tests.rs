use sqlx::Connection;

use super::*;
use crate::store::{LogFilter, ReplaySelection, Trust};
use crate::wire::{DeadLetter, new_dead_letter_id, raw_payload};

/// A store in `dir` with `n` dead letters of `acct_a` (oldest first), their subscription gone.
async fn store_with_letters(dir: &std::path::Path, n: usize) -> (Store, Vec<String>) {
    let store = Store::connect(&format!("sqlite://{}", dir.join("replay.db").display()))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let letter = DeadLetter {
            id: new_dead_letter_id(),
            event_id: format!("evt_seen_{i}"),
            account_id: Some("acct_a".into()),
            subscription_id: Some("sub_gone".into()),
            url: Some("https://example.com/hook".into()),
            event: Some("purchase".into()),
            payload: raw_payload(br#"{"event":"purchase"}"#),
            reason: "exhausted".into(),
            detail: None,
            attempts: Vec::new(),
            dead_lettered_at: now_rfc3339(),
        };
        assert!(
            store
                .insert_dead_letter(&letter, Trust::Verified)
                .await
                .unwrap()
        );
        ids.push(letter.id);
    }
    ids.sort();
    (store, ids)
}

/// A run hands every row of its selection to `seen`, a row that cannot be read as well, so a
/// progress bar sized by `count_replay_candidates` ends full.
#[tokio::test]
async fn a_run_shows_seen_every_row_it_handles_unreadable_ones_too() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = store_with_letters(dir.path(), 4).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("replay.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE delivery_logs SET payload = '{\"event\":' WHERE id = $1")
        .bind(&ids[2])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let selection = ReplaySelection {
        filter: LogFilter {
            account_id: Some("acct_a".into()),
            ..LogFilter::default()
        },
        ids: Vec::new(),
    };
    let looker = Replayer {
        store: store.clone(),
        publisher: Publisher::default(),
        events_queue: String::new(),
        keys: {
            store.ensure_message_key().await.unwrap();
            Arc::new(Keyring::load(Arc::new(store.clone())).await.unwrap())
        },
        bundles: true,
    };

    let (mut records, mut unreadable) = (Vec::new(), Vec::new());
    let report = looker
        .run(
            &selection,
            None,
            Limit::None,
            true,
            &mut Pace::new(None),
            &mut |seen| match seen {
                Ok(log) => records.push(log.id.clone()),
                Err(row) => unreadable.push(row.id.clone()),
            },
        )
        .await
        .unwrap();

    let readable: Vec<String> = [0, 1, 3].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(records, readable);
    assert_eq!(unreadable, [ids[2].clone()]);
    assert_eq!(
        store.count_replay_candidates(&selection).await.unwrap(),
        (records.len() + unreadable.len()) as i64
    );
    // The subscription is gone: the readable ones are skipped, the other failed.
    assert_eq!((report.skipped.len(), report.failed.len()), (3, 1));
    store.close().await;
}
