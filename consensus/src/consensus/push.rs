//! Pushing our new events: when events of ours become durable (`handle_persisted`) while
//! there is work, we send them, with whatever else the peer lacks by our estimate of its
//! clock, to the next member in turn, as a sync response nobody asked for.
//!
//! Why: with pulls alone, a new event reaches a member only when that member next pulls from
//! its creator, a round trip and a half after the event exists (the peer learns of it from
//! our next request, then pulls). A push takes half a round trip. The cost is events: the
//! receiver usually makes one of its own on what it got. So we push at most once per
//! `gossip_interval_ms`, and only at light load (`busy_for_push`). On by default;
//! `Config::push_new_events` turns it off (RELIABILITY.md, "Pushes and a late start").
//!
//! The estimate of a peer's clock is the clock of its latest request to us, raised by what
//! we pushed to it since: what it lacks by that estimate is sent, the rest it has or pulls.
//! A member we have not heard from lately is skipped (`PUSH_SILENCE_INTERVALS`).

use crate::sync::{Push, SyncRequest};

use super::Consensus;

/// A member we have not heard from (a request or an answer) for this many gossip intervals
/// gets no pushes: it is stopped, cut off or slow, and pushes would queue for it and reach
/// it stale.
const PUSH_SILENCE_INTERVALS: u64 = 20;

/// What we believe each peer holds, and when we last pushed.
#[derive(Clone, Debug)]
pub(super) struct PushState {
    /// Per member: per creator, the next index we believe it expects.
    peer_known: Vec<Vec<u64>>,
    /// Per member: when we last heard from it (our clock, ms).
    heard_ms: Vec<Option<u64>>,
    /// When we last pushed (the caller's clock, ms).
    last_push_ms: Option<u64>,
    /// The next member to push to (round robin).
    next_peer: usize,
}

impl PushState {
    pub(super) fn new(members: usize) -> Self {
        Self {
            peer_known: vec![vec![0; members]; members],
            heard_ms: vec![None; members],
            last_push_ms: None,
            next_peer: 0,
        }
    }
}

impl Consensus {
    /// A peer's request tells us what it holds.
    pub(super) fn push_note_request(&mut self, from: usize, request: &SyncRequest) {
        self.push_note_heard(from);
        let known = &mut self.push.peer_known[from];
        for (ours, &theirs) in known.iter_mut().zip(&request.known) {
            *ours = (*ours).max(theirs);
        }
    }

    /// A request or an answer came from member `from`.
    pub(super) fn push_note_heard(&mut self, from: usize) {
        self.push.heard_ms[from] = Some(self.pace.now_ms());
    }

    /// Events of ours just became durable: push them if there is work and the interval
    /// allows.
    pub(super) fn push_new_events(&mut self) {
        if !self.config.push_new_events {
            return;
        }
        let interval = self.config.gossip_interval_ms;
        let now_ms = self.pace.now_ms();
        let due = self
            .push
            .last_push_ms
            .is_none_or(|last| now_ms >= last.saturating_add(interval));
        if !due || self.members.len() < 2 || !self.wants_new_event() || self.busy_for_push() {
            return;
        }
        let Some(durable) = self.durable_index else {
            return;
        };
        // One member per push: pushing to every member at once measured slower on real
        // nodes (each receiver makes an event of its own on what it got).
        let Some(peer) = self.next_push_peer() else {
            return;
        };
        if self.push.peer_known[peer][self.me] > durable {
            return;
        }
        let request = SyncRequest {
            known: self.push.peer_known[peer].clone(),
            wanted: Vec::new(),
        };
        let Ok(response) = self.answer_sync_request(&self.members[peer], &request) else {
            return;
        };
        if response.events.is_empty() || self.pushes.len() >= self.config.output_queue_max {
            return;
        }
        for event in &response.events {
            if let Some(&creator) = self.member_index.get(&event.header.creator) {
                let known = &mut self.push.peer_known[peer][creator];
                *known = (*known).max(event.header.index + 1);
            }
        }
        self.push.last_push_ms = Some(now_ms);
        self.stats.pushes_sent += 1;
        self.pushes.push_back(Push {
            to: self.members[peer],
            response,
        });
    }

    /// Under load a push buys no latency (commands wait for CPU, not for news) and costs an
    /// event at its receiver: measured on real nodes, pushing at 128 and 512 clients gave
    /// 0.95x and 0.92x the throughput. So we push only while few events with votes wait to be
    /// ordered: a command or two in flight.
    fn busy_for_push(&self) -> bool {
        self.unordered_vote_events.len() > 2 * self.members.len()
    }

    /// The next other member in turn for pushes that we heard from lately (see
    /// `PUSH_SILENCE_INTERVALS`); `None` if none.
    fn next_push_peer(&mut self) -> Option<usize> {
        let silence_ms = PUSH_SILENCE_INTERVALS * self.config.gossip_interval_ms;
        let now_ms = self.pace.now_ms();
        for _ in 1..self.members.len() {
            let index = self.next_member_from(self.push.next_peer);
            self.push.next_peer = (index + 1) % self.members.len();
            let heard_lately = self.push.heard_ms[index]
                .is_some_and(|heard| now_ms <= heard.saturating_add(silence_ms));
            if heard_lately {
                return Some(index);
            }
        }
        None
    }
}
