//! `chorus-sim`: seed sweeps, replays and throughput runs of the deterministic simulator.
//!
//! ```text
//! chorus-sim sweep --seeds 10000 --nodes 4..=10 --faults all
//! chorus-sim replay --seed 42
//! chorus-sim bench --nodes 7 --seconds 30 --faults drop,crash,fork
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use chorus_sim::sweep::{
    FaultKind, FaultSet, SeedOutcome, SweepOptions, parse_node_range, run_seed,
};
use chorus_sim::{Behaviour, Setup, Sim};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "chorus-sim",
    about = "Deterministic simulator of a Chorus group: seed sweeps, replays, throughput"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs many seeds, each a random group, network and fault schedule, and checks them all.
    Sweep(SweepArgs),
    /// Replays one seed of a sweep and prints what happened (the same output every time).
    Replay(ReplayArgs),
    /// Agreed payloads per simulated second and per CPU second, without and with faults.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
struct RunOptions {
    /// Group sizes to draw from: `4..=10`, `4..11` or `7`.
    #[arg(long, default_value = "4..=10", value_parser = parse_node_range)]
    nodes: std::ops::RangeInclusive<usize>,
    /// Faults to draw from: `all`, `none`, `network`, `byzantine`, or a list such as
    /// `partition,crash,fork` (names: partition, one-way-partition, drop, duplicate,
    /// reorder, crash, slow, fork, equivocate, bad-signatures, withhold, garbage,
    /// phantom-votes).
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Longest fault phase of a run, in virtual milliseconds (at least 100).
    #[arg(long, default_value_t = SweepOptions::default().fault_phase_ms_max,
          value_parser = clap::value_parser!(u64).range(100..))]
    fault_phase_ms: u64,
    /// Byzantine members in every run (default: drawn from 0..=f). More than f shows what the
    /// checkers report when the fault bound is broken.
    #[arg(long)]
    byzantine: Option<usize>,
    /// How long after the faults heal every honest proposal must be agreed, in virtual ms.
    #[arg(long, default_value_t = SweepOptions::default().liveness_bound_ms)]
    liveness_ms: u64,
    /// Where the graph (Graphviz dot) of a failing run is written.
    #[arg(long, default_value = "chorus-sim-failures")]
    dump_dir: PathBuf,
}

impl RunOptions {
    fn sweep_options(&self) -> SweepOptions {
        SweepOptions {
            nodes: self.nodes.clone(),
            faults: self.faults.clone(),
            fault_phase_ms_max: self.fault_phase_ms,
            byzantine_count: self.byzantine,
            liveness_bound_ms: self.liveness_ms,
        }
    }
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Engine mode: random runs of the whole command path (sections of engines with event
    /// stores, partitions, crashes, forgeries, joins and leaves, the transfer saga) instead of
    /// the consensus core alone; the run options below do not apply.
    #[arg(long)]
    engine: bool,
    #[command(flatten)]
    options: RunOptions,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The seed to replay.
    #[arg(long)]
    seed: u64,
    /// Print the whole trace (every fault, block and note), not just the summary.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    options: RunOptions,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Members in the group.
    #[arg(long, default_value_t = 7)]
    nodes: usize,
    /// Virtual seconds to run each configuration.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Proposals per honest node per virtual second (above 1000: whole payloads per ms).
    #[arg(long, default_value_t = 1_000)]
    load: u64,
    /// Bytes per payload.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// The fault mix of the second run (the first runs without faults): `all`, `none`,
    /// `network`, `byzantine`, or a list of names.
    #[arg(long, default_value = "drop,duplicate,reorder,crash,fork")]
    faults: FaultSet,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Engine mode: run the whole command path (routing, agreement, event stores) on this
    /// many sections of `--nodes / --sections` members each (a power of two); `--load` is
    /// then commands per virtual second per section.
    #[arg(long)]
    sections: Option<usize>,
    /// Engine mode: the number of BankAccount streams the commands spread over.
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Engine mode: also run 1, 4 and 16 sections of the same size, with the same load per
    /// section, and report how throughput scales.
    #[arg(long)]
    scaling: bool,
    /// Engine mode: `supermajority` or `single`.
    #[arg(long, default_value = "supermajority")]
    mode: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sweep(args) => sweep(args),
        Command::Replay(args) => replay(args),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn replay_command(seed: u64, options: &SweepOptions) -> String {
    format!(
        "cargo run --release -p chorus-sim -- replay --seed {seed} {}",
        options.flags()
    )
}

/// Writes the failing node's graph; returns the path.
fn dump_dot(dir: &Path, outcome: &SeedOutcome) -> Result<Option<PathBuf>, String> {
    let Some((node, dot)) = &outcome.dot else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let path = dir.join(format!("seed-{}-node-{node}.dot", outcome.seed));
    std::fs::write(&path, dot).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(Some(path))
}

fn report_failure(outcome: &SeedOutcome, options: &RunOptions) -> Result<(), String> {
    let sweep_options = options.sweep_options();
    println!("seed {} FAILED:", outcome.seed);
    for violation in &outcome.violations {
        println!("  {violation}");
    }
    println!("  replay: {}", replay_command(outcome.seed, &sweep_options));
    // A dump that cannot be written is worth a line, not the end of the sweep.
    match dump_dot(&options.dump_dir, outcome) {
        Ok(Some(path)) => println!("  graph around the failure: {}", path.display()),
        Ok(None) => {}
        Err(error) => println!("  graph not written: {error}"),
    }
    Ok(())
}

fn sweep(args: SweepArgs) -> Result<ExitCode, String> {
    if args.seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    if args.engine {
        return engine_sweep(&args);
    }
    let options = args.options.sweep_options();
    let jobs = match args.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        jobs => jobs,
    }
    .min(args.seeds as usize);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.start_seed));
    let end = args.start_seed.saturating_add(args.seeds);
    let (sender, receiver) = mpsc::channel::<SeedOutcome>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let next = Arc::clone(&next);
        let sender = sender.clone();
        let options = options.clone();
        workers.push(std::thread::spawn(move || {
            loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                if sender.send(run_seed(seed, &options, false)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(sender);
    let progress = seed_progress(args.seeds)?;
    let mut simulated_ms = 0u64;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut violations_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut blocks = 0u64;
    let mut runs = 0u64;
    let mut quiet_ms: Vec<u64> = Vec::new();
    let (mut records_lost, mut own_lost, mut evidence) = (0u64, 0u64, 0u64);
    for outcome in receiver {
        runs += 1;
        simulated_ms += outcome.simulated_ms;
        blocks += outcome.stats.blocks;
        quiet_ms.extend(outcome.quiet_after_heal_ms);
        records_lost += outcome.stats.log_records_lost;
        own_lost += outcome.stats.own_events_lost;
        evidence += outcome.stats.evidence;
        for (kind, count) in &outcome.stats.faults {
            *faults.entry(kind).or_default() += count;
        }
        if !outcome.violations.is_empty() {
            for violation in &outcome.violations {
                *violations_by_kind.entry(violation.kind.name()).or_default() += 1;
            }
            progress.suspend(|| report_failure(&outcome, &args.options))?;
            failed.push(outcome.seed);
            progress.set_message(format!("{} failed", failed.len()));
        }
        progress.inc(1);
        // Without a terminal the bar is hidden: print a line every 5% instead.
        if progress.is_hidden() && (runs % (args.seeds / 20).max(1) == 0 || runs == args.seeds) {
            eprintln!(
                "{runs}/{} seeds, {} failed, {:.0} s",
                args.seeds,
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a sweep worker panicked".to_string())?;
    }
    progress.finish_and_clear();
    failed.sort_unstable();
    let hours = simulated_ms as f64 / 3_600_000.0;
    println!(
        "sweep: seeds {}..{} ({})",
        args.start_seed,
        end,
        options.flags()
    );
    println!("  {:<28} {runs}", "seeds run");
    println!("  {:<28} {hours:.2}", "simulated hours");
    println!("  {:<28} {blocks}", "blocks agreed");
    quiet_ms.sort_unstable();
    let quiet_at = |percent: usize| percentile(&quiet_ms, percent);
    let quiet_max = quiet_ms.last().copied().unwrap_or(0);
    println!(
        "  {:<28} p50 {} ms, p99 {} ms, max {quiet_max} ms",
        "heal to all agreed",
        quiet_at(50),
        quiet_at(99)
    );
    println!(
        "  {:<28} {:.1}",
        "wall seconds",
        started.elapsed().as_secs_f64()
    );
    println!("  faults injected:");
    for kind in FaultKind::all() {
        let count = faults.get(kind.name()).copied().unwrap_or(0);
        println!("    {:<26} {count}", kind.name());
    }
    println!(
        "    {:<26} {}",
        "restart",
        faults.get("restart").copied().unwrap_or(0)
    );
    println!("  crashes lost {records_lost} unsynced log records, {own_lost} unsent own events");
    println!("  fork evidence found by honest nodes: {evidence}");
    println!("  violations: {}", failed.len());
    for (kind, count) in &violations_by_kind {
        println!("    {kind:<26} {count}");
    }
    if !failed.is_empty() {
        println!("  failing seeds: {failed:?}");
    }
    let faults_json: Vec<String> = faults
        .iter()
        .map(|(kind, count)| format!("\"{kind}\":{count}"))
        .collect();
    println!(
        "{{\"seeds\":{runs},\"simulated_hours\":{hours:.3},\"blocks\":{blocks},\"failed_seeds\":{},\"heal_to_agreed_p50_ms\":{},\"heal_to_agreed_p99_ms\":{},\"heal_to_agreed_max_ms\":{quiet_max},\"faults\":{{{}}}}}",
        failed.len(),
        quiet_at(50),
        quiet_at(99),
        faults_json.join(",")
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn replay(args: ReplayArgs) -> Result<ExitCode, String> {
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
        report_failure(&outcome, &args.options)?;
        Ok(ExitCode::FAILURE)
    }
}

/// The `percent`-th percentile of `sorted` (0 when empty).
fn percentile(sorted: &[u64], percent: usize) -> u64 {
    sorted
        .get((sorted.len() * percent / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// CPU time of this thread, from Linux's schedstat; wall time elsewhere.
fn thread_cpu_seconds(wall: &Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| wall.elapsed().as_secs_f64(), |ns| ns as f64 / 1e9)
}

struct BenchRun {
    label: String,
    /// Payloads honest nodes proposed (crashed and Byzantine nodes propose nothing).
    offered: u64,
    payloads: u64,
    simulated_s: f64,
    cpu_s: f64,
    p50_ms: u64,
    p99_ms: u64,
    violations: usize,
}

fn bench_run(args: &BenchArgs, faults: &FaultSet) -> BenchRun {
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
    let mut latencies = sim.agreement_latencies_ms();
    latencies.sort_unstable();
    BenchRun {
        label: faults.to_string(),
        offered: sim.stats().proposals,
        payloads: latencies.len() as u64,
        simulated_s,
        cpu_s,
        p50_ms: percentile(&latencies, 50),
        p99_ms: percentile(&latencies, 99),
        violations: sim.violations().len(),
    }
}

fn bench(args: BenchArgs) -> Result<ExitCode, String> {
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
        eprintln!("{:.1} CPU s", run.cpu_s);
        runs.push(run);
    }
    println!(
        "{} nodes, {} proposals/s/node offered, {} B payloads, {} virtual s per run",
        args.nodes, args.load, args.payload_bytes, args.seconds
    );
    println!(
        "  {:<36} {:>10} {:>10} {:>14} {:>8} {:>8} {:>10}",
        "faults", "offered/s", "agreed/s", "agreed/CPU s", "p50 ms", "p99 ms", "violations"
    );
    let mut json = Vec::new();
    for run in &runs {
        let per_sim = run.payloads as f64 / run.simulated_s;
        let per_cpu = run.payloads as f64 / run.cpu_s.max(1e-9);
        let offered = run.offered as f64 / run.simulated_s;
        println!(
            "  {:<36} {offered:>10.0} {per_sim:>10.0} {per_cpu:>14.0} {:>8} {:>8} {:>10}",
            run.label, run.p50_ms, run.p99_ms, run.violations
        );
        json.push((run.label.clone(), per_sim, per_cpu, run.p50_ms, run.p99_ms));
    }
    let ratio = |index: usize| {
        let base = if index == 1 { json[0].1 } else { json[0].2 };
        let with = if index == 1 { json[1].1 } else { json[1].2 };
        with / base.max(1e-9)
    };
    println!(
        "  with faults / without: {:.2} per simulated s, {:.2} per CPU s",
        ratio(1),
        ratio(2)
    );
    let violations: usize = runs.iter().map(|run| run.violations).sum();
    println!(
        "{{\"nodes\":{},\"load_per_node\":{},\"faults\":\"{}\",\"baseline_payloads_per_sim_s\":{:.1},\"baseline_payloads_per_cpu_s\":{:.1},\"baseline_p50_ms\":{},\"baseline_p99_ms\":{},\"faulty_payloads_per_sim_s\":{:.1},\"faulty_payloads_per_cpu_s\":{:.1},\"faulty_p50_ms\":{},\"faulty_p99_ms\":{},\"baseline_offered_per_sim_s\":{:.1},\"faulty_offered_per_sim_s\":{:.1},\"violations\":{violations}}}",
        args.nodes,
        args.load,
        args.faults,
        json[0].1,
        json[0].2,
        json[0].3,
        json[0].4,
        json[1].1,
        json[1].2,
        json[1].3,
        json[1].4,
        runs[0].offered as f64 / runs[0].simulated_s,
        runs[1].offered as f64 / runs[1].simulated_s
    );
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The progress bar of a sweep over `seeds` seeds.
fn seed_progress(seeds: u64) -> Result<ProgressBar, String> {
    let progress = ProgressBar::new(seeds);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} seeds ({per_sec}, eta {eta}) {msg}",
        )
        .map_err(|error| error.to_string())?
        .progress_chars("=> "),
    );
    Ok(progress)
}

/// `sweep --engine`: random engine-mode runs (`run_cluster_seed`) on worker threads; each
/// failure is printed with its story and the command that replays it.
fn engine_sweep(args: &SweepArgs) -> Result<ExitCode, String> {
    let jobs = match args.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        jobs => jobs,
    }
    .min(args.seeds as usize);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.start_seed));
    let end = args.start_seed.saturating_add(args.seeds);
    let (sender, receiver) = mpsc::channel::<chorus_sim::cluster::ClusterOutcome>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let next = Arc::clone(&next);
        let sender = sender.clone();
        workers.push(std::thread::spawn(move || {
            loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end
                    || sender
                        .send(chorus_sim::cluster::run_cluster_seed(seed))
                        .is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(sender);
    let progress = seed_progress(args.seeds)?;
    let (mut runs, mut commands, mut committed) = (0u64, 0usize, 0usize);
    let mut events: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for outcome in receiver {
        runs += 1;
        commands += outcome.commands;
        committed += outcome.committed;
        for line in &outcome.story {
            for (needle, name) in [
                ("cut off", "partitions"),
                ("crashed", "crashes"),
                ("forged", "forgeries"),
                ("asks to leave", "leaves"),
                ("joins", "joins"),
                ("transfer saga", "runs with the saga"),
            ] {
                if line.contains(needle) {
                    *events.entry(name).or_default() += 1;
                }
            }
        }
        if !outcome.violations.is_empty() {
            progress.suspend(|| {
                eprintln!(
                    "seed {} FAILED (replay: chorus-sim sweep --engine --seeds 1 --start-seed {})\n  {}\n  violations:\n    {}",
                    outcome.seed,
                    outcome.seed,
                    outcome.story.join("\n  "),
                    outcome.violations.join("\n    ")
                );
            });
            failed.push(outcome.seed);
            progress.set_message(format!("{} failed", failed.len()));
        }
        progress.inc(1);
        if progress.is_hidden() && (runs % (args.seeds / 20).max(1) == 0 || runs == args.seeds) {
            eprintln!(
                "{runs}/{} seeds, {} failed, {:.0} s",
                args.seeds,
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a sweep worker panicked".to_string())?;
    }
    progress.finish_and_clear();
    failed.sort_unstable();
    println!("engine sweep: seeds {}..{end}", args.start_seed);
    println!("  {:<28} {runs}", "seeds run");
    println!(
        "  {:<28} {commands} sent, {committed} committed",
        "commands"
    );
    for (name, count) in &events {
        println!("  {name:<28} {count}");
    }
    println!(
        "  {:<28} {:.1}",
        "wall seconds",
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        println!("  no violation");
    } else {
        println!("  FAILED seeds: {failed:?}");
    }
    let events: Vec<String> = events
        .iter()
        .map(|(name, count)| format!("\"{name}\":{count}"))
        .collect();
    println!(
        "{{\"mode\":\"engine\",\"start_seed\":{},\"seeds\":{runs},\"commands\":{commands},\"committed\":{committed},\"events\":{{{}}},\"failed\":{failed:?}}}",
        args.start_seed,
        events.join(",")
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One engine-mode run: what it committed, how fast, and what the checkers found.
struct ClusterRun {
    sections: usize,
    nodes: usize,
    offered: u64,
    committed: u64,
    simulated_s: f64,
    cpu_s: f64,
    p50_ms: u64,
    p99_ms: u64,
    unanswered: usize,
    violations: Vec<String>,
}

fn cluster_run(args: &BenchArgs, sections: usize, nodes: usize) -> Result<ClusterRun, String> {
    use chorus_aggregate::StreamKey;
    use chorus_demo::bank_account::BankAccountCommand;
    use chorus_sim::cluster::{ClusterSetup, ClusterSim, command};
    use rand::{Rng, SeedableRng};

    let block_mode = match args.mode.as_str() {
        "supermajority" => chorus_consensus::BlockMode::Supermajority,
        "single" => chorus_consensus::BlockMode::Single,
        other => {
            return Err(format!(
                "--mode must be supermajority or single, not {other:?}"
            ));
        }
    };
    let setup = ClusterSetup {
        nodes,
        sections: Some(sections),
        block_mode,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(args.seed, setup)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
    let per_ms = args.load as f64 * sections as f64 / 1000.0;
    let load_ms = args.seconds * 1000;
    let mut opened = vec![false; args.streams];
    let mut owed = 0.0;
    let wall = Instant::now();
    let start_cpu = thread_cpu_seconds(&wall);
    let mut serial = 0u64;
    for _ in 0..load_ms {
        owed += per_ms;
        while owed >= 1.0 {
            owed -= 1.0;
            serial += 1;
            let index = rng.gen_range(0..args.streams);
            let stream = StreamKey::new("BankAccount", &format!("s{index}"))
                .map_err(|error| error.to_string())?;
            let body = if opened[index] {
                BankAccountCommand::Deposit {
                    amount: 1,
                    transfer: None,
                }
            } else {
                opened[index] = true;
                BankAccountCommand::OpenAccount {
                    owner: format!("o{index}"),
                }
            };
            let node = rng.gen_range(0..nodes);
            let json = serde_json::to_value(body).map_err(|error| error.to_string())?;
            sim.submit(node, command(&format!("c{serial}"), &stream, json));
        }
        sim.run_for(1);
    }
    // What was committed within the load window is the throughput; then let the rest finish
    // so that the checkers see a settled cluster.
    let window_end = sim.now_ms();
    // CPU spent on the window, whose commits are the ones counted.
    let cpu_s = thread_cpu_seconds(&wall) - start_cpu;
    sim.run_until_answered(120_000);
    sim.settle(30_000);
    let mut latencies = Vec::new();
    let mut committed = 0;
    let mut unanswered = 0;
    for submitted in sim.submitted() {
        match &submitted.answer {
            Some((chorus_engine::CommandOutcome::Committed(_), at_ms)) if *at_ms <= window_end => {
                latencies.push(at_ms - submitted.at_ms);
                committed += 1;
            }
            Some(_) => {}
            None => unanswered += 1,
        }
    }
    latencies.sort_unstable();
    Ok(ClusterRun {
        sections,
        nodes,
        offered: serial,
        committed,
        simulated_s: args.seconds as f64,
        cpu_s,
        p50_ms: percentile(&latencies, 50),
        p99_ms: percentile(&latencies, 99),
        unanswered,
        violations: sim.check(),
    })
}

fn cluster_bench(args: &BenchArgs, sections: usize) -> Result<ExitCode, String> {
    if args.seconds == 0 || args.load == 0 || args.streams == 0 {
        return Err("--seconds, --load and --streams must be at least 1".into());
    }
    if sections == 0 || args.nodes % sections != 0 {
        return Err(format!(
            "--nodes {} must be a multiple of --sections {sections}",
            args.nodes
        ));
    }
    let per_section = args.nodes / sections;
    let mut plan = vec![sections];
    if args.scaling {
        plan = vec![1, 4, 16];
    }
    let mut runs = Vec::new();
    for count in plan {
        let nodes = per_section * count;
        eprint!(
            "running {count} section(s) of {per_section} nodes for {} virtual s ... ",
            args.seconds
        );
        let _ = std::io::stderr().flush();
        let run = cluster_run(args, count, nodes)?;
        eprintln!("{:.1} CPU s", run.cpu_s);
        runs.push(run);
    }
    let network = chorus_sim::NetworkConfig::default();
    println!(
        "engine mode ({}): {per_section} nodes per section, {} commands/s per section offered, {} streams, {} virtual s; network {}-{} ms per link + up to {} ms jitter",
        args.mode,
        args.load,
        args.streams,
        args.seconds,
        network.latency_min_ms,
        network.latency_max_ms,
        network.jitter_ms
    );
    println!(
        "  {:>8} {:>6} {:>10} {:>12} {:>16} {:>8} {:>8} {:>10} {:>10}",
        "sections",
        "nodes",
        "offered/s",
        "committed/s",
        "committed/CPU s",
        "p50 ms",
        "p99 ms",
        "unanswered",
        "violations"
    );
    let mut json_runs = Vec::new();
    for run in &runs {
        let per_sim = run.committed as f64 / run.simulated_s;
        let per_cpu = run.committed as f64 / run.cpu_s.max(1e-9);
        println!(
            "  {:>8} {:>6} {:>10.0} {:>12.0} {:>16.0} {:>8} {:>8} {:>10} {:>10}",
            run.sections,
            run.nodes,
            run.offered as f64 / run.simulated_s,
            per_sim,
            per_cpu,
            run.p50_ms,
            run.p99_ms,
            run.unanswered,
            run.violations.len()
        );
        for violation in run.violations.iter().take(10) {
            println!("    violation: {violation}");
        }
        json_runs.push(format!(
            "{{\"sections\":{},\"nodes\":{},\"offered\":{},\"committed\":{},\"cpu_s\":{:.3},\"offered_per_sim_s\":{:.1},\"committed_per_sim_s\":{per_sim:.1},\"committed_per_cpu_s\":{per_cpu:.1},\"p50_ms\":{},\"p99_ms\":{},\"unanswered\":{},\"violations\":{}}}",
            run.sections,
            run.nodes,
            run.offered,
            run.committed,
            run.cpu_s,
            run.offered as f64 / run.simulated_s,
            run.p50_ms,
            run.p99_ms,
            run.unanswered,
            run.violations.len()
        ));
    }
    if runs.len() > 1 {
        let base = runs[0].committed as f64;
        for run in &runs[1..] {
            println!(
                "  {} sections / 1 section: {:.2}x committed per simulated s",
                run.sections,
                run.committed as f64 / base.max(1.0)
            );
        }
    }
    // A command never answered within the bound is a liveness violation.
    let violations: usize = runs
        .iter()
        .map(|run| run.violations.len() + usize::from(run.unanswered > 0))
        .sum();
    println!(
        "  (committed/s, per CPU s and latency count commands committed within the load window; \
         --faults and --payload-bytes do not apply in engine mode)"
    );
    println!(
        "{{\"seed\":{},\"mode\":\"{}\",\"nodes_per_section\":{per_section},\"load_per_section\":{},\"streams\":{},\"seconds\":{},\"runs\":[{}],\"violations\":{violations}}}",
        args.seed,
        args.mode,
        args.load,
        args.streams,
        args.seconds,
        json_runs.join(",")
    );
    Ok(if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
