//! `webhook-dispatcher publish FILE | - | --event … --account … --data …`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use crate::broker::Topology;
use crate::config::{AmqpSettings, ExchangeSettings, LogSettings};
use crate::ops::publish::{EventFields, publish, validate};
use crate::ops::{OpsError, connect_broker};

#[derive(Args)]
pub struct PublishArgs {
    /// A file holding the event envelope (JSON), or `-` to read it from stdin.
    #[arg(
        value_name = "FILE",
        required_unless_present = "event",
        conflicts_with_all = ["event", "account", "data", "id", "timestamp"]
    )]
    file: Option<PathBuf>,
    /// Event name (purchase, identify, goal_achieved, enterprise_alert, visitor_enriched,
    /// high_intent_visitor); with --account and --data instead of FILE.
    #[arg(long, requires_all = ["account", "data"])]
    event: Option<String>,
    /// The account the event belongs to.
    #[arg(long, requires = "event")]
    account: Option<String>,
    /// The `data` object as JSON, e.g. '{"visitor_id":"v_1"}'; published byte for byte.
    #[arg(long, requires = "event")]
    data: Option<String>,
    /// Event id (receivers' `webhook-id`); derived from the message when not given.
    #[arg(long, requires = "event")]
    id: Option<String>,
    /// RFC 3339 time of the event; now when not given.
    #[arg(long, requires = "event")]
    timestamp: Option<String>,
    #[command(flatten)]
    amqp: AmqpSettings,
    #[command(flatten)]
    exchange: ExchangeSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

pub async fn run(args: PublishArgs) -> Result<ExitCode, CliError> {
    let raw = match (&args.file, args.event) {
        (Some(path), _) => read_input(path)?,
        (None, Some(event)) => EventFields {
            event,
            account_id: args.account.expect("clap requires --account"),
            data: args.data.expect("clap requires --data"),
            id: args.id,
            timestamp: args.timestamp,
        }
        .envelope()?,
        (None, None) => unreachable!("clap requires FILE or --event"),
    };
    let event = validate(&raw)?;
    let topology = Topology::exchange_only(&args.exchange.events_exchange);
    let broker = connect_broker(&args.amqp, topology).await?;
    let published = publish(&broker, &raw, &event).await;
    broker.close().await;
    published?;
    println!("{}", event.id);
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let read = if path.as_os_str() == "-" {
        let mut raw = Vec::new();
        std::io::stdin().read_to_end(&mut raw).map(|_| raw)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| OpsError::BadInput(format!("cannot read {}: {e}", path.display())).into())
}
