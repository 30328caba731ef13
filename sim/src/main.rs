//! `chorus-sim`: seed sweeps, replays and throughput runs of the deterministic simulator.
//!
//! ```text
//! chorus-sim sweep --seeds 10000 --nodes 4..=10 --faults all
//! chorus-sim replay --seed 42
//! chorus-sim sweep --engine --seeds 400
//! chorus-sim replay --engine --seed 7
//! chorus-sim bench --nodes 7 --seconds 30 --faults drop,crash,fork
//! ```

mod commands {
    pub(crate) mod common;
    pub(crate) mod consensus_mode;
    pub(crate) mod driver;
    pub(crate) mod engine_mode;
}

use std::path::PathBuf;
use std::process::ExitCode;

use chorus_sim::sweep::{FaultSet, SweepOptions, parse_node_range};
use clap::{Args, Parser, Subcommand};

use commands::consensus_mode::{bench, replay, sweep};
use commands::engine_mode::replay_engine;

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
    /// Replay a seed of `sweep --engine` (the run options below do not apply).
    #[arg(long, conflicts_with = "trace")]
    engine: bool,
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
        Command::Replay(args) if args.engine => Ok(replay_engine(args.seed)),
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
