//! Identifiers: member ids (ed25519 public keys) and blake3 hashes of events and observations.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// A member's identity: its ed25519 public key (32 bytes).
///
/// The libp2p identity of a node is the same key, so an authenticated connection already names
/// the member it comes from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

/// The blake3 hash of a gossip event's canonical header encoding; the creator signs it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventHash(pub [u8; 32]);

/// The blake3 hash of an observation; votes name observations by this hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObservationHash(pub [u8; 32]);

macro_rules! hex_debug {
    ($name:ident, $label:literal) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({})"), self)
            }
        }

        impl fmt::Display for $name {
            /// The first 6 bytes in hex: enough to tell values apart in logs and dot dumps.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in &self.0[..6] {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }

        impl $name {
            /// The full value as lowercase hex (64 characters).
            pub fn to_hex(&self) -> String {
                self.0.iter().map(|byte| format!("{byte:02x}")).collect()
            }
        }
    };
}

hex_debug!(PeerId, "PeerId");
hex_debug!(EventHash, "EventHash");
hex_debug!(ObservationHash, "ObservationHash");

/// A `Hasher` for keys that are already uniformly distributed hashes: it keeps the first 8
/// bytes it is given instead of hashing them again (maps keyed by `EventHash` are hot).
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Derived `Hash` for `[u8; 32]` writes a length prefix first, then the bytes; fold
        // everything so that any caller still gets a well-mixed value.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = self.0.rotate_left(5) ^ value as u64;
    }
}

/// Hash-map state for maps keyed by blake3 hashes.
pub(crate) type PrehashedState = BuildHasherDefault<PrehashedHasher>;

/// A `HashMap` keyed by blake3 hashes.
pub(crate) type HashMapPrehashed<K, V> = std::collections::HashMap<K, V, PrehashedState>;
/// A `HashSet` of blake3 hashes.
pub(crate) type HashSetPrehashed<K> = std::collections::HashSet<K, PrehashedState>;
