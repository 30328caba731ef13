//! One seeded engine-mode run (`chorus-sim sweep --engine`): the seed's [`ClusterPlan`]
//! played on a [`ClusterSim`], then every command must be answered and the checkers run.

use std::collections::BTreeMap;

use chorus_engine::CommandOutcome;
use chorus_routing::XorName;

use super::plan::{LOAD_MS, account};
use super::{ClusterPlan, ClusterSim, Step};
use crate::{Violation, ViolationKind};

/// What one random engine-mode run did and found.
#[derive(Clone, Debug, Default)]
pub struct ClusterOutcome {
    /// The seed.
    pub seed: u64,
    /// What the plan did, one line per fault or membership change.
    pub story: Vec<String>,
    /// The faults and membership changes of the plan, counted by kind (and `saga` when the
    /// members ran the transfer saga).
    pub faults: BTreeMap<&'static str, u64>,
    /// Commands sent.
    pub commands: usize,
    /// Commands answered `Committed`.
    pub committed: usize,
    /// Commands never answered within the liveness bound.
    pub unanswered: usize,
    /// What the checkers found (a panic of the simulated code counts as one).
    pub violations: Vec<Violation>,
}

/// Virtual time a run waits, after its faults healed, for every command to be answered.
pub const LIVENESS_BOUND_MS: u64 = 120_000;
/// Virtual time a run then waits for every section's members to hold the same store.
pub const SETTLE_BOUND_MS: u64 = 30_000;

/// One random engine-mode run: [`ClusterPlan::draw`] decides the cluster, the network, the
/// faults, the membership changes and the workload; [`run_plan`] plays it. A panic in the
/// simulated code, or a plan that cannot be set up, is a violation of the seed.
pub fn run_cluster_seed(seed: u64) -> ClusterOutcome {
    let violation = match Violation::catching_panics(|| run_plan(seed, &ClusterPlan::draw(seed)?)) {
        Ok(Ok(outcome)) => return outcome,
        Ok(Err(error)) => Violation {
            kind: ViolationKind::Setup,
            at_ms: 0,
            node: 0,
            detail: format!("the run could not be set up: {error}"),
        },
        Err(panic) => panic,
    };
    ClusterOutcome {
        seed,
        violations: vec![violation],
        ..ClusterOutcome::default()
    }
}

/// Plays `plan` on a new cluster of `seed`: its steps at their times until the load phase
/// ends, then heals, waits up to [`LIVENESS_BOUND_MS`] for every answer, lets the sections
/// settle and runs the checkers.
pub fn run_plan(seed: u64, plan: &ClusterPlan) -> Result<ClusterOutcome, String> {
    let mut sim = ClusterSim::new(seed, plan.setup.clone())?;
    let mut story = vec![plan.headline()];
    let mut faults = BTreeMap::new();
    if plan.saga {
        sim.run_transfer_saga()?;
        story.push("every member runs the transfer saga".to_owned());
        faults.insert("saga", 1);
    }
    for (at, step) in &plan.schedule {
        // Steps at one time run back to back, as one moment of the schedule.
        if *at > sim.now_ms() {
            sim.run_until(*at);
        }
        if let Some(line) = play(&mut sim, step, plan)? {
            story.push(format!("{at} ms: {line}"));
        }
        if let Some(name) = step.fault_name() {
            *faults.entry(name).or_default() += 1;
        }
    }
    sim.run_until(LOAD_MS);
    if let Some(line) = restart_halted(&mut sim, plan)? {
        story.push(line);
    }
    sim.heal();
    let mut answered = sim.run_until_answered(LIVENESS_BOUND_MS);
    sim.settle(SETTLE_BOUND_MS);
    if let Some(line) = probe_until_voted_out(&mut sim, plan)? {
        story.push(line);
        answered &= sim.run_until_answered(LIVENESS_BOUND_MS);
        sim.settle(SETTLE_BOUND_MS);
    }
    let mut outcome = conclude(&sim, seed, story, faults, answered);
    outcome
        .violations
        .extend(check_membership_faults(&sim, plan));
    outcome.violations.extend(check_upgrade(&sim, plan));
    Ok(outcome)
}

/// After a rolling upgrade, every section agreed on the new domain: every member of every
/// section (of the map as it is at the end) runs under version 2.
fn check_upgrade(sim: &ClusterSim, plan: &ClusterPlan) -> Vec<Violation> {
    let upgraded = plan
        .schedule
        .iter()
        .any(|(_, step)| matches!(step, Step::Upgrade { .. }));
    if !upgraded {
        return Vec::new();
    }
    let new = super::Binary::upgraded().domain_version;
    let map = sim.map();
    map.sections()
        .flat_map(|section| sim.listed_members(section))
        .filter(|node| sim.is_running(*node))
        .filter_map(|node| {
            let agreed = &sim.engine(node).section_domain().agreed;
            (agreed.version != new).then(|| Violation {
                kind: ViolationKind::Liveness,
                at_ms: sim.now_ms(),
                node,
                detail: format!("after the rolling upgrade its section still runs domain {agreed}"),
            })
        })
        .collect()
}

/// Virtual time the probe phase lasts at most.
pub const PROBE_BOUND_MS: u64 = 30_000;
/// A probe command every this long.
const PROBE_EVERY_MS: u64 = 200;

/// A section votes out a silent member only while it has work (an idle section makes no
/// rounds, and nobody waits on anyone): after a member vanished or forked, a client keeps
/// opening accounts in its section, through the other members in turn, until some member
/// saw it leave or [`PROBE_BOUND_MS`] passed. Returns the story line, if it ran.
fn probe_until_voted_out(
    sim: &mut ClusterSim,
    plan: &ClusterPlan,
) -> Result<Option<String>, String> {
    let Some(victim) = plan.schedule.iter().find_map(|(_, step)| match step {
        Step::Vanish(node) | Step::Fork(node) => Some(*node),
        _ => None,
    }) else {
        return Ok(None);
    };
    let started = sim.now_ms();
    let victim_name = XorName::from_public_key(&sim.ids[victim].0);
    let mut probes = 0usize;
    while !sim.departed(victim) && sim.now_ms() < started + PROBE_BOUND_MS {
        let map = sim.map();
        let section = map.section_for(&victim_name);
        let entries: Vec<usize> = (0..sim.node_count())
            .filter(|node| {
                *node != victim
                    && sim.is_running(*node)
                    && section.contains(&XorName::from_public_key(&sim.ids[*node].0))
            })
            .collect();
        let stream = (probes..)
            .filter_map(|k| {
                chorus_aggregate::StreamKey::new("BankAccount", &format!("probe{k}")).ok()
            })
            .find(|stream| {
                section
                    .prefix()
                    .matches(&XorName::from_stream_key(&stream.qualified()))
            });
        if let (Some(&node), Some(stream)) = (entries.get(probes % entries.len().max(1)), stream) {
            let open = serde_json::json!({"OpenAccount": {"owner": "probe"}});
            sim.submit(
                node,
                super::command(&format!("probe{probes}"), &stream, open),
            );
        }
        probes += 1;
        sim.run_for(crate::millis(PROBE_EVERY_MS));
    }
    Ok(Some(format!(
        "{} ms: {probes} probe commands sent to node {victim}'s section; voted out: {}",
        started,
        sim.departed(victim)
    )))
}

/// The membership faults' own checks: no stranger became a member; a member that vanished
/// or forked was voted out, where its section could lose a member (the root section, or one
/// above `section_size_min`: merging is not built).
fn check_membership_faults(sim: &ClusterSim, plan: &ClusterPlan) -> Vec<Violation> {
    let mut violations = Vec::new();
    let found = |kind, node, detail: String| Violation {
        kind,
        at_ms: sim.now_ms(),
        node,
        detail,
    };
    for node in 0..sim.node_count() {
        if sim.is_approved(node) {
            continue;
        }
        let admitted = (0..sim.node_count()).any(|member| {
            sim.is_running(member)
                && sim
                    .engine(member)
                    .section()
                    .members
                    .contains(&sim.ids[node])
        });
        if admitted {
            violations.push(found(
                ViolationKind::Membership,
                node,
                "a stranger no operator approved became a member".to_owned(),
            ));
        }
    }
    let mut victims = BTreeMap::new();
    for (_, step) in &plan.schedule {
        if let Step::Vanish(node) | Step::Fork(node) = step {
            victims.insert(*node, step);
        }
    }
    for (node, step) in victims {
        let node = &node;
        let map = sim.map();
        let section = map.section_for(&XorName::from_public_key(&sim.ids[*node].0));
        let removable = section.prefix().is_empty() || section.len() > map.section_size_min();
        if !sim.departed(*node) && removable {
            violations.push(found(
                ViolationKind::Membership,
                *node,
                format!("{step:?}: the member was never voted out"),
            ));
        }
    }
    violations
}

/// Does one step; returns its line of the story (none for client commands).
fn play(sim: &mut ClusterSim, step: &Step, plan: &ClusterPlan) -> Result<Option<String>, String> {
    let line = match step {
        Step::Submit { node, request } => {
            sim.submit(*node, request.clone());
            return Ok(None);
        }
        Step::Partition(side_a, side_b) => {
            sim.partition(side_a, side_b);
            format!("nodes {side_a:?} cut off from {side_b:?}")
        }
        Step::Heal => {
            sim.heal();
            "partition healed".to_owned()
        }
        Step::Crash(node) => {
            sim.crash(*node);
            format!("node {node} crashed")
        }
        Step::Restart(node) => {
            sim.restart(*node)?;
            format!("node {node} restarted")
        }
        Step::Pause(node) => {
            sim.pause(*node);
            format!("node {node} stopped")
        }
        Step::Resume(node) => {
            sim.resume(*node);
            format!("node {node} continues")
        }
        Step::CrashAll => {
            sim.crash_all()?;
            "every node crashed and restarted".to_owned()
        }
        Step::Forge { node, command_id } => forge(sim, *node, command_id, plan.accounts),
        Step::Leave(node) => {
            sim.leave(*node);
            format!("node {node} asks to leave")
        }
        Step::Join => {
            let key = sim.draw_key();
            format!("node {} joins", sim.add_node(key)?)
        }
        Step::Stranger => {
            let key = sim.draw_key();
            format!(
                "node {} (a stranger, not approved) asks to join",
                sim.add_stranger(key)?
            )
        }
        Step::Vanish(node) => {
            sim.crash(*node);
            format!("node {node} crashed for good")
        }
        Step::Fork(node) => {
            let forked = sim.fork(*node);
            format!("node {node} forks its chain (an event to fork: {forked})")
        }
        Step::Upgrade { skip } => upgrade_next(sim, skip)?,
    };
    Ok(Some(line))
}

/// After a rolling upgrade, the operators start again the nodes that halted on the old
/// binary (a node that joined just before the upgrade, or one that left and came back), now
/// on the new one; forkers and vanished nodes stay down.
fn restart_halted(sim: &mut ClusterSim, plan: &ClusterPlan) -> Result<Option<String>, String> {
    let Some(skip) = plan.schedule.iter().find_map(|(_, step)| match step {
        Step::Upgrade { skip } => Some(skip.clone()),
        _ => None,
    }) else {
        return Ok(None);
    };
    let new = super::Binary::upgraded();
    let halted: Vec<usize> = (0..sim.node_count())
        .filter(|node| {
            sim.halted(*node).is_some() && !sim.is_running(*node) && !skip.contains(node)
        })
        .collect();
    if halted.is_empty() {
        return Ok(None);
    }
    for node in &halted {
        sim.install(*node, new.clone());
        sim.restart(*node)?;
    }
    Ok(Some(format!(
        "{LOAD_MS} ms: nodes {halted:?}, halted on the old binary, restarted on the new one"
    )))
}

/// One step of a rolling upgrade (`Step::Upgrade`).
fn upgrade_next(sim: &mut ClusterSim, skip: &[usize]) -> Result<String, String> {
    let new = super::Binary::upgraded();
    sim.install_for_new_nodes(&new);
    let Some(node) = (0..sim.node_count()).find(|node| {
        sim.is_approved(*node) && sim.binary(*node).domain_version != new.domain_version
    }) else {
        return Ok("every node runs the new binary".to_owned());
    };
    // A node that left is not restarted for it (a restart while a leave is under way is
    // another story, see RELIABILITY.md); if it comes back on the old binary and halts,
    // `restart_halted` starts it on the new one.
    let restart = sim.is_running(node) && !skip.contains(&node) && !sim.departed(node);
    sim.install(node, new);
    if !restart {
        return Ok(format!(
            "node {node} gets the new binary for its next start"
        ));
    }
    sim.crash(node);
    sim.restart(node)?;
    Ok(format!("node {node} restarted on the new binary"))
}

/// A forged deposit on the first account of the forger's own section, so that the forgery
/// reaches its section.
fn forge(sim: &mut ClusterSim, node: usize, command_id: &str, accounts: usize) -> String {
    let own = XorName::from_public_key(&sim.ids[node].0);
    let map = sim.map();
    let target = (0..accounts).find_map(|index| {
        let stream = account(index).ok()?;
        map.section_for_stream(&stream.qualified())
            .contains(&own)
            .then_some(stream)
    });
    match target {
        Some(stream) => {
            let taken = sim.forge_deposit(node, &stream, command_id, 1_000);
            format!("node {node} proposes a forged deposit on {stream} (vote taken: {taken})")
        }
        None => format!("node {node} has no account in its section to forge on"),
    }
}

/// The outcome: the checkers' findings, plus a liveness violation for commands never
/// answered and for a run that committed nothing.
fn conclude(
    sim: &ClusterSim,
    seed: u64,
    story: Vec<String>,
    faults: BTreeMap<&'static str, u64>,
    answered: bool,
) -> ClusterOutcome {
    let mut violations = sim.violations();
    let unanswered: Vec<_> = sim
        .submitted()
        .iter()
        .filter(|submitted| submitted.answer.is_none())
        .collect();
    if !answered {
        let examples: Vec<String> = unanswered
            .iter()
            .take(3)
            .map(|submitted| {
                let state = sim.engines[submitted.node]
                    .as_ref()
                    .map_or("down".to_owned(), |engine| format!("{:?}", engine.stats()));
                let request = &submitted.request;
                format!(
                    "{} on {} sent to node {} at {} ms (node: {state})",
                    request.command_id, request.stream, submitted.node, submitted.at_ms
                )
            })
            .collect();
        violations.push(Violation {
            kind: ViolationKind::Liveness,
            at_ms: sim.now_ms(),
            node: unanswered.first().map_or(0, |submitted| submitted.node),
            detail: format!(
                "{} commands unanswered {LIVENESS_BOUND_MS} virtual ms after the faults healed \
                 (first: {})",
                unanswered.len(),
                examples.join("; ")
            ),
        });
    }
    let committed = sim
        .submitted()
        .iter()
        .filter(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
        .count();
    if committed == 0 {
        let detail = "no command was committed".to_owned();
        violations.push(Violation {
            kind: ViolationKind::Liveness,
            at_ms: sim.now_ms(),
            node: 0,
            detail,
        });
    }
    ClusterOutcome {
        seed,
        story,
        faults,
        commands: sim.submitted().len(),
        committed,
        unanswered: unanswered.len(),
        violations,
    }
}
