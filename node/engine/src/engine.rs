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
//!
//! Around it: membership changes end a *generation* of the section's consensus instance and
//! start the next (or two, on a split) at the change's block (`switch`, and the
//! [`crate::membership`] module doc); a joiner receives the section's state by transfer
//! before it applies anything; process managers run on the section's agreed events and send
//! their commands through the same path (`add_process_manager`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chorus_aggregate::{
    AggregateRegistry, AppendBatch, AppendOutcome, CommandId, CommandRecord, CommandRequest,
    DispatchError, EventStore, ExpectedVersion, NewEvent, ProcessManager, RecordedEvent,
    StoreError,
};
use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::{
    Block, BlockMode, Config, Consensus, LogRecord, Observation, ObservationHash, PeerId,
    SignedEvent, SyncRequest, SyncResponse, faulty_max, is_supermajority,
};
use chorus_routing::{Prefix, SectionMap, XorName};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::apply::{AgreedProposal, Applied, apply_agreed};
use crate::membership::{
    EventlessCommand, HANDOVERS_MAX, Handover, MemberChange, MembershipProposal, SectionState,
    TransferTarget, Welcome, all_section_events, change_allowed, group_id, name_of, section_after,
    section_commands, section_digest, section_events, sort_members,
};
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

/// The `Invalid` answer to a command whose id another command took first (an id reused, or
/// taken by a faulty member): it says nothing about the command itself, so a process manager
/// does not compensate it.
pub const ID_TAKEN: &str = "the command id was used by another command";

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
    /// Consensus gossip of one generation of the section: "here is what I know, send me what
    /// I lack".
    SyncRequest {
        /// The generation (consensus instance) it is for.
        generation: u64,
        /// The request.
        request: SyncRequest,
    },
    /// Consensus gossip: the events the requester lacks.
    SyncResponse {
        /// The generation it is for.
        generation: u64,
        /// The response.
        response: SyncResponse,
    },
    /// A command for a stream the receiver's section is responsible for.
    Forward(CommandRequest),
    /// The answer to a forwarded command.
    Outcome {
        /// The command.
        command_id: CommandId,
        /// What became of it.
        outcome: CommandOutcome,
    },
    /// A node asks the section covering its name to admit it.
    JoinRequest,
    /// A member asks its section to let it leave.
    LeaveRequest,
    /// A member tells a joiner it was admitted, and the state it starts from.
    Welcome(Welcome),
    /// A joiner asks a member for the section state of its welcome, from a position of the
    /// member's store on.
    TransferRequest {
        /// The generation the joiner was welcomed to.
        generation: u64,
        /// The member's store position to continue from (1 at first).
        from: u64,
    },
    /// Part of a section state, answering a `TransferRequest`.
    TransferChunk(TransferChunk),
    /// A member tells another that, as far as its own graph of `generation` tells, the
    /// receiver fell behind by more than the prune window and cannot catch up by gossip. A
    /// hint only: the receiver asks to be welcomed again, and the section decides on its
    /// members' own evidence.
    Behind {
        /// The generation the receiver lags in.
        generation: u64,
        /// The sender's latest round in that generation (the receiver reports its lag).
        round: u64,
        /// The sender's store head (likewise).
        head_position: u64,
        /// The sender's section members now (the receiver asks them too: a member that
        /// missed a switch does not know who joined).
        members: Vec<PeerId>,
    },
    /// A section tells other sections' nodes that its members changed (routing only; believed
    /// once `f + 1` of its members said the same).
    SectionUpdate {
        /// The section's prefix before the change.
        prefix: Prefix,
        /// The generation the change started.
        generation: u64,
        /// The change.
        change: MemberChange,
    },
}

/// Part of the section state a joiner fetches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferChunk {
    /// The generation the joiner was welcomed to.
    pub generation: u64,
    /// The position this chunk starts at (the request's `from`).
    pub from: u64,
    /// The section's events from there, in the member's store order.
    pub events: Vec<RecordedEvent>,
    /// The section's eventless commands, after the events (the cursor runs over the events'
    /// positions up to the handover's head, then over these).
    pub commands: Vec<EventlessCommand>,
    /// Where the next chunk starts; `None` in the last.
    pub next: Option<u64>,
}

const TAG_SYNC_REQUEST: u8 = 1;
const TAG_SYNC_RESPONSE: u8 = 2;
const TAG_FORWARD: u8 = 3;
const TAG_OUTCOME: u8 = 4;
const TAG_JOIN_REQUEST: u8 = 5;
const TAG_LEAVE_REQUEST: u8 = 6;
const TAG_WELCOME: u8 = 7;
const TAG_TRANSFER_REQUEST: u8 = 8;
const TAG_TRANSFER_CHUNK: u8 = 9;
const TAG_SECTION_UPDATE: u8 = 10;
const TAG_BEHIND: u8 = 11;

#[derive(Serialize, Deserialize)]
struct OutcomeMessage {
    command_id: CommandId,
    outcome: CommandOutcome,
}

#[derive(Serialize, Deserialize)]
struct TransferRequestMessage {
    generation: u64,
    from: u64,
}

#[derive(Serialize, Deserialize)]
struct SectionUpdateMessage {
    prefix: Prefix,
    generation: u64,
    change: MemberChange,
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
    /// Encodes: a tag byte, then for gossip the generation (8 bytes, little-endian) and the
    /// consensus wire codec, JSON otherwise.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let malformed = |error: &dyn std::fmt::Display| MessageError::Malformed(error.to_string());
        let json = |value: &dyn erased::Json| value.to_json().map_err(|e| malformed(&e));
        let (tag, body) = match self {
            Self::SyncRequest {
                generation,
                request,
            } => {
                let mut body = generation.to_le_bytes().to_vec();
                body.extend(encode_message(request).map_err(|e| malformed(&e))?);
                (TAG_SYNC_REQUEST, body)
            }
            Self::SyncResponse {
                generation,
                response,
            } => {
                let mut body = generation.to_le_bytes().to_vec();
                body.extend(encode_message(response).map_err(|e| malformed(&e))?);
                (TAG_SYNC_RESPONSE, body)
            }
            Self::Forward(request) => (TAG_FORWARD, json(request)?),
            Self::Outcome {
                command_id,
                outcome,
            } => (
                TAG_OUTCOME,
                json(&OutcomeMessage {
                    command_id: *command_id,
                    outcome: outcome.clone(),
                })?,
            ),
            Self::Behind {
                generation,
                round,
                head_position,
                members,
            } => {
                let mut body = generation.to_le_bytes().to_vec();
                body.extend(round.to_le_bytes());
                body.extend(head_position.to_le_bytes());
                body.extend(json(members)?);
                (TAG_BEHIND, body)
            }
            Self::JoinRequest => (TAG_JOIN_REQUEST, Vec::new()),
            Self::LeaveRequest => (TAG_LEAVE_REQUEST, Vec::new()),
            Self::Welcome(welcome) => (TAG_WELCOME, json(welcome)?),
            Self::TransferRequest { generation, from } => (
                TAG_TRANSFER_REQUEST,
                json(&TransferRequestMessage {
                    generation: *generation,
                    from: *from,
                })?,
            ),
            // Binary: event payloads are bytes, which JSON would spell in up to four.
            Self::TransferChunk(chunk) => (
                TAG_TRANSFER_CHUNK,
                bincode::serde::encode_to_vec(chunk, bincode::config::standard())
                    .map_err(|e| malformed(&e))?,
            ),
            Self::SectionUpdate {
                prefix,
                generation,
                change,
            } => (
                TAG_SECTION_UPDATE,
                json(&SectionUpdateMessage {
                    prefix: *prefix,
                    generation: *generation,
                    change: *change,
                })?,
            ),
        };
        if tag != TAG_SYNC_REQUEST && tag != TAG_SYNC_RESPONSE && body.len() >= MESSAGE_BYTES_MAX {
            return Err(MessageError::TooLarge(body.len() + 1));
        }
        let mut bytes = Vec::with_capacity(body.len() + 1);
        bytes.push(tag);
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Decodes untrusted bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let malformed = |error: &dyn std::fmt::Display| MessageError::Malformed(error.to_string());
        let (&tag, body) = bytes.split_first().ok_or(MessageError::UnknownTag(None))?;
        let generation_and_rest = |body: &[u8]| -> Result<(u64, Vec<u8>), MessageError> {
            if body.len() < 8 {
                return Err(MessageError::Malformed(
                    "gossip without a generation".into(),
                ));
            }
            let (generation, rest) = body.split_at(8);
            let generation = u64::from_le_bytes(
                generation
                    .try_into()
                    .map_err(|_| MessageError::Malformed("generation".into()))?,
            );
            Ok((generation, rest.to_vec()))
        };
        match tag {
            TAG_SYNC_REQUEST => {
                let (generation, rest) = generation_and_rest(body)?;
                Ok(Self::SyncRequest {
                    generation,
                    request: decode_message(&rest).map_err(|e| malformed(&e))?,
                })
            }
            TAG_SYNC_RESPONSE => {
                let (generation, rest) = generation_and_rest(body)?;
                Ok(Self::SyncResponse {
                    generation,
                    response: decode_message(&rest).map_err(|e| malformed(&e))?,
                })
            }
            _ if bytes.len() > MESSAGE_BYTES_MAX => Err(MessageError::TooLarge(bytes.len())),
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
            TAG_BEHIND => {
                let (generation, rest) = generation_and_rest(body)?;
                let (round, rest) = generation_and_rest(&rest)?;
                let (head_position, rest) = generation_and_rest(&rest)?;
                let members: Vec<PeerId> =
                    serde_json::from_slice(&rest).map_err(|e| malformed(&e))?;
                if members.len() > BEHIND_MEMBERS_MAX {
                    return Err(MessageError::Malformed(
                        "a hint naming too many members".into(),
                    ));
                }
                Ok(Self::Behind {
                    generation,
                    round,
                    head_position,
                    members,
                })
            }
            TAG_JOIN_REQUEST if body.is_empty() => Ok(Self::JoinRequest),
            TAG_LEAVE_REQUEST if body.is_empty() => Ok(Self::LeaveRequest),
            TAG_JOIN_REQUEST | TAG_LEAVE_REQUEST => {
                Err(MessageError::Malformed("a request with a body".into()))
            }
            TAG_WELCOME => Ok(Self::Welcome(
                serde_json::from_slice(body).map_err(|e| malformed(&e))?,
            )),
            TAG_TRANSFER_REQUEST => {
                let message: TransferRequestMessage =
                    serde_json::from_slice(body).map_err(|e| malformed(&e))?;
                Ok(Self::TransferRequest {
                    generation: message.generation,
                    from: message.from,
                })
            }
            TAG_TRANSFER_CHUNK => {
                let config = bincode::config::standard().with_limit::<MESSAGE_BYTES_MAX>();
                let (chunk, read) =
                    bincode::serde::decode_from_slice(body, config).map_err(|e| malformed(&e))?;
                if read != body.len() {
                    return Err(MessageError::Malformed(
                        "bytes after a transfer chunk".into(),
                    ));
                }
                Ok(Self::TransferChunk(chunk))
            }
            TAG_SECTION_UPDATE => {
                let message: SectionUpdateMessage =
                    serde_json::from_slice(body).map_err(|e| malformed(&e))?;
                Ok(Self::SectionUpdate {
                    prefix: message.prefix,
                    generation: message.generation,
                    change: message.change,
                })
            }
            other => Err(MessageError::UnknownTag(Some(other))),
        }
    }
}

/// JSON encoding of message bodies behind one object-safe trait.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
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
    /// The replay log holds records of a later generation than the store's section state.
    #[error(
        "the store's section state is generation {saved} but the replay log has records of generation {logged}: the store is older than the log"
    )]
    StaleState {
        /// The generation the store saved.
        saved: u64,
        /// The later generation the log holds.
        logged: u64,
    },
}

/// Who waits for a command's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    Client(ClientTicket),
    Peer(PeerId),
    /// One of the engine's process managers (by index).
    Manager(usize),
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
    key: SigningKey,
    our_id: PeerId,
    /// Our section as agreed (durable in the store).
    state: SectionState,
    /// The consensus instance of our section's current generation; `None` while we are no
    /// member (a joiner not yet welcomed, or a member that left).
    consensus: Option<Consensus>,
    /// The previous generation's instance, kept to answer the sync requests of members that
    /// have not reached the change yet (they need its events to decide it). It creates no
    /// event and outputs nothing.
    retired: Option<(u64, Consensus)>,
    /// A membership change agreed and waiting for the blocks before it to apply.
    pending_change: Option<MembershipProposal>,
    /// Membership changes we voted for in this generation (once each).
    voted_changes: BTreeSet<MembershipProposal>,
    /// Agreed votes for membership changes of this generation: the members whose votes the
    /// blocks prove, per change (rebuilt by replaying the generation's blocks).
    membership_votes: BTreeMap<MemberChange, BTreeSet<PeerId>>,
    /// When we last asked to leave; asked again until the leave is agreed.
    leaving: Option<u64>,
    /// Per node, the generation of the latest section update applied to our map about it (so
    /// an older update that arrives late does not undo a newer one).
    update_generations: BTreeMap<PeerId, u64>,
    /// Joiner, or a lagging member asking to be brought back: welcomes heard, by content,
    /// with their senders.
    joining: Option<Joining>,
    /// Per member, when we last told it that it lags (`Message::Behind`).
    behind_told: BTreeMap<PeerId, u64>,
    /// Per member, when a refresh of it last took effect here.
    refreshed_at: BTreeMap<PeerId, u64>,
    /// The latest hint that we lag beyond a member's window, while hints keep coming.
    behind: Option<Lag>,
    /// When this node entered its current generation, by its clock (or started, after a
    /// restart).
    generation_started_ms: u64,
    /// Joiner: the state transfer under way.
    transfer: Option<TransferRun>,
    /// Section updates heard from other sections, by content, with their senders.
    /// Per sender its latest `UPDATES_PER_SENDER_MAX` updates, so faulty senders cannot
    /// crowd out honest ones.
    updates_heard: BTreeMap<PeerId, VecDeque<(Prefix, u64, MemberChange)>>,
    /// Our last section update, sent once more after `ANNOUNCE_REPEAT_MS` (messages get lost).
    announcement: Option<(u64, Vec<PeerId>, Message)>,
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
    /// Process managers run on our section's events.
    managers: Vec<ManagerRun>,
    /// Answers to managers' commands, for `run_managers` to handle.
    manager_answers: VecDeque<(usize, CommandId, CommandOutcome)>,
}

/// A process manager the engine runs: one event at a time, from its checkpoint.
struct ManagerRun {
    manager: Box<dyn ProcessManager>,
    /// The next global position of our store to look at.
    next_position: u64,
    /// The event being handled and its commands not answered yet.
    current: Option<ManagerEvent>,
    /// Events handled since the checkpoint was last saved.
    unsaved: u32,
}

struct ManagerEvent {
    event: RecordedEvent,
    /// Commands sent for the event and not answered yet, with the time to send each (again;
    /// `None` while one is on its way) and the number of sends so far (a command for another
    /// section goes to another of its members each time).
    outstanding: BTreeMap<CommandId, (CommandRequest, Option<u64>, u32)>,
}

/// A process manager's command that failed (no answer from another section, overload) is sent
/// again after this long.
pub const MANAGER_RETRY_MS: u64 = 1_000;
/// A process manager's checkpoint is saved at least every this many events.
pub const MANAGER_CHECKPOINT_EVERY: u32 = 64;
/// Events each manager takes on per call, so one call stays short.
pub const MANAGER_EVENTS_PER_RUN: usize = 256;

/// How far behind a member said we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// When the hint came (our clock).
    pub told_at_ms: u64,
    /// Rounds between the hinting member's latest and ours.
    pub rounds: u64,
    /// Store positions between the hinting member's head and ours.
    pub positions: u64,
}

/// Whether a node can serve its section now ([`Engine::readiness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// An active member in step with its section.
    Ready,
    /// A member told it lags beyond the prune window; it is being brought back.
    Behind(Lag),
    /// Asking to be admitted (or welcomed again).
    Joining,
    /// Admitted; fetching its section's state.
    Transferring {
        /// Events received so far.
        events_received: u64,
        /// Events the handover promised.
        events_expected: u64,
    },
    /// Not a member of any section.
    NotAMember,
}

/// A lag hint counts for readiness this long (hints repeat every `JOIN_RETRY_MS` while the
/// lag lasts).
pub const BEHIND_REPORT_MS: u64 = 3 * JOIN_RETRY_MS;

/// A joiner waiting to be welcomed.
struct Joining {
    /// When it last asked.
    asked_at_ms: Option<u64>,
    /// A member brought back by a refresh: the generation it lags in and when it began to
    /// ask (it gives up after `REFRESH_GIVE_UP_MS` without a welcome: the hint may have been
    /// false, and it is asked again if it was not).
    refresh: Option<(u64, u64)>,
    /// A lagging member: the members the hint named, asked too (those that joined since
    /// its map was current; their votes count in the generation it missed).
    also_ask: BTreeSet<PeerId>,
    /// Per sender, its latest welcome (so a faulty sender cannot crowd out honest ones).
    welcomes: BTreeMap<PeerId, Welcome>,
}

/// A joiner's state transfer from one source.
struct TransferRun {
    source: usize,
    next_from: u64,
    /// Payload bytes received so far.
    bytes: u64,
    events: Vec<RecordedEvent>,
    commands: Vec<EventlessCommand>,
    requested_at_ms: u64,
}

/// How far ahead of our store a proposal may be decided for us to keep it for a later second.
pub const DEFER_AHEAD_MAX: u64 = 16;
/// A joiner asks again after this long without a welcome.
pub const JOIN_RETRY_MS: u64 = 1_000;
/// Most members a `Behind` hint may name.
pub const BEHIND_MEMBERS_MAX: usize = 256;
/// A lagging member that got no welcome this long after it began to ask stops asking.
pub const REFRESH_GIVE_UP_MS: u64 = 10_000;
/// A member is voted a refresh at most this often (each refresh is a generation switch with
/// a handover, which a faulty member could otherwise provoke at will).
pub const REFRESH_INTERVAL_MIN_MS: u64 = 10_000;
/// How long a member welcomed into the current generation counts as new (not behind) while
/// we hold none of its events: a lost welcome is sent again within `JOIN_RETRY_MS`, so a
/// member still silent after this is refreshed like any laggard.
pub const NEW_MEMBER_GRACE_MS: u64 = 10_000;
/// A joiner asks another source after this long without a transfer chunk.
pub const TRANSFER_TIMEOUT_MS: u64 = 2_000;
/// A section update is sent once more after this long.
pub const ANNOUNCE_REPEAT_MS: u64 = 1_000;
/// Payload bytes per transfer chunk (one event more may go over it: an event's payload is at
/// most `EVENT_PAYLOAD_BYTES_MAX`, which fits a message with this much before it).
pub const TRANSFER_CHUNK_BYTES: usize = MESSAGE_BYTES_MAX / 4;
/// Eventless commands per transfer chunk.
pub const TRANSFER_CHUNK_COMMANDS: usize = 2_000;
/// Section updates kept per sender until they count (a section may change a few times in a
/// row; a faulty sender's variants only push out its own older ones).
pub const UPDATES_PER_SENDER_MAX: usize = 8;
/// Events per transfer chunk.
pub const TRANSFER_CHUNK_EVENTS: usize = 500;

impl Engine {
    /// Starts the engine of the node `key`, member of the section `map` puts it in, over
    /// `store`, at generation 0 (the network's start). For a node's first start only: after a
    /// crash, use [`Engine::restore`] (a new start would sign a new first event and fork the
    /// node's own chain). A node joining a running network uses [`Engine::join`].
    pub fn new(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let state = initial_state(&key, &map)?;
        let consensus = Consensus::new(
            consensus_config(&config, &state),
            key.clone(),
            &state.members,
            now_ms,
        )?;
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.consensus = Some(consensus);
        Ok(engine)
    }

    /// Starts a node that joins a running network: `map` is what it knows of the network
    /// (it need not be current), `store` should hold nothing of the section it joins. It asks
    /// the section covering its name to admit it (again every `JOIN_RETRY_MS`), then fetches
    /// the section's state and takes part from the generation it was admitted to.
    pub fn join(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let our_id = PeerId(key.verifying_key().to_bytes());
        let section = map.section_for(&name_of(&our_id));
        let state = SectionState {
            generation: 0,
            prefix: section.prefix(),
            members: Vec::new(),
            network: network_of(&map),
            transferred: false,
            start_head: 0,
            transfer: None,
            handovers: Vec::new(),
        };
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.joining = Some(Joining {
            refresh: None,
            also_ask: BTreeSet::new(),
            asked_at_ms: None,
            welcomes: BTreeMap::new(),
        });
        engine.ask_to_join();
        Ok(engine)
    }

    /// Restarts the engine of the node `key` after a crash, from its event store (which holds
    /// its section state) and its consensus replay log (the records `poll_log_record` gave,
    /// with their generation, made durable; `Config::log_records` must be on). Only the
    /// current generation's records are replayed; consensus outputs every block of it again
    /// from the first, and since every command's fate is recorded in the store (appended or
    /// refused), those already applied change nothing: the store catches up with the blocks
    /// it missed and nothing is applied twice. `map` is used only if the store holds no
    /// section state yet (generation 0, or a joiner never welcomed).
    pub fn restore(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        log: impl IntoIterator<Item = (u64, LogRecord)>,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let state = match SectionState::load(&store)? {
            Some(state) => state,
            None => match initial_state(&key, &map) {
                Ok(state) => state,
                Err(EngineError::NotAMember) => {
                    return Self::join(config, key, map, registry, store, now_ms);
                }
                Err(error) => return Err(error),
            },
        };
        let map = SectionMap::with_members(
            map.section_size_min(),
            &state.network.iter().map(|id| id.0).collect::<Vec<_>>(),
        );
        let generation = state.generation;
        let mut records = Vec::new();
        for (record_generation, record) in log {
            // A generation is saved before its instance logs anything, so a later one in the
            // log means the store is older than the log (a store restored from a backup, say):
            // starting the saved generation again could sign a second first event in the
            // later one.
            if record_generation > generation {
                return Err(EngineError::StaleState {
                    saved: generation,
                    logged: record_generation,
                });
            }
            if record_generation == generation {
                records.push(record);
            }
        }
        let consensus = if state.members.is_empty() {
            None
        } else if records.is_empty() {
            // Nothing of this generation was made durable, so nothing of ours was sent in it:
            // a new first event forks nothing.
            Some(Consensus::new(
                consensus_config(&config, &state),
                key.clone(),
                &state.members,
                now_ms,
            )?)
        } else {
            Some(Consensus::restore(
                consensus_config(&config, &state),
                key.clone(),
                &state.members,
                records,
                now_ms,
            )?)
        };
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.consensus = consensus;
        if !engine.state.transferred && engine.state.transfer.is_some() {
            engine.start_transfer(0);
        }
        engine.drain();
        Ok(engine)
    }

    fn assemble(
        config: EngineConfig,
        key: SigningKey,
        state: SectionState,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Self {
        Self {
            config,
            our_id: PeerId(key.verifying_key().to_bytes()),
            key,
            state,
            consensus: None,
            retired: None,
            pending_change: None,
            voted_changes: BTreeSet::new(),
            membership_votes: BTreeMap::new(),
            leaving: None,
            update_generations: BTreeMap::new(),
            joining: None,
            behind_told: BTreeMap::new(),
            refreshed_at: BTreeMap::new(),
            generation_started_ms: now_ms,
            behind: None,
            transfer: None,
            updates_heard: BTreeMap::new(),
            announcement: None,
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
            managers: Vec::new(),
            manager_answers: VecDeque::new(),
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

    /// The node's section as agreed: generation, prefix, members (empty if the node is no
    /// member), whether its state is transferred.
    pub fn section(&self) -> &SectionState {
        &self.state
    }

    /// Whether the node takes part in its section's agreement with a complete store (a
    /// member, welcomed and done transferring).
    pub fn is_active_member(&self) -> bool {
        self.consensus.is_some() && self.state.transferred
    }

    /// The consensus instance of the node's section (for status and tests); `None` while the
    /// node is no member.
    pub fn consensus(&self) -> Option<&Consensus> {
        self.consensus.as_ref()
    }

    /// Byzantine hook (feature `byzantine`, for the simulator): votes for arbitrary
    /// observation bytes, as a faulty member that proposes what it likes would. Honest code
    /// never calls it. Returns whether consensus took the vote.
    #[cfg(feature = "byzantine")]
    pub fn vote_for_raw(&mut self, bytes: Vec<u8>) -> bool {
        let taken = self.consensus.as_mut().is_some_and(|consensus| {
            consensus
                .vote_for(Observation::Payload(bytes.into()))
                .is_ok()
        });
        self.drain();
        taken
    }

    /// Runs a process manager on this section's agreed events, from its saved checkpoint (the
    /// first event if none). Every member of a section runs the same managers, and their
    /// commands have ids derived from the event ([`CommandRequest::caused_by`]), so the
    /// section agrees on each command once whoever sends it; the members of another section
    /// dedupe forwarded copies the same way. A refused command is handed to the manager's
    /// `on_rejected` (its compensation); one that failed is sent again after
    /// `MANAGER_RETRY_MS`. Add managers again after a restart: they resume from their
    /// checkpoints (saved without fsync, so a crash may replay events, which the ids absorb).
    pub fn add_process_manager(
        &mut self,
        manager: Box<dyn ProcessManager>,
    ) -> Result<(), EngineError> {
        let next_position = match self
            .store
            .load_checkpoint(&manager_checkpoint(manager.name()))?
        {
            Some(bytes) => u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("checkpoint of process manager {}", manager.name()))
            })?),
            None => 1,
        };
        self.managers.push(ManagerRun {
            manager,
            next_position,
            current: None,
            unsaved: 0,
        });
        self.run_managers();
        Ok(())
    }

    /// A one-line account of the engine's state, for diagnostics and status pages.
    pub fn summary(&self) -> String {
        format!(
            "generation {} prefix {} members {} active {} retired {:?} pending change {:?} \
             waiting {} proposed {} forwarded {} queued streams {} unapplied {} deferred {} \
             joining {} transferring {} managers busy {}; oldest proposal {:?}",
            self.state.generation,
            self.state.prefix,
            self.state.members.len(),
            self.is_active_member(),
            self.retired.as_ref().map(|(generation, _)| *generation),
            self.pending_change,
            self.waiters.len(),
            self.proposed.len(),
            self.forwarded.len(),
            self.streams.len(),
            self.unapplied.len(),
            self.deferred_seconds.len(),
            self.joining.is_some(),
            self.transfer.is_some(),
            self.managers
                .iter()
                .filter(|run| run.current.is_some())
                .count(),
            self.proposed
                .values()
                .min_by_key(|in_flight| in_flight.proposed_at_ms)
                .map(|in_flight| format!(
                    "{} on {}: attempt {}, decided at {:?}, proposed at {} ms",
                    in_flight.request.command_id,
                    in_flight.request.stream,
                    in_flight.attempts,
                    in_flight.decided_at,
                    in_flight.proposed_at_ms
                )),
        )
    }

    /// Whether this node can serve its section now, and if not, why (for `/health`).
    pub fn readiness(&self) -> Readiness {
        let behind = self
            .behind
            .filter(|lag| self.now_ms < lag.told_at_ms + BEHIND_REPORT_MS);
        if let Some(lag) = behind {
            return Readiness::Behind(lag);
        }
        if self.state.members.is_empty() || self.consensus.is_none() {
            return Readiness::NotAMember;
        }
        if let Some(run) = &self.transfer {
            return Readiness::Transferring {
                events_received: run.events.len() as u64,
                events_expected: self
                    .state
                    .transfer
                    .as_ref()
                    .map_or(0, |target| target.welcome.events),
            };
        }
        if self.joining.is_some() || !self.is_active_member() {
            return Readiness::Joining;
        }
        Readiness::Ready
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

    /// Asks the section to let this node leave: the member votes for its own leave and asks
    /// the others to. Once agreed, the node is no member any more (it still forwards
    /// commands and answers gossip about the generation it left). A leave that would shrink
    /// a section below `section_size_min` is not applied (merging is not built).
    pub fn leave(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.consensus.is_none() {
            return;
        }
        self.ask_to_leave();
        self.drain();
    }

    /// Votes for our own leave and asks the others to (again every `JOIN_RETRY_MS` until it
    /// is agreed: requests get lost).
    fn ask_to_leave(&mut self) {
        self.leaving = Some(self.now_ms);
        self.vote_change(MemberChange::Leave(self.our_id));
        for member in self.state.members.clone() {
            if member != self.our_id {
                self.send(member, &Message::LeaveRequest);
            }
        }
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
            Message::SyncRequest {
                generation,
                request,
            } => {
                // Behind, as far as we can tell: in our generation, its latest event is older
                // than what we keep; in an older one (it missed a switch), the retired
                // instance shows the same, or we no longer have that instance at all.
                let lags = if generation == self.state.generation {
                    self.consensus
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
                };
                let hint = lags
                    && self
                        .behind_told
                        .get(&from)
                        .is_none_or(|at| now_ms >= at + JOIN_RETRY_MS);
                if hint {
                    self.behind_told.insert(from, now_ms);
                    let members = self.state.members.clone();
                    let round = self
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
                // A member that lags beyond the window cannot insert what we would send (the
                // ancestry is pruned here): it gets the hint and nothing else, so a laggard
                // costs us one small message per `JOIN_RETRY_MS`, not a sync response per
                // gossip tick (those once filled its memory and starved the section).
                let instance = if lags {
                    None
                } else if generation == self.state.generation {
                    self.consensus.as_mut()
                } else {
                    self.retired
                        .as_mut()
                        .filter(|(retired, _)| *retired == generation)
                        .map(|(_, consensus)| consensus)
                };
                // A request for a generation we have not reached is answered once we have.
                if let Some(consensus) = instance {
                    match consensus.handle_sync_request(&from, &request) {
                        Ok(response) => self.send(
                            from,
                            &Message::SyncResponse {
                                generation,
                                response,
                            },
                        ),
                        Err(error) => debug!(peer = %from, %error, "sync request refused"),
                    }
                }
            }
            Message::SyncResponse {
                generation,
                response,
            } => {
                if generation == self.state.generation {
                    if let Some(consensus) = self.consensus.as_mut() {
                        if let Err(error) = consensus.handle_sync_response(now_ms, &from, response)
                        {
                            debug!(peer = %from, %error, "sync response refused");
                        }
                    }
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
            Message::Behind {
                generation,
                round,
                head_position,
                members,
            } => self.on_behind(from, generation, (round, head_position), members),
            Message::JoinRequest => self.on_join_request(from),
            Message::LeaveRequest => {
                if self.state.members.contains(&from) {
                    self.vote_change(MemberChange::Leave(from));
                }
            }
            Message::Welcome(welcome) => self.on_welcome(from, welcome),
            Message::TransferRequest {
                generation,
                from: position,
            } => {
                self.on_transfer_request(from, generation, position);
            }
            Message::TransferChunk(chunk) => self.on_transfer_chunk(from, chunk),
            Message::SectionUpdate {
                prefix,
                generation,
                change,
            } => self.on_section_update(from, prefix, generation, change),
        }
        self.drain();
    }

    /// Time passed: gossip as the consensus schedule says, retry what waited too long.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        self.now_ms = self.now_ms.max(now_ms);
        if let Some(consensus) = self.consensus.as_mut() {
            consensus.tick(now_ms, rng);
        }
        let gave_up = self.joining.as_ref().is_some_and(|joining| {
            joining
                .refresh
                .is_some_and(|(_, since)| now_ms >= since + REFRESH_GIVE_UP_MS)
        });
        if gave_up {
            self.joining = None;
        }
        if let Some(joining) = &self.joining {
            if joining
                .asked_at_ms
                .is_none_or(|at| now_ms >= at + JOIN_RETRY_MS)
            {
                self.ask_to_join();
            }
        }
        if self
            .leaving
            .is_some_and(|at| now_ms >= at + JOIN_RETRY_MS && self.consensus.is_some())
        {
            self.ask_to_leave();
        }
        if let Some(transfer) = &self.transfer {
            if now_ms >= transfer.requested_at_ms + TRANSFER_TIMEOUT_MS {
                let next = transfer.source + 1;
                debug!("state transfer timed out; asking another member");
                self.start_transfer(next);
            }
        }
        if let Some((at, _, _)) = &self.announcement {
            if now_ms >= at + ANNOUNCE_REPEAT_MS {
                if let Some((_, peers, message)) = self.announcement.take() {
                    for peer in peers {
                        self.send(peer, &message);
                    }
                }
            }
        }
        self.sweep();
        self.drain();
        self.run_managers();
    }

    /// The next replay-log record to make durable (with `Config::log_records`), with the
    /// generation it belongs to ([`Engine::restore`] replays the current generation's).
    pub fn poll_log_record(&mut self) -> Option<(u64, LogRecord)> {
        let generation = self.state.generation;
        self.consensus
            .as_mut()
            .and_then(Consensus::poll_log_record)
            .map(|record| (generation, record))
    }

    /// The next own event to make durable before it may be sent, with its generation.
    pub fn poll_unpersisted(&mut self) -> Option<(u64, std::sync::Arc<SignedEvent>)> {
        let generation = self.state.generation;
        self.consensus
            .as_mut()
            .and_then(Consensus::poll_unpersisted)
            .map(|event| (generation, event))
    }

    /// Own events of `generation` up to `index` are durable.
    pub fn handle_persisted(&mut self, generation: u64, index: u64) {
        if generation == self.state.generation {
            if let Some(consensus) = self.consensus.as_mut() {
                consensus.handle_persisted(index);
            }
        }
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
        self.route(waiter, request, 0);
    }

    /// `accept` for the `attempt`-th send of a command: a forward goes to the
    /// `attempt`-th closest member of the responsible section (cycling), so a command sent
    /// again does not wait on the same crashed or silent member forever.
    fn route(&mut self, waiter: Waiter, mut request: CommandRequest, attempt: u32) {
        let command_id = request.command_id;
        // One form from here on: what we propose is what every member compares with the
        // agreed command and stores (a JSON number or an ignored field could otherwise make
        // our own agreed command look like another one's).
        match self.registry.canonical_command(&request) {
            Ok(command) => request.command = command,
            Err(error) => {
                self.answer_waiter(waiter, command_id, outcome_of_dispatch(error));
                return;
            }
        }
        let address = XorName::from_stream_key(&request.stream.qualified());
        // Our section as agreed decides what we take, not the map (a joiner's or a lagging
        // member's map may still show a section before its split).
        let responsible = self.consensus.is_some() && self.state.prefix.matches(&address);
        if responsible && !self.is_active_member() {
            let outcome =
                CommandOutcome::Failed("this node is still joining; send it again".to_owned());
            self.answer_waiter(waiter, command_id, outcome);
            return;
        }
        let section = self.map.section_for(&address);
        if !responsible && section.contains(&name_of(&self.our_id)) {
            let outcome = CommandOutcome::Failed(
                "this node's section map is out of date; send the command again".to_owned(),
            );
            self.answer_waiter(waiter, command_id, outcome);
            return;
        }
        if !responsible {
            let target = XorName::from_stream_key(&request.stream.qualified());
            let closest = section.closest_members(&target, section.len());
            let peer = closest
                .get(attempt as usize % closest.len().max(1))
                .and_then(|name| {
                    section
                        .members()
                        .find(|(member, _)| *member == name)
                        .map(|(_, key)| PeerId(*key))
                });
            match (peer, waiter) {
                (Some(peer), Waiter::Client(_) | Waiter::Manager(_)) => {
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
                (None, waiter) => self.answer_waiter(
                    waiter,
                    command_id,
                    CommandOutcome::Failed("the responsible section has no member".to_owned()),
                ),
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
        let (proposal, decided_at) = match self.config.consensus.block_mode {
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
            .as_mut()
            .ok_or_else(|| CommandOutcome::Failed("this node is no member any more".to_owned()))?
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

    /// Drains consensus: gossip to send, proposals to second, blocks to apply, and a
    /// membership change to make once the blocks before it are applied.
    fn drain(&mut self) {
        let generation = self.state.generation;
        let Some(consensus) = self.consensus.as_mut() else {
            self.run_managers();
            return;
        };
        let mut requests = Vec::new();
        while let Some(transmit) = consensus.poll_transmit() {
            requests.push(transmit);
        }
        // Fork evidence is the consensus layer's: it votes the accusation itself.
        while let Some(evidence) = consensus.poll_evidence() {
            debug!(offender = %evidence.first.header.creator, "fork evidence");
        }
        let mut observations = Vec::new();
        while let Some((hash, observation)) = consensus.poll_observation() {
            observations.push((hash, observation));
        }
        // Blocks after a membership change belong to a generation that has ended: they are
        // never taken out, on any member (the next generation's blocks follow the change).
        while self.pending_change.is_none() {
            let Some(block) = self.consensus.as_mut().and_then(Consensus::poll_block) else {
                break;
            };
            match agreed_item(&block) {
                Some(Agreed::Proposal(proposal)) => {
                    let stream = proposal.proposal.request().stream.qualified();
                    if self
                        .state
                        .prefix
                        .matches(&XorName::from_stream_key(&stream))
                    {
                        self.unapplied.push(proposal);
                    } else {
                        // Agreed here for a stream another section owns (a stale map, or a
                        // faulty member): every member ignores it alike, and records
                        // nothing, so the owner can still take the command.
                        let command_id = proposal.proposal.request().command_id;
                        debug!(%command_id, %stream, "agreed proposal for another section's stream ignored");
                        self.answer(
                            command_id,
                            &CommandOutcome::Failed(
                                "the stream belongs to another section; send the command again"
                                    .to_owned(),
                            ),
                        );
                    }
                }
                Some(Agreed::Membership(change)) => self.count_change(&block, change),
                None => {}
            }
        }
        for transmit in requests {
            self.send(
                transmit.to,
                &Message::SyncRequest {
                    generation,
                    request: transmit.request,
                },
            );
        }
        // A joiner applies nothing before its store holds the state the generation starts
        // from.
        if !self.unapplied.is_empty() && self.state.transferred {
            self.apply();
        }
        // After the blocks, so proposals are judged on the freshest store; before a switch,
        // so a second goes to the instance that carries the observation.
        for (hash, observation) in observations {
            self.consider_second(hash, &observation);
        }
        if self.unapplied.is_empty() && self.state.transferred {
            if let Some(change) = self.pending_change {
                if self.switch(change.change) {
                    self.pending_change = None;
                    self.drain();
                    return;
                }
            }
        }
        self.run_managers();
    }

    /// Takes the process managers forward: handles the answers to their commands (a
    /// refusal goes to `on_rejected`, a failure is sent again later), sends what is due, and
    /// hands each manager its next event of our section once the previous one's commands are
    /// all answered. Only an active member runs them (a joiner's store is not complete).
    fn run_managers(&mut self) {
        if self.managers.is_empty() || !self.is_active_member() {
            return;
        }
        let now = self.now_ms;
        let Ok(head) = self.store.head_position() else {
            return;
        };
        for _ in 0..MANAGER_EVENTS_PER_RUN {
            let mut progressed = false;
            while let Some((index, command_id, outcome)) = self.manager_answers.pop_front() {
                progressed = true;
                let Some(run) = self.managers.get_mut(index) else {
                    continue;
                };
                let Some(current) = run.current.as_mut() else {
                    continue;
                };
                let Some((request, _, _)) = current.outstanding.get(&command_id).cloned() else {
                    continue;
                };
                match outcome {
                    CommandOutcome::Committed(_) | CommandOutcome::AlreadyCommitted(_) => {
                        current.outstanding.remove(&command_id);
                    }
                    CommandOutcome::Invalid(reason) if reason == ID_TAKEN => {
                        warn!(%command_id, "a process manager's command id was taken by another command; not compensated");
                        current.outstanding.remove(&command_id);
                    }
                    CommandOutcome::Refused(reason) | CommandOutcome::Invalid(reason) => {
                        current.outstanding.remove(&command_id);
                        for compensation in
                            run.manager.on_rejected(&current.event, &request, &reason)
                        {
                            current
                                .outstanding
                                .insert(compensation.command_id, (compensation, Some(now), 0));
                        }
                    }
                    CommandOutcome::Failed(reason) => {
                        debug!(%command_id, %reason, "a process manager's command failed; will retry");
                        if let Some(entry) = current.outstanding.get_mut(&command_id) {
                            entry.1 = Some(now + MANAGER_RETRY_MS);
                        }
                    }
                }
            }
            for index in 0..self.managers.len() {
                progressed |= self.step_manager(index, now, head);
            }
            if !progressed && self.manager_answers.is_empty() {
                return;
            }
        }
    }

    /// One step of one manager: send its due commands, or finish its event and take the next
    /// one of our section. True if anything moved.
    fn step_manager(&mut self, index: usize, now: u64, head: u64) -> bool {
        let prefix = self.state.prefix;
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        if let Some(current) = run.current.as_mut() {
            let due: Vec<(CommandRequest, u32)> = current
                .outstanding
                .values_mut()
                .filter(|(_, send_at, _)| send_at.is_some_and(|at| at <= now))
                .map(|(request, send_at, sends)| {
                    *send_at = None;
                    *sends += 1;
                    (request.clone(), *sends - 1)
                })
                .collect();
            if !current.outstanding.is_empty() {
                let sent = !due.is_empty();
                for (request, attempt) in due {
                    self.route(Waiter::Manager(index), request, attempt);
                }
                return sent;
            }
            run.next_position = current.event.position + 1;
            run.current = None;
            run.unsaved += 1;
            // Saved when caught up, or every so many events: a checkpoint is a write
            // transaction, and a lost one only replays events whose commands the ids absorb.
            if run.next_position > head || run.unsaved >= MANAGER_CHECKPOINT_EVERY {
                run.unsaved = 0;
                let checkpoint = run.next_position.to_le_bytes();
                let name = manager_checkpoint(run.manager.name());
                if let Err(error) = self.store.save_checkpoint(&name, &checkpoint) {
                    debug!(%error, "process manager checkpoint not saved");
                }
            }
            return true;
        }
        if run.next_position > head {
            return false; // nothing new in the store
        }
        let filter = run.manager.filter();
        let slice = match self.store.read_log(&filter, run.next_position, 1) {
            Ok(slice) => slice,
            Err(error) => {
                warn!(%error, "a process manager cannot read the store");
                return false;
            }
        };
        let Some(event) = slice.events.into_iter().next() else {
            // Nothing matched in the scanned stretch: skip it.
            let moved = slice.next.is_some_and(|next| next > run.next_position);
            if let Some(next) = slice.next {
                run.next_position = run.next_position.max(next);
            }
            return moved;
        };
        // Only the section that owns an event's stream reacts to it (after a split, each half
        // its own streams).
        if !prefix.matches(&XorName::from_stream_key(&event.stream.qualified())) {
            run.next_position = event.position + 1;
            return true;
        }
        let commands = run.manager.handle(&event);
        run.current = Some(ManagerEvent {
            event,
            outstanding: commands
                .into_iter()
                .map(|request| (request.command_id, (request, Some(now), 0)))
                .collect(),
        });
        true
    }

    /// Votes for another member's observation when we agree with it (Supermajority mode; a
    /// block needs no second in Single mode): a `Decided` proposal only if we decide the same
    /// events; one decided at a version our store has not reached yet (at most
    /// `DEFER_AHEAD_MAX` ahead) is kept and considered again after the next blocks. A
    /// `Command` proposal is seconded: its events are decided by every member at apply time.
    /// Accusations are not seconded: the consensus layer votes them when it holds evidence.
    fn consider_second(&mut self, hash: ObservationHash, observation: &Observation) {
        if self.config.consensus.block_mode == BlockMode::Single {
            return;
        }
        let Observation::Payload(bytes) = observation else {
            return;
        };
        // Membership changes are voted only by members that heard the request themselves.
        if MembershipProposal::decode(bytes).is_some() {
            return;
        }
        let proposal = Proposal::decode(bytes);
        if let Ok(proposal) = &proposal {
            let stream = proposal.request().stream.qualified();
            if !self
                .state
                .prefix
                .matches(&XorName::from_stream_key(&stream))
            {
                return; // another section's stream: never applied here
            }
        }
        match proposal {
            Ok(Proposal::Command(_)) => {
                if let Some(consensus) = self.consensus.as_mut() {
                    let _ = consensus.vote_for_hash(hash);
                }
            }
            // Our store is not up to the agreed order yet (blocks wait to be applied, or a
            // joiner's state is still coming): judge it once it is. Consensus announces an
            // observation once, so one dropped here would never be seconded by us.
            Ok(proposal @ Proposal::Decided { .. })
                if !self.unapplied.is_empty() || !self.state.transferred =>
            {
                if self.deferred_seconds.len() < DEFERRED_SECONDS_MAX {
                    self.deferred_seconds.push((hash, proposal));
                }
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
                if let Some(consensus) = self.consensus.as_mut() {
                    let _ = consensus.vote_for_hash(hash);
                }
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
                    let outcome = CommandOutcome::Invalid(ID_TAKEN.to_owned());
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
        if self.config.consensus.block_mode == BlockMode::Single {
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

    /// Votes for a membership change of the current generation, once.
    fn vote_change(&mut self, change: MemberChange) {
        let voter = (self.config.consensus.block_mode == BlockMode::Single).then_some(self.our_id);
        let proposal = MembershipProposal {
            generation: self.state.generation,
            change,
            voter,
        };
        if !change_allowed(
            &self.state.prefix,
            &self.state.members,
            &change,
            self.map.section_size_min(),
        ) || self.voted_changes.contains(&proposal)
        {
            return;
        }
        let Some(consensus) = self.consensus.as_mut() else {
            return;
        };
        match consensus.vote_for(Observation::Payload(proposal.encode().into())) {
            Ok(_) => {
                self.voted_changes.insert(proposal);
            }
            Err(error) => debug!(%error, "membership vote not taken"),
        }
    }

    /// An agreed membership change: counts the votes its block proves; once more than two
    /// thirds of the members voted for the change, it is the one to make (after the blocks
    /// before it). Every member counts the same blocks in the same order.
    fn count_change(&mut self, block: &Block, proposal: MembershipProposal) {
        if proposal.generation != self.state.generation
            || !change_allowed(
                &self.state.prefix,
                &self.state.members,
                &proposal.change,
                self.map.section_size_min(),
            )
        {
            debug!(?proposal, "agreed membership change does not apply");
            return;
        }
        let members = &self.state.members;
        let voters = self.membership_votes.entry(proposal.change).or_default();
        for vote in &block.proof {
            let voter = vote.event.header.creator;
            if members.contains(&voter) && proposal.voter.is_none_or(|named| named == voter) {
                voters.insert(voter);
            }
        }
        if is_supermajority(voters.len(), members.len()) {
            self.pending_change = Some(proposal);
        }
    }

    /// A node asks to join: a member votes to admit it if its name falls in our section; one
    /// admitted in this generation gets its welcome again (the first may have been lost).
    fn on_join_request(&mut self, from: PeerId) {
        if self.state.members.contains(&from) {
            if let Some(welcome) = self
                .state
                .handovers
                .iter()
                .rev()
                .find(|handover| handover.joiner == from)
                .map(welcome_for)
            {
                self.send(from, &Message::Welcome(welcome));
            }
            // A member asking again lags: brought back if our own graph shows it, unless it
            // is new here: welcomed into this very generation and not yet heard from, for at
            // most `NEW_MEMBER_GRACE_MS` (a joiner or a refreshed member still fetching its
            // state has no events yet: it is not behind, only new). A member that took part
            // in this generation and fell behind again is refreshed again: skipping it
            // because of its earlier welcome left it stuck for good.
            let welcomed_now = self.state.handovers.iter().any(|handover| {
                handover.joiner == from && handover.generation == self.state.generation
            });
            let heard_from = self
                .consensus
                .as_ref()
                .is_some_and(|consensus| consensus.holds_events_of(&from));
            let new_here = welcomed_now
                && !heard_from
                && self.now_ms < self.generation_started_ms + NEW_MEMBER_GRACE_MS;
            // And at most once per `REFRESH_INTERVAL_MIN_MS` per member (by our clock): a
            // faulty member can make itself look behind, and each refresh is a switch.
            let refreshed_lately = self
                .refreshed_at
                .get(&from)
                .is_some_and(|at| self.now_ms < at + REFRESH_INTERVAL_MIN_MS);
            // Behind: beyond our window, or not in this generation at all (it missed the
            // switch that started it; an honest member asks only when told it lags, so a
            // member that takes part is not refreshed by a false hint).
            let lags = !new_here
                && !refreshed_lately
                && self.is_active_member()
                && self.consensus.as_ref().is_some_and(|consensus| {
                    consensus.lags_beyond_window(&from) || !consensus.holds_events_of(&from)
                });
            if lags {
                self.vote_change(MemberChange::Refresh(from));
            }
            return;
        }
        if self.is_active_member() {
            self.vote_change(MemberChange::Join(from));
        }
    }

    /// A member says we lag beyond its prune window: we ask to be welcomed again (each member
    /// votes on what its own graph shows, so a false hint costs a few requests).
    fn on_behind(
        &mut self,
        from: PeerId,
        generation: u64,
        (round, head_position): (u64, u64),
        members: Vec<PeerId>,
    ) {
        if generation != self.state.generation
            || !self.state.members.contains(&from)
            || !self.is_active_member()
        {
            return;
        }
        // What operators see (`readiness`): the lag the latest hint shows, kept while hints
        // keep coming.
        let our_round = self
            .consensus
            .as_ref()
            .map_or(0, |consensus| consensus.stats().max_round);
        let our_head = self.store.head_position().unwrap_or(0);
        self.behind = Some(Lag {
            told_at_ms: self.now_ms,
            rounds: round.saturating_sub(our_round),
            positions: head_position.saturating_sub(our_head),
        });
        if self.joining.is_some() {
            return;
        }
        warn!(peer = %from, generation, "a member says we fell too far behind; asking for a state transfer");
        self.joining = Some(Joining {
            asked_at_ms: None,
            refresh: Some((generation, self.now_ms)),
            also_ask: members.into_iter().collect(),
            welcomes: BTreeMap::new(),
        });
        self.ask_to_join();
    }

    /// Joiner: asks every member of the section covering its name to admit it.
    fn ask_to_join(&mut self) {
        let section = self.map.section_for(&name_of(&self.our_id));
        let mut members: BTreeSet<PeerId> = section.member_keys().into_iter().map(PeerId).collect();
        if let Some(joining) = &self.joining {
            members.extend(joining.also_ask.iter().copied());
        }
        for member in members {
            if member != self.our_id {
                self.send(member, &Message::JoinRequest);
            }
        }
        if let Some(joining) = self.joining.as_mut() {
            joining.asked_at_ms = Some(self.now_ms);
        }
    }

    /// Joiner: a welcome. Believed once `f + 1` members of the section the joiner knows sent
    /// the same one (at least one of them honest); then the joiner starts the generation's
    /// consensus instance and fetches the state.
    fn on_welcome(&mut self, from: PeerId, welcome: Welcome) {
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        let our_name = name_of(&self.our_id);
        let known = self.map.section_for(&our_name);
        let voters: Vec<PeerId> = known.member_keys().into_iter().map(PeerId).collect();
        let mut sorted = welcome.members.clone();
        sort_members(&mut sorted);
        // A lagging member takes only a welcome to a later generation than the one it is in
        // (a welcome from its own admission sent again, or one to the generation it reached
        // by itself meanwhile, must not start that instance a second time: it would sign a
        // second first event).
        let later = joining.refresh.is_none_or(|(generation, _)| {
            welcome.generation > generation && welcome.generation > self.state.generation
        });
        let plausible = later
            && voters.contains(&from)
            && welcome.members.contains(&self.our_id)
            && sorted == welcome.members
            && welcome.prefix.matches(&our_name)
            && welcome
                .members
                .iter()
                .all(|member| welcome.prefix.matches(&name_of(member)));
        if !plausible {
            debug!(peer = %from, "implausible welcome ignored");
            return;
        }
        joining.welcomes.insert(from, welcome.clone());
        let sources: Vec<PeerId> = joining
            .welcomes
            .iter()
            .filter(|(_, heard)| **heard == welcome)
            .map(|(sender, _)| *sender)
            .collect();
        if sources.len() <= faulty_max(voters.len()) {
            return;
        }
        // Our map: what we knew, with our section as the welcome says it is now.
        let mut network: Vec<[u8; 32]> = network_of(&self.map)
            .into_iter()
            .filter(|member| !welcome.prefix.matches(&name_of(member)))
            .map(|member| member.0)
            .collect();
        network.extend(welcome.members.iter().map(|member| member.0));
        let map = SectionMap::with_members(self.map.section_size_min(), &network);
        let state = SectionState {
            generation: welcome.generation,
            prefix: welcome.prefix,
            members: welcome.members.clone(),
            network: network_of(&map),
            transferred: false,
            start_head: 0,
            transfer: Some(TransferTarget { welcome, sources }),
            handovers: Vec::new(),
        };
        if let Err(error) = state.save(&self.store) {
            warn!(%error, "section state not saved; will ask to join again");
            return;
        }
        let refreshed = self
            .joining
            .take()
            .is_some_and(|joining| joining.refresh.is_some());
        if refreshed {
            // The generation we lagged in is over for us: what it did not apply, the
            // transfer brings; our pending commands go to the new one.
            let old_generation = self.state.generation;
            self.retired = self
                .consensus
                .take()
                .map(|consensus| (old_generation, consensus));
            self.pending_change = None;
            self.unapplied.clear();
            self.voted_changes.clear();
            self.membership_votes.clear();
            self.deferred_seconds.clear();
            self.behind_told.clear();
        }
        self.map = map;
        self.state = state;
        self.generation_started_ms = self.now_ms;
        self.behind = None;
        match Consensus::new(
            consensus_config(&self.config, &self.state),
            self.key.clone(),
            &self.state.members,
            self.now_ms,
        ) {
            Ok(consensus) => self.consensus = Some(consensus),
            Err(error) => warn!(%error, "the welcomed generation does not start"),
        }
        if refreshed {
            self.reroute_pending();
        }
        self.start_transfer(0);
    }

    /// Joiner: (re)starts the transfer from the `source`-th member that vouched (cycling).
    fn start_transfer(&mut self, source: usize) {
        let Some(target) = &self.state.transfer else {
            return;
        };
        if target.sources.is_empty() {
            return;
        }
        let source = source % target.sources.len();
        let peer = target.sources[source];
        let generation = target.welcome.generation;
        self.transfer = Some(TransferRun {
            source,
            next_from: 1,
            bytes: 0,
            events: Vec::new(),
            commands: Vec::new(),
            requested_at_ms: self.now_ms,
        });
        self.send(
            peer,
            &Message::TransferRequest {
                generation,
                from: 1,
            },
        );
    }

    /// Member: serves a joiner's state transfer, from the handover fixed at its admission.
    /// The cursor runs over our store's positions up to the handover's head (the section's
    /// events), then over the handover's eventless commands.
    fn on_transfer_request(&mut self, from: PeerId, generation: u64, position: u64) {
        let Some(handover) = self
            .state
            .handovers
            .iter()
            .find(|handover| handover.joiner == from && handover.generation == generation)
            .cloned()
        else {
            debug!(peer = %from, generation, "a transfer request without a handover");
            return;
        };
        let mut events = Vec::new();
        let mut commands = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        let mut cursor = position.max(1);
        if cursor <= handover.head {
            'chunks: loop {
                let read = section_events(
                    &self.store,
                    &handover.prefix,
                    cursor,
                    Some(handover.head),
                    100,
                );
                let (slice, slice_next) = match read {
                    Ok(read) => read,
                    Err(error) => {
                        warn!(%error, "the store does not read; transfer chunk not sent");
                        return;
                    }
                };
                for event in slice {
                    if !events.is_empty()
                        && (events.len() >= TRANSFER_CHUNK_EVENTS
                            || bytes + event.payload.len() > TRANSFER_CHUNK_BYTES)
                    {
                        next = Some(event.position);
                        break 'chunks;
                    }
                    bytes += event.payload.len();
                    events.push(event);
                }
                match slice_next {
                    Some(slice_next) => cursor = slice_next,
                    None => {
                        cursor = handover.head + 1;
                        break;
                    }
                }
            }
        }
        if next.is_none() {
            let first =
                usize::try_from(cursor.saturating_sub(handover.head + 1)).unwrap_or(usize::MAX);
            let mut index = first;
            while let Some(command) = handover.commands.get(index) {
                // Commands share the chunk's byte budget with the events before them.
                let size = command.stream.qualified().len()
                    + command.refusal.as_ref().map_or(0, String::len)
                    + 64;
                if (!events.is_empty() || !commands.is_empty())
                    && (commands.len() >= TRANSFER_CHUNK_COMMANDS
                        || bytes + size > TRANSFER_CHUNK_BYTES)
                {
                    next = Some(handover.head + 1 + index as u64);
                    break;
                }
                bytes += size;
                commands.push(command.clone());
                index += 1;
            }
        }
        let chunk = TransferChunk {
            generation,
            from: position,
            events,
            commands,
            next,
        };
        self.send(from, &Message::TransferChunk(chunk));
    }

    /// Joiner: a chunk of its state from the source it asked.
    fn on_transfer_chunk(&mut self, from: PeerId, chunk: TransferChunk) {
        let Some(target) = &self.state.transfer else {
            return;
        };
        let Some(run) = self.transfer.as_mut() else {
            return;
        };
        if target.sources.get(run.source) != Some(&from)
            || chunk.generation != target.welcome.generation
            || chunk.from != run.next_from
        {
            debug!(peer = %from, "a transfer chunk nobody asked this peer for");
            return;
        }
        let events = run.events.len() + chunk.events.len();
        let commands = run.commands.len() + chunk.commands.len();
        let bytes = run.bytes
            + chunk
                .events
                .iter()
                .map(|event| event.payload.len() as u64)
                .sum::<u64>();
        // Honest chunks are never empty unless last; an empty one could stall us forever.
        let empty_and_not_last =
            chunk.events.is_empty() && chunk.commands.is_empty() && chunk.next.is_some();
        if events as u64 > target.welcome.events
            || commands as u64 > target.welcome.commands
            || bytes > target.welcome.bytes
            || empty_and_not_last
        {
            let next = run.source + 1;
            warn!(peer = %from, "a transfer bigger than its welcome promised; asking another member");
            self.start_transfer(next);
            return;
        }
        run.bytes = bytes;
        run.events.extend(chunk.events);
        run.commands.extend(chunk.commands);
        run.requested_at_ms = self.now_ms;
        match chunk.next {
            Some(next) if next > run.next_from => {
                run.next_from = next;
                let generation = chunk.generation;
                self.send(
                    from,
                    &Message::TransferRequest {
                        generation,
                        from: next,
                    },
                );
            }
            Some(_) => {
                let next = run.source + 1;
                debug!(peer = %from, "a transfer chunk that goes backwards; asking another member");
                self.start_transfer(next);
            }
            None => self.finish_transfer(),
        }
    }

    /// Joiner: all chunks are in. If they have the digest the welcome promised, they are
    /// written (one write per original command, expected versions checked) and the joiner
    /// starts applying its generation's blocks; otherwise it asks another member.
    fn finish_transfer(&mut self) {
        let (Some(target), Some(run)) = (self.state.transfer.clone(), self.transfer.take()) else {
            return;
        };
        if section_digest(&run.events, &run.commands) != target.welcome.digest {
            warn!("transferred state does not match the welcome's digest; asking another member");
            self.start_transfer(run.source + 1);
            return;
        }
        if let Err(error) = self.write_transferred(&run.events, &run.commands) {
            warn!(%error, "transferred state not written; asking again");
            self.start_transfer(run.source + 1);
            return;
        }
        let mut state = self.state.clone();
        state.transferred = true;
        state.transfer = None;
        if let Err(error) = state.save(&self.store) {
            // The data is written (idempotently): fetch it again and save then.
            warn!(%error, "section state not saved after the transfer; asking again");
            self.start_transfer(run.source + 1);
            return;
        }
        self.state = state;
        debug!(events = run.events.len(), "state transfer done");
        // Proposals deferred while the state was coming can be judged now.
        self.after_blocks();
    }

    /// Writes transferred events as the writes they were (consecutive events of one command
    /// on one stream), with the original ids, times and expected versions, then the eventless
    /// commands (refusals, and appends without events).
    fn write_transferred(
        &self,
        events: &[RecordedEvent],
        commands: &[EventlessCommand],
    ) -> Result<(), StoreError> {
        let mut batches: Vec<AppendBatch> = Vec::new();
        for event in events {
            let new_event = NewEvent {
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                event_version: event.event_version,
                payload: event.payload.clone(),
                supersedes: event.supersedes,
            };
            let continues = batches.last().is_some_and(|batch| {
                batch.command_id == event.command_id
                    && batch.timestamp_ms == event.timestamp_ms
                    && batch
                        .writes
                        .first()
                        .is_some_and(|write| write.stream == event.stream)
            });
            match batches.last_mut() {
                Some(batch) if continues => batch.writes[0].events.push(new_event),
                _ => batches.push(AppendBatch {
                    command_id: event.command_id,
                    causation_id: event.causation_id,
                    correlation_id: event.correlation_id,
                    timestamp_ms: event.timestamp_ms,
                    writes: vec![chorus_aggregate::StreamWrite {
                        stream: event.stream.clone(),
                        expected: if event.sequence <= 1 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(event.sequence - 1)
                        },
                        events: vec![new_event],
                    }],
                }),
            }
        }
        for command in commands.iter().filter(|command| command.refusal.is_none()) {
            batches.push(AppendBatch {
                command_id: Some(command.command_id),
                causation_id: command.command_id.into(),
                correlation_id: command.command_id.into(),
                timestamp_ms: 0,
                writes: vec![chorus_aggregate::StreamWrite {
                    stream: command.stream.clone(),
                    expected: ExpectedVersion::Any,
                    events: Vec::new(),
                }],
            });
        }
        for group in batches.chunks(chorus_aggregate::limits::GROUP_BATCHES_MAX) {
            let outcome = self.store.append_group(group)?;
            if let Some(error) = outcome.into_iter().find_map(Result::err) {
                return Err(error);
            }
        }
        for command in commands {
            if let Some(reason) = &command.refusal {
                self.store
                    .record_refusal(command.command_id, &command.stream, reason)?;
            }
        }
        Ok(())
    }

    /// Another section's member says its section changed. Applied to our map (routing only)
    /// once `f + 1` members of the section our map has for that prefix (the section itself,
    /// or the one it split from) said the same, so at least one honest member did; never
    /// for our own section, which changes only by our own agreement.
    fn on_section_update(
        &mut self,
        from: PeerId,
        prefix: Prefix,
        generation: u64,
        change: MemberChange,
    ) {
        let node = change.node();
        if prefix.overlaps(&self.state.prefix)
            || !prefix.matches(&name_of(&node))
            || self
                .update_generations
                .get(&node)
                .is_some_and(|applied| *applied >= generation)
        {
            return;
        }
        let known = self.map.section_for(&prefix.lower_bound());
        if !(known.prefix() == prefix || known.prefix().is_ancestor_of(&prefix)) {
            return;
        }
        let voters: Vec<PeerId> = known.member_keys().into_iter().map(PeerId).collect();
        if !voters.contains(&from) {
            return;
        }
        let update = (prefix, generation, change);
        let heard = self.updates_heard.entry(from).or_default();
        if !heard.contains(&update) {
            if heard.len() >= UPDATES_PER_SENDER_MAX {
                heard.pop_front();
            }
            heard.push_back(update);
        }
        let senders = self
            .updates_heard
            .values()
            .filter(|heard| heard.contains(&update))
            .count();
        if senders <= faulty_max(voters.len()) {
            return;
        }
        // Applied: forget it and anything older about the same node.
        for heard in self.updates_heard.values_mut() {
            heard.retain(|(_, heard_generation, heard_change)| {
                heard_change.node() != node || *heard_generation > generation
            });
        }
        self.updates_heard.retain(|_, heard| !heard.is_empty());
        self.update_generations.insert(node, generation);
        match change {
            MemberChange::Join(node) => {
                self.map.add_member(node.0);
            }
            MemberChange::Leave(node) => {
                self.map.remove_member(&name_of(&node));
            }
            MemberChange::Refresh(_) => {}
        }
        self.state.network = network_of(&self.map);
    }

    /// Applies an agreed membership change (every block before it is applied): ends this
    /// generation and starts the next, with the new members, split if the section can split.
    /// Fixes the handover a joiner will fetch, saves the section state, welcomes the joiner,
    /// tells the other sections, and routes our pending commands again (their proposals
    /// died with the old instance; the new one or another section takes them). Returns
    /// false, changing nothing, if the store fails: the change waits and is tried again (a
    /// next generation started without its state saved could, after a crash, sign a second
    /// first event in it).
    fn switch(&mut self, change: MemberChange) -> bool {
        let old_prefix = self.state.prefix;
        let generation = self.state.generation + 1;
        let min = self.map.section_size_min();
        let mut all = self.state.members.clone();
        match change {
            MemberChange::Join(node) => all.push(node),
            MemberChange::Leave(node) => all.retain(|member| *member != node),
            MemberChange::Refresh(_) => {}
        }
        sort_members(&mut all);
        let head = match self.store.head_position() {
            Ok(head) => head,
            Err(error) => {
                warn!(%error, "the store does not read; the membership change waits");
                return false;
            }
        };
        let mut handovers = self.state.handovers.clone();
        if let MemberChange::Join(joiner) | MemberChange::Refresh(joiner) = change {
            match self.handover(joiner, generation, old_prefix, &all, min, head) {
                Ok(handover) => handovers.push(handover),
                Err(error) => {
                    warn!(%error, "no handover for the joiner; the membership change waits");
                    return false;
                }
            }
        }
        let excess = handovers.len().saturating_sub(HANDOVERS_MAX);
        handovers.drain(..excess);
        let mut map = self.map.clone();
        match change {
            MemberChange::Join(node) => {
                map.add_member(node.0);
            }
            MemberChange::Leave(node) => {
                map.remove_member(&name_of(&node));
            }
            MemberChange::Refresh(_) => {}
        }
        let ours = section_after(old_prefix, &all, &self.our_id, min);
        let state = SectionState {
            generation,
            prefix: ours.as_ref().map_or(old_prefix, |(prefix, _)| *prefix),
            members: ours.map(|(_, members)| members).unwrap_or_default(),
            network: network_of(&map),
            transferred: true,
            start_head: head,
            transfer: None,
            handovers,
        };
        if let Err(error) = state.save(&self.store) {
            warn!(%error, "section state not saved; the membership change waits");
            return false;
        }
        self.map = map;
        self.state = state;
        self.generation_started_ms = self.now_ms;
        self.behind = None;
        self.update_generations.insert(change.node(), generation);
        let old = self.consensus.take();
        self.retired = old.map(|consensus| (generation - 1, consensus));
        self.voted_changes.clear();
        self.membership_votes.clear();
        self.deferred_seconds.clear();
        self.behind_told.clear();
        // A refresh we asked for is moot once we switch generations ourselves.
        if self
            .joining
            .as_ref()
            .is_some_and(|joining| joining.refresh.is_some())
        {
            self.joining = None;
        }
        if !self.state.members.is_empty() {
            match Consensus::new(
                consensus_config(&self.config, &self.state),
                self.key.clone(),
                &self.state.members,
                self.now_ms,
            ) {
                Ok(consensus) => self.consensus = Some(consensus),
                Err(error) => warn!(%error, "the next generation does not start"),
            }
        } else {
            self.leaving = None;
        }
        debug!(generation, prefix = %self.state.prefix, members = self.state.members.len(), ?change, "section changed");
        if let MemberChange::Join(joiner) | MemberChange::Refresh(joiner) = change {
            if let Some(welcome) = self
                .state
                .handovers
                .iter()
                .rev()
                .find(|handover| handover.joiner == joiner)
                .map(welcome_for)
            {
                self.send(joiner, &Message::Welcome(welcome));
            }
        }
        if let MemberChange::Refresh(member) = change {
            self.refreshed_at.insert(member, self.now_ms);
            // Nobody else's map changes.
            self.reroute_pending();
            return true;
        }
        let update = Message::SectionUpdate {
            prefix: old_prefix,
            generation,
            change,
        };
        let outsiders: Vec<PeerId> = self
            .state
            .network
            .iter()
            .copied()
            .filter(|node| !old_prefix.matches(&name_of(node)) && *node != self.our_id)
            .collect();
        for node in &outsiders {
            self.send(*node, &update);
        }
        self.announcement = Some((self.now_ms, outsiders, update));
        self.reroute_pending();
        true
    }

    /// The state a joiner of `generation` fetches: our store's `head` now, the digest of its
    /// section's events up to there and of its section's eventless commands.
    fn handover(
        &self,
        joiner: PeerId,
        generation: u64,
        old_prefix: Prefix,
        all: &[PeerId],
        min: usize,
        head: u64,
    ) -> Result<Handover, StoreError> {
        let (prefix, members) = section_after(old_prefix, all, &joiner, min)
            .unwrap_or_else(|| (old_prefix, all.to_vec()));
        let events = all_section_events(&self.store, &prefix, Some(head))?;
        let commands = section_commands(&self.store, &prefix)?;
        Ok(Handover {
            joiner,
            generation,
            prefix,
            members,
            head,
            events: events.len() as u64,
            bytes: events.iter().map(|event| event.payload.len() as u64).sum(),
            digest: section_digest(&events, &commands),
            commands,
        })
    }

    /// After a switch: our commands in agreement or queued are routed again, in their
    /// per-stream order (proposed anew if our section still covers their stream, forwarded
    /// otherwise). Their ids keep them from applying twice if an old block did take them.
    fn reroute_pending(&mut self) {
        let mut requests = Vec::new();
        for (_, mut queue) in std::mem::take(&mut self.streams) {
            if let Some(active) = queue.active.take() {
                if let Some(in_flight) = self.proposed.remove(&active) {
                    requests.push(in_flight.request);
                }
            }
            requests.extend(queue.waiting);
        }
        requests.extend(
            std::mem::take(&mut self.proposed)
                .into_values()
                .map(|in_flight| in_flight.request),
        );
        for request in requests {
            for waiter in self.waiters.remove(&request.command_id).unwrap_or_default() {
                self.accept(waiter, request.clone());
            }
        }
    }

    /// Answers everyone waiting for `command_id`.
    fn answer(&mut self, command_id: CommandId, outcome: &CommandOutcome) {
        for waiter in self.waiters.remove(&command_id).unwrap_or_default() {
            self.answer_waiter(waiter, command_id, outcome.clone());
        }
    }

    fn answer_waiter(&mut self, waiter: Waiter, command_id: CommandId, outcome: CommandOutcome) {
        match waiter {
            Waiter::Client(ticket) => self.replies.push_back((ticket, outcome)),
            Waiter::Peer(peer) => self.answer_peer(peer, command_id, outcome),
            // Handled by `run_managers`, not here: a manager's reaction sends commands, and
            // sending from inside an answer would re-enter the command path.
            Waiter::Manager(index) => self.manager_answers.push_back((index, command_id, outcome)),
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

/// The welcome of a handover: the joiner's section in the handover's generation and the state
/// it starts from.
fn welcome_for(handover: &Handover) -> Welcome {
    Welcome {
        generation: handover.generation,
        prefix: handover.prefix,
        members: handover.members.clone(),
        events: handover.events,
        bytes: handover.bytes,
        commands: handover.commands.len() as u64,
        digest: handover.digest,
    }
}

/// The checkpoint name of a process manager run by the engine.
fn manager_checkpoint(name: &str) -> String {
    format!("$engine/manager/{name}")
}

/// The section state of a node at the network's start (generation 0), from the map.
fn initial_state(key: &SigningKey, map: &SectionMap) -> Result<SectionState, EngineError> {
    let our_name = XorName::from_public_key(&key.verifying_key().to_bytes());
    let section = map
        .section_of_member(&our_name)
        .ok_or(EngineError::NotAMember)?;
    Ok(SectionState {
        generation: 0,
        prefix: section.prefix(),
        members: section.member_keys().into_iter().map(PeerId).collect(),
        network: network_of(map),
        transferred: true,
        start_head: 0,
        transfer: None,
        handovers: Vec::new(),
    })
}

/// Every member of the map, in name order.
fn network_of(map: &SectionMap) -> Vec<PeerId> {
    map.sections()
        .flat_map(|section| section.member_keys())
        .map(PeerId)
        .collect()
}

/// The consensus configuration of a section's generation: the node's, with the group id of
/// that generation.
fn consensus_config(config: &EngineConfig, state: &SectionState) -> Config {
    Config {
        group: group_id(&state.prefix, state.generation),
        ..config.consensus.clone()
    }
}

/// What a block carries for the engine.
enum Agreed {
    Proposal(AgreedProposal),
    Membership(MembershipProposal),
}

/// A block's proposal or membership change, if it carries one (accusations and undecodable
/// payloads carry none).
fn agreed_item(block: &Block) -> Option<Agreed> {
    let Observation::Payload(bytes) = &block.observation else {
        return None;
    };
    match MembershipProposal::decode(bytes) {
        Some(Ok(change)) => return Some(Agreed::Membership(change)),
        Some(Err(error)) => {
            debug!(block = block.sequence, %error, "agreed membership change does not decode");
            return None;
        }
        None => {}
    }
    match Proposal::decode(bytes) {
        Ok(proposal) => Some(Agreed::Proposal(AgreedProposal {
            timestamp_ms: block.timestamp_ms,
            proposal,
        })),
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
