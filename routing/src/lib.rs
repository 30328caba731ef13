//! Routing for Chorus: who is responsible for what.
//!
//! - [`XorName`]: a 256-bit address. A node's is derived from its public key, a stream's from
//!   its qualified key (`database/Category@id`); distance between addresses is their XOR.
//! - [`Prefix`]: the first `len` bits of an address; a section covers the addresses its
//!   prefix matches.
//! - [`SectionMap`]: the sections of the network, whose prefixes cover the address space
//!   exactly once, and the rules that keep them so as members join and leave: a section splits
//!   in two when both halves would keep at least `section_size_min` members, and merges with
//!   its sibling when it falls below.
//!
//! Architecture invariant: pure and deterministic. No IO, no clock, no randomness, and no
//! hash-map iteration order anywhere (every collection is a `BTreeMap` or `BTreeSet`), so every
//! node that applies the same membership changes in the same order holds the same map.

mod name;
mod prefix;
mod section;

pub use name::XorName;
pub use prefix::{Prefix, PrefixError};
pub use section::{MembershipChange, SECTION_SIZE_MIN_DEFAULT, Section, SectionMap};
