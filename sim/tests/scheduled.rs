//! Scheduled commands against a faulty member: the adversary is a member that proposes a
//! scheduled command (`not_before_ms`) before its time, hoping to make a timeout fire early.
//! The block's agreed time decides: every member skips it alike, records nothing, and the
//! command applies once proposed again at or after its time.

mod common;

use chorus_aggregate::{Direction, StreamKey};
use chorus_consensus::BlockMode;
use chorus_demo::bank_account::BankAccountCommand;
use chorus_engine::{CommandOutcome, Proposal};
use chorus_sim::cluster::{ClusterSetup, ClusterSim, command};
use chorus_sim::{millis, secs};
use common::bank;

fn events_of(sim: &ClusterSim, node: usize, stream: &StreamKey) -> usize {
    sim.engine(node)
        .store()
        .read_stream(stream, 1, Direction::Forward, 100)
        .expect("read")
        .events
        .len()
}

#[test]
fn a_scheduled_command_a_faulty_member_proposes_early_is_not_applied() {
    for (seed, block_mode) in [(71, BlockMode::Single), (72, BlockMode::Supermajority)] {
        let setup = ClusterSetup {
            nodes: 4,
            block_mode,
            ..ClusterSetup::default()
        };
        let mut sim = ClusterSim::new(seed, setup).expect("cluster");
        let stream = StreamKey::new("BankAccount", "early").expect("key");
        let open = bank(BankAccountCommand::OpenAccount {
            owner: "o".to_owned(),
        });
        sim.submit(0, command("open-early", &stream, open));
        assert!(sim.run_until_answered(30_000), "seed {seed}: not opened");
        let due = sim.now_ms() + 60_000;
        let deposit = bank(BankAccountCommand::Deposit {
            amount: 5,
            transfer: None,
        });
        let early = command("early", &stream, deposit).not_before(due);
        // In Single mode its vote alone makes a block (skipped: early); in Supermajority
        // mode honest members do not second it before its time.
        let proposal = Proposal::Command(early.clone());
        assert!(sim.propose_raw(1, proposal.encode().expect("encodes")));
        sim.run_for(secs(3));
        for node in 0..4 {
            assert_eq!(
                sim.engine(node)
                    .store()
                    .command_record(early.command_id)
                    .expect("read"),
                None,
                "seed {seed}: node {node} recorded it before its time"
            );
            assert_eq!(events_of(&sim, node, &stream), 1, "seed {seed}");
        }
        // Sent again once its time has passed (the idle section's clock is moved on by
        // ticks; until it is, the answer says "not due yet"): it applies, once.
        sim.run_for(secs(60));
        let mut answers = Vec::new();
        for _ in 0..20 {
            let ticket = sim.submit(2, early.clone());
            assert!(sim.run_until_answered(30_000), "seed {seed}: unanswered");
            let answer = sim.submitted()[ticket]
                .answer
                .clone()
                .map(|(answer, _)| answer);
            answers.push(answer.clone());
            if matches!(answer, Some(CommandOutcome::Committed(_))) {
                break;
            }
            sim.run_for(millis(500));
        }
        assert!(
            matches!(answers.last(), Some(Some(CommandOutcome::Committed(_)))),
            "seed {seed}: {answers:?}"
        );
        sim.settle(10_000);
        for node in 0..4 {
            assert_eq!(events_of(&sim, node, &stream), 2, "seed {seed}");
        }
        sim.assert_no_violations();
    }
}
