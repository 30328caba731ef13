//! Checkers that run on every block an honest node outputs: agreement (one sequence that
//! every honest node's blocks are a prefix of), validity (each Supermajority block carries a
//! proof that verifies), no duplicates, and no gaps. Liveness is checked by the simulator,
//! which knows the proposals and the fault schedule.
//!
//! [`Violation`] is the one report type of both simulators: the consensus simulator (`Sim`)
//! and the engine cluster (`ClusterSim`, whose checkers use the kinds from `Membership` on,
//! and `Duplicate`, `Liveness` and `Panic`).

use std::collections::HashMap;
use std::fmt;

use chorus_consensus::{Block, BlockMode, ObservationHash, PeerId};

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// Two honest nodes output different blocks at one position.
    Agreement,
    /// A block's proof does not verify.
    Validity,
    /// An observation was agreed twice (engine cluster: an event id stored twice).
    Duplicate,
    /// A node skipped a position, or a restored node re-emitted a different block.
    Sequence,
    /// A crashed node could not restore from what it had made durable.
    Restore,
    /// An honest node was found forking its chain (fork evidence names it).
    HonestFork,
    /// The simulated code panicked.
    Panic,
    /// After the last fault healed, an honest proposal was not agreed by every honest node
    /// within the liveness bound (engine cluster: a command was not answered, or none was
    /// committed).
    Liveness,
    /// Engine cluster: the section map breaks an invariant, or a section's members disagree on
    /// its generation and members, or a listed member is not active in it.
    Membership,
    /// Engine cluster: the members of one section hold different stores.
    Divergence,
    /// Engine cluster: a command answered `Committed` is missing from a member's store.
    Lost,
    /// Engine cluster: a member wrote an event of a stream its section did not cover.
    Routing,
    /// Engine cluster: a command no client (and no saga) sent had effects.
    Forgery,
    /// Engine cluster: the demo domain's invariant broke (an account overdrawn, a balance
    /// that is not the running sum), or a store could not be read back.
    Domain,
    /// The run could not be set up (a bad configuration, not a finding about the code).
    Setup,
}

impl ViolationKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::Agreement => "agreement",
            ViolationKind::Validity => "validity",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::Sequence => "sequence",
            ViolationKind::Restore => "restore",
            ViolationKind::HonestFork => "honest-fork",
            ViolationKind::Panic => "panic",
            ViolationKind::Liveness => "liveness",
            ViolationKind::Membership => "membership",
            ViolationKind::Divergence => "divergence",
            ViolationKind::Lost => "lost",
            ViolationKind::Routing => "routing",
            ViolationKind::Forgery => "forgery",
            ViolationKind::Domain => "domain",
            ViolationKind::Setup => "setup",
        }
    }
}

/// One violation, with where and when it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Its kind.
    pub kind: ViolationKind,
    /// Virtual time of detection.
    pub at_ms: u64,
    /// The node where it was detected.
    pub node: usize,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violation at {} ms on node {}: {}",
            self.kind.name(),
            self.at_ms,
            self.node,
            self.detail
        )
    }
}

impl Violation {
    /// Runs `run`; a panic of the simulated code comes back as a `Panic` violation.
    pub fn catching_panics<T>(run: impl FnOnce() -> T) -> Result<T, Violation> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|payload| {
            let detail = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| {
                    payload
                        .downcast_ref::<&str>()
                        .map(|text| (*text).to_owned())
                })
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Violation {
                kind: ViolationKind::Panic,
                at_ms: 0,
                node: 0,
                detail,
            }
        })
    }
}

/// The agreed block sequence as the honest nodes reveal it, position by position.
pub struct Checker {
    members: Vec<PeerId>,
    mode: BlockMode,
    /// Position `i`: the observation the first honest node to reach `i` output there.
    agreed: Vec<ObservationHash>,
    /// And the digest of the whole block (round, time, voters), which every node must match.
    digests: Vec<[u8; 32]>,
    /// The same, observation to position, for the duplicate check and for "is it agreed".
    positions: HashMap<ObservationHash, usize>,
    violations: Vec<Violation>,
}

impl Checker {
    /// A checker for a group with `members` forming blocks in `mode`.
    pub fn new(members: Vec<PeerId>, mode: BlockMode) -> Self {
        Self {
            members,
            mode,
            agreed: Vec::new(),
            digests: Vec::new(),
            positions: HashMap::new(),
            violations: Vec::new(),
        }
    }

    /// Checks a block that honest `node` output at `position` of its sequence (the node's
    /// own count, which the simulator keeps). The first node to reach a position verifies
    /// the block's proof; the others must output the same block (same `digest`: observation,
    /// round, timestamp and voting events).
    pub fn on_block(
        &mut self,
        node: usize,
        position: usize,
        block: &Block,
        digest: [u8; 32],
        now_ms: u64,
    ) {
        if block.sequence != position as u64 {
            self.report(
                ViolationKind::Sequence,
                node,
                now_ms,
                format!("block numbered {} at position {position}", block.sequence),
            );
            return;
        }
        if let Some(agreed) = self.agreed.get(position) {
            if *agreed != block.observation_hash {
                self.report(
                    ViolationKind::Agreement,
                    node,
                    now_ms,
                    format!(
                        "block {position} is {} here but {agreed} on another honest node",
                        block.observation_hash
                    ),
                );
            } else if self.digests[position] != digest {
                self.report(
                    ViolationKind::Agreement,
                    node,
                    now_ms,
                    format!(
                        "block {position} ({agreed}) has another round, timestamp or proof \
                         than on another honest node"
                    ),
                );
            }
            return;
        }
        if let Err(error) = block.verify(&[0; 32], &self.members, self.mode) {
            self.report(
                ViolationKind::Validity,
                node,
                now_ms,
                format!("block {position}: {error}"),
            );
        }
        if self
            .positions
            .insert(block.observation_hash, position)
            .is_some()
        {
            self.report(
                ViolationKind::Duplicate,
                node,
                now_ms,
                format!("observation {} agreed twice", block.observation_hash),
            );
        }
        self.agreed.push(block.observation_hash);
        self.digests.push(digest);
    }

    /// Records a violation found elsewhere.
    pub fn report(&mut self, kind: ViolationKind, node: usize, at_ms: u64, detail: String) {
        self.violations.push(Violation {
            kind,
            at_ms,
            node,
            detail,
        });
    }

    /// Whether `hash` has been agreed.
    pub fn is_agreed(&self, hash: &ObservationHash) -> bool {
        self.positions.contains_key(hash)
    }

    /// Position of `hash` in the agreed sequence.
    pub fn position(&self, hash: &ObservationHash) -> Option<usize> {
        self.positions.get(hash).copied()
    }

    /// The agreed sequence so far.
    pub fn agreed(&self) -> &[ObservationHash] {
        &self.agreed
    }

    /// Every violation found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}
