//! Removing members: the ones this member votes out, and why. A removal is a
//! `MemberChange::Leave` of another member; it takes effect, like any change, only once more
//! than two thirds of the members voted for it (`count_change`), at the block where that
//! count is reached, the same point in the order at every member.
//!
//! This member votes to remove:
//!
//! - a member its operator asked to remove ([`Engine::request_removal`]);
//! - a member its consensus instance caught forking (fork evidence: two events with one
//!   creator and index): an honest member never forks, since its events are durable before
//!   they are sent;
//! - a member from which this member heard nothing (no message, and no new event of it in its
//!   graph, which may come through others) for `remove_silent_after_ms` of its clock, once
//!   this generation is that old too (the grace period: a member that restarts within it is
//!   not removed). Members gossip every interval even when idle, so only a member that is
//!   down, cut off or withholding everything goes silent.
//!
//! Votes are per generation, so each wish is voted again in the next one until it happens or
//! the node is no member. A member that finds every other member silent for that long may
//! have been removed while it was away: it asks to be admitted again (as a lagging member
//! does), and comes back if the members' policies still approve it.

use std::collections::{BTreeMap, BTreeSet};

use chorus_consensus::PeerId;
use tracing::{info, warn};

use super::Engine;
use super::joining::Joining;
use crate::membership::MemberChange;

/// What this member asks its section to remove.
#[derive(Default)]
pub(super) struct Removals {
    /// Members the operator asked to remove.
    requested: BTreeSet<PeerId>,
    /// Members caught forking.
    accused: BTreeSet<PeerId>,
}

/// What became of an operator's removal request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalRequest {
    /// This member voted to remove it (again in each generation until it happens); it is
    /// removed once more than two thirds of the members voted so.
    Voted,
    /// The node is no member of this node's section.
    NotAMember,
}

/// When this member last saw each other member's graph grow (per generation). Silence is
/// measured on the caller's clock and in ticks both: a clock that jumps (a wall clock set
/// forward) must not make every member look silent at once.
pub(super) struct Progress {
    /// Since when silence counts (ms and tick): the generation's start here, or our last
    /// request to be admitted again.
    from: (u64, u64),
    /// Ticks seen so far.
    ticks: u64,
    /// Per member: the index of its latest event we held, and when (ms and tick) we last
    /// heard from it (a message from it, or that event new here).
    latest: BTreeMap<PeerId, (Option<u64>, (u64, u64))>,
}

impl Progress {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            from: (now_ms, 0),
            ticks: 0,
            latest: BTreeMap::new(),
        }
    }

    /// Whether what began at `since` (ms, tick) lasted `span_ms` by the clock and half as
    /// many gossip intervals in ticks (ticks may come late, never early).
    fn lasted(&self, since: (u64, u64), now_ms: u64, span_ms: u64, interval_ms: u64) -> bool {
        let ticks_min = span_ms / (2 * interval_ms.max(1));
        now_ms >= since.0 + span_ms && self.ticks >= since.1 + ticks_min
    }
}

impl Engine {
    /// The operator asks to remove `node` from the section: this member votes for it, and
    /// again in each generation until it happens.
    pub fn request_removal(&mut self, now_ms: u64, node: PeerId) -> RemovalRequest {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.state.members.contains(&node) {
            return RemovalRequest::NotAMember;
        }
        info!(peer = %node, "voting to remove a member, as the operator asked");
        self.removals.requested.insert(node);
        self.vote_removals();
        self.drain();
        RemovalRequest::Voted
    }

    /// Consensus caught `offender` forking: vote it out.
    pub(super) fn accuse(&mut self, offender: PeerId) {
        if self.state.members.contains(&offender) && self.removals.accused.insert(offender) {
            warn!(peer = %offender, "a member forked its chain; voting to remove it");
        }
    }

    /// Votes (once per generation: `vote_change` skips repeats) for every removal wished,
    /// and forgets the wishes for nodes that are no members any more.
    pub(super) fn vote_removals(&mut self) {
        let members = self.state.members.clone();
        self.removals
            .requested
            .retain(|node| members.contains(node));
        self.removals.accused.retain(|node| members.contains(node));
        let wished: Vec<PeerId> = self
            .removals
            .requested
            .union(&self.removals.accused)
            .copied()
            .filter(|node| *node != self.our_id)
            .collect();
        for node in wished {
            self.vote_change(MemberChange::Leave(node));
        }
    }

    /// A message came from `from`: if it is a member, it is not silent (an idle section
    /// creates no events, but its members gossip every interval).
    pub(super) fn heard_from(&mut self, from: PeerId) {
        if self.config.remove_silent_after_ms.is_none() || !self.state.members.contains(&from) {
            return;
        }
        let progress = &mut self.current.progress;
        let now = (self.now_ms, progress.ticks);
        progress
            .latest
            .entry(from)
            .and_modify(|entry| entry.1 = now)
            .or_insert((None, now));
    }

    /// The liveness rule, on each tick: votes out members silent for
    /// `remove_silent_after_ms`, and asks to be admitted again if every other member is.
    pub(super) fn watch_silence(&mut self) {
        let Some(span) = self.config.remove_silent_after_ms else {
            return;
        };
        let Some(consensus) = self.current.consensus.as_ref() else {
            return;
        };
        if !self.is_active_member() || self.joining.is_some() {
            return;
        }
        let now_ms = self.now_ms;
        let interval_ms = self.config.consensus.gossip_interval_ms;
        let progress = &mut self.current.progress;
        progress.ticks += 1;
        let now = (now_ms, progress.ticks);
        let others: Vec<PeerId> = self
            .state
            .members
            .iter()
            .copied()
            .filter(|member| *member != self.our_id)
            .collect();
        let mut silent = Vec::new();
        for member in &others {
            let latest = consensus.latest_index_of(member);
            let from = progress.from;
            let entry = progress.latest.entry(*member).or_insert((latest, from));
            if entry.0 != latest {
                *entry = (latest, now);
            }
            let since = entry.1;
            if progress.lasted(since, now_ms, span, interval_ms) {
                silent.push(*member);
            }
        }
        if others.is_empty() || !progress.lasted(progress.from, now_ms, span, interval_ms) {
            return;
        }
        if silent.len() == others.len() {
            self.ask_again_after_silence();
            return;
        }
        for member in silent {
            self.vote_change(MemberChange::Leave(member));
        }
    }

    /// Every other member was silent for the whole span: we may have been removed while we
    /// were away (their gossip goes on without us), or they are all down. Asks to be
    /// admitted again, as a lagging member does; if we are still a member nothing happens
    /// but a few requests.
    fn ask_again_after_silence(&mut self) {
        warn!(
            generation = self.state.generation,
            "no other member was heard from for the silence span; asking to be admitted again"
        );
        self.joining = Some(Joining {
            asked_at_ms: None,
            refresh: Some((self.state.generation, self.now_ms)),
            also_ask: self.state.members.iter().copied().collect(),
            welcomes: BTreeMap::new(),
            refusals: BTreeMap::new(),
        });
        // Once this attempt gives up, the span starts again.
        self.current.progress = Progress::new(self.now_ms);
        self.ask_to_join();
    }
}
