//! The portal's one layout and the pieces every page shares. maud escapes everything it is
//! given as text, so markup in a description or a URL renders as text.

use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Session;

/// No script at all, styles from the service only, forms only to the service, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Which page of the navigation is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Integrations,
    DeliveryLogs,
    None,
}

/// A whole page: `title`, the signed-in account's navigation (when there is a session), `body`.
pub fn page(
    status: StatusCode,
    title: &str,
    session: Option<&Session>,
    nav: Nav,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Webhooks" }
                link rel="stylesheet" href="/portal/static/portal.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.brand { "Webhooks" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            a href="/portal/integrations" aria-current=[(nav == Nav::Integrations).then_some("page")] { "Integrations" }
                            a href="/portal/delivery-logs" aria-current=[(nav == Nav::DeliveryLogs).then_some("page")] { "Delivery Logs" }
                        }
                        div.account {
                            span { "Account " strong { (session.account_id) } }
                            form method="post" action="/portal/logout" {
                                (csrf_field(session))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    (
        status,
        [
            (CONTENT_SECURITY_POLICY, CSP),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-store"),
        ],
        Html(markup.into_string()),
    )
        .into_response()
}

/// The hidden field every form of a session carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// What [`problem`] shows, as a value a helper can return (a page is built only when it is).
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self.status, self.title, &self.message)
    }
}

/// A page that only says something went wrong (and shows nothing of any account).
pub fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        None,
        Nav::None,
        html! {
            section.card.narrow {
                h1 { (title) }
                p { (message) }
            }
        },
    )
}

/// A notice at the top of a page (`role="status"`, read out by screen readers).
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// A field's error, tied to its input by `id`.
pub fn field_error(id: &str, error: Option<&String>) -> Markup {
    html! {
        @if let Some(error) = error {
            p.field-error id=(id) { (error) }
        }
    }
}

/// `2026-12-01T10:00:00.000Z` as `2026-12-01 10:00:00 UTC`.
pub fn when(rfc3339: &str) -> String {
    rfc3339.get(..19).map_or_else(
        || rfc3339.to_string(),
        |s| format!("{} UTC", s.replace('T', " ")),
    )
}
