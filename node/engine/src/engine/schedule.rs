//! The section's agreed time and scheduled commands (`CommandRequest::not_before_ms`).
//!
//! The section's clock is the latest agreed time of the generation's blocks, kept so that
//! it never goes back (`Generation::clock_ms`); agreed proposals execute at it. A member
//! proposes (or seconds) a scheduled command only once that clock reached its time, so the
//! block carrying it is later in the order and its time no earlier: honest proposals are
//! never early. A block that is early anyway (a faulty member's proposal, in Single mode
//! where one vote makes a block) is skipped by every member alike (`Applied::Early`).
//!
//! An idle section makes no blocks, so its clock stands still. A member asked to propose a
//! command that its own clock says is due, but the section's does not yet, proposes a tick
//! (`TickProposal`): a block that carries nothing and moves the clock on. Local clocks only
//! prompt; what executes when is the agreed order's business.

use chorus_aggregate::CommandRequest;
use chorus_consensus::{Observation, ObservationHash};
use tracing::debug;

use super::Engine;
use super::command_path::CommandOutcome;
use crate::proposal::TickProposal;

/// A tick period (ms): members whose clocks read the same period propose the same tick.
pub const TICK_MS: u64 = 250;

impl Engine {
    /// A scheduled command may be proposed once the section's clock reached its time;
    /// before, the answer says when, and a tick is proposed if our own clock says the time
    /// has come (the sender tries again: a process manager after `MANAGER_RETRY_MS`).
    pub(super) fn hold_until_due(
        &mut self,
        request: &CommandRequest,
    ) -> Result<(), CommandOutcome> {
        let Some(due) = request.not_before_ms else {
            return Ok(());
        };
        if due <= self.current.clock_ms {
            return Ok(());
        }
        if due <= self.now_ms {
            self.propose_tick();
        }
        Err(CommandOutcome::Failed(format!(
            "scheduled for {due} ms since the epoch; the section's agreed time is {} ms: \
             not due yet",
            self.current.clock_ms
        )))
    }

    /// Proposes a tick for our clock's period, once per period.
    fn propose_tick(&mut self) {
        let period = self.now_ms / TICK_MS;
        if self.current.ticked >= period {
            return;
        }
        let tick = TickProposal {
            generation: self.state.generation,
            period,
        };
        let Some(consensus) = self.current.consensus.as_mut() else {
            return;
        };
        match consensus.vote_for(Observation::Payload(tick.encode().into())) {
            Ok(_) => self.current.ticked = period,
            Err(error) => debug!(%error, "tick not proposed"),
        }
    }

    /// Supermajority mode: seconds another member's tick of this generation once our own
    /// clock reached its period (a tick from the future moves nothing).
    pub(super) fn second_tick(&mut self, hash: ObservationHash, tick: TickProposal) {
        if tick.generation != self.state.generation || tick.period > self.now_ms / TICK_MS {
            return;
        }
        if let Some(consensus) = self.current.consensus.as_mut() {
            let _ = consensus.vote_for_hash(hash);
        }
    }
}
