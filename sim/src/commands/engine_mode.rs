//! `sweep --engine` and `bench --sections`: the whole command path (`ClusterSim`).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use chorus_aggregate::StreamKey;
use chorus_demo::bank_account::BankAccountCommand;
use chorus_sim::cluster::{
    ClusterOutcome, ClusterSetup, ClusterSim, LIVENESS_BOUND_MS, SETTLE_BOUND_MS, command,
    run_cluster_seed,
};
use chorus_sim::{Violation, millis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::common::{Throughput, thread_cpu_seconds};
use super::driver::SweepMode;
use crate::BenchArgs;

/// `sweep --engine`: random runs of the whole command path (`run_cluster_seed`).
pub(crate) struct EngineSweep;

/// What the summary of an engine sweep adds up.
#[derive(Default)]
pub(crate) struct EngineTally {
    commands: usize,
    committed: usize,
    faults: BTreeMap<&'static str, u64>,
}

impl SweepMode for EngineSweep {
    type Outcome = ClusterOutcome;
    type Tally = EngineTally;

    fn name(&self) -> &'static str {
        "engine"
    }

    fn flags(&self) -> String {
        String::new()
    }

    fn run(&self, seed: u64) -> ClusterOutcome {
        run_cluster_seed(seed)
    }

    fn verdict<'a>(&self, outcome: &'a ClusterOutcome) -> (u64, &'a [Violation]) {
        (outcome.seed, &outcome.violations)
    }

    fn replay_command(&self, seed: u64) -> String {
        format!("cargo run --release -p chorus-sim -- replay --engine --seed {seed}")
    }

    fn failure_details(&self, outcome: &ClusterOutcome) -> Vec<String> {
        outcome.story.clone()
    }

    fn add(&self, tally: &mut EngineTally, outcome: &ClusterOutcome) {
        tally.commands += outcome.commands;
        tally.committed += outcome.committed;
        for (name, count) in &outcome.faults {
            *tally.faults.entry(name).or_default() += count;
        }
    }

    fn summary(&self, tally: &EngineTally) -> Vec<(String, String)> {
        let mut rows = vec![(
            "commands".to_owned(),
            format!("{} sent, {} committed", tally.commands, tally.committed),
        )];
        for (name, count) in &tally.faults {
            rows.push((format!("step: {name}"), count.to_string()));
        }
        rows
    }

    fn figures(&self, tally: &EngineTally) -> Map<String, Value> {
        let mut figures = Map::new();
        figures.insert("commands".into(), json!(tally.commands));
        figures.insert("committed".into(), json!(tally.committed));
        figures.insert("events".into(), json!(tally.faults));
        figures
    }
}

/// `replay --engine --seed N`: one engine-mode run, its story and what the checkers found.
pub(crate) fn replay_engine(seed: u64) -> ExitCode {
    let outcome = run_cluster_seed(seed);
    println!("engine seed {seed}");
    for line in &outcome.story {
        println!("  {line}");
    }
    println!(
        "{} commands sent, {} committed, {} unanswered",
        outcome.commands, outcome.committed, outcome.unanswered
    );
    if outcome.violations.is_empty() {
        println!("no violation");
        return ExitCode::SUCCESS;
    }
    for violation in &outcome.violations {
        println!("  {violation}");
    }
    ExitCode::FAILURE
}

/// One engine-mode run: what it committed, how fast, and what the checkers found.
pub(crate) struct ClusterRun {
    sections: usize,
    nodes: usize,
    /// Offered: commands sent; done: commands committed within the load window.
    rate: Throughput,
    unanswered: usize,
    violations: Vec<Violation>,
}

impl ClusterRun {
    fn figures(&self) -> Value {
        let rate = &self.rate;
        json!({
            "sections": self.sections,
            "nodes": self.nodes,
            "offered": rate.offered,
            "committed": rate.done,
            "cpu_s": (rate.cpu_s * 1e3).round() / 1e3,
            "offered_per_sim_s": (rate.offered_per_sim_s() * 10.0).round() / 10.0,
            "committed_per_sim_s": (rate.per_sim_s() * 10.0).round() / 10.0,
            "committed_per_cpu_s": (rate.per_cpu_s() * 10.0).round() / 10.0,
            "p50_ms": rate.p50_ms,
            "p99_ms": rate.p99_ms,
            "unanswered": self.unanswered,
            "violations": self.violations.len(),
        })
    }
}

fn block_mode(args: &BenchArgs) -> Result<chorus_consensus::BlockMode, String> {
    match args.mode.as_str() {
        "supermajority" => Ok(chorus_consensus::BlockMode::Supermajority),
        "single" => Ok(chorus_consensus::BlockMode::Single),
        other => Err(format!(
            "--mode must be supermajority or single, not {other:?}"
        )),
    }
}

/// `sections` sections of `nodes` in all, under `--load` commands per virtual second per
/// section for `--seconds`; then every command is answered and the checkers run.
pub(crate) fn cluster_run(
    args: &BenchArgs,
    sections: usize,
    nodes: usize,
) -> Result<ClusterRun, String> {
    let setup = ClusterSetup {
        nodes,
        sections: Some(sections),
        block_mode: block_mode(args)?,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(args.seed, setup)?;
    let wall = Instant::now();
    let start_cpu = thread_cpu_seconds(&wall);
    let offered = offer_load(&mut sim, args, sections)?;
    // What was committed within the load window is the throughput; then let the rest finish
    // so that the checkers see a settled cluster.
    let window_end = sim.now_ms();
    // CPU spent on the window, whose commits are the ones counted.
    let cpu_s = thread_cpu_seconds(&wall) - start_cpu;
    sim.run_until_answered(LIVENESS_BOUND_MS);
    sim.settle(SETTLE_BOUND_MS);
    let mut latencies = Vec::new();
    let mut unanswered = 0;
    for submitted in sim.submitted() {
        match &submitted.answer {
            Some((chorus_engine::CommandOutcome::Committed(_), at_ms)) if *at_ms <= window_end => {
                latencies.push(at_ms - submitted.at_ms);
            }
            Some(_) => {}
            None => unanswered += 1,
        }
    }
    Ok(ClusterRun {
        sections,
        nodes,
        rate: Throughput::new(offered, latencies, args.seconds as f64, cpu_s),
        unanswered,
        violations: sim.violations(),
    })
}

/// The load: every virtual ms, what the rate owes, each command a deposit (or the opening)
/// on a random one of `--streams` accounts, sent to a random node. Returns how many.
fn offer_load(sim: &mut ClusterSim, args: &BenchArgs, sections: usize) -> Result<u64, String> {
    let nodes = sim.node_count();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
    let per_ms = args.load as f64 * sections as f64 / 1000.0;
    let mut opened = vec![false; args.streams];
    let mut owed = 0.0;
    let mut serial = 0u64;
    for _ in 0..args.seconds * 1000 {
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
        sim.run_for(millis(1));
    }
    Ok(serial)
}

/// `bench --sections N`: engine-mode runs (or 1, 4 and 16 sections with `--scaling`).
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
    let counts = if args.scaling {
        vec![1, 4, 16]
    } else {
        vec![sections]
    };
    let mut runs = Vec::new();
    for count in counts {
        eprint!(
            "running {count} section(s) of {per_section} nodes for {} virtual s ... ",
            args.seconds
        );
        let _ = std::io::stderr().flush();
        let run = cluster_run(args, count, per_section * count)?;
        eprintln!("{:.1} CPU s", run.rate.cpu_s);
        runs.push(run);
    }
    print_cluster_runs(args, per_section, &runs);
    // A command never answered within the bound is a liveness violation.
    let violations: usize = runs
        .iter()
        .map(|run| run.violations.len() + usize::from(run.unanswered > 0))
        .sum();
    let figures = json!({
        "seed": args.seed,
        "mode": args.mode,
        "nodes_per_section": per_section,
        "load_per_section": args.load,
        "streams": args.streams,
        "seconds": args.seconds,
        "runs": runs.iter().map(ClusterRun::figures).collect::<Vec<_>>(),
        "violations": violations,
    });
    println!("{figures}");
    Ok(if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_cluster_runs(args: &BenchArgs, per_section: usize, runs: &[ClusterRun]) {
    let network = chorus_sim::NetworkConfig::default();
    println!(
        "engine mode ({}): {per_section} nodes per section, {} commands/s per section offered, \
         {} streams, {} virtual s; network {}-{} ms per link + up to {} ms jitter",
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
    for run in runs {
        println!(
            "  {:>8} {:>6} {:>10.0} {:>12.0} {:>16.0} {:>8} {:>8} {:>10} {:>10}",
            run.sections,
            run.nodes,
            run.rate.offered_per_sim_s(),
            run.rate.per_sim_s(),
            run.rate.per_cpu_s(),
            run.rate.p50_ms,
            run.rate.p99_ms,
            run.unanswered,
            run.violations.len()
        );
        for violation in run.violations.iter().take(10) {
            println!("    violation: {violation}");
        }
    }
    if let Some(base) = runs.first() {
        for run in &runs[1..] {
            println!(
                "  {} sections / 1 section: {:.2}x committed per simulated s",
                run.sections,
                run.rate.done as f64 / (base.rate.done as f64).max(1.0)
            );
        }
    }
    println!(
        "  (committed/s, per CPU s and latency count commands committed within the load window; \
         --faults and --payload-bytes do not apply in engine mode)"
    );
}
