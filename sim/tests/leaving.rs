//! A member restarted while its own leave is under way (the open finding of RELIABILITY.md:
//! a sweep variant that restarted such members stranded them, listed and never active).
//! Whatever the timing, the section must settle: the node is out of it, or back in it as an
//! active member (an approved node that left comes back through admission by itself), and
//! the checkers find nothing.

mod common;

use chorus_consensus::BlockMode;
use chorus_sim::cluster::{Binary, ClusterSetup, ClusterSim};
use chorus_sim::millis;
use common::{assert_clean, load, membership_settled, open_accounts, run_until};

/// Node 4 of a five-member section asks to leave; `delay_ms` later it restarts (on the new
/// binary, then the others after it, if `upgrade`); then load, and the section must settle
/// with nothing the checkers object to.
fn leave_then_restart(
    seed: u64,
    block_mode: BlockMode,
    delay_ms: u64,
    upgrade: bool,
) -> ClusterSim {
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
    let restarted: &[usize] = if upgrade { &[4, 0, 1, 2, 3] } else { &[4] };
    for node in restarted {
        sim.crash(*node);
        if upgrade {
            sim.install(*node, Binary::upgraded());
        }
        sim.restart(*node).expect("restart");
        if upgrade {
            load(&mut sim, 4, 1, &format!("up{node}"));
        }
    }
    load(&mut sim, 4, if upgrade { 3 } else { 4 }, "after");
    assert!(
        sim.run_until_answered(120_000),
        "seed {seed}, {delay_ms} ms: commands left unanswered"
    );
    sim.settle(30_000);
    assert!(
        run_until(&mut sim, 60_000, membership_settled),
        "seed {seed}, {delay_ms} ms: the section never settled: node 4 {:?}, node 0 {:?}",
        sim.engine(4).stats(),
        sim.engine(0).stats()
    );
    sim
}

#[test]
fn a_member_restarted_while_its_leave_is_under_way_settles_in_or_out() {
    for (seed, block_mode) in [(81, BlockMode::Supermajority), (82, BlockMode::Single)] {
        for delay_ms in [0, 50, 200, 600] {
            let sim = leave_then_restart(seed, block_mode, delay_ms, false);
            assert_clean(&sim);
        }
    }
}

// The same during a rolling upgrade: the leaver comes back on the new binary, then the
// others follow it one by one.
#[test]
fn a_member_restarted_on_a_new_binary_while_its_leave_is_under_way_settles_and_upgrades() {
    for (seed, block_mode) in [(83, BlockMode::Supermajority), (84, BlockMode::Single)] {
        for delay_ms in [0, 50, 200, 600] {
            let sim = leave_then_restart(seed, block_mode, delay_ms, true);
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
