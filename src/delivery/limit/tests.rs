//! The limiter: slots, waits and pauses, and the AIMD rule against simulated endpoints.

use super::aimd::DECREASE_EVERY;
use super::*;

#[tokio::test]
async fn a_full_endpoint_waits_briefly_then_gives_up_and_others_are_independent() {
    let limiter = EndpointLimiter::new(2, None);
    let wait = Duration::from_millis(20);
    let a1 = limiter.acquire("a", wait).await.unwrap();
    let _a2 = limiter.acquire("a", wait).await.unwrap();
    assert_eq!(limiter.in_flight("a"), 2);

    // A slot freed while waiting is taken.
    let release = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(a1);
    };
    let (a3, ()) = tokio::join!(limiter.acquire("a", Duration::from_secs(1)), release);
    assert!(a3.is_ok());

    assert_eq!(
        limiter.acquire("a", wait).await.err(),
        Some(Full::AtLimit),
        "a is full and stays full"
    );
    let _b = limiter.acquire("b", wait).await.expect("b is independent");
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_that_keeps_finishing_is_waited_for_past_the_wait() {
    let limiter = EndpointLimiter::new(1, None);
    let wait = Duration::from_millis(100);
    let held = limiter.acquire("e", Duration::ZERO).await.unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(held);
    };
    let first = async {
        let slot = limiter.acquire("e", wait).await.expect("freed at 60 ms");
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(slot);
    };
    let second = async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let started = Instant::now();
        let got = limiter.acquire("e", wait).await.is_ok();
        (got, started.elapsed())
    };
    let ((), (), (got, waited)) = tokio::join!(release, first, second);
    assert!(got, "the endpoint kept finishing attempts");
    assert!(
        waited > wait,
        "waited {waited:?}, past the {wait:?} of no progress"
    );
}

#[tokio::test]
async fn a_stuck_endpoint_is_refused_at_once_until_it_frees_a_slot() {
    let limiter = EndpointLimiter::new(1, None);
    let held = limiter.acquire("a", Duration::ZERO).await.unwrap();
    assert!(
        limiter
            .acquire("a", Duration::from_millis(10))
            .await
            .is_err(),
        "timed out: now stuck"
    );
    let started = std::time::Instant::now();
    assert!(limiter.acquire("a", Duration::from_secs(5)).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no wait while stuck"
    );
    drop(held);
    assert!(
        limiter.acquire("a", Duration::ZERO).await.is_ok(),
        "a free slot is taken even while marked stuck"
    );
}

/// Drives the limiter as the dispatcher does against a simulated endpoint, a round at a time:
/// each round sends as many attempts as the limit allows and feeds back what the endpoint
/// answers for that many at once.
async fn rounds(
    limiter: &EndpointLimiter,
    n: usize,
    answer: impl Fn(usize) -> Signal,
) -> Vec<usize> {
    let mut limits = Vec::new();
    for _ in 0..n {
        let mut slots = Vec::new();
        while let Ok(slot) = limiter.acquire("e", Duration::ZERO).await {
            slots.push(slot);
        }
        let concurrent = slots.len();
        for slot in slots {
            slot.finished(answer(concurrent));
        }
        limits.push(limiter.limit("e"));
        // Past the decrease spacing, so each round may decrease once.
        tokio::time::sleep(DECREASE_EVERY).await;
    }
    limits
}

#[tokio::test(start_paused = true)]
async fn the_limit_falls_under_429s_and_slowness_and_rises_again_after() {
    let gauge = IntGaugeVec::new(prometheus::Opts::new("l", "l"), &["limit"]).unwrap();
    let limiter = EndpointLimiter::new(64, Some(gauge.clone()));
    let fast = Signal::Success(Duration::from_millis(2));

    // Healthy: stays at the maximum.
    let healthy = rounds(&limiter, 5, |_| fast).await;
    assert_eq!(healthy, [64; 5]);
    assert_eq!(gauge.with_label_values(&["64-127"]).get(), 1);

    // A receiver that takes 4 at a time and answers 429 past that: halved per round until
    // it fits, then hovering around 4.
    let throttled = rounds(&limiter, 12, |n| {
        if n > 4 {
            Signal::Overloaded { retry_after: None }
        } else {
            fast
        }
    })
    .await;
    assert_eq!(&throttled[..4], [32, 16, 8, 4], "{throttled:?}");
    assert!(
        throttled[4..].iter().all(|&l| (2..=5).contains(&l)),
        "{throttled:?}"
    );
    assert_eq!(gauge.with_label_values(&["64-127"]).get(), 0);

    // Recovered: one more slot per round of the limit's attempts, back to the maximum.
    let recovered = rounds(&limiter, 80, |_| fast).await;
    assert!(recovered.windows(2).all(|w| w[0] <= w[1]), "{recovered:?}");
    assert_eq!(recovered.last(), Some(&64), "{recovered:?}");

    // A receiver that queues: 10 ms per request in flight. The limit falls until the
    // latency is back near the baseline, then rises again when it stops queueing.
    let queueing = rounds(&limiter, 60, |n| {
        Signal::Success(Duration::from_millis(10 * n as u64))
    })
    .await;
    let settled = *queueing.last().unwrap();
    assert!(settled <= 8, "{queueing:?}");
    let recovered = rounds(&limiter, 80, |_| fast).await;
    assert_eq!(recovered.last(), Some(&64), "{recovered:?}");
    assert_eq!(
        LIMIT_RANGES
            .iter()
            .map(|r| gauge.with_label_values(&[r]).get())
            .sum::<i64>(),
        1,
        "one endpoint, in one range"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_the_endpoint_for_that_long_at_most_a_minute() {
    let limiter = EndpointLimiter::new(8, None);
    let slot = limiter.acquire("e", Duration::ZERO).await.unwrap();
    slot.finished(Signal::Overloaded {
        retry_after: Some(Duration::from_secs(5)),
    });
    assert_eq!(limiter.limit("e"), 4);
    assert_eq!(
        limiter.acquire("e", Duration::from_secs(1)).await.err(),
        Some(Full::Paused)
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    let slot = limiter
        .acquire("e", Duration::ZERO)
        .await
        .expect("pause over");
    slot.finished(Signal::Overloaded {
        retry_after: Some(Duration::from_secs(3600)),
    });
    tokio::time::advance(MAX_PAUSE - Duration::from_secs(1)).await;
    assert!(limiter.acquire("e", Duration::ZERO).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(limiter.acquire("e", Duration::ZERO).await.is_ok());

    // A 500 says nothing about load.
    let before = limiter.limit("e");
    let slot = limiter.acquire("e", Duration::ZERO).await.unwrap();
    slot.finished(Signal::Other);
    assert_eq!(limiter.limit("e"), before);
}

/// Polls `waiting` once, so it takes its place in the endpoint's queue.
async fn queue<F: Future + Unpin>(waiting: &mut F) {
    tokio::select! {
        biased;
        _ = waiting => panic!("expected to wait for a slot"),
        () = std::future::ready(()) => {}
    }
}

#[tokio::test]
async fn freed_slots_go_to_the_waiters_in_turn_and_a_newcomer_queues_behind_them() {
    let limiter = EndpointLimiter::new(1, None);
    let held = limiter.acquire("e", Duration::ZERO).await.unwrap();
    let order = Mutex::new(Vec::new());
    let wait = Duration::from_secs(5);
    let waiter = |n: usize| {
        let (limiter, order) = (&limiter, &order);
        async move {
            let slot = limiter.acquire("e", wait).await.expect("a turn");
            order.lock().unwrap().push(n);
            // Holds the slot across a turn of the runtime, so the others stay queued.
            tokio::task::yield_now().await;
            drop(slot);
        }
    };
    let newcomer = async {
        tokio::task::yield_now().await;
        // Frees the slot and asks for one at once: the first waiter has been handed it and
        // not yet run, and the newcomer must not take it from under it.
        drop(held);
        assert_eq!(limiter.in_flight("e"), 1, "handed over, not freed");
        waiter(4).await;
    };
    tokio::join!(waiter(1), waiter(2), waiter(3), newcomer);
    assert_eq!(*order.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(limiter.in_flight("e"), 0);
}

#[tokio::test]
async fn a_waiter_cancelled_after_it_was_handed_a_slot_passes_the_slot_on() {
    let limiter = EndpointLimiter::new(1, None);
    let held = limiter.acquire("e", Duration::ZERO).await.unwrap();
    let wait = Duration::from_secs(5);
    let mut first = Box::pin(limiter.acquire("e", wait));
    let mut second = Box::pin(limiter.acquire("e", wait));
    let mut third = Box::pin(limiter.acquire("e", wait));
    queue(&mut first).await;
    queue(&mut second).await;
    queue(&mut third).await;

    drop(held);
    // Handed to `first`, which is cancelled before it runs: the slot goes to `second`.
    drop(first);
    // `third` is cancelled while it waits: it leaves the queue holding nothing.
    drop(third);
    let slot = second.await.expect("passed on");
    assert_eq!(limiter.in_flight("e"), 1);
    drop(slot);
    assert_eq!(limiter.in_flight("e"), 0, "nothing leaked");
    assert!(
        limiter.acquire("e", Duration::ZERO).await.is_ok(),
        "nobody left in the queue ahead of a newcomer"
    );
}

#[tokio::test]
async fn a_pause_sends_the_waiting_deliveries_away() {
    let limiter = EndpointLimiter::new(2, None);
    let a = limiter.acquire("e", Duration::ZERO).await.unwrap();
    let _b = limiter.acquire("e", Duration::ZERO).await.unwrap();
    let mut waiting = Box::pin(limiter.acquire("e", Duration::from_secs(5)));
    queue(&mut waiting).await;
    a.finished(Signal::Overloaded {
        retry_after: Some(Duration::from_secs(5)),
    });
    assert_eq!(waiting.await.err(), Some(Full::Paused));
    assert_eq!(limiter.in_flight("e"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deliveries_some_cancelled_never_exceed_the_limit_nor_leak_a_slot() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts a slot in use until dropped (a cancelled delivery drops it mid-attempt too).
    struct InUse(Arc<AtomicUsize>);
    impl Drop for InUse {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let limiter = Arc::new(EndpointLimiter::new(4, None));
    let in_use = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..400u64 {
        let (limiter, in_use, most) = (limiter.clone(), in_use.clone(), most.clone());
        tasks.spawn(async move {
            let attempt = async {
                let slot = limiter.acquire("e", Duration::from_secs(5)).await.ok()?;
                let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                let counted = InUse(in_use.clone());
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(200 + n % 7 * 100)).await;
                // Uncounted before the slot is freed, as the slot was taken before counted.
                drop(counted);
                drop(slot);
                Some(())
            };
            // Every third delivery is cancelled part-way: some while queued, some just as
            // they were handed a slot, some holding one.
            if n % 3 == 0 {
                let _ = tokio::time::timeout(Duration::from_micros(n * 37 % 3000), attempt).await;
                true
            } else {
                attempt.await.is_some()
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(done.unwrap(), "a delivery that kept waiting got its turn");
    }
    assert!(most.load(Ordering::SeqCst) <= 4, "{most:?} at once");
    assert_eq!(limiter.in_flight("e"), 0, "every slot came back");
}
