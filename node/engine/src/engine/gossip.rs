//! Consensus gossip between members: sync requests answered from the generation they are
//! for (the current one, or the retired one for members that have not reached the switch),
//! and the `Behind` hint for a member that fell beyond the prune window, which gets nothing
//! else.

use chorus_consensus::{PeerId, SyncRequest, SyncResponse};
use tracing::debug;

use super::Engine;
use super::budget::Budget;
use super::limits::{JOIN_RETRY_MS, SYNC_BYTES_PER_MEMBER_PER_SEC};
use super::wire::Message;

impl Engine {
    /// Sends the sync requests our consensus instance queued (by its timer, or at once on
    /// work), and its pushes.
    pub(super) fn send_sync_requests(&mut self) {
        let generation = self.state.generation;
        let domain = self.section_domain.agreed.digest;
        let Some(consensus) = self.current.consensus.as_mut() else {
            return;
        };
        let mut requests = Vec::new();
        while let Some(transmit) = consensus.poll_transmit() {
            requests.push(transmit);
        }
        let mut pushes = Vec::new();
        while let Some(push) = consensus.poll_push() {
            pushes.push(push);
        }
        for transmit in requests {
            let message = Message::SyncRequest {
                generation,
                domain,
                request: transmit.request,
            };
            self.send(transmit.to, &message);
        }
        // A push travels as a sync response nobody asked for (`consensus/push.rs`).
        for push in pushes {
            let message = Message::SyncResponse {
                generation,
                response: push.response,
            };
            match message.encode() {
                Ok(bytes) => self.send_gossip_bytes(push.to, bytes),
                Err(error) => debug!(peer = %push.to, %error, "push not encoded"),
            }
        }
    }

    /// A member's sync request for `generation`.
    pub(super) fn on_sync_request(
        &mut self,
        from: PeerId,
        (generation, domain): (u64, &[u8; 32]),
        request: &SyncRequest,
    ) {
        // A request of another domain is dropped, and its sender told ours.
        if !self.same_domain(from, domain) {
            return;
        }
        let now_ms = self.now_ms;
        let lags = self.lags_beyond_window(from, generation);
        if lags {
            self.tell_behind(from, generation);
        }
        // A member that lags beyond the window cannot insert what we would send (the
        // ancestry is pruned here): it gets the hint and nothing else, so a laggard
        // costs us one small message per `JOIN_RETRY_MS`, not a sync response per
        // gossip tick (those once filled its memory and starved the section).
        let instance = if lags {
            None
        } else if generation == self.state.generation {
            self.current.consensus.as_mut()
        } else {
            self.retired
                .as_mut()
                .filter(|(retired, _)| *retired == generation)
                .map(|(_, consensus)| consensus)
        };
        let Some(consensus) = instance else {
            // A request for a generation we have not reached is answered once we have.
            return;
        };
        // Each member's requests may cost us `SYNC_BYTES_PER_MEMBER_PER_SEC` on average: a
        // 50-byte request can ask for up to `SYNC_BYTES_MAX`.
        let budget = self.current.sync_budgets.entry(from).or_insert_with(|| {
            Budget::new(
                SYNC_BYTES_PER_MEMBER_PER_SEC,
                SYNC_BYTES_PER_MEMBER_PER_SEC,
                now_ms,
            )
        });
        if !budget.has_credit(now_ms) {
            self.speakers.refusals.sync_over_budget += 1;
            debug!(peer = %from, "sync request over the member's byte budget dropped");
            return;
        }
        let response = match consensus.handle_sync_request(&from, request) {
            Ok(response) => response,
            Err(error) => {
                debug!(peer = %from, %error, "sync request refused");
                return;
            }
        };
        let message = Message::SyncResponse {
            generation,
            response,
        };
        match message.encode() {
            Ok(bytes) => {
                if let Some(budget) = self.current.sync_budgets.get_mut(&from) {
                    budget.spend(bytes.len() as u64, now_ms);
                }
                self.send_gossip_bytes(from, bytes);
            }
            Err(error) => debug!(peer = %from, %error, "sync response not encoded"),
        }
    }

    /// Tells a member that lags beyond our prune window so (`Behind`, with our round and
    /// head), at most once per `JOIN_RETRY_MS`.
    fn tell_behind(&mut self, from: PeerId, generation: u64) {
        let now_ms = self.now_ms;
        if self
            .current
            .behind_told
            .get(&from)
            .is_some_and(|at| now_ms < at + JOIN_RETRY_MS)
        {
            return;
        }
        self.current.behind_told.insert(from, now_ms);
        let members = self.state.members.clone();
        let round = self
            .current
            .consensus
            .as_ref()
            .map_or(0, |consensus| consensus.stats().max_round);
        let head_position = self.store.head_position().unwrap_or(0);
        self.send(
            from,
            &Message::Behind {
                generation,
                round,
                head_position,
                members,
            },
        );
    }

    /// Whether `from` lags beyond our prune window in `generation`, as far as we can tell:
    /// in our generation, its latest event is older than what we keep; in an older one (it
    /// missed a switch), the retired instance shows the same, or we no longer have that
    /// instance at all.
    fn lags_beyond_window(&self, from: PeerId, generation: u64) -> bool {
        if generation == self.state.generation {
            self.current
                .consensus
                .as_ref()
                .is_some_and(|consensus| consensus.lags_beyond_window(&from))
        } else {
            generation < self.state.generation
                && self.state.members.contains(&from)
                && self
                    .retired
                    .as_ref()
                    .filter(|(retired, _)| *retired == generation)
                    .is_none_or(|(_, consensus)| consensus.lags_beyond_window(&from))
        }
    }

    /// The events a sync request of ours asked for.
    pub(super) fn on_sync_response(
        &mut self,
        from: PeerId,
        generation: u64,
        response: SyncResponse,
    ) {
        let now_ms = self.now_ms;
        if generation == self.state.generation {
            if let Some(consensus) = self.current.consensus.as_mut() {
                if let Err(error) = consensus.handle_sync_response(now_ms, &from, response) {
                    debug!(peer = %from, %error, "sync response refused");
                }
            }
        }
    }
}
