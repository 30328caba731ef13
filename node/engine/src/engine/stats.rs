//! What the engine reports about itself (for `/status` and test failure messages), as
//! figures rather than a sentence.

use serde::Serialize;

use super::Engine;
use super::admission::Refusals;
use crate::membership::MemberChange;

/// The engine's state in figures ([`Engine::stats`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// The section's generation.
    pub generation: u64,
    /// The section's prefix.
    pub prefix: String,
    /// Members of the section (0 while the node is no member).
    pub members: usize,
    /// Whether the node takes part with a complete store.
    pub active: bool,
    /// The previous generation, while its instance still answers laggards' gossip.
    pub retired_generation: Option<u64>,
    /// A membership change agreed and waiting for the blocks before it.
    pub pending_change: Option<MemberChange>,
    /// Commands waiting for an answer here (clients', forwarded ones, managers').
    pub waiting: usize,
    /// Our proposals in agreement.
    pub proposed: usize,
    /// Commands we forwarded to another section.
    pub forwarded: usize,
    /// Streams with a command of ours in agreement or queued.
    pub queued_streams: usize,
    /// Agreed proposals not applied yet.
    pub unapplied: usize,
    /// Others' proposals kept for a later second.
    pub deferred_seconds: usize,
    /// Asking to join, or to be brought back.
    pub joining: bool,
    /// Fetching the section's state.
    pub transferring: bool,
    /// Process managers with events in flight (commands not all answered).
    pub managers_busy: usize,
    /// The proposal of ours that has waited longest.
    pub oldest_proposal: Option<OldestProposal>,
    /// What the engine refused from peers since it started, by reason.
    pub refusals: Refusals,
}

/// The proposal of ours that has waited longest for a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OldestProposal {
    /// Its command id, hex.
    pub command_id: String,
    /// Its stream.
    pub stream: String,
    /// Proposals of it so far, the first counting 0.
    pub attempt: u32,
    /// Supermajority mode: the stream version it was decided at.
    pub decided_at: Option<u64>,
    /// When it was last proposed (the engine's clock).
    pub proposed_at_ms: u64,
}

impl Engine {
    /// The engine's state in figures, for status pages and diagnostics.
    pub fn stats(&self) -> EngineStats {
        let oldest = self
            .proposed
            .values()
            .min_by_key(|in_flight| in_flight.proposed_at_ms);
        EngineStats {
            generation: self.state.generation,
            prefix: self.state.prefix.to_string(),
            members: self.state.members.len(),
            active: self.is_active_member(),
            retired_generation: self.retired.as_ref().map(|(generation, _)| *generation),
            pending_change: self.current.pending_change.map(|proposal| proposal.change),
            waiting: self.waiters.len(),
            proposed: self.proposed.len(),
            forwarded: self.forwarded.len(),
            queued_streams: self.streams.len(),
            unapplied: self.unapplied.len(),
            deferred_seconds: self.current.deferred_seconds.len(),
            joining: self.joining.is_some(),
            transferring: self.transfer.is_some(),
            managers_busy: self
                .managers
                .iter()
                .filter(|run| !run.in_flight.is_empty())
                .count(),
            oldest_proposal: oldest.map(|in_flight| OldestProposal {
                command_id: in_flight.request.command_id.to_hex(),
                stream: in_flight.request.stream.to_string(),
                attempt: in_flight.attempts,
                decided_at: in_flight.decided_at,
                proposed_at_ms: in_flight.proposed_at_ms,
            }),
            refusals: self.refusals(),
        }
    }
}
