//! Startup declares the contract topology (and refuses a mismatched one); shutdown is graceful.

use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use webhook_dispatcher::{App, Config};

use crate::support::*;

#[tokio::test]
async fn the_contract_queues_exist_with_their_arguments_and_restarts_are_idempotent() {
    let app = spawn_app().await;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Passive declares fail if a queue is missing; re-declaring with the exact arguments the
    // contract names must succeed (the broker refuses any difference).
    let p = &app.prefix;
    for (name, ttl) in [
        (format!("{p}.retry.2s"), 2000i64),
        (format!("{p}.retry.4s"), 4000),
        (format!("{p}.retry.8s"), 8000),
    ] {
        let mut args = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(v.as_bytes().to_vec().into());
        args.insert("x-queue-type".into(), s("quorum"));
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-dead-letter-exchange".into(), s(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            s(&format!("{p}.events")),
        );
        args.insert("x-dead-letter-strategy".into(), s("at-least-once"));
        args.insert("x-overflow".into(), s("reject-publish"));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(name.as_str().into(), durable, args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in [format!("{p}.events"), format!("{p}.dead")] {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap();
    }
    // The events queue has our consumer.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(
            format!("{p}.events").as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.consumer_count(), 1);
    closed(conn.close(200, "bye".into())).await;

    // Stop and start again on the same topology.
    let prefix = app.prefix.clone();
    let exchange = app.exchange.clone();
    let queues = app.queues.clone();
    app.stop_keeping_topology().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&prefix, &exchange, &dir);
    let again = App::build(cfg).await.unwrap();
    let addr = again.local_addr();
    let stop = CancellationToken::new();
    let run = tokio::spawn(again.run(stop.clone()));
    // Ready means it declared the same topology again and consumes: only then is the second
    // start known to have got past the declarations.
    let http = reqwest::Client::new();
    wait_until("the second start to be ready", PATIENCE, || async {
        http.get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        !run.is_finished(),
        "a second start on the same topology keeps running"
    );
    stop.cancel();
    run.await.unwrap().unwrap();
    delete_topology(queues, exchange);
}

#[tokio::test]
async fn a_queue_that_exists_with_other_arguments_stops_startup_with_a_clear_error() {
    let prefix = format!("test-mismatch-{}", uuid::Uuid::new_v4().simple());
    let exchange = format!("{prefix}-x");
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let retry = format!("{prefix}.retry.2s");
    ch.queue_declare(retry.as_str().into(), durable, args)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let app = App::build(config(&prefix, &exchange, &dir)).await.unwrap();
    let result = tokio::time::timeout(PATIENCE, app.run(CancellationToken::new()))
        .await
        .expect("startup gives up");
    let message = result.expect_err("a mismatched queue is fatal").to_string();
    println!("{message}");
    assert!(message.contains(&retry), "names the queue: {message}");
    assert!(
        message.contains("x-message-ttl=2000"),
        "names what the service wanted: {message}"
    );
    assert!(message.contains("x-queue-type=quorum"), "{message}");
    assert!(
        message.contains("1000"),
        "names what the broker has: {message}"
    );

    for q in [format!("{prefix}.events"), retry] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [exchange, format!("{prefix}.control")] {
        let _ = ch
            .exchange_delete(x.as_str().into(), Default::default())
            .await;
    }
    closed(conn.close(200, "bye".into())).await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_delivery_finish_and_exits_cleanly() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Slow(Duration::from_millis(1500), 200));
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("purchase").await;
    receiver.wait_for(1, PATIENCE).await;

    let started = Instant::now();
    let (events, queues, exchange) = (
        format!("{}.events", app.prefix),
        app.queues.clone(),
        app.exchange.clone(),
    );
    app.stop_keeping_topology()
        .await
        .expect("run returns Ok on shutdown");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "waited for the in-flight delivery: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "well within the grace period: {took:?}"
    );

    // The finished delivery was acked before the connection closed: nothing went back to the
    // queue, so a restart would not deliver it twice. A quorum queue takes back a closed
    // channel's unacked messages asynchronously, so a message returned would show only after a
    // moment: look for a while, not once.
    let producer = Producer::connect(&exchange).await;
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            producer.ready(&events).await,
            0,
            "the delivered event is not back in the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.count(), 1);
    drop(producer);
    delete_topology(queues, exchange);
}

fn config(prefix: &str, exchange: &str, dir: &tempfile::TempDir) -> Config {
    test_config(prefix, exchange, dir.path(), &[])
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Every setting `serve` has, read from the config itself: a setting added later is checked
    // too. Each must be a flag with an environment variable.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        _cfg: Config,
    }
    let settings: Vec<(String, Option<String>)> = <Serve as clap::CommandFactory>::command()
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            (arg.get_long().unwrap().to_string(), env)
        })
        .collect();
    assert!(settings.len() >= 17, "{settings:?}");
    for contract in [
        "AMQP_URL",
        "DATABASE_URL",
        "LISTEN_ADDR",
        "ADMIN_TOKEN",
        "RETRY_DELAYS",
    ] {
        assert!(
            settings
                .iter()
                .any(|(_, env)| env.as_deref() == Some(contract)),
            "no setting reads {contract}"
        );
    }
    for (flag, env) in &settings {
        let env = env
            .as_deref()
            .unwrap_or_else(|| panic!("--{flag} has no environment variable"));
        assert!(
            help.contains(&format!("--{flag}")) && help.contains(&format!("env: {env}")),
            "--help lacks --{flag} / {env}:\n{help}"
        );
    }
    assert!(help.contains("serve"), "{help}");
}

#[test]
fn a_public_listen_address_without_a_token_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-dispatcher"))
        .args([
            "serve",
            "--listen-addr",
            "0.0.0.0:0",
            "--database-url",
            "sqlite::memory:",
        ])
        .env_remove("ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ADMIN_TOKEN is required"), "{stderr}");
}
