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
    /// When it was (last) proposed, to propose it again if no block comes.
    proposed_at_ms: u64,
}

/// A command we forwarded, waiting for the responsible member's answer.
struct Forwarded {
    to: PeerId,
    since_ms: u64,
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
    /// A forwarded command with no answer after this long is answered `Failed` (the client
    /// may send it again; its id keeps it from applying twice).
    pub forward_timeout_ms: u64,
    /// One of our proposals with no block after this long is decided and proposed again
    /// (its votes may have been dropped under back-pressure, or too few members seconded it).
    pub proposal_timeout_ms: u64,
}

impl EngineConfig {
    /// Defaults around a consensus configuration.
    pub fn new(consensus: Config) -> Self {
        Self {
            consensus,
            forward_timeout_ms: 10_000,
            proposal_timeout_ms: 10_000,
        }
    }
}

/// One node's engine.
pub struct Engine {
    config: EngineConfig,
    consensus: Consensus,
    our_id: PeerId,
    map: SectionMap,
    registry: AggregateRegistry,
    store: EventStore,
    now_ms: u64,
    waiters: BTreeMap<CommandId, Vec<Waiter>>,
    /// Our own proposals not yet applied.
    proposed: BTreeMap<CommandId, InFlight>,
    /// Commands we forwarded, and the member whose answer we wait for.
    forwarded: BTreeMap<CommandId, Forwarded>,
    /// Per stream (qualified key), the one command of ours in agreement and the ones queued
    /// behind it: our commands on one stream are proposed one at a time, so they never race
    /// each other for a version.
    streams: BTreeMap<String, StreamQueue>,
    /// Supermajority mode: other members' proposals decided at a version our store has not
    /// reached yet (but at most `DEFER_AHEAD_MAX` ahead), to second once it has.
    deferred_seconds: Vec<(ObservationHash, Proposal)>,
    /// Agreed proposals not applied yet: consensus hands each block out once, so a batch
    /// whose apply failed is kept and applied again, before anything later, until it goes.
    unapplied: Vec<AgreedProposal>,
    sends: VecDeque<(PeerId, Vec<u8>)>,
    replies: VecDeque<(ClientTicket, CommandOutcome)>,
}

/// How far ahead of our store a proposal may be decided for us to keep it for a later second.
pub const DEFER_AHEAD_MAX: u64 = 16;

impl Engine {
    /// Starts the engine of the node `key`, member of the section `map` puts it in, over
    /// `store`. For a node's first start only: after a crash, use [`Engine::restore`] (a new
    /// start would sign a new first event and fork the node's own chain).
    pub fn new(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let members = section_members(&key, &map)?;
        let consensus = Consensus::new(config.consensus.clone(), key, &members, now_ms)?;
        Ok(Self::with_consensus(
            config, consensus, map, registry, store, now_ms,
        ))
    }

    /// Restarts the engine of the node `key` after a crash, from its consensus replay log
    /// (the records `poll_log_record` gave, made durable; `Config::log_records` must be on)
    /// and its event store. Consensus outputs every agreed block again from the first; the
    /// engine applies them again, and since every command's fate is recorded in the store
    /// (appended or refused), those already applied change nothing: the store catches up
    /// with the blocks it missed and nothing is applied twice.
    pub fn restore(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        log: impl IntoIterator<Item = LogRecord>,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let members = section_members(&key, &map)?;
        let consensus = Consensus::restore(config.consensus.clone(), key, &members, log, now_ms)?;
        let mut engine = Self::with_consensus(config, consensus, map, registry, store, now_ms);
        engine.drain();
        Ok(engine)
    }

    fn with_consensus(
        config: EngineConfig,
        consensus: Consensus,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Self {
        Self {
            config,
            our_id: consensus.our_id(),
            consensus,
            map,
            registry,
            store,
            now_ms,
            waiters: BTreeMap::new(),
            proposed: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            streams: BTreeMap::new(),
            deferred_seconds: Vec::new(),
            unapplied: Vec::new(),
            sends: VecDeque::new(),
            replies: VecDeque::new(),
        }
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

    /// Byzantine hook (feature `byzantine`, for the simulator): votes for arbitrary
    /// observation bytes, as a faulty member that proposes what it likes would. Honest code
    /// never calls it. Returns whether consensus took the vote.
    #[cfg(feature = "byzantine")]
    pub fn vote_for_raw(&mut self, bytes: Vec<u8>) -> bool {
        let taken = self
            .consensus
            .vote_for(Observation::Payload(bytes.into()))
            .is_ok();
        self.drain();
        taken
    }

    /// Commands this node waits to answer (its clients' and forwarded ones).
    pub fn commands_in_flight(&self) -> usize {
        self.waiters.len()
    }

    /// Takes a client's command; its answer comes out of `poll_reply` with `ticket`.
    pub fn submit(
        &mut self,
        now_ms: u64,
        ticket: ClientTicket,
        request: CommandRequest,
    ) -> Result<(), EngineError> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.waiters.len() >= COMMANDS_IN_FLIGHT_MAX {
            return Err(EngineError::Busy);
        }
        self.accept(Waiter::Client(ticket), request);
        self.drain();
        Ok(())
    }

    /// A message from a peer. Bad input is logged and dropped; it never stops the engine.
    pub fn handle_message(&mut self, now_ms: u64, from: PeerId, bytes: &[u8]) {
        self.now_ms = self.now_ms.max(now_ms);
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
                if self.forwarded.get(&command_id).map(|forward| forward.to) == Some(from) {
                    self.forwarded.remove(&command_id);
                    self.answer(command_id, &outcome);
                } else {
                    debug!(peer = %from, %command_id, "an answer nobody asked this peer for");
                }
            }
        }
        self.drain();
    }

    /// Time passed: gossip as the consensus schedule says, retry what waited too long.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        self.now_ms = self.now_ms.max(now_ms);
        self.consensus.tick(now_ms, rng);
        self.sweep();
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
            let peer = section
                .closest_members(&target, 1)
                .first()
                .and_then(|name| {
                    section
                        .members()
                        .find(|(member, _)| *member == name)
                        .map(|(_, key)| PeerId(*key))
                });
            match (peer, waiter) {
                (Some(peer), Waiter::Client(_)) => {
                    let first = self.add_waiter(command_id, waiter);
                    if first {
                        self.forwarded.insert(
                            command_id,
                            Forwarded {
                                to: peer,
                                since_ms: self.now_ms,
                            },
                        );
                        self.send(peer, &Message::Forward(request));
                    }
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
        if !self.add_waiter(command_id, waiter) {
            return; // proposed or queued already
        }
        let stream = request.stream.qualified();
        self.streams
            .entry(stream.clone())
            .or_default()
            .waiting
            .push_back(request);
        self.start_next(&stream);
    }

    /// Registers a waiter once; true when it is the command's first.
    fn add_waiter(&mut self, command_id: CommandId, waiter: Waiter) -> bool {
        let waiters = self.waiters.entry(command_id).or_default();
        let first = waiters.is_empty();
        if !waiters.contains(&waiter) {
            waiters.push(waiter);
        }
        first
    }

    /// If no command of ours is in agreement on `stream`, proposes the next queued one;
    /// commands answered without agreement (known ids, local failures) are answered on the
    /// way. A loop, not recursion: a long queue of such commands cannot grow the stack.
    fn start_next(&mut self, stream: &str) {
        loop {
            let Some(queue) = self.streams.get_mut(stream) else {
                return;
            };
            if queue.active.is_some() {
                return;
            }
            let Some(next) = queue.waiting.pop_front() else {
                self.streams.remove(stream);
                return;
            };
            queue.active = Some(next.command_id);
            match self.propose(next.clone(), 0) {
                Ok(()) => return,
                Err(outcome) => {
                    if let Some(queue) = self.streams.get_mut(stream) {
                        queue.active = None;
                    }
                    self.answer(next.command_id, &outcome);
                }
            }
        }
    }

    /// Proposes a command for agreement: in Single mode the command; in Supermajority mode
    /// the events we decide, or, when we decide it cannot execute, the command itself, so
    /// that its refusal is agreed on the agreed state rather than answered from our store,
    /// which may lag. `Err` is an answer given without agreement (a command id the store
    /// knows, an encoding or back-pressure failure).
    fn propose(&mut self, request: CommandRequest, attempts: u32) -> Result<(), CommandOutcome> {
        let command_id = request.command_id;
        match self.store.command_record(command_id) {
            Ok(Some(CommandRecord::Appended(outcome))) => {
                return Err(CommandOutcome::AlreadyCommitted(outcome));
            }
            Ok(Some(CommandRecord::Refused { reason, .. })) => {
                return Err(CommandOutcome::Refused(reason));
            }
            Ok(None) => {}
            Err(error) => return Err(CommandOutcome::Failed(error.to_string())),
        }
        let (proposal, decided_at) = match self.consensus.config().block_mode {
            BlockMode::Single => (Proposal::Command(request.clone()), None),
            BlockMode::Supermajority => match self.decide(&request) {
                Ok(proposal @ Proposal::Decided { version, .. }) => (proposal, Some(version)),
                Ok(proposal) => (proposal, None),
                Err(CommandOutcome::Failed(reason)) => return Err(CommandOutcome::Failed(reason)),
                Err(_) => (Proposal::Command(request.clone()), None),
            },
        };
        let bytes = proposal
            .encode()
            .map_err(|error| CommandOutcome::Invalid(error.to_string()))?;
        self.consensus
            .vote_for(Observation::Payload(bytes.into()))
            .map_err(|error| CommandOutcome::Failed(error.to_string()))?;
        self.proposed.insert(
            command_id,
            InFlight {
                request,
                attempts,
                decided_at,
                proposed_at_ms: self.now_ms,
            },
        );
        Ok(())
    }

    /// Answers a command of ours and lets the next one on its stream go.
    fn finish(&mut self, request: &CommandRequest, outcome: &CommandOutcome) {
        self.proposed.remove(&request.command_id);
        self.answer(request.command_id, outcome);
        let stream = request.stream.qualified();
        if let Some(queue) = self.streams.get_mut(&stream) {
            if queue.active == Some(request.command_id) {
                queue.active = None;
            }
        }
        self.start_next(&stream);
    }

    /// Decides and proposes again a command of ours that lost its race or got no block, or
    /// gives up after `STALE_RETRIES_MAX` attempts.
    fn retry(&mut self, command_id: CommandId) {
        let Some(in_flight) = self.proposed.remove(&command_id) else {
            return;
        };
        let outcome = if in_flight.attempts < STALE_RETRIES_MAX {
            match self.propose(in_flight.request.clone(), in_flight.attempts + 1) {
                Ok(()) => return,
                Err(outcome) => outcome,
            }
        } else {
            CommandOutcome::Failed("the stream kept changing; send the command again".to_owned())
        };
        self.finish(&in_flight.request, &outcome);
    }

    /// Gives up on forwards that got no answer and proposes again what got no block.
    fn sweep(&mut self) {
        let now = self.now_ms;
        let forward_deadline = now.saturating_sub(self.config.forward_timeout_ms);
        let expired: Vec<CommandId> = self
            .forwarded
            .iter()
            .filter(|(_, forward)| forward.since_ms < forward_deadline)
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in expired {
            self.forwarded.remove(&command_id);
            let outcome = CommandOutcome::Failed(
                "no answer from the responsible section; send the command again".to_owned(),
            );
            self.answer(command_id, &outcome);
        }
        let proposal_deadline = now.saturating_sub(self.config.proposal_timeout_ms);
        let overdue: Vec<CommandId> = self
            .proposed
            .iter()
            .filter(|(_, in_flight)| in_flight.proposed_at_ms < proposal_deadline)
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in overdue {
            self.retry(command_id);
        }
    }

    /// Supermajority mode: the command decided on the stream's current state, at the agreed
    /// time of the stream's last event (0 for a new stream).
    fn decide(&self, request: &CommandRequest) -> Result<Proposal, CommandOutcome> {
        let info = self
            .store
            .stream_info(&request.stream)
            .map_err(|error| CommandOutcome::Failed(error.to_string()))?;
        let mut request = request.clone();
        request.timestamp_ms = info.map_or(0, |info| info.last_timestamp_ms);
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
        // Fork evidence is the consensus layer's: it votes the accusation itself.
        while let Some(evidence) = self.consensus.poll_evidence() {
            debug!(offender = %evidence.first.header.creator, "fork evidence");
        }
        let mut observations = Vec::new();
        while let Some((hash, observation)) = self.consensus.poll_observation() {
            observations.push((hash, observation));
        }
        for (hash, observation) in observations {
            self.consider_second(hash, &observation);
        }
        while let Some(block) = self.consensus.poll_block() {
            if let Some(proposal) = agreed_proposal(&block) {
                self.unapplied.push(proposal);
            }
        }
        if !self.unapplied.is_empty() {
            self.apply();
        }
    }

    /// Votes for another member's observation when we agree with it (Supermajority mode; a
    /// block needs no second in Single mode): a `Decided` proposal only if we decide the same
    /// events; one decided at a version our store has not reached yet (at most
    /// `DEFER_AHEAD_MAX` ahead) is kept and considered again after the next blocks. A
    /// `Command` proposal is seconded: its events are decided by every member at apply time.
    /// Accusations are not seconded: the consensus layer votes them when it holds evidence.
    fn consider_second(&mut self, hash: ObservationHash, observation: &Observation) {
        if self.consensus.config().block_mode == BlockMode::Single || !self.unapplied.is_empty() {
            return;
        }
        let Observation::Payload(bytes) = observation else {
            return;
        };
        match Proposal::decode(bytes) {
            Ok(Proposal::Command(_)) => {
                let _ = self.consensus.vote_for_hash(hash);
            }
            Ok(proposal @ Proposal::Decided { .. }) => self.second_if_agreed(hash, proposal),
            Err(error) => debug!(%error, "an observation that is not a proposal"),
        }
    }

    fn second_if_agreed(&mut self, hash: ObservationHash, proposal: Proposal) {
        let Proposal::Decided { version, .. } = &proposal else {
            return;
        };
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
                        .decide(proposal.request())
                        .is_ok_and(|decided| decided == proposal) =>
            {
                let _ = self.consensus.vote_for_hash(hash);
            }
            // Decided at a version we have not reached: second it later, if there is room.
            Some(ours)
                if ours < *version
                    && *version - ours <= DEFER_AHEAD_MAX
                    && self.deferred_seconds.len() < DEFERRED_SECONDS_MAX =>
            {
                self.deferred_seconds.push((hash, proposal));
            }
            _ => {}
        }
    }

    /// Applies the agreed proposals not applied yet. On a storage failure they stay, and go
    /// first next time: a member never applies a later block over a gap.
    fn apply(&mut self) {
        let agreed = std::mem::take(&mut self.unapplied);
        let results = match apply_agreed(&self.registry, &self.store, &agreed) {
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
            let outcome = match result {
                // Lost a race: its originator decides again, unless this block is an older
                // attempt than the one in agreement now.
                Applied::Stale { decided_at, .. } => {
                    if let Some((true, Some(current))) = ours {
                        if current == decided_at {
                            self.retry(command_id);
                        }
                    }
                    continue;
                }
                // Events the command does not decide were proposed under its id; never
                // applied. If it was our command, we propose it again honestly.
                Applied::Forged(reason) => {
                    debug!(%command_id, %reason, "forged proposal not applied");
                    if let Some((true, _)) = ours {
                        self.retry(command_id);
                    }
                    continue;
                }
                Applied::Appended(outcome) => CommandOutcome::Committed(outcome),
                Applied::Duplicate(outcome) => CommandOutcome::AlreadyCommitted(outcome),
                Applied::Refused(reason) => CommandOutcome::Refused(reason),
                Applied::Invalid(reason) => CommandOutcome::Invalid(reason),
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
                    let outcome = CommandOutcome::Invalid(
                        "the command id was used by another command".to_owned(),
                    );
                    self.finish(&request, &outcome);
                }
                _ => self.answer(command_id, &outcome),
            }
        }
        self.after_blocks();
    }

    /// Supermajority mode, after blocks moved streams on: our proposals decided at a version
    /// their stream has left can never become blocks (members vote only for what they decide
    /// now), so they are decided again at once; deferred seconds are reconsidered, and those
    /// whose stream has passed their version are dropped.
    fn after_blocks(&mut self) {
        if self.consensus.config().block_mode == BlockMode::Single {
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
            debug!(peer = %to, "outbox full; message dropped (gossip and timeouts repair it)");
            return;
        }
        match message.encode() {
            Ok(bytes) => self.sends.push_back((to, bytes)),
            Err(error) => debug!(peer = %to, %error, "message not encoded"),
        }
    }
}

/// Whether an agreed request is the command we proposed (the timestamp aside, which
/// Supermajority mode sets when deciding).
fn same_command(ours: &CommandRequest, agreed: &CommandRequest) -> bool {
    ours.stream == agreed.stream
        && ours.command == agreed.command
        && ours.expected == agreed.expected
        && ours.causation_id == agreed.causation_id
        && ours.correlation_id == agreed.correlation_id
}

/// The members of the section `key`'s node belongs to.
fn section_members(key: &SigningKey, map: &SectionMap) -> Result<Vec<PeerId>, EngineError> {
    let our_name = XorName::from_public_key(&key.verifying_key().to_bytes());
    let section = map
        .section_of_member(&our_name)
        .ok_or(EngineError::NotAMember)?;
    Ok(section.member_keys().into_iter().map(PeerId).collect())
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
