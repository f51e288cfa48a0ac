//! What happens after an attempt: done, wait in the next delay queue, or dead-letter. The only
//! place that turns an [`Outcome`] and an attempt number into a next step.

use crate::delivery::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered; ack.
    Done,
    /// Publish to the delay queue with this index (`RETRY_DELAYS[index]`), then ack.
    Retry(usize),
    /// Out of attempts; publish to `P.dead` with reason `exhausted`, then ack.
    Exhausted,
}

/// `attempt` is the number (1-based) of the attempt that produced `outcome`; `delays` is how
/// many retry delays are configured.
pub fn next_step(outcome: &Outcome, attempt: u32, delays: usize) -> Next {
    if outcome.is_success() {
        return Next::Done;
    }
    let index = attempt as usize - 1;
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
        assert_eq!(next_step(&Outcome::Timeout, 1, 0), Next::Exhausted);
    }

    #[test]
    fn success_is_done_on_any_attempt() {
        for attempt in 1..=4 {
            assert_eq!(next_step(&Outcome::Success(204), attempt, 3), Next::Done);
        }
    }
}
