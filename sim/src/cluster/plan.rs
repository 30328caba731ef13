//! The random run of one seed as data: the cluster, the network, and a schedule of steps
//! (faults, membership changes, client commands) at virtual times, all drawn from the seed
//! before anything runs. [`super::run_plan`] plays it on a [`ClusterSim`](super::ClusterSim).

use chorus_aggregate::{CommandRequest, StreamKey};
use chorus_consensus::BlockMode;
use chorus_demo::bank_account::BankAccountCommand;
use chorus_demo::transfer::TransferCommand;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ClusterSetup, command};
use crate::network::NetworkConfig;

/// How long clients send commands and faults happen; everything heals at its end.
pub const LOAD_MS: u64 = 3_000;
/// The workload's pace: every `STEP_MS`, two account commands and now and then a transfer.
const STEP_MS: u64 = 100;

/// One thing the plan does at its time.
#[derive(Clone, Debug)]
pub enum Step {
    /// A client sends `request` to `node`.
    Submit {
        /// The node the client reaches.
        node: usize,
        /// The command.
        request: CommandRequest,
    },
    /// Every link between the two sides is cut, both ways.
    Partition(Vec<usize>, Vec<usize>),
    /// Every partition heals.
    Heal,
    /// The node crashes.
    Crash(usize),
    /// The crashed node restarts from its disk.
    Restart(usize),
    /// The node stops as under SIGSTOP.
    Pause(usize),
    /// The stopped node continues.
    Resume(usize),
    /// Every running node crashes, then all restart.
    CrashAll,
    /// The (Byzantine) node proposes a forged deposit, under `command_id`, on an account of
    /// its own section, and votes for it.
    Forge {
        /// The forger.
        node: usize,
        /// The made-up command id.
        command_id: String,
    },
    /// The node asks its section to let it leave.
    Leave(usize),
    /// A new node starts and joins (its key approved by every operator first).
    Join,
    /// A node with a fresh key that no operator approved asks to join, again and again: it
    /// must never become a member.
    Stranger,
    /// The node crashes and never comes back: its section must vote it out (the liveness
    /// rule) and go on.
    Vanish(usize),
    /// The (Byzantine) member signs a second event with the index of its latest and sends
    /// it to its section, several times: its section must see the fork and vote it out.
    Fork(usize),
    /// A rolling upgrade's next step: the lowest-numbered approved node still on the old
    /// binary restarts on the new one (domain version 2, standing in for 1; a node that is
    /// down gets it for its next start), and nodes that join from now on run it. Nodes in
    /// `skip` (vanishing or forking ones) get it without a restart: a forker left on the old
    /// binary halts at the upgrade if it is still a member, and stops.
    Upgrade {
        /// Nodes not restarted for it.
        skip: Vec<usize>,
    },
}

impl Step {
    /// The name a sweep counts the step under (`None`: client commands, not counted).
    pub fn fault_name(&self) -> Option<&'static str> {
        Some(match self {
            Step::Submit { .. } => return None,
            Step::Partition(..) => "partition",
            Step::Heal => "heal",
            Step::Crash(_) => "crash",
            Step::Restart(_) => "restart",
            Step::Pause(_) => "pause",
            Step::Resume(_) => "resume",
            Step::CrashAll => "crash-all",
            Step::Forge { .. } => "forge",
            Step::Leave(_) => "leave",
            Step::Join => "join",
            Step::Stranger => "stranger",
            Step::Vanish(_) => "vanish",
            Step::Fork(_) => "fork",
            Step::Upgrade { .. } => "upgrade",
        })
    }
}

/// A random engine-mode run, fully decided by its seed.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// The cluster and its network.
    pub setup: ClusterSetup,
    /// Whether every member runs the transfer saga.
    pub saga: bool,
    /// The accounts the workload uses (`BankAccount@a0` ..).
    pub accounts: usize,
    /// What happens when, in time order (steps at one time in the order drawn).
    pub schedule: Vec<(u64, Step)>,
}

impl ClusterPlan {
    /// Draws the plan of `seed`: 4 to 16 nodes in 1, 2 or 4 sections (8 or more in 2 or 4), the mode, the network
    /// (loss, duplication, reordering), whether the saga runs, the faults of a 3 s load phase
    /// and the workload (deposits, withdrawals, transfers).
    pub fn draw(seed: u64) -> Result<Self, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc1u64.rotate_left(56));
        let mut setup = draw_setup(&mut rng);
        let nodes = setup.nodes;
        let saga = rng.gen_bool(0.5);
        let accounts = rng.gen_range(2..8);
        let mut schedule = Vec::new();
        for index in 0..accounts {
            let open = BankAccountCommand::OpenAccount {
                owner: format!("o{index}"),
            };
            let request = command(&format!("open{index}"), &account(index)?, to_json(open)?);
            let node = rng.gen_range(0..nodes);
            schedule.push((0, Step::Submit { node, request }));
        }
        schedule.extend(draw_faults(&mut rng, nodes, seed));
        draw_workload(&mut rng, nodes, accounts, &mut schedule)?;
        // From a generator of their own, so the rest of a seed's plan is what it was before
        // these faults existed.
        let membership = draw_membership_faults(seed, nodes, &schedule);
        setup.spare_nodes += membership
            .iter()
            .filter(|(_, step)| matches!(step, Step::Stranger))
            .count();
        schedule.extend(membership);
        let upgrade = draw_upgrade(seed, nodes, &schedule)?;
        if !upgrade.is_empty() {
            setup.binary = super::Binary::stamped();
        }
        schedule.extend(upgrade);
        // Stable: at one time, faults (drawn first) come before that step's commands.
        schedule.sort_by_key(|(at, _)| *at);
        Ok(ClusterPlan {
            setup,
            saga,
            accounts,
            schedule,
        })
    }

    /// The first line of the run's story: the cluster and the network.
    pub fn headline(&self) -> String {
        let network = &self.setup.network;
        format!(
            "{} nodes in {} section(s), {:?} mode, drop {:.2} duplicate {:.2} reorder {:.2}",
            self.setup.nodes,
            self.setup.sections.unwrap_or(1),
            self.setup.block_mode,
            network.drop_probability,
            network.duplicate_probability,
            network.reorder_probability
        )
    }
}

/// `BankAccount@a{index}`.
pub(super) fn account(index: usize) -> Result<StreamKey, String> {
    StreamKey::new("BankAccount", &format!("a{index}")).map_err(|error| error.to_string())
}

fn to_json(command: impl serde::Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(command).map_err(|error| error.to_string())
}

fn draw_setup(rng: &mut ChaCha8Rng) -> ClusterSetup {
    let sections = [1usize, 2, 4][rng.gen_range(0..3)];
    let per_section = rng.gen_range(4..=(16 / sections).max(4));
    let block_mode = if rng.gen_bool(0.5) {
        BlockMode::Supermajority
    } else {
        BlockMode::Single
    };
    let network = NetworkConfig {
        drop_probability: rng.gen_range(0.0..0.1),
        duplicate_probability: rng.gen_range(0.0..0.1),
        reorder_probability: rng.gen_range(0.0..0.2),
        ..NetworkConfig::default()
    };
    ClusterSetup {
        nodes: sections * per_section,
        sections: Some(sections),
        block_mode,
        network,
        spare_nodes: 1,
        // Longer than any fault meant to heal (the longest lasts 1.5 s), so only a node
        // that vanishes or forks is voted out.
        remove_silent_after_ms: Some(SILENCE_MS),
        ..ClusterSetup::default()
    }
}

/// The liveness rule's span in random runs.
pub const SILENCE_MS: u64 = 5_000;

/// The membership faults: a stranger asking to join (1,000 ms), and a member that vanishes
/// for good (1,200 ms) or forks (at 1,200, 1,400 and 1,600 ms). A node that vanishes or forks
/// is drawn only in runs with no forger and no leaver, and among nodes no other fault
/// touches: with two faulty members a section of four may rightly stop (the bound is f = 1).
fn draw_membership_faults(seed: u64, nodes: usize, schedule: &[(u64, Step)]) -> Vec<(u64, Step)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d65_6d62_6572_7321);
    let mut faults = Vec::new();
    if rng.gen_bool(0.3) {
        faults.push((1_000, Step::Stranger));
    }
    let mut touched = Vec::new();
    let mut byzantine_or_leaving = false;
    for (_, step) in schedule {
        match step {
            Step::Crash(node) | Step::Pause(node) => touched.push(*node),
            Step::Partition(side_a, _) => touched.extend(side_a),
            Step::Forge { .. } | Step::Leave(_) => byzantine_or_leaving = true,
            _ => {}
        }
    }
    let candidates: Vec<usize> = (0..nodes).filter(|node| !touched.contains(node)).collect();
    let kind = rng.gen_range(0..4);
    if byzantine_or_leaving || candidates.is_empty() || kind >= 2 {
        return faults;
    }
    let node = candidates[rng.gen_range(0..candidates.len())];
    if kind == 0 {
        faults.push((1_200, Step::Vanish(node)));
    } else {
        faults.extend([1_200, 1_400, 1_600].map(|at| (at, Step::Fork(node))));
    }
    faults
}

/// A rolling upgrade in a quarter of the runs (from a generator of its own, so the rest of
/// the plan is what it was before): from 1,800 ms, one node every 60 ms, one step more
/// than there are nodes (for a joiner), while the load and the other faults go on; and
/// `Stamp` commands (`Binary::stamped`) from 1,500 ms to 2,900 ms, whose events say which
/// release decided under which agreed version, so a member that applied the new domain's
/// blocks with the old code would hold another store.
fn draw_upgrade(
    seed: u64,
    nodes: usize,
    schedule: &[(u64, Step)],
) -> Result<Vec<(u64, Step)>, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7570_6772_6164_6521);
    if !rng.gen_bool(0.25) {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for index in 0..15u64 {
        let stream = StreamKey::new("Stamp", &format!("s{}", index % 3))
            .map_err(|error| error.to_string())?;
        let stamp = to_json(super::binary::StampCommand::Stamp)?;
        let request = command(&format!("stamp{index}"), &stream, stamp);
        let node = rng.gen_range(0..nodes);
        steps.push((1_500 + index * 100, Step::Submit { node, request }));
    }
    let skip: Vec<usize> = schedule
        .iter()
        .filter_map(|(_, step)| match step {
            Step::Vanish(node) | Step::Fork(node) => Some(*node),
            _ => None,
        })
        .collect();
    steps.extend(
        (0..=nodes as u64).map(|index| (1_800 + index * 60, Step::Upgrade { skip: skip.clone() })),
    );
    Ok(steps)
}

/// The fault schedule, at fixed times of the load phase: a node cut off (500 to 2,000 ms), a
/// crash and restart (500 to 2,000), a forgery (1,000), a leave and a join (1,500), a node
/// stopped twice (600 to 1,400 and 1,700 to 2,500), a crash of every node (2,700). Each is
/// drawn on or off.
fn draw_faults(rng: &mut ChaCha8Rng, nodes: usize, seed: u64) -> Vec<(u64, Step)> {
    let mut pick = |probability: f64| rng.gen_bool(probability).then(|| rng.gen_range(0..nodes));
    let partitioned = pick(0.5);
    let crashed = pick(0.5);
    let forger = pick(0.5);
    let leaver = pick(0.4);
    let joins = rng.gen_bool(0.4);
    let stalled = rng.gen_bool(0.4).then(|| rng.gen_range(0..nodes));
    let crash_all = rng.gen_bool(0.2);
    let mut schedule = Vec::new();
    if let Some(node) = partitioned {
        let others: Vec<usize> = (0..nodes).filter(|other| *other != node).collect();
        schedule.push((500, Step::Partition(vec![node], others)));
        schedule.push((2_000, Step::Heal));
    }
    if let Some(node) = crashed {
        schedule.push((500, Step::Crash(node)));
        schedule.push((2_000, Step::Restart(node)));
    }
    if let Some(node) = stalled {
        schedule.extend([
            (600, Step::Pause(node)),
            (1_400, Step::Resume(node)),
            (1_700, Step::Pause(node)),
            (2_500, Step::Resume(node)),
        ]);
    }
    if let Some(node) = forger {
        let command_id = format!("forged{seed}");
        schedule.push((1_000, Step::Forge { node, command_id }));
    }
    if let Some(node) = leaver {
        schedule.push((1_500, Step::Leave(node)));
    }
    if joins {
        schedule.push((1_500, Step::Join));
    }
    if crash_all {
        schedule.push((2_700, Step::CrashAll));
    }
    schedule
}

/// Every 100 ms of the load phase: a transfer between two accounts one time in ten, and two
/// deposits or withdrawals on random accounts, each from a random node.
fn draw_workload(
    rng: &mut ChaCha8Rng,
    nodes: usize,
    accounts: usize,
    schedule: &mut Vec<(u64, Step)>,
) -> Result<(), String> {
    let mut sent = schedule.len();
    for step in 0..LOAD_MS / STEP_MS {
        let at = step * STEP_MS;
        let mut submit = |node: usize, request: CommandRequest| {
            schedule.push((at, Step::Submit { node, request }));
        };
        if rng.gen_bool(0.1) {
            let from = rng.gen_range(0..accounts);
            let to = (from + rng.gen_range(1..accounts)) % accounts;
            let start = TransferCommand::StartTransfer {
                from: format!("a{from}"),
                to: format!("a{to}"),
                amount: rng.gen_range(1..30),
            };
            let stream = StreamKey::new("Transfer", &format!("t{step}"))
                .map_err(|error| error.to_string())?;
            submit(
                rng.gen_range(0..nodes),
                command(&format!("t{step}"), &stream, to_json(start)?),
            );
            sent += 1;
        }
        for _ in 0..2 {
            let index = rng.gen_range(0..accounts);
            let body = if rng.gen_bool(0.3) {
                BankAccountCommand::Withdraw {
                    amount: rng.gen_range(1..40),
                    transfer: None,
                }
            } else {
                BankAccountCommand::Deposit {
                    amount: rng.gen_range(1..20),
                    transfer: None,
                }
            };
            let id = format!("c{step}-{index}-{sent}");
            submit(
                rng.gen_range(0..nodes),
                command(&id, &account(index)?, to_json(body)?),
            );
            sent += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_one_plan_in_time_order_within_the_load_phase() {
        for seed in 0..100 {
            let plan = ClusterPlan::draw(seed).expect("plan");
            let again = ClusterPlan::draw(seed).expect("plan");
            assert_eq!(format!("{plan:?}"), format!("{again:?}"), "seed {seed}");
            let nodes = plan.setup.nodes;
            assert!((4..=16).contains(&nodes), "seed {seed}: {nodes} nodes");
            let times: Vec<u64> = plan.schedule.iter().map(|(at, _)| *at).collect();
            assert!(
                times.windows(2).all(|pair| pair[0] <= pair[1]),
                "seed {seed}"
            );
            assert!(times.iter().all(|at| *at < LOAD_MS), "seed {seed}");
            for (_, step) in &plan.schedule {
                let node = match step {
                    Step::Submit { node, .. }
                    | Step::Crash(node)
                    | Step::Restart(node)
                    | Step::Pause(node)
                    | Step::Resume(node)
                    | Step::Leave(node)
                    | Step::Vanish(node)
                    | Step::Fork(node)
                    | Step::Forge { node, .. } => *node,
                    Step::Partition(a, b) => {
                        assert_eq!(a.len() + b.len(), nodes, "seed {seed}");
                        a[0]
                    }
                    Step::Heal
                    | Step::CrashAll
                    | Step::Join
                    | Step::Stranger
                    | Step::Upgrade { .. } => 0,
                };
                assert!(node < nodes, "seed {seed}: {step:?}");
            }
        }
    }

    #[test]
    fn every_crash_restarts_and_every_pause_resumes_and_every_partition_heals() {
        for seed in 0..100 {
            let plan = ClusterPlan::draw(seed).expect("plan");
            let count = |wanted: fn(&Step) -> bool| {
                plan.schedule
                    .iter()
                    .filter(|(_, step)| wanted(step))
                    .count()
            };
            assert_eq!(
                count(|step| matches!(step, Step::Crash(_))),
                count(|step| matches!(step, Step::Restart(_))),
                "seed {seed}"
            );
            assert_eq!(
                count(|step| matches!(step, Step::Pause(_))),
                count(|step| matches!(step, Step::Resume(_))),
                "seed {seed}"
            );
            assert_eq!(
                count(|step| matches!(step, Step::Partition(..))),
                count(|step| matches!(step, Step::Heal)),
                "seed {seed}"
            );
            // The accounts open first, one command each.
            for (index, (at, step)) in plan.schedule.iter().take(plan.accounts).enumerate() {
                let Step::Submit { request, .. } = step else {
                    panic!("seed {seed}: step {index} is {step:?}");
                };
                assert_eq!(*at, 0, "seed {seed}");
                assert_eq!(request.stream, account(index).expect("name"), "seed {seed}");
                assert!(
                    request.command.get("OpenAccount").is_some(),
                    "seed {seed}: {request:?}"
                );
            }
        }
    }
}
