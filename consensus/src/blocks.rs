//! Blocks, PARSEC-style: votes are tallied in consensus order; an observation becomes a block
//! when a supermajority of members voted for it (or at its first vote in `Single` mode), and
//! the block carries those votes as a proof anyone with the member list can check.

use std::collections::{VecDeque, hash_map};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{BlockMode, is_supermajority};
use crate::event::{Observation, SignedEvent, SignedHeader, Vote};
use crate::graph::EventNode;
use crate::ids::{HashMapPrehashed, ObservationHash, PeerId};
use crate::merkle::MerklePath;

/// One member's signed vote for an observation: the header of the event that carried it
/// (signed by the voter) and the Merkle path from the observation hash to the header's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteProof {
    /// Header and signature of the voting event.
    pub event: Arc<SignedHeader>,
    /// Path from the observation hash to `event.header.votes_root`.
    pub path: MerklePath,
}

/// An agreed observation with its place in the order and its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Position of the block in this group's block sequence, from 0.
    pub sequence: u64,
    /// What was agreed.
    pub observation: Observation,
    /// Its hash, which the proof's votes name.
    pub observation_hash: ObservationHash,
    /// Round in which the completing vote was received.
    pub round_received: u64,
    /// Consensus timestamp of the completing vote (median of famous witnesses' clocks): the
    /// agreed time of the block, never a local clock.
    pub timestamp_ms: u64,
    /// The votes that made the block: a supermajority of distinct members in `Supermajority`
    /// mode, the first vote in `Single` mode.
    pub proof: Vec<VoteProof>,
}

/// Why a block's proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The observation does not hash to `observation_hash`.
    #[error("observation does not match its hash")]
    ObservationMismatch,
    /// A voter is not in the member list.
    #[error("voter {0} is not a member")]
    NotAMember(PeerId),
    /// A vote was cast in another consensus instance (`Config::group`).
    #[error("the vote by {0} belongs to another consensus group")]
    WrongGroup(PeerId),
    /// A member appears twice.
    #[error("voter {0} counted twice")]
    DuplicateVoter(PeerId),
    /// A signature is invalid.
    #[error("bad signature by {0}")]
    BadSignature(PeerId),
    /// A Merkle path does not lead to the signed root.
    #[error("vote by {0} is not in the signed event")]
    NotInEvent(PeerId),
    /// Too few votes for the mode.
    #[error("{votes} votes of {members} members are not enough")]
    TooFewVotes {
        /// Valid votes counted.
        votes: usize,
        /// Members in the group.
        members: usize,
    },
}

impl Block {
    /// Checks the proof against a consensus group and its member list: every vote signed by
    /// a distinct member, in that group, and committed in its event, and enough of them for
    /// the mode.
    pub fn verify(
        &self,
        group: &[u8; 32],
        members: &[PeerId],
        mode: BlockMode,
    ) -> Result<(), ProofError> {
        if self.observation.hash() != self.observation_hash {
            return Err(ProofError::ObservationMismatch);
        }
        let mut voters: Vec<PeerId> = Vec::with_capacity(self.proof.len());
        for vote in &self.proof {
            let voter = vote.event.header.creator;
            if !members.contains(&voter) {
                return Err(ProofError::NotAMember(voter));
            }
            if vote.event.header.group != *group {
                return Err(ProofError::WrongGroup(voter));
            }
            if voters.contains(&voter) {
                return Err(ProofError::DuplicateVoter(voter));
            }
            vote.event
                .verify()
                .map_err(|_| ProofError::BadSignature(voter))?;
            let header = &vote.event.header;
            if !vote.path.verify(
                &self.observation_hash.0,
                header.vote_count,
                &header.votes_root,
            ) {
                return Err(ProofError::NotInEvent(voter));
            }
            voters.push(voter);
        }
        let enough = match mode {
            BlockMode::Supermajority => is_supermajority(voters.len(), members.len()),
            BlockMode::Single => !voters.is_empty(),
        };
        if !enough {
            return Err(ProofError::TooFewVotes {
                votes: voters.len(),
                members: members.len(),
            });
        }
        Ok(())
    }
}

/// Votes counted so far for one observation.
struct Tally {
    /// The event that carried the observation in full (its first counted vote), and the
    /// vote's position in it; the observation is copied out only when the block is made.
    carrier: (Arc<SignedEvent>, usize),
    /// The member whose full vote opened the tally (for the per-member bound).
    opener: usize,
    /// Bitset of members who voted.
    voters: Box<[u64]>,
    voter_count: usize,
    proof: Vec<VoteProof>,
}

/// What we know of one observation.
enum Entry {
    /// Votes are being counted.
    Pending(Tally),
    /// A block was made in this round; later votes are ignored.
    Decided { round: u64 },
}

/// When an entry was created or decided, for expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Since {
    FirstVote(u64),
    Decided(u64),
}

impl Since {
    fn round(self) -> u64 {
        match self {
            Self::FirstVote(round) | Self::Decided(round) => round,
        }
    }
}

/// The tally of all observations not yet decided, and the memory of decided ones: one map, so
/// counting a vote costs one lookup (the map is large and its probes miss the cache).
pub(crate) struct Tallies {
    mode: BlockMode,
    member_count: usize,
    window_rounds: u64,
    pending_per_member_max: usize,
    entries: HashMapPrehashed<ObservationHash, Entry>,
    /// Oldest first, to forget entries older than the window.
    since: VecDeque<(Since, ObservationHash)>,
    pending_count: usize,
    /// Per member: pending tallies its full votes opened.
    opened_by: Vec<usize>,
    next_sequence: u64,
}

impl Tallies {
    pub fn new(
        mode: BlockMode,
        member_count: usize,
        window_rounds: u64,
        pending_per_member_max: usize,
    ) -> Self {
        Self {
            mode,
            member_count,
            window_rounds,
            pending_per_member_max,
            entries: HashMapPrehashed::default(),
            since: VecDeque::new(),
            pending_count: 0,
            opened_by: vec![0; member_count],
            next_sequence: 0,
        }
    }

    pub fn is_decided(&self, hash: &ObservationHash) -> bool {
        matches!(self.entries.get(hash), Some(Entry::Decided { .. }))
    }

    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    pub fn decided_remembered(&self) -> usize {
        self.entries.len() - self.pending_count
    }

    /// Tallies the votes of one event in consensus order; returns the blocks they complete.
    ///
    /// Only a full vote opens a tally, so a vote by hash counts only if a full vote for the
    /// observation was counted earlier in the order (or earlier in this event). Honest members
    /// vote by hash only for observations among their ancestors, which the topological order
    /// counts first, so honest votes always count; votes by hash for unknown observations cost
    /// nothing to ignore. A member may keep at most `pending_per_member_max` tallies open.
    /// Every rule here reads the consensus order only, so every member decides alike.
    pub fn tally_event(
        &mut self,
        event: &EventNode,
        round_received: u64,
        timestamp_ms: u64,
    ) -> Vec<Block> {
        let mut blocks = Vec::new();
        let Some(tree) = &event.votes_tree else {
            return blocks;
        };
        let mut signed_header: Option<Arc<SignedHeader>> = None;
        let words = self.member_count.div_ceil(64);
        let voter = event.creator;
        let (word, bit) = (voter / 64, 1u64 << (voter % 64));
        for (position, (vote, leaf)) in event.event.votes.iter().zip(tree.leaves()).enumerate() {
            let hash = ObservationHash(*leaf);
            let entry = match self.entries.entry(hash) {
                hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
                hash_map::Entry::Vacant(vacant) => {
                    if !matches!(vote, Vote::Full(_))
                        || self.opened_by[voter] >= self.pending_per_member_max
                    {
                        continue;
                    }
                    self.opened_by[voter] += 1;
                    self.pending_count += 1;
                    self.since
                        .push_back((Since::FirstVote(round_received), hash));
                    vacant.insert(Entry::Pending(Tally {
                        carrier: (Arc::clone(&event.event), position),
                        opener: voter,
                        voters: vec![0; words].into_boxed_slice(),
                        voter_count: 0,
                        proof: Vec::new(),
                    }))
                }
            };
            let Entry::Pending(tally) = entry else {
                continue;
            };
            if tally.voters[word] & bit != 0 {
                continue;
            }
            tally.voters[word] |= bit;
            tally.voter_count += 1;
            let header = signed_header.get_or_insert_with(|| Arc::new(event.event.signed_header()));
            tally.proof.push(VoteProof {
                event: Arc::clone(header),
                path: tree.path(position),
            });
            let complete = match self.mode {
                BlockMode::Single => true,
                BlockMode::Supermajority => is_supermajority(tally.voter_count, self.member_count),
            };
            if complete {
                let Entry::Pending(tally) = std::mem::replace(
                    entry,
                    Entry::Decided {
                        round: round_received,
                    },
                ) else {
                    continue;
                };
                self.pending_count -= 1;
                self.opened_by[tally.opener] -= 1;
                self.since.push_back((Since::Decided(round_received), hash));
                blocks.push(self.make_block(hash, tally, round_received, timestamp_ms));
            }
        }
        blocks
    }

    fn make_block(
        &mut self,
        hash: ObservationHash,
        tally: Tally,
        round_received: u64,
        timestamp_ms: u64,
    ) -> Block {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        // The carrier's vote at that position is a full one: only full votes open tallies.
        let (carrier, position) = &tally.carrier;
        let observation = match carrier.votes.get(*position) {
            Some(Vote::Full(observation)) => observation.clone(),
            _ => Observation::Payload(Default::default()),
        };
        Block {
            sequence,
            observation,
            observation_hash: hash,
            round_received,
            timestamp_ms,
            proof: tally.proof,
        }
    }

    /// Forgets pending tallies first voted, and decided observations decided, more than the
    /// window before `round`. Deterministic: it depends on rounds received only. Returns the
    /// observations whose pending tally was forgotten (a vote by hash cannot open them again).
    pub fn expire(&mut self, round: u64) -> Vec<ObservationHash> {
        let mut forgotten = Vec::new();
        let horizon = round.saturating_sub(self.window_rounds);
        while let Some(&(since, hash)) = self.since.front() {
            if since.round() >= horizon {
                break;
            }
            self.since.pop_front();
            let expired = match (since, self.entries.get(&hash)) {
                (Since::FirstVote(_), Some(Entry::Pending(tally))) => {
                    self.pending_count -= 1;
                    self.opened_by[tally.opener] -= 1;
                    true
                }
                (Since::Decided(round), Some(Entry::Decided { round: decided })) => {
                    round == *decided
                }
                _ => false,
            };
            if expired {
                if let Some(Entry::Pending(_)) = self.entries.remove(&hash) {
                    forgotten.push(hash);
                }
            }
        }
        forgotten
    }
}
