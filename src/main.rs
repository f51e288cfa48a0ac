//! The door: parse the command line, start telemetry, hand over to [`webhook_dispatcher::App`]
//! (`serve`) or to [`webhook_dispatcher::cli`] (the operator subcommands).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use webhook_dispatcher::cli::{self, OpsCommand};
use webhook_dispatcher::{App, Config, telemetry};

/// Every setting is a flag (before or after the subcommand) and an environment variable.
#[derive(Parser)]
#[command(
    name = "webhook-dispatcher",
    version,
    about = "Delivers RabbitMQ events to customers' webhooks: signed, retried at 2/4/8 s, dead-lettered into a delivery log."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    // Under a heading of their own, so each subcommand's own flags come first in its --help.
    #[command(
        flatten,
        next_help_heading = "Settings (flags or environment, as for serve)"
    )]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole service: consumer, delivery, retries, DLQ logger and admin API (the default).
    Serve,
    #[command(flatten)]
    Ops(OpsCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config, shutdown)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Ops(command) => Ok(cli::run(command, cli.config, shutdown).await),
    }
}

async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    telemetry::init(config.log_format, "info");
    let app = App::build(config).await?;
    app.run(shutdown).await
}

/// Cancels `token` on SIGTERM or ctrl-c.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    token.cancel();
}
