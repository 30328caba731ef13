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
//! - a member none of whose events reached its graph (directly or through others) for
//!   `remove_silent_after_ms` of its clock, once this generation is that old too (the grace
//!   period: a member that restarts within it is not removed), while the graph went on for
//!   `SILENT_ROUNDS_MIN` rounds without it (an idle section creates no events: nobody waits
//!   on a member then). A member that is down, cut off or withholding its events is silent
//!   so.
//!
//! Votes are per generation, so each wish is voted again in the next one until it happens or
//! the node is no member. A member that finds every other member silent for that long may
//! have been removed while it was away: it asks to be admitted again (as a lagging member
//! does), and comes back if the members' policies still approve it.

use std::collections::{BTreeMap, BTreeSet};

use chorus_consensus::{ForkEvidence, PeerId};
use tracing::{debug, info, warn};

use super::Engine;
use super::joining::Joining;
use super::limits::{EVIDENCE_REPEAT_MS, SILENT_ROUNDS_MIN};
use super::wire::Message;
use crate::membership::{MemberChange, group_id};

/// What this member asks its section to remove.
#[derive(Default)]
pub(super) struct Removals {
    /// Members the operator asked to remove.
    requested: BTreeSet<PeerId>,
    /// Members caught forking.
    accused: BTreeSet<PeerId>,
    /// The evidence against each, and when it was last passed on: passed on again every
    /// `EVIDENCE_REPEAT_MS` while the offender is a member, so a member cut off when it was
    /// first sent (and whose own graph never held both twins) still gets it.
    evidence: BTreeMap<PeerId, (ForkEvidence, u64)>,
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

/// A moment by three clocks: the caller's ms, our ticks, and our graph's latest round.
#[derive(Clone, Copy, Debug)]
struct Mark {
    ms: u64,
    tick: u64,
    round: u64,
}

/// When this member last saw each other member take part (per generation). Silence is
/// measured by the caller's clock and in ticks both (a wall clock set forward must not make
/// every member look silent at once), and for voting a member out also in rounds of our
/// graph: an idle section creates no events, and nobody is waiting on a member then.
pub(super) struct Progress {
    /// Since when silence counts: the generation's start here, or our last request to be
    /// admitted again.
    from: Mark,
    /// Ticks seen so far.
    ticks: u64,
    /// Per member: the index of its latest event we held, and when it was new here.
    latest: BTreeMap<PeerId, (Option<u64>, Mark)>,
    /// When a message of any other member last came (its gossip goes on when idle).
    heard_any: Option<Mark>,
}

impl Progress {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            from: Mark {
                ms: now_ms,
                tick: 0,
                round: 0,
            },
            ticks: 0,
            latest: BTreeMap::new(),
            heard_any: None,
        }
    }

    /// Whether what began at `since` lasted `span_ms` by the clock and half as many gossip
    /// intervals in ticks (ticks may come late, never early).
    fn lasted(&self, since: Mark, now_ms: u64, span_ms: u64, interval_ms: u64) -> bool {
        let ticks_min = span_ms / (2 * interval_ms.max(1));
        now_ms >= since.ms + span_ms && self.ticks >= since.tick + ticks_min
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

    /// Proof that a member forked (our consensus caught it, or a member passed it on): we
    /// vote it out, and pass the proof on to the other members once, so each of them votes
    /// on evidence it checked itself (one member's word would let a faulty one remove
    /// anyone).
    pub(super) fn accuse(&mut self, evidence: &ForkEvidence) {
        let offender = evidence.offender();
        if !self.state.members.contains(&offender) || !self.removals.accused.insert(offender) {
            return;
        }
        warn!(peer = %offender, "a member forked its chain; voting to remove it");
        self.removals
            .evidence
            .insert(offender, (evidence.clone(), self.now_ms));
        self.pass_on_evidence(evidence);
    }

    fn pass_on_evidence(&mut self, evidence: &ForkEvidence) {
        let offender = evidence.offender();
        let message = Message::ForkEvidence(Box::new(evidence.clone()));
        for member in self.state.members.clone() {
            if member != self.our_id && member != offender {
                self.send(member, &message);
            }
        }
    }

    /// Passes on again the evidence against members still in the section, every
    /// `EVIDENCE_REPEAT_MS`.
    pub(super) fn repeat_evidence(&mut self) {
        // Called every tick: nothing to do, nothing to allocate, in the common case.
        if self.removals.evidence.is_empty() {
            return;
        }
        let members = &self.state.members;
        self.removals
            .evidence
            .retain(|offender, _| members.contains(offender));
        let now = self.now_ms;
        let due: Vec<ForkEvidence> = self
            .removals
            .evidence
            .values_mut()
            .filter(|(_, sent_ms)| now >= *sent_ms + EVIDENCE_REPEAT_MS)
            .map(|(evidence, sent_ms)| {
                *sent_ms = now;
                evidence.clone()
            })
            .collect();
        for evidence in &due {
            self.pass_on_evidence(evidence);
        }
    }

    /// A member passes on fork evidence: believed if it checks (two events signed by the
    /// offender at one index of one of our section's instances, this generation's or the
    /// retired one's).
    pub(super) fn on_fork_evidence(&mut self, from: PeerId, evidence: &ForkEvidence) {
        let ours = |generation: u64| group_id(&self.state.prefix, generation);
        let group = evidence.first.header.group;
        let in_our_section = group == ours(self.state.generation)
            || self
                .retired
                .as_ref()
                .is_some_and(|(generation, _)| group == ours(*generation));
        // The cheap checks first: signatures are checked only for news from a member.
        if !in_our_section
            || !self.state.members.contains(&from)
            || self.removals.accused.contains(&evidence.offender())
        {
            debug!(peer = %from, "fork evidence ignored (not about our section, or known)");
            return;
        }
        match evidence.verify() {
            Ok(_) => self.accuse(evidence),
            Err(error) => warn!(peer = %from, %error, "false fork evidence"),
        }
    }

    /// Votes (again at most every `CHANGE_REVOTE_MS`: `vote_change`) for every removal wished,
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

    /// A message came from `from`: if it is another member, we are not cut off.
    pub(super) fn heard_from(&mut self, from: PeerId) {
        if self.config.remove_silent_after_ms.is_none()
            || from == self.our_id
            || !self.state.members.contains(&from)
        {
            return;
        }
        let progress = &mut self.current.progress;
        progress.heard_any = Some(Mark {
            ms: self.now_ms,
            tick: progress.ticks,
            round: 0,
        });
    }

    /// The liveness rule, on each tick: votes out each member whose events stopped coming
    /// for `remove_silent_after_ms` (by clock and ticks) while our graph went on for
    /// `SILENT_ROUNDS_MIN` rounds without it; and asks to be admitted again if no other
    /// member's message came for that long.
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
        let interval_ms = self.config.consensus.gossip_interval_ms;
        let progress = &mut self.current.progress;
        progress.ticks += 1;
        let now = Mark {
            ms: self.now_ms,
            tick: progress.ticks,
            round: consensus.stats().max_round,
        };
        let mut silent = Vec::new();
        let mut others = 0;
        for member in self
            .state
            .members
            .iter()
            .filter(|member| **member != self.our_id)
        {
            others += 1;
            let latest = consensus.latest_index_of(member);
            let from = progress.from;
            let entry = progress.latest.entry(*member).or_insert((latest, from));
            if entry.0 != latest {
                *entry = (latest, now);
            }
            let since = entry.1;
            if progress.lasted(since, now.ms, span, interval_ms)
                && now.round >= since.round + SILENT_ROUNDS_MIN
            {
                silent.push(*member);
            }
        }
        if others == 0 || !progress.lasted(progress.from, now.ms, span, interval_ms) {
            return;
        }
        let cut_off = progress
            .heard_any
            .is_none_or(|heard| progress.lasted(heard, now.ms, span, interval_ms));
        if cut_off {
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
