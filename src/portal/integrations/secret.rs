//! The signing secret: rotate it, reveal it, and how a receiver verifies a delivery.

use super::*;
use crate::store::Rotated;

pub(super) async fn rotate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, form }: Change,
) -> Response {
    let sub = match owned(&state, &session, &id).await {
        Ok(sub) => sub,
        Err(response) => return response,
    };
    let overlap = humantime::format_duration(state.secret_rotation_overlap);
    // The secret the form was shown with: a second click (or a reload of the answer, another
    // tab) must not rotate again, which would drop at once the secret the endpoint still uses.
    let already = |sub: &Subscription| {
        secret_page(
            &session,
            sub,
            "Secret rotated",
            &format!(
                "This secret was already rotated since the page you came from was shown, so nothing changed: below is the current one. The secret before it keeps signing next to it for up to {overlap} after that rotation."
            ),
        )
    };
    if form.get("rotating") != Some(secret_tag(&sub).as_str()) {
        return already(&sub);
    }
    match rotate_subscription_secret(
        &state,
        &id,
        state.secret_rotation_overlap,
        Some(&sub.secret),
    )
    .await
    {
        Ok(Rotated::Done(sub)) => {
            let note = format!(
                "The new secret signs every delivery from now on; the old one keeps signing next to it for {overlap}, so switch your endpoint to the new one within that time."
            );
            secret_page(&session, &sub, "Secret rotated", &note)
        }
        Ok(Rotated::Already(sub)) => already(&sub),
        Ok(Rotated::Missing) => problem(
            StatusCode::NOT_FOUND,
            "No such integration",
            "This integration does not exist, or it belongs to another account.",
        ),
        Err(e) => failed(e),
    }
}

/// What a rotate form carries of the secret it was shown with: a digest, never the secret.
pub(super) fn secret_tag(sub: &Subscription) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"webhook-dispatcher/portal/rotating\0")
        .chain_update(sub.secret.expose().as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// The rotate button of `sub`'s forms.
pub(super) fn rotate_form(session: &Session, base: &str, sub: &Subscription) -> Markup {
    html! {
        form method="post" action=(format!("{base}/rotate")) {
            (csrf_field(session))
            input type="hidden" name="rotating" value=(secret_tag(sub));
            button.secondary type="submit" { "Rotate secret" }
        }
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
