//! Proposals: what a member asks its section to agree on, encoded as a consensus observation.

use chorus_aggregate::{CommandRequest, NewEvent};
use chorus_consensus::OBSERVATION_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// Version byte in front of every encoded proposal; bump it when the encoding changes.
pub const PROPOSAL_VERSION: u8 = 1;

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

    /// The observation bytes: a version byte, then JSON (deterministic: serde_json writes
    /// struct fields in declaration order and maps in key order), at most
    /// `OBSERVATION_BYTES_MAX` bytes. Members that propose the same thing produce the same
    /// bytes, which is what lets their votes add up.
    pub fn encode(&self) -> Result<Vec<u8>, ProposalError> {
        let mut bytes = vec![PROPOSAL_VERSION];
        serde_json::to_writer(&mut bytes, self)
            .map_err(|error| ProposalError::Malformed(error.to_string()))?;
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
        if version != PROPOSAL_VERSION {
            return Err(ProposalError::UnknownVersion(version));
        }
        serde_json::from_slice(body).map_err(|error| ProposalError::Malformed(error.to_string()))
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
