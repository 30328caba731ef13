//! A binary Merkle tree over the observation hashes a gossip event votes for.
//!
//! The event header commits to the root, so one signature covers every vote, and a single vote
//! can still be proven to a third party with `log2(votes)` hashes: that is what makes a block's
//! proof small and checkable without the rest of the event.
//!
//! Shape: leaves are the observation hashes themselves (already domain-separated blake3
//! values); an inner node is `blake3::keyed_hash(NODE_KEY, left || right)` (the key separates
//! inner nodes from every other hash, and a 64-byte input costs one compression); an odd node
//! at the end of a level is promoted unchanged. An empty tree has a fixed root.

use serde::{Deserialize, Serialize};

/// Key of inner-node hashes: 32 fixed bytes naming the purpose and version.
const NODE_KEY: &[u8; 32] = b"chorus/merkle/inner-node/v1\0\0\0\0\0";
const EMPTY_DOMAIN: &[u8] = b"chorus/merkle/empty/v1";

fn combine(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(left);
    input[32..].copy_from_slice(right);
    *blake3::keyed_hash(NODE_KEY, &input).as_bytes()
}

fn empty_root() -> [u8; 32] {
    *blake3::hash(EMPTY_DOMAIN).as_bytes()
}

/// The root over `leaves`, computed in one scratch buffer.
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        let width = level.len();
        for pair in 0..width / 2 {
            level[pair] = combine(&level[2 * pair], &level[2 * pair + 1]);
        }
        if width % 2 == 1 {
            level[width / 2] = level[width - 1];
        }
        level.truncate(width.div_ceil(2));
    }
    level[0]
}

/// Every level of the tree, leaves first, root last; used to cut many proofs from one event.
pub struct Tree {
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// Builds the whole tree over `leaves`.
    pub fn build(leaves: Vec<[u8; 32]>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let mut above = Vec::with_capacity(below.len().div_ceil(2));
            for pair in below.chunks(2) {
                above.push(if pair.len() == 2 {
                    combine(&pair[0], &pair[1])
                } else {
                    pair[0]
                });
            }
            levels.push(above);
        }
        Self { levels }
    }

    /// The leaves, in order.
    pub fn leaves(&self) -> &[[u8; 32]] {
        self.levels.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The root of the tree (the fixed empty root when there are no leaves).
    pub fn root(&self) -> [u8; 32] {
        match self.levels.last().and_then(|level| level.first()) {
            Some(root) => *root,
            None => empty_root(),
        }
    }

    /// The sibling hashes from leaf `index` up to the root (promoted levels add nothing).
    pub fn path(&self, index: usize) -> MerklePath {
        let mut siblings = Vec::new();
        let mut position = index;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(position ^ 1) {
                siblings.push(*sibling);
            }
            position /= 2;
        }
        MerklePath {
            leaf_index: index as u32,
            siblings,
        }
    }
}

/// A proof that one leaf is in a tree of known width.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerklePath {
    /// Position of the leaf among the event's votes.
    pub leaf_index: u32,
    /// Sibling hashes, bottom-up.
    pub siblings: Vec<[u8; 32]>,
}

impl MerklePath {
    /// True when `leaf` at `self.leaf_index` in a tree of `leaf_count` leaves has root `root`.
    pub fn verify(&self, leaf: &[u8; 32], leaf_count: u32, root: &[u8; 32]) -> bool {
        if self.leaf_index >= leaf_count {
            return false;
        }
        let mut position = self.leaf_index;
        let mut width = leaf_count;
        let mut node = *leaf;
        let mut siblings = self.siblings.iter();
        while width > 1 {
            if position ^ 1 < width {
                let Some(sibling) = siblings.next() else {
                    return false;
                };
                node = if position % 2 == 0 {
                    combine(&node, sibling)
                } else {
                    combine(sibling, &node)
                };
            }
            position /= 2;
            width = width.div_ceil(2);
        }
        siblings.next().is_none() && node == *root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(count: usize) -> Vec<[u8; 32]> {
        (0..count)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn every_path_verifies_and_matches_the_streaming_root() {
        for count in 0..40 {
            let leaves = leaves(count);
            let tree = Tree::build(leaves.clone());
            assert_eq!(tree.root(), root(&leaves), "count {count}");
            for (index, leaf) in leaves.iter().enumerate() {
                let path = tree.path(index);
                assert!(
                    path.verify(leaf, count as u32, &tree.root()),
                    "count {count} index {index}"
                );
            }
        }
    }

    #[test]
    fn a_path_does_not_verify_another_leaf_or_position() {
        let leaves = leaves(7);
        let tree = Tree::build(leaves.clone());
        let path = tree.path(3);
        assert!(!path.verify(&leaves[2], 7, &tree.root()));
        // A leaf index beyond the width is refused. (A wrong but compatible width can still
        // verify; the width comes from the signed header's vote_count, never from a prover.)
        assert!(!path.verify(&leaves[3], 3, &tree.root()));
        let mut moved = path.clone();
        moved.leaf_index = 2;
        assert!(!moved.verify(&leaves[3], 7, &tree.root()));
        let mut longer = path;
        longer.siblings.push([0; 32]);
        assert!(!longer.verify(&leaves[3], 7, &tree.root()));
    }
}
