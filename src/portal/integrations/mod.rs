//! Integrations: the account's webhooks, and adding, changing, pausing, deleting, testing and
//! rotating them — through the same checks and the same changes as the admin API.

mod cards;
mod form;
mod secret;
mod testing;
use cards::*;
use form::*;
use secret::*;
use testing::*;

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
        Err(ApiError::Conflict {
            code: "subscription_limit_reached",
            ..
        }) => at_limit(&session, &draft, state.max_subscriptions_per_account),
        Err(e) => failed(e),
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
                (rotate_form(session, &base, sub))
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
