//! `sweep`, `replay` and `bench` of the consensus simulator (`Sim`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use chorus_sim::sweep::{FaultKind, FaultSet, SeedOutcome, SweepOptions, run_seed};
use chorus_sim::{Behaviour, Setup, Sim, Violation};
use serde_json::{Map, Value, json};

use super::common::{Throughput, hex, percentile, thread_cpu_seconds};
use super::driver::{self, SeedRange, SweepMode};
use super::engine_mode::{EngineSweep, cluster_bench};
use crate::{BenchArgs, ReplayArgs, RunOptions, SweepArgs};

pub(crate) fn replay_command(seed: u64, options: &SweepOptions) -> String {
    format!(
        "cargo run --release -p chorus-sim -- replay --seed {seed} {}",
        options.flags()
    )
}

/// Writes the failing node's graph; returns the path.
pub(crate) fn dump_dot(dir: &Path, outcome: &SeedOutcome) -> Result<Option<PathBuf>, String> {
    let Some((node, dot)) = &outcome.dot else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let path = dir.join(format!("seed-{}-node-{node}.dot", outcome.seed));
    std::fs::write(&path, dot).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(Some(path))
}

/// The consensus core's sweep: random groups, networks and fault schedules (`run_seed`).
pub(crate) struct ConsensusSweep {
    options: SweepOptions,
    dump_dir: PathBuf,
}

impl ConsensusSweep {
    pub(crate) fn new(options: &RunOptions) -> Self {
        Self {
            options: options.sweep_options(),
            dump_dir: options.dump_dir.clone(),
        }
    }
}

/// What the summary of a consensus sweep adds up.
#[derive(Default)]
pub(crate) struct ConsensusTally {
    simulated_ms: u64,
    blocks: u64,
    quiet_ms: Vec<u64>,
    records_lost: u64,
    own_lost: u64,
    evidence: u64,
    faults: BTreeMap<&'static str, u64>,
}

impl ConsensusTally {
    /// Heal-to-agreed times: p50, p99 and the longest.
    fn quiet(&self) -> (u64, u64, u64) {
        let mut sorted = self.quiet_ms.clone();
        sorted.sort_unstable();
        let longest = sorted.last().copied().unwrap_or(0);
        (percentile(&sorted, 50), percentile(&sorted, 99), longest)
    }
}

impl SweepMode for ConsensusSweep {
    type Outcome = SeedOutcome;
    type Tally = ConsensusTally;

    fn name(&self) -> &'static str {
        "consensus"
    }

    fn flags(&self) -> String {
        self.options.flags()
    }

    fn run(&self, seed: u64) -> SeedOutcome {
        run_seed(seed, &self.options, false)
    }

    fn verdict<'a>(&self, outcome: &'a SeedOutcome) -> (u64, &'a [Violation]) {
        (outcome.seed, &outcome.violations)
    }

    fn replay_command(&self, seed: u64) -> String {
        replay_command(seed, &self.options)
    }

    fn failure_details(&self, outcome: &SeedOutcome) -> Vec<String> {
        // A dump that cannot be written is worth a line, not the end of the sweep.
        match dump_dot(&self.dump_dir, outcome) {
            Ok(Some(path)) => vec![format!("graph around the failure: {}", path.display())],
            Ok(None) => Vec::new(),
            Err(error) => vec![format!("graph not written: {error}")],
        }
    }

    fn add(&self, tally: &mut ConsensusTally, outcome: &SeedOutcome) {
        tally.simulated_ms += outcome.simulated_ms;
        tally.blocks += outcome.stats.blocks;
        tally.quiet_ms.extend(outcome.quiet_after_heal_ms);
        tally.records_lost += outcome.stats.log_records_lost;
        tally.own_lost += outcome.stats.own_events_lost;
        tally.evidence += outcome.stats.evidence;
        for (kind, count) in &outcome.stats.faults {
            *tally.faults.entry(kind).or_default() += count;
        }
    }

    fn summary(&self, tally: &ConsensusTally) -> Vec<(String, String)> {
        let hours = tally.simulated_ms as f64 / 3_600_000.0;
        let (p50, p99, longest) = tally.quiet();
        let mut rows = vec![
            ("simulated hours".to_owned(), format!("{hours:.2}")),
            ("blocks agreed".to_owned(), tally.blocks.to_string()),
            (
                "heal to all agreed".to_owned(),
                format!("p50 {p50} ms, p99 {p99} ms, max {longest} ms"),
            ),
        ];
        let names = FaultKind::all().into_iter().map(FaultKind::name);
        for name in names.chain(["restart"]) {
            let count = tally.faults.get(name).copied().unwrap_or(0);
            rows.push((format!("fault: {name}"), count.to_string()));
        }
        rows.push((
            "lost at crashes".to_owned(),
            format!(
                "{} unsynced log records, {} unsent own events",
                tally.records_lost, tally.own_lost
            ),
        ));
        rows.push(("fork evidence found".to_owned(), tally.evidence.to_string()));
        rows
    }

    fn figures(&self, tally: &ConsensusTally) -> Map<String, Value> {
        let hours = tally.simulated_ms as f64 / 3_600_000.0;
        let (p50, p99, longest) = tally.quiet();
        let mut figures = Map::new();
        figures.insert("flags".into(), json!(self.flags()));
        figures.insert("simulated_hours".into(), json!((hours * 1e3).round() / 1e3));
        figures.insert("blocks".into(), json!(tally.blocks));
        figures.insert("heal_to_agreed_p50_ms".into(), json!(p50));
        figures.insert("heal_to_agreed_p99_ms".into(), json!(p99));
        figures.insert("heal_to_agreed_max_ms".into(), json!(longest));
        figures.insert("faults".into(), json!(tally.faults));
        figures
    }
}

/// `sweep`: the consensus sweep, or the engine sweep with `--engine`.
pub(crate) fn sweep(args: SweepArgs) -> Result<ExitCode, String> {
    let range = SeedRange {
        start: args.start_seed,
        seeds: args.seeds,
        jobs: args.jobs,
    };
    if args.engine {
        return driver::sweep(&EngineSweep, &range);
    }
    driver::sweep(&ConsensusSweep::new(&args.options), &range)
}

pub(crate) fn replay(args: ReplayArgs) -> Result<ExitCode, String> {
    let options = args.options.sweep_options();
    let outcome = run_seed(args.seed, &options, args.trace);
    println!("seed {} ({})", args.seed, options.flags());
    for line in &outcome.story {
        println!("  {line}");
    }
    if args.trace {
        println!("trace:");
        for line in &outcome.trace {
            println!("  {line}");
        }
    }
    let stats = &outcome.stats;
    println!(
        "simulated {} ms; {} blocks; {} proposals; messages sent {}, dropped {}, partitioned {}, \
         duplicated {}, to crashed nodes {}, undecodable {}; events rejected {}; fork evidence {}",
        outcome.simulated_ms,
        stats.blocks,
        stats.proposals,
        stats.messages_sent,
        stats.messages_dropped,
        stats.messages_partitioned,
        stats.messages_duplicated,
        stats.messages_to_crashed,
        stats.messages_undecodable,
        stats.events_rejected,
        stats.evidence
    );
    if let Some(quiet) = outcome.quiet_after_heal_ms {
        println!("every honest proposal agreed everywhere {quiet} ms after the heal");
    }
    println!("trace hash {}", hex(&outcome.trace_hash));
    if outcome.violations.is_empty() {
        println!("no violation");
        Ok(ExitCode::SUCCESS)
    } else {
        for violation in &outcome.violations {
            println!("  {violation}");
        }
        for line in ConsensusSweep::new(&args.options).failure_details(&outcome) {
            println!("  {line}");
        }
        Ok(ExitCode::FAILURE)
    }
}

pub(crate) struct BenchRun {
    label: String,
    /// Offered: payloads honest nodes proposed; done: payloads agreed.
    rate: Throughput,
    violations: usize,
}

pub(crate) fn bench_run(args: &BenchArgs, faults: &FaultSet) -> BenchRun {
    let has = |kind: FaultKind| faults.0.contains(&kind);
    let mut setup = Setup {
        nodes: args.nodes,
        proposals_per_node_per_sec: args.load,
        payload_bytes: args.payload_bytes,
        ..Setup::default()
    };
    let behaviours: Vec<Behaviour> = Behaviour::BYZANTINE
        .into_iter()
        .filter(|behaviour| has(FaultKind::Byzantine(*behaviour)))
        .collect();
    let byzantine = chorus_consensus::faulty_max(args.nodes).min(behaviours.len());
    for (node, behaviour) in behaviours.iter().take(byzantine).enumerate() {
        setup.byzantine.insert(node, *behaviour);
    }
    let mut sim = Sim::with_setup(args.seed, setup);
    let start_cpu = thread_cpu_seconds(&Instant::now());
    let wall = Instant::now();
    sim.set_network_rates(
        if has(FaultKind::Drop) { 0.1 } else { 0.0 },
        if has(FaultKind::Duplicate) { 0.05 } else { 0.0 },
        if has(FaultKind::Reorder) { 0.1 } else { 0.0 },
    );
    let honest = sim.honest_nodes();
    let last = args.nodes - 1;
    // Every 5 s: one fault of each timed kind for 1 s, on the last node (honest unless the
    // group is tiny).
    let end_ms = args.seconds * 1_000;
    while sim.now_ms() < end_ms {
        if has(FaultKind::Crash) && honest.contains(&last) {
            sim.crash(last);
        }
        if has(FaultKind::Partition) {
            sim.partition(&[last], &(0..last).collect::<Vec<_>>());
        }
        if has(FaultKind::OneWayPartition) {
            sim.partition_one_way(&[last], &(0..last).collect::<Vec<_>>());
        }
        if has(FaultKind::Slow) {
            sim.slow(last, 4);
        }
        let fault_end = (sim.now_ms() + 1_000).min(end_ms);
        sim.run_until(fault_end);
        sim.heal();
        sim.slow(last, 1);
        sim.restart(last);
        sim.run_until((fault_end + 4_000).min(end_ms));
    }
    let simulated_s = sim.now_ms() as f64 / 1e3;
    let cpu_s = thread_cpu_seconds(&wall) - start_cpu;
    let offered = sim.stats().proposals;
    BenchRun {
        label: faults.to_string(),
        rate: Throughput::new(offered, sim.agreement_latencies_ms(), simulated_s, cpu_s),
        violations: sim.violations().len(),
    }
}

/// `bench`: the same group and load without faults, then with `--faults`; or engine mode
/// with `--sections`.
pub(crate) fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    if let Some(sections) = args.sections {
        return cluster_bench(&args, sections);
    }
    if args.nodes < 2 || args.nodes > 64 {
        return Err("--nodes must be in 2..=64".into());
    }
    if args.seconds == 0 || args.load == 0 {
        return Err("--seconds and --load must be at least 1".into());
    }
    let none = FaultSet(Default::default());
    let mut runs = Vec::new();
    for faults in [&none, &args.faults] {
        eprint!(
            "running {} virtual s with faults: {faults} ... ",
            args.seconds
        );
        let _ = std::io::stderr().flush();
        let run = bench_run(&args, faults);
        eprintln!("{:.1} CPU s", run.rate.cpu_s);
        runs.push(run);
    }
    let [baseline, faulty] = &runs[..] else {
        unreachable!("two runs were made");
    };
    print_bench(&args, baseline, faulty);
    let violations = baseline.violations + faulty.violations;
    let round = |value: f64| (value * 10.0).round() / 10.0;
    let figures = json!({
        "nodes": args.nodes,
        "load_per_node": args.load,
        "faults": args.faults.to_string(),
        "baseline_payloads_per_sim_s": round(baseline.rate.per_sim_s()),
        "baseline_payloads_per_cpu_s": round(baseline.rate.per_cpu_s()),
        "baseline_p50_ms": baseline.rate.p50_ms,
        "baseline_p99_ms": baseline.rate.p99_ms,
        "faulty_payloads_per_sim_s": round(faulty.rate.per_sim_s()),
        "faulty_payloads_per_cpu_s": round(faulty.rate.per_cpu_s()),
        "faulty_p50_ms": faulty.rate.p50_ms,
        "faulty_p99_ms": faulty.rate.p99_ms,
        "baseline_offered_per_sim_s": round(baseline.rate.offered_per_sim_s()),
        "faulty_offered_per_sim_s": round(faulty.rate.offered_per_sim_s()),
        "violations": violations,
    });
    println!("{figures}");
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_bench(args: &BenchArgs, baseline: &BenchRun, faulty: &BenchRun) {
    println!(
        "{} nodes, {} proposals/s/node offered, {} B payloads, {} virtual s per run",
        args.nodes, args.load, args.payload_bytes, args.seconds
    );
    println!(
        "  {:<36} {:>10} {:>10} {:>14} {:>8} {:>8} {:>10}",
        "faults", "offered/s", "agreed/s", "agreed/CPU s", "p50 ms", "p99 ms", "violations"
    );
    for run in [baseline, faulty] {
        println!(
            "  {:<36} {:>10.0} {:>10.0} {:>14.0} {:>8} {:>8} {:>10}",
            run.label,
            run.rate.offered_per_sim_s(),
            run.rate.per_sim_s(),
            run.rate.per_cpu_s(),
            run.rate.p50_ms,
            run.rate.p99_ms,
            run.violations
        );
    }
    println!(
        "  with faults / without: {:.2} per simulated s, {:.2} per CPU s",
        faulty.rate.per_sim_s() / baseline.rate.per_sim_s().max(1e-9),
        faulty.rate.per_cpu_s() / baseline.rate.per_cpu_s().max(1e-9)
    );
}
