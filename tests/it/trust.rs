//! The trust boundary: only messages the service sealed itself are believed. Each forged
//! message below is published as an attacker with write access to the vhost would (producer
//! credentials), by every route there is; nothing reaches the customer's endpoint, nothing
//! forged can be replayed, and each is counted.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use webhook_dispatcher::broker::dead_letter_message;
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::Store;

use crate::support::*;
use crate::support::{ServiceProcess, sqlite_url};

/// Publishes `body` with `props` (persistent, confirmed) to `exchange`/`routing_key`.
pub async fn publish(exchange: &str, routing_key: &str, body: &[u8], props: BasicProperties) {
    publish_messages(exchange, routing_key, &[(body.to_vec(), props)]).await;
}

/// Properties with the given string headers.
pub fn headers(pairs: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(
            (*k).into(),
            AMQPValue::LongString(v.as_bytes().to_vec().into()),
        );
    }
    BasicProperties::default().with_headers(table)
}

/// A task body aimed at `subscription`: a payload of the attacker's choosing, and three made-up
/// failed attempts (which, believed, would make the next one the last).
fn forged_task(n: usize, subscription: &Value) -> Vec<u8> {
    let attempt = |a: u32| json!({"attempt": a, "started_at": "2026-12-01T00:00:00.000Z", "duration_ms": 1, "status": 500, "error": null});
    json!({
        "event_id": format!("forged_{n}"), "account_id": "acct_acme",
        "subscription_id": subscription["id"], "event": "purchase",
        "body": "{\"event\":\"purchase\",\"data\":{\"attacker\":\"wants this signed\"}}",
        "attempts": [attempt(1), attempt(2), attempt(3)]
    })
    .to_string()
    .into_bytes()
}

/// A dead letter as the dispatcher would write one for `subscription`, dead-lettered now.
fn dead_letter_json(subscription: &Value, id: &str, event: &str, at: &str) -> Value {
    json!({
        "id": id, "event_id": "evt_forged", "account_id": "acct_acme",
        "subscription_id": subscription["id"], "url": subscription["url"], "event": event,
        "payload": {"event": "purchase", "data": {"attacker": "replay me"}},
        "reason": "exhausted", "detail": null, "attempts": [], "dead_lettered_at": at
    })
}

#[tokio::test]
async fn forged_tasks_are_dead_lettered_by_every_route_and_nothing_is_delivered() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let sub = app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    let events = format!("{}.events", app.prefix);
    let retry = format!("{}.retry.2s", app.prefix);
    // Every route into the events queue, every kind of task, every way a seal can be wrong.
    let routes: [(&str, &str); 3] = [
        ("", events.as_str()),
        ("", retry.as_str()),
        (app.exchange.as_str(), "purchase"),
    ];
    let seals: [&[(&str, &str)]; 3] = [
        &[],
        &[
            ("x-webhook-key", "1"),
            ("x-webhook-mac", "bm90IGEgcmVhbCBtYWM="),
        ],
        &[
            ("x-webhook-key", "999"),
            ("x-webhook-mac", "bm90IGEgcmVhbCBtYWM="),
        ],
    ];
    let mut n = 0;
    for (exchange, routing_key) in routes {
        for kind in ["delivery", "replay", "retry", "bundle"] {
            for seal in seals {
                let mut pairs = vec![("x-webhook-task", kind)];
                pairs.extend_from_slice(seal);
                publish(
                    exchange,
                    routing_key,
                    &forged_task(n, &sub),
                    headers(&pairs),
                )
                .await;
                n += 1;
            }
        }
    }

    // The delay queue hands its messages back after 2 s; then every forged task is a record.
    let logs = app.wait_for_logs("reason=forged_task", n).await;
    assert_eq!(logs.len(), n, "one record per forged task");
    for log in &logs {
        assert_eq!(
            log["account_id"],
            Value::Null,
            "nothing in it is believed: {log}"
        );
        assert_eq!(log["subscription_id"], Value::Null, "{log}");
        assert_eq!(log["trusted"], true, "the service wrote this record: {log}");
        assert!(
            log["payload"]["body"]
                .as_str()
                .unwrap()
                .contains("attacker"),
            "the forged message is kept for whoever investigates: {log}"
        );
        let (status, body) = app
            .post(
                &format!("/v1/delivery-logs/{}/replay", log["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "not_replayable");
    }
    let page = app.metrics().await;
    assert_eq!(
        metric_sum(&page, "webhook_forged_messages_total", "queue=\"events\""),
        n as f64
    );
    assert_eq!(
        metric_sum(&page, "webhook_forged_messages_total", "why=\"unsigned\""),
        (n / 3) as f64
    );
    assert_eq!(
        metric_sum(
            &page,
            "webhook_dead_letters_total",
            "reason=\"forged_task\""
        ),
        n as f64
    );
    let (status, bulk) = app
        .post("/v1/delivery-logs/replay", json!({"all": true}))
        .await;
    assert_eq!(status, 202, "{bulk}");
    assert_eq!(
        bulk["replayed"],
        json!([]),
        "nothing forged is replayed: {bulk}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 0, "nothing was signed and sent");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn forged_dead_letters_are_kept_as_untrusted_and_never_replayed() {
    let service = ServiceProcess::start(&[]).await;
    let receiver = Receiver::start().await;
    let sub: Value = {
        let id = service.subscribe("acct_acme", &receiver.url).await;
        json!({"id": id, "url": receiver.url})
    };
    let dead = service.dead_queue();
    let huge_id = format!("dl_{}", "9".repeat(100_000));
    let forged = [
        (
            dead_letter_json(
                &sub,
                "dl_forged_plain",
                "purchase",
                "2026-12-01T00:00:00.000Z",
            ),
            headers(&[]),
        ),
        (
            dead_letter_json(&sub, &huge_id, "refund", "not a time"),
            headers(&[]),
        ),
        (
            dead_letter_json(
                &sub,
                "dl_forged_mac",
                "purchase",
                "2026-12-01T00:00:00.000Z",
            ),
            headers(&[("x-webhook-key", "1"), ("x-webhook-mac", "AAAA")]),
        ),
        (
            dead_letter_json(
                &sub,
                "dl_forged_key",
                "purchase",
                "2026-12-01T00:00:00.000Z",
            ),
            headers(&[("x-webhook-key", "424242"), ("x-webhook-mac", "AAAA")]),
        ),
        // A bundle claimed, its seal wrong: one record for the whole message, nothing in it
        // believed, not even that it holds two dead letters.
        (
            json!({"dead_letters": [
                dead_letter_json(&sub, "dl_forged_bundle_1", "purchase", "2026-12-01T00:00:00.000Z"),
                dead_letter_json(&sub, "dl_forged_bundle_2", "purchase", "2026-12-01T00:00:00.000Z"),
            ]}),
            headers(&[
                ("x-webhook-dead-letters", "2"),
                ("x-webhook-key", "1"),
                ("x-webhook-mac", "AAAA"),
            ]),
        ),
    ];
    for (body, props) in &forged {
        publish("", &dead, body.to_string().as_bytes(), props.clone()).await;
    }
    // And one the service really sealed, as the contrast: it is believed and replayable.
    let genuine = exhausted_purchase("evt_genuine", "acct_acme", sub["id"].as_str().unwrap());
    let store = Store::open_existing(&sqlite_url(service.db_path()))
        .await
        .unwrap();
    let (body, props) = dead_letter_message(
        &genuine,
        &Keyring::load(std::sync::Arc::new(store.clone()))
            .await
            .unwrap(),
    );
    store.close().await;
    publish("", &dead, &body, props).await;

    let records = service
        .wait_for_logs("reason=forged_dead_letter", forged.len())
        .await;
    for record in &records {
        assert_eq!(record["trusted"], false, "{record}");
        assert_eq!(
            record["account_id"],
            Value::Null,
            "no customer sees it: {record}"
        );
        assert_eq!(record["subscription_id"], Value::Null, "{record}");
        let id = record["id"].as_str().unwrap();
        assert!(
            id.starts_with("dl_") && id.len() == 35,
            "an id of the service's own: {id}"
        );
        assert!(
            record["detail"].as_str().unwrap().contains("exhausted"),
            "what it claimed: {record}"
        );
        let (status, body) = service
            .post_json(&format!("/v1/delivery-logs/{id}/replay"), json!({}))
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "untrusted", "{body}");
    }
    let plain = records
        .iter()
        .find(|r| r["payload"]["id"] == "dl_forged_plain")
        .expect("the claim is kept whole in the payload");
    assert_eq!(plain["payload"]["subscription_id"], sub["id"], "{plain}");
    let account = service.wait_for_logs("account_id=acct_acme", 1).await;
    assert_eq!(
        account.len(),
        1,
        "the customer's log holds only the genuine record: {account:?}"
    );
    assert_eq!(account[0]["trusted"], true);

    let (status, bulk) = service
        .post_json("/v1/delivery-logs/replay", json!({"all": true}))
        .await;
    assert_eq!(status, 202, "{bulk}");
    assert_eq!(
        bulk["replayed"],
        json!([account[0]["id"]]),
        "only the genuine one: {bulk}"
    );
    let skipped: Vec<&str> = bulk["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["untrusted"; 5], "{bulk}");
    let got = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].header("webhook-id"), "evt_genuine");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1, "the forged payloads were never sent");
    assert_eq!(
        service
            .metric_sum("webhook_forged_messages_total", "queue=\"dead\"")
            .await,
        forged.len() as f64
    );
}

#[tokio::test]
async fn an_event_that_expires_before_it_is_consumed_is_kept_with_its_reason() {
    let mut service = ServiceProcess::start(&[]).await;
    let receiver = Receiver::start().await;
    service.subscribe("acct_acme", &receiver.url).await;
    service.stop(PATIENCE).await;
    let body = r#"{"id":"evt_expiring","event":"purchase","timestamp":"2026-12-01T00:00:00Z","account_id":"acct_acme","data":{"visitor_id":"v_1"}}"#;
    publish(
        &service.exchange,
        "purchase",
        body.as_bytes(),
        BasicProperties::default().with_expiration("100".into()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.restart().await;

    let records = service.wait_for_logs("reason=expired", 1).await;
    let record = &records[0];
    assert_eq!(record["event_id"], "evt_expiring", "{record}");
    assert_eq!(record["account_id"], "acct_acme");
    assert_eq!(record["event"], "purchase");
    assert_eq!(record["trusted"], true);
    assert!(
        record["detail"].as_str().unwrap().contains("RabbitMQ"),
        "{record}"
    );
    assert_eq!(
        record["payload"]["id"], "evt_expiring",
        "the message as published: {record}"
    );
    assert_eq!(
        service
            .metric_sum("webhook_dead_letters_total", "reason=\"expired\"")
            .await,
        1.0
    );
    assert_eq!(receiver.count(), 0, "an expired event is not delivered");
}

#[tokio::test]
async fn a_sealed_task_the_broker_dead_letters_becomes_a_replayable_record() {
    // RabbitMQ 4 dead-letters a message requeued past the quorum delivery limit; here the test
    // plays the broker and adds the x-death header itself (the real broker path is the expiry
    // test above, on the same code).
    let service = ServiceProcess::start(&[]).await;
    let receiver = Receiver::start().await;
    let sub = service.subscribe("acct_acme", &receiver.url).await;
    let store = Store::open_existing(&sqlite_url(service.db_path()))
        .await
        .unwrap();
    let keys = Keyring::load(std::sync::Arc::new(store.clone()))
        .await
        .unwrap();
    store.close().await;
    let task = webhook_dispatcher::wire::DeliveryTask::first_attempt(
        "evt_limit",
        "acct_acme",
        &sub,
        "purchase",
        r#"{"event":"purchase","timestamp":"2026-12-01T00:00:00Z","data":{"visitor_id":"v"}}"#
            .into(),
    );
    let (body, props) = webhook_dispatcher::broker::task_message(
        &task,
        webhook_dispatcher::wire::TaskKind::Delivery,
        &keys,
    );
    let mut death = FieldTable::default();
    death.insert(
        "reason".into(),
        AMQPValue::LongString(b"delivery_limit".to_vec().into()),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString(service.events_queue().into_bytes().into()),
    );
    death.insert("count".into(), AMQPValue::LongLongInt(20));
    let died = |props: BasicProperties| {
        let mut table = props.headers().clone().unwrap();
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death.clone())].into()),
        );
        props.with_headers(table)
    };
    publish("", &service.dead_queue(), &body, died(props)).await;
    // A bundle of two tasks the broker dead-lettered: a record for each.
    let bundled: Vec<_> = ["evt_limit_a", "evt_limit_b"]
        .map(|id| webhook_dispatcher::wire::DeliveryTask {
            event_id: id.into(),
            ..task.clone()
        })
        .to_vec();
    let (bundle, props) = webhook_dispatcher::broker::task_bundle_message(
        "acct_acme",
        bundled.iter().collect(),
        &keys,
    );
    publish("", &service.dead_queue(), &bundle, died(props)).await;

    let records = service.wait_for_logs("reason=delivery_limit", 3).await;
    let mut events: Vec<&str> = records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    events.sort_unstable();
    assert_eq!(events, ["evt_limit", "evt_limit_a", "evt_limit_b"]);
    let ids: std::collections::HashSet<&str> =
        records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "a record id each: {records:?}");
    let record = records
        .iter()
        .find(|r| r["event_id"] == "evt_limit")
        .unwrap();
    assert_eq!(record["subscription_id"], sub, "{record}");
    assert_eq!(record["url"], receiver.url, "{record}");
    assert_eq!(record["trusted"], true);
    let (status, body) = service
        .post_json(
            &format!(
                "/v1/delivery-logs/{}/replay",
                record["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let got = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].header("webhook-id"), "evt_limit");
}

/// A RabbitMQ user of the test's own on the shared broker, deleted on drop.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    /// Creates `name` with `password` and these permissions on vhost `/`.
    fn create(
        name: String,
        password: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> BrokerUser {
        let user = BrokerUser { name };
        rabbitmqctl(&["add_user", &user.name, password]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            configure,
            write,
            read,
        ]);
        user
    }

    fn amqp_url(&self, password: &str) -> String {
        let mut url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        url.set_username(&self.name).unwrap();
        url.set_password(Some(password)).unwrap();
        url.to_string()
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = shared_rabbitmqctl()
            .args(["delete_user", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = shared_rabbitmqctl()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl could not run ({e}): this test needs the RabbitMQ CLI next to the shared broker"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether publishing `body` to `exchange`/`routing_key` as the user of `url` is refused with
/// ACCESS_REFUSED (403); `false` when the broker took it.
async fn refused(url: &str, exchange: &str, routing_key: &str) -> bool {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("the user connects");
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let body = br#"{"event":"purchase","timestamp":"2026-12-01T00:00:00Z","account_id":"acct_acme","data":{"visitor_id":"v_perm"}}"#;
    let result = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                Default::default(),
                body,
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    closed(conn.close(200, "done".into())).await;
    match result {
        Ok(confirm) => {
            assert!(confirm.is_ack());
            false
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("ACCESS_REFUSED") || text.contains("403"),
                "{text}"
            );
            true
        }
    }
}

#[tokio::test]
async fn the_documented_permissions_keep_producers_to_the_exchange_and_suffice_for_the_service() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = unique("q");
    let exchange = unique("x");
    // As RELIABILITY.md's trust boundary gives them (with the test's names).
    let service_user = BrokerUser::create(
        format!("wd-service-{tag}"),
        "service-password",
        &format!("^({exchange}|{prefix}\\..*)$"),
        &format!("^(amq\\.default|{prefix}\\..*)$"),
        &format!("^({exchange}|{prefix}\\..*)$"),
    );
    let producer = BrokerUser::create(
        format!("wd-producer-{tag}"),
        "producer-password",
        "^$",
        &format!("^{exchange}$"),
        "^$",
    );
    let app = spawn_app_with(&[
        "--amqp-url",
        &service_user.amqp_url("service-password"),
        "--queue-prefix",
        &prefix,
        "--events-exchange",
        &exchange,
        "--retry-delays",
        "100ms",
    ])
    .await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;

    let as_producer = producer.amqp_url("producer-password");
    assert!(
        !refused(&as_producer, &exchange, "purchase").await,
        "producers publish events"
    );
    for queue in [
        format!("{prefix}.events"),
        format!("{prefix}.retry.100ms"),
        format!("{prefix}.dead"),
    ] {
        assert!(
            refused(&as_producer, "", &queue).await,
            "a producer cannot write to {queue}"
        );
    }
    // The service, with only its own permissions, delivers, retries and dead-letters.
    let got = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let logs = app.wait_for_logs("reason=exhausted", 1).await;
    assert_eq!(logs.len(), 1);
    app.stop().await.unwrap();
}
