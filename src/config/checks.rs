//! The rules across settings, checked once at load ([`Config::validate`]): what must be set
//! together, and what a service reachable from beyond this machine must have.

use std::net::SocketAddr;

use super::{Config, MIN_PORTAL_KEY, MIN_PUBLIC_TOKEN};

impl Config {
    /// Checks rules that involve more than one setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (
            &self.health.operator_webhook_url,
            &self.health.operator_webhook_secret,
        ) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "OPERATOR_WEBHOOK_URL needs OPERATOR_WEBHOOK_SECRET (whsec_…) to sign with"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "OPERATOR_WEBHOOK_SECRET is set without OPERATOR_WEBHOOK_URL".into(),
                ));
            }
            _ => {}
        }
        // The token and the portal key guard the admin API and the portal: a replica without
        // the `api` role serves neither.
        if !self.roles.api {
            return Ok(());
        }
        let loopback = self.listen_addr.ip().is_loopback();
        // Reached from beyond this machine: listening off loopback, or published under a
        // PUBLIC_URL that is not this machine (a reverse proxy in front of a loopback listener
        // would otherwise expose an admin API without a token).
        let exposed = if !loopback {
            Some(format!(
                "LISTEN_ADDR ({}) is not a loopback address",
                self.listen_addr
            ))
        } else {
            self.portal
                .public_url
                .as_ref()
                .filter(|url| !is_this_machine(url))
                .map(|url| format!("PUBLIC_URL ({url}) is not this machine"))
        };
        match (&self.admin_token, &exposed) {
            (None, Some(_)) if !loopback => {
                return Err(ConfigError::TokenRequired(self.listen_addr));
            }
            (None, Some(why)) => {
                return Err(ConfigError::Invalid(format!(
                    "ADMIN_TOKEN is required when {why}: the admin API would be reachable through it without a token; set ADMIN_TOKEN"
                )));
            }
            // An empty token would be compared with a missing header read as "": open to all.
            (Some(token), _) if token.expose().trim().is_empty() => {
                return Err(ConfigError::Invalid(
                    "ADMIN_TOKEN is set but empty: set a token of 16 or more characters, or unset it (allowed only on a loopback LISTEN_ADDR)".into(),
                ));
            }
            (Some(_), Some(why)) if self.weak_token() => {
                return Err(ConfigError::Invalid(format!(
                    "ADMIN_TOKEN must be at least {MIN_PUBLIC_TOKEN} characters when {why}"
                )));
            }
            _ => {}
        }
        if let (None, Some(why)) = (&self.portal.portal_key, &exposed) {
            return Err(ConfigError::Invalid(format!(
                "PORTAL_KEY is required when {why}: set one of {MIN_PORTAL_KEY} or more random characters, the same on every instance"
            )));
        }
        Ok(())
    }
}

/// Whether `url` names this machine: `localhost` (or a name under it) or a loopback address.
fn is_this_machine(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "ADMIN_TOKEN is required when LISTEN_ADDR ({0}) is not a loopback address: set ADMIN_TOKEN or listen on 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    #[error("{0}")]
    Invalid(String),
}
