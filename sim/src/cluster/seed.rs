//! One seeded engine-mode run (`chorus-sim sweep --engine`): sections, workload and faults
//! drawn from the seed, then the checkers.

use chorus_aggregate::StreamKey;
use chorus_consensus::BlockMode;
use chorus_engine::CommandOutcome;
use chorus_routing::XorName;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::NetworkConfig;

use super::{ClusterSetup, ClusterSim, command};

/// What one random engine-mode run did and found.
#[derive(Clone, Debug, Default)]
pub struct ClusterOutcome {
    /// The seed.
    pub seed: u64,
    /// What the seed decided and what happened, one line each.
    pub story: Vec<String>,
    /// Commands sent, and those answered `Committed`.
    pub commands: usize,
    /// Commands answered `Committed`.
    pub committed: usize,
    /// Commands never answered within the liveness bound.
    pub unanswered: usize,
    /// What the checkers found (a panic of the simulated code counts as one).
    pub violations: Vec<String>,
}

/// Virtual time a run waits, after its faults healed, for every command to be answered.
pub const LIVENESS_BOUND_MS: u64 = 120_000;

/// One random engine-mode run: the seed decides the cluster (8 to 16 nodes in 1, 2 or 4
/// sections, the mode, whether the transfer saga runs), the network (loss, duplication,
/// reordering), a fault schedule (a partition, a crash and restart, a member stopped twice
/// in a row, a crash of every node, a Byzantine member's forged proposal), membership changes (a member leaving, a node joining) and the workload
/// (deposits, withdrawals, transfers);
/// then everything heals, every command must be answered within `LIVENESS_BOUND_MS`, and the
/// checkers run. A panic in the simulated code is a violation of the seed.
pub fn run_cluster_seed(seed: u64) -> ClusterOutcome {
    let result = std::panic::catch_unwind(|| run_cluster_seed_inner(seed));
    match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => ClusterOutcome {
            seed,
            violations: vec![format!("the run could not be set up: {error}")],
            ..ClusterOutcome::default()
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            ClusterOutcome {
                seed,
                violations: vec![format!("panic: {message}")],
                ..ClusterOutcome::default()
            }
        }
    }
}

fn run_cluster_seed_inner(seed: u64) -> Result<ClusterOutcome, String> {
    use chorus_demo::bank_account::BankAccountCommand;

    let mut plan = ChaCha8Rng::seed_from_u64(seed ^ 0xc1u64.rotate_left(56));
    let sections = [1usize, 2, 4][plan.gen_range(0..3)];
    let per_section = plan.gen_range(4..=(16 / sections).max(4));
    let block_mode = if plan.gen_bool(0.5) {
        BlockMode::Supermajority
    } else {
        BlockMode::Single
    };
    let network = NetworkConfig {
        drop_probability: plan.gen_range(0.0..0.1),
        duplicate_probability: plan.gen_range(0.0..0.1),
        reorder_probability: plan.gen_range(0.0..0.2),
        ..NetworkConfig::default()
    };
    let nodes = sections * per_section;
    let mut story = vec![format!(
        "{nodes} nodes in {sections} section(s), {block_mode:?} mode, drop {:.2} duplicate {:.2} reorder {:.2}",
        network.drop_probability, network.duplicate_probability, network.reorder_probability
    )];
    let setup = ClusterSetup {
        nodes,
        sections: Some(sections),
        block_mode,
        network,
        spare_nodes: 1,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(seed, setup)?;
    if plan.gen_bool(0.5) {
        sim.run_transfer_saga()?;
        story.push("every member runs the transfer saga".to_owned());
    }
    let accounts = plan.gen_range(2..8);
    let account = |index: usize| {
        StreamKey::new("BankAccount", &format!("a{index}")).map_err(|e| e.to_string())
    };
    for index in 0..accounts {
        let open = serde_json::to_value(BankAccountCommand::OpenAccount {
            owner: format!("o{index}"),
        })
        .map_err(|error| error.to_string())?;
        let node = plan.gen_range(0..nodes);
        sim.submit(
            node,
            command(&format!("open{index}"), &account(index)?, open),
        );
    }
    // The fault schedule, at fixed virtual times within a 3 s load phase.
    let partitioned = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let crashed = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let forger = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let leaver = plan.gen_bool(0.4).then(|| plan.gen_range(0..nodes));
    let joins = plan.gen_bool(0.4);
    // One member stopped twice in a row (SIGSTOP, SIGCONT), and a crash of every node.
    let stalled = plan.gen_bool(0.4).then(|| plan.gen_range(0..nodes));
    let crash_all = plan.gen_bool(0.2);
    let load_ms = 3_000;
    for step in 0..load_ms / 100 {
        let now = step * 100;
        if now == 500 {
            if let Some(node) = partitioned {
                let others: Vec<usize> = (0..nodes).filter(|other| *other != node).collect();
                sim.network_mut().block(&[node], &others);
                sim.network_mut().block(&others, &[node]);
                story.push(format!("{now} ms: node {node} cut off"));
            }
            if let Some(node) = crashed {
                sim.crash(node);
                story.push(format!("{now} ms: node {node} crashed"));
            }
        }
        if let Some(node) = stalled {
            if now == 600 || now == 1_700 {
                sim.pause(node);
                story.push(format!("{now} ms: node {node} stopped"));
            }
            if now == 1_400 || now == 2_500 {
                sim.resume(node);
                story.push(format!("{now} ms: node {node} continues"));
            }
        }
        if now == 2_700 && crash_all {
            let running: Vec<usize> = (0..sim.node_count())
                .filter(|node| sim.is_running(*node))
                .collect();
            for node in &running {
                sim.crash(*node);
            }
            for node in &running {
                sim.restart(*node)?;
            }
            story.push(format!("{now} ms: every node crashed and restarted"));
        }
        if now == 1_000 {
            if let Some(node) = forger {
                // A stream of the forger's own section, so the forgery reaches its section.
                let own = XorName::from_public_key(&sim.ids[node].0);
                let target = (0..accounts).find_map(|index| {
                    let stream = account(index).ok()?;
                    sim.map()
                        .section_for_stream(&stream.qualified())
                        .contains(&own)
                        .then_some(stream)
                });
                if let Some(stream) = target {
                    let taken = sim.forge_deposit(node, &stream, &format!("forged{seed}"), 1_000);
                    story.push(format!(
                        "{now} ms: node {node} proposes a forged deposit on {stream} (vote taken: {taken})"
                    ));
                }
            }
        }
        if now == 1_500 {
            if let Some(node) = leaver {
                sim.leave(node);
                story.push(format!("{now} ms: node {node} asks to leave"));
            }
            if joins {
                let key = sim.draw_key();
                let node = sim.add_node(key)?;
                story.push(format!("{now} ms: node {node} joins"));
            }
        }
        if now == 2_000 {
            if partitioned.is_some() {
                sim.network_mut().heal();
                story.push(format!("{now} ms: partition healed"));
            }
            if let Some(node) = crashed {
                sim.restart(node)?;
                story.push(format!("{now} ms: node {node} restarted"));
            }
        }
        // Now and then a transfer between two accounts (the saga moves the money, if it runs).
        if accounts >= 2 && plan.gen_bool(0.1) {
            let from = plan.gen_range(0..accounts);
            let to = (from + plan.gen_range(1..accounts)) % accounts;
            let start =
                serde_json::to_value(chorus_demo::transfer::TransferCommand::StartTransfer {
                    from: format!("a{from}"),
                    to: format!("a{to}"),
                    amount: plan.gen_range(1..30),
                })
                .map_err(|error| error.to_string())?;
            let stream = StreamKey::new("Transfer", &format!("t{step}"))
                .map_err(|error| error.to_string())?;
            let node = plan.gen_range(0..nodes);
            sim.submit(node, command(&format!("t{step}"), &stream, start));
        }
        // Two commands per 100 ms on random accounts from random nodes.
        for _ in 0..2 {
            let index = plan.gen_range(0..accounts);
            let body = if plan.gen_bool(0.3) {
                BankAccountCommand::Withdraw {
                    amount: plan.gen_range(1..40),
                    transfer: None,
                }
            } else {
                BankAccountCommand::Deposit {
                    amount: plan.gen_range(1..20),
                    transfer: None,
                }
            };
            let json = serde_json::to_value(body).map_err(|error| error.to_string())?;
            let node = plan.gen_range(0..nodes);
            sim.submit(
                node,
                command(
                    &format!("c{step}-{index}-{}", sim.submitted().len()),
                    &account(index)?,
                    json,
                ),
            );
        }
        sim.run_for(100);
    }
    let answered = sim.run_until_answered(LIVENESS_BOUND_MS);
    sim.settle(30_000);
    let mut violations = sim.check();
    let unanswered = sim
        .submitted()
        .iter()
        .filter(|submitted| submitted.answer.is_none())
        .count();
    if !answered {
        let examples: Vec<String> = sim
            .submitted()
            .iter()
            .filter(|submitted| submitted.answer.is_none())
            .take(3)
            .map(|submitted| {
                format!(
                    "{} on {} sent to node {} at {} ms (node: {})",
                    submitted.request.command_id,
                    submitted.request.stream,
                    submitted.node,
                    submitted.at_ms,
                    sim.engines[submitted.node]
                        .as_ref()
                        .map_or("down".to_owned(), |engine| format!("{:?}", engine.stats()))
                )
            })
            .collect();
        violations.push(format!(
            "{unanswered} commands unanswered {LIVENESS_BOUND_MS} virtual ms after the faults healed (first: {})",
            examples.join("; ")
        ));
    }
    let committed = sim
        .submitted()
        .iter()
        .filter(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
        .count();
    if committed == 0 {
        violations.push("no command was committed".to_owned());
    }
    Ok(ClusterOutcome {
        seed,
        story,
        commands: sim.submitted().len(),
        committed,
        unanswered,
        violations,
    })
}
