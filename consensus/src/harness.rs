//! An in-memory, lossless cluster of members for tests and benchmarks: every member is a
//! `Consensus`, and a sync is a direct call from one to another. It owns no clock and no
//! randomness: the caller picks who syncs with whom and passes the time.

use ed25519_dalek::SigningKey;

use crate::blocks::Block;
use crate::config::Config;
use crate::consensus::Consensus;
use crate::error::{SetupError, SyncError};
use crate::event::Observation;
use crate::evidence::ForkEvidence;
use crate::ids::{ObservationHash, PeerId};
use crate::sync::SyncReport;

/// A deterministic signing key for member `index` of a cluster built from `seed`.
pub fn member_key(seed: u64, index: usize) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(blake3::hash(&bytes).as_bytes())
}

/// Members that all run the protocol honestly, connected losslessly.
pub struct Cluster {
    /// The members, in the order they were created (not the sorted member order).
    pub nodes: Vec<Consensus>,
    /// Their ids, same order as `nodes`.
    pub ids: Vec<PeerId>,
    /// Blocks each member has output so far.
    pub blocks: Vec<Vec<Block>>,
    /// Fork evidence each member has output so far.
    pub evidence: Vec<Vec<ForkEvidence>>,
    /// When set, members vote for every observation they learn from others (so that, in
    /// `Supermajority` mode, everything proposed gets agreed).
    pub echo_votes: bool,
}

impl Cluster {
    /// `count` members with keys derived from `seed`, all starting at time `now_ms`.
    pub fn new(count: usize, config: &Config, seed: u64, now_ms: u64) -> Result<Self, SetupError> {
        let keys: Vec<SigningKey> = (0..count).map(|index| member_key(seed, index)).collect();
        let ids: Vec<PeerId> = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let nodes = keys
            .into_iter()
            .map(|key| Consensus::new(config.clone(), key, &ids, now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = Self {
            nodes,
            ids,
            blocks: vec![Vec::new(); count],
            evidence: vec![Vec::new(); count],
            echo_votes: true,
        };
        for index in 0..count {
            cluster.drain(index);
        }
        Ok(cluster)
    }

    /// Member `requester` syncs from member `responder` at `now_ms`.
    pub fn sync(
        &mut self,
        requester: usize,
        responder: usize,
        now_ms: u64,
    ) -> Result<SyncReport, SyncError> {
        let request = self.nodes[requester].sync_request();
        let response = self.nodes[responder].answer_sync_request(&self.ids[requester], &request)?;
        let report =
            self.nodes[requester].handle_sync_response(now_ms, &self.ids[responder], response)?;
        self.drain(requester);
        Ok(report)
    }

    /// Drains member `index`'s outputs: persists (acknowledges) its events at once, collects
    /// its blocks and, with `echo_votes`, votes for what others proposed.
    pub fn drain(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        while let Some(event) = node.poll_unpersisted() {
            node.handle_persisted(event.header.index);
        }
        while let Some(block) = node.poll_block() {
            self.blocks[index].push(block);
        }
        while let Some(evidence) = node.poll_evidence() {
            self.evidence[index].push(evidence);
        }
        while let Some((hash, _)) = node.poll_observation() {
            if self.echo_votes {
                // Back-pressure only drops an echo; the proposer's own vote still stands.
                let _ = node.vote_for_hash(hash);
            }
        }
        // The harness syncs by its own script (`sync`): requests the pace queued are dropped.
        while node.poll_transmit().is_some() {}
        while node.poll_push().is_some() {}
    }

    /// Member `index` votes for `observation`.
    pub fn vote(&mut self, index: usize, observation: Observation) {
        // Test input within limits: a refusal would be a harness bug worth seeing.
        if let Err(error) = self.nodes[index].vote_for(observation) {
            panic!("harness vote refused: {error}");
        }
    }

    /// True when no member has anything left to agree on.
    pub fn is_quiet(&self) -> bool {
        self.nodes.iter().all(Consensus::is_quiet)
    }

    /// The observation hashes of member `index`'s blocks, in order.
    pub fn block_hashes(&self, index: usize) -> Vec<ObservationHash> {
        self.blocks[index]
            .iter()
            .map(|block| block.observation_hash)
            .collect()
    }

    /// Checks that the block sequences of `members` are prefixes of one another (the safety
    /// property); the error names the first member that disagrees.
    pub fn check_prefix_agreement(&self, members: &[usize]) -> Result<(), String> {
        let sequences: Vec<Vec<ObservationHash>> = members
            .iter()
            .map(|&member| self.block_hashes(member))
            .collect();
        let longest = sequences
            .iter()
            .max_by_key(|sequence| sequence.len())
            .cloned()
            .unwrap_or_default();
        for (sequence, member) in sequences.iter().zip(members) {
            if sequence[..] != longest[..sequence.len()] {
                return Err(format!(
                    "member {member} disagrees with the longest block sequence"
                ));
            }
        }
        Ok(())
    }
}

/// A random (requester, responder) pair of distinct members drawn from `members` (at least
/// two).
pub fn random_pair(rng: &mut impl rand::Rng, members: &[usize]) -> (usize, usize) {
    let requester = rng.gen_range(0..members.len());
    let responder = (requester + rng.gen_range(1..members.len())) % members.len();
    (members[requester], members[responder])
}
