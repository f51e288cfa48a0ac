//! The gatherer's window, and its timing on paused time with a stand-in message.

use super::*;
use std::sync::Mutex;
use tokio::time::Instant;

/// Each ack the gatherer sent: through which tag, `multiple` or alone, and when.
type Sent = Arc<Mutex<Vec<(u64, bool, Instant)>>>;

struct StandIn {
    tag: u64,
    sent: Sent,
}

impl Ackable for StandIn {
    fn tag(&self) -> u64 {
        self.tag
    }

    async fn ack(&self, multiple: bool) -> bool {
        self.sent
            .lock()
            .unwrap()
            .push((self.tag, multiple, Instant::now()));
        true
    }
}

/// A gatherer on stand-in messages (window 512) that has been handed `received`, with where
/// its acks are noted, and the time it started.
struct Gathering {
    acks: Acks<StandIn>,
    sent: Sent,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

impl Gathering {
    fn after_receiving(received: &[u64]) -> Gathering {
        let (acks, gather) = Acks::start_with(Metrics::new(), 512, 0);
        for &tag in received {
            acks.received(tag);
        }
        Gathering {
            acks,
            sent: Sent::default(),
            task: tokio::spawn(gather),
            start: Instant::now(),
        }
    }

    fn settle(&self, tag: u64) {
        self.acks.settled(stand_in(tag, &self.sent));
    }

    fn sent(&self) -> Vec<(u64, bool, Instant)> {
        self.sent.lock().unwrap().clone()
    }

    /// Drops the handle and waits for the gatherer to finish.
    async fn stop(self) {
        drop(self.acks);
        self.task.await.unwrap();
    }
}

fn stand_in(tag: u64, sent: &Sent) -> StandIn {
    StandIn {
        tag,
        sent: sent.clone(),
    }
}

/// Lets the gatherer run until it waits on the clock (time is paused: nothing advances it).
async fn let_it_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_settled_message_with_nothing_else_under_way_is_acked_at_once() {
    let g = Gathering::after_receiving(&[1]);
    let_it_run().await;
    g.settle(1);
    let_it_run().await;
    assert_eq!(
        g.sent(),
        vec![(1, true, g.start)],
        "acked before any time passed, not at the end of a round"
    );
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn settled_messages_wait_for_the_round_while_another_is_under_way() {
    let g = Gathering::after_receiving(&[1, 2, 3]);
    g.settle(1);
    let_it_run().await;
    assert!(g.sent().is_empty(), "2 and 3 are under way");
    tokio::time::sleep(GATHER / 2).await;
    g.settle(2);
    let_it_run().await;
    assert!(g.sent().is_empty(), "3 is still under way");
    tokio::time::sleep(GATHER).await;
    assert_eq!(
        g.sent(),
        vec![(2, true, g.start + GATHER)],
        "one ack through 2 for both, at the end of the round"
    );
    g.settle(3);
    let_it_run().await;
    assert_eq!(
        g.sent().last(),
        Some(&(3, true, g.start + GATHER + GATHER / 2)),
        "3 was the last under way: acked at once"
    );
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn what_waits_above_a_message_held_up_goes_alone_and_that_message_at_once() {
    let g = Gathering::after_receiving(&[1, 2, 3]);
    g.settle(2);
    g.settle(3);
    // The first round (one `GATHER` in) finds 1 under way; it stays there.
    let alone_at = g.start + GATHER + HOLD;
    tokio::time::sleep_until(alone_at - GATHER).await;
    assert!(
        g.sent().is_empty(),
        "1 has not stayed under way for HOLD yet"
    );
    tokio::time::sleep_until(alone_at + GATHER / 2).await;
    assert_eq!(
        g.sent(),
        vec![(2, false, alone_at), (3, false, alone_at)],
        "1 stayed under way for HOLD: 2 and 3 went alone"
    );
    g.settle(1);
    let_it_run().await;
    assert_eq!(
        g.sent().last(),
        Some(&(1, true, alone_at + GATHER / 2)),
        "1 was the last under way: acked at once"
    );
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn what_waits_above_a_gap_that_closes_within_the_hold_goes_in_one_ack() {
    let g = Gathering::after_receiving(&[1, 2, 3]);
    g.settle(2);
    g.settle(3);
    tokio::time::sleep(HOLD / 2).await;
    assert!(g.sent().is_empty(), "1 is under way");
    g.settle(1);
    let_it_run().await;
    assert_eq!(
        g.sent(),
        vec![(3, true, g.start + HOLD / 2)],
        "no ack alone: one through 3 once 1 settled"
    );
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_message_handed_back_last_lets_the_settled_ones_go_at_once() {
    let g = Gathering::after_receiving(&[1, 2]);
    g.settle(2);
    let_it_run().await;
    g.acks.handed_back(1);
    let_it_run().await;
    assert_eq!(g.sent(), vec![(2, true, g.start)]);
    g.stop().await;
}

/// A deep window (nothing [`SHALLOW`]) with no report or half-window limit, handed `received`.
fn window(received: &[u64]) -> Window<u64> {
    window_with(usize::MAX, usize::MAX, 0, received.iter().copied())
}

/// A window of `Window::new(min_costly, enough, shallow)` handed `received`.
fn window_with(
    min_costly: usize,
    enough: usize,
    shallow: usize,
    received: impl IntoIterator<Item = u64>,
) -> Window<u64> {
    let mut w = Window::new(min_costly, enough, shallow);
    for tag in received {
        w.received(tag);
    }
    w
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn settled_messages_below_every_one_under_way_go_in_one_ack() {
    let t = Instant::now();
    let mut w = window(&[1, 2, 3, 4, 5]);
    for tag in [3, 1, 2] {
        w.settled(tag, tag, t);
    }
    let round = w.round(false, t);
    assert_eq!(round.through, Some(3));
    assert_eq!(round.covered, vec![1, 2]);
    assert!(round.alone.is_empty());
    assert_eq!(w.round(false, t), Round::default(), "nothing left to send");
}

#[test]
fn nothing_is_acked_through_a_message_under_way_and_what_waits_above_it_goes_alone_once_it_stays() {
    let t = Instant::now();
    let mut w = window(&[1, 2, 3]);
    w.settled(2, 2, t);
    w.settled(3, 3, t);
    assert_eq!(
        w.round(false, t),
        Round::default(),
        "1 is under way: 2 and 3 wait"
    );
    assert_eq!(w.round(false, t + HOLD - ms(1)), Round::default());
    // 1 stayed under way for HOLD: they go alone, still not through 1.
    let round = w.round(false, t + HOLD);
    assert_eq!(round.through, None);
    assert_eq!(round.alone, vec![2, 3]);
    w.settled(1, 1, t + HOLD);
    let round = w.round(false, t + HOLD);
    assert_eq!(round.through, Some(1));
    assert!(round.covered.is_empty() && round.alone.is_empty());
}

#[test]
fn a_message_settled_above_gaps_that_keep_moving_waits_at_most_max_hold() {
    // 12 settles first; 1 to 10 settle one by one, each a gap for less than HOLD.
    let t = Instant::now();
    let mut w = window(&(1..=12).collect::<Vec<_>>());
    w.settled(12, 12, t);
    assert_eq!(w.round(false, t), Round::default());
    let step = MAX_HOLD / 10;
    assert!(step < HOLD);
    for tag in 1..=10u32 {
        let now = t + step * tag;
        w.settled(u64::from(tag), u64::from(tag), now);
        let round = w.round(false, now);
        assert_eq!(round.through, Some(u64::from(tag)), "the gap moved up");
        if tag < 10 {
            assert!(round.alone.is_empty(), "12 waits while the gap moves");
        } else {
            assert_eq!(round.alone, vec![12], "12 waited MAX_HOLD");
        }
    }
}

#[test]
fn in_a_shallow_window_what_waits_above_a_gap_goes_alone_after_a_round() {
    let t = Instant::now();
    let mut w = window_with(usize::MAX, usize::MAX, 4, 1..=3);
    w.settled(2, 2, t);
    assert_eq!(w.round(false, t), Round::default(), "2 waits a round");
    assert_eq!(
        w.round(false, t + GATHER).alone,
        vec![2],
        "3 unacked, fewer than 4: a lone ack is cheap"
    );
}

#[test]
fn half_the_window_waiting_above_a_gap_goes_alone_at_once() {
    let t = Instant::now();
    let mut w = window_with(usize::MAX, 2, 0, 1..=4);
    w.settled(2, 2, t);
    assert_eq!(w.round(false, t), Round::default());
    w.settled(3, 3, t);
    assert_eq!(
        w.round(false, t).alone,
        vec![2, 3],
        "two wait: the window must move"
    );
}

#[test]
fn a_message_handed_back_is_never_acked_and_no_longer_holds_the_others() {
    let t = Instant::now();
    let mut w = window(&[1, 2, 3]);
    w.settled(2, 2, t);
    w.handed_back(1);
    w.settled(3, 3, t);
    let round = w.round(false, t);
    assert_eq!(round.through, Some(3));
    assert_eq!(round.covered, vec![2]);
}

#[test]
fn the_last_round_acks_alone_what_waits_above_a_message_never_settled() {
    // 2 waited in its lane when the consumer stopped: it is left for the broker to hand out
    // again, and what was settled after it is acked alone.
    let t = Instant::now();
    let mut w = window(&[1, 2, 3, 4]);
    w.settled(1, 1, t);
    w.settled(3, 3, t);
    w.settled(4, 4, t);
    let round = w.round(true, t);
    assert_eq!(round.through, Some(1));
    assert_eq!(round.alone, vec![3, 4]);
    assert!(w.is_idle());
}

/// Settles `tags` above the gap at `now`, has a round see them, and the round a `HOLD` later,
/// after which they are acked alone; the two rounds' sends together.
fn settle_above_the_gap(w: &mut Window<u64>, tags: &[u64], now: &mut Instant) -> Round<u64> {
    for &tag in tags {
        w.settled(tag, tag, *now);
    }
    let first = w.round(false, *now);
    *now += HOLD;
    let mut round = w.round(false, *now);
    round.alone.splice(0..0, first.alone);
    round.costly = first.costly.or(round.costly);
    round
}

#[test]
fn a_gap_is_reported_once_when_as_many_as_are_under_way_were_acked_alone_above_it() {
    let mut now = Instant::now();
    let mut w = window_with(2, usize::MAX, 0, 1..=4);
    // 1 hangs; what settles above it goes alone.
    let round = settle_above_the_gap(&mut w, &[2, 3], &mut now);
    assert_eq!(round.alone, vec![2, 3]);
    assert_eq!(
        round.costly,
        Some(1),
        "2 alone above 1, and 2 under way (1 and 4)"
    );
    let round = settle_above_the_gap(&mut w, &[4], &mut now);
    assert_eq!(round.alone, vec![4]);
    assert_eq!(round.costly, None, "reported once");

    // 1 settles; a new gap counts afresh.
    w.settled(1, 1, now);
    assert_eq!(w.round(false, now).through, Some(1));
    for tag in 5..=7 {
        w.received(tag);
    }
    let round = settle_above_the_gap(&mut w, &[6], &mut now);
    assert_eq!(round.alone, vec![6]);
    assert_eq!(round.costly, None, "1 alone above 5, fewer than 2");
    let round = settle_above_the_gap(&mut w, &[7], &mut now);
    assert_eq!(
        round.costly,
        Some(5),
        "2 alone above 5, 1 under way: at least the minimum"
    );
}

#[test]
fn a_gap_under_many_messages_under_way_is_reported_only_once_as_many_went_alone() {
    let mut now = Instant::now();
    let mut w = window_with(1, usize::MAX, 0, 1..=10);
    let round = settle_above_the_gap(&mut w, &[2, 3, 4], &mut now);
    assert_eq!(round.alone.len(), 3);
    assert_eq!(round.costly, None, "3 alone, 7 still under way");
    let round = settle_above_the_gap(&mut w, &[5, 6, 7], &mut now);
    assert_eq!(round.costly, Some(1), "6 alone, 4 under way");
}

#[tokio::test(start_paused = true)]
async fn the_gatherer_reports_the_costly_gap_to_whoever_waits_for_it() {
    let (acks, gather) = Acks::start_with(Metrics::new(), 512, 0);
    let sent = Sent::default();
    let task = tokio::spawn(gather);
    let last = MIN_COSTLY as u64 + 1;
    for tag in 1..=last {
        acks.received(tag);
    }
    for tag in 2..=last {
        acks.settled(stand_in(tag, &sent));
    }
    let gap = tokio::time::timeout(HOLD + GATHER * 10, acks.costly_gap()).await;
    assert_eq!(gap.ok(), Some(1), "{MIN_COSTLY} acked alone above 1");
    assert_eq!(acks.under_way(), 1);
    drop(acks);
    task.await.unwrap();
}
