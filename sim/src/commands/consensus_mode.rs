//! `sweep`, `replay` and `bench` of the consensus simulator (`Sim`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use chorus_sim::sweep::{FaultKind, FaultSet, SeedOutcome, SweepOptions, run_seed};
use chorus_sim::{Behaviour, Setup, Sim};

use super::common::{hex, percentile, seed_progress, thread_cpu_seconds};
use super::engine_mode::{cluster_bench, engine_sweep};
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

pub(crate) fn report_failure(outcome: &SeedOutcome, options: &RunOptions) -> Result<(), String> {
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

pub(crate) fn sweep(args: SweepArgs) -> Result<ExitCode, String> {
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
        report_failure(&outcome, &args.options)?;
        Ok(ExitCode::FAILURE)
    }
}

pub(crate) struct BenchRun {
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
