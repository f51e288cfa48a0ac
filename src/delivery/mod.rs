//! One HTTP delivery attempt: build the signed request, send it with a pooled client, and
//! classify what happened into an [`Outcome`] exactly once.

pub mod guard;
pub mod limit;
mod lookups;
pub mod refusals;
pub mod signing;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use serde::{Deserialize, Serialize};

pub use limit::Signal;
pub use signing::SigningKey;

use crate::time::now_rfc3339;

/// How much of a response body is read (and then discarded) so the connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What one attempt came to. The label is the `outcome` of `webhook_delivery_attempts_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(u16),
    HttpError(u16),
    Timeout,
    ConnectError(String),
    /// The endpoint's host answered the connection attempt with a refusal (nothing listens on
    /// the port): a connection error like any other, except that it tells nothing about load.
    /// Also what an attempt within [`refusals::HOLD`] of such a refusal comes to, without
    /// connecting ([`refusals`]).
    Refused(String),
    /// The endpoint resolved to an address the SSRF guard refuses. Counted as `connect_error`
    /// (the contract's outcome labels); the attempt's error says `blocked`.
    Blocked(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::HttpError(_) => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError(_) | Outcome::Refused(_) | Outcome::Blocked(_) => "connect_error",
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Success(s) | Outcome::HttpError(s) => Some(*s),
            _ => None,
        }
    }

    fn error(&self, timeout: Duration) -> Option<String> {
        match self {
            Outcome::Success(_) => None,
            Outcome::HttpError(s) => Some(format!("endpoint answered HTTP {s}")),
            Outcome::Timeout => Some(format!(
                "no complete answer within {}",
                humantime::format_duration(timeout)
            )),
            Outcome::ConnectError(e) | Outcome::Refused(e) => Some(e.clone()),
            Outcome::Blocked(e) => Some(format!("blocked: {e}")),
        }
    }
}

/// One attempt as it appears in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    pub duration_ms: u64,
    /// The endpoint's HTTP status; null when none came back.
    pub status: Option<u16>,
    /// What went wrong (timeout, connection error, …); null on success.
    pub error: Option<String>,
}

/// The HTTP side of the dispatcher: one pooled client for every endpoint.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    timeout: Duration,
    allow_private: bool,
    user_agent: HeaderValue,
    refusals: Arc<refusals::Refusals>,
}

impl Deliverer {
    /// `idle_per_host` should be `MAX_IN_FLIGHT`: the pool is per host, not per subscription,
    /// and every subscription of a host may have its attempts in flight at once (a fan-out to
    /// many subscriptions of one endpoint). Kept any smaller, the connections over it were
    /// closed after each attempt and opened again for the next: the fan-out benchmark went from
    /// 0.45 to 0.6 × its bare loop with this (BENCHMARKS.md).
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        idle_per_host: usize,
    ) -> Result<Deliverer, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle_per_host)
            .tcp_nodelay(true)
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(guard::GuardedResolver::default()));
        }
        let user_agent =
            HeaderValue::from_static(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")));
        Ok(Deliverer {
            client: builder.build()?,
            timeout,
            allow_private,
            user_agent,
            refusals: Arc::default(),
        })
    }

    /// Sends `body` to `url` signed with each of `keys`; never fails, every problem is an
    /// [`Outcome`]. Not sent at all while a refusal of `url` is held ([`refusals`]): the attempt
    /// fails with that refusal.
    pub async fn attempt(
        &self,
        url: &url::Url,
        keys: &[&SigningKey],
        event_id: &str,
        body: &str,
        attempt: u32,
    ) -> Attempt {
        let started_at = now_rfc3339();
        let start = Instant::now();
        let (outcome, retry_after) = match self.refusals.held(url.as_str(), start) {
            Some(refusal) => (Outcome::Refused(refusal), None),
            None => {
                let sent = self.send(url, keys, event_id, body).await;
                if let (Outcome::Refused(_), _) = sent {
                    self.refusals.refused(url.as_str(), Instant::now());
                }
                sent
            }
        };
        let took = start.elapsed();
        let record = AttemptRecord {
            attempt,
            started_at,
            duration_ms: took.as_millis() as u64,
            status: outcome.status(),
            error: outcome.error(self.timeout),
        };
        let signal = match &outcome {
            Outcome::Success(_) => Signal::Success(took),
            Outcome::HttpError(429 | 503) | Outcome::Timeout | Outcome::ConnectError(_) => {
                Signal::Overloaded { retry_after }
            }
            // A refused connection costs the endpoint nothing and is answered at once: backing
            // off would only slow the failing deliveries' way through the retries to the
            // delivery log (an endpoint that is down would get its backlog hours later).
            Outcome::HttpError(_) | Outcome::Refused(_) | Outcome::Blocked(_) => Signal::Other,
        };
        Attempt {
            outcome,
            record,
            signal,
        }
    }

    async fn send(
        &self,
        url: &url::Url,
        keys: &[&SigningKey],
        event_id: &str,
        body: &str,
    ) -> (Outcome, Option<Duration>) {
        if !self.allow_private
            && let Err(blocked) = guard::check_literal(url)
        {
            return (Outcome::Blocked(blocked.to_string()), None);
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signing::signature_header(keys, event_id, timestamp, body.as_bytes());
        let request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone())
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return (classify(e), None),
        };
        let status = response.status().as_u16();
        let retry_after = match status {
            429 | 503 => response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, chrono::Utc::now())),
            _ => None,
        };
        // Drain a little of the body so the connection goes back to the pool; a huge body is
        // cut off at the cap, a dripping one by the timeout (and the connection dropped). The
        // status is the endpoint's answer: a body that then fails or never ends changes
        // nothing, whatever the status (its bytes are thrown away anyway).
        let mut read = 0usize;
        while read <= MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        let outcome = if response_status_ok(status) {
            Outcome::Success(status)
        } else {
            Outcome::HttpError(status)
        };
        (outcome, retry_after)
    }
}

/// What one attempt came to, and what it showed of the endpoint's load.
pub struct Attempt {
    pub outcome: Outcome,
    pub record: AttemptRecord,
    /// For the endpoint's adaptive limit.
    pub signal: Signal,
}

/// A `Retry-After` value (RFC 9110: delay-seconds or an HTTP date, in any of the three forms a
/// recipient must read: IMF-fixdate, RFC 850, asctime; other RFC 2822 dates too) as a wait from
/// `now`; `None` if it is neither or already past.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    let at = match httpdate::parse_http_date(value) {
        Ok(at) => chrono::DateTime::<chrono::Utc>::from(at),
        Err(_) => chrono::DateTime::parse_from_rfc2822(value).ok()?.to_utc(),
    };
    (at - now).to_std().ok().filter(|d| !d.is_zero())
}

fn response_status_ok(status: u16) -> bool {
    (200..300).contains(&status)
}

fn classify(err: reqwest::Error) -> Outcome {
    if err.is_timeout() {
        return Outcome::Timeout;
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(blocked) = cause.downcast_ref::<guard::Blocked>() {
            return Outcome::Blocked(blocked.to_string());
        }
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return Outcome::Refused(error_chain(err.without_url()));
        }
        source = cause.source();
    }
    Outcome::ConnectError(error_chain(err.without_url()))
}

/// `err` and its causes on one line: reqwest's top-level message alone rarely says why. The URL
/// is left out: customers put tokens in them.
fn error_chain(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
