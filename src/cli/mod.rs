//! The operator CLI's terminal side: subcommands (`publish`, `dlq stats`, `dlq drain`,
//! `replay`, `migrate-queues`, `keys`, `portal-link`), printing, prompts and progress bars. The work itself is
//! in [`crate::ops`].
//!
//! Each subcommand takes (and documents) only the settings it uses, from flags or the same
//! environment variables as `serve`, and talks to the broker and the store directly; none needs
//! `ADMIN_TOKEN` or binds `LISTEN_ADDR`. Exit codes: 0 done, 1 the operation failed (some
//! replays failed, the broker is unreachable, …), 2 bad input or usage.

mod dlq;
mod keys;
mod portal;
mod publish;
mod replay;
mod terminal;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::broker::Topology;
use crate::config::{LogSettings, QueueAccess, StoreSettings};
use crate::ops::OpsError;

pub use keys::{KeysArgs, KeysCommand, MigrateArgs};
pub use portal::PortalLinkArgs;
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
    MigrateQueues(MigrateArgs),
    /// The keys that seal the service's own messages (delivery tasks, dead letters), kept in
    /// the store and shared by every instance.
    Keys(KeysArgs),
    /// Print a link that signs one account into the customer portal (its webhooks and
    /// delivery logs), valid for --expires-in. Uses PORTAL_KEY, or the key kept in the store.
    PortalLink(PortalLinkArgs),
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Ready messages and consumers of every queue; delivery-log records by reason, event and
    /// account (top 20), with how many are not replayed yet.
    Stats {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: OpsSettings,
    },
    /// Store every dead letter waiting in P.dead in the delivery log, then exit (works with the
    /// service stopped or running).
    Drain {
        #[command(flatten)]
        settings: OpsSettings,
    },
}

/// What the commands on the service's queues and delivery log take: the broker and the queue
/// names, the store, logging.
#[derive(Args)]
pub struct OpsSettings {
    #[command(flatten)]
    pub access: QueueAccess,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

impl OpsSettings {
    /// The service's queues (these commands never touch the exchange).
    fn topology(&self) -> Topology {
        Topology::queues_only(&self.access.queues)
    }
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

impl OpsCommand {
    fn log(&self) -> &LogSettings {
        match self {
            OpsCommand::Publish(args) => &args.log,
            OpsCommand::Dlq(
                DlqCommand::Stats { settings, .. } | DlqCommand::Drain { settings },
            ) => &settings.log,
            OpsCommand::Replay(args) => &args.settings.log,
            OpsCommand::MigrateQueues(args) => &args.log,
            OpsCommand::Keys(args) => &args.log,
            OpsCommand::PortalLink(args) => &args.log,
        }
    }
}

/// Runs one operator subcommand; `stop` is cancelled by ctrl-c/SIGTERM.
pub async fn run(command: OpsCommand, stop: CancellationToken) -> ExitCode {
    // lapin logs every closed channel as an error, a missing queue included; the CLI reports
    // the errors that matter itself.
    crate::telemetry::init(command.log().log_format, "warn,lapin=off");
    let result = match command {
        OpsCommand::Publish(args) => publish::run(args).await,
        OpsCommand::Dlq(DlqCommand::Stats { json, settings }) => dlq::stats(&settings, json).await,
        OpsCommand::Dlq(DlqCommand::Drain { settings }) => dlq::drain(&settings, &stop).await,
        OpsCommand::Replay(args) => replay::run(args, &stop).await,
        OpsCommand::MigrateQueues(args) => keys::migrate_queues(&args).await,
        OpsCommand::Keys(args) => keys::run(args).await,
        OpsCommand::PortalLink(args) => portal::run(args).await,
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
