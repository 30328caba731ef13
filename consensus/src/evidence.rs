//! Malice evidence: proof that a member forked its chain.

use serde::{Deserialize, Serialize};

use crate::error::EventError;
use crate::event::SignedHeader;
use crate::ids::PeerId;

/// Two signed events by the same creator at the same index: a fork. Anyone can check it with
/// `verify`, without the rest of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkEvidence {
    /// The conflicting event with the lower hash.
    pub first: SignedHeader,
    /// The conflicting event with the higher hash.
    pub second: SignedHeader,
}

/// Why a piece of evidence does not prove a fork.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// One of the signatures is invalid.
    #[error("invalid signature in evidence: {0}")]
    Signature(#[from] EventError),
    /// The two events are not by one creator at one index, or are the same event.
    #[error("the two events do not conflict")]
    NotAFork,
}

impl ForkEvidence {
    /// Evidence from two conflicting headers, in canonical (hash) order.
    pub fn new(a: SignedHeader, b: SignedHeader) -> Self {
        if a.header.hash() <= b.header.hash() {
            Self {
                first: a,
                second: b,
            }
        } else {
            Self {
                first: b,
                second: a,
            }
        }
    }

    /// The member that forked.
    pub fn offender(&self) -> PeerId {
        self.first.header.creator
    }

    /// Checks both signatures and that the events conflict.
    pub fn verify(&self) -> Result<PeerId, EvidenceError> {
        let first = self.first.verify()?;
        let second = self.second.verify()?;
        // Two instances (groups) have separate chains: events at one index in two groups
        // are no fork.
        let same_slot = self.first.header.creator == self.second.header.creator
            && self.first.header.index == self.second.header.index
            && self.first.header.group == self.second.header.group;
        if !same_slot || first == second {
            return Err(EvidenceError::NotAFork);
        }
        Ok(self.first.header.creator)
    }
}
