//! HTTP receivers: one that records every request and answers from a script, one that counts
//! deliveries per `webhook-id`, and signature checks with the stock Standard Webhooks library.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt;

use super::wait_until;

/// How a receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Sleep, then answer with the status.
    Slow(Duration, u16),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

/// Serves `app` on a free loopback port; returns the URL receivers give out (`…/hooks`).
pub async fn serve_receiver(app: axum::Router) -> String {
    serve_receiver_counting(app, Arc::new(AtomicUsize::new(0))).await
}

/// [`serve_receiver`], counting the TCP connections it accepts into `accepted`.
pub async fn serve_receiver_counting(app: axum::Router, accepted: Arc<AtomicUsize>) -> String {
    serve_receiver_on(0, app, accepted).await
}

/// [`serve_receiver_counting`] on `port` (0: any free one).
async fn serve_receiver_on(port: u16, app: axum::Router, accepted: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("receiver port");
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let listener = listener.tap_io(move |_| {
        accepted.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A real HTTP endpoint on 127.0.0.1:0 that records every request. It answers from its script
/// first, then with its default (200 unless changed).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let url = serve_receiver(app).await;
        Receiver { url, state }
    }

    /// Answers every later request with `reply`.
    pub fn always(&self, reply: Reply) {
        let mut state = self.state.lock().unwrap();
        state.default = Some(reply);
        state.script.clear();
    }

    /// Answers the next requests with `replies`, in order, then with the default.
    pub fn script(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Waits until at least `n` requests arrived, within `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        wait_until(&format!("{n} requests at {}", self.url), limit, || async {
            self.count() >= n
        })
        .await;
        self.received()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        s.script
            .pop_front()
            .or(s.default)
            .unwrap_or(Reply::Status(200))
    };
    let status = match reply {
        Reply::Status(code) => code,
        Reply::Slow(pause, code) => {
            tokio::time::sleep(pause).await;
            code
        }
    };
    StatusCode::from_u16(status).expect("valid status")
}

/// Whether `secret` verifies `received` the way a receiver would, with the stock Standard
/// Webhooks library.
pub fn signature_verifies(secret: &str, received: &Received) -> bool {
    let wh = standardwebhooks::Webhook::new(secret).expect("secret parses");
    let mut headers = HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, received.header(name).parse().expect("header value"));
    }
    wh.verify(&received.body, &headers).is_ok()
}

/// Verifies a request the way a receiver would, with the stock Standard Webhooks library.
pub fn verify_signature(secret: &str, received: &Received) {
    assert!(
        signature_verifies(secret, received),
        "signature verifies with the standardwebhooks crate"
    );
}

/// An HTTP endpoint that counts deliveries per `webhook-id`, so duplicates show.
#[derive(Clone)]
pub struct CountingReceiver {
    pub url: String,
    state: Arc<Counts>,
}

struct Counts {
    per_id: Mutex<HashMap<String, u32>>,
    total: AtomicUsize,
    /// Requests received and not answered yet.
    in_progress: AtomicUsize,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    status: StatusCode,
    delay: Duration,
}

impl CountingReceiver {
    /// Answers every request with `status` after `delay`.
    pub async fn start(status: u16, delay: Duration) -> CountingReceiver {
        CountingReceiver::start_on(0, status, delay).await
    }

    /// [`start`](Self::start) on `port` (0: any free one): an endpoint that comes back where a
    /// subscription expects it.
    pub async fn start_on(port: u16, status: u16, delay: Duration) -> CountingReceiver {
        let state = Arc::new(Counts {
            per_id: Mutex::default(),
            total: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            status: StatusCode::from_u16(status).expect("status"),
            delay,
        });
        let app = axum::Router::new()
            .fallback(count)
            .with_state(state.clone());
        let url = serve_receiver_on(port, app, state.connections.clone()).await;
        CountingReceiver { url, state }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Distinct `webhook-id`s received.
    pub fn distinct(&self) -> usize {
        self.state.per_id.lock().unwrap().len()
    }

    /// Requests received.
    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests received and not answered yet: deliveries in flight right now.
    pub fn in_progress(&self) -> usize {
        self.state.in_progress.load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> HashMap<String, u32> {
        self.state.per_id.lock().unwrap().clone()
    }

    /// Waits until `n` distinct ids arrived; a timeout says how many did (and how many requests
    /// there were), so a failure tells a stall from a loss.
    pub async fn wait_distinct(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.distinct() < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {n} distinct deliveries at {}: {} distinct arrived, {} requests, {} in progress",
                self.url,
                self.distinct(),
                self.total(),
                self.in_progress()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn count(State(state): State<Arc<Counts>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    *state.per_id.lock().unwrap().entry(id).or_default() += 1;
    state.total.fetch_add(1, Ordering::SeqCst);
    state.in_progress.fetch_add(1, Ordering::SeqCst);
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    state.in_progress.fetch_sub(1, Ordering::SeqCst);
    state.status
}

/// `n` unique event ids for one test.
pub fn event_ids(label: &str, n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| format!("evt_{label}_{}_{i:05}", &run[..8]))
        .collect()
}

/// The account every load event belongs to.
pub const LOAD_ACCOUNT: &str = "acct_load";
