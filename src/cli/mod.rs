//! The operator CLI's terminal side: subcommands (`publish`, `dlq stats`, `dlq drain`,
//! `replay`), printing, prompts and progress bars. The work itself is in [`crate::ops`].
//!
//! Every subcommand reads the same settings as `serve` and talks to the broker and the store
//! directly; none needs `ADMIN_TOKEN` or binds `LISTEN_ADDR`. Exit codes: 0 done, 1 the
//! operation failed (some replays failed, the broker is unreachable, …), 2 bad input or usage.

mod dlq;
mod publish;
mod replay;
mod terminal;

use std::process::ExitCode;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ops::{OpsError, connect_broker, migrate, open_store};

pub use publish::PublishArgs;
pub use replay::ReplayArgs;

#[derive(Subcommand)]
pub enum OpsCommand {
    /// Publish one event to EVENTS_EXCHANGE like a producer, after checking it with the
    /// service's own rules; prints the event id.
    Publish(PublishArgs),
    /// The dead-letter queue and the delivery log.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Send dead-lettered deliveries again, from attempt 1, through the normal path.
    #[command(after_help = replay::TIME_HELP)]
    Replay(ReplayArgs),
    /// Give a queue declared by an earlier version this version's arguments (the events queue's
    /// dead-letter target), moving its messages through a holding queue: nothing is lost. Run
    /// it with every instance stopped; run it again if it was interrupted.
    MigrateQueues,
    /// The keys that seal the service's own messages (delivery tasks, dead letters), kept in
    /// the store and shared by every instance.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// List the message keys (ids and dates; never the secrets).
    List,
    /// Create a new message key, which seals from now on; older keys keep verifying for
    /// `--overlap`, so retries and dead letters already in the queues stay valid. Instances
    /// pick the new key up within SUBSCRIPTION_REFRESH (at once when they meet it).
    Rotate {
        /// How long the older keys keep verifying: longer than anything may wait in a queue
        /// (the dead-letter queue holds messages while the store is down).
        #[arg(long, default_value = "7d", value_parser = parse_overlap)]
        overlap: std::time::Duration,
    },
}

/// Longest overlap `keys rotate` takes.
const MAX_KEY_OVERLAP: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

fn parse_overlap(raw: &str) -> Result<std::time::Duration, String> {
    let overlap = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 7d or 12h: {e}"))?;
    if overlap > MAX_KEY_OVERLAP {
        return Err("the overlap must be at most 365 days".into());
    }
    Ok(overlap)
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Ready messages and consumers of every queue; delivery-log records by reason, event and
    /// account (top 20), with how many are not replayed yet.
    Stats {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Store every dead letter waiting in P.dead in the delivery log, then exit (works with the
    /// service stopped or running).
    Drain,
}

/// How a subcommand failed: bad input (exit 2) or a failed operation (exit 1).
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Failed(String),
}

impl From<OpsError> for CliError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::BadInput(message) => CliError::Usage(message),
            other => CliError::Failed(other.to_string()),
        }
    }
}

async fn keys(command: KeysCommand, cfg: &Config) -> Result<ExitCode, CliError> {
    let store = open_store(cfg).await?;
    let now = chrono::Utc::now();
    let result = match command {
        KeysCommand::List => store.message_keys(now).await,
        KeysCommand::Rotate { overlap } => store
            .rotate_message_key(now, overlap)
            .await
            .and(store.message_keys(now).await),
    };
    store.close().await;
    let keys = result.map_err(|e| CliError::Failed(e.to_string()))?;
    let rows: Vec<Vec<String>> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| {
            vec![
                key.id.to_string(),
                key.created_at.clone(),
                if n == 0 {
                    "seals and verifies"
                } else {
                    "verifies"
                }
                .to_string(),
                key.retires_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        terminal::table(&["KEY", "CREATED", "USE", "RETIRES"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

async fn migrate_queues(cfg: &Config) -> Result<ExitCode, CliError> {
    let broker = connect_broker(cfg).await?;
    let migrated = migrate::migrate(&broker, &mut |step| eprintln!("{step}")).await;
    broker.close().await;
    let report = migrated?;
    let events = &broker.topology.events;
    if report.already_current {
        println!("{events} already has this version's arguments: nothing to migrate");
    } else {
        println!(
            "migrated {events}: {} message(s) held and {} moved back",
            report.moved_out, report.moved_back
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one operator subcommand; `stop` is cancelled by ctrl-c/SIGTERM.
pub async fn run(command: OpsCommand, cfg: Config, stop: CancellationToken) -> ExitCode {
    // lapin logs every closed channel as an error, a missing queue included; the CLI reports
    // the errors that matter itself.
    crate::telemetry::init(cfg.log_format, "warn,lapin=off");
    let result = match command {
        OpsCommand::Publish(args) => publish::run(args, &cfg).await,
        OpsCommand::Dlq(DlqCommand::Stats { json }) => dlq::stats(&cfg, json).await,
        OpsCommand::Dlq(DlqCommand::Drain) => dlq::drain(&cfg, &stop).await,
        OpsCommand::Replay(args) => replay::run(args, &cfg, &stop).await,
        OpsCommand::MigrateQueues => migrate_queues(&cfg).await,
        OpsCommand::Keys(command) => keys(command, &cfg).await,
    };
    match result {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
