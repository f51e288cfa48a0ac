//! The customer portal: the documentation's "Dashboard → Integrations" and "Delivery Logs",
//! served by the service itself as HTML rendered on the server (maud, escaped by default), with
//! no script and a strict Content-Security-Policy; every flow works with plain forms.
//!
//! A customer arrives through a portal link (`POST /v1/portal-links`, or `webhook-dispatcher
//! portal-link`): a signed, expiring token for one account. Opening it starts a session — a
//! signed cookie, HttpOnly, SameSite=Strict, Secure behind https — and redirects to the
//! Integrations page, so the token leaves the address bar. Every query is scoped by the
//! session's account: another account's subscription or record is a 404, like a missing one.
//! Every state change is a POST carrying the session's CSRF token. Signing out records the
//! session in the store (`portal_signouts`), which every request checks, so a copy of a
//! signed-out cookie is refused on every replica.

mod delivery_logs;
mod integrations;
mod session;
mod token;
mod views;

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, RawQuery};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use session::{Change, Session};
use session::{login, logout};
pub use token::{PortalKey, Refused, SESSION_LIFETIME};
use views::problem;

use crate::api::ApiState;

/// How long a portal link can be opened in unless asked otherwise, and the bounds.
pub const LINK_LIFETIME_DEFAULT: Duration = Duration::from_secs(3600);
pub const LINK_LIFETIME_MIN: Duration = Duration::from_secs(60);
pub const LINK_LIFETIME_MAX: Duration = Duration::from_secs(86_400);

/// A link into one account's portal.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PortalLink {
    /// Opens the portal signed in as the account (until `expires_at`).
    #[schema(
        example = "https://hooks.example.com/portal/login?token=v1.YWNjdF83ZjNh.1764590400.…"
    )]
    pub url: String,
    #[schema(example = "acct_7f3a")]
    pub account_id: String,
    /// When the link stops opening the portal (RFC 3339).
    #[schema(example = "2026-12-01T11:00:00Z")]
    pub expires_at: String,
}

/// What the portal is configured with.
#[derive(Debug, Clone)]
pub struct Portal {
    pub key: PortalKey,
    /// Where links point (`PUBLIC_URL`), without a trailing slash.
    pub public_url: String,
}

impl Portal {
    pub fn new(key: PortalKey, public_url: &url::Url) -> Portal {
        Portal {
            key,
            public_url: public_url.as_str().trim_end_matches('/').to_string(),
        }
    }

    /// A link that opens a session for `account_id` for `lifetime` from `now`; a bad account
    /// id or a lifetime out of range is the message to show.
    pub fn issue(
        &self,
        account_id: &str,
        lifetime: Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PortalLink, String> {
        crate::subscriptions::validate_account(account_id)?;
        if !(LINK_LIFETIME_MIN..=LINK_LIFETIME_MAX).contains(&lifetime) {
            return Err(format!(
                "expires_in must be between {} and {} seconds, got {}",
                LINK_LIFETIME_MIN.as_secs(),
                LINK_LIFETIME_MAX.as_secs(),
                lifetime.as_secs()
            ));
        }
        let expires_at = now
            + chrono::Duration::from_std(lifetime).expect("at most a day fits a chrono duration");
        let token = self.key.link(account_id, expires_at);
        Ok(PortalLink {
            url: format!("{}/portal/login?token={token}", self.public_url),
            account_id: account_id.to_string(),
            expires_at: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }

    /// `; Secure` on cookies when the portal is reached over https.
    fn secure_attribute(&self) -> &'static str {
        if self.public_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        }
    }
}

/// Where links point when `PUBLIC_URL` is not set: the admin API's own address, `localhost`
/// for an unspecified one (0.0.0.0 is no address to open).
pub fn default_public_url(addr: std::net::SocketAddr) -> url::Url {
    let url = if addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    url::Url::parse(&url).expect("an address makes a URL")
}

/// The portal's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/portal",
            get(|| async { axum::response::Redirect::to("/portal/integrations") }),
        )
        .route("/portal/login", get(login))
        .route("/portal/logout", post(logout))
        .route("/portal/static/portal.css", get(stylesheet))
        .route("/portal/{*rest}", axum::routing::any(not_found))
        .merge(integrations::routes())
        .merge(delivery_logs::routes())
}

/// Any other address under `/portal`: a page, not the API's JSON.
async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no such page in the portal. Go to Integrations or Delivery Logs.",
    )
}

/// A submitted form (`application/x-www-form-urlencoded`), fields in order; a field may repeat
/// (one checkbox per event).
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// A query string read the same way (a malformed one reads as what it can).
    fn query(RawQuery(query): &RawQuery) -> Form {
        Form::parse(query.as_deref().unwrap_or_default().as_bytes())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "The form could not be read",
                    "It was too large or did not arrive in time. Go back and try again.",
                )
            })?;
        Ok(Form::parse(&bytes))
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("portal.css"),
    )
}

/// The portal's key: `PORTAL_KEY` when set, else the one kept in the store (created there on
/// first use, so every instance and the CLI on one store agree).
pub async fn key(
    settings: &crate::config::PortalSettings,
    store: &crate::store::Store,
) -> Result<PortalKey, crate::store::StoreError> {
    match configured_key(settings) {
        Some(key) => Ok(key),
        None => Ok(PortalKey::new(store.portal_key().await?)),
    }
}

/// `PORTAL_KEY`, when set.
pub fn configured_key(settings: &crate::config::PortalSettings) -> Option<PortalKey> {
    settings
        .portal_key
        .as_ref()
        .map(|key| PortalKey::new(key.expose().as_bytes().to_vec()))
}
