//! `webhook-dispatcher replay [filters] [--dry-run] [--yes] [--limit N]`: looks first (a dry
//! run through the store), asks, then replays exactly the records it showed; with `--yes`,
//! replays straight through the selection.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::CliError;
use super::OpsSettings;
use super::terminal::{confirm, progress, progress_shown, table};
use crate::broker::Publisher;
use crate::ops::replay::{Failed, Limit, Pace, RATES, Replayer, Report, Seen, Skipped};
use crate::ops::select::Filters;
use crate::ops::{connect_broker, load_keys, open_store};
use crate::seal::Keyring;
use crate::store::{DeliveryLog, Store};

/// The `--help` note on TIME.
pub const TIME_HELP: &str = "TIME is RFC 3339 (2026-11-27T10:00:00Z, or with an offset), a date (2026-11-27, \
midnight UTC), a clock time today in UTC (10:00) or an age (2h, 30m), compared with the time each \
record was dead-lettered. Records are replayed oldest first, each once: a second run skips what the \
first replayed.";

#[derive(Args)]
pub struct ReplayArgs {
    /// Only this account's records.
    #[arg(long)]
    account: Option<String>,
    /// Only this subscription's records.
    #[arg(long)]
    subscription: Option<String>,
    /// Only records of this event.
    #[arg(long)]
    event: Option<String>,
    /// Only records dead-lettered for this reason (exhausted, subscription_disabled, …).
    #[arg(long)]
    reason: Option<String>,
    /// Records dead-lettered at or after TIME.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Records dead-lettered before TIME.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// This record (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Every record not replayed yet (needed when no filter is given).
    #[arg(long)]
    all: bool,
    /// List what would be replayed and what would be skipped, and why; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay without asking (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Replay at most N records, oldest first (default: all that match); records skipped do
    /// not count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Send at most N replays a second (`200/s` or `200`), so an endpoint that is just
    /// recovering is not flooded (default: as fast as the broker takes them).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<u32>,
    #[command(flatten)]
    pub settings: OpsSettings,
}

pub async fn run(args: ReplayArgs, stop: &CancellationToken) -> Result<ExitCode, CliError> {
    let settings = &args.settings;
    let filters = Filters {
        account_id: args.account,
        subscription_id: args.subscription,
        event: args.event,
        reason: args.reason,
        since: args.since,
        until: args.until,
        ids: args.ids,
        all: args.all,
    };
    let selection = filters.selection(chrono::Utc::now())?;
    let interactive = std::io::stdin().is_terminal();
    if !args.dry_run && !args.yes && !interactive {
        return Err(CliError::Usage(
            "not on a terminal, so there is nobody to confirm: pass --yes to replay (look first with --dry-run)".into(),
        ));
    }
    let store = open_store(&settings.store).await?;
    let keys = load_keys(&store).await?;
    let limit = args
        .limit
        .map_or(Limit::None, |n| Limit::Replayed(n as usize));
    let mut pace = Pace::new(args.rate).until(stop.clone());
    if args.yes && !args.dry_run {
        // Nobody to show a listing to: replay straight through the selection, page by page,
        // reading each record once. The count is only the progress bar's length: not counted
        // where no bar is drawn (a script, a job runner), a read of the whole selection saved.
        let matched = if progress_shown() {
            store
                .count_replay_candidates(&selection)
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?
        } else {
            0
        };
        let done = replaying(
            settings,
            store,
            keys,
            matched.max(0) as u64,
            async |replayer, bar| {
                let mut tick = |_: Seen<'_>| bar.inc(1);
                replayer
                    .run(&selection, None, limit, false, &mut pace, &mut tick)
                    .await
            },
        )
        .await?
        .map_err(|e| CliError::Failed(e.to_string()))?;
        if done.replayed.is_empty() && done.failed.is_empty() && !done.interrupted {
            println!("nothing to replay{}", skipped_summary(&done.skipped));
            print!("{}", skipped_listing(&done.skipped));
            return Ok(ExitCode::SUCCESS);
        }
        let more = done.more;
        return summed_up(done, Vec::new(), more);
    }
    // A dry run needs no broker; a replayer without a channel can only look.
    let looker = Replayer {
        store: store.clone(),
        publisher: Publisher::default(),
        events_queue: String::new(),
        keys: keys.clone(),
        bundles: false,
    };
    let mut listed: Vec<Vec<String>> = Vec::new();
    let plan = looker
        .run(
            &selection,
            None,
            limit,
            true,
            &mut Pace::new(None),
            &mut |read| {
                if let Ok(log) = read {
                    listed.push(row(log));
                }
            },
        )
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if args.dry_run {
        print!("{}", dry_run_listing(&plan, &listed));
        return Ok(ExitCode::SUCCESS);
    }
    if plan.replayed.is_empty() {
        println!("nothing to replay{}", skipped_summary(&plan.skipped));
        print!("{}", skipped_listing(&plan.skipped));
        return Ok(ExitCode::SUCCESS);
    }
    let n = plan.replayed.len();
    if confirm(&format!("Replay {n} deliveries?"), stop).await != Some(true) {
        eprintln!("nothing replayed");
        return Ok(ExitCode::FAILURE);
    }
    let done = replaying(settings, store, keys, n as u64, async |replayer, bar| {
        let mut tick = || bar.inc(1);
        replayer
            .replay_ids(&plan.replayed, stop, &mut pace, &mut tick)
            .await
    })
    .await?;
    summed_up(done, plan.skipped, plan.more)
}

/// Connects to the broker, runs `work` with a replayer on it and a progress bar of `total`,
/// then closes the broker and `store`.
async fn replaying<T>(
    settings: &OpsSettings,
    store: Store,
    keys: Arc<Keyring>,
    total: u64,
    work: impl AsyncFnOnce(&Replayer, &ProgressBar) -> T,
) -> Result<T, CliError> {
    let broker = connect_broker(&settings.access.amqp, settings.topology()).await?;
    let replayer = Replayer {
        store: store.clone(),
        publisher: broker.publisher.clone(),
        events_queue: broker.topology.events.clone(),
        keys,
        bundles: broker.topology.bundles,
    };
    let bar = progress(total, "replaying");
    let done = work(&replayer, &bar).await;
    bar.finish_and_clear();
    broker.close().await;
    store.close().await;
    Ok(done)
}

/// Prints what a replay did (`skipped` from its listing first) and the exit it ends with.
fn summed_up(
    mut done: Report,
    mut skipped: Vec<Skipped>,
    more: bool,
) -> Result<ExitCode, CliError> {
    skipped.append(&mut done.skipped);
    print!("{}", skipped_listing(&skipped));
    for failed in &done.failed {
        eprintln!("failed {}: {}", failed.id, failed.error);
    }
    println!(
        "replayed {}, skipped {}{}, failed {}",
        done.replayed.len(),
        skipped.len(),
        skipped_summary(&skipped),
        done.failed.len()
    );
    if let Some(why) = &done.store_failed {
        return Err(CliError::Failed(format!(
            "stopped when the store failed ({why}); the records not reached were left untouched: run again once it is back"
        )));
    }
    if done.broker_failed {
        return Err(CliError::Failed(
            "stopped at the first replay the broker did not take; the records not sent yet were left untouched: run again once the broker takes publishes".into(),
        ));
    }
    if done.interrupted {
        return Err(CliError::Failed(
            "interrupted: the records not yet replayed were left untouched; run again to replay them".into(),
        ));
    }
    if more {
        println!("more records match beyond --limit; run again for the next ones");
    }
    Ok(if done.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--rate`: `N/s` or `N`, 1 to 1,000,000 a second.
fn parse_rate(raw: &str) -> Result<u32, String> {
    let number = raw.trim().strip_suffix("/s").unwrap_or(raw.trim());
    match number.parse::<u32>() {
        Ok(n) if RATES.contains(&n) => Ok(n),
        _ => Err(format!(
            "{raw:?} is not a rate: give replays a second, e.g. 200/s ({} to {})",
            RATES.start(),
            RATES.end()
        )),
    }
}

/// `id, dead-lettered, account, event, subscription, reason` of a record, `-` for none.
fn row(log: &DeliveryLog) -> Vec<String> {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![
        log.id.clone(),
        log.dead_lettered_at.clone(),
        or_dash(&log.account_id),
        or_dash(&log.event),
        or_dash(&log.subscription_id),
        log.reason.clone(),
    ]
}

fn dry_run_listing(plan: &Report, rows: &[Vec<String>]) -> String {
    let replayable: HashSet<&String> = plan.replayed.iter().collect();
    let replayed: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| replayable.contains(&r[0]))
        .cloned()
        .collect();
    let mut out = format!(
        "dry run: would replay {}, skip {}{}{}\n",
        plan.replayed.len(),
        plan.skipped.len(),
        skipped_summary(&plan.skipped),
        match plan.failed.len() {
            0 => String::new(),
            n => format!(", fail {n}"),
        }
    );
    if !replayed.is_empty() {
        out.push_str("\nwould replay\n");
        out.push_str(&table(
            &[
                "ID",
                "DEAD-LETTERED",
                "ACCOUNT",
                "EVENT",
                "SUBSCRIPTION",
                "REASON",
            ],
            &replayed,
        ));
    }
    out.push_str(&skipped_listing(&plan.skipped));
    out.push_str(&failed_listing(&plan.failed));
    if plan.more {
        out.push_str("\nmore records match beyond --limit\n");
    }
    out
}

/// ` (2 subscription_deleted, 1 not_replayable)`, or nothing when none was skipped.
fn skipped_summary(skipped: &[Skipped]) -> String {
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for s in skipped {
        *by_reason.entry(s.reason).or_default() += 1;
    }
    if by_reason.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = by_reason
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    format!(" ({})", parts.join(", "))
}

fn failed_listing(failed: &[Failed]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = failed
        .iter()
        .map(|f| vec![f.id.clone(), f.error.clone()])
        .collect();
    format!("\nfailed\n{}", table(&["ID", "ERROR"], &rows))
}

fn skipped_listing(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = skipped
        .iter()
        .map(|s| vec![s.id.clone(), s.reason.to_string(), s.detail.clone()])
        .collect();
    format!("\nskipped\n{}", table(&["ID", "REASON", "WHY"], &rows))
}
