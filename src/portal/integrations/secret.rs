//! The signing secret: rotate it, reveal it, and how a receiver verifies a delivery.

use super::*;

pub(super) async fn rotate(
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

pub(super) async fn reveal(
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

/// A page that shows a subscription's secret (after create, rotate or reveal): never cached.
pub(super) fn secret_page(
    session: &Session,
    sub: &Subscription,
    title: &str,
    note: &str,
) -> Response {
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

pub(super) fn verify_snippet() -> Markup {
    html! {
        h2 { "Verify a delivery" }
        p { "Every delivery carries Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature). Check them with any Standard Webhooks library before trusting the body, e.g. in Python:" }
        pre { code { "pip install standardwebhooks\n\nfrom standardwebhooks.webhooks import Webhook\n\nwh = Webhook(\"whsec_…\")  # this webhook's signing secret\nevent = wh.verify(request_body, request_headers)  # raises if it is not from us" } }
        p.hint { "Drop a delivery whose webhook-id you have already processed: retries reuse it." }
    }
}
