//! The door: parse the command line, start telemetry, hand over to [`webhook_dispatcher::App`]
//! (`serve`) or to [`webhook_dispatcher::cli`] (the operator subcommands).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use webhook_dispatcher::cli::{self, OpsCommand};
use webhook_dispatcher::{App, Config, telemetry};

/// jemalloc, not the system allocator: under load glibc's spent about a third of the service's
/// CPU in its own bookkeeping and arena locks (BENCHMARKS.md, "Connections kept per host, and
/// jemalloc").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): pages a burst left unused go back to the system after about a second instead of ten.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string's address, as jemalloc reads its `malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, never written.
unsafe impl Sync for MallocConf {}

/// Every setting is a flag and an environment variable. Each subcommand takes (after its name)
/// only the settings it uses; `serve` is the default.
#[derive(Parser)]
#[command(
    name = "webhook-dispatcher",
    version,
    about = "Delivers RabbitMQ events to customers' webhooks: signed, retried at 2/4/8 s, dead-lettered into a delivery log."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole service: consumer, delivery, retries, DLQ logger and admin API (the default).
    #[command(after_help = OPERATOR_COMMANDS)]
    Serve(Box<Config>),
    #[command(flatten)]
    Ops(Box<OpsCommand>),
}

/// Listed under `serve`'s help, which is also `webhook-dispatcher --help`.
const OPERATOR_COMMANDS: &str = "Operator commands, each with its own --help and only the \
settings it uses: publish, dlq stats, dlq drain, replay, migrate-queues, keys list, keys rotate.";

/// The command line with `serve` put in where no subcommand is named: nothing at all, or flags
/// (`--help` included, so that `webhook-dispatcher --help` documents every setting). Each
/// subcommand reads only its own settings, so a `serve`-only variable in the environment (a bad
/// `LISTEN_ADDR`, say) never stops an operator command.
fn command_line() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let serve_implied = match args.get(1).and_then(|a| a.to_str()) {
        None => true,
        Some("-V" | "--version") => false,
        Some(first) => first.starts_with('-'),
    };
    if serve_implied {
        args.insert(1, "serve".into());
    }
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let command = Cli::parse_from(command_line()).command;
    let shutdown = CancellationToken::new();
    let second_exits = !matches!(command, Command::Serve(_));
    tokio::spawn(cancel_on_signal(shutdown.clone(), second_exits));
    match command {
        // Spawned onto a worker: `block_on` polls its own future on the main thread, where the
        // consume loop paid a thread wake-up (a futex call) for every message's turn
        // (BENCHMARKS.md, "First come, first served").
        Command::Serve(config) => tokio::spawn(serve(*config, shutdown))
            .await?
            .map(|()| ExitCode::SUCCESS),
        Command::Ops(command) => Ok(cli::run(*command, shutdown).await),
    }
}

async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    telemetry::init(config.log.log_format, "info");
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
