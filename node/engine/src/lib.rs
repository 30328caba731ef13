//! One Chorus node's logic, shared by the simulator and the node binary, driven like the
//! consensus core: inputs in, outputs drained, storage and clock from the caller.
//!
//! Modules:
//!
//! - [`proposal`]: what a member proposes for agreement, and its versioned, size-limited
//!   encoding as a consensus observation;
//! - [`apply`]: applying agreed proposals, in block order, to the event store: deduplicate by
//!   command id, re-execute, check what the proposer decided, group-commit, and say what
//!   became of each;
//! - [`membership`]: member changes as agreed observations, section generations and splits,
//!   and the state a joiner receives;
//! - [`engine`]: the state machine that ties them to consensus and routing.
//!
//! Architecture invariant: what a member applies is a function of the agreed order and the
//! store; no clock (timestamps come from blocks or from the store), no hash-map order, and no
//! randomness of its own (the caller's generator is passed through to consensus, which uses it
//! only to pick gossip partners).

pub mod apply;
pub mod domain;
pub mod engine;
pub mod membership;
pub mod proposal;

pub use apply::{AgreedProposal, Applied, apply_agreed};
pub use domain::{DomainFingerprint, NodeDomain, SectionDomain, UpgradeProposal};
pub use engine::{
    Admission, ClientTicket, CommandOutcome, Engine, EngineConfig, EngineError, EngineStats,
    JoinRefusal, Lag, Message, Readiness, Refusals, RemovalRequest,
};
pub use membership::{Holding, MemberChange, MembershipProposal, SectionState, Welcome};
pub use proposal::{Proposal, ProposalError};
