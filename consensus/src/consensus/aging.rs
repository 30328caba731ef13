//! When recent rounds were decided, in consensus time, so that pruning waits until a
//! round's decision is `Config::prune_min_age_ms` old: the prune window is a span of time as
//! well as of rounds. Under load and with the gossip pace a round takes a few milliseconds,
//! so `prune_window_rounds` alone can be a fraction of a second, and a member away for
//! less (a restart, a stall, its instance of a new generation started late) would land
//! beyond every other member's window and wait seconds for a state transfer; within the age
//! it catches up by gossip.
//!
//! While some member has no event in the order yet, the age is at least
//! `Config::prune_min_age_absent_ms` instead: a member that has not started its instance
//! (a refreshed one still fetching its state, or one restarted with the whole section and
//! replaying on a loaded machine) can take longer than the age to start, and two such
//! members of four would both be beyond every window with no third to vote them back
//! (RELIABILITY.md, "Two members behind after a whole-section restart"). Which members have
//! an event in the order is a function of the order, like the clock: every member and a
//! replay prune alike.

use std::collections::VecDeque;

/// Which members have an event in the order of this instance.
#[derive(Debug)]
pub(super) struct OrderedCreators {
    seen: Vec<bool>,
    missing: usize,
}

impl OrderedCreators {
    pub(super) fn new(member_count: usize) -> Self {
        Self {
            seen: vec![false; member_count],
            missing: member_count,
        }
    }

    /// Notes that an event of member `creator` was ordered.
    pub(super) fn note(&mut self, creator: usize) {
        if let Some(seen) = self.seen.get_mut(creator).filter(|seen| !**seen) {
            *seen = true;
            self.missing -= 1;
        }
    }

    /// Whether some member has no event in the order yet.
    pub(super) fn any_missing(&self) -> bool {
        self.missing > 0
    }
}

/// Recent decisions, oldest first, until they are old enough to prune by.
#[derive(Debug, Default)]
pub(super) struct DecidedAt {
    /// (highest decided round, when it was decided) for decisions younger than the age.
    recent: VecDeque<(u64, u64)>,
    /// The highest decided round whose decision is at least the age old.
    aged: u64,
}

impl DecidedAt {
    /// Notes that rounds up to `decided` are decided at `now_ms`, and returns the highest
    /// decided round that was decided at least `min_age_ms` before `now_ms` (0 if none):
    /// the round to prune by. With no age, `decided` itself.
    pub(super) fn round_to_prune_by(&mut self, decided: u64, now_ms: u64, min_age_ms: u64) -> u64 {
        if min_age_ms == 0 {
            return decided;
        }
        let newer = self.recent.back().map_or(self.aged, |&(round, _)| round);
        if decided > newer {
            self.recent.push_back((decided, now_ms));
        }
        let Some(old_enough) = now_ms.checked_sub(min_age_ms) else {
            return self.aged;
        };
        while let Some(&(round, at)) = self.recent.front() {
            if at > old_enough {
                break;
            }
            self.aged = round;
            self.recent.pop_front();
        }
        self.aged
    }
}

#[cfg(test)]
mod tests {
    use super::{DecidedAt, OrderedCreators};

    #[test]
    fn a_member_counts_as_ordered_once() {
        let mut creators = OrderedCreators::new(3);
        creators.note(0);
        creators.note(0);
        creators.note(2);
        assert!(creators.any_missing());
        creators.note(1);
        assert!(!creators.any_missing());
        // Out of range (no such member) changes nothing.
        creators.note(7);
        assert!(!creators.any_missing());
    }

    #[test]
    fn a_lower_age_later_prunes_what_it_allows_at_once() {
        let mut decided = DecidedAt::default();
        assert_eq!(decided.round_to_prune_by(10, 1_000, 20_000), 0);
        assert_eq!(decided.round_to_prune_by(20, 5_000, 20_000), 0);
        assert_eq!(decided.round_to_prune_by(30, 9_000, 20_000), 0);
        // The age drops (the last member's event was ordered): both older decisions count.
        assert_eq!(decided.round_to_prune_by(31, 9_000, 3_000), 20);
    }

    #[test]
    fn no_age_prunes_by_the_latest_decided_round() {
        let mut decided = DecidedAt::default();
        assert_eq!(decided.round_to_prune_by(40, 1_000, 0), 40);
        assert_eq!(decided.round_to_prune_by(41, 1_001, 0), 41);
    }

    #[test]
    fn a_round_counts_once_its_decision_is_old_enough() {
        let mut decided = DecidedAt::default();
        // Nothing is old enough before the age has passed, even at time 0.
        assert_eq!(decided.round_to_prune_by(10, 0, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(20, 1_000, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(30, 2_999, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(35, 3_000, 3_000), 10);
        assert_eq!(decided.round_to_prune_by(36, 4_500, 3_000), 20);
        // A repeated or lower round notes nothing new; the aged round never goes down.
        assert_eq!(decided.round_to_prune_by(30, 6_000, 3_000), 35);
        assert_eq!(decided.round_to_prune_by(36, 7_500, 3_000), 36);
        assert!(decided.recent.is_empty(), "{:?}", decided.recent);
    }

    #[test]
    fn a_clock_that_goes_back_prunes_nothing_sooner() {
        let mut decided = DecidedAt::default();
        assert_eq!(decided.round_to_prune_by(10, 10_000, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(20, 5_000, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(21, 12_999, 3_000), 0);
        assert_eq!(decided.round_to_prune_by(22, 13_000, 3_000), 20);
    }
}
