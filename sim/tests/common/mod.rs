//! Helpers the engine-in-the-simulator tests share: a bank workload, the clean-run check and
//! running until a condition holds.

#![allow(dead_code)] // each test file uses its own part of these

use chorus_aggregate::StreamKey;
use chorus_demo::bank_account::BankAccountCommand;
use chorus_demo::notebook::NotebookCommand;
use chorus_engine::CommandOutcome;
use chorus_sim::cluster::{ClusterSim, command};
use chorus_sim::millis;

pub fn bank(command: BankAccountCommand) -> serde_json::Value {
    serde_json::to_value(command).expect("json")
}

pub fn account(index: usize) -> StreamKey {
    StreamKey::new("BankAccount", &format!("acc{index}")).expect("key")
}

/// Opens `accounts` accounts and waits for the answers.
pub fn open_accounts(sim: &mut ClusterSim, accounts: usize) {
    let nodes = sim.node_count();
    for index in 0..accounts {
        let open = bank(BankAccountCommand::OpenAccount {
            owner: format!("owner{index}"),
        });
        sim.submit(
            index % nodes,
            command(&format!("open{index}"), &account(index), open),
        );
    }
    assert!(sim.run_until_answered(60_000), "accounts not opened");
}

/// Opens `accounts` accounts, then sends deposits and withdrawals (some overdrawing) and
/// notebook commands to every node in turn.
pub fn workload(sim: &mut ClusterSim, accounts: usize, rounds: usize) {
    open_accounts(sim, accounts);
    load(sim, accounts, rounds, "");
}

/// Deposits, withdrawals (some overdrawing) and notebooks, sent to every node in turn.
pub fn load(sim: &mut ClusterSim, accounts: usize, rounds: usize, tag: &str) {
    let nodes = sim.node_count();
    for round in 0..rounds {
        for index in 0..accounts {
            let node = (round * 7 + index * 3) % nodes;
            let body = if (round + index) % 3 == 2 {
                bank(BankAccountCommand::Withdraw {
                    amount: 25,
                    transfer: None,
                })
            } else {
                bank(BankAccountCommand::Deposit {
                    amount: 10,
                    transfer: None,
                })
            };
            sim.submit(
                node,
                command(&format!("{tag}r{round}a{index}"), &account(index), body),
            );
        }
        let notebook = StreamKey::new("Notebook", &format!("{tag}n{round}")).expect("key");
        let initiate =
            serde_json::to_value(NotebookCommand::InitiateNotebook { title: "t".into() })
                .expect("json");
        sim.submit(
            round % nodes,
            command(&format!("{tag}n{round}"), &notebook, initiate),
        );
        sim.run_for(millis(100));
    }
}

pub fn assert_clean(sim: &ClusterSim) {
    sim.assert_no_violations();
    let committed = sim
        .submitted()
        .iter()
        .filter(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
        .count();
    assert!(
        committed > sim.submitted().len() / 2,
        "only {committed} committed"
    );
}

/// Every member of each section numbers the section's events alike (positions, and so
/// `supersedes` and log cursors, mean the same at every member): joiners keep the numbering
/// their section's members vouched for. (Not after a merge, where each former half numbered
/// its own history: tests with merges do not call this.)
pub fn assert_numbering_alike(sim: &ClusterSim) {
    let map = sim.map();
    for section in map.sections() {
        let mut numberings = (0..sim.node_count())
            .filter(|&node| {
                let engine = sim.engine(node);
                engine.is_active_member() && engine.section().prefix == section.prefix()
            })
            .map(|node| {
                let events = chorus_engine::membership::all_section_events(
                    sim.engine(node).store(),
                    &section.prefix(),
                    None,
                )
                .expect("store reads");
                let numbering: Vec<(u64, [u8; 16])> = events
                    .iter()
                    .map(|event| (event.position, event.event_id.0))
                    .collect();
                (node, numbering)
            });
        if let Some((first, expected)) = numberings.next() {
            for (node, numbering) in numberings {
                assert!(
                    numbering == expected,
                    "section {}: node {node} numbers its events unlike node {first}",
                    section.prefix()
                );
            }
        }
    }
}

/// Runs until `done` holds (checked every 50 virtual ms), at most `limit_ms`.
pub fn run_until(sim: &mut ClusterSim, limit_ms: u64, done: impl Fn(&ClusterSim) -> bool) -> bool {
    let deadline = sim.now_ms() + limit_ms;
    while sim.now_ms() < deadline {
        if done(sim) {
            return true;
        }
        sim.run_for(millis(50));
    }
    done(sim)
}

/// Every running node that counts itself a member is active, and its section's size agrees
/// with its section's other members.
pub fn membership_settled(sim: &ClusterSim) -> bool {
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
