//! The window's rule, round by round, on plain tags.

use std::time::Duration;

use tokio::time::Instant;

use super::{Round, Window};
use crate::dispatcher::acks::{GATHER, HOLD, MAX_HOLD, MOVE_GRACE, RETIRED_HOLD};

/// A deep window (nothing `SHALLOW`) with no report or half-window limit, handed `received`.
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

#[test]
fn a_gap_that_stays_is_reported_before_anything_goes_alone_which_then_waits_for_the_move() {
    let t = Instant::now();
    let mut w = window_with(2, usize::MAX, 0, 1..=4);
    // 1 hangs; 2 and 3 settle above it.
    w.settled(2, 2, t);
    w.settled(3, 3, t);
    assert_eq!(w.round(false, t), Round::default());
    let round = w.round(false, t + HOLD);
    assert_eq!(
        round.costly,
        Some(1),
        "1 stayed HOLD with 2 waiting above it"
    );
    assert!(
        round.alone.is_empty(),
        "reported, not yet alone: a move spares them"
    );
    let round = w.round(false, t + HOLD + MOVE_GRACE - ms(1));
    assert_eq!(round, Round::default(), "the move's grace; reported once");
    let round = w.round(false, t + HOLD + MOVE_GRACE);
    assert_eq!(round.alone, vec![2, 3], "no move came: alone");
    w.settled(4, 4, t + HOLD + MOVE_GRACE);
    assert_eq!(w.round(false, t + HOLD + MOVE_GRACE).alone, vec![4]);

    // 1 settles; a new gap counts afresh, what went alone above it too.
    let mut now = t + HOLD + MOVE_GRACE;
    w.settled(1, 1, now);
    assert_eq!(w.round(false, now).through, Some(1));
    for tag in 5..=7 {
        w.received(tag);
    }
    w.settled(6, 6, now);
    assert_eq!(w.round(false, now), Round::default());
    now += HOLD;
    let round = w.round(false, now);
    assert_eq!(round.costly, None, "one above 5, fewer than 2");
    assert_eq!(
        round.alone,
        vec![6],
        "not reported: alone once it stayed HOLD"
    );
    w.settled(7, 7, now);
    let round = w.round(false, now);
    assert_eq!(round.costly, Some(5), "one alone and one waiting above 5");
    assert!(round.alone.is_empty(), "7 waits for the move");
}

#[test]
fn a_gap_long_under_way_gives_the_move_its_grace_from_the_report() {
    // 1 has been under way for long when others start settling above it.
    let t = Instant::now();
    let mut w = window_with(2, usize::MAX, 0, 1..=3);
    assert_eq!(w.round(false, t), Round::default());
    let later = t + MAX_HOLD * 3;
    w.settled(2, 2, later);
    let round = w.round(false, later);
    assert_eq!(
        round.alone,
        vec![2],
        "one above it: not worth a move, alone"
    );
    w.settled(3, 3, later);
    let round = w.round(false, later);
    assert_eq!(round.costly, Some(1));
    assert!(round.alone.is_empty(), "3 waits MOVE_GRACE from the report");
    assert_eq!(w.round(false, later + MOVE_GRACE).alone, vec![3]);
}

#[test]
fn a_retired_channel_holds_what_waits_above_a_gap_until_it_closes() {
    let t = Instant::now();
    // Half the window is two, the gap would be reported at one.
    let mut w = window_with(1, 2, 0, 1..=6);
    w.retire();
    for tag in [2, 3, 4] {
        w.settled(tag, tag, t);
    }
    for after in [
        ms(0),
        HOLD,
        HOLD + MOVE_GRACE,
        MAX_HOLD,
        RETIRED_HOLD - ms(1),
    ] {
        assert_eq!(
            w.round(false, t + after),
            Round::default(),
            "{after:?}: past HOLD, MAX_HOLD and half the window, nothing alone and no report"
        );
    }
    w.settled(1, 1, t + RETIRED_HOLD - ms(1));
    let round = w.round(false, t + RETIRED_HOLD - ms(1));
    assert_eq!(round.through, Some(4), "the gap closed: one ack for all");
    assert_eq!(round.covered, vec![1, 2, 3]);
    assert!(round.alone.is_empty());

    // Above a gap that outlasts RETIRED_HOLD: alone then; the last round: alone at once.
    let now = t + RETIRED_HOLD;
    w.settled(6, 6, now);
    assert_eq!(w.round(false, now + RETIRED_HOLD - ms(1)), Round::default());
    assert_eq!(w.round(false, now + RETIRED_HOLD).alone, vec![6]);
    w.received(7);
    w.settled(7, 7, now);
    assert_eq!(w.round(true, now).alone, vec![7]);
}
