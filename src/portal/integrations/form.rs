//! The webhook form: what was typed, kept with the API's errors beside each field.

use super::*;

/// What the webhook form shows: the values as entered and what is wrong with them.
#[derive(Default)]
pub(super) struct Draft {
    pub(super) url: String,
    pub(super) events: Vec<String>,
    pub(super) description: String,
    pub(super) errors: FieldErrors,
}

impl Draft {
    pub(super) fn of(sub: &Subscription) -> Draft {
        Draft {
            url: sub.url.clone(),
            events: sub.events.names(),
            description: sub.description.clone().unwrap_or_default(),
            errors: FieldErrors::default(),
        }
    }

    pub(super) fn from_form(form: &Form) -> Draft {
        Draft {
            url: form.get("url").unwrap_or_default().to_string(),
            events: form.all("events"),
            description: form.get("description").unwrap_or_default().to_string(),
            errors: FieldErrors::default(),
        }
    }

    pub(super) fn description(&self) -> Option<String> {
        let d = self.description.trim();
        (!d.is_empty()).then(|| d.to_string())
    }
}

/// The webhook form: Endpoint URL, one checkbox per event, a description.
pub(super) fn webhook_form(session: &Session, action: &str, draft: &Draft, submit: &str) -> Markup {
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

/// What a customer reads about a refused URL: not the operator's setting, nor what the name
/// resolved to here (addresses of the operator's own network), nor whether it resolved at all.
pub(super) fn refused(blocked: &Blocked) -> String {
    let what = if blocked
        .host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        "is not a public address"
    } else {
        "does not resolve to a public address"
    };
    format!(
        "This address is not reachable from the internet ({} {what}): use your endpoint's public address.",
        blocked.host
    )
}

pub(super) fn invalid_new(session: &Session, mut draft: Draft, errors: FieldErrors) -> Response {
    if draft.errors.is_empty() {
        draft.errors = errors;
    }
    refused_new(
        session,
        &draft,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Check the fields marked below.",
    )
}

/// The account already has `limit` webhooks: the form comes back as typed, saying so.
pub(super) fn at_limit(session: &Session, draft: &Draft, limit: u32) -> Response {
    refused_new(
        session,
        draft,
        StatusCode::CONFLICT,
        &format!(
            "Your account already has {limit} webhooks, the most it can have. Delete one you no \
             longer use, then save this one again."
        ),
    )
}

fn refused_new(session: &Session, draft: &Draft, status: StatusCode, why: &str) -> Response {
    let body = html! {
        h1 { "Add Integration: Webhook" }
        p.problem role="alert" { (why) }
        (webhook_form(session, "/portal/integrations", draft, "Save and enable"))
    };
    page(
        status,
        "Add a webhook",
        Some(session),
        Nav::Integrations,
        body,
    )
}
