//! `webhook-dispatcher portal-link`: a link into one account's customer portal, signed with
//! the same key as the running service's (`PORTAL_KEY`, or the one kept in the store), printed
//! on stdout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::config::{LogSettings, PortalSettings, StoreSettings, parse_duration};
use crate::ops::open_store;
use crate::portal::{self, Portal};

#[derive(Args)]
pub struct PortalLinkArgs {
    /// The account whose webhooks and delivery logs the portal shows.
    #[arg(long)]
    pub account: String,
    /// How long the link can be opened in, 1m to 24h. A session it opens lasts 8 hours.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub expires_in: Duration,
    /// Print the link, its account and expiry as JSON.
    #[arg(long)]
    pub json: bool,
    /// The service's LISTEN_ADDR: links point there unless PUBLIC_URL is set.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub portal: PortalSettings,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

pub async fn run(args: PortalLinkArgs) -> Result<ExitCode, CliError> {
    let key = match portal::configured_key(&args.portal) {
        Some(key) => key,
        None => {
            let store = open_store(&args.store).await?;
            let key = portal::key(&args.portal, &store).await;
            store.close().await;
            key.map_err(|e| CliError::Failed(format!("reading the portal key: {e}")))?
        }
    };
    let public_url = match &args.portal.public_url {
        Some(url) => url.clone(),
        None => portal::default_public_url(args.listen_addr),
    };
    let link = Portal::new(key, &public_url)
        .issue(&args.account, args.expires_in, chrono::Utc::now())
        .map_err(CliError::Usage)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&link).expect("a link serializes")
        );
    } else {
        println!("{}", link.url);
        eprintln!(
            "Opens the portal of account {} until {}. Anyone with the link gets in: send it only to that account's people.",
            link.account_id, link.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}
