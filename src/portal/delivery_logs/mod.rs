//! Delivery Logs: the account's dead-lettered deliveries, newest first, filtered by event,
//! endpoint and time; each record with its attempts and payload; replay one, or every record the
//! filters show (after a confirmation) — the same replay as the API and the CLI.

mod replay;
use replay::*;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use super::views::{Nav, Problem, csrf_field, notice, page, problem, when};
use super::{Change, Form, Session};
use crate::api::ApiState;
use crate::event::EventKind;
use crate::ops::replay::{Limit, Pace, ReplayError, detached};
use crate::ops::select::Filters;
use crate::store::{DeliveryLog, LogFilter, ReplaySelection, StoreError};

/// Records a page shows.
const PAGE: i64 = 50;
/// Most records one "Replay all shown" replays.
const MAX_BULK: usize = 1000;
/// Most records "Replay all shown" looks at in one go: records it cannot replay (their webhook
/// deleted, say) do not count against [`MAX_BULK`], and must not make a request unbounded.
const MAX_BULK_LOOKED: usize = 10 * MAX_BULK;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/portal/delivery-logs", get(list))
        .route(
            "/portal/delivery-logs/replay",
            get(confirm_replay_all).post(replay_all),
        )
        .route("/portal/delivery-logs/{id}", get(read))
        .route("/portal/delivery-logs/{id}/replay", post(replay))
}

/// The filters as the form sends them (empty means "any"), from a query string or a body.
#[derive(Default, Clone)]
struct LogQuery {
    event: String,
    endpoint: String,
    since: String,
    until: String,
    cursor: String,
    done: String,
}

impl LogQuery {
    fn from_form(form: &Form) -> LogQuery {
        let get = |name| form.get(name).unwrap_or_default().to_string();
        LogQuery {
            event: get("event"),
            endpoint: get("endpoint"),
            since: get("since"),
            until: get("until"),
            cursor: get("cursor"),
            done: get("done"),
        }
    }

    fn some(value: &str) -> Option<String> {
        let v = value.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// The store filter, always scoped to the session's account; a time that does not read is
    /// the message to show.
    fn filter(&self, session: &Session) -> Result<LogFilter, String> {
        let times = Filters::times(
            LogQuery::some(&self.since),
            LogQuery::some(&self.until),
            chrono::Utc::now(),
        )
        .map_err(|e| e.to_string())?;
        Ok(LogFilter {
            account_id: Some(session.account_id.clone()),
            subscription_id: LogQuery::some(&self.endpoint),
            event: LogQuery::some(&self.event).filter(|e| EventKind::parse(e).is_some()),
            ..times
        })
    }

    /// These filters as query parameters (for links that keep them).
    fn params(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("event", &self.event),
            ("endpoint", &self.endpoint),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.trim().is_empty() {
                out.append_pair(k, v.trim());
            }
        }
        out.finish()
    }
}

fn failed(error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "portal request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The service could not complete this. Nothing was changed; try again in a moment.",
    )
}

/// The account's webhooks, for the endpoint filter: (id, url).
async fn endpoints(state: &ApiState, session: &Session) -> Vec<(String, String)> {
    state
        .store
        .list_subscriptions(Some(&session.account_id), None, 500)
        .await
        .map(|page| page.items.into_iter().map(|s| (s.id, s.url)).collect())
        .unwrap_or_default()
}

async fn list(State(state): State<ApiState>, session: Session, query: RawQuery) -> Response {
    let q = LogQuery::from_form(&Form::query(&query));
    let endpoints = endpoints(&state, &session).await;
    let filter = q.filter(&session);
    let (records, next, error) = match &filter {
        Ok(filter) => {
            let cursor = LogQuery::some(&q.cursor);
            match state
                .store
                .list_delivery_logs(filter, cursor.as_deref(), PAGE)
                .await
            {
                Ok(page) => (page.items, page.next_cursor, None),
                Err(e) => return failed(e),
            }
        }
        Err(message) => (Vec::new(), None, Some(message.clone())),
    };
    let done = match q.done.as_str() {
        "replayed" => Some("Replayed: the delivery goes out again from its first attempt."),
        _ => None,
    };
    let body = html! {
        h1 { "Delivery Logs" }
        p { "Deliveries that failed every attempt (and events that could not be delivered), newest first. Replay one once its endpoint works again." }
        @if let Some(text) = done { (notice(text)) }
        (filters_form(&q, &endpoints, error.as_deref()))
        @if records.is_empty() {
            section.card { p { "No records match." } }
        } @else {
            div.row.spread {
                p.meta { (records.len()) " shown" @if next.is_some() { " (more on the next page)" } }
                a.button.secondary href=(format!("/portal/delivery-logs/replay?{}", q.params())) { "Replay all shown" }
            }
            div.table-wrap role="region" aria-label="Failed deliveries" tabindex="0" {
                table {
                    caption.meta { "Failed deliveries" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "URL" } th scope="col" { "Reason" } th scope="col" { "Attempts" } th scope="col" { "" } } }
                    tbody {
                        @for record in &records {
                            tr {
                                td { a href=(format!("/portal/delivery-logs/{}", record.id)) { (when(&record.dead_lettered_at)) } }
                                td { (record.event.as_deref().unwrap_or("—")) }
                                td.url { (record.url.as_deref().unwrap_or("—")) }
                                td { (reason(&record.reason)) }
                                td { (record.attempts.len()) }
                                td { (replay_cell(&session, record)) }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = next {
                nav.pager aria-label="Pages" {
                    a href="/portal/delivery-logs" { "Newest" }
                    a href=(format!("/portal/delivery-logs?{}&cursor={}", q.params(), cursor)) { "Older" }
                }
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page(
        status,
        "Delivery Logs",
        Some(&session),
        Nav::DeliveryLogs,
        body,
    )
}

fn filters_form(q: &LogQuery, endpoints: &[(String, String)], error: Option<&str>) -> Markup {
    html! {
        form.card.filters method="get" action="/portal/delivery-logs" {
            div {
                label for="f-event" { "Event" }
                select #f-event name="event" {
                    option value="" { "All events" }
                    @for kind in EventKind::ALL {
                        option value=(kind.as_str()) selected[q.event == kind.as_str()] { (kind.as_str()) }
                    }
                }
            }
            div {
                label for="f-endpoint" { "Endpoint" }
                select #f-endpoint name="endpoint" {
                    option value="" { "All endpoints" }
                    @for (id, url) in endpoints {
                        option value=(id) selected[&q.endpoint == id] { (url) }
                    }
                }
            }
            div {
                label for="f-since" { "Since" }
                input #f-since type="text" name="since" value=(q.since) placeholder="2h, 2026-12-01 or 10:00" aria-describedby="f-time-hint";
            }
            div {
                label for="f-until" { "Until" }
                input #f-until type="text" name="until" value=(q.until) placeholder="now" aria-describedby="f-time-hint";
            }
            div { button type="submit" { "Filter" } }
            p.hint #f-time-hint { "Times: an age (2h), a date (2026-12-01), a time today in UTC (10:00) or RFC 3339." }
            @if let Some(error) = error { p.field-error role="alert" { (error) } }
        }
    }
}

/// A record's reason in words, with its code (the API's and the CLI's filter value) under it.
fn reason(code: &str) -> Markup {
    let words = match code {
        "exhausted" => "Every attempt failed",
        "subscription_disabled" => "The webhook was disabled",
        "subscription_deleted" => "The webhook was deleted",
        "invalid_json" | "unknown_event" | "invalid_event" | "too_large" => {
            "The event could not be read"
        }
        "delivery_limit" => "Delivery was interrupted too many times",
        "expired" | "max_len" | "rejected" | "dead_lettered" => "Set aside by the message broker",
        _ => "Not delivered",
    };
    html! { (words) br; small.meta { (code) } }
}

fn replay_cell(session: &Session, record: &DeliveryLog) -> Markup {
    html! {
        @if let Some(at) = &record.replayed_at {
            span.badge.on title=(when(at)) { "Replayed" }
        } @else if record.subscription_id.is_some() {
            form method="post" action=(format!("/portal/delivery-logs/{}/replay", record.id)) {
                (csrf_field(session))
                button.secondary type="submit" aria-label=(format!("Replay the delivery of {}", when(&record.dead_lettered_at))) { "Replay" }
            }
        }
    }
}

/// The session account's record `id`; another account's (or none) is the same 404.
async fn owned(state: &ApiState, session: &Session, id: &str) -> Result<DeliveryLog, Response> {
    match state
        .store
        .account_delivery_log(&session.account_id, id)
        .await
    {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(problem(
            StatusCode::NOT_FOUND,
            "No such record",
            "This record does not exist, or it belongs to another account.",
        )),
        Err(StoreError::Corrupt { id, detail }) => {
            tracing::error!(record = %id, detail, "a delivery-log record cannot be read");
            Err(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This record cannot be read",
                &format!(
                    "The stored copy of record {id} is damaged, so it can be neither shown nor \
                     replayed. The service has logged it; give its id to support."
                ),
            ))
        }
        Err(e) => Err(failed(e)),
    }
}

async fn read(State(state): State<ApiState>, session: Session, Path(id): Path<String>) -> Response {
    let record = match owned(&state, &session, &id).await {
        Ok(record) => record,
        Err(response) => return response,
    };
    page(
        StatusCode::OK,
        "Delivery record",
        Some(&session),
        Nav::DeliveryLogs,
        record_view(&session, &record, None),
    )
}

fn record_view(session: &Session, record: &DeliveryLog, message: Option<Markup>) -> Markup {
    let payload = serde_json::from_str::<serde_json::Value>(record.payload.get())
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| record.payload.get().to_string());
    html! {
        p { a href="/portal/delivery-logs" { "← Delivery Logs" } }
        h1 { "Delivery record" }
        @if let Some(message) = message { (message) }
        section.card {
            dl {
                dt { "Event" } dd { (record.event.as_deref().unwrap_or("—")) " · webhook-id " code { (record.event_id) } }
                dt { "Endpoint" } dd.url { (record.url.as_deref().unwrap_or("—")) }
                dt { "Reason" } dd { (reason(&record.reason)) @if let Some(detail) = &record.detail { p.meta { (detail) } } }
                dt { "Failed at" } dd { (when(&record.dead_lettered_at)) }
                dt { "Replayed" } dd { @match &record.replayed_at { Some(at) => { (when(at)) } None => { "not yet" } } }
            }
            (replay_cell(session, record))
        }
        h2 { "Attempts" }
        @if record.attempts.is_empty() {
            p { "None: it was refused before any delivery." }
        } @else {
            div.table-wrap role="region" aria-label="Attempts" tabindex="0" {
                table {
                    thead { tr { th scope="col" { "#" } th scope="col" { "Started" } th scope="col" { "Duration" } th scope="col" { "Status" } th scope="col" { "Error" } } }
                    tbody {
                        @for attempt in &record.attempts {
                            tr {
                                td { (attempt.attempt) }
                                td { (when(&attempt.started_at)) }
                                td { (attempt.duration_ms) " ms" }
                                td { @match attempt.status { Some(s) => { (s) } None => { "—" } } }
                                td { (attempt.error.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Payload" }
        pre { code { (payload) } }
    }
}
