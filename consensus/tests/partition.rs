//! Partitions: a minority cut off for fewer rounds than the prune window stalls safely and
//! catches up by gossip once the partition heals. (A longer lag needs state transfer: the
//! events its next events would need are pruned everywhere; ARCHITECTURE.md, "Pruning".)

use std::collections::HashSet;

use chorus_consensus::harness::{Cluster, random_pair};
use chorus_consensus::{Config, Observation, ObservationHash};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SEVEN: [usize; 7] = [0, 1, 2, 3, 4, 5, 6];

// Proves that a minority (2 of 7) cut off while the majority decides about ten rounds makes
// no block of its own (it cannot reach a supermajority), agrees with the majority throughout,
// and after healing catches up: every proposal, made during the partition on either side or
// after it, is agreed by everyone (the minority's stale events are voted again).
#[test]
fn a_minority_stalls_safely_and_catches_up_after_heal() {
    let config = Config::default();
    let mut cluster = Cluster::new(7, &config, 40, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(40);
    let minority = [0usize, 1];
    let same_side = |a: usize, b: usize| minority.contains(&a) == minority.contains(&b);
    let mut step = 0u64;
    let mut proposed: Vec<ObservationHash> = Vec::new();
    while cluster.nodes[6].stats().undecided_round < 10 {
        step += 1;
        assert!(
            step < 5_000,
            "the majority made no progress while partitioned"
        );
        let (requester, responder) = random_pair(&mut rng, &SEVEN);
        if step % 3 == 0 {
            let observation = Observation::payload(format!("before {step}").into_bytes());
            proposed.push(observation.hash());
            cluster.vote(requester, observation);
        }
        if same_side(requester, responder) {
            cluster.sync(requester, responder, step).expect("sync");
        }
    }
    let majority_window = config.prune_window_rounds;
    assert!(
        cluster.nodes[6].stats().undecided_round < majority_window,
        "the lag must stay below the prune window"
    );
    for &member in &minority {
        assert!(
            cluster.blocks[member].is_empty(),
            "the minority made a block without a supermajority"
        );
    }

    // Heal; the minority proposes something new.
    let fresh = Observation::payload(b"after heal".to_vec());
    let fresh_hash = fresh.hash();
    cluster.vote(0, fresh);
    proposed.push(fresh_hash);
    for _ in 0..3_000 {
        step += 1;
        let (requester, responder) = random_pair(&mut rng, &SEVEN);
        cluster.sync(requester, responder, step).expect("sync");
    }
    let everyone: Vec<usize> = (0..7).collect();
    if let Err(disagreement) = cluster.check_prefix_agreement(&everyone) {
        panic!("{disagreement}");
    }
    for member in everyone {
        let sequence = cluster.block_hashes(member);
        let agreed: HashSet<_> = sequence.iter().collect();
        let missing = proposed
            .iter()
            .filter(|hash| !agreed.contains(hash))
            .count();
        assert_eq!(
            missing,
            0,
            "member {member} never agreed on {missing} of {} proposals",
            proposed.len()
        );
        let unique: HashSet<_> = sequence.iter().collect();
        assert_eq!(
            unique.len(),
            sequence.len(),
            "member {member} output an observation twice"
        );
    }
}

// Proves that a vote riding in an event nobody pulled before its creator was cut off is not
// lost: the event goes stale everywhere, its creator votes again in full, and the others
// second it (regression: the re-vote used to go out by hash and never count).
#[test]
fn a_vote_in_an_event_that_went_stale_is_voted_again() {
    let mut cluster = Cluster::new(4, &Config::default(), 41, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(41);
    let mut step = 0u64;
    for _ in 0..50 {
        step += 1;
        let (requester, responder) = random_pair(&mut rng, &[0, 1, 2, 3]);
        cluster.sync(requester, responder, step).expect("sync");
    }
    // Member 0 votes and puts the vote in an event; then it is cut off before anyone pulls it.
    let lost = Observation::payload(b"voted just before the cut".to_vec());
    let lost_hash = lost.hash();
    cluster.vote(0, lost);
    step += 1;
    cluster.sync(0, 1, step).expect("sync");
    let start_round = cluster.nodes[1].stats().undecided_round;
    while cluster.nodes[1].stats().undecided_round < start_round + 12 {
        step += 1;
        assert!(step < 10_000, "no progress without member 0");
        let (requester, responder) = random_pair(&mut rng, &[1, 2, 3]);
        cluster.vote(
            requester,
            Observation::payload(format!("load {step}").into_bytes()),
        );
        cluster.sync(requester, responder, step).expect("sync");
    }
    for _ in 0..2_000 {
        step += 1;
        let (requester, responder) = random_pair(&mut rng, &[0, 1, 2, 3]);
        cluster.sync(requester, responder, step).expect("sync");
    }
    assert!(
        cluster.nodes[1].stats().events_stale > 0,
        "the event did not go stale: the test lost its point"
    );
    for member in 0..4 {
        assert!(
            cluster.blocks[member]
                .iter()
                .any(|block| block.observation_hash == lost_hash),
            "member {member} never agreed on the vote from the stale event"
        );
    }
}
