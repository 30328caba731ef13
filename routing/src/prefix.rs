//! Prefixes of XOR names: the part of the address space a section covers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::XorName;

/// The first `len` bits of an address (`len` up to 256); it matches every name that starts
/// with those bits. Ordered by bits, then length, so sorted prefixes follow the address space
/// and an ancestor comes before its descendants.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPrefix")]
pub struct Prefix {
    /// The bits, with every bit from `len` on cleared.
    bits: XorName,
    len: u16,
}

/// A prefix as bytes from a peer or a file present it: checked before it becomes a
/// `Prefix` (same fields, so the encoding is `Prefix`'s).
#[derive(Deserialize)]
struct RawPrefix {
    bits: XorName,
    len: u16,
}

impl TryFrom<RawPrefix> for Prefix {
    type Error = PrefixError;

    fn try_from(raw: RawPrefix) -> Result<Self, Self::Error> {
        let len = usize::from(raw.len);
        if len > 256 {
            return Err(PrefixError::TooLong(len));
        }
        let prefix = Prefix::new(len, raw.bits);
        if prefix.bits != raw.bits {
            return Err(PrefixError::BitsBeyondLength(len));
        }
        Ok(prefix)
    }
}

/// A prefix that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// A character other than `0` and `1`.
    #[error("a prefix is written with 0 and 1 only, found {0:?}")]
    BadCharacter(char),
    /// More than 256 bits.
    #[error("a prefix has at most 256 bits, this one has {0}")]
    TooLong(usize),
    /// A decoded prefix with bits set past its length (its bits past `len` must be clear).
    #[error("a prefix of {0} bits has bits set beyond its length")]
    BitsBeyondLength(usize),
}

impl Prefix {
    /// The empty prefix, which matches every name.
    pub const ROOT: Prefix = Prefix {
        bits: XorName([0; 32]),
        len: 0,
    };

    /// The first `len` bits of `name` (`len` is capped at 256).
    pub fn new(len: usize, name: XorName) -> Self {
        let len = len.min(256);
        let mut bits = name;
        for index in len..256 {
            bits = bits.with_bit(index, false);
        }
        Self {
            bits,
            len: len as u16,
        }
    }

    /// The number of bits.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether this is the root (no bits).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `index` of the prefix (`index < len`).
    pub fn bit(&self, index: usize) -> bool {
        debug_assert!(index < self.len());
        self.bits.bit(index)
    }

    /// Whether `name` starts with this prefix.
    pub fn matches(&self, name: &XorName) -> bool {
        self.bits.common_prefix_len(name) >= self.len()
    }

    /// The prefix one bit longer, ending in `bit`; `None` at 256 bits.
    pub fn pushed(&self, bit: bool) -> Option<Prefix> {
        (self.len() < 256).then(|| Prefix {
            bits: self.bits.with_bit(self.len(), bit),
            len: self.len + 1,
        })
    }

    /// The prefix one bit shorter; `None` at the root.
    pub fn popped(&self) -> Option<Prefix> {
        (self.len > 0).then(|| Prefix::new(self.len() - 1, self.bits))
    }

    /// The prefix that differs in the last bit only; `None` at the root.
    pub fn sibling(&self) -> Option<Prefix> {
        let last = self.len().checked_sub(1)?;
        Some(Prefix {
            bits: self.bits.with_bit(last, !self.bits.bit(last)),
            len: self.len,
        })
    }

    /// Whether every name `other` matches, this prefix matches too (a prefix is its own
    /// ancestor).
    pub fn is_ancestor_of(&self, other: &Prefix) -> bool {
        self.len <= other.len && self.matches(&other.bits)
    }

    /// Whether the two prefixes share a name (one is an ancestor of the other).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.is_ancestor_of(other) || other.is_ancestor_of(self)
    }

    /// The smallest name the prefix matches.
    pub fn lower_bound(&self) -> XorName {
        self.bits
    }

    /// The largest name the prefix matches.
    pub fn upper_bound(&self) -> XorName {
        let mut name = self.bits;
        for index in self.len()..256 {
            name = name.with_bit(index, true);
        }
        name
    }
}

impl fmt::Display for Prefix {
    /// The bits as `0` and `1` (the root is the empty string).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for index in 0..self.len() {
            f.write_str(if self.bits.bit(index) { "1" } else { "0" })?;
        }
        Ok(())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({:?})", self.to_string())
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, PrefixError> {
        if text.len() > 256 {
            return Err(PrefixError::TooLong(text.len()));
        }
        let mut prefix = Prefix::ROOT;
        for character in text.chars() {
            let bit = match character {
                '0' => false,
                '1' => true,
                other => return Err(PrefixError::BadCharacter(other)),
            };
            prefix = prefix.pushed(bit).ok_or(PrefixError::TooLong(text.len()))?;
        }
        Ok(prefix)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn prefix(text: &str) -> Prefix {
        text.parse().expect("valid prefix")
    }

    #[test]
    fn prefixes_parse_print_and_relate() {
        let p = prefix("0110");
        assert_eq!(p.to_string(), "0110");
        assert_eq!(p.len(), 4);
        assert_eq!(p.popped(), Some(prefix("011")));
        assert_eq!(p.sibling(), Some(prefix("0111")));
        assert_eq!(p.pushed(true), Some(prefix("01101")));
        assert!(prefix("01").is_ancestor_of(&p) && !p.is_ancestor_of(&prefix("01")));
        assert!(p.overlaps(&prefix("01")) && !p.overlaps(&prefix("0111")));
        assert!(Prefix::ROOT.is_ancestor_of(&p) && Prefix::ROOT.sibling().is_none());
        assert_eq!(Prefix::ROOT.to_string(), "");
        assert!(matches!(
            "012".parse::<Prefix>(),
            Err(PrefixError::BadCharacter('2'))
        ));
        assert!(matches!(
            "0".repeat(257).parse::<Prefix>(),
            Err(PrefixError::TooLong(257))
        ));
        let full = prefix(&"1".repeat(256));
        assert_eq!(full.pushed(false), None);
        assert_eq!(full.lower_bound(), full.upper_bound());
    }

    fn name() -> impl Strategy<Value = XorName> {
        any::<[u8; 32]>().prop_map(XorName)
    }

    proptest! {
        #[test]
        fn a_prefix_matches_exactly_the_names_between_its_bounds(
            base in name(), len in 0usize..=256, probe in name(),
        ) {
            let prefix = Prefix::new(len, base);
            prop_assert!(prefix.matches(&base));
            let inside = prefix.lower_bound() <= probe && probe <= prefix.upper_bound();
            prop_assert_eq!(prefix.matches(&probe), inside);
        }

        #[test]
        fn the_two_children_split_their_parent(base in name(), len in 0usize..256, probe in name()) {
            let parent = Prefix::new(len, base);
            let zero = parent.pushed(false).expect("short enough");
            let one = parent.pushed(true).expect("short enough");
            prop_assert_eq!(zero.sibling(), Some(one));
            prop_assert_eq!(zero.popped(), Some(parent));
            // Every name the parent matches, exactly one child matches.
            if parent.matches(&probe) {
                prop_assert!(zero.matches(&probe) != one.matches(&probe));
            } else {
                prop_assert!(!zero.matches(&probe) && !one.matches(&probe));
            }
        }

        #[test]
        fn distance_is_a_metric_with_unique_closest(a in name(), b in name(), c in name()) {
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&a), XorName::default());
            // XOR's triangle inequality, as numbers: d(a,c) <= d(a,b) + d(b,c) follows from
            // d(a,c) = d(a,b) ^ d(b,c) <= d(a,b) + d(b,c); checked on the top 128 bits.
            let top = |name: XorName| u128::from_be_bytes(name.0[..16].try_into().expect("16 bytes"));
            let (ab, bc, ac) = (top(a.distance(&b)), top(b.distance(&c)), top(a.distance(&c)));
            prop_assert!(ac <= ab.saturating_add(bc));
            if b != c {
                prop_assert_ne!(a.cmp_closeness(&b, &c), std::cmp::Ordering::Equal);
            }
            // A longer common prefix means closer.
            if a.common_prefix_len(&b) > a.common_prefix_len(&c) {
                prop_assert_eq!(a.cmp_closeness(&b, &c), std::cmp::Ordering::Less);
            }
        }
    }

    #[test]
    fn decoding_checks_the_length_and_the_cleared_bits() {
        let prefix = Prefix::new(3, XorName([0xff; 32]));
        let text = serde_json::to_string(&prefix).expect("encodes");
        let back: Prefix = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, prefix);
        let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
        value["len"] = serde_json::json!(300);
        let error = serde_json::from_value::<Prefix>(value.clone()).expect_err("too long");
        assert!(error.to_string().contains("at most 256 bits"), "{error}");
        value["len"] = serde_json::json!(2);
        let error = serde_json::from_value::<Prefix>(value).expect_err("stray bits");
        assert!(error.to_string().contains("beyond its length"), "{error}");
    }
}
