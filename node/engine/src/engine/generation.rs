//! Membership changes and generations: votes, counting the agreed votes, and the switch
//! from one generation of the section to the next (with the handover a joiner fetches).

use std::collections::{BTreeMap, BTreeSet};

use chorus_aggregate::StoreError;
use chorus_consensus::{
    Block, BlockMode, Config, Consensus, LogRecord, Observation, ObservationHash, PeerId,
    SetupError, is_supermajority,
};
use chorus_routing::{Prefix, SectionMap, XorName};
use ed25519_dalek::SigningKey;
use tracing::{debug, warn};

use crate::membership::{
    HANDOVERS_MAX, Handover, Holding, MemberChange, MembershipProposal, SectionState, Welcome,
    all_section_events, change_allowed, group_id, name_of, numbering_of, section_after,
    section_commands, section_digest, sort_members,
};

use super::budget::Budget;
use super::joining::Lag;
use super::limits::{CHANGE_REVOTE_MS, IDLE_SYNCS_PER_SILENCE_SPAN};
use super::removal::Progress;
use super::wire::Message;
use super::{Engine, EngineConfig, EngineError};
use crate::domain::DomainFingerprint;
use crate::proposal::Proposal;

/// What lives for one generation of the section and means nothing in the next: its
/// consensus instance, the membership votes, proposals kept for a later second, lag hints.
/// A switch or a refresh replaces the whole value, so nothing of a generation outlives it.
pub(super) struct Generation {
    /// The consensus instance; `None` while we are no member (a joiner not yet welcomed, or
    /// a member that left).
    pub(super) consensus: Option<Consensus>,
    /// A membership change agreed and waiting for the blocks before it to apply.
    pub(super) pending_change: Option<MembershipProposal>,
    /// Membership changes we voted for, with when we last did (`vote_change` votes again
    /// at most every `CHANGE_REVOTE_MS` while what moved us to vote lasts).
    pub(super) voted_changes: BTreeMap<MembershipProposal, u64>,
    /// A domain upgrade agreed and waiting for the blocks before it to apply (`upgrade`).
    pub(super) pending_upgrade: Option<DomainFingerprint>,
    /// The vote period we last voted to upgrade the section to our domain in.
    pub(super) voted_upgrade: Option<u64>,
    /// The section's clock: the latest agreed time of this generation's blocks (ms since
    /// the Unix epoch), which never goes back (`schedule`).
    pub(super) clock_ms: u64,
    /// The last tick we proposed (`schedule::TICK_MS` periods since the epoch).
    pub(super) ticked: u64,
    /// Agreed upgrade votes: per member, the domain of its latest vote the blocks prove.
    pub(super) upgrade_votes: BTreeMap<PeerId, DomainFingerprint>,
    /// Agreed votes for membership changes: the members whose votes the blocks prove, per
    /// change (rebuilt by replaying the generation's blocks).
    pub(super) membership_votes: BTreeMap<MemberChange, BTreeSet<PeerId>>,
    /// Supermajority mode: other members' proposals decided at a version our store has not
    /// reached yet (but at most `DEFER_AHEAD_MAX` ahead), to second once it has.
    pub(super) deferred_seconds: Vec<(ObservationHash, Proposal)>,
    /// Per member, when we last told it that it lags (`Message::Behind`).
    pub(super) behind_told: BTreeMap<PeerId, u64>,
    /// The latest hint that we lag beyond a member's window, while hints keep coming.
    pub(super) behind: Option<Lag>,
    /// When this node entered the generation, by its clock (or started, after a restart).
    pub(super) started_ms: u64,
    /// When each other member's events last grew here (the liveness rule).
    pub(super) progress: Progress,
    /// Per member, what its sync requests may cost us.
    pub(super) sync_budgets: BTreeMap<PeerId, Budget>,
}

impl Generation {
    /// A generation this node takes no part in (yet).
    pub(super) fn without_consensus(now_ms: u64) -> Self {
        Self {
            consensus: None,
            pending_change: None,
            voted_changes: BTreeMap::new(),
            pending_upgrade: None,
            voted_upgrade: None,
            clock_ms: 0,
            ticked: 0,
            upgrade_votes: BTreeMap::new(),
            membership_votes: BTreeMap::new(),
            deferred_seconds: Vec::new(),
            behind_told: BTreeMap::new(),
            behind: None,
            started_ms: now_ms,
            progress: Progress::new(now_ms),
            sync_budgets: BTreeMap::new(),
        }
    }

    /// The generation `state` describes, with a new consensus instance (none if `state` has
    /// no members: we left).
    pub(super) fn start(
        config: &EngineConfig,
        key: &SigningKey,
        state: &SectionState,
        now_ms: u64,
    ) -> Result<Self, SetupError> {
        let mut generation = Self::without_consensus(now_ms);
        if !state.members.is_empty() {
            let config = consensus_config(config, state);
            generation.consensus =
                Some(Consensus::new(config, key.clone(), &state.members, now_ms)?);
        }
        Ok(generation)
    }

    /// The generation `state` describes, its consensus instance rebuilt from its replay log
    /// after a restart.
    pub(super) fn restore(
        config: &EngineConfig,
        key: &SigningKey,
        state: &SectionState,
        records: Vec<LogRecord>,
        now_ms: u64,
    ) -> Result<Self, SetupError> {
        let mut generation = Self::without_consensus(now_ms);
        if !state.members.is_empty() {
            let config = consensus_config(config, state);
            let consensus =
                Consensus::restore(config, key.clone(), &state.members, records, now_ms)?;
            generation.consensus = Some(consensus);
        }
        Ok(generation)
    }
}

impl Engine {
    /// Moves to the generation `state` describes, under `map`, with a new `Generation`;
    /// returns the one left (whose consensus instance may serve as the retired one).
    pub(super) fn enter_generation(&mut self, map: SectionMap, state: SectionState) -> Generation {
        self.map = map;
        self.state = state;
        let next = self.start_generation();
        std::mem::replace(&mut self.current, next)
    }

    /// The generation `self.state` describes, started now. If its consensus instance does not
    /// start (a setup error: not expected for a saved state), the node takes no part in it
    /// and says why.
    pub(super) fn start_generation(&self) -> Generation {
        Generation::start(&self.config, &self.key, &self.state, self.now_ms).unwrap_or_else(
            |error| {
                warn!(%error, generation = self.state.generation, "the generation does not start");
                Generation::without_consensus(self.now_ms)
            },
        )
    }
}

/// Adds to `voters` the members whose votes `block` proves (only `named`, if the proposal
/// names its voter: in Single mode a block carries one member's vote).
pub(super) fn count_votes(
    voters: &mut BTreeSet<PeerId>,
    block: &Block,
    members: &[PeerId],
    named: Option<PeerId>,
) {
    for vote in &block.proof {
        let voter = vote.event.header.creator;
        if members.contains(&voter) && named.is_none_or(|named| named == voter) {
            voters.insert(voter);
        }
    }
}

/// The welcome of a handover: the joiner's section in the handover's generation and the state
/// it starts from.
pub(super) fn welcome_for(handover: &Handover) -> Welcome {
    Welcome {
        generation: handover.generation,
        prefix: handover.prefix,
        members: handover.members.clone(),
        events: handover.events,
        bytes: handover.bytes,
        commands: handover.commands.len() as u64,
        digest: handover.digest,
        numbering: handover.numbering,
        domain: handover.domain.clone(),
    }
}

/// The section state of a node at the network's start (generation 0), from the map.
pub(super) fn initial_state(
    key: &SigningKey,
    map: &SectionMap,
) -> Result<SectionState, EngineError> {
    let our_name = XorName::from_public_key(&key.verifying_key().to_bytes());
    let section = map
        .section_of_member(&our_name)
        .ok_or(EngineError::NotAMember)?;
    Ok(SectionState {
        generation: 0,
        prefix: section.prefix(),
        members: section.member_keys().into_iter().map(PeerId).collect(),
        network: network_of(map),
        holding: Holding::Complete,
        start_head: 0,
        handovers: Vec::new(),
    })
}

/// Every member of the map, in name order.
pub(super) fn network_of(map: &SectionMap) -> Vec<PeerId> {
    map.sections()
        .flat_map(|section| section.member_keys())
        .map(PeerId)
        .collect()
}

/// The consensus configuration of a section's generation: the node's, with the group id of
/// that generation, and an idle gossip pace that still hears from the other members several
/// times per silence span (an idle member that asked a down peer twice in a row must not
/// think itself cut off: `removal`).
pub(super) fn consensus_config(config: &EngineConfig, state: &SectionState) -> Config {
    let consensus = &config.consensus;
    let idle_gossip_interval_ms = match config.remove_silent_after_ms {
        Some(span) => consensus
            .idle_gossip_interval_ms
            .min(span / IDLE_SYNCS_PER_SILENCE_SPAN)
            .max(consensus.gossip_interval_ms),
        None => consensus.idle_gossip_interval_ms,
    };
    Config {
        group: group_id(&state.prefix, state.generation),
        idle_gossip_interval_ms,
        ..consensus.clone()
    }
}

impl Engine {
    /// Votes for a membership change of the current generation (again, in Supermajority
    /// mode, each time its cause comes back after `CHANGE_REVOTE_MS`).
    pub(super) fn vote_change(&mut self, change: MemberChange) {
        let voter = (self.config.consensus.block_mode == BlockMode::Single).then_some(self.our_id);
        let proposal = MembershipProposal {
            generation: self.state.generation,
            change,
            voter,
        };
        // In Supermajority mode a vote stays pending for `observation_window_rounds` only:
        // under load that is a fraction of a second, and members that see the need at
        // different moments (each on its own evidence: a laggard's request each
        // `JOIN_RETRY_MS`, a silence, a wish) would each vote alone and never together. So a
        // vote is made again when its cause comes again, at most every `CHANGE_REVOTE_MS`
        // (votes still pending count once). In Single mode each vote is a block of its own,
        // counted for the whole generation: once is enough.
        let voted_lately = self
            .current
            .voted_changes
            .get(&proposal)
            .is_some_and(|at| voter.is_some() || self.now_ms < at + CHANGE_REVOTE_MS);
        if voted_lately
            || !change_allowed(
                &self.state.prefix,
                &self.state.members,
                &change,
                self.map.section_size_min(),
            )
        {
            return;
        }
        let Some(consensus) = self.current.consensus.as_mut() else {
            return;
        };
        match consensus.vote_for(Observation::Payload(proposal.encode().into())) {
            Ok(_) => {
                self.current.voted_changes.insert(proposal, self.now_ms);
            }
            Err(error) => debug!(%error, "membership vote not taken"),
        }
    }

    /// An agreed membership change: counts the votes its block proves; once more than two
    /// thirds of the members voted for the change, it is the one to make (after the blocks
    /// before it). Every member counts the same blocks in the same order.
    pub(super) fn count_change(&mut self, block: &Block, proposal: MembershipProposal) {
        if proposal.generation != self.state.generation
            || !change_allowed(
                &self.state.prefix,
                &self.state.members,
                &proposal.change,
                self.map.section_size_min(),
            )
        {
            debug!(?proposal, "agreed membership change does not apply");
            return;
        }
        let members = &self.state.members;
        let voters = self
            .current
            .membership_votes
            .entry(proposal.change)
            .or_default();
        count_votes(voters, block, members, proposal.voter);
        if is_supermajority(voters.len(), members.len()) {
            self.current.pending_change = Some(proposal);
        }
    }

    /// Applies an agreed membership change (every block before it is applied): ends this
    /// generation and starts the next, with the new members, split if the section can split.
    /// Fixes the handover a joiner will fetch, saves the section state, welcomes the joiner,
    /// tells the other sections, and routes our pending commands again (their proposals
    /// died with the old instance; the new one or another section takes them). Returns
    /// false, changing nothing, if the store fails: the change waits and is tried again (a
    /// next generation started without its state saved could, after a crash, sign a second
    /// first event in it).
    pub(super) fn switch(&mut self, change: MemberChange) -> bool {
        let old_prefix = self.state.prefix;
        let (map, state) = match self.state_after(change) {
            Ok(next) => next,
            Err(reason) => {
                warn!("{reason}; the membership change waits");
                return false;
            }
        };
        if let Err(error) = state.save(&self.store) {
            warn!(%error, "section state not saved; the membership change waits");
            return false;
        }
        let generation = state.generation;
        self.update_generations.insert(change.node(), generation);
        let previous = self.enter_generation(map, state);
        self.retired = previous
            .consensus
            .map(|consensus| (generation - 1, consensus));
        // A refresh we asked for is moot once we switch generations ourselves.
        if self
            .joining
            .as_ref()
            .is_some_and(|joining| joining.refresh.is_some())
        {
            self.joining = None;
        }
        if self.state.members.is_empty() {
            self.leaving = None;
        }
        debug!(generation, prefix = %self.state.prefix, members = self.state.members.len(), ?change, "section changed");
        match change {
            MemberChange::Join(joiner) => {
                self.send_welcome(joiner);
                self.announce(old_prefix, generation, change);
            }
            // Nobody else's map changes.
            MemberChange::Refresh(member) => {
                self.send_welcome(member);
                self.refreshed_at.insert(member, self.now_ms);
            }
            MemberChange::Leave(_) => self.announce(old_prefix, generation, change),
        }
        self.reroute_pending();
        true
    }

    /// The map and section state after `change`, with the handover a joiner (or a refreshed
    /// member) will fetch; why not, if the store does not read.
    fn state_after(&self, change: MemberChange) -> Result<(SectionMap, SectionState), String> {
        let old_prefix = self.state.prefix;
        let generation = self.state.generation + 1;
        let min = self.map.section_size_min();
        let mut all = self.state.members.clone();
        let mut map = self.map.clone();
        match change {
            MemberChange::Join(node) => {
                all.push(node);
                map.add_member(node.0);
            }
            MemberChange::Leave(node) => {
                all.retain(|member| *member != node);
                map.remove_member(&name_of(&node));
            }
            MemberChange::Refresh(_) => {}
        }
        sort_members(&mut all);
        let head = self
            .store
            .head_position()
            .map_err(|error| format!("the store does not read ({error})"))?;
        let mut handovers = self.state.handovers.clone();
        if let MemberChange::Join(joiner) | MemberChange::Refresh(joiner) = change {
            let handover = self
                .handover(joiner, generation, old_prefix, &all, min, head)
                .map_err(|error| format!("no handover for the joiner ({error})"))?;
            handovers.push(handover);
        }
        let excess = handovers.len().saturating_sub(HANDOVERS_MAX);
        handovers.drain(..excess);
        let ours = section_after(old_prefix, &all, &self.our_id, min);
        let state = SectionState {
            generation,
            prefix: ours.as_ref().map_or(old_prefix, |(prefix, _)| *prefix),
            members: ours.map(|(_, members)| members).unwrap_or_default(),
            network: network_of(&map),
            holding: Holding::Complete,
            start_head: head,
            handovers,
        };
        Ok((map, state))
    }

    /// Sends `joiner` the welcome of its latest handover, if we hold one.
    pub(super) fn send_welcome(&mut self, joiner: PeerId) {
        if let Some(welcome) = self
            .state
            .handovers
            .iter()
            .rev()
            .find(|handover| handover.joiner == joiner)
            .map(welcome_for)
        {
            self.send(joiner, &Message::Welcome(welcome));
        }
    }

    /// Tells every node outside the section (as it was) that its members changed, and once
    /// more after `ANNOUNCE_REPEAT_MS`.
    fn announce(&mut self, old_prefix: Prefix, generation: u64, change: MemberChange) {
        let update = Message::SectionUpdate {
            prefix: old_prefix,
            generation,
            change,
        };
        let outsiders: Vec<PeerId> = self
            .state
            .network
            .iter()
            .copied()
            .filter(|node| !old_prefix.matches(&name_of(node)) && *node != self.our_id)
            .collect();
        for node in &outsiders {
            self.send(*node, &update);
        }
        self.announcement = Some((self.now_ms, outsiders, update));
    }

    /// The state a joiner of `generation` fetches: our store's `head` now, the digest of its
    /// section's events up to there and of its section's eventless commands.
    pub(super) fn handover(
        &self,
        joiner: PeerId,
        generation: u64,
        old_prefix: Prefix,
        all: &[PeerId],
        min: usize,
        head: u64,
    ) -> Result<Handover, StoreError> {
        let (prefix, members) = section_after(old_prefix, all, &joiner, min)
            .unwrap_or_else(|| (old_prefix, all.to_vec()));
        let events = all_section_events(&self.store, &prefix, Some(head))?;
        let commands = section_commands(&self.store, &prefix)?;
        Ok(Handover {
            joiner,
            generation,
            prefix,
            members,
            head,
            events: events.len() as u64,
            bytes: events.iter().map(|event| event.payload.len() as u64).sum(),
            digest: section_digest(&events, &commands),
            numbering: Some(numbering_of(&events, head)),
            commands,
            // Upgrades are applied in order before a switch: this is the generation's start.
            domain: Some(self.section_domain.clone()),
        })
    }
}
