//! The deployment files stay true to the service: `deploy/rabbitmq/definitions.json` imports into
//! a fresh vhost and the service runs on it; every metric the alerts and the dashboard use is one
//! the running service, RabbitMQ's prometheus plugin or Prometheus itself really exposes (a real
//! Prometheus loads `deploy/prometheus/prometheus.yml` and `alerts.yml`, scrapes the service and
//! a private RabbitMQ node with the plugin, and evaluates every alert); every dashboard query is
//! valid PromQL; every alert's runbook link has its section in `docs/runbook.md`.
//!
//! Needs `rabbitmqctl` for the shared node, and `promtool` and `prometheus` (Debian's
//! `prometheus` package, which `.ci/run` installs).
//! One file per part: `definitions` (RabbitMQ topology), `promql` (alerts, dashboard queries,
//! runbook links), `monitoring` (a real Prometheus on the real service and broker), `labels`
//! (bounded label values, histogram buckets the alerts read), `files` (compose mounts, the
//! dashboard's data source, grace periods, the Kubernetes files) and `first_run` (what a new user
//! meets: hostnames, published ports, operator kinds, the build image and rust-version).

use std::path::{Path, PathBuf};

mod definitions;
mod files;
mod first_run;
mod labels;
mod monitoring;
mod promql;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    let path = repo_file(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
