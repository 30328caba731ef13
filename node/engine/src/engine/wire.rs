//! The engine messages between nodes and their encoding: a tag byte, then the consensus
//! codec for gossip, bincode for transfer chunks, JSON for the rest.

use chorus_aggregate::{CommandId, CommandRequest, RecordedEvent};
use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::{ForkEvidence, PeerId, SyncRequest, SyncResponse};
use chorus_routing::Prefix;
use serde::{Deserialize, Serialize};

use crate::domain::{DomainFingerprint, NodeDomain};
use crate::membership::{EventlessCommand, MemberChange, Welcome};

use super::admission::JoinRefusal;
use super::command_path::CommandOutcome;
use super::limits::{BEHIND_MEMBERS_MAX, MESSAGE_BYTES_MAX};

/// A message between engines.
#[derive(Clone, Debug)]
pub enum Message {
    /// Consensus gossip of one generation of the section: "here is what I know, send me what
    /// I lack".
    SyncRequest {
        /// The generation (consensus instance) it is for.
        generation: u64,
        /// The digest of the domain the sender runs: a member with another domain does not
        /// take part (`domain_check`).
        domain: [u8; 32],
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
    /// A node that forwarded a command asks a member of the responsible section what its
    /// store recorded for it (answered with an `Outcome`, `Failed` while nothing is), to
    /// confirm the proposer's answer; the member never proposes it.
    Confirm(CommandId),
    /// A node asks the section covering its name to admit it, running this domain.
    JoinRequest(NodeDomain),
    /// A member tells a node that asked to join why it does not vote to admit it.
    JoinRefused(JoinRefusal),
    /// A member passes on proof that another member forked its chain, so every member can
    /// vote it out on evidence it checked itself.
    ForkEvidence(Box<ForkEvidence>),
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
        position: u64,
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
    /// A member tells a node whose sync request named another domain which domain the
    /// member's section runs (the node stops once `f + 1` members of its section say so).
    DomainDiffers(DomainFingerprint),
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
    /// The position this chunk starts at (the request's `position`).
    pub position: u64,
    /// The section's events from there, in the member's store order.
    pub events: Vec<RecordedEvent>,
    /// The section's eventless commands, after the events (the cursor runs over the events'
    /// positions up to the handover's head, then over these).
    pub commands: Vec<EventlessCommand>,
    /// Where the next chunk starts; `None` in the last.
    pub next: Option<u64>,
}

pub(super) const TAG_SYNC_REQUEST: u8 = 1;
pub(super) const TAG_SYNC_RESPONSE: u8 = 2;
pub(super) const TAG_FORWARD: u8 = 3;
pub(super) const TAG_OUTCOME: u8 = 4;
pub(super) const TAG_JOIN_REQUEST: u8 = 5;
pub(super) const TAG_LEAVE_REQUEST: u8 = 6;
pub(super) const TAG_WELCOME: u8 = 7;
pub(super) const TAG_TRANSFER_REQUEST: u8 = 8;
pub(super) const TAG_TRANSFER_CHUNK: u8 = 9;
pub(super) const TAG_SECTION_UPDATE: u8 = 10;
pub(super) const TAG_BEHIND: u8 = 11;
pub(super) const TAG_JOIN_REFUSED: u8 = 12;
pub(super) const TAG_FORK_EVIDENCE: u8 = 13;
pub(super) const TAG_CONFIRM: u8 = 14;
pub(super) const TAG_DOMAIN_DIFFERS: u8 = 15;

#[derive(Serialize, Deserialize)]
pub(super) struct OutcomeMessage {
    pub(super) command_id: CommandId,
    pub(super) outcome: CommandOutcome,
}

#[derive(Serialize, Deserialize)]
pub(super) struct TransferRequestMessage {
    pub(super) generation: u64,
    pub(super) position: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SectionUpdateMessage {
    pub(super) prefix: Prefix,
    pub(super) generation: u64,
    pub(super) change: MemberChange,
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
    /// Encodes: a tag byte, then for gossip (a sync request first names its domain digest,
    /// 32 bytes) the generation (8 bytes, little-endian) and the consensus wire codec, bincode for a transfer chunk, JSON otherwise (the `Behind` hint:
    /// three little-endian numbers, then JSON).
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let (tag, body) = match self {
            Self::SyncRequest {
                generation,
                domain,
                request,
            } => (
                TAG_SYNC_REQUEST,
                sync_request_body(domain, *generation, request)?,
            ),
            Self::SyncResponse {
                generation,
                response,
            } => (TAG_SYNC_RESPONSE, gossip_body(*generation, response)?),
            Self::Forward(request) => (TAG_FORWARD, to_json(request)?),
            Self::Confirm(command_id) => (TAG_CONFIRM, to_json(command_id)?),
            Self::Outcome {
                command_id,
                outcome,
            } => (
                TAG_OUTCOME,
                to_json(&OutcomeMessage {
                    command_id: *command_id,
                    outcome: outcome.clone(),
                })?,
            ),
            Self::Behind {
                generation,
                round,
                head_position,
                members,
            } => (
                TAG_BEHIND,
                behind_body([*generation, *round, *head_position], members)?,
            ),
            Self::JoinRequest(domain) => (TAG_JOIN_REQUEST, to_json(domain)?),
            Self::DomainDiffers(domain) => (TAG_DOMAIN_DIFFERS, to_json(domain)?),
            Self::JoinRefused(refusal) => (TAG_JOIN_REFUSED, to_json(refusal)?),
            Self::ForkEvidence(evidence) => (TAG_FORK_EVIDENCE, to_json(evidence)?),
            Self::LeaveRequest => (TAG_LEAVE_REQUEST, Vec::new()),
            Self::Welcome(welcome) => (TAG_WELCOME, to_json(welcome)?),
            Self::TransferRequest {
                generation,
                position,
            } => (
                TAG_TRANSFER_REQUEST,
                to_json(&TransferRequestMessage {
                    generation: *generation,
                    position: *position,
                })?,
            ),
            // Binary: event payloads are bytes, which JSON would spell in up to four.
            Self::TransferChunk(chunk) => (
                TAG_TRANSFER_CHUNK,
                bincode::serde::encode_to_vec(chunk, bincode::config::standard())
                    .map_err(malformed)?,
            ),
            Self::SectionUpdate {
                prefix,
                generation,
                change,
            } => (
                TAG_SECTION_UPDATE,
                to_json(&SectionUpdateMessage {
                    prefix: *prefix,
                    generation: *generation,
                    change: *change,
                })?,
            ),
        };
        frame(tag, &body)
    }

    /// Decodes untrusted bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let (&tag, body) = bytes.split_first().ok_or(MessageError::UnknownTag(None))?;
        match tag {
            TAG_SYNC_REQUEST => {
                let Some((domain, body)) = body.split_first_chunk::<32>() else {
                    return Err(MessageError::Malformed(
                        "a sync request without a domain".into(),
                    ));
                };
                let (generation, rest) = leading_number(body)?;
                Ok(Self::SyncRequest {
                    generation,
                    domain: *domain,
                    request: decode_message(rest).map_err(malformed)?,
                })
            }
            TAG_SYNC_RESPONSE => {
                let (generation, rest) = leading_number(body)?;
                Ok(Self::SyncResponse {
                    generation,
                    response: decode_message(rest).map_err(malformed)?,
                })
            }
            _ if bytes.len() > MESSAGE_BYTES_MAX => Err(MessageError::TooLarge(bytes.len())),
            TAG_FORWARD => Ok(Self::Forward(from_json(body)?)),
            TAG_CONFIRM => Ok(Self::Confirm(from_json(body)?)),
            TAG_OUTCOME => {
                let message: OutcomeMessage = from_json(body)?;
                Ok(Self::Outcome {
                    command_id: message.command_id,
                    outcome: message.outcome,
                })
            }
            TAG_BEHIND => decode_behind(body),
            TAG_JOIN_REQUEST => Ok(Self::JoinRequest(from_json(body)?)),
            TAG_DOMAIN_DIFFERS => Ok(Self::DomainDiffers(from_json(body)?)),
            TAG_LEAVE_REQUEST if body.is_empty() => Ok(Self::LeaveRequest),
            TAG_LEAVE_REQUEST => Err(MessageError::Malformed("a request with a body".into())),
            TAG_JOIN_REFUSED => Ok(Self::JoinRefused(from_json(body)?)),
            TAG_FORK_EVIDENCE => Ok(Self::ForkEvidence(Box::new(from_json(body)?))),
            TAG_WELCOME => Ok(Self::Welcome(from_json(body)?)),
            TAG_TRANSFER_REQUEST => {
                let message: TransferRequestMessage = from_json(body)?;
                Ok(Self::TransferRequest {
                    generation: message.generation,
                    position: message.position,
                })
            }
            TAG_TRANSFER_CHUNK => decode_chunk(body),
            TAG_SECTION_UPDATE => {
                let message: SectionUpdateMessage = from_json(body)?;
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

/// The tag, then the body; only gossip may exceed `MESSAGE_BYTES_MAX` (consensus bounds it).
fn frame(tag: u8, body: &[u8]) -> Result<Vec<u8>, MessageError> {
    if tag != TAG_SYNC_REQUEST && tag != TAG_SYNC_RESPONSE && body.len() >= MESSAGE_BYTES_MAX {
        return Err(MessageError::TooLarge(body.len() + 1));
    }
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(tag);
    bytes.extend_from_slice(body);
    Ok(bytes)
}

fn malformed(error: impl std::fmt::Display) -> MessageError {
    MessageError::Malformed(error.to_string())
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, MessageError> {
    serde_json::to_vec(value).map_err(malformed)
}

fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, MessageError> {
    serde_json::from_slice(body).map_err(malformed)
}

/// A gossip body: the generation, then the consensus wire codec.
fn gossip_body(generation: u64, message: &impl Serialize) -> Result<Vec<u8>, MessageError> {
    let mut body = generation.to_le_bytes().to_vec();
    body.extend(encode_message(message).map_err(malformed)?);
    Ok(body)
}

/// A `Behind` hint's body: three little-endian numbers, then the members as JSON.
fn behind_body(numbers: [u64; 3], members: &[PeerId]) -> Result<Vec<u8>, MessageError> {
    let mut body: Vec<u8> = numbers.iter().flat_map(|n| n.to_le_bytes()).collect();
    body.extend(to_json(&members)?);
    Ok(body)
}

/// A sync request's body: the sender's domain digest, then the gossip body.
fn sync_request_body(
    domain: &[u8; 32],
    generation: u64,
    request: &SyncRequest,
) -> Result<Vec<u8>, MessageError> {
    let mut body = domain.to_vec();
    body.extend(gossip_body(generation, request)?);
    Ok(body)
}

/// A little-endian u64 at the start of `body`, and the rest.
fn leading_number(body: &[u8]) -> Result<(u64, &[u8]), MessageError> {
    let Some((number, rest)) = body.split_first_chunk::<8>() else {
        return Err(MessageError::Malformed(
            "gossip without a generation".into(),
        ));
    };
    Ok((u64::from_le_bytes(*number), rest))
}

fn decode_behind(body: &[u8]) -> Result<Message, MessageError> {
    let (generation, rest) = leading_number(body)?;
    let (round, rest) = leading_number(rest)?;
    let (head_position, rest) = leading_number(rest)?;
    let members: Vec<PeerId> = from_json(rest)?;
    if members.len() > BEHIND_MEMBERS_MAX {
        return Err(MessageError::Malformed(
            "a hint naming too many members".into(),
        ));
    }
    Ok(Message::Behind {
        generation,
        round,
        head_position,
        members,
    })
}

fn decode_chunk(body: &[u8]) -> Result<Message, MessageError> {
    let config = bincode::config::standard().with_limit::<MESSAGE_BYTES_MAX>();
    let (chunk, read) = bincode::serde::decode_from_slice(body, config).map_err(malformed)?;
    if read != body.len() {
        return Err(MessageError::Malformed(
            "bytes after a transfer chunk".into(),
        ));
    }
    Ok(Message::TransferChunk(chunk))
}
