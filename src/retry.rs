//! What happens to a delivery next: done, wait in the next delay queue, put off, or dead-letter.
//! The only place that turns an [`Outcome`] and an attempt number into a next step, or decides
//! what a delivery whose endpoint is full does.

use crate::delivery::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered; ack.
    Done,
    /// Publish to the delay queue with this index (`RETRY_DELAYS[index]`), then ack.
    Retry(usize),
    /// Its endpoint is full: publish to the delay queue with this index without spending an
    /// attempt, then ack.
    Defer(usize),
    /// Out of attempts; publish to `P.dead` with reason `exhausted`, then ack.
    Exhausted,
}

/// What a delivery whose endpoint had no free slot does, with `delays` retry delays
/// configured: wait in the longest delay queue (every round trip through one costs the broker a
/// publish, and the endpoint has just failed to free a slot for a while), no attempt spent; with
/// no delay queue, `None`: it is attempted anyway.
pub fn when_endpoint_full(delays: usize) -> Option<Next> {
    delays.checked_sub(1).map(Next::Defer)
}

/// `attempt` is the number (1-based) of the attempt that produced `outcome`; `delays` is how
/// many retry delays are configured.
pub fn next_step(outcome: &Outcome, attempt: u32, delays: usize) -> Next {
    if outcome.is_success() {
        return Next::Done;
    }
    // Attempts count from 1; a 0 (never passed today) is read as the first.
    let index = attempt.max(1) as usize - 1;
    if index < delays {
        Next::Retry(index)
    } else {
        Next::Exhausted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_walk_the_delay_queues_then_dead_letter() {
        let fail = Outcome::HttpError(500);
        assert_eq!(next_step(&fail, 1, 3), Next::Retry(0));
        assert_eq!(next_step(&fail, 2, 3), Next::Retry(1));
        assert_eq!(next_step(&fail, 3, 3), Next::Retry(2));
        assert_eq!(next_step(&fail, 4, 3), Next::Exhausted);
        assert_eq!(next_step(&fail, 0, 3), Next::Retry(0));
        assert_eq!(next_step(&Outcome::Timeout, 1, 0), Next::Exhausted);
    }

    #[test]
    fn a_full_endpoint_defers_to_the_longest_delay_queue_if_there_is_one() {
        assert_eq!(when_endpoint_full(3), Some(Next::Defer(2)));
        assert_eq!(when_endpoint_full(1), Some(Next::Defer(0)));
        assert_eq!(when_endpoint_full(0), None);
    }

    #[test]
    fn success_is_done_on_any_attempt() {
        for attempt in 1..=4 {
            assert_eq!(next_step(&Outcome::Success(204), attempt, 3), Next::Done);
        }
    }

    mod properties {
        use std::time::Duration;

        use clap::{CommandFactory, Parser};
        use proptest::prelude::*;

        use super::super::*;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            cfg: crate::Config,
        }

        /// The retry delays the service runs with by default, read from the config's own
        /// declaration (passed as a flag so a `RETRY_DELAYS` in the test's environment can't
        /// replace it).
        fn configured_delays() -> Vec<Duration> {
            let cmd = Cli::command();
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == "retry_delays")
                .expect("retry_delays is a config argument");
            let default = arg.get_default_values()[0].to_str().unwrap().to_string();
            Cli::try_parse_from(["webhook-dispatcher", "--retry-delays", &default])
                .expect("the default config parses")
                .cfg
                .queues
                .retry_delays
                .0
        }

        fn failure() -> impl Strategy<Value = Outcome> {
            prop_oneof![
                any::<u16>().prop_map(Outcome::HttpError),
                Just(Outcome::Timeout),
                ".{0,20}".prop_map(Outcome::ConnectError),
                ".{0,20}".prop_map(Outcome::Blocked),
            ]
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            prop_oneof![any::<u16>().prop_map(Outcome::Success), failure()]
        }

        /// What the dispatcher does with one delivery: attempt `n` gets `outcomes[n - 1]` (the
        /// last one repeated once they run out) and `next_step` decides, until it stops. Returns
        /// the retry indices scheduled, the final step and how many attempts were made.
        fn walk(outcomes: &[Outcome], delays: usize) -> (Vec<usize>, Next, u32) {
            let mut retries = Vec::new();
            for attempt in 1u32.. {
                let outcome = &outcomes[(attempt as usize - 1).min(outcomes.len() - 1)];
                match next_step(outcome, attempt, delays) {
                    Next::Retry(index) => {
                        assert!(retries.len() < delays, "more retries than delays");
                        retries.push(index);
                    }
                    last => return (retries, last, attempt),
                }
            }
            unreachable!()
        }

        #[test]
        fn the_default_delays_are_2_4_8_seconds_14_in_all() {
            let delays = configured_delays();
            assert_eq!(
                delays,
                [2, 4, 8].map(Duration::from_secs),
                "RETRY_DELAYS default"
            );
            assert_eq!(delays.iter().sum::<Duration>(), Duration::from_secs(14));
        }

        proptest! {
            /// Failed attempts 1, 2, 3 wait in the 2 s, 4 s, 8 s queues (index = attempt - 1).
            #[test]
            fn failed_attempts_1_to_3_retry_after_2_4_8_seconds(
                outcome in failure(),
                attempt in 1u32..=3,
            ) {
                let delays = configured_delays();
                let step = next_step(&outcome, attempt, delays.len());
                prop_assert_eq!(step, Next::Retry(attempt as usize - 1));
                let Next::Retry(index) = step else { unreachable!() };
                prop_assert_eq!(delays[index], Duration::from_secs(1 << attempt));
            }

            /// The 4th failed attempt (and any later one) dead-letters.
            #[test]
            fn failed_attempt_4_or_later_is_exhausted(
                outcome in failure(),
                // 4 itself, the boundary, would almost never be drawn from 4..=u32::MAX.
                attempt in prop_oneof![Just(4u32), 5u32..=64, 65u32..=u32::MAX],
            ) {
                prop_assert_eq!(next_step(&outcome, attempt, configured_delays().len()), Next::Exhausted);
            }

            /// A success is done, whatever the attempt and however many delays are configured.
            #[test]
            fn success_is_done_at_any_attempt(
                status in any::<u16>(),
                attempt in 1u32..=u32::MAX,
                delays in 0usize..=64,
            ) {
                prop_assert_eq!(next_step(&Outcome::Success(status), attempt, delays), Next::Done);
            }

            /// For any number of configured delays: a failed attempt retries exactly when a
            /// delay is left for it, into the queue of that delay, and once exhausted it stays
            /// exhausted (the step is monotonic in the attempt number).
            #[test]
            fn retry_iff_a_delay_is_left_and_exhausted_stays_exhausted(
                outcome in failure(),
                attempt in 1u32..=100,
                delays in 0usize..=20,
            ) {
                let step = next_step(&outcome, attempt, delays);
                if (attempt as usize) <= delays {
                    prop_assert_eq!(step, Next::Retry(attempt as usize - 1));
                } else {
                    prop_assert_eq!(step, Next::Exhausted);
                    prop_assert_eq!(next_step(&outcome, attempt + 1, delays), Next::Exhausted);
                }
            }

            /// A delivery that keeps failing walks every delay queue once, in order, then dead-
            /// letters: never more retries than configured, 1 + delays attempts, and with the
            /// default config 2 + 4 + 8 = 14 s of scheduled delay.
            #[test]
            fn always_failing_walks_each_delay_once_then_dead_letters(
                outcomes in prop::collection::vec(failure(), 1..8),
                delays in 0usize..=20,
            ) {
                let (retries, last, attempts) = walk(&outcomes, delays);
                prop_assert_eq!(last, Next::Exhausted);
                prop_assert_eq!(retries, (0..delays).collect::<Vec<_>>());
                prop_assert_eq!(attempts as usize, 1 + delays);

                let configured = configured_delays();
                let (retries, _, attempts) = walk(&outcomes, configured.len());
                prop_assert_eq!(attempts, 4);
                let waits: Vec<Duration> = retries.iter().map(|&i| configured[i]).collect();
                prop_assert_eq!(&waits, &[2, 4, 8].map(Duration::from_secs));
                prop_assert_eq!(waits.iter().sum::<Duration>(), Duration::from_secs(14));
            }

            /// Any mix of outcomes: the walk ends on the first success (Done) or after the last
            /// delay (Exhausted); the delays scheduled on the way strictly increase, are a
            /// prefix of the configured ones and add up to at most 14 s.
            #[test]
            fn any_outcomes_stop_at_first_success_with_increasing_delays(
                outcomes in prop::collection::vec(outcome(), 1..8),
            ) {
                let configured = configured_delays();
                let (retries, last, attempts) = walk(&outcomes, configured.len());
                prop_assert!(retries.len() <= configured.len());
                let first_success = outcomes.iter().position(Outcome::is_success);
                match first_success {
                    Some(i) if i <= configured.len() => {
                        prop_assert_eq!(last, Next::Done);
                        prop_assert_eq!(attempts as usize, i + 1);
                    }
                    _ => {
                        prop_assert_eq!(last, Next::Exhausted);
                        prop_assert_eq!(attempts as usize, configured.len() + 1);
                    }
                }
                let waits: Vec<Duration> = retries.iter().map(|&i| configured[i]).collect();
                prop_assert_eq!(&waits[..], &configured[..waits.len()]);
                prop_assert!(waits.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(waits.iter().sum::<Duration>() <= Duration::from_secs(14));
            }
        }
    }
}
