//! A rolling domain upgrade in the simulator: members switch binaries one by one under
//! load; the section agrees on the new domain at one block, the same on every member; a
//! member left on the old binary halts, and catches up once it is upgraded.
//!
//! The simulator's `Stamp` aggregate (`Binary::stamped`, `Binary::upgraded`) writes the
//! domain version its command executed under (`CommandContext::domain_version`), so each
//! member's store shows where the switch happened: every stamp before it says "1", every
//! stamp after it "2".

mod common;

use chorus_aggregate::StreamKey;
use chorus_consensus::BlockMode;
use chorus_sim::cluster::{Binary, ClusterSetup, ClusterSim, StampCommand, command};
use chorus_sim::{millis, secs};
use common::{assert_clean, run_until};

/// The old release: the demo domain with `Stamp`, version 1.
fn old_binary() -> Binary {
    Binary::stamped()
}

/// A section of four members, all on the old release.
fn four_on_the_old_binary(seed: u64, block_mode: BlockMode) -> ClusterSim {
    let setup = ClusterSetup {
        nodes: 4,
        block_mode,
        binary: old_binary(),
        ..ClusterSetup::default()
    };
    ClusterSim::new(seed, setup).expect("cluster")
}

/// The new release: its own version, standing in for the old one until the section agrees.
fn new_binary() -> Binary {
    Binary::upgraded()
}

fn stamp_stream(index: usize) -> StreamKey {
    StreamKey::new("Stamp", &format!("s{index}")).expect("key")
}

/// Sends `count` stamps, one per 50 ms, to the running, not halted members in turn.
fn stamps(sim: &mut ClusterSim, count: usize, tag: &str) {
    let body = serde_json::to_value(StampCommand::Stamp).expect("json");
    for index in 0..count {
        let live: Vec<usize> = (0..sim.node_count())
            .filter(|node| sim.is_running(*node))
            .collect();
        let node = live[index % live.len()];
        sim.submit(
            node,
            command(
                &format!("{tag}{index}"),
                &stamp_stream(index % 3),
                body.clone(),
            ),
        );
        sim.run_for(millis(50));
    }
}

/// Each stamp's version on `node`, in the store's order.
fn versions_on(sim: &ClusterSim, node: usize) -> Vec<String> {
    let store = sim.engine(node).store();
    let log = store
        .read_log(&chorus_aggregate::Filter::All, 0, 100_000)
        .expect("read");
    log.events
        .iter()
        .filter(|event| event.stream.category().as_str() == "Stamp")
        .map(|event| {
            // The payload is the variant's fields (the type is the event's type name).
            let fields: serde_json::Value =
                serde_json::from_slice(&event.payload).expect("a stamp");
            fields["under"].as_str().expect("a version").to_owned()
        })
        .collect()
}

fn agreed_version(sim: &ClusterSim, node: usize) -> String {
    sim.engine(node).section_domain().agreed.version.clone()
}

#[test]
fn a_rolling_upgrade_switches_every_member_at_one_block_and_a_member_left_behind_halts() {
    for (seed, block_mode) in [(61, BlockMode::Single), (62, BlockMode::Supermajority)] {
        let mut sim = four_on_the_old_binary(seed, block_mode);
        stamps(&mut sim, 10, "before");
        // Members 0 and 1 take the new binary: two of four cannot upgrade the section, and
        // the new code decides as the old did meanwhile.
        let mut stamped_before_third = 0;
        for node in 0..3 {
            sim.crash(node);
            stamps(&mut sim, 4, &format!("down{node}"));
            stamped_before_third = versions_on(&sim, 3).len();
            sim.install(node, new_binary());
            sim.restart(node)
                .expect("the new binary stands in for the old domain");
            // Operators take their time: tens of seconds under light load between two
            // members, longer than consensus keeps a tally that gathered too few votes.
            for round in 0..10 {
                stamps(&mut sim, 2, &format!("up{node}r{round}"));
                sim.run_for(secs(2));
            }
            if node < 2 {
                sim.run_for(secs(1));
                for member in 0..4 {
                    assert_eq!(agreed_version(&sim, member), "1", "seed {seed}");
                }
            }
        }
        // The third: more than two thirds vote for the new domain.
        assert!(
            run_until(&mut sim, 30_000, |sim| (0..3)
                .all(|node| agreed_version(sim, node) == "2")),
            "seed {seed}: the section never upgraded"
        );
        assert!(
            run_until(&mut sim, 30_000, |sim| sim.halted(3).is_some()),
            "seed {seed}: the member on the old binary did not halt"
        );
        assert!(!sim.is_running(3), "seed {seed}: a halted node stops");
        let reason = sim.halted(3).expect("halted").to_owned();
        assert!(
            reason.contains(&sim.engine(0).domain().to_string()),
            "seed {seed}: {reason}"
        );
        stamps(&mut sim, 10, "upgraded");
        // Started again on the old binary, it refuses: its store's section runs the new
        // domain. The operator upgrades it: it restarts on the same store and takes part.
        let refusal = sim.restart(3).expect_err("the old binary cannot restart");
        assert!(refusal.contains("\"2\""), "seed {seed}: {refusal}");
        sim.install(3, new_binary());
        sim.restart(3).expect("restart");
        stamps(&mut sim, 10, "all");
        assert!(
            sim.run_until_answered(60_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
        let reference = versions_on(&sim, 0);
        let switch = reference
            .iter()
            .position(|version| version == "2")
            .expect("stamps after the upgrade");
        // Everything stamped before the third member came back was decided under the old
        // domain, by old and new binaries alike.
        assert!(
            switch >= stamped_before_third,
            "seed {seed}: switched after {switch} stamps, {stamped_before_third} were old"
        );
        assert!(
            reference[..switch].iter().all(|version| version == "1")
                && reference[switch..].iter().all(|version| version == "2"),
            "seed {seed}: {reference:?}"
        );
        for node in 1..4 {
            assert_eq!(agreed_version(&sim, node), "2", "seed {seed}");
            assert_eq!(
                versions_on(&sim, node),
                reference,
                "seed {seed}: node {node}"
            );
        }
    }
}

// The adversary: one faulty member of four (f = 1) votes, in blocks of its own, to upgrade
// the section to a domain nobody runs, naming itself and each honest member as the voter.
// Only a block's own signers count, so its votes never reach more than two thirds: no
// member switches, none halts, and the section goes on committing.
#[test]
fn one_faulty_member_cannot_upgrade_the_section() {
    use chorus_engine::{DomainFingerprint, UpgradeProposal};
    for (seed, block_mode) in [(63, BlockMode::Single), (64, BlockMode::Supermajority)] {
        let mut sim = four_on_the_old_binary(seed, block_mode);
        stamps(&mut sim, 5, "before");
        let forged = DomainFingerprint::of_shapes("9", &[]);
        let generation = sim.engine(0).section().generation;
        let named: Vec<_> = (0..4).map(|node| Some(sim.engine(node).id())).collect();
        for (period, voter) in named.into_iter().chain([None]).enumerate() {
            let vote = UpgradeProposal {
                generation,
                domain: forged.clone(),
                voter,
                period: period as u64,
            };
            assert!(sim.propose_raw(1, vote.encode()), "seed {seed}: vote taken");
        }
        stamps(&mut sim, 20, "after");
        assert!(
            sim.run_until_answered(60_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        for node in 0..4 {
            assert!(sim.is_running(node), "seed {seed}: node {node} stopped");
            assert_eq!(agreed_version(&sim, node), "1", "seed {seed}: node {node}");
        }
        assert_clean(&sim);
    }
}
