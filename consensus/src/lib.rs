//! # chorus-consensus
//!
//! Sans-IO Byzantine agreement over a signed gossip vote graph. Members gossip signed events
//! (creator, index, self-parent, other-parent, a batch of votes); every member computes the
//! same order from the graph alone by Hashgraph virtual voting (Baird 2016: rounds,
//! witnesses, strongly seeing, fame with coin rounds, order by round received), and tallies
//! votes in that order into PARSEC-style blocks that carry their proof.
//!
//! Architecture invariant: this crate does no IO. No sockets, files, clocks, threads or
//! global randomness: time and randomness are arguments, and outputs are values the caller
//! drains (`Consensus::poll_*`). The entry point is [`Consensus`]; its doc comment gives the
//! call order.
//!
//! Safe with fewer than a third of members faulty: forks are detected ("sees" ignores a
//! forking creator) and produce [`ForkEvidence`]; invalid events are rejected with an
//! [`EventError`] and never enter the graph.

mod blocks;
pub mod codec;
mod config;
mod consensus;
mod dot;
mod error;
mod event;
mod evidence;
mod fame;
mod graph;
#[cfg(feature = "harness")]
pub mod harness;
mod ids;
mod log;
pub mod merkle;
mod order;
mod sync;

pub use blocks::{Block, ProofError, VoteProof};
pub use config::{
    BlockMode, Config, EVENT_BYTES_MAX, MEMBERS_MAX, OBSERVATION_BYTES_MAX, SYNC_BYTES_MAX,
    VOTES_PER_EVENT_MAX, WANTED_PER_SYNC_MAX, faulty_max, is_supermajority,
};
pub use consensus::{Consensus, EventInfo, Stats};
pub use error::{DecodeError, EventError, SetupError, SyncError, VoteError};
pub use event::{EventHeader, Observation, SignedEvent, SignedHeader, Vote, votes_root};
pub use evidence::{EvidenceError, ForkEvidence};
pub use ids::{EventHash, ObservationHash, PeerId};
pub use log::LogRecord;
pub use order::STALE_ROUNDS;
pub use sync::{Push, SyncReport, SyncRequest, SyncResponse, Transmit};
