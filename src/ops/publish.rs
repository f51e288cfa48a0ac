//! `publish`: an operator sends one event like a producer would — checked first with the
//! consumer's own parser ([`event::parse`]), so what the service would reject is refused here
//! with the same reason, and nothing is published.

use serde::Serialize;
use serde_json::value::RawValue;

use super::OpsError;
use crate::broker::{Broker, BrokerError, Route, event_props};
use crate::event::{self, Event};
use crate::time::now_rfc3339;

/// An event given field by field (`--event`, `--account`, `--data`, …).
#[derive(Debug, Clone)]
pub struct EventFields {
    pub event: String,
    pub account_id: String,
    /// The `data` object as JSON text; published byte for byte.
    pub data: String,
    pub id: Option<String>,
    /// RFC 3339; now when not given.
    pub timestamp: Option<String>,
}

impl EventFields {
    /// The envelope a producer would publish for these fields.
    pub fn envelope(&self) -> Result<Vec<u8>, OpsError> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            event: &'a str,
            timestamp: &'a str,
            account_id: &'a str,
            data: &'a RawValue,
        }
        let data: Box<RawValue> = serde_json::from_str(self.data.trim())
            .map_err(|e| OpsError::BadInput(format!("--data is not JSON: {e}")))?;
        let now = now_rfc3339();
        let envelope = Envelope {
            id: self.id.as_deref(),
            event: &self.event,
            timestamp: self.timestamp.as_deref().unwrap_or(&now),
            account_id: &self.account_id,
            data: &data,
        };
        Ok(serde_json::to_vec(&envelope).expect("envelope serialises"))
    }
}

/// Validates `raw` exactly as the consumer does.
pub fn validate(raw: &[u8]) -> Result<Event, OpsError> {
    event::parse(raw, None).map_err(|e| {
        OpsError::BadInput(format!(
            "invalid event ({}): {e}; nothing was published",
            e.reason()
        ))
    })
}

/// Publishes `raw` (already [`validate`]d into `event`) to `EVENTS_EXCHANGE` with routing key
/// = the event name, persistent, and waits for the broker's confirm. The AMQP `message_id` is
/// the event id, so the consumer reads the same id whether or not the body names one.
pub async fn publish(broker: &Broker, raw: &[u8], event: &Event) -> Result<(), OpsError> {
    let route = Route {
        exchange: &broker.topology.exchange,
        routing_key: event.kind.as_str(),
    };
    match broker
        .publisher
        .publish(route, raw, event_props(&event.id))
        .await
    {
        Err(BrokerError::NotFound(_)) => Err(OpsError::BadInput(format!(
            "exchange {:?} does not exist: check EVENTS_EXCHANGE (the service declares it when it starts)",
            route.exchange
        ))),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(data: &str) -> EventFields {
        EventFields {
            event: "purchase".into(),
            account_id: "acct_acme".into(),
            data: data.into(),
            id: Some("evt_1".into()),
            timestamp: Some("2026-02-12T14:30:00Z".into()),
        }
    }

    #[test]
    fn fields_make_the_envelope_a_producer_would_publish() {
        let raw = fields(r#"{"visitor_id":"v_1","amount":299.00}"#)
            .envelope()
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&raw).unwrap(),
            r#"{"id":"evt_1","event":"purchase","timestamp":"2026-02-12T14:30:00Z","account_id":"acct_acme","data":{"visitor_id":"v_1","amount":299.00}}"#
        );
        let event = validate(&raw).unwrap();
        assert_eq!(event.id, "evt_1");
    }

    #[test]
    fn bad_input_says_why_with_the_consumers_reason() {
        let err = fields("{nope").envelope().unwrap_err().to_string();
        assert!(err.starts_with("--data is not JSON"), "{err}");
        let raw = fields(r#"{"amount":1}"#).envelope().unwrap();
        let err = validate(&raw).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid event (invalid_event): missing required field data.visitor_id; nothing was published"
        );
    }
}
