//! Fairness across accounts: what the dispatcher holds (its intake window, up to `PREFETCH`
//! messages) waits in one lane per account, and the next message to start is taken from the
//! lanes in turn. One account's burst fills its own lane; another account's event joins a short
//! lane and starts at the next turn, instead of behind the whole burst.
//!
//! The window is deep so a burst leaves the broker's queue quickly and the events behind it
//! reach their lanes. When it fills up anyway (by count or by bytes), the accounts holding more
//! than their share have their next messages parked: put back in the first delay queue
//! (confirmed, then acked), from where they return to the events queue — so the window keeps
//! moving and a quiet account's event is never stuck in the broker behind a noisy one's.

use std::collections::{HashMap, VecDeque};

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
    waiting: VecDeque<(T, usize)>,
    bytes: usize,
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
        }
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
            .any(|lane| lane.waiting.iter().any(|(message, _)| which(message)))
    }

    fn has_room(&self, account: &str) -> bool {
        self.under_way.get(account).copied().unwrap_or(0) < self.per_account
    }

    /// Queues `message` (of `bytes`) in `account`'s lane.
    pub fn push(&mut self, account: String, message: T, bytes: usize) {
        let lane = self.lanes.entry(account.clone()).or_insert_with(|| Lane {
            waiting: VecDeque::new(),
            bytes: 0,
        });
        let first = lane.waiting.is_empty();
        lane.waiting.push_back((message, bytes));
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
        let (message, bytes) = lane.waiting.pop_front().expect("a turn has a message");
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
