//! `webhook-dispatcher keys list | rotate` (the message keys in the store) and
//! `migrate-queues` (the queues on the broker): the two commands that change what instances
//! share rather than what they deliver.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::CliError;
use super::terminal::table;
use crate::broker::Topology;
use crate::config::{ExchangeSettings, LogSettings, QueueAccess, StoreSettings, parse_duration};
use crate::ops::{connect_broker, migrate, open_store};

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// List the message keys that still verify (ids and dates; never the secrets).
    List,
    /// Create a new message key, which seals from now on; older keys keep verifying for
    /// `--overlap`, so retries and dead letters already in the queues stay valid. Instances
    /// pick the new key up within SUBSCRIPTION_REFRESH (at once when they meet it).
    Rotate {
        /// How long the older keys keep verifying: longer than anything may wait in a queue
        /// (the dead-letter queue holds messages while the store is down).
        #[arg(long, default_value = "7d", value_parser = parse_overlap)]
        overlap: Duration,
    },
}

/// Longest overlap `keys rotate` takes.
const MAX_KEY_OVERLAP: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_overlap(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        overlap if overlap > MAX_KEY_OVERLAP => Err("the overlap must be at most 365 days".into()),
        overlap => Ok(overlap),
    }
}

pub async fn run(args: KeysArgs) -> Result<ExitCode, CliError> {
    let store = open_store(&args.store).await?;
    let now = chrono::Utc::now();
    let result = match args.command {
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
    print!("{}", table(&["KEY", "CREATED", "USE", "RETIRES"], &rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub access: QueueAccess,
    #[command(flatten)]
    pub exchange: ExchangeSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

pub async fn migrate_queues(args: &MigrateArgs) -> Result<ExitCode, CliError> {
    let topology = Topology::with(&args.exchange.events_exchange, &args.access.queues);
    let broker = connect_broker(&args.access.amqp, topology).await?;
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
