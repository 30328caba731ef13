//! The Byzantine moves of a simulated member: arbitrary bytes to a peer, a vote for
//! arbitrary observation bytes, a forged deposit only the event check catches, and a fork
//! of its own chain. Honest code never calls these; they use the member's own key only.

use chorus_aggregate::StreamKey;
use chorus_demo::bank_account::{BankAccount, BankAccountEvent};
use chorus_engine::Message;

use super::{ClusterSim, Item, command};
use crate::network::Fate;

impl ClusterSim {
    /// A Byzantine node's move: `from` sends `to` arbitrary bytes (a forged welcome, section
    /// update or transfer chunk, say), over the network like any message.
    pub fn send_raw(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        match self.network.route(from, to, &mut self.network_rng) {
            Fate::Delivered(delays) => {
                for delay in delays {
                    self.schedule(
                        delay,
                        Item::Deliver {
                            from,
                            to,
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
            Fate::Dropped | Fate::Partitioned => {}
        }
    }

    /// A Byzantine member's move: `node` votes for arbitrary observation bytes (a forged
    /// proposal, say). Returns whether its consensus took the vote.
    pub fn propose_raw(&mut self, node: usize, bytes: Vec<u8>) -> bool {
        let Some(engine) = self.engines[node].as_mut() else {
            return false;
        };
        let taken = engine.vote_for_raw(bytes);
        self.collect(node);
        taken
    }

    /// A Byzantine member's forgery that only the event check can catch: `node` proposes a
    /// valid command (a deposit of 1 on `stream`, which must be in its section, under the
    /// command id `id`) at the stream's current version and time, but with events that claim
    /// a deposit of `claimed`. Returns whether its consensus took the vote.
    pub fn forge_deposit(
        &mut self,
        node: usize,
        stream: &StreamKey,
        id: &str,
        claimed: u64,
    ) -> bool {
        use chorus_demo::bank_account::BankAccountCommand;
        let Some(engine) = self.engines[node].as_ref() else {
            return false;
        };
        let Ok(info) = engine.store().stream_info(stream) else {
            return false;
        };
        let (version, timestamp_ms) =
            info.map_or((0, 0), |info| (info.version, info.last_timestamp_ms));
        let balance = chorus_aggregate::Repository::<BankAccount>::new(engine.store())
            .load(stream)
            .map_or(0, |loaded| loaded.state.balance);
        let Ok(body) = serde_json::to_value(BankAccountCommand::Deposit {
            amount: 1,
            transfer: None,
        }) else {
            return false;
        };
        let mut request = command(id, stream, body);
        request.timestamp_ms = timestamp_ms;
        let Ok(lie) = chorus_aggregate::domain::encode_event(&BankAccountEvent::Deposited {
            amount: claimed,
            balance: balance.saturating_add(claimed),
            transfer: None,
        }) else {
            return false;
        };
        let forged = chorus_engine::Proposal::Decided {
            events: vec![chorus_aggregate::NewEvent {
                event_id: chorus_aggregate::EventId::for_command(request.command_id, 0),
                event_type: lie.event_type,
                event_version: lie.event_version,
                payload: lie.payload,
                supersedes: None,
            }],
            request,
            version,
        };
        match forged.encode() {
            Ok(bytes) => self.propose_raw(node, bytes),
            Err(_) => false,
        }
    }

    /// A Byzantine member's fork: `node` signs a second event with the index of its latest
    /// (same parents, another time) and sends it to every other member of its section, as
    /// a sync response, after the events of others the receiver lacks (so the twin's
    /// parents are known and it is taken: a twin naming an unknown parent is dropped, and a
    /// fork nobody holds is no fork). Its own original is not sent: a receiver takes the
    /// twin for its event at that index and meets the original later, through gossip.
    /// Returns whether it had an event to fork.
    pub fn fork(&mut self, node: usize) -> bool {
        use chorus_consensus::{SignedEvent, SyncResponse};
        let Some(engine) = self.engines[node].as_ref() else {
            return false;
        };
        let Some(consensus) = engine.consensus() else {
            return false;
        };
        let own = self.ids[node];
        let Some(latest) = consensus
            .latest_index_of(&own)
            .and_then(|index| consensus.own_event(index))
        else {
            return false;
        };
        let header = &latest.header;
        let hashes = latest
            .votes
            .iter()
            .map(chorus_consensus::Vote::observation_hash)
            .collect();
        let (twin, _) = SignedEvent::create_hashed(
            header.group,
            &self.keys[node],
            header.index,
            header.self_parent,
            header.other_parent,
            header.created_at_ms + 1,
            latest.votes.clone(),
            hashes,
        );
        let generation = engine.section().generation;
        let members = engine.section().members.clone();
        let twin = std::sync::Arc::new(twin);
        let mut messages = Vec::new();
        for member in members {
            let Some(to) = self
                .ids
                .iter()
                .position(|id| *id == member)
                .filter(|to| *to != node)
            else {
                continue;
            };
            let mut events = self.catch_up(node, to, header.index);
            events.push(std::sync::Arc::clone(&twin));
            let message = Message::SyncResponse {
                generation,
                response: SyncResponse { events },
            };
            let Ok(bytes) = message.encode() else {
                return false;
            };
            messages.push((to, bytes));
        }
        for (to, bytes) in messages {
            self.send_raw(node, to, bytes);
        }
        true
    }

    /// The events `node` holds that `to` lacks, except `node`'s own from `index` on, parents
    /// first, leaving room for one more event in a sync response; none if `to` is down or in
    /// another generation.
    fn catch_up(
        &self,
        node: usize,
        to: usize,
        index: u64,
    ) -> Vec<std::sync::Arc<chorus_consensus::SignedEvent>> {
        let consensus = |at: usize| self.engines[at].as_ref().and_then(|e| e.consensus());
        let (Some(ours), Some(theirs)) = (consensus(node), consensus(to)) else {
            return Vec::new();
        };
        if ours.config().group != theirs.config().group {
            return Vec::new();
        }
        let mut request = theirs.sync_request();
        request.wanted.clear();
        let max = ours.config().events_per_sync_max.saturating_sub(1);
        let forker = self.ids[node];
        ours.answer_sync_request(&self.ids[to], &request)
            .map(|response| {
                response
                    .events
                    .into_iter()
                    .filter(|event| event.header.creator != forker || event.header.index < index)
                    .take(max)
                    .collect()
            })
            .unwrap_or_default()
    }
}
