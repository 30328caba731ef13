//! Gossip events: what a member signs and sends, and the stateless checks on receipt.

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::config::{EVENT_BYTES_MAX, OBSERVATION_BYTES_MAX, VOTES_PER_EVENT_MAX};
use crate::error::EventError;
use crate::ids::{EventHash, ObservationHash, PeerId};
use crate::merkle::{self, Tree};

const EVENT_DOMAIN: &[u8] = b"chorus/event/v1";
const OBSERVATION_DOMAIN: &[u8] = b"chorus/observation/v1";

/// Something members vote on. A block is made of one observation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Observation {
    /// Opaque application bytes (for the engine: an encoded proposal). `Bytes` so that the
    /// many holders of one payload (events, tallies, blocks, the caller) share one buffer.
    Payload(Bytes),
    /// "This member forked its chain": voted by members that hold fork evidence.
    Accusation {
        /// The member accused.
        offender: PeerId,
    },
}

impl Observation {
    /// The hash votes name this observation by. Domain-separated and length-prefixed, so no
    /// two observations share an encoding.
    pub fn hash(&self) -> ObservationHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(OBSERVATION_DOMAIN);
        match self {
            Self::Payload(bytes) => {
                hasher.update(&[0]);
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
            Self::Accusation { offender } => {
                hasher.update(&[1]);
                hasher.update(&offender.0);
            }
        }
        ObservationHash(*hasher.finalize().as_bytes())
    }

    /// An application payload.
    pub fn payload(bytes: impl Into<Bytes>) -> Self {
        Self::Payload(bytes.into())
    }

    /// Size of the payload in bytes (what the size limit applies to).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Payload(bytes) => bytes.len(),
            Self::Accusation { .. } => 32,
        }
    }
}

/// One vote inside a gossip event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// A vote carrying the observation itself: the first voter for an observation carries it.
    Full(Observation),
    /// A vote by hash, for an observation this creator's graph already carries. It counts only
    /// if the observation was carried by an event earlier in consensus order (see `blocks`).
    ByHash(ObservationHash),
}

impl Vote {
    /// The hash of the observation voted for.
    pub fn observation_hash(&self) -> ObservationHash {
        match self {
            Self::Full(observation) => observation.hash(),
            Self::ByHash(hash) => *hash,
        }
    }
}

/// The signed part of a gossip event. The votes themselves are committed by `votes_root`, so
/// a header with its signature is a compact, checkable statement of what its creator voted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    /// The consensus instance (`Config::group`) the event belongs to.
    pub group: [u8; 32],
    /// Member that created and signed the event.
    pub creator: PeerId,
    /// Position in the creator's chain: 0 for the first event, self-parent's index + 1 after.
    pub index: u64,
    /// The creator's previous event (none only for index 0).
    pub self_parent: Option<EventHash>,
    /// The latest event of the peer this creator last synced from (none only for index 0).
    pub other_parent: Option<EventHash>,
    /// Creator's clock at creation, in milliseconds; never earlier than the self-parent's.
    pub created_at_ms: u64,
    /// Number of votes carried.
    pub vote_count: u32,
    /// Merkle root over the carried votes' observation hashes.
    pub votes_root: [u8; 32],
    /// Digest of which votes carry their observation in full (`full_votes_digest`). Without
    /// it a relay could strip a payload (turn a full vote into a vote by hash) without
    /// changing the event hash, and members would tally the "same" event differently.
    pub full_votes: [u8; 32],
}

impl EventHeader {
    /// blake3 over the domain tag and the canonical (bincode) encoding of the header.
    pub fn hash(&self) -> EventHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(EVENT_DOMAIN);
        hasher.update(&codec::canonical_bytes(self));
        EventHash(*hasher.finalize().as_bytes())
    }
}

/// A header with its signature: the unit of proof (fork evidence, block proofs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The signed header.
    pub header: EventHeader,
    /// ed25519 signature by `header.creator` over `header.hash()`.
    pub signature: Signature,
}

impl SignedHeader {
    /// Checks the signature against the creator's key; returns the hash on success.
    pub fn verify(&self) -> Result<EventHash, EventError> {
        let hash = self.header.hash();
        let key = VerifyingKey::from_bytes(&self.header.creator.0)
            .map_err(|_| EventError::BadSignature(hash))?;
        key.verify_strict(&hash.0, &self.signature)
            .map_err(|_| EventError::BadSignature(hash))?;
        Ok(hash)
    }
}

/// A gossip event as it travels: header, the votes it commits to, and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEvent {
    /// The signed header.
    pub header: EventHeader,
    /// The votes whose observation hashes `header.votes_root` commits to.
    pub votes: Vec<Vote>,
    /// ed25519 signature by `header.creator` over `header.hash()`.
    pub signature: Signature,
}

/// What the stateless checks of a received event computed, so nothing is hashed twice.
pub struct CheckedBody {
    /// The event hash (what the signature must cover).
    pub hash: EventHash,
    /// The Merkle tree over the votes' observation hashes (leaves in vote order); kept until
    /// the event is tallied, to cut vote proofs from.
    pub votes_tree: Tree,
}

impl SignedEvent {
    /// Creates and signs an event of the default group (`Config::default().group`).
    /// `votes` must respect the limits (our own input).
    pub fn create(
        key: &SigningKey,
        index: u64,
        self_parent: Option<EventHash>,
        other_parent: Option<EventHash>,
        created_at_ms: u64,
        votes: Vec<Vote>,
    ) -> (Self, CheckedBody) {
        let hashes = votes.iter().map(Vote::observation_hash).collect();
        Self::create_hashed(
            [0; 32],
            key,
            index,
            self_parent,
            other_parent,
            created_at_ms,
            votes,
            hashes,
        )
    }

    /// `create` with the votes' observation hashes already computed (`hashes[i]` is the hash
    /// of `votes[i]`'s observation), to avoid hashing payloads twice.
    // One argument per header field the caller decides; a builder would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn create_hashed(
        group: [u8; 32],
        key: &SigningKey,
        index: u64,
        self_parent: Option<EventHash>,
        other_parent: Option<EventHash>,
        created_at_ms: u64,
        votes: Vec<Vote>,
        hashes: Vec<ObservationHash>,
    ) -> (Self, CheckedBody) {
        debug_assert_eq!(votes.len(), hashes.len());
        let votes_tree = Tree::build(hashes.into_iter().map(|hash| hash.0).collect());
        let header = EventHeader {
            group,
            creator: PeerId(key.verifying_key().to_bytes()),
            index,
            self_parent,
            other_parent,
            created_at_ms,
            vote_count: votes.len() as u32,
            votes_root: votes_tree.root(),
            full_votes: full_votes_digest(&votes),
        };
        let hash = header.hash();
        let signature = key.sign(&hash.0);
        (
            Self {
                header,
                votes,
                signature,
            },
            CheckedBody { hash, votes_tree },
        )
    }

    /// The header and signature alone.
    pub fn signed_header(&self) -> SignedHeader {
        SignedHeader {
            header: self.header.clone(),
            signature: self.signature,
        }
    }

    /// Upper bound of the encoded size of everything but the votes. Fixed-width bincode:
    /// group, creator, index, two optional parents (tag + hash), time, vote count, two roots; the
    /// signature as length-prefixed bytes; the length of the vote list.
    pub const ENCODED_OVERHEAD_MAX: usize = 32 + 32 + 8 + 33 + 33 + 8 + 4 + 32 + 32 + (8 + 64) + 8;

    /// Upper bound of the encoded size of one vote (enum tags are 4 bytes, lengths 8).
    pub fn vote_encoded_len_max(vote: &Vote) -> usize {
        match vote {
            Vote::Full(observation) => 4 + 4 + 8 + observation.payload_len(),
            Vote::ByHash(_) => 4 + 32,
        }
    }

    /// An upper bound of the encoded size in bytes, computed without encoding.
    pub fn encoded_len_max(&self) -> usize {
        let votes: usize = self.votes.iter().map(Self::vote_encoded_len_max).sum();
        Self::ENCODED_OVERHEAD_MAX + votes
    }

    /// The checks that need no graph: sizes, parent shape, vote commitment. The signature is
    /// checked separately (`verify_signatures`), after these cheap checks have passed.
    pub fn check_body(&self) -> Result<CheckedBody, EventError> {
        self.check_body_hashed(self.header.hash())
    }

    /// `check_body` for a caller that already computed `hash = self.header.hash()`.
    pub(crate) fn check_body_hashed(&self, hash: EventHash) -> Result<CheckedBody, EventError> {
        if self.votes.len() > VOTES_PER_EVENT_MAX {
            return Err(EventError::TooManyVotes {
                count: self.votes.len(),
                max: VOTES_PER_EVENT_MAX,
            });
        }
        let bytes = self.encoded_len_max();
        if bytes > EVENT_BYTES_MAX {
            return Err(EventError::TooLarge {
                bytes,
                max: EVENT_BYTES_MAX,
            });
        }
        for vote in &self.votes {
            if let Vote::Full(observation) = vote {
                if observation.payload_len() > OBSERVATION_BYTES_MAX {
                    return Err(EventError::ObservationTooLarge {
                        bytes: observation.payload_len(),
                        max: OBSERVATION_BYTES_MAX,
                    });
                }
            }
        }
        let genesis_shape = self.header.self_parent.is_none() && self.header.other_parent.is_none();
        let later_shape = self.header.self_parent.is_some() && self.header.other_parent.is_some();
        let shape_ok = if self.header.index == 0 {
            genesis_shape
        } else {
            later_shape
        };
        if !shape_ok {
            return Err(EventError::MalformedParents(hash));
        }
        if self.header.vote_count as usize != self.votes.len() {
            return Err(EventError::VotesMismatch(hash));
        }
        let leaves = self
            .votes
            .iter()
            .map(|vote| vote.observation_hash().0)
            .collect();
        let votes_tree = Tree::build(leaves);
        if votes_tree.root() != self.header.votes_root
            || full_votes_digest(&self.votes) != self.header.full_votes
        {
            return Err(EventError::VotesMismatch(hash));
        }
        Ok(CheckedBody { hash, votes_tree })
    }
}

/// The Merkle root over a list of observation hashes.
pub fn votes_root(observation_hashes: &[ObservationHash]) -> [u8; 32] {
    // `ObservationHash` is a transparent newtype over `[u8; 32]`; copy into leaves.
    let leaves: Vec<[u8; 32]> = observation_hashes.iter().map(|hash| hash.0).collect();
    merkle::root(&leaves)
}

/// Which votes carry their observation in full: a bitmap (bit `i` set when vote `i` is
/// `Full`, least significant bit first), hashed with a key of its own.
pub fn full_votes_digest(votes: &[Vote]) -> [u8; 32] {
    const KEY: &[u8; 32] = b"chorus/event/full-votes/v1\0\0\0\0\0\0";
    let mut bitmap = vec![0u8; votes.len().div_ceil(8)];
    for (position, vote) in votes.iter().enumerate() {
        if matches!(vote, Vote::Full(_)) {
            bitmap[position / 8] |= 1 << (position % 8);
        }
    }
    let mut hasher = blake3::Hasher::new_keyed(KEY);
    hasher.update(&(votes.len() as u64).to_le_bytes());
    hasher.update(&bitmap);
    *hasher.finalize().as_bytes()
}

/// Verifies each event's signature with `verify_strict`; returns, per event, whether it is
/// valid.
///
/// Not batched on purpose: ed25519 batch verification checks a different (cofactored)
/// equation and accepts signatures `verify_strict` rejects (a small-order R, for one), so
/// whether an event got in would depend on which events shared its sync response, and a
/// Byzantine member could split honest members' graphs. Every member must accept exactly the
/// same events; that is worth the factor of about two.
///
/// Each item names the creator's key, decompressed once per member rather than once per
/// event (decompression costs about a fifth of a verification).
pub fn verify_signatures(items: &[(&SignedEvent, EventHash, &VerifyingKey)]) -> Vec<bool> {
    items
        .iter()
        .map(|(event, hash, key)| {
            key.as_bytes() == &event.header.creator.0
                && key.verify_strict(&hash.0, &event.signature).is_ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that the size estimate used for the event size limit never undercounts.
    #[test]
    fn encoded_len_max_bounds_the_real_encoding() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let parent = Some(EventHash([1; 32]));
        for (full, by_hash, payload_bytes) in [
            (0, 0, 0),
            (1, 0, 0),
            (3, 5, 256),
            (0, 40, 0),
            (17, 2, 4_000),
        ] {
            let mut votes: Vec<Vote> = (0..full)
                .map(|index| Vote::Full(Observation::payload(vec![index as u8; payload_bytes])))
                .collect();
            votes
                .extend((0..by_hash).map(|index| Vote::ByHash(ObservationHash([index as u8; 32]))));
            let (event, _) = SignedEvent::create(&key, 3, parent, parent, 9, votes);
            let encoded = codec::encode_message(&event).expect("encodes").len() - 1;
            let estimate = event.encoded_len_max();
            assert!(
                estimate >= encoded,
                "estimate {estimate} < encoded {encoded}"
            );
            assert!(
                estimate - encoded <= 64,
                "estimate {estimate} far above encoded {encoded}"
            );
        }
    }
}
