//! The deployment files agree with each other and with the service's settings: what compose
//! mounts exists and lands where Prometheus and Grafana look for it, the dashboard takes its data
//! source from its variable, and every grace period outlasts a delivery plus the shutdown grace.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{read, repo_file};
use crate::support::test_config;

/// The value of the first `key: value` line (trimmed, unquoted) of a YAML file written as block
/// mappings.
fn yaml_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no `{key}:` line"))
}

/// Compose's bind mounts: `(./source, target)`.
fn compose_mounts() -> Vec<(String, String)> {
    read("docker-compose.yml")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- ./"))
        .map(|mount| {
            let mut parts = mount.split(':');
            let source = parts.next().unwrap().to_string();
            let target = parts.next().expect("source:target").to_string();
            (source, target)
        })
        .collect()
}

#[test]
fn compose_mounts_exist_where_prometheus_and_grafana_read_them() {
    let mounts = compose_mounts();
    assert!(mounts.len() >= 4, "{mounts:?}");
    for (source, _) in &mounts {
        assert!(
            repo_file(source).exists(),
            "docker-compose.yml mounts ./{source}, which does not exist (Docker would create an empty folder)"
        );
    }
    let target = |source: &str| {
        mounts
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("docker-compose.yml mounts ./{source}"))
    };
    // Prometheus reads /etc/prometheus/prometheus.yml by default, and its rule files beside it.
    assert_eq!(target("deploy/prometheus"), "/etc/prometheus");
    let prometheus = read("deploy/prometheus/prometheus.yml");
    assert!(
        prometheus.contains("\n  - alerts.yml\n"),
        "rule_files: alerts.yml"
    );
    // Grafana: provisioning in its default folder, the dashboard where the provider looks.
    assert_eq!(
        target("deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let provider = read("deploy/grafana/provisioning/dashboards/webhook-dispatcher.yml");
    let dashboard_target = target("deploy/grafana/webhook-dispatcher.json");
    assert_eq!(
        Some(yaml_value(&provider, "path").as_str()),
        dashboard_target
            .strip_suffix("/webhook-dispatcher.json")
            .map(|dir| dir.trim_end_matches('/')),
        "the dashboard provider's path is where compose mounts the dashboard"
    );
    // The official image enables rabbitmq_management and rabbitmq_prometheus in its own
    // enabled_plugins file; a read-only file mounted over it would make `rabbitmq-plugins
    // enable` (docs/runbook.md) fail in the container.
    assert!(
        mounts
            .iter()
            .all(|(_, target)| !target.starts_with("/etc/rabbitmq/enabled_plugins")),
        "{mounts:?}"
    );
}

#[test]
fn the_dashboard_takes_its_data_source_from_its_variable() {
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/webhook-dispatcher.json")).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let datasource = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let provisioned = read("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(
        datasource["current"]["value"].as_str(),
        Some(yaml_value(&provisioned, "uid").as_str()),
        "the variable defaults to the provisioned data source"
    );
    let wanted = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "unique panel ids"
        );
        assert_eq!(
            panel["datasource"]["uid"],
            wanted.as_str(),
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(
                target["datasource"]["uid"],
                wanted.as_str(),
                "{}",
                panel["title"]
            );
        }
    }
}

fn duration(raw: &str) -> Duration {
    humantime::parse_duration(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
}

#[test]
fn grace_periods_outlast_a_delivery_and_the_shutdown_grace() {
    // The settings Kubernetes passes, else the service's defaults.
    let dir = tempfile::tempdir().unwrap();
    let defaults = test_config("p", "x", dir.path(), &[]);
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let setting = |key: &str, default: Duration| {
        if configmap
            .lines()
            .any(|l| l.trim().starts_with(&format!("{key}:")))
        {
            duration(&yaml_value(&configmap, key))
        } else {
            default
        }
    };
    let needed = setting("DELIVERY_TIMEOUT", defaults.delivery_timeout)
        + setting("SHUTDOWN_GRACE", defaults.shutdown_grace);
    // Every Deployment (one per role).
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let graces: Vec<Duration> = deployment
        .lines()
        .filter_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .map(|v| Duration::from_secs(v.trim().parse().unwrap()))
        .collect();
    assert_eq!(graces.len(), 3, "one per Deployment");
    for pod_grace in graces {
        assert!(
            pod_grace > needed,
            "terminationGracePeriodSeconds {pod_grace:?} ≤ {needed:?}"
        );
    }
    // Compose runs the defaults.
    let compose_grace = duration(&yaml_value(
        &read("docker-compose.yml"),
        "stop_grace_period",
    ));
    let default_needed = defaults.delivery_timeout + defaults.shutdown_grace;
    assert!(
        compose_grace > default_needed,
        "stop_grace_period {compose_grace:?} ≤ {default_needed:?}"
    );
}

#[test]
fn the_secret_template_token_is_one_the_service_refuses() {
    // Anything of 16+ characters passes the service's length rule, so a copy of the template
    // applied as it is would run with a token published here. On the Deployment's 0.0.0.0 the
    // placeholder must stop the service instead.
    let template = read("deploy/kubernetes/secret.example.yaml");
    let token = yaml_value(&template, "ADMIN_TOKEN");
    assert!(token.contains("REPLACE_ME"), "{token}");
    let dir = tempfile::tempdir().unwrap();
    let args = ["--admin-token", &token, "--listen-addr", "0.0.0.0:8080"];
    let cfg = test_config("p", "x", dir.path(), &args);
    let refused = cfg
        .validate()
        .expect_err("the placeholder token is refused");
    assert!(
        refused.to_string().contains("ADMIN_TOKEN must be at least"),
        "{refused}"
    );
    // The portal key's placeholder too: refused before the service signs anything with it.
    let key = yaml_value(&template, "PORTAL_KEY");
    assert!(key.contains("REPLACE_ME"), "{key}");
    let refused = crate::support::try_test_config("p", "x", dir.path(), &["--portal-key", &key])
        .expect_err("the placeholder portal key is refused");
    assert!(
        refused
            .to_string()
            .contains("PORTAL_KEY must be at least 32"),
        "{refused}"
    );
}

/// Service `service`'s `environment:` in compose file `file`, each `${NAME:-default}` as its
/// default.
fn compose_environment(file: &str, service: &str) -> Vec<(String, String)> {
    let compose = read(file);
    let service = compose
        .split_once(&format!("\n  {service}:\n"))
        .unwrap_or_else(|| panic!("no service {service} in {file}"))
        .1;
    let block = service
        .split_once("\n    environment:\n")
        .expect("its environment")
        .1;
    block
        .lines()
        .take_while(|line| line.starts_with("      "))
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| {
            let (key, value) = line.trim().split_once(':').expect("KEY: value");
            let value = value.trim().trim_matches('"');
            let value = match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                Some(reference) => reference.split_once(":-").expect("${NAME:-default}").1,
                None => value,
            };
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The service's config from compose file `file`'s service `service`, as the service reads it.
fn compose_config(file: &str, service: &str) -> webhook_dispatcher::Config {
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for (key, value) in compose_environment(file, service) {
        if key == "RUST_LOG" {
            continue; // read by the log filter, not a flag
        }
        args.push(format!("--{}", key.to_lowercase().replace('_', "-")));
        args.push(value);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cfg = crate::support::try_test_config("p", "x", dir.path(), &args)
        .unwrap_or_else(|e| panic!("{file} {service}: its environment is not the service's: {e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("{file} {service}: the service refuses its environment: {e}"));
    cfg
}

#[test]
fn compose_starts_the_service_with_settings_it_accepts() {
    // `docker compose up` cannot run here: read its environment as the service would and check
    // the service takes it (a LISTEN_ADDR off loopback needs a long enough ADMIN_TOKEN and a
    // PORTAL_KEY; every name is a setting).
    let cfg = compose_config("docker-compose.yml", "webhook-dispatcher");
    assert!(!cfg.listen_addr.ip().is_loopback());
    assert_eq!(
        cfg.portal.public_url.as_ref().map(url::Url::as_str),
        Some("http://localhost:8080/")
    );
}

#[test]
fn the_cluster_compose_file_splits_replicas_by_role_on_every_node() {
    const FILE: &str = "deploy/compose/cluster.yml";
    let mut roles = Vec::new();
    for service in ["api", "dispatcher", "dlq-logger"] {
        let cfg = compose_config(FILE, service);
        roles.push(cfg.roles.names().join(","));
        let nodes: Vec<String> = cfg
            .amqp
            .amqp_url
            .urls()
            .iter()
            .map(|u| {
                url::Url::parse(u.expose())
                    .unwrap()
                    .host_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            nodes,
            ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"],
            "{service}"
        );
        assert!(
            cfg.store.database_url.expose().starts_with("postgres://"),
            "{service}: replicas share PostgreSQL"
        );
    }
    assert_eq!(roles, ["api", "dispatcher", "dlq-logger"]);
    let compose = read(FILE);
    for node in 1..=3 {
        assert!(
            compose.contains(&format!("hostname: rabbitmq-{node}\n")),
            "rabbitmq-{node} has a fixed hostname (its node name and data)"
        );
    }
    let conf = read("deploy/compose/rabbitmq-cluster.conf");
    for node in 1..=3 {
        assert!(conf.contains(&format!("nodes.{node} = rabbit@rabbitmq-{node}")));
    }
}

/// `deploy/kubernetes/monitoring/prometheusrule.yaml`: its own lines up to `spec:`, then `alerts.yml` from
/// `groups:` on, indented by two spaces. `UPDATE_PROMETHEUSRULE=1` writes it so.
#[test]
fn the_prometheusrule_is_alerts_yml() {
    const PATH: &str = "deploy/kubernetes/monitoring/prometheusrule.yaml";
    let rule = read(PATH);
    let (head, _) = rule
        .split_once("\nspec:\n")
        .expect("prometheusrule.yaml has a `spec:` line");
    let alerts = read("deploy/prometheus/alerts.yml");
    let (_, groups) = alerts
        .split_once("\ngroups:\n")
        .expect("alerts.yml has a `groups:` line");
    let mut expected = format!("{head}\nspec:\n  groups:\n");
    for line in groups.lines() {
        if !line.is_empty() {
            expected += "  ";
        }
        expected += line;
        expected += "\n";
    }
    if std::env::var_os("UPDATE_PROMETHEUSRULE").is_some() {
        std::fs::write(repo_file(PATH), &expected).unwrap();
        return;
    }
    assert!(
        rule == expected,
        "{PATH} is not alerts.yml's rules: run \
         UPDATE_PROMETHEUSRULE=1 cargo test --test it deploy::files::the_prometheusrule_is_alerts_yml"
    );
}

#[test]
fn kubernetes_scrapes_rabbitmq_as_compose_does() {
    let prometheus = read("deploy/prometheus/prometheus.yml");
    let (_, compose_job) = prometheus
        .split_once("job_name: rabbitmq\n")
        .expect("prometheus.yml has a rabbitmq job");
    let monitor = read("deploy/kubernetes/monitoring/rabbitmq-servicemonitor.yaml");
    assert_eq!(
        yaml_value(compose_job, "metrics_path"),
        yaml_value(&monitor, "path")
    );
    assert_eq!(
        yaml_value(compose_job, "family"),
        yaml_value(&monitor, "family")
    );
    // The alerts' job label.
    assert!(
        monitor.contains("- targetLabel: job\n          replacement: rabbitmq\n"),
        "the ServiceMonitor sets job=\"rabbitmq\""
    );
    assert!(read("deploy/prometheus/alerts.yml").contains(r#"job="rabbitmq""#));
    let kustomization = read("deploy/kubernetes/monitoring/kustomization.yaml");
    for file in ["rabbitmq-servicemonitor.yaml", "prometheusrule.yaml"] {
        assert!(
            kustomization.contains(&format!("\n  - {file}\n")),
            "kustomization.yaml lists {file}"
        );
    }
}
