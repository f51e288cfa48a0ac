//! The deployment files stay true to the service: `deploy/rabbitmq/definitions.json` imports into
//! a fresh vhost and the service runs on it; every metric the alerts and the dashboard use is one
//! the running service, RabbitMQ's prometheus plugin or Prometheus itself really exposes (a real
//! Prometheus loads `deploy/prometheus/prometheus.yml` and `alerts.yml`, scrapes the service and
//! a private RabbitMQ node with the plugin, and evaluates every alert); every dashboard query is
//! valid PromQL; every alert's runbook link has its section in `docs/runbook.md`.
//!
//! Needs `rabbitmqctl` for the shared node, and `promtool` and `prometheus` (Debian's
//! `prometheus` package, which `.ci/run` installs).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::helpers::{
    PATIENCE, Receiver, amqp_url, free_port, metric_sum, test_config, unique, wait_until,
};
use crate::private_broker::PrivateBroker;
use crate::service_process::{LOAD_ACCOUNT, Producer, ServiceProcess, event_ids};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    let path = repo_file(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ definitions

/// `rabbitmqctl` against the shared node, failing with the command's output.
fn rabbitmqctl(args: &[&str]) -> Output {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("rabbitmqctl could not run ({e}): this test needs the RabbitMQ CLI next to the shared broker")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `rabbitmqctl list_… --formatter json` as JSON rows.
fn list(what: &str, vhost: &str, columns: &[&str]) -> Vec<Value> {
    let mut args = vec![what, "-p", vhost, "-q", "--formatter", "json"];
    args.extend_from_slice(columns);
    let out = rabbitmqctl(&args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rabbitmqctl {what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

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
        let deleted = Command::new("rabbitmqctl")
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
        declared_arguments(&topology.plain_args()),
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
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0]["name"], json!(topology.exchange));
    assert_eq!(exchanges[0]["type"], "topic");
    assert_eq!(exchanges[0]["durable"], true);
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
    assert_eq!(
        list("list_queues", &vhost.0, &["name"]).len(),
        queues.len(),
        "the service declared no queue beyond the definitions"
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

// ---------------------------------------------------------------------------------------------
// Alerts, dashboard and runbook

/// One alerting rule of `alerts.yml`.
#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
    runbook_url: String,
}

/// The alerts of `deploy/prometheus/alerts.yml`, read line by line (the file keeps to `- alert:`,
/// `expr:` inline or as a `|` block, and `runbook_url:` inline). Fails on anything it cannot
/// place, so a change of layout fails here instead of being skipped.
fn alerts() -> Vec<Alert> {
    let text = read("deploy/prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alerts.push(Alert {
                name: name.trim().to_string(),
                expr: String::new(),
                runbook_url: String::new(),
            });
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let alert = alerts.last_mut().expect("expr inside an alert");
            let expr = expr.trim();
            alert.expr = if expr == "|" || expr == "|-" {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                block.join("\n")
            } else {
                assert!(
                    !expr.starts_with(['"', '\'', '>']),
                    "write expr inline unquoted or as a | block: {line}"
                );
                expr.to_string()
            };
        } else if let Some(url) = trimmed.strip_prefix("runbook_url:") {
            alerts
                .last_mut()
                .expect("runbook_url inside an alert")
                .runbook_url = url.trim().to_string();
        }
        i += 1;
    }
    for alert in &alerts {
        assert!(!alert.expr.is_empty(), "{} has no expr", alert.name);
        assert!(
            !alert.runbook_url.is_empty(),
            "{} has no runbook_url",
            alert.name
        );
    }
    assert_eq!(
        alerts.len(),
        text.matches("- alert:").count(),
        "every alert was read"
    );
    alerts
}

/// Every PromQL expression of the Grafana dashboard, with its variables replaced by their
/// defaults and Grafana's interval variables by durations: `(panel title, expr)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/webhook-dispatcher.json"))
        .expect("the dashboard is JSON");
    let mut vars: Vec<(String, String)> = ["__rate_interval", "__interval", "__range"]
        .iter()
        .map(|v| (v.to_string(), "5m".to_string()))
        .collect();
    for var in dash["templating"]["list"].as_array().expect("templating") {
        let value = var["current"]["value"].as_str().unwrap_or_default();
        vars.push((var["name"].as_str().unwrap().to_string(), value.to_string()));
    }
    // Longest first, so `$job` never eats the start of `$job_name`.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut queries = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().expect("target expr").to_string();
            for (name, value) in &vars {
                expr = expr
                    .replace(&format!("${{{name}}}"), value)
                    .replace(&format!("${name}"), value);
            }
            assert!(!expr.contains('$'), "unknown variable in {title}: {expr}");
            queries.push((title.clone(), expr));
        }
    }
    assert!(queries.len() >= 10, "the dashboard has its queries");
    queries
}

/// Aggregation operators: followed by `by (…)` or `(`, never metric names.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords whose parenthesised list holds label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: [&str; 8] = [
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];

/// The metric names a PromQL expression selects: identifiers outside strings, `{…}` matchers and
/// `[…]` ranges that are not functions, aggregations, keywords or label lists.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' && quote != '`' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '{' || c == '[' || (c == '(' && label_list_next) {
            let close = match c {
                '{' => '}',
                '[' => ']',
                _ => ')',
            };
            label_list_next = false;
            while i < chars.len() && chars[i] != close {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    skip_string(&mut i);
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.99`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let lower = ident.to_ascii_lowercase();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LISTS.contains(&lower.as_str()) {
                label_list_next = true;
            } else if !(AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
                || next == Some(&'('))
            {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_without_functions_labels_or_durations() {
    let expr = r#"histogram_quantile(0.99, sum by (le, event) (rate(webhook_delivery_duration_seconds_bucket{job="x", queue=~"a\\.b"}[5m])))
        > 8 and on (queue) deriv(max without (instance) (webhook_queue_messages offset 1m)[15m:1m]) > bool 1e3
        or absent(up{job="webhook-dispatcher"}) unless count(rabbitmq_detailed_queue_consumers) == 0"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "rabbitmq_detailed_queue_consumers",
            "up",
            "webhook_delivery_duration_seconds_bucket",
            "webhook_queue_messages",
        ]
    );
}

/// `promtool` on PATH, or a panic that says how to get it.
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is missing: install Debian's `prometheus` package (apt-get install prometheus), as .ci/run does"
    );
    Command::new("promtool")
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Each query becomes a recording rule, which `promtool check rules` parses.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (title, expr)) in dashboard_queries().iter().enumerate() {
        rules += &format!(
            "      # {title}\n      - record: dashboard:query_{n}\n        expr: {}\n",
            Value::from(expr.as_str())
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces → `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let runbook = read("docs/runbook.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 8, "the alerts are there: {alerts:?}");
    for alert in &alerts {
        let (path, fragment) = alert
            .runbook_url
            .split_once('#')
            .unwrap_or_else(|| panic!("{}: runbook_url has no #anchor", alert.name));
        assert_eq!(path, "docs/runbook.md", "{}", alert.name);
        assert!(
            anchors.contains(fragment),
            "{}: no heading in docs/runbook.md has the anchor #{fragment}",
            alert.name
        );
        assert_eq!(
            fragment,
            anchor(&alert.name),
            "{}: its section is named after it",
            alert.name
        );
    }
}

/// A real Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Runs `prometheus` with `config` (and `alerts.yml` beside it) on a free port.
    fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::copy(
            repo_file("deploy/prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe and touches only the child: it dies with the test.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("prometheus could not start ({e}): install Debian's `prometheus` package, as .ci/run does")
        });
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Option<Value> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// Metric names with at least one series, and `up` per job.
    async fn names(&self) -> (BTreeSet<String>, BTreeMap<String, f64>) {
        let names = self
            .api("label/__name__/values")
            .await
            .and_then(|d| d.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let up = self
            .api("query?query=up")
            .await
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let job = s["metric"]["job"].as_str().unwrap_or("").to_string();
                let value = s["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0);
                (job, value)
            })
            .collect();
        (names, up)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` with `from` replaced by `to`, which must occur exactly `times` times.
fn replace_exactly(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "prometheus.yml no longer has {from:?} {times} time(s): update this test"
    );
    text.replace(from, to)
}

#[tokio::test]
async fn alerts_and_dashboard_use_only_metrics_the_service_and_rabbitmq_expose() {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for alert in alerts() {
        for name in metric_names(&alert.expr) {
            used.entry(name).or_default().push(alert.name.clone());
        }
    }
    for (title, expr) in dashboard_queries() {
        for name in metric_names(&expr) {
            used.entry(name).or_default().push(format!("panel {title}"));
        }
    }
    assert!(used.contains_key("webhook_queue_consumers"), "{used:?}");
    assert!(
        used.contains_key("rabbitmq_detailed_queue_consumers"),
        "{used:?}"
    );

    // A private node with the prometheus plugin (the shared broker's plugins stay as they are),
    // the service on it, and Prometheus with the shipped config pointed at both.
    let plugin_port = free_port();
    let broker = PrivateBroker::start_with(
        &["rabbitmq_prometheus"],
        &format!("prometheus.tcp.port = {plugin_port}\n"),
    )
    .await;
    let service = ServiceProcess::start_on(&broker.amqp_url(), &[]).await;
    let config = read("deploy/prometheus/prometheus.yml");
    let config = replace_exactly(
        &config,
        "webhook-dispatcher:8080",
        &service.addr.to_string(),
        1,
    );
    let config = replace_exactly(
        &config,
        "rabbitmq:15692",
        &format!("127.0.0.1:{plugin_port}"),
        1,
    );
    let config = replace_exactly(&config, "scrape_interval: 15s", "scrape_interval: 1s", 1);
    let config = replace_exactly(
        &config,
        "evaluation_interval: 15s",
        "evaluation_interval: 1s",
        1,
    );
    let prometheus = Prometheus::start(&config);

    // Both targets up, and every name used has a series.
    let mut seen = (BTreeSet::new(), BTreeMap::new());
    let ok = tokio::time::timeout(PATIENCE * 3, async {
        loop {
            seen = prometheus.names().await;
            let (names, up) = &seen;
            let both_up =
                up.get("webhook-dispatcher") == Some(&1.0) && up.get("rabbitmq") == Some(&1.0);
            if both_up && used.keys().all(|n| names.contains(n)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if ok.is_err() {
        let (names, up) = &seen;
        let missing: Vec<_> = used.iter().filter(|(n, _)| !names.contains(*n)).collect();
        panic!(
            "up by job: {up:?}\nmetrics used but not exposed (name → where): {missing:#?}\n\
             prometheus log:\n{}",
            prometheus.log()
        );
    }

    // Every alert loaded and evaluated without error against the real series.
    wait_until("every alert rule to be evaluated", PATIENCE, || async {
        let Some(data) = prometheus.api("rules?type=alert").await else {
            return false;
        };
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for rule in &rules {
            assert_ne!(rule["health"], "err", "alert rule fails: {rule}");
        }
        rules.len() == alerts().len() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    drop(prometheus);
    drop(service);
    drop(broker);
}
