//! Agreement, validity and liveness under random gossip schedules (proptest).
//!
//! Safety is Baird 2016, theorem 5.16 (every member decides the same order); liveness in the
//! sense that blocks keep coming is section 5, theorem 5.19, under the random gossip that
//! the schedules below model. Each case runs a seeded schedule, so a failure shrinks to a
//! seed and member count that replay exactly.

mod common;

use std::collections::HashSet;

use chorus_consensus::{BlockMode, faulty_max};
use common::{Byzantine, Outcome, Scenario, assert_prefix_agreement, block_hashes};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(24)
}

/// Checks everything the issue asks of a finished run.
fn check_outcome(outcome: &Outcome, mode: BlockMode) {
    assert_prefix_agreement(outcome);
    let cluster = &outcome.cluster;
    for &member in &outcome.honest {
        let hashes = block_hashes(&cluster.blocks[member]);
        let unique: HashSet<_> = hashes.iter().collect();
        assert_eq!(
            unique.len(),
            hashes.len(),
            "member {member} output an observation twice"
        );
        for block in &cluster.blocks[member] {
            block
                .verify(&[0; 32], cluster.nodes[member].members(), mode)
                .expect("block proof verifies");
        }
        // Every honest proposal (echoed by every honest member in Supermajority mode, voted
        // once in Single mode) is in exactly one block, at every honest member.
        for hash in outcome.proposed.iter().flatten() {
            let count = hashes.iter().filter(|block| *block == hash).count();
            assert_eq!(
                count, 1,
                "member {member} has proposal {hash} in {count} blocks after {} steps",
                outcome.steps
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// All honest, Supermajority mode: same blocks, same order, every proposal agreed once.
    #[test]
    fn honest_members_agree_supermajority(members in 4usize..=10, seed in any::<u64>()) {
        let outcome = Scenario::new(members, seed).run();
        check_outcome(&outcome, BlockMode::Supermajority);
    }

    /// All honest, Single mode: every honest vote becomes a block, in one order everywhere.
    #[test]
    fn honest_members_agree_single(members in 4usize..=10, seed in any::<u64>()) {
        let mut scenario = Scenario::new(members, seed);
        scenario.mode = BlockMode::Single;
        let outcome = scenario.run();
        check_outcome(&outcome, BlockMode::Single);
    }

    /// Up to f members fork their chains: honest members still agree, every honest proposal
    /// is agreed, and every honest member holds evidence of the forks it was shown.
    #[test]
    fn forking_members_cannot_split_honest_ones(members in 4usize..=10, seed in any::<u64>(), byzantine_share in 0.0f64..=1.0) {
        let mut scenario = Scenario::new(members, seed);
        scenario.byzantine = Byzantine::Fork;
        scenario.byzantine_count = ((faulty_max(members) as f64 * byzantine_share).ceil() as usize).clamp(1, faulty_max(members));
        let outcome = scenario.run();
        check_outcome(&outcome, BlockMode::Supermajority);
        if outcome.forks_injected > 0 {
            let with_evidence = outcome.honest.iter().filter(|&&member| !outcome.cluster.evidence[member].is_empty()).count();
            prop_assert!(with_evidence > 0, "{} forks injected but no honest member holds evidence", outcome.forks_injected);
            for &member in &outcome.honest {
                for evidence in &outcome.cluster.evidence[member] {
                    let offender = evidence.verify().expect("evidence verifies");
                    prop_assert!(outcome.cluster.ids[..scenario.byzantine_count].contains(&offender), "an honest member was accused");
                }
            }
        }
    }

    /// Up to f members never gossip: the others still agree on every honest proposal.
    #[test]
    fn silent_members_do_not_stop_the_rest(members in 4usize..=10, seed in any::<u64>(), single in any::<bool>()) {
        let mut scenario = Scenario::new(members, seed);
        scenario.byzantine = Byzantine::Silent;
        scenario.byzantine_count = faulty_max(members);
        scenario.mode = if single { BlockMode::Single } else { BlockMode::Supermajority };
        let outcome = scenario.run();
        check_outcome(&outcome, scenario.mode);
    }
}
