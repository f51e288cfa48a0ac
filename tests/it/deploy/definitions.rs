//! `deploy/rabbitmq/definitions.json` is the topology the service declares with the default
//! settings, imports into a fresh vhost with `rabbitmqctl import_definitions`, and the service
//! runs on what it imported.

use std::collections::BTreeMap;
use std::process::Stdio;

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use super::read;
use crate::support::{LOAD_ACCOUNT, Producer, ServiceProcess, event_ids};
use crate::support::{PATIENCE, Receiver, amqp_url, metric_sum, test_config, unique, wait_until};
use crate::support::{rabbitmqctl, rabbitmqctl_list as list, shared_rabbitmqctl};

/// A vhost of the test's own on the shared broker, deleted on drop (also after a panic).
struct Vhost(String);

impl Vhost {
    fn create(name: String) -> Vhost {
        rabbitmqctl(&["add_vhost", &name]);
        let vhost = Vhost(name);
        rabbitmqctl(&["set_permissions", "-p", &vhost.0, "guest", ".*", ".*", ".*"]);
        vhost
    }

    /// [`amqp_url`] pointed at this vhost.
    fn amqp_url(&self) -> String {
        let mut url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        url.set_path(&format!("/{}", self.0));
        url.to_string()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let deleted = shared_rabbitmqctl()
            .args(["delete_vhost", &self.0])
            .stdin(Stdio::null())
            .output();
        if !deleted.is_ok_and(|o| o.status.success()) {
            eprintln!("could not delete vhost {}", self.0);
        }
    }
}

/// Queue arguments as `rabbitmqctl` lists them (`[[key, type, value], …]`) → `{key: value}`.
fn listed_arguments(row: &Value) -> BTreeMap<String, Value> {
    row["arguments"]
        .as_array()
        .expect("arguments list")
        .iter()
        .map(|arg| (arg[0].as_str().unwrap().to_string(), arg[2].clone()))
        .collect()
}

/// Queue arguments as the service declares them → `{key: value}`.
fn declared_arguments(args: &FieldTable) -> BTreeMap<String, Value> {
    args.inner()
        .iter()
        .map(|(key, value)| {
            let value = match value {
                AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
                AMQPValue::LongLongInt(n) => json!(n),
                other => panic!("argument {key:?} of unexpected type {other:?}"),
            };
            (key.to_string(), value)
        })
        .collect()
}

fn file_arguments(queue: &Value) -> BTreeMap<String, Value> {
    queue["arguments"]
        .as_object()
        .expect("arguments object")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn definitions_json_is_the_topology_the_service_declares_by_default() {
    let defs: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config("webhooks", "clarm.events", dir.path(), &[]);
    let topology = webhook_dispatcher::broker::Topology::new(&cfg);

    let mut expected: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    expected.insert(
        topology.events.clone(),
        declared_arguments(&topology.events_args()),
    );
    for retry in &topology.retries {
        expected.insert(
            retry.name.clone(),
            declared_arguments(&topology.retry_args(retry)),
        );
    }
    expected.insert(
        topology.dead.clone(),
        declared_arguments(&topology.plain_args()),
    );
    let in_file: BTreeMap<String, BTreeMap<String, Value>> = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_string(), file_arguments(q)))
        .collect();
    assert_eq!(
        in_file, expected,
        "definitions.json queues vs the service's"
    );
    for q in defs["queues"].as_array().unwrap() {
        assert_eq!(
            (&q["durable"], &q["auto_delete"]),
            (&json!(true), &json!(false)),
            "{q}"
        );
    }

    let exchanges = defs["exchanges"].as_array().unwrap();
    let kinds: Vec<(&Value, &Value, &Value)> = exchanges
        .iter()
        .map(|x| (&x["name"], &x["type"], &x["durable"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!(topology.exchange), &json!("topic"), &json!(true)),
            (&json!(topology.control), &json!("fanout"), &json!(true)),
        ]
    );
    let bindings = defs["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0]["source"], json!(topology.exchange));
    assert_eq!(bindings[0]["destination"], json!(topology.events));
    assert_eq!(bindings[0]["routing_key"], "#");
}

#[tokio::test]
async fn definitions_import_into_a_fresh_vhost_and_the_service_runs_on_them() {
    let vhost = Vhost::create(unique("defs"));
    let mut defs: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).unwrap();
    for kind in ["queues", "exchanges", "bindings"] {
        for item in defs[kind].as_array_mut().unwrap() {
            item["vhost"] = json!(vhost.0);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("definitions.json");
    std::fs::write(&file, defs.to_string()).unwrap();
    rabbitmqctl(&["import_definitions", file.to_str().unwrap()]);

    // The import is asynchronous: wait for every queue, then compare.
    let queues = defs["queues"].as_array().unwrap();
    let columns = ["name", "durable", "auto_delete", "arguments"];
    wait_until("the imported queues", PATIENCE, || async {
        list("list_queues", &vhost.0, &columns).len() == queues.len()
    })
    .await;
    let listed: BTreeMap<String, Value> = list("list_queues", &vhost.0, &columns)
        .into_iter()
        .map(|row| (row["name"].as_str().unwrap().to_string(), row))
        .collect();
    for queue in queues {
        let name = queue["name"].as_str().unwrap();
        let row = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} not imported"));
        assert_eq!(row["durable"], true, "{name}");
        assert_eq!(row["auto_delete"], false, "{name}");
        assert_eq!(listed_arguments(row), file_arguments(queue), "{name}");
    }
    let exchange = list(
        "list_exchanges",
        &vhost.0,
        &["name", "type", "durable", "arguments"],
    )
    .into_iter()
    .find(|x| x["name"] == "clarm.events")
    .expect("clarm.events imported");
    assert_eq!(
        (&exchange["type"], &exchange["durable"]),
        (&json!("topic"), &json!(true))
    );
    let bindings = list(
        "list_bindings",
        &vhost.0,
        &["source_name", "destination_name", "routing_key"],
    );
    assert!(
        bindings.contains(&json!({"source_name": "clarm.events", "destination_name": "webhooks.events", "routing_key": "#"})),
        "binding clarm.events → webhooks.events '#' imported: {bindings:?}"
    );

    // The service declares the same topology with the default names: an argument that differs
    // stops it at start (ServiceProcess panics with its log), so ready means they agree.
    let url = vhost.amqp_url();
    let service = ServiceProcess::start_on(
        &url,
        &[
            ("QUEUE_PREFIX", "webhooks"),
            ("EVENTS_EXCHANGE", "clarm.events"),
        ],
    )
    .await;
    // Beyond the definitions, only its own exclusive queue on the control exchange.
    let declared = list("list_queues", &vhost.0, &["name", "exclusive"]);
    let extra: Vec<&Value> = declared
        .iter()
        .filter(|q| !queues.iter().any(|d| d["name"] == q["name"]))
        .collect();
    assert_eq!(extra.len(), 1, "{declared:?}");
    assert!(
        extra[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("webhooks.control.")
            && extra[0]["exclusive"] == json!(true),
        "{extra:?}"
    );

    // The sampler reports the broker's consumer counts: this service's one on the events queue
    // (and one on the dead queue, the DLQ logger), none on the delay queues.
    wait_until("the queue consumers to be sampled", PATIENCE, || async {
        let page = service.metrics().await;
        let consumers = |queue: &str| {
            metric_sum(
                &page,
                "webhook_queue_consumers",
                &format!("queue=\"{queue}\""),
            )
        };
        consumers("webhooks.events") == 1.0
            && consumers("webhooks.dead") == 1.0
            && page.contains("webhook_queue_consumers{queue=\"webhooks.retry.2s\"} 0")
    })
    .await;

    // One event through the imported exchange and queues reaches its endpoint.
    let receiver = Receiver::start().await;
    service.subscribe(LOAD_ACCOUNT, &receiver.url).await;
    let producer = Producer::connect_to(&url, "clarm.events").await;
    let ids = event_ids("defs", 1);
    assert_eq!(
        producer.publish_events(&ids).await,
        1,
        "the broker confirms"
    );
    let got = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].header("webhook-id"), ids[0]);
    drop(producer);
    drop(service);
    drop(vhost);
}
