//! Random runs: a seed alone decides the group size, the block mode, the Byzantine members,
//! the network and a schedule of faults; the run then heals everything and checks that all
//! honest proposals get agreed. `run_seed(seed, options)` is the whole story, so a failing
//! seed replays with the same options.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use chorus_consensus::{BlockMode, faulty_max};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::byzantine::Behaviour;
use crate::checker::Violation;
use crate::network::NetworkConfig;
use crate::sim::{Setup, Sim, SimStats};

/// A kind of fault a random run may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Symmetric partitions that later heal.
    Partition,
    /// One-way partitions that later heal.
    OneWayPartition,
    /// Random message loss (up to 30%).
    Drop,
    /// Random message duplication.
    Duplicate,
    /// Messages held back far beyond jitter.
    Reorder,
    /// Crashes, losing what was not durable, and restarts from the durable log.
    Crash,
    /// Nodes that gossip and answer several times slower.
    Slow,
    /// Byzantine members, with this behaviour.
    Byzantine(Behaviour),
}

impl FaultKind {
    /// Every fault kind.
    pub fn all() -> Vec<FaultKind> {
        let mut kinds = vec![
            FaultKind::Partition,
            FaultKind::OneWayPartition,
            FaultKind::Drop,
            FaultKind::Duplicate,
            FaultKind::Reorder,
            FaultKind::Crash,
            FaultKind::Slow,
        ];
        kinds.extend(Behaviour::BYZANTINE.into_iter().map(FaultKind::Byzantine));
        kinds
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one-way-partition",
            FaultKind::Drop => "drop",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Reorder => "reorder",
            FaultKind::Crash => "crash",
            FaultKind::Slow => "slow",
            FaultKind::Byzantine(behaviour) => behaviour.name(),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of fault kinds, parsed from `all`, `none`, `byzantine`, `network` or a
/// comma-separated list of names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSet(pub BTreeSet<FaultKind>);

impl FromStr for FaultSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut kinds = BTreeSet::new();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "all" => kinds.extend(FaultKind::all()),
                "none" => {}
                "byzantine" => {
                    kinds.extend(Behaviour::BYZANTINE.into_iter().map(FaultKind::Byzantine))
                }
                "network" => kinds.extend([
                    FaultKind::Partition,
                    FaultKind::OneWayPartition,
                    FaultKind::Drop,
                    FaultKind::Duplicate,
                    FaultKind::Reorder,
                ]),
                _ => {
                    let kind = FaultKind::all()
                        .into_iter()
                        .find(|kind| kind.name() == name)
                        .ok_or_else(|| {
                            let names: Vec<&str> =
                                FaultKind::all().into_iter().map(FaultKind::name).collect();
                            format!(
                                "unknown fault {name:?}; expected all, none, byzantine, network \
                                 or some of: {}",
                                names.join(", ")
                            )
                        })?;
                    kinds.insert(kind);
                }
            }
        }
        Ok(FaultSet(kinds))
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        if self.0.len() == FaultKind::all().len() {
            return f.write_str("all");
        }
        let names: Vec<&str> = self.0.iter().map(|kind| kind.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// Parses `4..=10`, `4..11` or `7`.
pub fn parse_node_range(text: &str) -> Result<RangeInclusive<usize>, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|_| format!("{part:?} is not a node count"))
    };
    let range = if let Some((low, high)) = text.split_once("..=") {
        number(low)?..=number(high)?
    } else if let Some((low, high)) = text.split_once("..") {
        let high = number(high)?;
        if high == 0 {
            return Err(format!("empty node range {text:?}"));
        }
        number(low)?..=high - 1
    } else {
        let count = number(text)?;
        count..=count
    };
    if range.is_empty() || *range.start() < 2 {
        return Err(format!(
            "node range {text:?} must be non-empty and start at 2 or more (a group of one \
             never gossips)"
        ));
    }
    if *range.end() > 64 {
        return Err(format!("node range {text:?}: at most 64 nodes per group"));
    }
    Ok(range)
}

/// What a random run may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepOptions {
    /// Group sizes to draw from.
    pub nodes: RangeInclusive<usize>,
    /// Fault kinds to draw from.
    pub faults: FaultSet,
    /// Longest fault phase, in virtual milliseconds (each run draws its own, at least a
    /// quarter of this).
    pub fault_phase_ms_max: u64,
    /// Byzantine members per run: drawn from 0..=f when `None`; a fixed count (which may
    /// exceed f, to show what breaks) otherwise.
    pub byzantine_count: Option<usize>,
    /// How long after the faults heal every honest proposal must be agreed, in virtual ms.
    pub liveness_bound_ms: u64,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            nodes: 4..=10,
            faults: FaultSet(FaultKind::all().into_iter().collect()),
            fault_phase_ms_max: 4_000,
            byzantine_count: None,
            liveness_bound_ms: Setup::default().liveness_bound_ms,
        }
    }
}

impl SweepOptions {
    /// The command-line flags that reproduce these options.
    pub fn flags(&self) -> String {
        let mut flags = format!(
            "--nodes {}..={} --faults {}",
            self.nodes.start(),
            self.nodes.end(),
            self.faults
        );
        let defaults = SweepOptions::default();
        if self.fault_phase_ms_max != defaults.fault_phase_ms_max {
            flags.push_str(&format!(" --fault-phase-ms {}", self.fault_phase_ms_max));
        }
        if let Some(count) = self.byzantine_count {
            flags.push_str(&format!(" --byzantine {count}"));
        }
        if self.liveness_bound_ms != defaults.liveness_bound_ms {
            flags.push_str(&format!(" --liveness-ms {}", self.liveness_bound_ms));
        }
        flags
    }
}

/// One fault action at a point of virtual time.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Partition(Vec<usize>, Vec<usize>),
    OneWay(Vec<usize>, Vec<usize>),
    Heal,
    Rates {
        drop: f64,
        duplicate: f64,
        reorder: f64,
    },
    Crash(usize),
    Restart(usize),
    Slow(usize, u64),
}

/// A random run, fully decided by its seed.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The group.
    pub setup: Setup,
    /// When the faults stop: everything heals here.
    pub heal_at_ms: u64,
    schedule: Vec<(u64, Action)>,
}

impl Plan {
    /// Draws the plan of `seed`: the group and its network, its Byzantine members, then
    /// the faults of a fault phase.
    pub fn new(seed: u64, options: &SweepOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(10);
        let mut setup = draw_setup(&mut rng, options);
        draw_byzantine(&mut rng, options, &mut setup);
        let phase_ms = rng.gen_range(options.fault_phase_ms_max / 4..=options.fault_phase_ms_max);
        let mut schedule: Vec<(u64, Action)> = draw_rates(&mut rng, &options.faults, phase_ms)
            .into_iter()
            .collect();
        schedule.extend(draw_timed(&mut rng, &options.faults, &setup, phase_ms));
        // Stable sort: actions at the same time keep the order they were drawn in.
        schedule.sort_by_key(|(at, _)| *at);
        Plan {
            setup,
            heal_at_ms: phase_ms,
            schedule,
        }
    }

    /// One line per scheduled fault, for replays.
    pub fn story(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{} nodes, {:?} blocks, byzantine {:?}, {} proposals/s/node of {} B, latency \
             {}..={} ms (+{} ms jitter)",
            self.setup.nodes,
            self.setup.consensus.block_mode,
            self.setup
                .byzantine
                .iter()
                .map(|(node, behaviour)| format!("{node}:{behaviour}"))
                .collect::<Vec<_>>(),
            self.setup.proposals_per_node_per_sec,
            self.setup.payload_bytes,
            self.setup.network.latency_min_ms,
            self.setup.network.latency_max_ms,
            self.setup.network.jitter_ms,
        )];
        for (at, action) in &self.schedule {
            lines.push(format!("at {at:>5} ms: {action:?}"));
        }
        lines.push(format!(
            "at {:>5} ms: heal everything, stop proposals, wait for agreement",
            self.heal_at_ms
        ));
        lines
    }
}

/// The group: its size, mode, load, payloads, group commit and link latencies.
fn draw_setup(rng: &mut ChaCha8Rng, options: &SweepOptions) -> Setup {
    let nodes = rng.gen_range(options.nodes.clone());
    let mut setup = Setup {
        nodes,
        liveness_bound_ms: options.liveness_bound_ms,
        ..Setup::default()
    };
    if rng.gen_bool(0.2) {
        setup.consensus.block_mode = BlockMode::Single;
    }
    setup.proposals_per_node_per_sec = rng.gen_range(2..=30);
    // Mostly small payloads, sometimes large ones (size limits and hashing at work).
    setup.payload_bytes = [16, 64, 256, 1_024, 16_384][rng.gen_range(0..5)];
    // Group commit every 1 to 20 ms: what a crash loses varies.
    setup.log_sync_interval_ms = rng.gen_range(1..=20);
    let latency_min_ms = rng.gen_range(1..=10);
    setup.network = NetworkConfig {
        latency_min_ms,
        latency_max_ms: latency_min_ms + rng.gen_range(0..=60),
        jitter_ms: rng.gen_range(0..=10),
        ..NetworkConfig::default()
    };
    setup
}

/// Byzantine members anywhere in the group (0 to f, or `--byzantine`), each with one of the
/// fault set's behaviours.
fn draw_byzantine(rng: &mut ChaCha8Rng, options: &SweepOptions, setup: &mut Setup) {
    let behaviours: Vec<Behaviour> = options
        .faults
        .0
        .iter()
        .filter_map(|kind| match kind {
            FaultKind::Byzantine(behaviour) => Some(*behaviour),
            _ => None,
        })
        .collect();
    if behaviours.is_empty() {
        return;
    }
    let nodes = setup.nodes;
    let drawn = rng.gen_range(0..=faulty_max(nodes));
    let count = options.byzantine_count.unwrap_or(drawn).min(nodes);
    let mut indices: Vec<usize> = (0..nodes).collect();
    indices.shuffle(rng);
    for &node in indices.iter().take(count) {
        let behaviour = behaviours[rng.gen_range(0..behaviours.len())];
        setup.byzantine.insert(node, behaviour);
    }
}

/// Loss, duplication and reordering from some time in the first half of the fault phase,
/// when the fault set has any of them.
fn draw_rates(rng: &mut ChaCha8Rng, faults: &FaultSet, phase_ms: u64) -> Option<(u64, Action)> {
    let has = |kind: FaultKind| faults.0.contains(&kind);
    if ![FaultKind::Drop, FaultKind::Duplicate, FaultKind::Reorder]
        .into_iter()
        .any(has)
    {
        return None;
    }
    let mut rate = |kind: FaultKind, max: f64| {
        if has(kind) {
            rng.gen_range(0.0..=max)
        } else {
            0.0
        }
    };
    let drop = rate(FaultKind::Drop, 0.3);
    let duplicate = rate(FaultKind::Duplicate, 0.1);
    let reorder = rate(FaultKind::Reorder, 0.2);
    let start = rng.gen_range(0..phase_ms / 2);
    Some((
        start,
        Action::Rates {
            drop,
            duplicate,
            reorder,
        },
    ))
}

/// Up to four timed faults (partitions, crashes of honest members, slow members), each
/// lasting 100 ms to 2 s within the fault phase.
fn draw_timed(
    rng: &mut ChaCha8Rng,
    faults: &FaultSet,
    setup: &Setup,
    phase_ms: u64,
) -> Vec<(u64, Action)> {
    let nodes = setup.nodes;
    let honest: Vec<usize> = (0..nodes)
        .filter(|node| !setup.byzantine.contains_key(node))
        .collect();
    let timed: Vec<FaultKind> = [
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::Crash,
        FaultKind::Slow,
    ]
    .into_iter()
    .filter(|kind| faults.0.contains(kind))
    .collect();
    let mut schedule = Vec::new();
    if timed.is_empty() {
        return schedule;
    }
    for _ in 0..rng.gen_range(0..=4) {
        let kind = timed[rng.gen_range(0..timed.len())];
        let start = rng.gen_range(0..phase_ms);
        let end = (start + rng.gen_range(100..=2_000)).min(phase_ms);
        match kind {
            FaultKind::Partition | FaultKind::OneWayPartition => {
                let mut shuffled: Vec<usize> = (0..nodes).collect();
                shuffled.shuffle(rng);
                let cut = rng.gen_range(1..nodes.max(2));
                let (a, b) = shuffled.split_at(cut.min(nodes));
                let (a, b) = (a.to_vec(), b.to_vec());
                let action = if kind == FaultKind::Partition {
                    Action::Partition(a, b)
                } else {
                    Action::OneWay(a, b)
                };
                schedule.push((start, action));
                schedule.push((end, Action::Heal));
            }
            FaultKind::Crash if !honest.is_empty() => {
                let node = honest[rng.gen_range(0..honest.len())];
                schedule.push((start, Action::Crash(node)));
                schedule.push((end, Action::Restart(node)));
            }
            FaultKind::Slow => {
                let node = rng.gen_range(0..nodes);
                schedule.push((start, Action::Slow(node, rng.gen_range(2..=6))));
                schedule.push((end, Action::Slow(node, 1)));
            }
            _ => {}
        }
    }
    schedule
}

/// What one seed's run produced.
#[derive(Clone, Debug)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// Nodes in the group.
    pub nodes: usize,
    /// The plan, one line per fault.
    pub story: Vec<String>,
    /// Violations found (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Counters.
    pub stats: SimStats,
    /// Virtual time simulated.
    pub simulated_ms: u64,
    /// Virtual time from the heal to every honest proposal agreed everywhere (`None`: not
    /// within the liveness bound).
    pub quiet_after_heal_ms: Option<u64>,
    /// Fingerprint of the run.
    pub trace_hash: [u8; 32],
    /// The trace, when asked for.
    pub trace: Vec<String>,
    /// Graphviz dot of the graph of the node where the first violation was found.
    pub dot: Option<(usize, String)>,
}

/// Runs the random run of `seed`. A panic in the simulated code is caught and reported as a
/// `Panic` violation of that seed.
pub fn run_seed(seed: u64, options: &SweepOptions, traced: bool) -> SeedOutcome {
    let plan = Plan::new(seed, options);
    Violation::catching_panics(|| run_plan(seed, &plan, traced)).unwrap_or_else(|panic| {
        SeedOutcome {
            seed,
            nodes: plan.setup.nodes,
            story: plan.story(),
            violations: vec![panic],
            stats: SimStats::default(),
            simulated_ms: 0,
            quiet_after_heal_ms: None,
            trace_hash: [0; 32],
            trace: Vec::new(),
            dot: None,
        }
    })
}

fn run_plan(seed: u64, plan: &Plan, traced: bool) -> SeedOutcome {
    let mut setup = plan.setup.clone();
    setup.trace_lines = traced;
    let nodes = setup.nodes;
    let mut sim = Sim::with_setup(seed, setup);
    for (at, action) in &plan.schedule {
        sim.run_until(*at);
        match action {
            Action::Partition(a, b) => sim.partition(a, b),
            Action::OneWay(a, b) => sim.partition_one_way(a, b),
            Action::Heal => sim.heal(),
            Action::Rates {
                drop,
                duplicate,
                reorder,
            } => sim.set_network_rates(*drop, *duplicate, *reorder),
            Action::Crash(node) => sim.crash(*node),
            Action::Restart(node) => sim.restart(*node),
            Action::Slow(node, factor) => sim.slow(*node, *factor),
        }
    }
    sim.run_until(plan.heal_at_ms);
    sim.heal_all();
    sim.run_until_quiet();
    let violations = sim.violations();
    let dot = violations
        .first()
        .and_then(|violation| sim.dot(violation.node, 12).map(|dot| (violation.node, dot)));
    SeedOutcome {
        seed,
        nodes,
        story: plan.story(),
        stats: sim.stats(),
        simulated_ms: sim.now_ms(),
        quiet_after_heal_ms: sim.quiet_after_ms(),
        trace_hash: sim.trace_hash(),
        trace: sim.trace_lines(),
        violations,
        dot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_parse() {
        let all: FaultSet = "all".parse().expect("all");
        assert_eq!(all.0.len(), FaultKind::all().len());
        assert_eq!(all.to_string(), "all");
        let none: FaultSet = "none".parse().expect("none");
        assert!(none.0.is_empty());
        let some: FaultSet = "crash,fork".parse().expect("list");
        assert_eq!(some.to_string(), "crash,fork");
        assert!(some.0.contains(&FaultKind::Crash));
        assert!(some.0.contains(&FaultKind::Byzantine(Behaviour::Fork)));
        assert!("crash,meteor".parse::<FaultSet>().is_err());
    }

    #[test]
    fn node_ranges_parse() {
        assert_eq!(parse_node_range("4..=10"), Ok(4..=10));
        assert_eq!(parse_node_range("4..11"), Ok(4..=10));
        assert_eq!(parse_node_range("7"), Ok(7..=7));
        assert!(parse_node_range("10..=4").is_err());
        assert!(parse_node_range("0").is_err());
        assert!(parse_node_range("1").is_err());
        assert!(parse_node_range("four").is_err());
        assert!(parse_node_range("4..=1000").is_err());
    }

    #[test]
    fn plans_respect_the_byzantine_bound_and_the_fault_set() {
        let options = SweepOptions::default();
        for seed in 0..200 {
            let plan = Plan::new(seed, &options);
            assert!(plan.setup.byzantine.len() <= faulty_max(plan.setup.nodes));
            assert!(options.nodes.contains(&plan.setup.nodes));
        }
        let quiet = SweepOptions {
            faults: "none".parse().expect("none"),
            ..SweepOptions::default()
        };
        for seed in 0..50 {
            let plan = Plan::new(seed, &quiet);
            assert!(plan.setup.byzantine.is_empty());
            assert!(plan.schedule.is_empty());
        }
    }
}
