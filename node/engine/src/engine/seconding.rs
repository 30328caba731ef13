//! Other members' proposals seconded when this member decides the same, and agreed blocks
//! applied to the store in order.

use chorus_aggregate::{CommandId, CommandRequest, EventStore};
use chorus_consensus::{Block, BlockMode, Consensus, Observation, ObservationHash};
use chorus_routing::XorName;
use tracing::{debug, warn};

use crate::apply::{AgreedProposal, Applied, apply_agreed};
use crate::domain::UpgradeProposal;
use crate::membership::MembershipProposal;
use crate::proposal::{Proposal, TickProposal};

use super::Engine;
use super::command_path::{CommandOutcome, same_command};
use super::limits::{DEFER_AHEAD_MAX, DEFERRED_SECONDS_MAX};

/// What a block carries for the engine.
pub(super) enum Agreed {
    Proposal(AgreedProposal),
    Membership(MembershipProposal),
    Upgrade(UpgradeProposal),
}

/// A block's proposal or membership change, if it carries one (accusations and undecodable
/// payloads carry none).
pub(super) fn agreed_item(block: &Block, clock_ms: u64) -> Option<Agreed> {
    let Observation::Payload(bytes) = &block.observation else {
        return None;
    };
    // A tick only moves the clock.
    if TickProposal::decode(bytes).is_some() {
        return None;
    }
    match MembershipProposal::decode(bytes) {
        Some(Ok(change)) => return Some(Agreed::Membership(change)),
        Some(Err(error)) => {
            debug!(block = block.sequence, %error, "agreed membership change does not decode");
            return None;
        }
        None => {}
    }
    match UpgradeProposal::decode(bytes) {
        Some(Ok(upgrade)) => return Some(Agreed::Upgrade(upgrade)),
        Some(Err(error)) => {
            debug!(block = block.sequence, %error, "agreed upgrade vote does not decode");
            return None;
        }
        None => {}
    }
    match Proposal::decode(bytes) {
        Ok(proposal) => Some(Agreed::Proposal(AgreedProposal {
            timestamp_ms: clock_ms,
            proposal,
        })),
        Err(error) => {
            debug!(block = block.sequence, %error, "agreed payload is not a proposal");
            None
        }
    }
}

impl Engine {
    /// Takes the agreed blocks out of consensus: proposals for our streams wait to be
    /// applied; membership and upgrade votes are counted.
    pub(super) fn take_blocks(&mut self) {
        let clock_before = self.current.clock_ms;
        // Blocks after a membership change belong to a generation that has ended: they are
        // never taken out, on any member (the next generation's blocks follow the change).
        // Blocks after an upgrade wait until it is made: they execute under the new domain.
        while self.current.pending_change.is_none() && self.current.pending_upgrade.is_none() {
            let Some(block) = self
                .current
                .consensus
                .as_mut()
                .and_then(Consensus::poll_block)
            else {
                break;
            };
            // The section's clock: the latest agreed time, never going back within the
            // generation (so a command agreed after another never executes earlier).
            self.current.clock_ms = self.current.clock_ms.max(block.timestamp_ms);
            let clock_ms = self.current.clock_ms;
            match agreed_item(&block, clock_ms) {
                Some(Agreed::Proposal(proposal)) => {
                    let stream = proposal.proposal.request().stream.qualified();
                    if self
                        .state
                        .prefix
                        .matches(&XorName::from_stream_key(&stream))
                    {
                        self.unapplied.push(proposal);
                    } else {
                        // Agreed here for a stream another section owns (a stale map, or a
                        // faulty member): every member ignores it alike, and records
                        // nothing, so the owner can still take the command.
                        let command_id = proposal.proposal.request().command_id;
                        debug!(%command_id, %stream, "agreed proposal for another section's stream ignored");
                        self.answer(
                            command_id,
                            &CommandOutcome::Failed(
                                "the stream belongs to another section; send the command again"
                                    .to_owned(),
                            ),
                        );
                    }
                }
                Some(Agreed::Membership(change)) => self.count_change(&block, change),
                Some(Agreed::Upgrade(upgrade)) => self.count_upgrade(&block, upgrade),
                None => {}
            }
        }
        // Blocks that moved only the clock (ticks) apply nothing, and so do not reach
        // `after_blocks`: scheduled commands kept for a second may be due now.
        if self.current.clock_ms > clock_before
            && self.unapplied.is_empty()
            && !self.current.deferred_seconds.is_empty()
        {
            self.reconsider_deferred();
        }
    }

    /// Votes for another member's observation when we agree with it (Supermajority mode; a
    /// block needs no second in Single mode): a `Decided` proposal only if we decide the same
    /// events; one decided at a version our store has not reached yet (at most
    /// `DEFER_AHEAD_MAX` ahead) is kept and considered again after the next blocks. A
    /// `Command` proposal is seconded: its events are decided by every member at apply time.
    /// Accusations are not seconded: the consensus layer votes them when it holds evidence.
    pub(super) fn consider_second(&mut self, hash: ObservationHash, observation: &Observation) {
        if self.config.consensus.block_mode == BlockMode::Single {
            return;
        }
        let Observation::Payload(bytes) = observation else {
            return;
        };
        // Membership changes are voted only by members that heard the request themselves;
        // upgrades only by members that run the new domain; ticks by members whose clock
        // reached them.
        if MembershipProposal::decode(bytes).is_some() || UpgradeProposal::decode(bytes).is_some() {
            return;
        }
        if let Some(tick) = TickProposal::decode(bytes) {
            self.second_tick(hash, tick);
            return;
        }
        let proposal = Proposal::decode(bytes);
        if let Ok(proposal) = &proposal {
            let stream = proposal.request().stream.qualified();
            if !self
                .state
                .prefix
                .matches(&XorName::from_stream_key(&stream))
            {
                return; // another section's stream: never applied here
            }
        }
        match proposal {
            Ok(Proposal::Command(_)) => {
                if let Some(consensus) = self.current.consensus.as_mut() {
                    let _ = consensus.vote_for_hash(hash);
                }
            }
            // Our store is not up to the agreed order yet (blocks wait to be applied, or a
            // joiner's state is still coming): judge it once it is. Consensus announces an
            // observation once, so one dropped here would never be seconded by us.
            Ok(proposal @ Proposal::Decided { .. })
                if !self.unapplied.is_empty() || !self.state.holds_state() =>
            {
                if self.current.deferred_seconds.len() < DEFERRED_SECONDS_MAX {
                    self.current.deferred_seconds.push((hash, proposal));
                }
            }
            Ok(proposal @ Proposal::Decided { .. }) => self.second_if_agreed(hash, proposal),
            Err(error) => debug!(%error, "an observation that is not a proposal"),
        }
    }

    pub(super) fn second_if_agreed(&mut self, hash: ObservationHash, proposal: Proposal) {
        let Proposal::Decided { version, .. } = &proposal else {
            return;
        };
        // A scheduled command is seconded only once the section's clock reached it: kept
        // until then (consensus announces an observation once).
        if proposal
            .request()
            .not_before_ms
            .is_some_and(|due| due > self.current.clock_ms)
        {
            if self.current.deferred_seconds.len() < DEFERRED_SECONDS_MAX {
                self.current.deferred_seconds.push((hash, proposal));
            }
            return;
        }
        let ours = self
            .store
            .stream_info(&proposal.request().stream)
            .ok()
            .map(|info| info.map_or(0, |info| info.version));
        match ours {
            // A dropped second (back-pressure) is covered by the proposer's timeout.
            Some(ours)
                if ours == *version
                    && self
                        .decide_proposal(proposal.request())
                        .is_ok_and(|decided| decided == proposal) =>
            {
                if let Some(consensus) = self.current.consensus.as_mut() {
                    let _ = consensus.vote_for_hash(hash);
                }
            }
            // Decided at a version we have not reached: second it later, if there is room.
            Some(ours)
                if ours < *version
                    && *version - ours <= DEFER_AHEAD_MAX
                    && self.current.deferred_seconds.len() < DEFERRED_SECONDS_MAX =>
            {
                self.current.deferred_seconds.push((hash, proposal));
            }
            _ => {}
        }
    }

    /// Applies the agreed proposals not applied yet. On a storage failure they stay, and go
    /// first next time: a member never applies a later block over a gap.
    pub(super) fn apply(&mut self) {
        let agreed = std::mem::take(&mut self.unapplied);
        let results = match apply_agreed(
            &self.registry,
            &self.store,
            &self.section_domain.agreed.version,
            &agreed,
        ) {
            Ok(results) => results,
            Err(error) => {
                warn!(%error, blocks = agreed.len(), "applying agreed blocks failed; will retry");
                self.unapplied = agreed;
                return;
            }
        };
        for (agreed, result) in agreed.iter().zip(results) {
            let request = agreed.proposal.request();
            let command_id = request.command_id;
            let ours = self.proposed.get(&command_id).map(|in_flight| {
                (
                    same_command(&in_flight.request, request),
                    in_flight.decided_at,
                )
            });
            let Some(outcome) = self.outcome_of(command_id, ours, result) else {
                continue;
            };
            match (ours, self.proposed.get(&command_id)) {
                (Some((true, _)), Some(in_flight)) => {
                    let request = in_flight.request.clone();
                    self.finish(&request, &outcome);
                }
                // Another command was agreed under our command's id (an id reused, or taken by
                // a faulty member): ours can no longer apply under it.
                (Some((false, _)), Some(in_flight)) => {
                    let request = in_flight.request.clone();
                    self.finish(&request, &CommandOutcome::IdTaken);
                }
                _ => self.answer(command_id, &outcome),
            }
        }
        self.after_blocks();
    }

    /// What an applied proposal means for its waiters, or `None` when it applied nothing
    /// that settles the command (then it is proposed again, if it was ours). `ours`: whether
    /// the agreed command is the one we proposed under its id, and the version we decided it
    /// at.
    fn outcome_of(
        &mut self,
        command_id: CommandId,
        ours: Option<(bool, Option<u64>)>,
        result: Applied,
    ) -> Option<CommandOutcome> {
        match result {
            // Lost a race: its originator decides again, unless this block is an older
            // attempt than the one in agreement now.
            Applied::Stale { decided_at, .. } => {
                if let Some((true, Some(current))) = ours {
                    if current == decided_at {
                        self.retry(command_id);
                    }
                }
                None
            }
            // Agreed before its time: proposed again (ours), or its waiters told to send it
            // again.
            Applied::Early {
                not_before_ms,
                agreed_ms,
            } => {
                debug!(%command_id, not_before_ms, agreed_ms, "scheduled command agreed early; not applied");
                if let Some((true, _)) = ours {
                    self.retry(command_id);
                } else {
                    let reason = format!(
                        "scheduled for {not_before_ms}, agreed at {agreed_ms}: not due yet"
                    );
                    self.answer(command_id, &CommandOutcome::Failed(reason));
                }
                None
            }
            // Events the command does not decide were proposed under its id; never applied.
            // If it was our command, we propose it again honestly.
            Applied::Forged(reason) => {
                debug!(%command_id, %reason, "forged proposal not applied");
                if let Some((true, _)) = ours {
                    self.retry(command_id);
                }
                None
            }
            Applied::Appended(outcome) => Some(CommandOutcome::Committed(outcome)),
            Applied::Duplicate(outcome) => Some(CommandOutcome::AlreadyCommitted(outcome)),
            Applied::Refused(reason) => Some(CommandOutcome::Refused(reason)),
            Applied::Invalid(reason) => Some(CommandOutcome::Invalid(reason)),
        }
    }

    /// Supermajority mode, after blocks moved streams on: our proposals decided at a version
    /// their stream has left can never become blocks (members vote only for what they decide
    /// now), so they are decided again at once; deferred seconds are reconsidered, and those
    /// whose stream has passed their version are dropped.
    pub(super) fn after_blocks(&mut self) {
        if self.config.consensus.block_mode == BlockMode::Single {
            return;
        }
        let version_of = |store: &EventStore, request: &CommandRequest| {
            store
                .stream_info(&request.stream)
                .ok()
                .flatten()
                .map_or(0, |info| info.version)
        };
        let doomed: Vec<CommandId> = self
            .proposed
            .iter()
            .filter(|(_, in_flight)| {
                let version = version_of(&self.store, &in_flight.request);
                in_flight
                    .decided_at
                    .is_some_and(|decided_at| version > decided_at)
            })
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in doomed {
            self.retry(command_id);
        }
        self.reconsider_deferred();
    }

    /// Judges the deferred seconds again (after blocks, or when the clock moved).
    pub(super) fn reconsider_deferred(&mut self) {
        for (hash, proposal) in std::mem::take(&mut self.current.deferred_seconds) {
            self.second_if_agreed(hash, proposal);
        }
    }
}
