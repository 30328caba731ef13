//! Gossip in: answering a peer's sync request (a pure read) and inserting what a peer sent,
//! with the checks every received event passes and fork evidence when a creator forked.

use std::sync::Arc;

use tracing::{debug, warn};

use crate::config::{SYNC_BYTES_MAX, WANTED_PER_SYNC_MAX};
use crate::error::{EventError, SyncError};
use crate::event::{CheckedBody, Observation, SignedEvent, Vote, verify_signatures};
use crate::evidence::ForkEvidence;
use crate::graph::{Derivation, Slot};
use crate::ids::{EventHash, HashSetPrehashed, ObservationHash, PeerId};
use crate::sync::{SyncReport, SyncRequest, SyncResponse};

use super::pace::Answer;
use super::{Consensus, PendingVote};

/// Encoded size of a sync response without its events: the version byte and the length of
/// the event list.
const RESPONSE_OVERHEAD_BYTES: usize = 1 + 8;

/// Most self-ancestors sent along with one wanted event.
const WANTED_CHAIN_DEPTH_MAX: usize = 64;

impl Consensus {
    /// Answers a peer's sync request with the events it lacks, parents first, at most
    /// `events_per_sync_max`. The graph does not change; if the request shows the peer holds
    /// events we lack, we queue a sync to pull them (`pace`).
    pub fn handle_sync_request(
        &mut self,
        from: &PeerId,
        request: &SyncRequest,
    ) -> Result<SyncResponse, SyncError> {
        let response = self.answer_sync_request(from, request)?;
        if let Some(&index) = self.member_index.get(from) {
            self.pace_after_request(index, request);
            self.push_note_request(index, request);
        }
        Ok(response)
    }

    /// `handle_sync_request` without the pace: a pure read (the answer alone; nothing is
    /// queued).
    pub fn answer_sync_request(
        &self,
        from: &PeerId,
        request: &SyncRequest,
    ) -> Result<SyncResponse, SyncError> {
        if !self.member_index.contains_key(from) {
            return Err(SyncError::NotAMember(*from));
        }
        if request.known.len() != self.members.len() {
            return Err(SyncError::WrongClockLength {
                got: request.known.len(),
                expected: self.members.len(),
            });
        }
        if request.wanted.len() > WANTED_PER_SYNC_MAX {
            return Err(SyncError::TooManyWanted {
                got: request.wanted.len(),
                max: WANTED_PER_SYNC_MAX,
            });
        }
        let limit = self.config.events_per_sync_max;
        let mut chosen: HashSetPrehashed<EventHash> = HashSetPrehashed::default();
        let mut slots: Vec<Slot> = Vec::new();
        // A wanted event comes with those of its self-ancestors the requester may lack (a
        // missing fork branch is usually more than one level deep). An ancestor below both
        // the requester's next index for its creator and the creator's first fork is on the
        // one chain the requester holds: the walk stops there, so held ancestors never crowd
        // out missing events. (A forgotten ancestor also ends the walk; a retired one is
        // served, see `Graph`.)
        for hash in &request.wanted {
            let mut next = self.graph.held_or_retired_slot(hash);
            let mut depth = 0;
            while let Some((slot, node)) = next
                .filter(|_| depth < WANTED_CHAIN_DEPTH_MAX)
                .and_then(|slot| Some((slot, self.graph.node(slot)?)))
            {
                let held = node.index < request.known[node.creator]
                    && node.index < self.graph.first_fork_index(node.creator);
                if depth > 0 && held {
                    break;
                }
                if chosen.insert(node.hash) {
                    slots.push(slot);
                }
                depth += 1;
                next = node.self_parent;
            }
        }
        for (creator, &known) in request.known.iter().enumerate() {
            for slot in self.graph.slots_of_creator_from(creator, known, limit) {
                let Some(node) = self.graph.node(slot) else {
                    continue;
                };
                let durable = self
                    .durable_index
                    .is_some_and(|durable| node.index <= durable);
                if (creator != self.me || durable) && chosen.insert(node.hash) {
                    slots.push(slot);
                }
            }
        }
        // Slots are in insertion order, which is topological: sorting and cutting keeps
        // every sent event's missing parents before it or already held (see ARCHITECTURE.md,
        // "Sync"), and the oldest missing events go first, so every answer lets the
        // requester insert something. The cut is by count and by bytes, so the answer always
        // fits one message (an answer we could not encode would leave the requester asking
        // for it forever); every event fits, since EVENT_BYTES_MAX is far below
        // SYNC_BYTES_MAX.
        slots.sort_unstable();
        let mut bytes = RESPONSE_OVERHEAD_BYTES;
        let mut events = Vec::new();
        for slot in slots {
            let event = &self.graph.get(slot).event;
            bytes += event.encoded_len_max();
            if events.len() >= limit || bytes > SYNC_BYTES_MAX {
                break;
            }
            events.push(Arc::clone(event));
        }
        Ok(SyncResponse { events })
    }

    /// Inserts the events a peer sent (checking each), runs the virtual voting, and, if there
    /// is anything to agree on, creates our next event with the peer's latest as other-parent.
    /// Then paces the next sync (`pace`): at once while work remains.
    pub fn handle_sync_response(
        &mut self,
        now_ms: u64,
        from: &PeerId,
        response: SyncResponse,
    ) -> Result<SyncReport, SyncError> {
        let Some(&from_index) = self.member_index.get(from) else {
            return Err(SyncError::NotAMember(*from));
        };
        self.pace.observe_now(now_ms);
        self.push_note_heard(from_index);
        let round_before = self.stats.max_round;
        let report = self.insert_response(now_ms, from, from_index, response)?;
        let answer = Answer {
            inserted: report.inserted,
            created: report.created_event,
            advanced: self.stats.max_round > round_before,
        };
        self.pace_after_response(now_ms, from_index, answer);
        Ok(report)
    }

    /// `handle_sync_response` without the pace.
    fn insert_response(
        &mut self,
        now_ms: u64,
        from: &PeerId,
        from_index: usize,
        response: SyncResponse,
    ) -> Result<SyncReport, SyncError> {
        if response.events.len() > self.config.events_per_sync_max {
            warn!(peer = %from, events = response.events.len(), "sync response exceeds events_per_sync_max");
            return Err(SyncError::TooManyEvents {
                got: response.events.len(),
                max: self.config.events_per_sync_max,
            });
        }
        let mut report = SyncReport::default();
        let mut checked: Vec<(Arc<SignedEvent>, usize, CheckedBody)> = Vec::new();
        // Each header is hashed once here; the checks below reuse the hash.
        let hashes: Vec<EventHash> = response
            .events
            .iter()
            .map(|event| event.header.hash())
            .collect();
        let sent: HashSetPrehashed<EventHash> = hashes.iter().copied().collect();
        for (event, hash) in response.events.into_iter().zip(hashes) {
            match self.check_received(&event, hash) {
                Ok(None) => report.duplicates += 1,
                Ok(Some((creator, body))) => checked.push((event, creator, body)),
                Err(error) => report.rejected.push(error),
            }
        }
        let items: Vec<_> = checked
            .iter()
            .map(|(event, creator, body)| (event.as_ref(), body.hash, &self.member_keys[*creator]))
            .collect();
        let valid = verify_signatures(&items);
        let mut new_witness = false;
        let mut inserted = Vec::new();
        for ((event, creator, body), signature_ok) in checked.into_iter().zip(valid) {
            if !signature_ok {
                report.rejected.push(EventError::BadSignature(body.hash));
                continue;
            }
            // A second copy in the same response (checked only after the signature, so a
            // forged copy sent first cannot shadow the genuine one).
            if self.graph.contains(&body.hash) {
                report.duplicates += 1;
                continue;
            }
            let logged = self.config.log_records.then(|| Arc::clone(&event));
            match self.insert(event, creator, body) {
                Ok(is_witness) => {
                    report.inserted += 1;
                    new_witness |= is_witness;
                    inserted.extend(logged);
                }
                Err(error) => report.rejected.push(error),
            }
        }
        for error in &report.rejected {
            self.stats.events_rejected += 1;
            // Only the roots of what is missing: a parent that was itself in the response (and
            // failed for want of its own parent) would only crowd the wanted list.
            if let EventError::UnknownParent { parent, .. } = error {
                if !sent.contains(parent) {
                    self.want(*parent);
                }
            }
            if error.is_misbehaviour() {
                warn!(peer = %from, %error, "peer sent an invalid event");
            } else {
                debug!(peer = %from, %error, "event not inserted");
            }
        }
        if new_witness {
            self.advance_consensus();
        }
        if self.wants_new_event() {
            if let Some(other_parent) = self.graph.head(from_index) {
                report.created_event = self.create_event(now_ms, Some(other_parent), inserted);
                return Ok(report);
            }
        }
        self.log_received(inserted);
        Ok(report)
    }

    /// Remembers a missing parent to ask for by hash; the oldest wish makes room.
    pub(super) fn want(&mut self, hash: EventHash) {
        if self.wanted.contains(&hash) {
            return;
        }
        if self.wanted.len() >= WANTED_PER_SYNC_MAX {
            self.wanted.pop_front();
        }
        self.wanted.push_back(hash);
    }

    /// Stateless checks and membership; `Ok(None)` for an event we already hold.
    pub(super) fn check_received(
        &self,
        event: &SignedEvent,
        hash: EventHash,
    ) -> Result<Option<(usize, CheckedBody)>, EventError> {
        if self.graph.contains(&hash) {
            return Ok(None);
        }
        let creator = *self
            .member_index
            .get(&event.header.creator)
            .ok_or(EventError::NotAMember(event.header.creator))?;
        if event.header.group != self.config.group {
            return Err(EventError::WrongGroup(hash));
        }
        let body = event.check_body_hashed(hash)?;
        Ok(Some((creator, body)))
    }

    /// Inserts a checked event; returns whether it is a witness.
    pub(super) fn insert(
        &mut self,
        event: Arc<SignedEvent>,
        creator: usize,
        body: CheckedBody,
    ) -> Result<bool, EventError> {
        let CheckedBody { hash, votes_tree } = body;
        let has_votes = !event.votes.is_empty();
        // Observations carried in full for the first time: remember the carrier (for votes
        // by hash) and tell the caller (so it can second them).
        let mut first_carried = Vec::new();
        let mut carried_again = Vec::new();
        for (vote, leaf) in event.votes.iter().zip(votes_tree.leaves()) {
            let observation_hash = ObservationHash(*leaf);
            if let Vote::Full(observation) = vote {
                if self.tallies.is_decided(&observation_hash) {
                    continue;
                }
                if self.carriers.contains_key(&observation_hash) {
                    carried_again.push(observation_hash);
                } else {
                    first_carried.push((observation_hash, observation));
                }
            }
        }
        let tree = has_votes.then_some(votes_tree);
        // A replayed log inserts what was inserted when it was written: a log written before
        // "exact or refused" may hold an event on parents of rounds now forgotten.
        let check = if self.replaying {
            Derivation::AsLogged
        } else {
            Derivation::Exact
        };
        let inserted = self
            .graph
            .insert(Arc::clone(&event), hash, creator, tree, check)?;
        let slot = inserted.slot;
        self.stats.events_inserted += 1;
        self.stats.events_on_pruned_parents += u64::from(inserted.on_retired_parent);
        if !self.wanted.is_empty() {
            self.wanted.retain(|wanted| *wanted != hash);
        }
        if let Some(fork) = inserted.fork {
            self.on_fork(creator, fork);
        }
        for observation_hash in carried_again {
            self.spare_carriers.insert(observation_hash, slot);
        }
        for (observation_hash, observation) in first_carried {
            self.carriers.insert(observation_hash, slot);
            if creator != self.me
                && !self.replaying
                && self.observations.len() < self.config.output_queue_max
            {
                self.observations
                    .push_back((observation_hash, observation.clone()));
            }
        }
        if has_votes {
            self.unordered_vote_events.insert(slot);
        }
        self.order.add_pending(slot);
        Ok(self.graph.get(slot).is_witness)
    }

    pub(super) fn on_fork(&mut self, creator: usize, fork: ForkEvidence) {
        warn!(offender = %self.members[creator], index = fork.first.header.index, "member forked its chain");
        if self.accused.insert(creator) {
            let offender = self.members[creator];
            if self.evidence.len() < self.config.output_queue_max {
                self.evidence.push_back(fork);
            }
            // Our own input: the queue bound is the only possible refusal, and an accusation
            // is worth exceeding it by one.
            let observation = Observation::Accusation { offender };
            let hash = observation.hash();
            if self.pending_vote_hashes.insert(hash) {
                self.pending_votes
                    .push_back(PendingVote::Full(hash, observation));
            }
        }
    }
}
