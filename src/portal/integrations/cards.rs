//! What the Integrations pages show of a webhook: its card, its state and health, its last
//! delivery, a test's outcome.

use super::*;

pub(super) fn integration_card(
    session: &Session,
    sub: &Subscription,
    last: Option<LastAttempt>,
) -> Markup {
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
                (rotate_form(session, &base, sub))
                a.button.danger href=(format!("{base}/delete")) { "Delete" }
            }
        }
    }
}

pub(super) fn state_badge(sub: &Subscription) -> Markup {
    html! {
        @if sub.enabled { span.badge.on { "Enabled" } }
        @else if sub.auto_disabled() { span.badge.bad { "Disabled automatically" } }
        @else { span.badge.off { "Disabled" } }
    }
}

/// Why deliveries stopped, and how to get the kept events, for a subscription the rule disabled.
pub(super) fn auto_disabled_notice(sub: &Subscription) -> Markup {
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
pub(super) fn health(figures: &EndpointFigures, timeout_ms: u64) -> Markup {
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

pub(super) fn events_list(events: EventSet) -> Markup {
    html! {
        ul.events aria-label="Events" {
            @if events == EventSet::ALL { li { "All events" } }
            @else { @for name in events.names() { li { (name) } } }
        }
    }
}

pub(super) fn last_delivery(last: Option<&LastAttempt>) -> Markup {
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

pub(super) fn outcome_text(last: &LastAttempt) -> String {
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
