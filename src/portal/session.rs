//! Sessions: opening a portal link starts one (a signed cookie), every page and change is read
//! through one ([`Session`], [`Change`]: the CSRF token checked), and signing out ends it — in
//! the browser, and in the store, so that a copy of the cookie is refused on every replica.

use axum::extract::{FromRequest, FromRequestParts, RawQuery, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::Form;
use super::token::{Grant, Refused};
use super::views::{Nav, page, problem};
use crate::api::ApiState;

/// The session cookie's name.
const COOKIE_NAME: &str = "wd_portal";

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

/// Opens a portal link: a valid token starts a session and redirects to the Integrations page,
/// so the token leaves the address bar. An expired or tampered one gets a page saying so.
pub(super) async fn login(State(state): State<ApiState>, query: RawQuery) -> Response {
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
pub(super) async fn logout(State(state): State<ApiState>, change: Change) -> Response {
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
