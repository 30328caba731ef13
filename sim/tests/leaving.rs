//! A member restarted while its own leave is under way (the open finding of RELIABILITY.md:
//! a sweep variant that restarted such members stranded them, listed and never active).
//! Whatever the timing, the section must settle: the node is out of it, or back in it as an
//! active member (an approved node that left comes back through admission by itself), and
//! the checkers find nothing.

mod common;

use chorus_consensus::BlockMode;
use chorus_sim::cluster::{ClusterSetup, ClusterSim};
use chorus_sim::millis;
use common::{assert_clean, load, open_accounts, run_until};

/// Every node that counts itself a member is active, and its section's members agree.
fn settled(sim: &ClusterSim) -> bool {
    let map = sim.map();
    (0..sim.node_count()).all(|node| {
        if !sim.is_running(node) {
            return true;
        }
        let engine = sim.engine(node);
        let state = engine.section();
        state.members.is_empty()
            || (engine.is_active_member()
                && map
                    .section(&state.prefix)
                    .is_some_and(|section| section.len() == state.members.len()))
    })
}

#[test]
fn a_member_restarted_while_its_leave_is_under_way_settles_in_or_out() {
    for (seed, block_mode) in [(81, BlockMode::Supermajority), (82, BlockMode::Single)] {
        for delay_ms in [0, 50, 200, 600] {
            let setup = ClusterSetup {
                nodes: 5,
                sections: None,
                section_size_min: 4,
                block_mode,
                ..ClusterSetup::default()
            };
            let mut sim = ClusterSim::new(seed, setup).expect("cluster");
            open_accounts(&mut sim, 4);
            load(&mut sim, 4, 2, "before");
            sim.leave(4);
            sim.run_for(millis(delay_ms));
            sim.crash(4);
            sim.restart(4).expect("restart");
            load(&mut sim, 4, 4, "after");
            assert!(
                sim.run_until_answered(120_000),
                "seed {seed}, {delay_ms} ms: commands left unanswered"
            );
            sim.settle(30_000);
            assert!(
                run_until(&mut sim, 60_000, settled),
                "seed {seed}, {delay_ms} ms: the section never settled: node 4 {:?}, node 0 {:?}",
                sim.engine(4).stats(),
                sim.engine(0).stats()
            );
            assert_clean(&sim);
        }
    }
}

// The same during a rolling upgrade: the leaver comes back on the new binary, then the
// others follow it one by one.
#[test]
fn a_member_restarted_on_a_new_binary_while_its_leave_is_under_way_settles_and_upgrades() {
    use chorus_sim::cluster::Binary;
    for (seed, block_mode) in [(83, BlockMode::Supermajority), (84, BlockMode::Single)] {
        for delay_ms in [0, 50, 200, 600] {
            let setup = ClusterSetup {
                nodes: 5,
                sections: None,
                section_size_min: 4,
                block_mode,
                ..ClusterSetup::default()
            };
            let mut sim = ClusterSim::new(seed, setup).expect("cluster");
            open_accounts(&mut sim, 4);
            load(&mut sim, 4, 2, "before");
            sim.leave(4);
            sim.run_for(millis(delay_ms));
            for node in [4, 0, 1, 2, 3] {
                sim.crash(node);
                sim.install(node, Binary::upgraded());
                sim.restart(node).expect("restart");
                load(&mut sim, 4, 1, &format!("up{node}"));
            }
            load(&mut sim, 4, 3, "after");
            assert!(
                sim.run_until_answered(120_000),
                "seed {seed}, {delay_ms} ms: commands left unanswered"
            );
            sim.settle(30_000);
            assert!(
                run_until(&mut sim, 60_000, settled),
                "seed {seed}, {delay_ms} ms: the section never settled: node 4 {:?}, node 0 {:?}",
                sim.engine(4).stats(),
                sim.engine(0).stats()
            );
            sim.assert_no_violations();
            for node in 0..4 {
                assert_eq!(
                    sim.engine(node).section_domain().agreed.version,
                    "2",
                    "seed {seed}, {delay_ms} ms: node {node}"
                );
            }
        }
    }
}
