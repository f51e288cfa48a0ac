//! What a test asks a [`ServiceProcess`]: its API, metrics and operator CLI.

use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;

use super::{
    CliRun, PATIENCE, Producer, ServiceProcess, metric_sum, run_cli, run_cli_within,
    run_program_within, wait_until,
};

impl ServiceProcess {
    pub async fn readyz_status(&self) -> Option<u16> {
        self.http
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .expect("GET /metrics");
        resp.text().await.expect("metrics body")
    }

    /// The sum of every series of metric `name` whose labels contain `label` (`""` for all).
    pub async fn metric_sum(&self, name: &str, label: &str) -> f64 {
        metric_sum(&self.metrics().await, name, label)
    }

    /// Runs the operator CLI, `webhook-dispatcher ARGS`, with this service's settings (broker,
    /// prefix, exchange, store); `stdin` is piped, so the CLI is not on a terminal.
    pub async fn cli(&self, args: &[&str], stdin: &[u8]) -> CliRun {
        run_cli(&self.env, args, stdin).await
    }

    /// The environment the operator CLI runs with for this service (its settings).
    pub fn cli_env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// [`cli`](Self::cli) with `extra` environment variables added (or replaced).
    pub async fn cli_with(&self, extra: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> CliRun {
        let mut env = self.env.clone();
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        run_cli(&env, args, stdin).await
    }

    /// [`cli`](Self::cli) for a command expected to take longer than [`PATIENCE`].
    pub async fn cli_within(&self, limit: Duration, args: &[&str], stdin: &[u8]) -> CliRun {
        run_cli_within(limit, &self.env, args, stdin).await
    }

    /// The operator CLI as a command to spawn (stdin, stdout and stderr null), with this
    /// service's settings; for tests that signal it while it runs. The same build as the
    /// service (`WEBHOOK_DISPATCHER_BIN`, see [`ServiceProcess`]).
    pub fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let bin = std::env::var_os("WEBHOOK_DISPATCHER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_webhook-dispatcher").into());
        let mut command = tokio::process::Command::new(bin);
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// [`cli`](Self::cli) on a terminal: run under `script(1)`, which gives it a pseudo-terminal
    /// for stdin, stdout and stderr and copies `typed` to it as if typed. What it printed (both
    /// streams, with `\r\n` line ends and any terminal drawing) comes back in `stdout`.
    pub async fn cli_on_terminal(&self, args: &[&str], typed: &[u8]) -> CliRun {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let command = std::iter::once(env!("CARGO_BIN_EXE_webhook-dispatcher"))
            .chain(args.iter().copied())
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ");
        let mut env = self.env.clone();
        // A size, so progress bars have a width to draw in.
        env.extend(
            [("COLUMNS", "100"), ("LINES", "30"), ("TERM", "xterm")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
        let script = [
            "script",
            "--quiet",
            "--return",
            "--command",
            &command,
            "/dev/null",
        ];
        run_program_within(PATIENCE, &env, &script, typed).await
    }

    /// `POST path` with a JSON body: the status and the JSON answer (null when there is none).
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The delivery-log records matching `query`, every page, through the API.
    pub async fn delivery_logs(&self, query: &str) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let body: serde_json::Value = self
                .http
                .get(self.url(&format!("/v1/delivery-logs?limit=500&{query}{cursor}")))
                .send()
                .await
                .expect("GET /v1/delivery-logs")
                .json()
                .await
                .expect("delivery-log JSON");
            items.extend(body["items"].as_array().expect("items").iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return items,
            }
        }
    }

    /// Waits until at least `n` delivery-log records match `query`, and returns them all.
    pub async fn wait_for_logs(&self, query: &str, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            &format!("{n} delivery-log records for {query:?}"),
            PATIENCE,
            || async { self.delivery_logs(query).await.len() >= n },
        )
        .await;
        self.delivery_logs(query).await
    }

    /// Creates a subscription for every event of `account` and returns its id.
    pub async fn subscribe(&self, account: &str, url: &str) -> String {
        let resp = self
            .http
            .post(self.url("/v1/subscriptions"))
            .json(&serde_json::json!({ "account_id": account, "url": url, "events": ["*"] }))
            .send()
            .await
            .expect("POST /v1/subscriptions");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("subscription JSON");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("subscription id").to_string()
    }

    /// Waits until the service has nothing left to do for a fault test's load (one subscription):
    /// [`Self::drained`], and every event it consumed either attempted or deferred (a deferral is
    /// consumed and comes back later). The count only balances within one broker session: a
    /// delivery abandoned when its connection died is consumed but never attempted.
    pub async fn wait_idle(&self, broker: &Producer, limit: Duration) {
        wait_until("the service to be idle", limit, || async {
            if !self.drained(broker).await {
                return false;
            }
            let metrics = self.metrics().await;
            metric_sum(&metrics, "webhook_events_consumed_total", "")
                == metric_sum(&metrics, "webhook_delivery_attempts_total", "")
                    + metric_sum(&metrics, "webhook_deliveries_deferred_total", "")
        })
        .await;
    }

    /// Nothing ready in the service's queues (delay queues included) and nothing in flight.
    pub async fn drained(&self, broker: &Producer) -> bool {
        for queue in &self.queues {
            if broker.ready(queue).await != 0 {
                return false;
            }
        }
        metric_sum(&self.metrics().await, "webhook_deliveries_in_flight", "") == 0.0
    }
}
