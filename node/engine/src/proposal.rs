//! Proposals: what a member asks its section to agree on, encoded as a consensus observation.

use chorus_aggregate::{
    CommandId, CommandRequest, EventId, ExpectedVersion, MessageId, NewEvent, StreamKey, TypeName,
};
use chorus_consensus::OBSERVATION_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// Version byte in front of every encoded proposal; bump it when the encoding changes.
/// Version 2: bincode over the wire structs below.
pub const PROPOSAL_VERSION: u8 = 2;

/// The first encoding, JSON: still read (replay logs written by earlier releases hold it),
/// never written. JSON wrote the events' payload bytes as arrays of decimal numbers, about
/// three times their size, and decoding it was a tenth of a loaded node's engine thread.
pub const PROPOSAL_VERSION_JSON: u8 = 1;

/// What a member proposes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Proposal {
    /// Single mode: the command alone. Every member executes it when it is agreed, on the state
    /// the agreed order reached, at the block's agreed time.
    Command(CommandRequest),
    /// Supermajority mode: the command with the events its proposer decided on the stream at
    /// `version`, executing at the agreed time of the stream's last event (the request's
    /// `timestamp_ms`). Members vote for it only if they decide the same, and it applies only
    /// if the stream is still at `version` when agreed.
    Decided {
        /// The command.
        request: CommandRequest,
        /// The stream version the events were decided at.
        version: u64,
        /// The decided events.
        events: Vec<NewEvent>,
    },
}

/// A proposal that cannot be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// Empty bytes.
    #[error("an empty proposal")]
    Empty,
    /// An encoding version this code does not know.
    #[error("proposal encoding version {0} is unknown; this code reads {PROPOSAL_VERSION}")]
    UnknownVersion(u8),
    /// Over the observation size limit.
    #[error("a proposal of {bytes} bytes; at most {max} fit in an observation")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that are not a proposal.
    #[error("not a proposal: {0}")]
    Malformed(String),
}

impl Proposal {
    /// The command the proposal is about.
    pub fn request(&self) -> &CommandRequest {
        match self {
            Self::Command(request) | Self::Decided { request, .. } => request,
        }
    }

    /// The observation bytes: a version byte, then bincode (standard configuration) of
    /// [`WireProposal`], at most `OBSERVATION_BYTES_MAX` bytes. Deterministic (the command
    /// and metadata inside are JSON text, and serde_json writes struct fields in declaration
    /// order and maps in key order): members that propose the same thing produce the same
    /// bytes, which is what lets their votes add up.
    pub fn encode(&self) -> Result<Vec<u8>, ProposalError> {
        let wire = WireProposal::from_proposal(self)?;
        let mut bytes = vec![PROPOSAL_VERSION];
        bincode::serde::encode_into_std_write(&wire, &mut bytes, bincode::config::standard())
            .map_err(malformed)?;
        if bytes.len() > OBSERVATION_BYTES_MAX {
            return Err(ProposalError::TooLarge {
                bytes: bytes.len(),
                max: OBSERVATION_BYTES_MAX,
            });
        }
        Ok(bytes)
    }

    /// Decodes untrusted observation bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProposalError> {
        if bytes.len() > OBSERVATION_BYTES_MAX {
            return Err(ProposalError::TooLarge {
                bytes: bytes.len(),
                max: OBSERVATION_BYTES_MAX,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(ProposalError::Empty)?;
        match version {
            PROPOSAL_VERSION => {
                let config = bincode::config::standard().with_limit::<OBSERVATION_BYTES_MAX>();
                let (wire, read): (WireProposal, usize) =
                    bincode::serde::decode_from_slice(body, config).map_err(malformed)?;
                if read != body.len() {
                    return Err(ProposalError::Malformed(format!(
                        "{} bytes after the proposal",
                        body.len() - read
                    )));
                }
                wire.into_proposal()
            }
            PROPOSAL_VERSION_JSON => serde_json::from_slice(body).map_err(malformed),
            other => Err(ProposalError::UnknownVersion(other)),
        }
    }
}

fn malformed(error: impl std::fmt::Display) -> ProposalError {
    ProposalError::Malformed(error.to_string())
}

/// A proposal as version 2 encodes it: ids as their 16 bytes, names as text, the command and
/// metadata (free-form JSON values, which bincode cannot carry) as JSON text, payloads as
/// bytes. bincode writes no field names or tags: any change to these types is a new
/// `PROPOSAL_VERSION`, with the old one still decoded.
#[derive(Serialize, Deserialize)]
enum WireProposal {
    Command(WireRequest),
    Decided {
        request: WireRequest,
        version: u64,
        events: Vec<WireEvent>,
    },
}

#[derive(Serialize, Deserialize)]
struct WireRequest {
    command_id: [u8; 16],
    stream: String,
    expected: ExpectedVersion,
    causation_id: [u8; 16],
    correlation_id: [u8; 16],
    timestamp_ms: u64,
    domain_version: String,
    metadata: Option<String>,
    not_before_ms: Option<u64>,
    command: String,
}

#[derive(Serialize, Deserialize)]
struct WireEvent {
    event_id: [u8; 16],
    event_type: String,
    event_version: u16,
    payload: Vec<u8>,
    supersedes: Option<u64>,
}

impl WireProposal {
    fn from_proposal(proposal: &Proposal) -> Result<Self, ProposalError> {
        Ok(match proposal {
            Proposal::Command(request) => Self::Command(WireRequest::from_request(request)?),
            Proposal::Decided {
                request,
                version,
                events,
            } => Self::Decided {
                request: WireRequest::from_request(request)?,
                version: *version,
                events: events.iter().map(WireEvent::from_event).collect(),
            },
        })
    }

    fn into_proposal(self) -> Result<Proposal, ProposalError> {
        Ok(match self {
            Self::Command(request) => Proposal::Command(request.into_request()?),
            Self::Decided {
                request,
                version,
                events,
            } => Proposal::Decided {
                request: request.into_request()?,
                version,
                events: events
                    .into_iter()
                    .map(WireEvent::into_event)
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

impl WireRequest {
    fn from_request(request: &CommandRequest) -> Result<Self, ProposalError> {
        Ok(Self {
            command_id: request.command_id.0,
            stream: request.stream.to_string(),
            expected: request.expected,
            causation_id: request.causation_id.0,
            correlation_id: request.correlation_id.0,
            timestamp_ms: request.timestamp_ms,
            domain_version: request.domain_version.clone(),
            metadata: request
                .metadata
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(malformed)?,
            not_before_ms: request.not_before_ms,
            command: serde_json::to_string(&request.command).map_err(malformed)?,
        })
    }

    fn into_request(self) -> Result<CommandRequest, ProposalError> {
        Ok(CommandRequest {
            command_id: CommandId(self.command_id),
            stream: StreamKey::parse(&self.stream).map_err(malformed)?,
            expected: self.expected,
            causation_id: MessageId(self.causation_id),
            correlation_id: MessageId(self.correlation_id),
            timestamp_ms: self.timestamp_ms,
            domain_version: self.domain_version,
            metadata: self
                .metadata
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(malformed)?,
            not_before_ms: self.not_before_ms,
            command: serde_json::from_str(&self.command).map_err(malformed)?,
        })
    }
}

impl WireEvent {
    fn from_event(event: &NewEvent) -> Self {
        Self {
            event_id: event.event_id.0,
            event_type: event.event_type.as_str().to_owned(),
            event_version: event.event_version,
            payload: event.payload.clone(),
            supersedes: event.supersedes,
        }
    }

    fn into_event(self) -> Result<NewEvent, ProposalError> {
        Ok(NewEvent {
            event_id: EventId(self.event_id),
            event_type: TypeName::new(self.event_type).map_err(malformed)?,
            event_version: self.event_version,
            payload: self.payload,
            supersedes: self.supersedes,
        })
    }
}

/// The observation bytes of a tagged proposal (membership change, upgrade vote): tag,
/// encoding version, JSON (deterministic, so members proposing the same thing produce the
/// same bytes and their votes add up). `value` must always serialise (plain structs).
pub(crate) fn encode_tagged(tag: u8, version: u8, value: &impl Serialize) -> Vec<u8> {
    let mut bytes = vec![tag, version];
    serde_json::to_writer(&mut bytes, value).unwrap_or_else(|_| unreachable!());
    bytes
}

/// Decodes untrusted observation bytes as a tagged proposal; `None` if they do not start
/// with `tag` (they may be another kind of proposal).
pub(crate) fn decode_tagged<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    tag: u8,
    version: u8,
) -> Option<Result<T, ProposalError>> {
    let (&first, rest) = bytes.split_first()?;
    if first != tag {
        return None;
    }
    let Some((&found, body)) = rest.split_first() else {
        return Some(Err(ProposalError::Empty));
    };
    if found != version {
        return Some(Err(ProposalError::UnknownVersion(found)));
    }
    Some(serde_json::from_slice(body).map_err(|error| ProposalError::Malformed(error.to_string())))
}

/// First byte of an encoded tick (command proposals start with their version byte, 1).
pub const TICK_TAG: u8 = b'T';
/// Encoding version of ticks, after the tag.
pub const TICK_VERSION: u8 = 1;

/// A tick: a block that carries nothing but moves the section's agreed time on, so that a
/// command scheduled in an idle section comes due (`engine::schedule`). Members whose clocks
/// read the same period propose the same bytes, so their votes add up in Supermajority
/// mode; a later period is another observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickProposal {
    /// The generation it was proposed in.
    pub generation: u64,
    /// The proposer's clock, in periods since the Unix epoch.
    pub period: u64,
}

impl TickProposal {
    /// Tag, version, generation and period (little-endian): 18 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![TICK_TAG, TICK_VERSION];
        bytes.extend_from_slice(&self.generation.to_le_bytes());
        bytes.extend_from_slice(&self.period.to_le_bytes());
        bytes
    }

    /// Decodes untrusted observation bytes; `None` unless they are exactly a tick.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [TICK_TAG, TICK_VERSION, rest @ ..] = bytes else {
            return None;
        };
        let generation = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let period = u64::from_le_bytes(rest.get(8..)?.try_into().ok()?);
        Some(Self { generation, period })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_round_trips_and_nothing_else_is_one() {
        let tick = TickProposal {
            generation: 3,
            period: 1_770_000_000,
        };
        assert_eq!(TickProposal::decode(&tick.encode()), Some(tick));
        let bytes = tick.encode();
        assert_eq!(TickProposal::decode(&bytes[..17]), None);
        assert_eq!(
            TickProposal::decode(&[bytes.as_slice(), &[0]].concat()),
            None
        );
        assert_eq!(TickProposal::decode(&[PROPOSAL_VERSION, b'{']), None);
        assert_eq!(TickProposal::decode(&[TICK_TAG, 9, 0, 0]), None);
    }
}
