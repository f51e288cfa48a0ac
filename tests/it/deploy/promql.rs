//! The alerts and the dashboard: their PromQL, the metric names in it, and the runbook links.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use super::read;

/// One alerting rule of `alerts.yml`.
#[derive(Debug)]
pub(super) struct Alert {
    pub name: String,
    pub expr: String,
    pub runbook_url: String,
}

/// The alerts of `deploy/prometheus/alerts.yml`, read line by line (the file keeps to `- alert:`,
/// `expr:` inline or as a `|` block, and `runbook_url:` inline). Fails on anything it cannot
/// place, so a change of layout fails here instead of being skipped.
pub(super) fn alerts() -> Vec<Alert> {
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
pub(super) fn dashboard_queries() -> Vec<(String, String)> {
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

/// The metric names a PromQL expression selects: identifiers outside strings, `#` comments,
/// `{…}` matchers and `[…]` ranges that are not functions, aggregations, keywords or label lists.
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
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
        } else if c == '#' {
            // A comment, to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
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
        # a comment: not metric names
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
        // Relative, or prefixed with where the repository is published (see alerts.yml).
        assert!(
            path == "docs/runbook.md" || path.ends_with("/docs/runbook.md"),
            "{}: runbook_url {path} is not docs/runbook.md",
            alert.name
        );
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
