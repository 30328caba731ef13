//! Named fault scenarios. Each reads like the story it tests and checks agreement (the
//! checkers run on every block), liveness after the faults heal, and the scenario's own
//! point.

use chorus_sim::{Behaviour, NetworkConfig, Sim, ViolationKind, millis, secs};

/// Blocks node `node` holds now.
fn height(sim: &mut Sim, node: usize) -> usize {
    sim.blocks(node).len()
}

// A minority cut off from the group agrees on nothing new while cut off (it cannot reach a
// supermajority), and catches up with everything after the heal.
#[test]
fn minority_partition_stalls_safely_and_catches_up_after_heal() {
    let mut sim = Sim::new(11).nodes(7);
    sim.run_for(secs(1));
    sim.partition(&[0, 1], &[2, 3, 4, 5, 6]);
    // Let what was in flight at the cut settle, then watch the minority.
    sim.run_for(millis(500));
    let minority_before = height(&mut sim, 0);
    let majority_before = height(&mut sim, 2);
    sim.run_for(secs(3));
    assert_eq!(
        height(&mut sim, 0),
        minority_before,
        "the minority agreed on something while cut off"
    );
    assert!(
        height(&mut sim, 2) > majority_before + 50,
        "the majority stalled"
    );
    sim.heal();
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    assert_eq!(height(&mut sim, 0), height(&mut sim, 2));
}

// A side holding a supermajority keeps agreeing during a partition: proposals its members
// make while cut off from the rest are agreed before the heal.
#[test]
fn majority_partition_keeps_committing() {
    let mut sim = Sim::new(12).nodes(10);
    sim.run_for(millis(500));
    let majority = [3, 4, 5, 6, 7, 8, 9];
    sim.partition(&[0, 1, 2], &majority);
    sim.run_for(millis(200));
    let during: Vec<_> = majority
        .iter()
        .filter_map(|&node| sim.propose(node, format!("during the cut, from {node}").as_bytes()))
        .collect();
    assert_eq!(during.len(), majority.len());
    sim.run_for(secs(3));
    for hash in &during {
        assert!(
            sim.is_agreed(hash),
            "a majority proposal waited for the heal"
        );
    }
    sim.heal();
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
}

// A member crashes under load, losing what it had not made durable, restarts from its
// durable log, does not fork its own chain (no member ever sees a fork), and catches up.
#[test]
fn crash_and_restart_of_a_member_mid_load() {
    let mut sim = Sim::new(13).nodes(4).load(30);
    // Long enough to prune, so the restart replays a log across pruning.
    sim.run_for(secs(6));
    let pruned = sim.consensus_stats(2).expect("running").events_pruned;
    assert!(pruned > 0, "nothing pruned before the crash");
    // Crash at a moment when an event of node 2 is written but not yet synced.
    let crash_when_unsynced = |sim: &mut Sim| {
        for _ in 0..1_000 {
            if sim.unsynced(2).1 > 0 {
                break;
            }
            sim.run_for(millis(1));
        }
        assert!(sim.unsynced(2).1 > 0, "node 2 never had an unsynced event");
        sim.crash(2);
    };
    crash_when_unsynced(&mut sim);
    sim.run_for(millis(1_500));
    sim.restart(2);
    sim.run_for(secs(1));
    crash_when_unsynced(&mut sim);
    sim.restart(2);
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    let stats = sim.stats();
    assert_eq!(stats.faults.get("crash"), Some(&2));
    assert_eq!(stats.faults.get("restart"), Some(&2));
    assert_eq!(stats.evidence, 0, "a restarted member forked its chain");
    assert!(stats.messages_to_crashed > 0);
    // The crashes lost what was written but not yet synced (the log syncs every 10 ms), own
    // events included: the restarts really resumed from less than the node had.
    assert!(stats.log_records_lost > 0, "{stats:?}");
    assert!(stats.own_events_lost > 0, "{stats:?}");
    assert_eq!(height(&mut sim, 2), height(&mut sim, 0));
}

// f members that fork their chains are detected (fork evidence) and change nothing the
// honest members agree on.
#[test]
fn f_byzantine_forkers() {
    let mut sim = Sim::new(14).nodes(7).byzantine(2, Behaviour::Fork);
    sim.run_for(secs(3));
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    assert!(sim.stats().evidence > 0, "no fork was detected");
}

// f members that send each peer a different version of their latest event (conflicting
// votes at one index) are detected and change nothing the honest members agree on.
#[test]
fn f_equivocators() {
    let mut sim = Sim::new(15).nodes(7).byzantine(2, Behaviour::Equivocate);
    sim.run_for(secs(3));
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    assert!(sim.stats().evidence > 0, "no equivocation was detected");
}

// Every other Byzantine behaviour (broken signatures, withholding, garbage bytes, votes for
// observations nobody carried), f members at a time, changes nothing the honest agree on.
#[test]
fn every_byzantine_behaviour_with_f_members() {
    for (offset, behaviour) in [
        Behaviour::BadSignatures,
        Behaviour::Withhold,
        Behaviour::Garbage,
        Behaviour::PhantomVotes,
    ]
    .into_iter()
    .enumerate()
    {
        let mut sim = Sim::new(16 + offset as u64)
            .nodes(4)
            .byzantine(1, behaviour);
        sim.run_for(secs(2));
        assert!(sim.run_until_quiet(), "{behaviour}: {:?}", sim.violations());
        sim.assert_agreement();
        sim.assert_all_agreed();
        let stats = sim.stats();
        match behaviour {
            Behaviour::BadSignatures => assert!(stats.events_rejected > 0, "{stats:?}"),
            Behaviour::Garbage => assert!(stats.messages_undecodable > 0, "{stats:?}"),
            _ => {}
        }
        // Nothing but honest proposals was agreed (no phantom vote made a block).
        assert_eq!(stats.blocks, stats.proposals, "{behaviour}: {stats:?}");
        assert_eq!(stats.evidence, 0, "{behaviour}: nobody forked");
    }
}

// Messages delivered twice and far out of order change nothing.
#[test]
fn message_duplication_and_reordering() {
    let network = NetworkConfig {
        duplicate_probability: 0.2,
        reorder_probability: 0.3,
        jitter_ms: 30,
        ..NetworkConfig::default()
    };
    let mut sim = Sim::new(17).nodes(5).network(network);
    sim.run_for(secs(3));
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    assert!(sim.stats().messages_duplicated > 100);
}

// With 30% of messages lost the group still agrees on everything, only slower.
#[test]
fn thirty_percent_drop() {
    let network = NetworkConfig {
        drop_probability: 0.3,
        ..NetworkConfig::default()
    };
    let mut sim = Sim::new(18).nodes(7).network(network);
    sim.run_for(secs(3));
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
    let stats = sim.stats();
    let lost = stats.messages_dropped as f64 / stats.messages_sent as f64;
    assert!((0.25..0.35).contains(&lost), "{lost}");
}

// A one-way cut: node 0 still hears the others but cannot answer. Sync is pull-based (ask,
// then receive), so half a link is no link: node 0 falls silent to the group, the other
// three (a supermajority) keep agreeing, and node 0 catches up after the heal.
#[test]
fn one_way_partition() {
    let mut sim = Sim::new(19).nodes(4);
    sim.run_for(millis(500));
    sim.partition_one_way(&[0], &[1, 2, 3]);
    sim.run_for(millis(300));
    let before = height(&mut sim, 1);
    sim.run_for(secs(2));
    assert!(
        height(&mut sim, 1) > before + 20,
        "the connected side stalled"
    );
    assert!(sim.stats().messages_partitioned > 0);
    sim.heal();
    assert!(sim.run_until_quiet(), "{:?}", sim.violations());
    sim.assert_agreement();
    sim.assert_all_agreed();
}

// The checkers can fail: with more than f members withholding, the honest members cannot
// reach a supermajority, and the liveness checker says so.
#[test]
fn liveness_checker_reports_more_than_f_withholders() {
    let mut setup = chorus_sim::Setup {
        nodes: 4,
        liveness_bound_ms: 2_000,
        ..chorus_sim::Setup::default()
    };
    setup.byzantine.insert(0, Behaviour::Withhold);
    setup.byzantine.insert(1, Behaviour::Withhold);
    let mut sim = Sim::with_setup(20, setup);
    sim.run_for(secs(1));
    assert!(!sim.run_until_quiet());
    let violations = sim.violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].kind, ViolationKind::Liveness);
}
