//! Replay from Delivery Logs: one record, or every record the filters show after a
//! confirmation — the same replay as the API and the CLI.

use super::*;

pub(super) async fn replay(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Change { session, .. }: Change,
) -> Response {
    let record = match owned(&state, &session, &id).await {
        Ok(record) => record,
        Err(response) => return response,
    };
    let replayer = state.replayer();
    let target = record.clone();
    let result = detached(async move { replayer.replay(&target).await }).await;
    match result {
        Ok(_) => {
            axum::response::Redirect::to("/portal/delivery-logs?done=replayed").into_response()
        }
        Err(e) => {
            let (status, text) = replay_refusal(&e);
            let message = html! { p.problem role="alert" { (text) } };
            page(
                status,
                "Delivery record",
                Some(&session),
                Nav::DeliveryLogs,
                record_view(&session, &record, Some(message)),
            )
        }
    }
}

/// What a replay that did not happen says, in the portal's words.
pub(super) fn replay_refusal(error: &ReplayError) -> (StatusCode, String) {
    match error {
        ReplayError::Skipped(skip) => (StatusCode::CONFLICT, skip.to_string()),
        ReplayError::Broker(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "It could not be sent right now; it stays replayable. Try again in a moment.".into(),
        ),
        other => {
            tracing::error!(error = %other, "portal replay failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The replay failed; it stays replayable. Try again in a moment.".into(),
            )
        }
    }
}

/// The records "Replay all shown" takes: the filters' records not replayed yet; a page saying
/// what is wrong with the filters.
pub(super) fn selection(q: &LogQuery, session: &Session) -> Result<ReplaySelection, Problem> {
    let mut filter = q.filter(session).map_err(|message| Problem {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        title: "Check the filters",
        message,
    })?;
    filter.until = Some(crate::ops::select::replay_bound(
        filter.until.take(),
        crate::time::now_rfc3339(),
    ));
    Ok(ReplaySelection {
        filter,
        ids: Vec::new(),
    })
}

pub(super) async fn confirm_replay_all(
    State(state): State<ApiState>,
    session: Session,
    query: RawQuery,
) -> Response {
    let q = LogQuery::from_form(&Form::query(&query));
    let selection = match selection(&q, &session) {
        Ok(selection) => selection,
        Err(refused) => return refused.into_response(),
    };
    let plan = state
        .replayer()
        .run(
            &selection,
            None,
            Limit::ReplayedWithin {
                replayed: MAX_BULK,
                looked: MAX_BULK_LOOKED,
            },
            true,
            &mut Pace::new(None),
            &mut |_| {},
        )
        .await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => return failed(e),
    };
    let n = plan.replayed.len();
    let body = html! {
        section.card.narrow {
            @if n == 0 {
                h1 { "Nothing to replay" }
                p { "None of the records shown can be replayed now (already replayed, or their webhook was deleted or disabled)." }
                div.actions { a.button.secondary href=(format!("/portal/delivery-logs?{}", q.params())) { "Back" } }
            } @else {
                h1 { "Replay " (deliveries(n)) "?" }
                p { "Each goes out again from its first attempt, under its original webhook-id." }
                @if plan.more { p.hint { "At most " (MAX_BULK) " at a time (among the next " (MAX_BULK_LOOKED) " records): replay again for the rest." } }
                div.actions {
                    form method="post" action="/portal/delivery-logs/replay" {
                        (csrf_field(&session))
                        input type="hidden" name="event" value=(q.event);
                        input type="hidden" name="endpoint" value=(q.endpoint);
                        input type="hidden" name="since" value=(q.since);
                        input type="hidden" name="until" value=(q.until);
                        button type="submit" { "Replay " (deliveries(n)) }
                    }
                    a.button.secondary href=(format!("/portal/delivery-logs?{}", q.params())) { "Cancel" }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        "Replay deliveries",
        Some(&session),
        Nav::DeliveryLogs,
        body,
    )
}

/// "1 delivery", "2 deliveries".
pub(super) fn deliveries(n: usize) -> String {
    if n == 1 {
        "1 delivery".into()
    } else {
        format!("{n} deliveries")
    }
}

pub(super) async fn replay_all(
    State(state): State<ApiState>,
    Change { session, form }: Change,
) -> Response {
    let q = LogQuery::from_form(&form);
    let selection = match selection(&q, &session) {
        Ok(selection) => selection,
        Err(refused) => return refused.into_response(),
    };
    let replayer = state.replayer();
    let report = detached(async move {
        replayer
            .run(
                &selection,
                None,
                Limit::ReplayedWithin {
                    replayed: MAX_BULK,
                    looked: MAX_BULK_LOOKED,
                },
                false,
                &mut Pace::new(None),
                &mut |_| {},
            )
            .await
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(e) => return failed(e),
    };
    let body = html! {
        section.card.narrow {
            h1 { "Replayed " (deliveries(report.replayed.len())) }
            @if !report.skipped.is_empty() { p { (report.skipped.len()) " could not be replayed (already replayed, or their webhook was deleted or disabled)." } }
            @if !report.failed.is_empty() || report.broker_failed || report.store_failed.is_some() { p.problem role="alert" { "Some could not be sent right now; they stay replayable. Try again in a moment." } }
            div.actions { a.button href=(format!("/portal/delivery-logs?{}", q.params())) { "Back to Delivery Logs" } }
        }
    };
    page(
        StatusCode::OK,
        "Replayed",
        Some(&session),
        Nav::DeliveryLogs,
        body,
    )
}
