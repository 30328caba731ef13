//! Engines in the simulator: many sections, a client workload over many streams, a lossy
//! network with a partition, and the command path's checkers.

use chorus_aggregate::StreamKey;
use chorus_consensus::BlockMode;
use chorus_demo::bank_account::BankAccountCommand;
use chorus_engine::CommandOutcome;
use chorus_sim::cluster::{ClusterSetup, ClusterSim, command};
use chorus_sim::{NetworkConfig, ViolationKind, millis, secs};

mod common;
use common::{
    account, assert_clean, assert_numbering_alike, bank, load, membership_settled, open_accounts,
    run_until, workload,
};

#[test]
fn many_sections_under_a_lossy_network_agree_and_lose_nothing() {
    for (seed, block_mode) in [(1, BlockMode::Supermajority), (2, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 12,
            section_size_min: 3,
            sections: None,
            block_mode,
            gossip_interval_ms: 20,
            network: NetworkConfig {
                drop_probability: 0.05,
                duplicate_probability: 0.05,
                reorder_probability: 0.1,
                ..NetworkConfig::default()
            },
            spare_nodes: 0,
            remove_silent_after_ms: None,
            binary: chorus_sim::cluster::Binary::default(),
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        assert!(
            sim.map().section_count() >= 2,
            "seed {seed}: one section only"
        );
        workload(&mut sim, 6, 6);
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
    }
}

#[test]
fn a_partitioned_member_catches_up_and_its_section_agrees() {
    let mut sim = ClusterSim::new(
        3,
        ClusterSetup {
            nodes: 8,
            ..ClusterSetup::default()
        },
    )
    .expect("cluster");
    open_accounts(&mut sim, 4);
    // Node 0 is cut off while the load runs; commands sent to it wait (or time out), and it
    // must catch up with its section once the partition heals.
    sim.partition(&[0], &[1, 2, 3, 4, 5, 6, 7]);
    load(&mut sim, 4, 3, "");
    sim.run_for(secs(2));
    sim.heal();
    assert!(sim.run_until_answered(120_000), "commands left unanswered");
    sim.settle(30_000);
    assert_clean(&sim);
}

#[test]
fn the_checkers_catch_a_diverging_store_and_an_overdraft() {
    let mut sim = ClusterSim::new(
        4,
        ClusterSetup {
            nodes: 4,
            section_size_min: 4,
            ..ClusterSetup::default()
        },
    )
    .expect("cluster");
    open_accounts(&mut sim, 1);
    sim.settle(10_000);
    assert!(sim.violations().is_empty());
    // Write behind the engine's back into one member's store: an overdraft of a fresh account.
    let overdraft = chorus_aggregate::domain::encode_event(
        &chorus_demo::bank_account::BankAccountEvent::Withdrawn {
            amount: 5,
            balance: 0,
            transfer: None,
        },
    )
    .expect("encode");
    let event = chorus_aggregate::NewEvent {
        event_id: chorus_aggregate::EventId::derive(&[b"forged"]),
        event_type: overdraft.event_type,
        event_version: overdraft.event_version,
        payload: overdraft.payload,
        supersedes: None,
    };
    let batch = chorus_aggregate::AppendBatch::single(
        chorus_aggregate::CommandId::derive(&[b"forged"]),
        account(0),
        chorus_aggregate::ExpectedVersion::Any,
        vec![event],
        1,
    );
    sim.engine(1).store().append(&batch).expect("append");
    let violations = sim.violations();
    let kinds: Vec<ViolationKind> = violations.iter().map(|violation| violation.kind).collect();
    assert!(kinds.contains(&ViolationKind::Divergence), "{violations:?}");
    assert!(
        violations
            .iter()
            .any(|v| v.kind == ViolationKind::Domain && v.detail.contains("overdraft")),
        "{violations:?}"
    );
}

#[test]
fn a_cluster_can_be_built_with_an_exact_number_of_sections() {
    for sections in [1, 2, 4] {
        let setup = ClusterSetup {
            nodes: 4 * sections,
            sections: Some(sections),
            ..ClusterSetup::default()
        };
        let sim = ClusterSim::new(5, setup).expect("cluster");
        assert_eq!(sim.map().section_count(), sections);
        assert!(sim.map().sections().all(|section| section.len() == 4));
    }
    let bad = ClusterSetup {
        nodes: 12,
        sections: Some(3),
        ..ClusterSetup::default()
    };
    assert!(ClusterSim::new(5, bad).is_err());
}

#[test]
fn a_byzantine_member_proposing_forged_events_never_gets_them_applied() {
    for (seed, block_mode) in [(6, BlockMode::Supermajority), (7, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 8,
            sections: Some(2),
            block_mode,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        // An account in the Byzantine node's (node 0's) section.
        let own = chorus_routing::XorName::from_public_key(&sim.engine(0).id().0);
        let stream = (0..1_000)
            .map(|index| StreamKey::new("BankAccount", &format!("v{index}")).expect("key"))
            .find(|stream| {
                sim.map()
                    .section_for_stream(&stream.qualified())
                    .contains(&own)
            })
            .expect("a stream of node 0's section");
        let open = bank(BankAccountCommand::OpenAccount {
            owner: "victim".into(),
        });
        sim.submit(1, command("open", &stream, open));
        let deposit = bank(BankAccountCommand::Deposit {
            amount: 10,
            transfer: None,
        });
        sim.submit(2, command("deposit", &stream, deposit));
        assert!(sim.run_until_answered(60_000));
        sim.settle(10_000);
        // Node 0 proposes a valid deposit of 1 at the right version and time, with events
        // claiming a deposit of 1,000: only the event check at apply time can catch it.
        assert!(sim.forge_deposit(0, &stream, "forged", 1_000));
        let forged_request = command("forged", &stream, serde_json::Value::Null);
        sim.run_for(secs(5));
        sim.settle(10_000);
        let violations = sim.violations();
        assert!(violations.is_empty(), "seed {seed}: {violations:?}");
        for node in 0..sim.node_count() {
            let record = sim
                .engine(node)
                .store()
                .command_record(forged_request.command_id)
                .expect("read");
            assert!(
                !matches!(record, Some(chorus_aggregate::CommandRecord::Appended(_))),
                "seed {seed}: node {node} applied the forged proposal"
            );
        }
    }
}

#[test]
fn a_member_that_crashes_under_load_restores_and_loses_nothing() {
    for (seed, block_mode) in [(8, BlockMode::Supermajority), (9, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 8,
            sections: Some(2),
            block_mode,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 4);
        load(&mut sim, 4, 2, "before");
        sim.crash(1);
        load(&mut sim, 4, 2, "during");
        sim.run_for(secs(1));
        sim.restart(1).expect("restart");
        load(&mut sim, 4, 2, "after");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
    }
}

/// Rounds of `load` (100 ms each) that keep a member down long enough under load for the
/// others to prune past everything it holds: 4 s, plus the prune age (the nodes run the
/// default consensus configuration; pruning waits that long after a round is decided, and
/// only a decision prunes, so the load must go on through it).
fn rounds_past_the_window() -> usize {
    40 + (chorus_consensus::Config::default().prune_min_age_ms / 100) as usize
}

#[test]
fn a_member_down_longer_than_the_prune_window_is_brought_back_by_state_transfer() {
    for (seed, block_mode) in [(21, BlockMode::Supermajority), (22, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 4,
            block_mode,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 4);
        load(&mut sim, 4, 2, "before");
        let down = sim.engine(1).id();
        sim.crash(1);
        load(&mut sim, 4, rounds_past_the_window(), "during");
        sim.run_for(secs(2));
        let lagging = (0..4)
            .filter(|node| *node != 1)
            .filter(|node| {
                sim.engine(*node)
                    .consensus()
                    .is_some_and(|consensus| consensus.lags_beyond_window(&down))
            })
            .count();
        assert_eq!(
            lagging, 3,
            "seed {seed}: node 1 is not behind the window yet"
        );
        sim.restart(1).expect("restart");
        load(&mut sim, 4, 4, "after");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert!(
            run_until(&mut sim, 30_000, |sim| sim.engine(1).is_active_member()),
            "seed {seed}: node 1 never became active again: {:?}",
            sim.engine(1).stats()
        );
        let generation = sim.engine(1).section().generation;
        assert!(
            generation >= 1,
            "seed {seed}: node 1 came back without a new generation"
        );
        assert_clean(&sim);
    }
}

#[test]
fn a_member_down_while_its_section_changes_generation_is_brought_back_too() {
    for (seed, block_mode) in [(23, BlockMode::Supermajority), (24, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 5,
            section_size_min: 4,
            block_mode,
            spare_nodes: 1,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 4);
        load(&mut sim, 4, 2, "before");
        let down = sim.engine(1).id();
        sim.crash(1);
        load(&mut sim, 4, rounds_past_the_window(), "down");
        sim.run_for(secs(2));
        assert!(
            sim.engine(0)
                .consensus()
                .is_some_and(|consensus| consensus.lags_beyond_window(&down)),
            "seed {seed}: node 1 is not behind the window yet"
        );
        // A node joins while node 1 is down: the section moves to generation 1 without it
        // noticing, and prunes that generation too.
        let key = sim.draw_key();
        let joiner = sim.add_node(key).expect("a spare node");
        assert!(
            run_until(&mut sim, 30_000, |sim| sim
                .engine(joiner)
                .is_active_member()),
            "seed {seed}: the joiner was not admitted"
        );
        load(&mut sim, 4, 20, "joined");
        sim.restart(1).expect("restart");
        assert_eq!(sim.engine(1).section().generation, 0, "seed {seed}");
        load(&mut sim, 4, 4, "after");
        assert!(
            run_until(&mut sim, 60_000, |sim| sim.engine(1).is_active_member()
                && sim.engine(1).section().generation >= 2),
            "seed {seed}: node 1 never came back: {:?}",
            sim.engine(1).stats()
        );
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
    }
}

#[test]
fn a_member_leaves_and_a_new_node_joins_under_load_and_catches_up_by_state_transfer() {
    for (seed, block_mode) in [(21, BlockMode::Supermajority), (22, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 5,
            sections: None,
            section_size_min: 4,
            block_mode,
            spare_nodes: 1,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        assert_eq!(
            sim.map().section_count(),
            1,
            "seed {seed}: one section of five"
        );
        open_accounts(&mut sim, 4);
        load(&mut sim, 4, 2, "before");

        // A member leaves while commands flow.
        sim.leave(4);
        load(&mut sim, 4, 2, "leaving");
        assert!(
            run_until(&mut sim, 30_000, |sim| sim
                .engine(4)
                .section()
                .members
                .is_empty()
                && membership_settled(sim)),
            "seed {seed}: the leave was not agreed"
        );
        assert_eq!(
            sim.engine(0).section().members.len(),
            4,
            "seed {seed}: four members remain"
        );
        assert_eq!(sim.engine(0).section().generation, 1, "seed {seed}");

        // A new node joins while commands flow, and must catch up on everything before it.
        let key = sim.draw_key();
        let joiner = sim.add_node(key).expect("a spare node");
        load(&mut sim, 4, 3, "joining");
        assert!(
            run_until(&mut sim, 30_000, |sim| sim
                .engine(joiner)
                .is_active_member()
                && membership_settled(sim)),
            "seed {seed}: the joiner was not admitted and caught up"
        );
        assert_eq!(sim.engine(0).section().generation, 2, "seed {seed}");
        load(&mut sim, 4, 2, "after");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
        // The joiner holds what was committed before it joined (transferred, not replayed).
        let first = sim
            .submitted()
            .iter()
            .find(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
            .expect("something committed");
        let record = sim
            .engine(joiner)
            .store()
            .command_record(first.request.command_id)
            .expect("store reads");
        assert!(
            matches!(record, Some(chorus_aggregate::CommandRecord::Appended(_))),
            "seed {seed}: the joiner lacks a command committed before it joined"
        );
        assert_numbering_alike(&sim);
        // The leaver is out of the map and nothing routes to it.
        let leaver = chorus_routing::XorName::from_public_key(&sim.engine(4).id().0);
        assert!(
            sim.map().section_of_member(&leaver).is_none(),
            "seed {seed}"
        );

        // A member restarts in the third generation: from its saved section state and that
        // generation's replay log.
        sim.crash(1);
        load(&mut sim, 4, 2, "crashed");
        sim.restart(1).expect("restart");
        assert_eq!(sim.engine(1).section().generation, 2, "seed {seed}");
        load(&mut sim, 4, 2, "restarted");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered after the restart"
        );
        sim.settle(30_000);
        assert_clean(&sim);
    }
}

/// A seed whose `nodes` free keys form one section that one more node can split.
fn splittable(seed_from: u64, block_mode: BlockMode) -> (ClusterSim, ed25519_dalek::SigningKey) {
    for seed in seed_from..seed_from + 200 {
        let setup = ClusterSetup {
            nodes: 7,
            sections: None,
            section_size_min: 4,
            block_mode,
            spare_nodes: 1,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        if sim.map().section_count() != 1 {
            continue;
        }
        for _ in 0..20 {
            let key = sim.draw_key();
            let mut map = sim.map();
            map.add_member(key.verifying_key().to_bytes());
            if map.section_count() == 2 {
                return (sim, key);
            }
        }
    }
    panic!("no splittable cluster near seed {seed_from}");
}

#[test]
fn a_section_splits_under_load_and_streams_move_with_their_addresses() {
    for (seed, block_mode) in [(31, BlockMode::Supermajority), (41, BlockMode::Single)] {
        let (mut sim, key) = splittable(seed * 1_000, block_mode);
        let accounts = 12;
        open_accounts(&mut sim, accounts);
        load(&mut sim, accounts, 2, "before");
        let joiner = sim.add_node(key).expect("a spare node");
        load(&mut sim, accounts, 4, "splitting");
        assert!(
            run_until(&mut sim, 30_000, |sim| sim
                .engine(joiner)
                .is_active_member()
                && membership_settled(sim)),
            "seed {seed}: the split did not settle"
        );
        let map = sim.map();
        assert_eq!(map.section_count(), 2, "seed {seed}: two halves");
        assert!(map.sections().all(|section| section.len() >= 4));
        for node in 0..sim.node_count() {
            let state = sim.engine(node).section();
            assert_eq!(
                state.prefix.len(),
                1,
                "seed {seed}: node {node} is in a half"
            );
            assert_eq!(state.generation, 1, "seed {seed}: node {node}");
        }
        // After the split, commands go everywhere, including across the new boundary.
        load(&mut sim, accounts, 3, "after");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
        assert_numbering_alike(&sim);
        // Every half committed commands after the split, some of them sent to the other half.
        let tail = &sim.submitted()[sim.submitted().len() - accounts * 3..];
        for section in map.sections() {
            let prefix = section.prefix();
            let committed_here = tail.iter().filter(|submitted| {
                prefix.matches(&chorus_routing::XorName::from_stream_key(
                    &submitted.request.stream.qualified(),
                )) && matches!(submitted.answer, Some((CommandOutcome::Committed(_), _)))
            });
            let across = committed_here
                .clone()
                .filter(|submitted| {
                    !section.contains(&chorus_routing::XorName::from_public_key(
                        &sim.engine(submitted.node).id().0,
                    ))
                })
                .count();
            assert!(
                committed_here.count() > 0 && across > 0,
                "seed {seed}: section {prefix} committed nothing after the split, or nothing sent from the other half"
            );
        }
    }
}

#[test]
fn concurrent_commands_on_one_stream_apply_exactly_once_in_one_order() {
    for (seed, block_mode) in [(51, BlockMode::Supermajority), (52, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 8,
            sections: Some(2),
            block_mode,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 1);
        // Every node sends three deposits to the same account at the same instant.
        let deposits = 3 * sim.node_count();
        for index in 0..deposits {
            let body = bank(BankAccountCommand::Deposit {
                amount: index as u64 + 1,
                transfer: None,
            });
            sim.submit(
                index % sim.node_count(),
                command(&format!("d{index}"), &account(0), body),
            );
        }
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
        let committed = sim
            .submitted()
            .iter()
            .filter(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
            .count();
        assert_eq!(
            committed,
            deposits + 1,
            "seed {seed}: every command committed"
        );
        // One order everywhere (the checkers compared the stores); exactly once: the stream
        // holds the opening and one event per deposit, and the balance is their sum.
        let section = sim
            .map()
            .section_for_stream(&account(0).qualified())
            .clone();
        for member in section.member_keys() {
            let node = (0..sim.node_count())
                .find(|node| sim.engine(*node).id().0 == member)
                .expect("a member");
            let store = sim.engine(node).store();
            let info = store
                .stream_info(&account(0))
                .expect("reads")
                .expect("the account exists");
            assert_eq!(
                info.version,
                deposits as u64 + 1,
                "seed {seed}: node {node}"
            );
            let state =
                chorus_aggregate::Repository::<chorus_demo::bank_account::BankAccount>::new(store)
                    .load(&account(0))
                    .expect("loads")
                    .state;
            let sum: u64 = (1..=deposits as u64).sum();
            assert_eq!(state.balance, sum, "seed {seed}: node {node}");
        }
    }
}

/// The first `count` account ids whose streams route to the section with `prefix`.
fn accounts_in(prefix: chorus_routing::Prefix, count: usize) -> Vec<String> {
    (0..)
        .map(|index| format!("p{index}"))
        .filter(|id| {
            let stream = StreamKey::new("BankAccount", id).expect("key");
            prefix.matches(&chorus_routing::XorName::from_stream_key(
                &stream.qualified(),
            ))
        })
        .take(count)
        .collect()
}

fn balance(sim: &ClusterSim, id: &str) -> u64 {
    let stream = StreamKey::new("BankAccount", id).expect("key");
    let section = sim.map().section_for_stream(&stream.qualified()).clone();
    let member = (0..sim.node_count())
        .find(|node| {
            sim.is_running(*node)
                && section.contains(&chorus_routing::XorName::from_public_key(
                    &sim.engine(*node).id().0,
                ))
        })
        .expect("a running member");
    chorus_aggregate::Repository::<chorus_demo::bank_account::BankAccount>::new(
        sim.engine(member).store(),
    )
    .load(&stream)
    .expect("loads")
    .state
    .balance
}

fn transfer_status(sim: &ClusterSim, id: &str) -> chorus_demo::transfer::TransferStatus {
    let stream = StreamKey::new("Transfer", id).expect("key");
    let section = sim.map().section_for_stream(&stream.qualified()).clone();
    let member = (0..sim.node_count())
        .find(|node| {
            sim.is_running(*node)
                && section.contains(&chorus_routing::XorName::from_public_key(
                    &sim.engine(*node).id().0,
                ))
        })
        .expect("a running member");
    chorus_aggregate::Repository::<chorus_demo::transfer::Transfer>::new(sim.engine(member).store())
        .load(&stream)
        .expect("loads")
        .state
        .status
}

#[test]
fn the_transfer_saga_moves_money_between_accounts_of_two_sections() {
    use chorus_demo::transfer::{TransferCommand, TransferStatus};
    for (seed, block_mode) in [(61, BlockMode::Supermajority), (62, BlockMode::Single)] {
        let setup = ClusterSetup {
            nodes: 8,
            sections: Some(2),
            block_mode,
            network: NetworkConfig {
                drop_probability: 0.02,
                ..NetworkConfig::default()
            },
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        sim.run_transfer_saga().expect("saga");
        let map = sim.map();
        let prefixes: Vec<_> = map.sections().map(|section| section.prefix()).collect();
        let left = accounts_in(prefixes[0], 2);
        let right = accounts_in(prefixes[1], 2);
        for (index, id) in left.iter().chain(&right).enumerate() {
            let stream = StreamKey::new("BankAccount", id).expect("key");
            let open = bank(BankAccountCommand::OpenAccount {
                owner: format!("o{index}"),
            });
            sim.submit(index % 8, command(&format!("open-{id}"), &stream, open));
        }
        assert!(sim.run_until_answered(60_000), "seed {seed}: opening");
        for (index, id) in left.iter().chain(&right).enumerate() {
            let stream = StreamKey::new("BankAccount", id).expect("key");
            let deposit = bank(BankAccountCommand::Deposit {
                amount: 100,
                transfer: None,
            });
            sim.submit(index % 8, command(&format!("fund-{id}"), &stream, deposit));
        }
        assert!(sim.run_until_answered(60_000), "seed {seed}: accounts");
        // The member of the right section closest to the first destination account is down:
        // the left section's saga forwards its deposit there first, gets no answer, and must
        // send it to another member.
        let destination = StreamKey::new("BankAccount", &right[0]).expect("key");
        let address = chorus_routing::XorName::from_stream_key(&destination.qualified());
        let target = map.section_for(&address).closest_members(&address, 1)[0];
        let down = (0..sim.node_count())
            .find(|node| {
                chorus_routing::XorName::from_public_key(&sim.engine(*node).id().0) == target
            })
            .expect("the closest member");
        sim.crash(down);
        let transfers = [
            // Completes: withdrawn on the left, deposited on the right.
            ("t1", &left[0], &right[0], 30),
            // Fails: the withdrawal would overdraw.
            ("t2", &right[1], &left[1], 500),
            // Refunded: the destination was never opened, so the deposit is refused.
            ("t3", &left[1], &"nobody".to_owned(), 20),
        ];
        for (node, (id, from, to, amount)) in transfers.iter().enumerate() {
            let start = serde_json::to_value(TransferCommand::StartTransfer {
                from: (*from).clone(),
                to: (*to).clone(),
                amount: *amount,
            })
            .expect("json");
            let stream = StreamKey::new("Transfer", id).expect("key");
            sim.submit(node * 3, command(&format!("start-{id}"), &stream, start));
        }
        assert!(sim.run_until_answered(60_000), "seed {seed}: transfers");
        let settled = run_until(&mut sim, 60_000, |sim| {
            ["t1", "t2", "t3"].iter().all(|id| {
                matches!(
                    transfer_status(sim, id),
                    TransferStatus::Completed | TransferStatus::Failed { .. }
                )
            })
        });
        assert!(settled, "seed {seed}: the sagas did not finish");
        sim.restart(down).expect("restart");
        sim.settle(30_000);
        assert_clean(&sim);
        assert_eq!(
            transfer_status(&sim, "t1"),
            TransferStatus::Completed,
            "seed {seed}"
        );
        assert!(
            matches!(transfer_status(&sim, "t2"), TransferStatus::Failed { reason } if reason.contains("withdrawal refused")),
            "seed {seed}: t2"
        );
        assert!(
            matches!(transfer_status(&sim, "t3"), TransferStatus::Failed { reason } if reason.contains("refunded")),
            "seed {seed}: t3"
        );
        assert_eq!(balance(&sim, &left[0]), 70, "seed {seed}");
        assert_eq!(balance(&sim, &right[0]), 130, "seed {seed}");
        assert_eq!(balance(&sim, &right[1]), 100, "seed {seed}");
        assert_eq!(balance(&sim, &left[1]), 100, "seed {seed}: refunded");
    }
}

#[test]
fn one_faulty_member_cannot_change_membership_or_routing_alone() {
    use chorus_engine::{MemberChange, MembershipProposal, Message, Welcome};
    for (seed, block_mode) in [(71, BlockMode::Single), (72, BlockMode::Supermajority)] {
        let setup = ClusterSetup {
            nodes: 8,
            sections: Some(2),
            block_mode,
            spare_nodes: 1,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 4);
        let faulty = 0;
        let state = sim.engine(faulty).section().clone();
        let victim = *state
            .members
            .iter()
            .find(|member| **member != sim.engine(faulty).id())
            .expect("another member");
        let stranger = sim.draw_key();
        let stranger = chorus_consensus::PeerId(stranger.verifying_key().to_bytes());
        // Votes to remove an honest member and to admit a made-up node, in its own name and
        // (in Single mode) in the victim's name.
        for change in [MemberChange::Leave(victim), MemberChange::Join(stranger)] {
            for voter in [None, Some(sim.engine(faulty).id()), Some(victim)] {
                let proposal = MembershipProposal {
                    generation: state.generation,
                    change,
                    voter,
                };
                sim.propose_raw(faulty, proposal.encode());
            }
        }
        // Tells every node of the other section that the victim left its section, and that
        // the stranger joined it.
        let others: Vec<usize> = (0..sim.node_count())
            .filter(|node| sim.engine(*node).section().prefix != state.prefix)
            .collect();
        for change in [MemberChange::Leave(victim), MemberChange::Join(stranger)] {
            let update = Message::SectionUpdate {
                prefix: state.prefix,
                generation: 7,
                change,
            }
            .encode()
            .expect("encodes");
            for node in &others {
                sim.send_raw(faulty, *node, update.clone());
            }
        }
        load(&mut sim, 4, 3, "attack");
        assert!(
            sim.run_until_answered(120_000),
            "seed {seed}: commands left unanswered"
        );
        sim.settle(30_000);
        assert_clean(&sim);
        for node in 0..sim.node_count() {
            let engine = sim.engine(node);
            assert_eq!(engine.section().generation, 0, "seed {seed}: node {node}");
            let victim_name = chorus_routing::XorName::from_public_key(&victim.0);
            assert!(
                engine.map().section_of_member(&victim_name).is_some(),
                "seed {seed}: node {node} dropped the victim from its map"
            );
            let stranger_name = chorus_routing::XorName::from_public_key(&stranger.0);
            assert!(
                engine.map().section_of_member(&stranger_name).is_none(),
                "seed {seed}: node {node} let the stranger into its map"
            );
        }

        // A joiner that gets a forged welcome from one faulty member still waits for f + 1
        // equal ones, and joins with the honest state.
        let key = sim.draw_key();
        let joiner_id = chorus_consensus::PeerId(key.verifying_key().to_bytes());
        let joiner_name = chorus_routing::XorName::from_public_key(&joiner_id.0);
        let joiner = sim.add_node(key).expect("a spare node");
        let section = sim.map().section_for(&joiner_name).clone();
        let liar = (0..sim.node_count())
            .find(|node| {
                section.contains(&chorus_routing::XorName::from_public_key(
                    &sim.engine(*node).id().0,
                ))
            })
            .expect("a member of the joiner's section");
        let mut members: Vec<chorus_consensus::PeerId> = section
            .member_keys()
            .into_iter()
            .map(chorus_consensus::PeerId)
            .collect();
        members.push(joiner_id);
        chorus_engine::membership::sort_members(&mut members);
        let forged = Message::Welcome(Welcome {
            generation: sim.engine(liar).section().generation + 1,
            prefix: section.prefix(),
            members,
            events: 0,
            commands: 0,
            bytes: 0,
            digest: [0; 32],
            numbering: None,
            domain: None,
        })
        .encode()
        .expect("encodes");
        sim.send_raw(liar, joiner, forged);
        assert!(
            run_until(&mut sim, 30_000, |sim| sim
                .engine(joiner)
                .is_active_member()
                && membership_settled(sim)),
            "seed {seed}: the joiner was not admitted"
        );
        load(&mut sim, 4, 2, "joined");
        assert!(sim.run_until_answered(120_000), "seed {seed}");
        sim.settle(30_000);
        assert_clean(&sim);
        assert!(
            sim.engine(joiner).store().head_position().expect("reads") > 0,
            "seed {seed}: the joiner holds the section's events"
        );
    }
}

#[test]
fn a_three_section_cluster_under_load_agrees_and_loses_nothing() {
    // Free keys with a minimum of 3: the first seed whose map has exactly three sections
    // (prefixes such as 0, 10 and 11), so sections of different depths work side by side.
    let mut found = None;
    for seed in 300..400 {
        let setup = ClusterSetup {
            nodes: 12,
            section_size_min: 3,
            sections: None,
            block_mode: BlockMode::Supermajority,
            ..ClusterSetup::default()
        };
        let sim = ClusterSim::new(seed, setup).expect("cluster");
        if sim.map().section_count() == 3 {
            found = Some((seed, sim));
            break;
        }
    }
    let (seed, mut sim) = found.expect("a seed with three sections");
    let depths: std::collections::BTreeSet<usize> = sim
        .map()
        .sections()
        .map(|section| section.prefix().len())
        .collect();
    assert!(
        depths.len() >= 2,
        "seed {seed}: sections of different depths"
    );
    workload(&mut sim, 12, 6);
    assert!(
        sim.run_until_answered(120_000),
        "seed {seed}: commands left unanswered"
    );
    sim.settle(30_000);
    assert_clean(&sim);
    // Every section committed something.
    let map = sim.map();
    for section in map.sections() {
        let committed = sim.submitted().iter().any(|submitted| {
            section
                .prefix()
                .matches(&chorus_routing::XorName::from_stream_key(
                    &submitted.request.stream.qualified(),
                ))
                && matches!(submitted.answer, Some((CommandOutcome::Committed(_), _)))
        });
        assert!(
            committed,
            "seed {seed}: section {} committed nothing",
            section.prefix()
        );
    }
}

#[test]
fn a_lying_transfer_source_never_gets_its_state_written() {
    use chorus_engine::Message;
    use chorus_engine::engine::TransferChunk;
    let setup = ClusterSetup {
        nodes: 5,
        sections: None,
        section_size_min: 4,
        block_mode: BlockMode::Supermajority,
        spare_nodes: 1,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(81, setup).expect("cluster");
    open_accounts(&mut sim, 3);
    load(&mut sim, 3, 2, "before");
    assert!(sim.run_until_answered(60_000));
    // A real event with a doctored payload: what a lying member would send.
    let mut lie = sim
        .engine(0)
        .store()
        .read_log(&chorus_aggregate::Filter::All, 1, 1)
        .expect("reads")
        .events
        .remove(0);
    lie.payload = b"{\"owner\":\"mallory\"}".to_vec();
    let generation = sim.engine(0).section().generation + 1;
    let key = sim.draw_key();
    let joiner = sim.add_node(key).expect("a spare node");
    // For two seconds every member "answers" the joiner's first transfer request with the
    // lie, faster than any honest answer: each is believed as a chunk, fails the digest, and
    // makes the joiner ask another member.
    let forged = Message::TransferChunk(TransferChunk {
        generation,
        position: 1,
        events: vec![lie.clone()],
        commands: Vec::new(),
        next: None,
    })
    .encode()
    .expect("encodes");
    let until = sim.now_ms() + 2_000;
    while sim.now_ms() < until {
        for member in 0..5 {
            sim.send_raw(member, joiner, forged.clone());
        }
        sim.run_for(millis(5));
        let store = sim.engine(joiner).store();
        let lies = store
            .read_log(&chorus_aggregate::Filter::All, 1, 1_000)
            .expect("reads")
            .events
            .iter()
            .filter(|event| event.payload == lie.payload)
            .count();
        assert_eq!(lies, 0, "the doctored event was written");
    }
    // The attack stops: the joiner fetches the true state from a member and catches up.
    assert!(
        run_until(&mut sim, 30_000, |sim| sim
            .engine(joiner)
            .is_active_member()
            && membership_settled(sim)),
        "the joiner never got the true state"
    );
    load(&mut sim, 3, 2, "after");
    assert!(sim.run_until_answered(60_000));
    sim.settle(30_000);
    assert_clean(&sim);
    assert!(sim.engine(joiner).store().head_position().expect("reads") > 0);
}

#[test]
fn a_member_that_forks_while_another_is_cut_off_is_still_voted_out_after_the_heal() {
    // A member forks while another is cut off: after the heal the forker is voted out,
    // which needs the cut-off member's vote too (three of four).
    for seed in [216, 217, 218] {
        let setup = ClusterSetup {
            nodes: 4,
            sections: Some(1),
            block_mode: BlockMode::Supermajority,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        open_accounts(&mut sim, 4);
        assert!(sim.run_until_answered(60_000), "seed {seed}: accounts open");
        let (forker, cut_off) = (1, 3);
        sim.partition(&[cut_off], &[0, 1, 2]);
        for _ in 0..3 {
            load(&mut sim, 4, 1, "forking");
            assert!(sim.fork(forker), "seed {seed}: the forker had an event");
            sim.run_for(millis(200));
        }
        sim.run_for(millis(500));
        sim.heal();
        assert!(
            run_until(&mut sim, 30_000, |sim| sim.departed(forker)
                && [0, 2, cut_off].iter().all(|&node| sim
                    .engine(node)
                    .section()
                    .members
                    .len()
                    == 3)),
            "seed {seed}: the forker was not voted out"
        );
        load(&mut sim, 4, 2, "after");
        assert!(sim.run_until_answered(60_000), "seed {seed}");
    }
}

/// Two sections of four in Supermajority mode, with `accounts` accounts open.
fn two_sections_with_accounts(seed: u64, accounts: usize) -> ClusterSim {
    let setup = ClusterSetup {
        nodes: 8,
        sections: Some(2),
        block_mode: BlockMode::Supermajority,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(seed, setup).expect("cluster");
    open_accounts(&mut sim, accounts);
    assert!(sim.run_until_answered(60_000), "seed {seed}: accounts open");
    sim
}

/// The running node whose name is `name`.
fn node_named(sim: &ClusterSim, name: &chorus_routing::XorName) -> usize {
    (0..sim.node_count())
        .find(|&node| {
            sim.is_running(node)
                && chorus_routing::XorName::from_public_key(&sim.engine(node).id().0) == *name
        })
        .expect("the member runs")
}

/// A running node outside the section of `prefix`.
fn node_outside(sim: &ClusterSim, prefix: chorus_routing::Prefix) -> usize {
    (0..sim.node_count())
        .find(|&node| {
            sim.is_running(node)
                && !prefix.matches(&chorus_routing::XorName::from_public_key(
                    &sim.engine(node).id().0,
                ))
        })
        .expect("a node of another section")
}

/// A deposit of 1 on account `index`, under the command id `id`.
fn deposit_on(id: &str, index: usize) -> chorus_aggregate::CommandRequest {
    let deposit = bank(BankAccountCommand::Deposit {
        amount: 1,
        transfer: None,
    });
    command(id, &account(index), deposit)
}

#[test]
fn one_faulty_member_cannot_forge_the_outcome_of_a_command_forwarded_to_its_section() {
    use chorus_engine::Message;
    let seed = 61;
    let mut sim = two_sections_with_accounts(seed, 8);
    let map = sim.map();
    // Deposits on accounts of every section, each sent to a node of the other section.
    // The member closest to each account (the one a forward goes to, which proposes it)
    // lies at once: it tells the sender the deposit was refused.
    let mut forged = Vec::new();
    for index in 0..8 {
        let address = chorus_routing::XorName::from_stream_key(&account(index).qualified());
        let holder = map.section_for(&address);
        let liar = node_named(&sim, &holder.closest_members(&address, 1)[0]);
        let sender = node_outside(&sim, holder.prefix());
        let request = deposit_on(&format!("forged{index}"), index);
        let command_id = request.command_id;
        let ticket = sim.submit(sender, request);
        let lie = Message::Outcome {
            command_id,
            outcome: CommandOutcome::Refused("forged: insufficient funds".into()),
        }
        .encode()
        .expect("encodes");
        sim.send_raw(liar, sender, lie);
        forged.push(ticket);
    }
    assert!(
        sim.run_until_answered(120_000),
        "seed {seed}: commands left unanswered"
    );
    for ticket in forged {
        let answer = &sim.submitted()[ticket].answer;
        assert!(
            matches!(answer, Some((CommandOutcome::Committed(_), _))),
            "seed {seed}: a forged refusal was believed: {answer:?}"
        );
    }
    sim.settle(30_000);
    sim.assert_no_violations();
}

#[test]
fn a_forwarded_outcome_is_proven_although_the_first_member_asked_to_confirm_it_is_down() {
    // The responsible section's second closest member to a stream (the first asked to
    // confirm what the closest answers) is down for good: the next member is asked after
    // `CONFIRM_PATIENCE_MS`, and the deposit is proven committed long before the forward
    // timeout (which would answer it `Failed`).
    let seed = 62;
    let mut sim = two_sections_with_accounts(seed, 16);
    let map = sim.map();
    // Per account: its two closest members, and its section.
    let closest: Vec<(usize, usize, usize, chorus_routing::Prefix)> = (0..16)
        .map(|index| {
            let address = chorus_routing::XorName::from_stream_key(&account(index).qualified());
            let section = map.section_for(&address);
            let two = section.closest_members(&address, 2);
            let (proposer, confirmer) = (node_named(&sim, &two[0]), node_named(&sim, &two[1]));
            (index, proposer, confirmer, section.prefix())
        })
        .collect();
    let (_, _, down, prefix) = closest[0];
    let sender = node_outside(&sim, prefix);
    sim.crash(down);
    let mut tickets = Vec::new();
    for (index, _, _, _) in closest
        .iter()
        .filter(|(_, proposer, confirmer, _)| *confirmer == down && *proposer != down)
    {
        tickets.push(sim.submit(sender, deposit_on(&format!("backed{index}"), *index)));
    }
    assert!(!tickets.is_empty(), "seed {seed}: no account to try");
    assert!(
        sim.run_until_answered(60_000),
        "seed {seed}: commands left unanswered"
    );
    for ticket in tickets {
        let submitted = &sim.submitted()[ticket];
        assert!(
            matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))),
            "seed {seed}: {:?}",
            submitted.answer
        );
    }
}
