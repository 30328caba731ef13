//! When we ask a peer for what we lack. Two ways:
//!
//! - **On work**: a new vote of ours, a response after which votes still wait to be ordered,
//!   or a peer's request showing it holds events we lack: we sync at once, without waiting
//!   for the timer, one such sync awaiting its answer at a time (so a busy member syncs back
//!   to back, at the pace its peers answer, and a round takes a round trip, not an interval).
//!   A request is what tells a peer we have something new, so news spreads as each member
//!   pulls from the one that just asked it.
//! - **By the timer**: every `gossip_interval_ms` while anything moves, and, while syncs
//!   bring nothing and nothing waits, ever more slowly, up to `idle_gossip_interval_ms`, so
//!   an idle group costs almost nothing and wakes on the first new vote.
//!
//! Everything here is driven by the caller's time and randomness, like the rest of the
//! state machine.

use rand::RngCore;

use crate::sync::{SyncRequest, Transmit};

use super::Consensus;

/// Events of ours in a row that may leave the round where it was before we stop syncing
/// back to back: a round usually takes a member a few events, more in a larger group.
fn stalled_events_max(members: usize) -> usize {
    2 * members + 4
}

/// Requests to one member counted as unanswered at most (`Pace::asked`).
const ASKED_MAX: u8 = 8;

/// What one sync answer did, for the pace.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answer {
    /// Events inserted.
    pub(super) inserted: usize,
    /// Whether we created an event.
    pub(super) created: bool,
    /// Whether the highest round rose.
    pub(super) advanced: bool,
}

/// The gossip pace of one member.
#[derive(Clone, Debug)]
pub(super) struct Pace {
    /// When the timer sends its next sync.
    next_timer_ms: u64,
    /// The timer's interval now: `gossip_interval_ms` while anything moves, doubled after
    /// each sync that brought nothing while nothing waits, up to `idle_gossip_interval_ms`.
    interval_ms: u64,
    /// A sync sent on work, not answered yet: to whom (member index), and when.
    /// (One at a time: two or three measured no faster at n = 4, BENCHMARKS.md.)
    awaiting: Option<(usize, u64)>,
    /// Work came while a sync was awaited: sync again once it is answered.
    again: bool,
    /// A member whose request showed events we lack: the next sync on work goes to it.
    ahead: Option<usize>,
    /// Events of ours created in a row without the round advancing (since our last new vote
    /// or the last time nothing waited). Syncing back to back pays only while rounds
    /// advance: a group that cannot order (too few members answer) would otherwise grow its
    /// graph at the speed of round trips. Past `stalled_events_max`, only new votes of ours
    /// and the timer make us sync.
    stalled: usize,
    /// The next member to ask on work (round robin, so work syncs spread over the group).
    next_peer: usize,
    /// Per member: our requests to it not answered yet (capped). A response from a member
    /// we did not ask is a push (`push.rs`): news, not an answer.
    asked: Vec<u8>,
    /// The latest time the caller gave us.
    now_ms: u64,
}

impl Pace {
    /// The latest time the caller gave us.
    pub(super) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Time has passed (the clock never goes back here).
    pub(super) fn observe_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    pub(super) fn new(now_ms: u64, interval_ms: u64, members: usize) -> Self {
        Self {
            next_timer_ms: now_ms,
            interval_ms,
            awaiting: None,
            again: false,
            ahead: None,
            stalled: 0,
            next_peer: 0,
            asked: vec![0; members],
            now_ms,
        }
    }
}

impl Consensus {
    /// Time has passed: sends the timer's sync when it is due, and a sync on work that waited
    /// for an answer that never came (lost: it is not awaited longer than an interval).
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        self.pace.observe_now(now_ms);
        if self.members.len() < 2 {
            return;
        }
        let timeout = self.config.gossip_interval_ms;
        if self
            .pace
            .awaiting
            .is_some_and(|(_, sent)| now_ms >= sent.saturating_add(timeout))
        {
            self.pace.awaiting = None;
            if std::mem::take(&mut self.pace.again) {
                self.sync_on_work();
            }
        }
        if now_ms < self.pace.next_timer_ms {
            return;
        }
        self.pace.next_timer_ms = now_ms.saturating_add(self.pace.interval_ms);
        let peer = self.random_peer(rng);
        self.queue_sync(peer);
    }

    /// Something moved (a new vote, new events, a peer ahead of us): the timer goes back to
    /// its fast interval.
    pub(super) fn pace_busy(&mut self) {
        let fast = self.config.gossip_interval_ms;
        if self.pace.interval_ms > fast {
            self.pace.interval_ms = fast;
            self.pace.next_timer_ms = self
                .pace
                .next_timer_ms
                .min(self.pace.now_ms.saturating_add(fast));
        }
    }

    /// A sync brought nothing and nothing waits: the timer slows down.
    fn pace_idle(&mut self) {
        let idle = self
            .config
            .idle_gossip_interval_ms
            .max(self.config.gossip_interval_ms);
        self.pace.interval_ms = self.pace.interval_ms.saturating_mul(2).min(idle);
    }

    /// A new vote of ours: new work, which may take the rounds further again.
    pub(super) fn pace_new_vote(&mut self) {
        self.pace.stalled = 0;
        self.sync_on_work();
    }

    /// We have work for the group (votes to send or to order): sync now, unless a sync on
    /// work is awaited (then once it is answered).
    pub(super) fn sync_on_work(&mut self) {
        self.pace_busy();
        if self.members.len() < 2 {
            return;
        }
        if self.pace.awaiting.is_some() {
            self.pace.again = true;
            return;
        }
        let peer = match self.pace.ahead.take() {
            Some(peer) => peer,
            None => self.next_round_robin_peer(),
        };
        self.pace.awaiting = Some((peer, self.pace.now_ms));
        self.queue_sync(peer);
    }

    /// A peer answered (`inserted` new events; we `created` one; the round `advanced`): the
    /// awaited sync is done if it was this one; the timer speeds up or slows down by what the
    /// answer brought; and if work remains, the next sync goes now.
    pub(super) fn pace_after_response(&mut self, now_ms: u64, from: usize, answer: Answer) {
        self.pace.observe_now(now_ms);
        let Some(asked) = self.pace.asked.get_mut(from).filter(|asked| **asked > 0) else {
            // A push: it answers no sync of ours and says nothing about stalled rounds.
            if answer.inserted > 0 {
                self.pace_busy();
            }
            return;
        };
        *asked -= 1;
        if let Some((_, sent)) = self.pace.awaiting.filter(|(peer, _)| *peer == from) {
            self.pace.awaiting = None;
            self.stats.work_syncs_answered += 1;
            self.stats.work_sync_ms_total += self.pace.now_ms.saturating_sub(sent);
        }
        let work = self.wants_new_event();
        if answer.advanced || !work {
            self.pace.stalled = 0;
        } else if answer.created {
            self.pace.stalled = self.pace.stalled.saturating_add(1);
        }
        if work || answer.inserted > 0 {
            self.pace_busy();
        } else {
            self.pace_idle();
        }
        let again = std::mem::take(&mut self.pace.again);
        if again || !self.pending_votes.is_empty() || (work && !self.stalled()) {
            self.sync_on_work();
        }
    }

    /// A peer's request shows what it holds: if that is more than we hold of some creator,
    /// we pull from it now (unless our rounds stalled).
    pub(super) fn pace_after_request(&mut self, from: usize, request: &SyncRequest) {
        let ahead = request.known.iter().enumerate().any(|(creator, &known)| {
            let ours = self
                .graph
                .head(creator)
                .map_or(0, |slot| self.graph.get(slot).index + 1);
            known > ours
        });
        if ahead && from != self.me && !self.stalled() {
            self.pace.ahead = Some(from);
            self.sync_on_work();
        }
    }

    /// Whether our events stopped advancing the rounds (see `Pace::stalled`).
    fn stalled(&self) -> bool {
        self.pace.stalled >= stalled_events_max(self.members.len())
    }

    fn queue_sync(&mut self, peer: usize) {
        if self.transmits.len() < self.config.output_queue_max {
            // A lost request stays counted: at the cap, a later push passes for an answer.
            self.pace.asked[peer] = self.pace.asked[peer].saturating_add(1).min(ASKED_MAX);
            self.transmits.push_back(Transmit {
                to: self.members[peer],
                request: self.sync_request(),
            });
        }
    }

    /// The next other member in turn for work syncs.
    fn next_round_robin_peer(&mut self) -> usize {
        let index = self.next_member_from(self.pace.next_peer);
        self.pace.next_peer = (index + 1) % self.members.len();
        index
    }

    /// The first other member from `cursor` on (cyclically) that does not lag beyond the
    /// window; the first other member if all do. Callers keep their own cursor (work syncs,
    /// pushes) and move it past the member returned.
    pub(super) fn next_member_from(&self, cursor: usize) -> usize {
        let count = self.members.len();
        let others = (0..count)
            .map(|step| (cursor + step) % count)
            .filter(|&index| index != self.me);
        let mut fallback = None;
        for index in others {
            fallback.get_or_insert(index);
            if !self.index_lags_beyond_window(index) {
                return index;
            }
        }
        fallback.unwrap_or_else(|| unreachable!("a group of two or more"))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::{Answer, stalled_events_max};
    use crate::consensus::Consensus;
    use crate::{Config, Observation, PeerId};

    const MEMBERS: usize = 4;

    /// Member 0 of four, with a vote of its own waiting (work), and the sync on work that
    /// the vote sent: returns the member and the peer it awaits.
    fn member_with_work() -> (Consensus, usize) {
        let keys: Vec<SigningKey> = (0..MEMBERS)
            .map(|index| SigningKey::from_bytes(&[index as u8 + 1; 32]))
            .collect();
        let ids: Vec<PeerId> = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let mut member =
            Consensus::new(Config::default(), keys[0].clone(), &ids, 0).expect("member");
        member
            .vote_for(Observation::payload(b"work".to_vec()))
            .expect("vote");
        let (awaited, _) = member.pace.awaiting.expect("the vote sent a sync on work");
        (member, awaited)
    }

    const CREATED_NO_NEW_ROUND: Answer = Answer {
        inserted: 1,
        created: true,
        advanced: false,
    };

    // Proves: a push (a response from a member we did not ask) is news, not an answer: any
    // number of pushes on which we made an event without a new round neither count toward a
    // stall (the first version of pushes counted them, members stopped syncing on work and
    // fell behind) nor free the sync we await; the awaited answer then does.
    #[test]
    fn a_push_neither_counts_toward_a_stall_nor_frees_an_awaited_sync() {
        let (mut member, awaited) = member_with_work();
        let pusher = (1..MEMBERS)
            .find(|&peer| peer != awaited)
            .expect("another peer");
        for step in 0..3 * stalled_events_max(MEMBERS) as u64 {
            member.pace_after_response(step, pusher, CREATED_NO_NEW_ROUND);
        }
        assert!(!member.stalled(), "pushes counted toward a stall");
        assert_eq!(member.pace.awaiting.map(|(peer, _)| peer), Some(awaited));
        assert_eq!(member.stats.work_syncs_answered, 0);

        member.pace_after_response(100, awaited, CREATED_NO_NEW_ROUND);
        assert_eq!(member.stats.work_syncs_answered, 1);
    }

    // Proves the other side, so the test above can fail: answers to our own requests on which
    // we made an event without a new round do count, and stop back-to-back syncs.
    #[test]
    fn answers_without_a_new_round_count_toward_a_stall() {
        let (mut member, _) = member_with_work();
        let peer = 1;
        for step in 0..stalled_events_max(MEMBERS) as u64 + 1 {
            member.queue_sync(peer);
            member.pace_after_response(step, peer, CREATED_NO_NEW_ROUND);
        }
        assert!(member.stalled());
    }
}
