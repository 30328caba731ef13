//! Our own events: when one is due, and the votes it carries.

use std::sync::Arc;

use tracing::debug;

use crate::config::EVENT_BYTES_MAX;
use crate::event::{SignedEvent, Vote};
use crate::graph::{EventNode, Slot};
use crate::ids::ObservationHash;
use crate::log::LogRecord;

use super::{Consensus, PendingVote, carried_observation};

impl Consensus {
    /// We create an event when we have votes to send, or when the graph holds votes that are
    /// not ordered yet (someone has to build the rounds that order them). Otherwise we stay
    /// quiet, so an idle group stops growing its graph.
    pub(super) fn wants_new_event(&self) -> bool {
        !self.pending_votes.is_empty() || !self.unordered_vote_events.is_empty()
    }

    /// Creates, signs and inserts our next event; logs it after the peer's events `received`.
    /// Returns false (and logs only `received`) when the parents are both of rounds we forgot:
    /// nobody could derive such an event (`Graph`, "exact or refused").
    pub(super) fn create_event(
        &mut self,
        now_ms: u64,
        other_parent: Option<Slot>,
        received: Vec<Arc<SignedEvent>>,
    ) -> bool {
        let self_parent = self.graph.head(self.me);
        if !self.graph.can_derive_from([self_parent, other_parent]) {
            debug!("no event of ours: both parents are of forgotten rounds");
            self.log_received(received);
            return false;
        }
        let (index, created_at_ms, self_parent_hash) =
            match self_parent.map(|slot| self.graph.get(slot)) {
                Some(parent) => (
                    parent.index + 1,
                    now_ms.max(parent.created_at_ms()),
                    Some(parent.hash),
                ),
                None => (0, now_ms, None),
            };
        let (votes, hashes) = if self_parent.is_some() {
            self.take_votes(self_parent, other_parent)
        } else {
            (Vec::new(), Vec::new())
        };
        let other_parent_hash = other_parent.map(|slot| self.graph.get(slot).hash);
        let (event, body) = SignedEvent::create_hashed(
            self.config.group,
            &self.key,
            index,
            self_parent_hash,
            other_parent_hash,
            created_at_ms,
            votes,
            hashes,
        );
        let event = Arc::new(event);
        match self.insert(Arc::clone(&event), self.me, body) {
            Ok(is_witness) => {
                self.stats.events_created += 1;
                if self.config.log_records {
                    self.log_records.push_back(LogRecord {
                        received,
                        created: Some(Arc::clone(&event)),
                    });
                }
                self.unpersisted.push_back(event);
                if is_witness {
                    self.advance_consensus();
                }
                true
            }
            // Our own event built on our own graph cannot fail the graph checks; if it did,
            // dropping it is the safe answer (nothing was sent).
            Err(error) => {
                debug_assert!(false, "own event rejected: {error}");
                self.log_received(received);
                false
            }
        }
    }

    /// Logs peers' events inserted in a step that made no event of ours.
    pub(super) fn log_received(&mut self, received: Vec<Arc<SignedEvent>>) {
        if !received.is_empty() {
            self.log_records.push_back(LogRecord {
                received,
                created: None,
            });
        }
    }

    /// Takes up to `votes_per_event_max` pending votes, and no more than fit an event of
    /// `EVENT_BYTES_MAX` (peers refuse larger events, so a larger one of ours would wedge our
    /// chain); votes by hash where the observation's carrier is an ancestor of the new event
    /// (so the vote is sure to count).
    pub(super) fn take_votes(
        &mut self,
        self_parent: Option<Slot>,
        other_parent: Option<Slot>,
    ) -> (Vec<Vote>, Vec<ObservationHash>) {
        let count = self
            .pending_votes
            .len()
            .min(self.config.votes_per_event_max);
        let mut votes = Vec::with_capacity(count);
        let mut hashes = Vec::with_capacity(count);
        let mut bytes = SignedEvent::ENCODED_OVERHEAD_MAX;
        let graph = &self.graph;
        // A vote by hash counts only while the tally it names is open, which the order
        // forgets `observation_window_rounds` after its first vote; so one goes by hash only
        // when its carrier is of a round pruning by rounds alone would still keep (carriers
        // older than that are held only for the prune age: a vote on them goes in full).
        let by_hash_floor = self
            .fame
            .next_round
            .saturating_sub(1 + self.config.prune_window_rounds);
        let parents: Vec<&EventNode> = [self_parent, other_parent]
            .into_iter()
            .flatten()
            .map(|slot| graph.get(slot))
            .collect();
        while votes.len() < count {
            let Some(pending_vote) = self.pending_votes.pop_front() else {
                break;
            };
            let hash = pending_vote.hash();
            let carrier = self
                .carriers
                .get(&hash)
                .and_then(|&carrier| graph.node(carrier));
            let carried_by_ancestor = carrier.is_some_and(|carrier| {
                carrier.round >= by_hash_floor
                    && !graph.is_forked(carrier.creator)
                    && parents
                        .iter()
                        .any(|parent| graph.is_ancestor(parent, carrier))
            });
            let vote = if carried_by_ancestor {
                Vote::ByHash(hash)
            } else {
                match &pending_vote {
                    PendingVote::Full(_, observation) => Vote::Full(observation.clone()),
                    #[cfg(feature = "byzantine")]
                    PendingVote::Unseen(hash) => Vote::ByHash(*hash),
                    PendingVote::Known(_) => {
                        match carrier.and_then(|carrier| carried_observation(carrier, &hash)) {
                            Some(observation) => Vote::Full(observation),
                            // Decided or pruned meanwhile: nothing left to vote for.
                            None => {
                                self.pending_vote_hashes.remove(&hash);
                                continue;
                            }
                        }
                    }
                }
            };
            let vote_bytes = SignedEvent::vote_encoded_len_max(&vote);
            if bytes + vote_bytes > EVENT_BYTES_MAX {
                // The next event takes it.
                self.pending_votes.push_front(pending_vote);
                break;
            }
            bytes += vote_bytes;
            self.pending_vote_hashes.remove(&hash);
            votes.push(vote);
            hashes.push(hash);
        }
        (votes, hashes)
    }
}
