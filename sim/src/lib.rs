//! # chorus-sim
//!
//! A deterministic in-process simulator of a Chorus group: the real `chorus-consensus` code
//! on virtual time, in one thread, over a simulated network that delays, reorders, drops,
//! duplicates and partitions messages, with crashes and restarts from what was durable, slow
//! nodes and Byzantine members. Checkers run on every block (agreement, validity, no
//! duplicates) and after the faults heal (liveness). One seed reproduces a whole run.
//!
//! Two ways in: the scenario API ([`Sim`]), which reads like the story a test tells, and
//! random runs ([`sweep::run_seed`]) whose whole story, faults included, derives from a seed.

mod byzantine;
mod checker;
pub mod cluster;
mod network;
mod sim;
pub mod sweep;

pub use byzantine::Behaviour;
pub use checker::{Checker, Violation, ViolationKind};
pub use network::{Fate, Network, NetworkConfig};
pub use sim::{Setup, Sim, SimStats, default_consensus_config, millis, secs};
