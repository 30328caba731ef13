//! Partitions: a minority cut off for fewer rounds than the prune window stalls safely and
//! catches up by gossip once the partition heals. (A longer lag needs state transfer: the
//! events its next events would need are pruned everywhere; ARCHITECTURE.md, "Pruning".)

use std::collections::HashSet;

use chorus_consensus::harness::Cluster;
use chorus_consensus::{Config, Observation, ObservationHash};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// Proves that a minority (2 of 7) cut off while the majority decides about ten rounds makes
// no block of its own (it cannot reach a supermajority), agrees with the majority throughout,
// and after healing catches up and gets its new proposals agreed by everyone.
#[test]
fn a_minority_stalls_safely_and_catches_up_after_heal() {
    let config = Config::default();
    let mut cluster = Cluster::new(7, &config, 40, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(40);
    let minority = [0usize, 1];
    let same_side = |a: usize, b: usize| minority.contains(&a) == minority.contains(&b);
    let mut step = 0u64;
    while cluster.nodes[6].stats().undecided_round < 10 {
        step += 1;
        assert!(
            step < 5_000,
            "the majority made no progress while partitioned"
        );
        let requester = rng.gen_range(0..7);
        let responder = (requester + rng.gen_range(1..7)) % 7;
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("before {step}").into_bytes()),
            );
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
    for _ in 0..3_000 {
        step += 1;
        let requester = rng.gen_range(0..7);
        let responder = (requester + rng.gen_range(1..7)) % 7;
        cluster.sync(requester, responder, step).expect("sync");
    }
    let sequences: Vec<Vec<ObservationHash>> = (0..7)
        .map(|member| {
            cluster.blocks[member]
                .iter()
                .map(|block| block.observation_hash)
                .collect()
        })
        .collect();
    let longest = sequences
        .iter()
        .max_by_key(|sequence| sequence.len())
        .cloned()
        .unwrap_or_default();
    for (member, sequence) in sequences.iter().enumerate() {
        assert_eq!(
            sequence[..],
            longest[..sequence.len()],
            "member {member} disagrees"
        );
        assert!(
            sequence.contains(&fresh_hash),
            "member {member} never agreed on the minority's new proposal"
        );
        let unique: HashSet<_> = sequence.iter().collect();
        assert_eq!(
            unique.len(),
            sequence.len(),
            "member {member} output an observation twice"
        );
    }
}
