//! Fairness across accounts: what the dispatcher holds (its intake window, up to `PREFETCH`
//! messages) waits in one lane per account, and the next message to start is taken from the
//! lanes in turn. One account's burst fills its own lane; another account's event joins a short
//! lane and starts at the next turn, instead of behind the whole burst.
//!
//! The window is deep so a burst leaves the broker's queue quickly and the events behind it
//! reach their lanes. When it fills up anyway (by count or by bytes), the accounts holding more
//! than their share have their next messages parked: put back in the first delay queue
//! (confirmed, then acked), from where they return to the events queue — so the window keeps
//! moving and a quiet account's event is not stuck in the broker behind a noisy one's. Only an
//! account whose lane is slower to turn over than that delay is parked by count (its oldest
//! waiting message has waited at least as long, [`Lanes::waited`]): a lane that drains sooner
//! moves the window as fast as parking would, and parking it only sends its messages round the
//! delay queue and back to the end of the events queue.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::broker::Inbound;

/// The account a message is for, read from its body without validating the rest: an inbound
/// event's `account_id` or a task's. A body that does not say shares the lane `""`.
pub fn account_of(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Account<'a> {
        #[serde(borrow, default)]
        account_id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Account>(body)
        .ok()
        .and_then(|a| a.account_id)
        .map(|a| a.into_owned())
        .unwrap_or_default()
}

struct Lane<T> {
    waiting: VecDeque<Waiting<T>>,
    bytes: usize,
}

/// A message in its lane: its size, and when it joined the lane (milliseconds since the lanes
/// began, wrapping: only differences of less than 49 days are read). Two `u32`s, so a message
/// waiting costs no more than it did with its size alone as a `usize`.
struct Waiting<T> {
    message: T,
    bytes: u32,
    since: u32,
}

/// Messages waiting to start, one FIFO lane per account, taken in turn; an account with
/// `per_account` messages under way waits for one of them to finish before its next starts (so
/// one account's backlog waits here, in order, rather than as deliveries queueing for their
/// endpoint's slots and being deferred for seconds).
pub struct Lanes<T = Inbound> {
    lanes: HashMap<String, Lane<T>>,
    /// Accounts with waiting messages and room to start one, in the order their turns come.
    turns: VecDeque<String>,
    /// Messages under way per account (started, not finished).
    under_way: HashMap<String, usize>,
    per_account: usize,
    len: usize,
    bytes: usize,
    /// What each message's `since` counts from.
    epoch: Instant,
}

impl<T> Lanes<T> {
    pub fn new(per_account: usize) -> Lanes<T> {
        Lanes {
            lanes: HashMap::new(),
            turns: VecDeque::new(),
            under_way: HashMap::new(),
            per_account: per_account.max(1),
            len: 0,
            bytes: 0,
            epoch: Instant::now(),
        }
    }

    fn millis(&self, at: Instant) -> u32 {
        // Wraps after 49 days; `waited` subtracts wrapping too.
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a message can start now.
    pub fn ready(&self) -> bool {
        !self.turns.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether any waiting message is `which`.
    pub fn holds(&self, which: impl Fn(&T) -> bool) -> bool {
        self.lanes
            .values()
            .any(|lane| lane.waiting.iter().any(|w| which(&w.message)))
    }

    fn has_room(&self, account: &str) -> bool {
        self.under_way.get(account).copied().unwrap_or(0) < self.per_account
    }

    /// Queues `message` (of `bytes`) in `account`'s lane.
    pub fn push(&mut self, account: String, message: T, bytes: usize) {
        self.push_at(account, message, bytes, Instant::now());
    }

    fn push_at(&mut self, account: String, message: T, bytes: usize, now: Instant) {
        let since = self.millis(now);
        let lane = self.lanes.entry(account.clone()).or_insert_with(|| Lane {
            waiting: VecDeque::new(),
            bytes: 0,
        });
        let first = lane.waiting.is_empty();
        // An inbound message is at most 256 KiB (a larger one is still held, to be rejected).
        let size = u32::try_from(bytes).unwrap_or(u32::MAX);
        let bytes = size as usize;
        lane.waiting.push_back(Waiting {
            message,
            bytes: size,
            since,
        });
        lane.bytes += bytes;
        self.len += 1;
        self.bytes += bytes;
        if first && self.has_room(&account) {
            self.turns.push_back(account);
        }
    }

    /// The next message to start, and its account: the head of the lane whose turn it is.
    pub fn pop(&mut self) -> Option<(String, T)> {
        let account = self.turns.pop_front()?;
        let lane = self.lanes.get_mut(&account).expect("a turn has a lane");
        let Waiting { message, bytes, .. } =
            lane.waiting.pop_front().expect("a turn has a message");
        let bytes = bytes as usize;
        lane.bytes -= bytes;
        self.len -= 1;
        self.bytes -= bytes;
        let more = !lane.waiting.is_empty();
        if !more {
            self.lanes.remove(&account);
        }
        *self.under_way.entry(account.clone()).or_default() += 1;
        if more && self.has_room(&account) {
            self.turns.push_back(account.clone());
        }
        Some((account, message))
    }

    /// A message of `account` that [`pop`](Self::pop) gave out has finished.
    pub fn finished(&mut self, account: &str) {
        let Some(n) = self.under_way.get_mut(account) else {
            return;
        };
        let was_full = *n >= self.per_account;
        *n -= 1;
        if *n == 0 {
            self.under_way.remove(account);
        }
        if was_full && self.lanes.contains_key(account) {
            self.turns.push_back(account.to_string());
        }
    }

    /// Whether `account` holds more than an even share of what waits (by count or by bytes):
    /// when the window is full, its messages are the ones parked.
    pub fn over_share(&self, account: &str) -> bool {
        let Some(lane) = self.lanes.get(account) else {
            return false;
        };
        let accounts = self.lanes.len();
        lane.waiting.len() * accounts >= self.len || lane.bytes * accounts >= self.bytes
    }

    /// How long the oldest message waiting in `account`'s lane has waited: about how long the
    /// lane takes to turn over (zero when nothing of it waits).
    pub fn waited(&self, account: &str) -> Duration {
        self.waited_at(account, Instant::now())
    }

    fn waited_at(&self, account: &str, now: Instant) -> Duration {
        let Some(oldest) = self.lanes.get(account).and_then(|l| l.waiting.front()) else {
            return Duration::ZERO;
        };
        Duration::from_millis(u64::from(self.millis(now).wrapping_sub(oldest.since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(lanes: &mut Lanes<String>) -> Option<String> {
        lanes.pop().map(|(_, m)| m)
    }

    #[test]
    fn lanes_take_turns_and_keep_each_accounts_order() {
        let mut lanes = Lanes::new(100);
        for i in 0..5 {
            lanes.push("a".into(), format!("a{i}"), 10);
        }
        lanes.push("b".into(), "b0".to_string(), 10);
        assert_eq!(pop(&mut lanes).as_deref(), Some("a0"));
        assert_eq!(
            pop(&mut lanes).as_deref(),
            Some("b0"),
            "b's turn comes next"
        );
        lanes.push("c".into(), "c0".to_string(), 10);
        lanes.push("b".into(), "b1".to_string(), 10);
        let rest: Vec<String> = std::iter::from_fn(|| pop(&mut lanes)).collect();
        assert_eq!(rest, ["a1", "c0", "b1", "a2", "a3", "a4"]);
        assert!(lanes.is_empty());
        assert_eq!(lanes.bytes(), 0);
    }

    #[test]
    fn an_account_at_its_limit_waits_for_one_to_finish_and_others_go_on() {
        let mut lanes = Lanes::new(2);
        for i in 0..4 {
            lanes.push("a".into(), format!("a{i}"), 1);
        }
        lanes.push("b".into(), "b0".to_string(), 1);
        let started: Vec<String> = std::iter::from_fn(|| pop(&mut lanes)).collect();
        assert_eq!(started, ["a0", "b0", "a1"], "a stops at two under way");
        assert!(!lanes.ready());
        assert_eq!(lanes.len(), 2);
        lanes.finished("b");
        assert!(!lanes.ready(), "b has nothing waiting");
        lanes.finished("a");
        assert_eq!(pop(&mut lanes).as_deref(), Some("a2"));
        assert!(!lanes.ready());
        lanes.finished("a");
        lanes.finished("a");
        assert_eq!(pop(&mut lanes).as_deref(), Some("a3"));
        lanes.finished("a");
        assert!(lanes.is_empty() && !lanes.ready());
        lanes.finished("nobody");
    }

    #[test]
    fn the_account_holding_more_than_its_share_is_over_it() {
        let mut lanes = Lanes::new(100);
        for i in 0..8 {
            lanes.push("noisy".into(), i, 100);
        }
        lanes.push("quiet".into(), 8, 100);
        assert!(lanes.over_share("noisy"));
        assert!(!lanes.over_share("quiet"));
        assert!(!lanes.over_share("absent"));
        // A few big messages are over their share by bytes.
        lanes.push("big".into(), 9, 10_000);
        assert!(lanes.over_share("big"));
    }

    #[test]
    fn a_lane_has_waited_as_long_as_its_oldest_message() {
        let mut lanes = Lanes::new(1);
        let t0 = lanes.epoch + Duration::from_secs(10);
        assert_eq!(lanes.waited_at("a", t0), Duration::ZERO, "no lane");
        lanes.push_at("a".into(), "a0".to_string(), 1, t0);
        lanes.push_at(
            "a".into(),
            "a1".to_string(),
            1,
            t0 + Duration::from_millis(300),
        );
        lanes.push_at(
            "a".into(),
            "a2".to_string(),
            1,
            t0 + Duration::from_millis(500),
        );
        lanes.push_at(
            "b".into(),
            "b0".to_string(),
            1,
            t0 + Duration::from_millis(900),
        );
        let now = t0 + Duration::from_millis(1_000);
        assert_eq!(lanes.waited_at("a", now), Duration::from_millis(1_000));
        assert_eq!(lanes.waited_at("b", now), Duration::from_millis(100));
        assert_eq!(lanes.waited_at("absent", now), Duration::ZERO);
        // a0 starts: the lane's oldest is now a1; a1 and a2 wait for a0 to finish (one under way).
        assert_eq!(pop(&mut lanes).as_deref(), Some("a0"));
        assert_eq!(lanes.waited_at("a", now), Duration::from_millis(700));
        assert_eq!(pop(&mut lanes).as_deref(), Some("b0"));
        assert_eq!(
            lanes.waited_at("b", now),
            Duration::ZERO,
            "b's lane is empty"
        );
        lanes.finished("a");
        assert_eq!(pop(&mut lanes).as_deref(), Some("a1"));
        assert_eq!(lanes.waited_at("a", now), Duration::from_millis(500));
        // Past the 49 days a `u32` of milliseconds holds, ages still come out right.
        let late = lanes.epoch + Duration::from_millis(u64::from(u32::MAX) + 10);
        lanes.push_at(
            "c".into(),
            "c0".to_string(),
            1,
            late - Duration::from_millis(20),
        );
        assert_eq!(lanes.waited_at("c", late), Duration::from_millis(20));
    }

    #[test]
    fn the_account_is_read_from_events_and_tasks_alike() {
        assert_eq!(
            account_of(br#"{"event":"purchase","account_id":"acct_1","data":{}}"#),
            "acct_1"
        );
        assert_eq!(
            account_of(br#"{"event_id":"e","account_id":"acct_\u0032","subscription_id":"s"}"#),
            "acct_2"
        );
        assert_eq!(account_of(b"not json"), "");
        assert_eq!(account_of(br#"{"account_id":7}"#), "");
        assert_eq!(account_of(br#"{"event":"purchase"}"#), "");
    }
}
