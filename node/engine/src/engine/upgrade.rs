//! Domain upgrades, agreed like membership changes (`docs/design-notes.md`, "Domain
//! upgrades"). The trust model is the section's: a domain is the section's once more than two
//! thirds of its members voted for it, so `f` faulty members can neither force an upgrade
//! nor stop one that the others vote for.
//!
//! - A member whose code is not the section's agreed domain but stands in for it
//!   (`NodeDomain::upgrades_from`) votes for its own (`UpgradeProposal`), again every
//!   `UPGRADE_VOTE_PERIOD_MS` until the section agrees.
//! - The votes are counted in block order; the upgrade takes effect after every block before
//!   the one that completes the supermajority is applied, the same point on every member.
//!   From there on commands execute under the new version (`CommandContext::domain_version`);
//!   a member whose code cannot run it halts, and its operator upgrades it.
//! - Only forward: a domain the section agreed on before is never agreed again (a rollback
//!   is a new version), so replaying a generation's blocks after a restart changes nothing.

use std::collections::BTreeSet;

use chorus_consensus::{Block, BlockMode, Observation, is_supermajority};
use tracing::{debug, info, warn};

use super::Engine;
use super::generation::count_votes;
use crate::domain::{UPGRADE_VOTE_PERIOD_MS, UpgradeProposal};

impl Engine {
    /// Votes that the section run our domain, when it agreed on another that our code
    /// stands in for and we take part: once per `UPGRADE_VOTE_PERIOD_MS` until it agrees.
    pub(super) fn vote_upgrade(&mut self) {
        let period = self.now_ms / UPGRADE_VOTE_PERIOD_MS;
        if self.section_domain.agreed == self.domain.runs
            || self
                .current
                .voted_upgrade
                .is_some_and(|voted| voted >= period)
            || !self.is_active_member()
            || self.halted().is_some()
        {
            return;
        }
        let voter = (self.config.consensus.block_mode == BlockMode::Single).then_some(self.our_id);
        let proposal = UpgradeProposal {
            generation: self.state.generation,
            domain: self.domain.runs.clone(),
            voter,
            period,
        };
        let Some(consensus) = self.current.consensus.as_mut() else {
            return;
        };
        match consensus.vote_for(Observation::Payload(proposal.encode().into())) {
            Ok(_) => {
                self.current.voted_upgrade = Some(period);
                info!(section = %self.section_domain.agreed, ours = %self.domain.runs, "voted to upgrade the section's domain");
            }
            Err(error) => debug!(%error, "upgrade vote not taken"),
        }
    }

    /// An agreed upgrade vote: counts the votes its block proves; once more than two thirds
    /// of the members voted for the same domain, it is the one to run (after the blocks
    /// before it). Every member counts the same blocks in the same order.
    pub(super) fn count_upgrade(&mut self, block: &Block, proposal: UpgradeProposal) {
        if proposal.generation != self.state.generation
            || self.section_domain.knows(&proposal.domain.digest)
        {
            debug!(domain = %proposal.domain, "agreed upgrade vote does not apply");
            return;
        }
        let members = &self.state.members;
        let mut voters = BTreeSet::new();
        count_votes(&mut voters, block, members, proposal.voter);
        // One vote per member, its latest (a faulty member voting for ever new domains
        // holds one entry, not one per domain).
        let votes = &mut self.current.upgrade_votes;
        for voter in voters {
            votes.insert(voter, proposal.domain.clone());
        }
        let agreeing = votes
            .values()
            .filter(|domain| **domain == proposal.domain)
            .count();
        if is_supermajority(agreeing, members.len()) {
            self.current.pending_upgrade = Some(proposal.domain);
        }
    }

    /// Makes the agreed upgrade, every block before it applied: saves the section's new
    /// domain; the next blocks execute under it. Our proposals decided under the old one are
    /// decided again (they would be stale). A member that cannot run the new domain halts.
    /// Returns false, changing nothing, if the store fails (tried again after the next
    /// message).
    pub(super) fn upgrade(&mut self) -> bool {
        let Some(next) = self.current.pending_upgrade.clone() else {
            return true;
        };
        let section = self.section_domain.upgraded(next);
        if let Err(error) = section.save(&self.store) {
            warn!(%error, "section domain not saved; the upgrade waits");
            return false;
        }
        self.section_domain = section;
        // The votes stay: a member restarted after this point replays the generation's
        // blocks and must count what we count (votes for a domain the section already ran
        // are skipped alike, by `knows`).
        self.current.pending_upgrade = None;
        info!(domain = %self.section_domain.agreed, generation = self.state.generation, "the section upgraded its domain");
        if !self.domain.can_run(&self.section_domain.agreed) {
            self.halt(format!(
                "the section upgraded to domain {} and this node runs domain {}: upgrade this \
                 node's application, then start it again on the same data directory",
                self.section_domain.agreed, self.domain.runs
            ));
            return true;
        }
        let decided: Vec<_> = self
            .proposed
            .iter()
            .filter(|(_, in_flight)| in_flight.decided_at.is_some())
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in decided {
            self.retry(command_id);
        }
        true
    }
}
