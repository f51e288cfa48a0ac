//! A real Prometheus with the shipped `prometheus.yml` and `alerts.yml`, scraping the real
//! service and a private RabbitMQ node with the prometheus plugin: every metric the alerts and
//! the dashboard use has a series, both targets are up, and every alert evaluates.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::promql::{alerts, dashboard_queries, metric_names};
use super::{read, repo_file};
use crate::support::PrivateBroker;
use crate::support::ServiceProcess;
use crate::support::{PATIENCE, free_port, wait_until};

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
