//! `sweep --engine` and `bench --sections`: the whole command path (`ClusterSim`).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use super::common::{percentile, seed_progress, thread_cpu_seconds};
use crate::{BenchArgs, SweepArgs};

/// `sweep --engine`: random engine-mode runs (`run_cluster_seed`) on worker threads; each
/// failure is printed with its story and the command that replays it.
pub(crate) fn engine_sweep(args: &SweepArgs) -> Result<ExitCode, String> {
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
pub(crate) struct ClusterRun {
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

pub(crate) fn cluster_run(
    args: &BenchArgs,
    sections: usize,
    nodes: usize,
) -> Result<ClusterRun, String> {
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

pub(crate) fn cluster_bench(args: &BenchArgs, sections: usize) -> Result<ExitCode, String> {
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
