//! 256-bit XOR names.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Key-derivation context of node names: a node's name is bound to its public key and to
/// nothing else that hashes the same bytes.
const NODE_CONTEXT: &str = "chorus 2026 node name from ed25519 public key";
/// Key-derivation context of stream names.
const STREAM_CONTEXT: &str = "chorus 2026 stream name from qualified stream key";

/// A 256-bit address in the XOR space. Ordered as a big-endian number, so sorting names sorts
/// them along the address space and prefixes are contiguous ranges.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct XorName(pub [u8; 32]);

impl XorName {
    /// The name of a node: blake3 (in key-derivation mode, with the node context) of its
    /// ed25519 public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        Self(blake3::derive_key(NODE_CONTEXT, public_key))
    }

    /// The name of a stream: blake3 (with the stream context) of its qualified key, the text
    /// form that always names the database (`database/Category@id`).
    pub fn from_stream_key(qualified: &str) -> Self {
        Self(blake3::derive_key(STREAM_CONTEXT, qualified.as_bytes()))
    }

    /// Bit `index` (0 is the most significant bit of the first byte).
    pub fn bit(&self, index: usize) -> bool {
        debug_assert!(index < 256);
        self.0[index / 8] & (0x80 >> (index % 8)) != 0
    }

    /// The XOR distance to `other`, itself a name (compare distances with `Ord`).
    pub fn distance(&self, other: &XorName) -> XorName {
        let mut distance = [0; 32];
        for (index, byte) in distance.iter_mut().enumerate() {
            *byte = self.0[index] ^ other.0[index];
        }
        XorName(distance)
    }

    /// Orders `a` and `b` by closeness to `self`: `Less` when `a` is closer. Distinct names
    /// are never equally close, since XOR with `self` is a bijection.
    pub fn cmp_closeness(&self, a: &XorName, b: &XorName) -> Ordering {
        self.distance(a).cmp(&self.distance(b))
    }

    /// The length of the common prefix with `other`, in bits (256 for equal names).
    pub fn common_prefix_len(&self, other: &XorName) -> usize {
        for (index, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            let differing = a ^ b;
            if differing != 0 {
                return index * 8 + differing.leading_zeros() as usize;
            }
        }
        256
    }

    /// The name with bit `index` set to `value`.
    pub fn with_bit(mut self, index: usize, value: bool) -> Self {
        let mask = 0x80 >> (index % 8);
        if value {
            self.0[index / 8] |= mask;
        } else {
            self.0[index / 8] &= !mask;
        }
        self
    }
}

impl fmt::Debug for XorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XorName({})", &self.to_string()[..12])
    }
}

impl fmt::Display for XorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_streams_with_the_same_bytes_get_different_names() {
        let key = [7u8; 32];
        let text = String::from_utf8(vec![7u8; 32]).expect("ascii");
        assert_ne!(
            XorName::from_public_key(&key),
            XorName::from_stream_key(&text)
        );
        assert_eq!(
            XorName::from_stream_key("default/Notebook@1"),
            XorName::from_stream_key("default/Notebook@1")
        );
    }

    #[test]
    fn bits_and_common_prefixes() {
        let zero = XorName([0; 32]);
        let high = zero.with_bit(0, true);
        assert!(high.bit(0) && !high.bit(1));
        assert_eq!(zero.common_prefix_len(&high), 0);
        assert_eq!(zero.common_prefix_len(&zero.with_bit(9, true)), 9);
        assert_eq!(zero.common_prefix_len(&zero), 256);
        assert_eq!(zero.with_bit(255, true).with_bit(255, false), zero);
    }
}
