//! Shipped fixture events, what receivers get for them, and stored dead letters.

use std::path::Path;

/// The text of a fixture event, as shipped in `shared/fixtures/events/`.
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/events/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

/// What a receiver gets for a fixture: the producer's text without `account_id`.
pub fn expected_body(fixture_text: &str) -> String {
    let without = fixture_text.replacen(r#""account_id":"acct_acme","#, "", 1);
    assert_ne!(without, fixture_text, "fixture has the expected account_id");
    without
}

pub const EVENTS: [&str; 6] = [
    "purchase",
    "identify",
    "goal_achieved",
    "enterprise_alert",
    "visitor_enriched",
    "high_intent_visitor",
];

/// A dead letter as the dispatcher writes one for an exhausted `purchase` delivery of
/// `event_id` to `subscription_id` of `account`, dead-lettered now.
pub fn exhausted_purchase(
    event_id: &str,
    account: &str,
    subscription_id: &str,
) -> webhook_dispatcher::wire::DeadLetter {
    webhook_dispatcher::wire::DeadLetter {
        id: webhook_dispatcher::wire::new_dead_letter_id(),
        event_id: event_id.to_string(),
        account_id: Some(account.into()),
        subscription_id: Some(subscription_id.into()),
        url: Some("https://example.com/hooks".into()),
        event: Some("purchase".into()),
        payload: webhook_dispatcher::wire::raw_payload(
            br#"{"event":"purchase","timestamp":"2026-02-12T14:30:00Z","data":{"visitor_id":"v"}}"#,
        ),
        reason: "exhausted".into(),
        detail: None,
        attempts: Vec::new(),
        dead_lettered_at: webhook_dispatcher::time::now_rfc3339(),
    }
}
/// The `DATABASE_URL` of a SQLite file, for a test's own connection to a service's store.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A service with a counting receiver subscribed for one account, and `records` exhausted dead
/// letters of that account in its store (events `evt_{account}_0`, `evt_{account}_1`, …;
/// inserted directly, as if the endpoint had been down), ready to replay. The test's own
/// connection to the store stays open.
pub struct Replayable {
    pub service: super::ServiceProcess,
    pub receiver: super::CountingReceiver,
    pub subscription: String,
    pub store: webhook_dispatcher::store::Store,
}

impl Replayable {
    pub async fn start(account: &str, records: usize) -> Replayable {
        Replayable::start_on(&super::amqp_url(), None, &[], account, records).await
    }

    /// [`Replayable::start`] on the broker at `broker_url`, its store the PostgreSQL database at
    /// `database_url` when given (else a SQLite file), the service's settings overridden by
    /// `env`.
    pub async fn start_on(
        broker_url: &str,
        database_url: Option<&str>,
        env: &[(&str, &str)],
        account: &str,
        records: usize,
    ) -> Replayable {
        let mut env = env.to_vec();
        env.extend(database_url.map(|url| ("DATABASE_URL", url)));
        let service = super::ServiceProcess::start_on(broker_url, &env).await;
        let receiver = super::CountingReceiver::start(200, std::time::Duration::ZERO).await;
        let subscription = service.subscribe(account, &receiver.url).await;
        let url = database_url.map_or_else(|| sqlite_url(service.db_path()), str::to_string);
        let store = webhook_dispatcher::store::Store::connect(&url)
            .await
            .expect("the service's store");
        let letters: Vec<_> = (0..records)
            .map(|i| exhausted_purchase(&format!("evt_{account}_{i}"), account, &subscription))
            .collect();
        let rows: Vec<_> = letters
            .iter()
            .map(|l| (l, webhook_dispatcher::store::Trust::Verified))
            .collect();
        for chunk in rows.chunks(500) {
            store.insert_dead_letters(chunk).await.unwrap();
        }
        Replayable {
            service,
            receiver,
            subscription,
            store,
        }
    }
}

/// `n` `POST /v1/subscriptions` for `account` sent at once to the service at `base` (its
/// address, `http://host:port`): the statuses, sorted, and the error codes of those refused.
pub async fn create_at_once(
    http: &reqwest::Client,
    base: &str,
    account: &str,
    n: usize,
) -> (Vec<u16>, Vec<String>) {
    let posts = (0..n).map(|i| async move {
        let resp = http
            .post(format!("{base}/v1/subscriptions"))
            .json(&serde_json::json!({
                "account_id": account,
                "url": format!("https://example.com/hooks/{i}"),
                "events": ["purchase"],
            }))
            .send()
            .await
            .expect("POST /v1/subscriptions");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        (status, body["error"]["code"].as_str().map(str::to_string))
    });
    let mut answers = futures_util::future::join_all(posts).await;
    answers.sort();
    let codes = answers.iter().filter_map(|(_, c)| c.clone()).collect();
    (answers.into_iter().map(|(s, _)| s).collect(), codes)
}
