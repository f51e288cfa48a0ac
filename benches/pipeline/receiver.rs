//! The benchmark's receiver: answers 200 at once on `/ok` (counting, and recording publish →
//! receipt latency when asked), hangs past the delivery timeout on `/hang`, answers like `/ok`
//! after 50 ms on `/slow`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

use crate::unix_micros;

/// How long `/slow` takes to answer.
pub const SLOW: Duration = Duration::from_millis(50);
/// Past the service's 10 s `DELIVERY_TIMEOUT`.
const HANG: Duration = Duration::from_secs(11);

#[derive(Default)]
pub struct Counters {
    pub ok: AtomicU64,
    hang: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    pub latencies: Mutex<Option<Vec<u64>>>,
    /// Receipts of events numbered below [`Counters::quiet_from`] (the noisy account's).
    pub ok_noisy: AtomicU64,
    /// Events numbered from here on are the quiet account's: only theirs are timed while set.
    pub quiet_from: AtomicU64,
    /// `/ok` receipts per event (its `seq`), to find duplicates and gaps.
    seen: Mutex<HashMap<u64, u32>>,
    /// When each `/ok` receipt came (µs), with `--timeline`.
    receipts: Mutex<Vec<u64>>,
}

/// Whether receipts are timed for [`Counters::timeline`] (`--timeline`).
pub static TIMELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Receipts per `TIMELINE_STEP_US` in [`Counters::timeline`].
const TIMELINE_STEP_US: u64 = 50_000;

impl Counters {
    pub fn reset(&self) {
        self.ok.store(0, Ordering::SeqCst);
        self.hang.store(0, Ordering::SeqCst);
        self.first_us.store(0, Ordering::SeqCst);
        self.last_us.store(0, Ordering::SeqCst);
        *self.latencies.lock().unwrap() = None;
        self.ok_noisy.store(0, Ordering::SeqCst);
        self.quiet_from.store(0, Ordering::SeqCst);
        self.seen.lock().unwrap().clear();
        self.receipts.lock().unwrap().clear();
    }

    /// `/ok` receipts per 50 ms since the first, with `--timeline` (else `None`): a stall shows
    /// as a run of zeros that the rate over the whole span averages away.
    pub fn timeline(&self) -> Option<Vec<u32>> {
        let mut times = self.receipts.lock().unwrap();
        times.sort_unstable();
        let (first, last) = (*times.first()?, *times.last()?);
        let mut steps = vec![0; ((last - first) / TIMELINE_STEP_US + 1) as usize];
        for t in times.iter() {
            steps[((t - first) / TIMELINE_STEP_US) as usize] += 1;
        }
        Some(steps)
    }

    /// Checks that `/ok` got exactly `each` receipts of every one of `events` events (by their
    /// `seq`) and nothing else: no duplicate slips through a count that only says "enough".
    pub fn assert_exactly(&self, what: &str, events: impl Iterator<Item = u64>, each: u32) {
        let seen = self.seen.lock().unwrap();
        let mut expected = 0;
        for seq in events {
            expected += 1;
            let got = seen.get(&seq).copied().unwrap_or(0);
            assert_eq!(
                got, each,
                "{what}: event {seq} was received {got} times, not {each}"
            );
        }
        assert_eq!(
            seen.len(),
            expected,
            "{what}: receipts of events that were not sent"
        );
    }

    /// Seconds between the first and the last `/ok` receipt.
    pub fn span_secs(&self) -> f64 {
        let (first, last) = (
            self.first_us.load(Ordering::SeqCst),
            self.last_us.load(Ordering::SeqCst),
        );
        (last.saturating_sub(first)) as f64 / 1e6
    }
}

async fn ok(State(c): State<Arc<Counters>>, body: Bytes) -> &'static str {
    let now = unix_micros();
    let _ = c
        .first_us
        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    c.last_us.fetch_max(now, Ordering::SeqCst);
    if TIMELINE.load(Ordering::Relaxed) {
        c.receipts.lock().unwrap().push(now);
    }
    let seq = number_after(&body, "\"seq\":");
    if let Some(seq) = seq {
        *c.seen.lock().unwrap().entry(seq).or_default() += 1;
    }
    c.ok.fetch_add(1, Ordering::SeqCst);
    let quiet_from = c.quiet_from.load(Ordering::SeqCst);
    let timed = quiet_from == 0 || seq.is_some_and(|s| s >= quiet_from);
    if quiet_from > 0 && !timed {
        c.ok_noisy.fetch_add(1, Ordering::SeqCst);
    }
    if timed
        && let Some(lat) = c.latencies.lock().unwrap().as_mut()
        && let Some(sent) = number_after(&body, "\"sent_us\":")
    {
        lat.push(now.saturating_sub(sent));
    }
    "ok"
}

/// `/ok` after [`SLOW`]: an endpoint a long way off (the noisy neighbour's).
async fn slow(state: State<Arc<Counters>>, body: Bytes) -> &'static str {
    tokio::time::sleep(SLOW).await;
    ok(state, body).await
}

async fn hang(State(c): State<Arc<Counters>>) -> &'static str {
    c.hang.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(HANG).await;
    "late"
}

/// The number that follows `key` in the body (`"seq":` or `"sent_us":`).
fn number_after(body: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub async fn start_receiver() -> (SocketAddr, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/hang", post(hang))
        .route("/slow", post(slow))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, counters)
}
