//! A seeded scenario runner over the in-memory cluster: random partner choice, random
//! interleaving, random vote timing, and Byzantine members that fork or go silent.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;

use chorus_consensus::harness::{Cluster, member_key, random_pair};
use chorus_consensus::{
    Block, BlockMode, Config, Observation, ObservationHash, SignedEvent, SyncResponse, Vote,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a Byzantine member misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byzantine {
    /// Signs a second event at the index of its latest one and sends it to a random member.
    Fork,
    /// Never answers and never asks: as if crashed from the start.
    Silent,
}

/// A scenario: `members` members, the first `byzantine_count` of which misbehave.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub members: usize,
    pub byzantine_count: usize,
    pub byzantine: Byzantine,
    pub mode: BlockMode,
    pub seed: u64,
    /// Payloads each honest member proposes over the run.
    pub payloads_per_member: usize,
    /// Sync steps during which votes are cast.
    pub voting_steps: usize,
    /// Upper bound on sync steps after the last vote.
    pub settle_steps_max: usize,
    pub config: Config,
}

/// What a run produced.
pub struct Outcome {
    pub cluster: Cluster,
    pub honest: Vec<usize>,
    /// Per honest member, the observation hashes it voted for itself.
    pub proposed: Vec<Vec<ObservationHash>>,
    pub forks_injected: usize,
    pub steps: usize,
}

impl Scenario {
    pub fn new(members: usize, seed: u64) -> Self {
        Self {
            members,
            byzantine_count: 0,
            byzantine: Byzantine::Silent,
            mode: BlockMode::Supermajority,
            seed,
            payloads_per_member: 6,
            voting_steps: 40 * members,
            settle_steps_max: 4_000 * members,
            config: Config::default(),
        }
    }

    pub fn run(&self) -> Outcome {
        let mut config = self.config.clone();
        config.block_mode = self.mode;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut now_ms = 1_000;
        let mut cluster = Cluster::new(self.members, &config, self.seed, now_ms).expect("cluster");
        let byzantine: Vec<usize> = (0..self.byzantine_count).collect();
        let honest: Vec<usize> = (self.byzantine_count..self.members).collect();
        let mut proposed = vec![Vec::new(); self.members];
        let mut forks_injected = 0;
        let total_votes = self.payloads_per_member * honest.len();
        let mut votes_cast = 0;
        let mut steps = 0;
        let mut quiet_streak = 0;
        while steps < self.voting_steps + self.settle_steps_max {
            steps += 1;
            now_ms += rng.gen_range(0..3);
            // Random vote timing: spread the honest votes over the voting phase.
            if votes_cast < total_votes && (steps >= self.voting_steps || rng.gen_bool(0.3)) {
                let member = honest[votes_cast % honest.len()];
                let payload = format!("seed {} member {member} payload {votes_cast}", self.seed);
                let observation = Observation::payload(payload.into_bytes());
                proposed[member].push(observation.hash());
                cluster.vote(member, observation);
                votes_cast += 1;
            }
            let requester = rng.gen_range(0..self.members);
            let mut responder = rng.gen_range(0..self.members - 1);
            if responder >= requester {
                responder += 1;
            }
            let requester_byzantine = byzantine.contains(&requester);
            let responder_byzantine = byzantine.contains(&responder);
            if self.byzantine == Byzantine::Silent && (requester_byzantine || responder_byzantine) {
                continue;
            }
            let report = cluster
                .sync(requester, responder, now_ms)
                .expect("honest sync");
            if std::env::var("DEBUG_REJECT").is_ok() && !report.rejected.is_empty() {
                eprintln!(
                    "step {steps}: {requester}<-{responder}: {:?}",
                    &report.rejected[..report.rejected.len().min(3)]
                );
            }
            if self.byzantine == Byzantine::Fork
                && requester_byzantine
                && steps <= self.voting_steps
                && rng.gen_bool(0.3)
            {
                let target = honest[rng.gen_range(0..honest.len())];
                if inject_fork(
                    &mut cluster,
                    requester,
                    target,
                    self.seed,
                    now_ms,
                    forks_injected,
                ) {
                    forks_injected += 1;
                }
            }
            if votes_cast == total_votes && steps > self.voting_steps {
                // Settled: every honest member has output every honest proposal and has no
                // vote of its own left to send. (Byzantine members may keep the group busy
                // forever, so "nothing left anywhere" is not a usable criterion.)
                let settled = honest.iter().all(|&member| {
                    let node = &cluster.nodes[member];
                    let hashes: HashSet<ObservationHash> = cluster.blocks[member]
                        .iter()
                        .map(|block| block.observation_hash)
                        .collect();
                    node.stats().votes_pending == 0
                        && proposed.iter().flatten().all(|hash| hashes.contains(hash))
                });
                quiet_streak = if settled { quiet_streak + 1 } else { 0 };
                if quiet_streak > 10 * self.members {
                    break;
                }
            }
        }
        Outcome {
            cluster,
            honest,
            proposed,
            forks_injected,
            steps,
        }
    }
}

/// The Byzantine `member` signs a second event at the index of its latest event (same
/// parents, different votes) and sends it, with what the target lacks, to `target`.
fn inject_fork(
    cluster: &mut Cluster,
    member: usize,
    target: usize,
    seed: u64,
    now_ms: u64,
    nonce: usize,
) -> bool {
    let request = cluster.nodes[target].sync_request();
    let Ok(mut response) =
        cluster.nodes[member].handle_sync_request(&cluster.ids[target], &request)
    else {
        return false;
    };
    // The latest event of the forker that the target is about to receive or already has.
    let forker = &cluster.nodes[member];
    let head_index =
        forker.sync_request().known[sorted_position(cluster, member)].saturating_sub(1);
    let Some(latest) = forker.own_event(head_index) else {
        return false;
    };
    if latest.header.index == 0 {
        return false;
    }
    response
        .events
        .retain(|event| event.header.hash() != latest.header.hash());
    let key = member_key(seed, member);
    let fork_vote = Vote::Full(Observation::payload(format!("fork {nonce}").into_bytes()));
    let (fork, _) = SignedEvent::create(
        &key,
        latest.header.index,
        latest.header.self_parent,
        latest.header.other_parent,
        latest.header.created_at_ms,
        vec![fork_vote],
    );
    response.events.push(Arc::new(fork));
    let from = cluster.ids[member];
    let _ = cluster.nodes[target].handle_sync_response(
        now_ms,
        &from,
        SyncResponse {
            events: response.events,
        },
    );
    cluster.drain(target);
    true
}

fn sorted_position(cluster: &Cluster, member: usize) -> usize {
    cluster.nodes[member]
        .members()
        .iter()
        .position(|id| *id == cluster.ids[member])
        .expect("member")
}

/// Block hashes of a member, in order.
pub fn block_hashes(blocks: &[Block]) -> Vec<ObservationHash> {
    blocks.iter().map(|block| block.observation_hash).collect()
}

/// Asserts that the honest members' block sequences are prefixes of one another.
pub fn assert_prefix_agreement(outcome: &Outcome) {
    if let Err(disagreement) = outcome.cluster.check_prefix_agreement(&outcome.honest) {
        panic!("{disagreement}");
    }
}

/// Random syncs among `members` for the steps of `steps` (one per harness millisecond), the
/// requester voting on every third step.
pub fn run_among(
    cluster: &mut Cluster,
    members: &[usize],
    rng: &mut StdRng,
    steps: std::ops::Range<u64>,
) {
    for step in steps {
        let (requester, responder) = random_pair(rng, members);
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("payload {step}").into_bytes()),
            );
        }
        cluster.sync(requester, responder, step).expect("sync");
    }
}
