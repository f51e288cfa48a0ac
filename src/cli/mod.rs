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
use crate::ops::OpsError;

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
