//! Send test event: a sample event through the normal path, and its outcome shown.

use super::*;

pub(super) async fn test(
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

pub(super) fn test_result(event_id: &str, event: &str, outcome: Option<&LastAttempt>) -> Markup {
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
