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
mod token;
mod views;

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, RawQuery, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;

use token::Grant;
pub use token::{PortalKey, Refused, SESSION_LIFETIME};
use views::{Nav, page, problem};

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

/// The session cookie's name.
const COOKIE_NAME: &str = "wd_portal";

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

/// A signed-in customer: the account every query of the request is scoped by.
pub struct Session {
    pub account_id: String,
    pub csrf: String,
    grant: Grant,
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let ended = || {
            problem(
                StatusCode::UNAUTHORIZED,
                "Your session has ended",
                "This browser has no portal session, or it has expired. Open the portal link you \
                 were given again, or ask for a new one.",
            )
        };
        let Some(cookie) = cookie_value(&parts.headers, COOKIE_NAME) else {
            return Err(cross_site_arrival(parts).unwrap_or_else(ended));
        };
        let grant = state
            .portal
            .key
            .check_session(&cookie, chrono::Utc::now())
            .map_err(|_| ended())?;
        // A session signed out is refused even where a copy of its cookie survived.
        match state.store.session_signed_out(&grant.nonce).await {
            Ok(false) => {}
            Ok(true) => return Err(ended()),
            Err(e) => {
                tracing::error!(error = %e, "portal session could not be checked");
                return Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The portal is unavailable",
                    "The service could not check this session. Try again in a moment.",
                ));
            }
        }
        Ok(Session {
            account_id: grant.account_id.clone(),
            csrf: state.portal.key.csrf(&grant),
            grant,
        })
    }
}

/// A state change: the session's account and its form, whose CSRF token was checked. Every
/// POST handler takes one, so none can forget the check.
pub struct Change {
    pub session: Session,
    pub form: Form,
}

impl FromRequest<ApiState> for Change {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &ApiState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let form =
            Form::from_request(axum::extract::Request::from_parts(parts, body), state).await?;
        let presented = form.get("csrf").unwrap_or_default();
        if !state.portal.key.csrf_ok(&session.grant, presented) {
            return Err(problem(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form was not sent from this portal session. Go back, reload the page and try again.",
            ));
        }
        Ok(Change { session, form })
    }
}

fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
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

/// Opens a portal link: a valid token starts a session and redirects to the Integrations page,
/// so the token leaves the address bar. An expired or tampered one gets a page saying so.
async fn login(State(state): State<ApiState>, query: RawQuery) -> Response {
    let query = Form::query(&query);
    let now = chrono::Utc::now();
    let grant = match state
        .portal
        .key
        .check_link(query.get("token").unwrap_or_default(), now)
    {
        Ok(grant) => grant,
        Err(Refused::Expired) => {
            return problem(
                StatusCode::UNAUTHORIZED,
                "This link has expired",
                "Portal links work for a limited time. Ask for a new one.",
            );
        }
        Err(Refused::Invalid) => {
            return problem(
                StatusCode::FORBIDDEN,
                "This link is not valid",
                "The link is incomplete or has been changed. Copy the whole link, or ask for a new one.",
            );
        }
    };
    let (session, expires_at) = state.portal.key.session(&grant.account_id, now);
    let cookie = format!(
        "{COOKIE_NAME}={session}; Path=/portal; HttpOnly; SameSite=Strict; Max-Age={}{}",
        (expires_at - now).num_seconds(),
        state.portal.secure_attribute()
    );
    let mut response = Redirect::to("/portal/integrations").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie is ASCII"),
    );
    response
}

/// A page request without a session that a browser sent as part of a navigation from another
/// site — a portal link clicked in a web mail client, whose redirect carries that site along:
/// the browser withholds a SameSite=Strict cookie there, even the one the link's answer just
/// set. A page of ours that reloads itself makes the request same-site, and the cookie comes.
/// Once only (`?again`), so a browser without a session ends on the page that says so.
fn cross_site_arrival(parts: &Parts) -> Option<Response> {
    let cross_site = parts
        .headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    let again = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "again"));
    if !cross_site || again || parts.method != axum::http::Method::GET {
        return None;
    }
    let target = match parts.uri.query() {
        Some(query) => format!("{}?{query}&again", parts.uri.path()),
        None => format!("{}?again", parts.uri.path()),
    };
    let body = html! {
        section.card.narrow {
            h1 { "Opening the portal" }
            p { a href=(target) { "Continue" } }
        }
    };
    let mut response = page(StatusCode::OK, "Opening the portal", None, Nav::None, body);
    let refresh = format!("0; url={target}");
    response
        .headers_mut()
        .insert("refresh", HeaderValue::from_str(&refresh).ok()?);
    Some(response)
}

/// Ends the session (its CSRF token checked: no other site can sign a customer out): the
/// browser forgets its cookie, and the store records the session as signed out, so a copy of the
/// cookie kept anywhere else is refused too. When that record cannot be written the cookie is
/// kept and the customer is told to try again: "signed out" would not be true everywhere.
async fn logout(State(state): State<ApiState>, change: Change) -> Response {
    let grant = &change.session.grant;
    let now = chrono::Utc::now();
    if let Err(e) = state
        .store
        .sign_out_session(&grant.nonce, grant.expires_at, now)
        .await
    {
        tracing::error!(error = %e, "portal session could not be signed out");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Signing out did not complete",
            "The service could not end this session. You are still signed in; try again in a \
             moment.",
        );
    }
    let mut response = problem(
        StatusCode::OK,
        "Signed out",
        "You have signed out of the portal. Open a new portal link to come back.",
    );
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}=; Path=/portal; HttpOnly; SameSite=Strict; Max-Age=0{}",
            state.portal.secure_attribute()
        ))
        .expect("a cookie is ASCII"),
    );
    response
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
