//! `webhook-dispatcher dlq stats [--json]` and `dlq drain`.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::CliError;
use super::OpsSettings;
use super::terminal::{progress, table};
use crate::ops::stats::{self, Stats};
use crate::ops::{connect_broker, drain, open_store};
use crate::store::LogGroup;

pub async fn stats(settings: &OpsSettings, json: bool) -> Result<ExitCode, CliError> {
    let store = open_store(&settings.store).await?;
    let broker = connect_broker(&settings.access.amqp, settings.topology()).await?;
    let collected = stats::collect(&broker, &store).await;
    broker.close().await;
    store.close().await;
    let stats = collected?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).expect("stats serialise")
        );
    } else {
        print!("{}", render(&stats, settings));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(stats: &Stats, settings: &OpsSettings) -> String {
    let count = |n: Option<u32>| n.map_or_else(|| "missing".to_string(), |n| n.to_string());
    let queues: Vec<Vec<String>> = stats
        .queues
        .iter()
        .map(|q| vec![q.queue.clone(), count(q.ready), count(q.consumers)])
        .collect();
    let log = &stats.delivery_log;
    let mut out = format!("queues on {}\n", settings.access.amqp.amqp_url);
    out.push_str(&table(&["QUEUE", "READY", "CONSUMERS"], &queues));
    out.push_str(
        "  (READY: messages waiting; those a consumer holds unacked are not counted, see\n   `rabbitmqctl list_queues name messages_ready messages_unacknowledged`)\n",
    );
    out.push_str(&format!(
        "\ndelivery log in {}: {} records, {} not replayed\n",
        settings.store.database_url, log.total, log.not_replayed
    ));
    for (title, header, groups) in [
        ("by reason", "REASON", &log.by_reason),
        ("by event", "EVENT", &log.by_event),
        ("by account (top 20)", "ACCOUNT", &log.by_account),
    ] {
        if groups.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title}\n"));
        out.push_str(&table(
            &[header, "RECORDS", "NOT REPLAYED"],
            &groups.iter().map(group_row).collect::<Vec<_>>(),
        ));
    }
    out
}

fn group_row(group: &LogGroup) -> Vec<String> {
    vec![
        group.name.clone().unwrap_or_else(|| "(none)".into()),
        group.total.to_string(),
        group.not_replayed.to_string(),
    ]
}

pub async fn drain(settings: &OpsSettings, stop: &CancellationToken) -> Result<ExitCode, CliError> {
    let store = open_store(&settings.store).await?;
    let broker = connect_broker(&settings.access.amqp, settings.topology()).await?;
    let waiting = stats::queue_stats(&broker, &broker.topology.dead).await;
    let bar = progress(
        waiting.ok().and_then(|q| q.ready).map_or(0, u64::from),
        "draining",
    );
    // Log lines (a failing store) are written with the bar hidden, so they do not tear it.
    let log = |line: &dyn Fn()| bar.suspend(line);
    let mut step = |done, remaining| {
        bar.set_length(done + remaining);
        bar.set_position(done);
    };
    let drained = drain::drain(&broker, &store, stop, &mut step, &log).await;
    bar.finish_and_clear();
    broker.close().await;
    store.close().await;
    let report = drained?;
    let line = format!(
        "drained {} dead letters ({} already stored)",
        report.drained, report.already_stored
    );
    if report.interrupted {
        return Err(CliError::Failed(format!(
            "interrupted: {line}; the rest stay in {}",
            broker.topology.dead
        )));
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
