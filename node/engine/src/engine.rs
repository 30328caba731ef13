//! The engine: one node's state machine for the command path.
//!
//! Call order (as for the consensus core): feed inputs (`submit`, `handle_message`, `tick`,
//! `handle_persisted`), then drain every output: `poll_log_record` and `poll_unpersisted` (make
//! them durable, then call `handle_persisted`), `poll_send` (bytes for a peer), `poll_reply`
//! (answers to the caller's clients). Nothing here does IO or reads a clock: time and
//! randomness come in as arguments; the event store is the caller's, lent at construction.
//!
//! The path of a command (design.md, "The command path"):
//!
//! 1. `submit` takes a client's command. If the node's section is responsible for the stream
//!    (routing), it proposes it; otherwise it forwards it to the closest member of the
//!    responsible section and waits for that member's answer.
//! 2. Proposing: in Single mode the command itself; in Supermajority mode the events the node
//!    decides on the stream's current state ([`Proposal::Decided`]). The proposal becomes a
//!    consensus observation; the node votes for it.
//! 3. Supermajority mode: when a member sees another's proposal it decides the command itself
//!    and votes for the proposal only if it decided the very same events.
//! 4. Blocks are applied in order ([`apply_agreed`]); a proposal that lost a race (`Stale`) is
//!    decided again and re-proposed by its originator, a bounded number of times.
//! 5. Once a block's batch is durable, the node answers the clients and forwarding members
//!    that wait for its commands.

use std::collections::{BTreeMap, VecDeque};

use chorus_aggregate::{
    AggregateRegistry, AppendOutcome, CommandId, CommandRecord, CommandRequest, DispatchError,
    EventStore, StoreError,
};
use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::{
    Block, BlockMode, Config, Consensus, LogRecord, Observation, ObservationHash, PeerId,
    SignedEvent, SyncRequest, SyncResponse,
};
use chorus_routing::{SectionMap, XorName};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::apply::{AgreedProposal, Applied, apply_agreed};
use crate::proposal::Proposal;

/// Commands waiting for an answer at one node (its own clients' and forwarded ones).
pub const COMMANDS_IN_FLIGHT_MAX: usize = 10_000;
/// Times a node decides and proposes one command again after it lost a race (Supermajority
/// mode). Each block on a contended stream lets one proposal win; with k members proposing on
/// one stream at once, a proposal waits for up to k - 1 others in the fair case, and the
/// agreed order is not guaranteed fair, hence the margin.
pub const STALE_RETRIES_MAX: u32 = 64;
/// Largest engine message other than consensus sync messages (forwards and answers).
pub const MESSAGE_BYTES_MAX: usize = 2 << 20;
/// Outputs queued before the caller drains them.
pub const OUTBOX_MAX: usize = 100_000;
/// Proposals of others kept for seconding once this node's store catches up.
pub const DEFERRED_SECONDS_MAX: usize = 10_000;

/// A caller's handle for one client request, echoed in the reply.
pub type ClientTicket = u64;

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Its events are agreed and durable on the answering member.
    Committed(AppendOutcome),
    /// It was committed before (same command id); nothing new was written.
    AlreadyCommitted(AppendOutcome),
    /// The aggregate refused it.
    Refused(String),
    /// It cannot execute as it is.
    Invalid(String),
    /// The engine could not carry it (forwarding failed, retries exhausted, overload); the
    /// client may send the same command id again.
    Failed(String),
}

/// A message between engines.
#[derive(Clone, Debug)]
pub enum Message {
    /// Consensus gossip: "here is what I know, send me what I lack".
    SyncRequest(SyncRequest),
    /// Consensus gossip: the events the requester lacks.
    SyncResponse(SyncResponse),
    /// A command for a stream the receiver's section is responsible for.
    Forward(CommandRequest),
    /// The answer to a forwarded command.
    Outcome {
        /// The command.
        command_id: CommandId,
        /// What became of it.
        outcome: CommandOutcome,
    },
}

const TAG_SYNC_REQUEST: u8 = 1;
const TAG_SYNC_RESPONSE: u8 = 2;
const TAG_FORWARD: u8 = 3;
const TAG_OUTCOME: u8 = 4;

#[derive(Serialize, Deserialize)]
struct OutcomeMessage {
    command_id: CommandId,
    outcome: CommandOutcome,
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Empty or with an unknown tag.
    #[error("unknown engine message (tag {0:?})")]
    UnknownTag(Option<u8>),
    /// Over the size limit.
    #[error("an engine message of {0} bytes; at most {MESSAGE_BYTES_MAX}")]
    TooLarge(usize),
    /// The body does not decode.
    #[error("malformed engine message: {0}")]
    Malformed(String),
}

impl Message {
    /// Encodes: a tag byte, then the consensus wire codec for gossip, JSON otherwise.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let malformed = |error: &dyn std::fmt::Display| MessageError::Malformed(error.to_string());
        let (tag, body) = match self {
            Self::SyncRequest(request) => (
                TAG_SYNC_REQUEST,
                encode_message(request).map_err(|e| malformed(&e))?,
            ),
            Self::SyncResponse(response) => (
                TAG_SYNC_RESPONSE,
                encode_message(response).map_err(|e| malformed(&e))?,
            ),
            Self::Forward(request) => (
                TAG_FORWARD,
                serde_json::to_vec(request).map_err(|e| malformed(&e))?,
            ),
            Self::Outcome {
                command_id,
                outcome,
            } => {
                let message = OutcomeMessage {
                    command_id: *command_id,
                    outcome: outcome.clone(),
                };
                (
                    TAG_OUTCOME,
                    serde_json::to_vec(&message).map_err(|e| malformed(&e))?,
                )
            }
        };
        let mut bytes = Vec::with_capacity(body.len() + 1);
        bytes.push(tag);
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Decodes untrusted bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let malformed = |error: &dyn std::fmt::Display| MessageError::Malformed(error.to_string());
        let (&tag, body) = bytes.split_first().ok_or(MessageError::UnknownTag(None))?;
        match tag {
            TAG_SYNC_REQUEST => Ok(Self::SyncRequest(
                decode_message(body).map_err(|e| malformed(&e))?,
            )),
            TAG_SYNC_RESPONSE => Ok(Self::SyncResponse(
                decode_message(body).map_err(|e| malformed(&e))?,
            )),
            TAG_FORWARD | TAG_OUTCOME if bytes.len() > MESSAGE_BYTES_MAX => {
                Err(MessageError::TooLarge(bytes.len()))
            }
            TAG_FORWARD => Ok(Self::Forward(
                serde_json::from_slice(body).map_err(|e| malformed(&e))?,
            )),
            TAG_OUTCOME => {
                let message: OutcomeMessage =
                    serde_json::from_slice(body).map_err(|e| malformed(&e))?;
                Ok(Self::Outcome {
                    command_id: message.command_id,
                    outcome: message.outcome,
                })
            }
            other => Err(MessageError::UnknownTag(Some(other))),
        }
    }
}

/// Why the engine cannot start or take a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The node is in no section of the map.
    #[error("this node is not a member of any section")]
    NotAMember,
    /// Consensus refused the setup.
    #[error("consensus setup: {0}")]
    Consensus(#[from] chorus_consensus::SetupError),
    /// Too many commands in flight.
    #[error("{COMMANDS_IN_FLIGHT_MAX} commands are waiting already; try again later")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who waits for a command's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    Client(ClientTicket),
    Peer(PeerId),
}

/// One of our proposals in agreement.
struct InFlight {
    request: CommandRequest,
    attempts: u32,
    /// Supermajority mode: the stream version it was decided at.
    decided_at: Option<u64>,
}

#[derive(Default)]
struct StreamQueue {
    active: Option<CommandId>,
    waiting: VecDeque<CommandRequest>,
}

/// Settings of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The consensus settings of the node's section; `block_mode` chooses Single or
    /// Supermajority mode for the command path too.
    pub consensus: Config,
}

/// One node's engine.
pub struct Engine {
    consensus: Consensus,
    our_id: PeerId,
    map: SectionMap,
    registry: AggregateRegistry,
    store: EventStore,
    waiters: BTreeMap<CommandId, Vec<Waiter>>,
    /// Our own proposals not yet applied.
    proposed: BTreeMap<CommandId, InFlight>,
    /// Per stream (qualified key), the one command of ours in agreement and the ones queued
    /// behind it: our commands on one stream are proposed one at a time, so they never race
    /// each other for a version.
    streams: BTreeMap<String, StreamQueue>,
    /// Supermajority mode: other members' proposals decided at a version our store has not
    /// reached yet, to second once it has (bounded by `DEFERRED_SECONDS_MAX`).
    deferred_seconds: Vec<(ObservationHash, Proposal)>,
    /// Commands we forwarded, and the member whose answer we wait for.
    forwarded: BTreeMap<CommandId, PeerId>,
    sends: VecDeque<(PeerId, Vec<u8>)>,
    replies: VecDeque<(ClientTicket, CommandOutcome)>,
}

impl Engine {
    /// Starts the engine of the node `key`, member of the section `map` puts it in, over
    /// `store`.
    pub fn new(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let public_key = key.verifying_key().to_bytes();
        let our_name = XorName::from_public_key(&public_key);
        let section = map
            .section_of_member(&our_name)
            .ok_or(EngineError::NotAMember)?;
        let members: Vec<PeerId> = section.member_keys().into_iter().map(PeerId).collect();
        let consensus = Consensus::new(config.consensus, key, &members, now_ms)?;
        Ok(Self {
            consensus,
            our_id: PeerId(public_key),
            map,
            registry,
            store,
            waiters: BTreeMap::new(),
            proposed: BTreeMap::new(),
            streams: BTreeMap::new(),
            deferred_seconds: Vec::new(),
            forwarded: BTreeMap::new(),
            sends: VecDeque::new(),
            replies: VecDeque::new(),
        })
    }

    /// This node's id (its public key).
    pub fn id(&self) -> PeerId {
        self.our_id
    }

    /// The node's event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The section map the node routes by.
    pub fn map(&self) -> &SectionMap {
        &self.map
    }

    /// The consensus instance of the node's section (for status and tests).
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// Takes a client's command; its answer comes out of `poll_reply` with `ticket`.
    pub fn submit(
        &mut self,
        ticket: ClientTicket,
        request: CommandRequest,
    ) -> Result<(), EngineError> {
        if self.waiters.len() >= COMMANDS_IN_FLIGHT_MAX {
            return Err(EngineError::Busy);
        }
        self.accept(Waiter::Client(ticket), request);
        self.drain();
        Ok(())
    }

    /// A message from a peer. Bad input is logged and dropped; it never stops the engine.
    pub fn handle_message(&mut self, now_ms: u64, from: PeerId, bytes: &[u8]) {
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                warn!(peer = %from, %error, "undecodable engine message");
                return;
            }
        };
        match message {
            Message::SyncRequest(request) => {
                match self.consensus.handle_sync_request(&from, &request) {
                    Ok(response) => self.send(from, &Message::SyncResponse(response)),
                    Err(error) => debug!(peer = %from, %error, "sync request refused"),
                }
            }
            Message::SyncResponse(response) => {
                if let Err(error) = self.consensus.handle_sync_response(now_ms, &from, response) {
                    debug!(peer = %from, %error, "sync response refused");
                }
            }
            Message::Forward(request) => {
                if self.waiters.len() >= COMMANDS_IN_FLIGHT_MAX {
                    let outcome = CommandOutcome::Failed("the member is busy".to_owned());
                    self.answer_peer(from, request.command_id, outcome);
                } else {
                    self.accept(Waiter::Peer(from), request);
                }
            }
            Message::Outcome {
                command_id,
                outcome,
            } => {
                // Only the member we forwarded to answers for it.
                if self.forwarded.get(&command_id) == Some(&from) {
                    self.forwarded.remove(&command_id);
                    self.answer(command_id, &outcome);
                } else {
                    debug!(peer = %from, %command_id, "an answer nobody asked this peer for");
                }
            }
        }
        self.drain();
    }

    /// Time passed: gossip as the consensus schedule says.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        self.consensus.tick(now_ms, rng);
        self.drain();
    }

    /// The next replay-log record to make durable (with `Config::log_records`).
    pub fn poll_log_record(&mut self) -> Option<LogRecord> {
        self.consensus.poll_log_record()
    }

    /// The next own event to make durable before it may be sent.
    pub fn poll_unpersisted(&mut self) -> Option<std::sync::Arc<SignedEvent>> {
        self.consensus.poll_unpersisted()
    }

    /// Own events up to `index` are durable.
    pub fn handle_persisted(&mut self, index: u64) {
        self.consensus.handle_persisted(index);
        self.drain();
    }

    /// The next message to send: (peer, bytes).
    pub fn poll_send(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.sends.pop_front()
    }

    /// The next answer for a client.
    pub fn poll_reply(&mut self) -> Option<(ClientTicket, CommandOutcome)> {
        self.replies.pop_front()
    }

    /// Routes a command: propose it if our section is responsible, else forward it.
    fn accept(&mut self, waiter: Waiter, request: CommandRequest) {
        let command_id = request.command_id;
        let section = self.map.section_for_stream(&request.stream.qualified());
        let responsible = section.contains(&XorName::from_public_key(&self.our_id.0));
        if !responsible {
            let target = XorName::from_stream_key(&request.stream.qualified());
            let closest = section.closest_members(&target, 1);
            let peer = closest.first().and_then(|name| {
                section
                    .members()
                    .find(|(member, _)| *member == name)
                    .map(|(_, key)| PeerId(*key))
            });
            match (peer, waiter) {
                (Some(peer), Waiter::Client(_)) => {
                    self.waiters.entry(command_id).or_default().push(waiter);
                    self.forwarded.insert(command_id, peer);
                    self.send(peer, &Message::Forward(request));
                }
                // A forwarded command must land at a responsible member: our map disagrees
                // with the sender's, and forwarding on could loop.
                (_, Waiter::Peer(from)) => self.answer_peer(
                    from,
                    command_id,
                    CommandOutcome::Failed("forwarded to a member not responsible".to_owned()),
                ),
                (None, Waiter::Client(ticket)) => self.replies.push_back((
                    ticket,
                    CommandOutcome::Failed("the responsible section has no member".to_owned()),
                )),
            }
            return;
        }
        let first = !self.waiters.contains_key(&command_id);
        self.waiters.entry(command_id).or_default().push(waiter);
        if !first {
            return; // proposed or queued already
        }
        let queue = self.streams.entry(request.stream.qualified()).or_default();
        if queue.active.is_some() {
            queue.waiting.push_back(request);
        } else {
            queue.active = Some(command_id);
            self.propose(request, 0);
        }
    }

    /// Our command on a stream is done: propose the next one queued behind it.
    fn release_stream(&mut self, stream: &str, command_id: CommandId) {
        let Some(queue) = self.streams.get_mut(stream) else {
            return;
        };
        if queue.active != Some(command_id) {
            return;
        }
        queue.active = None;
        if let Some(next) = queue.waiting.pop_front() {
            queue.active = Some(next.command_id);
            self.propose(next, 0);
        } else {
            self.streams.remove(stream);
        }
    }

    /// Proposes a command for agreement (deciding it first in Supermajority mode). A command
    /// id the store knows is answered from the store.
    fn propose(&mut self, request: CommandRequest, attempts: u32) {
        let command_id = request.command_id;
        let known = match self.store.command_record(command_id) {
            Ok(Some(CommandRecord::Appended(outcome))) => {
                Some(CommandOutcome::AlreadyCommitted(outcome))
            }
            Ok(Some(CommandRecord::Refused { reason, .. })) => {
                Some(CommandOutcome::Refused(reason))
            }
            Ok(None) => None,
            Err(error) => Some(CommandOutcome::Failed(error.to_string())),
        };
        if let Some(outcome) = known {
            self.finish(&request, &outcome);
            return;
        }
        let (proposal, decided_at) = match self.consensus.config().block_mode {
            BlockMode::Single => (Proposal::Command(request.clone()), None),
            BlockMode::Supermajority => match self.decide(&request) {
                Ok(proposal @ Proposal::Decided { version, .. }) => (proposal, Some(version)),
                Ok(proposal) => (proposal, None),
                Err(outcome) => {
                    // Decided locally that it cannot execute: answer without agreement (it
                    // changes nothing).
                    self.finish(&request, &outcome);
                    return;
                }
            },
        };
        let result = proposal
            .encode()
            .map_err(|error| CommandOutcome::Invalid(error.to_string()))
            .and_then(|bytes| {
                self.consensus
                    .vote_for(Observation::Payload(bytes.into()))
                    .map_err(|error| CommandOutcome::Failed(error.to_string()))
            });
        match result {
            Ok(_) => {
                self.proposed.insert(
                    command_id,
                    InFlight {
                        request,
                        attempts,
                        decided_at,
                    },
                );
            }
            Err(outcome) => self.finish(&request, &outcome),
        }
    }

    /// Answers a command of ours and lets the next one on its stream go.
    fn finish(&mut self, request: &CommandRequest, outcome: &CommandOutcome) {
        self.proposed.remove(&request.command_id);
        self.answer(request.command_id, outcome);
        self.release_stream(&request.stream.qualified(), request.command_id);
    }

    /// Proposes again (decided anew) a command of ours that lost its race, or gives up.
    fn retry(&mut self, command_id: CommandId) {
        let Some(in_flight) = self.proposed.remove(&command_id) else {
            return;
        };
        if in_flight.attempts < STALE_RETRIES_MAX {
            self.propose(in_flight.request, in_flight.attempts + 1);
        } else {
            let outcome = CommandOutcome::Failed("the stream kept changing".to_owned());
            self.finish(&in_flight.request, &outcome);
        }
    }

    /// Supermajority mode: the command decided on the stream's current state, at the agreed
    /// time of the stream's last event.
    fn decide(&self, request: &CommandRequest) -> Result<Proposal, CommandOutcome> {
        let first = self
            .registry
            .decide(&self.store, request)
            .map_err(outcome_of_dispatch)?;
        let mut request = request.clone();
        request.timestamp_ms = first.stream_timestamp_ms;
        let decision = self
            .registry
            .decide(&self.store, &request)
            .map_err(outcome_of_dispatch)?;
        let events = decision
            .batch
            .writes
            .first()
            .map(|write| write.events.clone())
            .unwrap_or_default();
        Ok(Proposal::Decided {
            request,
            version: decision.version,
            events,
        })
    }

    /// Drains consensus: gossip to send, proposals to second, blocks to apply.
    fn drain(&mut self) {
        while let Some(transmit) = self.consensus.poll_transmit() {
            self.send(transmit.to, &Message::SyncRequest(transmit.request));
        }
        let mut seconds = Vec::new();
        while let Some((hash, observation)) = self.consensus.poll_observation() {
            seconds.push((hash, observation));
        }
        for (hash, observation) in seconds {
            self.consider_second(hash, &observation);
        }
        let mut agreed = Vec::new();
        while let Some(block) = self.consensus.poll_block() {
            if let Some(proposal) = agreed_proposal(&block) {
                agreed.push(proposal);
            }
        }
        if !agreed.is_empty() {
            self.apply(&agreed);
        }
    }

    /// Votes for another member's observation when we agree with it: in Supermajority mode
    /// only for the decision we reach ourselves; one decided at a version our store has not
    /// reached yet is kept and considered again after the next blocks. Single mode needs no
    /// second.
    fn consider_second(&mut self, hash: ObservationHash, observation: &Observation) {
        if self.consensus.config().block_mode == BlockMode::Single {
            return;
        }
        let Observation::Payload(bytes) = observation else {
            let _ = self.consensus.vote_for_hash(hash); // accusations: the consensus layer's
            return;
        };
        let Ok(proposal @ Proposal::Decided { .. }) = Proposal::decode(bytes) else {
            return;
        };
        self.second_if_agreed(hash, proposal);
    }

    fn second_if_agreed(&mut self, hash: ObservationHash, proposal: Proposal) {
        let Proposal::Decided { version, .. } = &proposal else {
            return;
        };
        let ours = self.decide(proposal.request());
        match ours {
            // Back-pressure only drops a second; the proposer's own vote stands.
            Ok(ours) if ours == proposal => {
                let _ = self.consensus.vote_for_hash(hash);
            }
            // Decided at a version we have not reached: second it later, if there is room.
            Ok(Proposal::Decided { version: ours, .. })
                if ours < *version && self.deferred_seconds.len() < DEFERRED_SECONDS_MAX =>
            {
                self.deferred_seconds.push((hash, proposal));
            }
            _ => {}
        }
    }

    fn apply(&mut self, agreed: &[AgreedProposal]) {
        let results = match apply_agreed(&self.registry, &self.store, agreed) {
            Ok(results) => results,
            Err(error) => {
                // The blocks are agreed and will not come again from consensus: a node whose
                // store fails cannot go on safely. The caller sees it in the log; state
                // transfer (a later issue) is how such a node recovers.
                warn!(%error, "applying agreed blocks failed; this node's store is behind");
                return;
            }
        };
        for (agreed, result) in agreed.iter().zip(results) {
            let command_id = agreed.proposal.request().command_id;
            let outcome = match result {
                // Lost a race: its originator decides again.
                Applied::Stale { .. } => {
                    self.retry(command_id);
                    continue;
                }
                Applied::Forged(reason) => {
                    // Someone proposed events the command does not decide; an honest proposal
                    // of the same command may still come, so nobody is answered.
                    debug!(%command_id, %reason, "forged proposal not applied");
                    continue;
                }
                Applied::Appended(outcome) => CommandOutcome::Committed(outcome),
                Applied::Duplicate(outcome) => CommandOutcome::AlreadyCommitted(outcome),
                Applied::Refused(reason) => CommandOutcome::Refused(reason),
                Applied::Invalid(reason) => CommandOutcome::Invalid(reason),
            };
            match self.proposed.get(&command_id) {
                Some(in_flight) => {
                    let request = in_flight.request.clone();
                    self.finish(&request, &outcome);
                }
                None => self.answer(command_id, &outcome),
            }
        }
        self.after_blocks();
    }

    /// Supermajority mode, after blocks moved streams on: our proposals decided at a version
    /// their stream has left can never become blocks (members vote only for what they decide
    /// now), so they are decided again at once; and deferred seconds are reconsidered.
    fn after_blocks(&mut self) {
        if self.consensus.config().block_mode == BlockMode::Single {
            return;
        }
        let doomed: Vec<CommandId> = self
            .proposed
            .iter()
            .filter(|(_, in_flight)| {
                let version = self
                    .store
                    .stream_info(&in_flight.request.stream)
                    .ok()
                    .flatten()
                    .map_or(0, |info| info.version);
                in_flight
                    .decided_at
                    .is_some_and(|decided_at| version > decided_at)
            })
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in doomed {
            self.retry(command_id);
        }
        for (hash, proposal) in std::mem::take(&mut self.deferred_seconds) {
            self.second_if_agreed(hash, proposal);
        }
    }

    /// Answers everyone waiting for `command_id`.
    fn answer(&mut self, command_id: CommandId, outcome: &CommandOutcome) {
        for waiter in self.waiters.remove(&command_id).unwrap_or_default() {
            match waiter {
                Waiter::Client(ticket) => self.replies.push_back((ticket, outcome.clone())),
                Waiter::Peer(peer) => self.answer_peer(peer, command_id, outcome.clone()),
            }
        }
    }

    fn answer_peer(&mut self, peer: PeerId, command_id: CommandId, outcome: CommandOutcome) {
        self.send(
            peer,
            &Message::Outcome {
                command_id,
                outcome,
            },
        );
    }

    fn send(&mut self, to: PeerId, message: &Message) {
        if self.sends.len() >= OUTBOX_MAX {
            debug!(peer = %to, "outbox full; message dropped (gossip repairs it)");
            return;
        }
        match message.encode() {
            Ok(bytes) => self.sends.push_back((to, bytes)),
            Err(error) => debug!(peer = %to, %error, "message not encoded"),
        }
    }
}

/// A block's proposal, if it carries one (accusations and undecodable payloads carry none).
fn agreed_proposal(block: &Block) -> Option<AgreedProposal> {
    let Observation::Payload(bytes) = &block.observation else {
        return None;
    };
    match Proposal::decode(bytes) {
        Ok(proposal) => Some(AgreedProposal {
            timestamp_ms: block.timestamp_ms,
            proposal,
        }),
        Err(error) => {
            debug!(block = block.sequence, %error, "agreed payload is not a proposal");
            None
        }
    }
}

fn outcome_of_dispatch(error: DispatchError) -> CommandOutcome {
    match error {
        DispatchError::Refused(reason) => CommandOutcome::Refused(reason),
        DispatchError::Conflict(reason) => CommandOutcome::Failed(reason),
        DispatchError::Store(error) => CommandOutcome::Failed(error.to_string()),
        error @ (DispatchError::UnknownCategory { .. } | DispatchError::Invalid(_)) => {
            CommandOutcome::Invalid(error.to_string())
        }
    }
}
