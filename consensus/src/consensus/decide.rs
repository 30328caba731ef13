//! Virtual voting driven forward: fame, order and blocks as events arrive, stale slots, and
//! pruning below the last decided round.

use std::sync::Arc;

use tracing::debug;

use crate::event::Vote;
use crate::graph::Slot;
use crate::ids::ObservationHash;

use super::{Consensus, carried_observation};

impl Consensus {
    /// Runs fame elections; orders the events of newly decided rounds, tallies their votes
    /// into blocks, and prunes what no future decision needs.
    pub(super) fn advance_consensus(&mut self) {
        let decided_rounds = self.fame.update(&self.graph);
        if decided_rounds.is_empty() {
            return;
        }
        for decided in &decided_rounds {
            for &(slot, famous) in &decided.fame {
                if let Some(node) = self.graph.node_mut(slot) {
                    node.famous = Some(famous);
                }
            }
            let (ordered, stale) = self.order.receive(&self.graph, decided);
            for slot in stale {
                self.on_stale(slot);
            }
            for ordered_event in ordered {
                self.consensus_time_ms = self.consensus_time_ms.max(ordered_event.timestamp_ms);
                self.unordered_vote_events.remove(&ordered_event.slot);
                let node = self.graph.get(ordered_event.slot);
                self.ordered_creators.note(node.creator);
                let blocks = self.tallies.tally_event(
                    node,
                    ordered_event.round_received,
                    ordered_event.timestamp_ms,
                );
                if let Some(node) = self.graph.node_mut(ordered_event.slot) {
                    node.round_received = Some(ordered_event.round_received);
                    // Tallied: the proofs are cut, the tree is no longer needed.
                    node.votes_tree = None;
                }
                for block in blocks {
                    self.carriers.remove(&block.observation_hash);
                    self.spare_carriers.remove(&block.observation_hash);
                    self.stats.blocks += 1;
                    let own_head = self
                        .graph
                        .head(self.me)
                        .map(|slot| self.graph.get(slot).index);
                    self.blocks.push_back((block, own_head));
                }
            }
            // An observation whose tally was forgotten is no longer carried: a vote for it
            // again must go in full, since only a full vote opens a tally. (Its carrier can
            // outlive the tally: pruning waits `prune_min_age_ms`, and 64 rounds under load
            // are well under that.)
            for hash in self.tallies.expire(decided.round) {
                self.carriers.remove(&hash);
                self.spare_carriers.remove(&hash);
            }
        }
        let last_decided = self.fame.next_round.saturating_sub(1);
        // Pruning goes by consensus time (the latest consensus timestamp ordered): every
        // member prunes alike at the same point of the order, and a replay exactly as the
        // live run did. (With the caller's clock, a replay pruned otherwise and once forgot a
        // parent a later logged event named: the node could not restart. With our own
        // events' clock, a member catching up stamped many decisions with its stale clock
        // and pruned what the next batch built on.) While a member has no event in the
        // order, a longer age lets it start late and still get in (`aging.rs`).
        let min_age_ms = if self.ordered_creators.any_missing() {
            self.config
                .prune_min_age_ms
                .max(self.config.prune_min_age_absent_ms)
        } else {
            self.config.prune_min_age_ms
        };
        let prune_by =
            self.decided_at
                .round_to_prune_by(last_decided, self.consensus_time_ms, min_age_ms);
        self.prune(prune_by);
    }

    /// An event no round will ever receive: its votes never count. If it is ours, vote again.
    pub(super) fn on_stale(&mut self, slot: Slot) {
        self.stats.events_stale += 1;
        self.unordered_vote_events.remove(&slot);
        let node = self.graph.get(slot);
        debug!(event = %node.hash, round = node.round, "event is stale and will never be ordered");
        // Its full votes will never be tallied, so it can no longer carry their observations:
        // forget it as a carrier (every member does, at the same point of the order), so that
        // a re-vote goes out in full and is announced again for seconding.
        // A spare carrier (a re-vote that arrived first) takes over and is announced again.
        if let Some(tree) = &node.votes_tree {
            for (vote, leaf) in node.event.votes.iter().zip(tree.leaves()) {
                let hash = ObservationHash(*leaf);
                if !matches!(vote, Vote::Full(_)) || self.carriers.get(&hash) != Some(&slot) {
                    continue;
                }
                self.carriers.remove(&hash);
                let spare = self
                    .spare_carriers
                    .remove(&hash)
                    .filter(|&spare| spare != slot);
                if let Some(spare) = spare.filter(|&spare| self.graph.is_held(spare)) {
                    self.carriers.insert(hash, spare);
                    let spare_creator = self.graph.get(spare).creator;
                    if let (true, Some(observation)) = (
                        spare_creator != self.me && !self.replaying,
                        carried_observation(self.graph.get(spare), &hash),
                    ) {
                        if self.observations.len() < self.config.output_queue_max {
                            self.observations.push_back((hash, observation));
                        }
                    }
                }
            }
        }
        let node = self.graph.get(slot);
        if node.creator == self.me {
            let event = Arc::clone(&node.event);
            for vote in &event.votes {
                // Back-pressure can refuse a re-vote; the observation is then as lost as if
                // we had never voted, which the caller's own retry logic covers.
                let _ = match vote {
                    Vote::Full(observation) => self.vote_for(observation.clone()).map(|_| ()),
                    Vote::ByHash(hash) => self.vote_for_hash(*hash),
                };
            }
        }
    }

    pub(super) fn prune(&mut self, last_decided: u64) {
        let cutoff = last_decided.saturating_sub(self.config.prune_window_rounds);
        if cutoff <= self.graph.pruned_below_round {
            return;
        }
        let forget_below = cutoff.saturating_sub(self.config.prune_window_rounds);
        let dropped = self.graph.prune_below(cutoff, forget_below);
        self.stats.events_pruned += dropped as u64;
        let graph = &self.graph;
        self.carriers.retain(|_, slot| graph.is_held(*slot));
        self.spare_carriers.retain(|_, slot| graph.is_held(*slot));
        self.unordered_vote_events
            .retain(|slot| graph.is_held(*slot));
    }
}
