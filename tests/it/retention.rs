//! `DELIVERY_LOG_RETENTION`: records dead-lettered longer ago than the retention are deleted in
//! the background, in batches, and nothing younger is touched.

use webhook_dispatcher::store::{Store, Trust};
use webhook_dispatcher::time::rfc3339;

use crate::support::*;

#[tokio::test]
async fn records_past_the_retention_are_purged_in_batches_and_younger_ones_kept() {
    let service = ServiceProcess::start(&[("DELIVERY_LOG_RETENTION", "1h")]).await;
    let store = Store::connect(&sqlite_url(service.db_path()))
        .await
        .expect("the service's store");
    // More than one purge batch (1000) of old records, and a few young ones: just inside the
    // retention, and new.
    const OLD: usize = 2500;
    let two_hours_ago = rfc3339(chrono::Utc::now() - chrono::Duration::hours(2));
    let fifty_minutes_ago = rfc3339(chrono::Utc::now() - chrono::Duration::minutes(50));
    let mut letters = Vec::new();
    for n in 0..OLD + 3 {
        let mut letter = exhausted_purchase(&format!("evt_old_{n}"), "acct_ret", "sub_ret");
        letter.dead_lettered_at = match n {
            n if n < OLD => two_hours_ago.clone(),
            n if n == OLD => fifty_minutes_ago.clone(),
            _ => letter.dead_lettered_at,
        };
        letters.push(letter);
    }
    let rows: Vec<_> = letters.iter().map(|l| (l, Trust::Verified)).collect();
    for chunk in rows.chunks(500) {
        store.insert_dead_letters(chunk).await.unwrap();
    }
    assert_eq!(
        store.count_delivery_logs().await.unwrap().total,
        (OLD + 3) as i64
    );
    wait_until("the old records to be purged", PATIENCE, || async {
        store.count_delivery_logs().await.unwrap().total == 3
    })
    .await;
    let kept = service.delivery_logs("account_id=acct_ret").await;
    let mut kept_ids: Vec<&str> = kept
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    kept_ids.sort();
    let mut young: Vec<String> = (OLD..OLD + 3).map(|n| format!("evt_old_{n}")).collect();
    young.sort();
    assert_eq!(kept_ids, young);
    assert_eq!(
        service
            .metric_sum("webhook_delivery_logs_purged_total", "")
            .await as usize,
        OLD
    );
    store.close().await;
}
