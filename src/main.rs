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
    let command = cli.command.unwrap_or(Command::Serve);
    let second_exits = !matches!(command, Command::Serve);
    tokio::spawn(cancel_on_signal(shutdown.clone(), second_exits));
    match command {
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

/// Cancels `token` on SIGTERM or ctrl-c. With `second_exits` (the operator commands), a second
/// signal ends the process at once with 130: a command stuck despite the first must not need
/// a `kill -9`. `serve` ignores it and keeps its graceful shutdown.
async fn cancel_on_signal(token: CancellationToken, second_exits: bool) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    let mut signal = async || {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    signal().await;
    tracing::info!("shutdown signal received");
    token.cancel();
    if second_exits {
        signal().await;
        eprintln!("interrupted again: exiting now");
        std::process::exit(130);
    }
}
