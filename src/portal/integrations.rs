//! Integrations: the account's webhooks, and adding, changing, pausing, deleting, testing and
//! rotating them — through the same checks and the same changes as the admin API.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use super::views::{Nav, csrf_field, field_error, notice, page, problem, when};
use super::{Change, Form, Session};
use crate::activity::LastAttempt;
use crate::api::stats::percentile;
use crate::api::subscription_bodies::{FieldErrors, check_change, check_new, vet};
use crate::api::subscriptions::{
    create_subscription, delete_subscription, rotate_subscription_secret, update_subscription,
};
use crate::api::test_event::{new_test_event_id, send_test_event};
use crate::api::{ApiError, ApiState};
use crate::catalog;
use crate::delivery::guard::Blocked;
use crate::store::health::EndpointFigures;
use crate::subscriptions::{EventSet, Subscription};

/// Most webhooks one account's page lists (the API pages beyond; an account has a handful).
const MAX_LISTED: i64 = 500;

/// How long "Send test event" waits for the first attempt's outcome.
const TEST_WAIT: Duration = Duration::from_secs(12);

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/portal/integrations", get(list).post(create))
        .route("/portal/integrations/new", get(choose))
        .route("/portal/integrations/new/webhook", get(new_webhook))
        .route("/portal/integrations/{id}", get(edit).post(update))
        .route("/portal/integrations/{id}/enable", post(enable))
        .route("/portal/integrations/{id}/disable", post(disable))
        .route(
            "/portal/integrations/{id}/delete",
            get(confirm_delete).post(delete),
        )
        .route("/portal/integrations/{id}/test", post(test))
        .route("/portal/integrations/{id}/rotate", post(rotate))
        .route("/portal/integrations/{id}/secret", post(reveal))
}

/// The session account's subscription `id`; any other (another account's, or none) is the same
/// 404, so nothing tells one from the other.
async fn owned(state: &ApiState, session: &Session, id: &str) -> Result<Subscription, Response> {
    match state.store.subscription(id).await {
        Ok(Some(sub)) if sub.account_id == session.account_id => Ok(sub),
        Ok(_) => Err(problem(
            StatusCode::NOT_FOUND,
            "No such integration",
            "This integration does not exist, or it belongs to another account.",
        )),
        Err(e) => Err(failed(e.into())),
    }
}

fn failed(error: ApiError) -> Response {
    tracing::error!(error = %error, "portal request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The service could not complete this. Nothing was changed; try again in a moment.",
    )
}

/// What the list says after a change (a fixed set: nothing from the request is shown back).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "created" => "Webhook saved and enabled.",
        "updated" => "Changes saved.",
        "enabled" => "Webhook enabled.",
        "disabled" => "Webhook disabled: it gets no deliveries until it is enabled again.",
        "deleted" => "Webhook deleted.",
        _ => return None,
    })
}

async fn list(
    State(state): State<ApiState>,
    session: Session,
    query: axum::extract::RawQuery,
) -> Response {
    let subs = match state
        .store
        .list_subscriptions(Some(&session.account_id), None, MAX_LISTED)
        .await
    {
        Ok(page) => page.items,
        Err(e) => return failed(e.into()),
    };
    let done = Form::query(&query).get("done").and_then(notice_text);
    let body = html! {
        div.row.spread {
            h1 { "Integrations" }
            a.button href="/portal/integrations/new" { "Add Integration" }
        }
        @if let Some(text) = done { (notice(text)) }
        @if subs.is_empty() {
            section.card {
                p { "No integrations yet. Add a webhook to hear about your visitors as it happens." }
            }
        }
        @for sub in &subs {
            (integration_card(&session, sub, state.activity.last(&sub.id)))
        }
    };
    page(
        StatusCode::OK,
        "Integrations",
        Some(&session),
        Nav::Integrations,
        body,
    )
}

fn integration_card(session: &Session, sub: &Subscription, last: Option<LastAttempt>) -> Markup {
    let base = format!("/portal/integrations/{}", sub.id);
    html! {
        article.card.integration #(format!("card-{}", sub.id)) aria-labelledby=(format!("title-{}", sub.id)) {
            div.row.spread {
                h2 #(format!("title-{}", sub.id)) .url { (sub.url) }
                (state_badge(sub))
            }
            (auto_disabled_notice(sub))
            @if let Some(description) = &sub.description { p { (description) } }
            (events_list(sub.events))
            p.meta { "Last delivery: " (last_delivery(last.as_ref())) }
            div.actions {
                a.button.secondary href=(base) { "Edit" }
                form method="post" action=(format!("{base}/{}", if sub.enabled { "disable" } else { "enable" })) {
                    (csrf_field(session))
                    button.secondary type="submit" { @if sub.enabled { "Disable" } @else { "Enable" } }
                }
                form method="post" action=(format!("{base}/test")) {
                    (csrf_field(session))
                    button.secondary type="submit" { "Send test event" }
                }
                form method="post" action=(format!("{base}/rotate")) {
                    (csrf_field(session))
                    button.secondary type="submit" { "Rotate secret" }
                }
                a.button.danger href=(format!("{base}/delete")) { "Delete" }
            }
        }
    }
}

fn state_badge(sub: &Subscription) -> Markup {
    html! {
        @if sub.enabled { span.badge.on { "Enabled" } }
        @else if sub.auto_disabled() { span.badge.bad { "Disabled automatically" } }
        @else { span.badge.off { "Disabled" } }
    }
}

/// Why deliveries stopped, and how to get the kept events, for a subscription the rule disabled.
fn auto_disabled_notice(sub: &Subscription) -> Markup {
    html! {
        @if sub.auto_disabled() {
            p.problem {
                "Disabled automatically"
                @if let Some(at) = &sub.disabled_at { " on " (when(at)) }
                ": every delivery to this endpoint failed for a long time. New events are kept in "
                a href=(format!("/portal/delivery-logs?endpoint={}", sub.id)) { "Delivery Logs" }
                ". Fix the endpoint, enable the webhook, then replay them."
            }
        }
    }
}

/// The endpoint's figures over every replica: attempts and successes, latency, the latest
/// attempt and success.
fn health(figures: &EndpointFigures, timeout_ms: u64) -> Markup {
    let rate = |(attempts, successes): (i64, i64)| {
        if attempts == 0 {
            "no attempts".to_string()
        } else {
            format!(
                "{attempts} attempts, {successes} succeeded ({:.1} %)",
                successes as f64 * 100.0 / attempts as f64
            )
        }
    };
    let p = |q: f64| {
        percentile(&figures.latency, q, timeout_ms)
            .map_or("–".to_string(), |ms| format!("≤ {ms} ms"))
    };
    html! {
        section.card aria-labelledby="health-title" {
            h2 #health-title { "Health" }
            dl {
                dt { "Last hour" } dd { (rate(figures.last_hour)) }
                dt { "Last day" } dd { (rate(figures.last_day)) }
                dt { "Response time (last hour)" } dd { "p50 " (p(0.50)) ", p95 " (p(0.95)) ", p99 " (p(0.99)) }
                dt { "Latest attempt" } dd {
                    @match (&figures.last_attempt_at, figures.last_status, &figures.last_error) {
                        (None, _, _) => { "none yet" }
                        (Some(at), status, error) => {
                            @if let Some(error) = error { span.badge.bad { "Failed" } " " (error) }
                            @else if let Some(status) = status { span.badge.on { "Delivered" } " HTTP " (status) }
                            " · " (when(at))
                        }
                    }
                }
                dt { "Latest success" } dd {
                    @match &figures.last_success_at { Some(at) => { (when(at)) } None => { "none yet" } }
                }
            }
            p.hint { "Counted over every instance of the service; may lag by a few seconds." }
        }
    }
}

fn events_list(events: EventSet) -> Markup {
    html! {
        ul.events aria-label="Events" {
            @if events == EventSet::ALL { li { "All events" } }
            @else { @for name in events.names() { li { (name) } } }
        }
    }
}

fn last_delivery(last: Option<&LastAttempt>) -> Markup {
    html! {
        @match last {
            None => { "none yet" }
            Some(last) if last.succeeded() => {
                span.badge.on { "Delivered" } " " (outcome_text(last))
            }
            Some(last) => {
                span.badge.bad { "Failed" } " " (outcome_text(last))
            }
        }
    }
}

fn outcome_text(last: &LastAttempt) -> String {
    let what = match (last.status, &last.error) {
        (Some(status), None) => format!("HTTP {status}"),
        (_, Some(error)) => error.clone(),
        (None, None) => "answered".into(),
    };
    format!(
        "{what} in {} ms, attempt {}, {}",
        last.duration_ms,
        last.attempt,
        when(&last.at)
    )
}

async fn choose(session: Session) -> Response {
    let body = html! {
        h1 { "Add Integration" }
        section.card {
            p { "Choose how your systems hear about events." }
            div.actions {
                a.button href="/portal/integrations/new/webhook" { "Webhook" }
            }
            p.hint { "A webhook is an HTTPS endpoint of yours that receives each event as a signed JSON POST." }
        }
    };
    page(
        StatusCode::OK,
        "Add Integration",
        Some(&session),
        Nav::Integrations,
        body,
    )
}

/// What the webhook form shows: the values as entered and what is wrong with them.
#[derive(Default)]
struct Draft {
    url: String,
    events: Vec<String>,
    description: String,
    errors: FieldErrors,
}

impl Draft {
    fn of(sub: &Subscription) -> Draft {
        Draft {
            url: sub.url.clone(),
            events: sub.events.names(),
            description: sub.description.clone().unwrap_or_default(),
            errors: FieldErrors::default(),
        }
    }

    fn from_form(form: &Form) -> Draft {
        Draft {
            url: form.get("url").unwrap_or_default().to_string(),
            events: form.all("events"),
            description: form.get("description").unwrap_or_default().to_string(),
            errors: FieldErrors::default(),
        }
    }

    fn description(&self) -> Option<String> {
        let d = self.description.trim();
        (!d.is_empty()).then(|| d.to_string())
    }
}

/// The webhook form: Endpoint URL, one checkbox per event, a description.
fn webhook_form(session: &Session, action: &str, draft: &Draft, submit: &str) -> Markup {
    let all = draft.events.iter().any(|e| e == "*");
    let url_error = draft.errors.get("url");
    let events_error = draft.errors.get("events");
    let description_error = draft.errors.get("description");
    html! {
        form.card method="post" action=(action) novalidate {
            (csrf_field(session))
            @if let Some(error) = draft.errors.get("form") { p.problem role="alert" { (error) } }
            label for="url" { "Endpoint URL" }
            p.hint #url-hint { "Where we POST each event, e.g. https://example.com/webhooks. It must be reachable from the internet." }
            input #url type="url" name="url" value=(draft.url) required
                aria-describedby=(if url_error.is_some() { "url-hint url-error" } else { "url-hint" })
                aria-invalid=[url_error.map(|_| "true")];
            (field_error("url-error", url_error))
            fieldset aria-describedby=[events_error.map(|_| "events-error")] {
                legend { "Events" }
                p.hint { "Choose which events trigger the webhook." }
                @for event in catalog::all() {
                    @let name = event.kind.as_str();
                    @let id = format!("event-{name}");
                    label.choice for=(id) {
                        input #(id) type="checkbox" name="events" value=(name)
                            checked[all || draft.events.iter().any(|e| e == name)];
                        span { (name) small { (event.description) } }
                    }
                }
                (field_error("events-error", events_error))
            }
            label for="description" { "Description (optional)" }
            textarea #description name="description" maxlength="1000"
                aria-invalid=[description_error.map(|_| "true")]
                aria-describedby=[description_error.map(|_| "description-error")] { (draft.description) }
            (field_error("description-error", description_error))
            div.actions { button type="submit" { (submit) } }
        }
    }
}

async fn new_webhook(session: Session) -> Response {
    let draft = Draft::default();
    let body = html! {
        h1 { "Add Integration: Webhook" }
        (webhook_form(&session, "/portal/integrations", &draft, "Save and enable"))
    };
    page(
        StatusCode::OK,
        "Add a webhook",
        Some(&session),
        Nav::Integrations,
        body,
    )
}

async fn create(State(state): State<ApiState>, Change { session, form }: Change) -> Response {
    let mut draft = Draft::from_form(&form);
    let checked = check_new(
        session.account_id.clone(),
        draft.url.trim(),
        &draft.events,
        true,
        draft.description(),
    );
    let new = match checked {
        Ok(new) => new,
        Err(errors) => return invalid_new(&session, draft, errors),
    };
    if let Err(blocked) = vet(&state, &new.url).await {
        draft.errors = FieldErrors::single("url", refused(&blocked));
        return invalid_new(&session, draft, FieldErrors::default());
    }
    match create_subscription(&state, new).await {
        Ok(sub) => secret_page(
            &session,
            &sub,
            "Webhook saved and enabled",
            "Keep this signing secret: your endpoint uses it to check that a delivery comes from us. You can reveal it again from the webhook's page.",
        ),
        Err(e) => failed(e),
    }
}

/// What a customer reads about a refused URL (the operator's setting is none of theirs).
fn refused(blocked: &Blocked) -> String {
    format!(
        "This address is not reachable from the internet ({} {}): use your endpoint's public address.",
        blocked.host, blocked.reason
    )
}

fn invalid_new(session: &Session, mut draft: Draft, errors: FieldErrors) -> Response {
    if draft.errors.is_empty() {
        draft.errors = errors;
    }
    let body = html! {
        h1 { "Add Integration: Webhook" }
        p.problem role="alert" { "Check the fields marked below." }
        (webhook_form(session, "/portal/integrations", &draft, "Save and enable"))
    };
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Add a webhook",
        Some(session),
        Nav::Integrations,
        body,
    )
}

/// A page that shows a subscription's secret (after create, rotate or reveal): never cached.
fn secret_page(session: &Session, sub: &Subscription, title: &str, note: &str) -> Response {
    let body = html! {
        h1 { (title) }
        section.card {
            p.url { strong { (sub.url) } }
            p { (note) }
            p { "Signing secret:" }
            p.secret { (sub.secret.expose()) }
            (verify_snippet())
            div.actions { a.button href="/portal/integrations" { "Back to Integrations" } }
        }
    };
    page(
        StatusCode::OK,
        title,
        Some(session),
        Nav::Integrations,
        body,
    )
}

fn verify_snippet() -> Markup {
    html! {
        h2 { "Verify a delivery" }
        p { "Every delivery carries Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature). Check them with any Standard Webhooks library before trusting the body, e.g. in Python:" }
        pre { code { "pip install standardwebhooks\n\nfrom standardwebhooks.webhooks import Webhook\n\nwh = Webhook(\"whsec_…\")  # this webhook's signing secret\nevent = wh.verify(request_body, request_headers)  # raises if it is not from us" } }
        p.hint { "Drop a delivery whose webhook-id you have already processed: retries reuse it." }
    }
}

async fn edit(State(state): State<ApiState>, session: Session, Path(id): Path<String>) -> Response {
    let sub = match owned(&state, &session, &id).await {
        Ok(sub) => sub,
        Err(response) => return response,
    };
    edit_page(&state, &session, &sub, Draft::of(&sub), StatusCode::OK).await
}

async fn edit_page(
    state: &ApiState,
    session: &Session,
    sub: &Subscription,
    draft: Draft,
    status: StatusCode,
) -> Response {
    let base = format!("/portal/integrations/{}", sub.id);
    // The figures are a courtesy here: the page works without them.
    let figures = state
        .store
        .endpoint_figures(&sub.id, chrono::Utc::now())
        .await
        .inspect_err(|e| tracing::warn!(error = %e, subscription_id = %sub.id, "portal: reading the endpoint's figures failed"))
        .ok();
    let timeout_ms = state.delivery_timeout.as_millis() as u64;
    let body = html! {
        h1 { "Edit webhook" }
        p.meta.url { (sub.url) " · " (state_badge(sub)) }
        (auto_disabled_notice(sub))
        p.meta { "Last delivery: " (last_delivery(state.activity.last(&sub.id).as_ref())) }
        @if let Some(figures) = &figures { (health(figures, timeout_ms)) }
        @if !draft.errors.is_empty() { p.problem role="alert" { "Check the fields marked below." } }
        (webhook_form(session, &base, &draft, "Save changes"))
        section.card {
            h2 { "Signing secret" }
            p { "Your endpoint checks each delivery's signature with this secret." }
            div.actions {
                form method="post" action=(format!("{base}/secret")) {
                    (csrf_field(session))
                    button.secondary type="submit" { "Reveal secret" }
                }
                form method="post" action=(format!("{base}/rotate")) {
                    (csrf_field(session))
                    button.secondary type="submit" { "Rotate secret" }
                }
            }
            p.hint { "After a rotation the old secret keeps signing next to the new one for a while, so you can switch without losing a delivery." }
        }
        section.card {
            h2 { "Delete" }
            p { "Deleting stops every delivery to this endpoint." }
            a.button.danger href=(format!("{base}/delete")) { "Delete" }
        }
    };
    page(
        status,
        "Edit webhook",
        Some(session),
        Nav::Integrations,
        body,
    )
}

async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, form }: Change,
) -> Response {
    let sub = match owned(&state, &session, &id).await {
        Ok(sub) => sub,
        Err(response) => return response,
    };
    let mut draft = Draft::from_form(&form);
    let checked = check_change(
        Some(draft.url.trim()),
        Some(&draft.events),
        None,
        Some(draft.description()),
    );
    let patch = match checked {
        Ok(patch) => patch,
        Err(errors) => {
            draft.errors = errors;
            return edit_page(
                &state,
                &session,
                &sub,
                draft,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    if let Some(url) = &patch.url
        && let Err(blocked) = vet(&state, url).await
    {
        draft.errors = FieldErrors::single("url", refused(&blocked));
        return edit_page(
            &state,
            &session,
            &sub,
            draft,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    match update_subscription(&state, &id, patch).await {
        Ok(_) => done("updated"),
        Err(e) => failed(e),
    }
}

fn done(code: &str) -> Response {
    Redirect::to(&format!("/portal/integrations?done={code}")).into_response()
}

async fn set_enabled(state: &ApiState, session: &Session, id: &str, enabled: bool) -> Response {
    if let Err(response) = owned(state, session, id).await {
        return response;
    }
    let patch = crate::store::SubscriptionPatch {
        enabled: Some(enabled),
        ..Default::default()
    };
    match update_subscription(state, id, patch).await {
        Ok(_) => done(if enabled { "enabled" } else { "disabled" }),
        Err(e) => failed(e),
    }
}

async fn enable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    set_enabled(&state, &session, &id, true).await
}

async fn disable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    set_enabled(&state, &session, &id, false).await
}

async fn confirm_delete(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let sub = match owned(&state, &session, &id).await {
        Ok(sub) => sub,
        Err(response) => return response,
    };
    let body = html! {
        section.card.narrow {
            h1 { "Delete this webhook?" }
            p.url { strong { (sub.url) } }
            p { "It stops receiving events at once. Its past deliveries stay in the Delivery Logs." }
            div.actions {
                form method="post" action=(format!("/portal/integrations/{}/delete", sub.id)) {
                    (csrf_field(&session))
                    button.danger type="submit" { "Delete webhook" }
                }
                a.button.secondary href="/portal/integrations" { "Cancel" }
            }
        }
    };
    page(
        StatusCode::OK,
        "Delete webhook",
        Some(&session),
        Nav::Integrations,
        body,
    )
}

async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    if let Err(response) = owned(&state, &session, &id).await {
        return response;
    }
    match delete_subscription(&state, &id).await {
        Ok(_) => done("deleted"),
        Err(e) => failed(e),
    }
}

async fn test(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    let sub = match owned(&state, &session, &id).await {
        Ok(sub) => sub,
        Err(response) => return response,
    };
    let event_id = new_test_event_id();
    let waiter = state.activity.expect(&event_id);
    let sent = send_test_event(&state, &sub, None, event_id.clone()).await;
    let (status, result) = match sent {
        Err(ApiError::Conflict { message, .. }) => (
            StatusCode::CONFLICT,
            html! { p.problem role="alert" { (message) } },
        ),
        Err(e @ ApiError::Broker(_)) => {
            tracing::warn!(error = %e, "test event not sent");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                html! { p.problem role="alert" { "The test event could not be sent right now; nothing was queued. Try again in a moment." } },
            )
        }
        Err(e) => return failed(e),
        Ok((event_id, kind, _)) => {
            let outcome = match waiter {
                Some(rx) => state.activity.wait(&event_id, rx, TEST_WAIT).await,
                None => None,
            };
            (
                StatusCode::OK,
                test_result(&event_id, kind.as_str(), outcome.as_ref()),
            )
        }
    };
    let body = html! {
        h1 { "Send test event" }
        p.url { (sub.url) }
        section.card {
            (result)
            div.actions { a.button href="/portal/integrations" { "Back to Integrations" } }
        }
    };
    page(
        status,
        "Test event",
        Some(&session),
        Nav::Integrations,
        body,
    )
}

fn test_result(event_id: &str, event: &str, outcome: Option<&LastAttempt>) -> Markup {
    html! {
        p { "A sample " strong { (event) } " event was sent with webhook-id " code { (event_id) } "." }
        @match outcome {
            Some(last) if last.succeeded() => {
                p.notice role="status" { "Delivered: " (outcome_text(last)) "." }
            }
            Some(last) => {
                p.problem role="status" {
                    "Delivery failed: " (outcome_text(last)) "."
                    @if last.will_retry { " It will be retried after 2, 4 and 8 seconds; if every attempt fails it appears in the Delivery Logs." }
                }
            }
            None => {
                p.warning role="status" { "It is on its way; its outcome was not known yet. Reload the Integrations page to see the last delivery, or look in the Delivery Logs if it keeps failing." }
            }
        }
    }
}

async fn rotate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    if let Err(response) = owned(&state, &session, &id).await {
        return response;
    }
    match rotate_subscription_secret(&state, &id, state.secret_rotation_overlap).await {
        Ok(Some(sub)) => {
            let note = format!(
                "The new secret signs every delivery from now on; the old one keeps signing next to it for {}, so switch your endpoint to the new one within that time.",
                humantime::format_duration(state.secret_rotation_overlap)
            );
            secret_page(&session, &sub, "Secret rotated", &note)
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "No such integration",
            "This integration does not exist, or it belongs to another account.",
        ),
        Err(e) => failed(e),
    }
}

async fn reveal(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    match owned(&state, &session, &id).await {
        Ok(sub) => secret_page(
            &session,
            &sub,
            "Signing secret",
            "Keep it out of code and logs; anyone who has it can sign deliveries your endpoint trusts.",
        ),
        Err(response) => response,
    }
}
