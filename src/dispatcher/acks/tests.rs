//! The gatherer's timing on paused time with a stand-in message (the window's rule round by
//! round: `window/tests.rs`).

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

/// A gatherer on stand-in messages that has been handed `received`, with where its acks are
/// noted, and the time it started.
struct Gathering {
    acks: Acks<StandIn>,
    sent: Sent,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

impl Gathering {
    /// Window 512.
    fn after_receiving(received: &[u64]) -> Gathering {
        Gathering::in_window(512, received.iter().copied())
    }

    fn in_window(window: usize, received: impl IntoIterator<Item = u64>) -> Gathering {
        let (acks, gather) = Acks::start_with(Metrics::new(), window, 0);
        for tag in received {
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

#[tokio::test(start_paused = true)]
async fn the_gatherer_reports_the_costly_gap_to_whoever_waits_for_it() {
    let g = gap_under(MIN_COSTLY as u64 + 1).await;
    assert_eq!(g.acks.under_way(), 1);
    assert!(
        g.sent().is_empty(),
        "{MIN_COSTLY} wait above 1, none went alone"
    );
    g.stop().await;
}

/// A gatherer (window 4,096: half of it never reached here, and never shallow) on `1..=last`, every
/// message but 1 settled, once it has reported 1: 1 hangs with everything above it.
async fn gap_under(last: u64) -> Gathering {
    let g = Gathering::in_window(4096, 1..=last);
    for tag in 2..=last {
        g.settle(tag);
    }
    let gap = tokio::time::timeout(HOLD + GATHER * 10, g.acks.costly_gap()).await;
    assert_eq!(gap.ok(), Some(1), "reported with {} above it", last - 1);
    g
}

#[tokio::test(start_paused = true)]
async fn a_move_spares_every_lone_ack_what_settled_on_the_old_channel_goes_in_one_ack() {
    let last = MIN_COSTLY as u64 + 44;
    let g = gap_under(last).await;
    // The dispatcher moved away: the channel is retired.
    g.acks.retire();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        g.sent().is_empty(),
        "10 s on, nothing acked alone: {:?}",
        g.sent().first()
    );
    g.settle(1);
    let_it_run().await;
    assert_eq!(g.sent().len(), 1, "one ack");
    assert_eq!(g.sent()[0].0, last);
    assert!(g.sent()[0].1, "multiple");
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_no_move_what_waits_above_a_reported_gap_goes_alone_after_the_grace() {
    let last = MIN_COSTLY as u64 + 44;
    let g = gap_under(last).await;
    let reported = Instant::now();
    tokio::time::sleep(MOVE_GRACE - GATHER * 2).await;
    assert!(g.sent().is_empty(), "within the grace");
    tokio::time::sleep(GATHER * 4).await;
    let sent = g.sent();
    assert_eq!(
        sent.len() as u64,
        last - 1,
        "all alone once the grace is over"
    );
    assert!(
        sent.iter()
            .all(|&(_, multiple, at)| !multiple && at >= reported + MOVE_GRACE)
    );
    g.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_the_hold_of_a_retired_channel() {
    let last = MIN_COSTLY as u64 + 44;
    let g = gap_under(last).await;
    g.acks.retire();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(g.sent().is_empty());
    g.acks.watch().flush();
    tokio::time::sleep(GATHER * 2).await;
    let sent = g.sent();
    assert_eq!(
        sent.len() as u64,
        last - 1,
        "flushed: every settled one alone"
    );
    assert!(sent.iter().all(|&(tag, multiple, _)| tag != 1 && !multiple));
    g.stop().await;
}
