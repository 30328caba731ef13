//! `chorus`: the demo domain (`chorus-demo`: notebooks, bank accounts, a transfer saga) on
//! Chorus, built with the library's `Application` like any application. Run a node (`chorus
//! node --config node.toml`), a local cluster of node processes (`chorus init`, `chorus up
//! --nodes 4`), the demo (`chorus demo`), a benchmark against a cluster (`chorus bench`), a
//! client (`chorus client ...`) or the simulator (`chorus sim ...`).

mod bench;
mod bench_idle;
mod bench_transfers;
mod demo;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: under load, allocation and free were about a sixth of
/// a node's CPU (engine thread, tokio workers), mostly small short-lived buffers
/// (BENCHMARKS.md, fifth sitting).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chorus_node::Application;
use chorus_node::cli::{self, GlobalOptions, tokio_runtime};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "A decentralized event-sourcing cluster"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Chorus(cli::Command),
    /// The main job on embedded defaults: start a local cluster (unless one is running under
    /// `--data-dir`), drive a Notebook and BankAccount workload with a progress bar, and show
    /// what every node agreed.
    Demo(demo::DemoOptions),
    /// Load a cluster at increasing client concurrency and print committed commands per
    /// second and latency percentiles (the last line is one JSON object). Starts a fresh
    /// local cluster unless `--target` names running nodes.
    Bench(bench::BenchOptions),
    /// Run the simulator with these arguments (`chorus sim sweep --engine --seeds 20`): the
    /// `chorus-sim` program built next to this one (`cargo build --release -p chorus-sim`).
    #[command(disable_help_flag = true)]
    Sim {
        /// Arguments for `chorus-sim` (`--help` shows its own).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The application this binary runs: the demo domain. `CHORUS_DEMO_DOMAIN_VERSION` gives it
/// another domain version, to see the domain check at work: a section refuses a node whose
/// domain differs from its own, and such a node stops, naming both. With
/// `CHORUS_DEMO_UPGRADES_FROM` (versions, comma-separated) it stands in for those versions
/// instead: a rolling upgrade (README, "Upgrading a running cluster").
fn demo_application() -> Application {
    let version = std::env::var("CHORUS_DEMO_DOMAIN_VERSION")
        .unwrap_or_else(|_| chorus_demo::DOMAIN_VERSION.to_owned());
    let upgrades_from = std::env::var("CHORUS_DEMO_UPGRADES_FROM").unwrap_or_default();
    let application = upgrades_from
        .split(',')
        .map(str::trim)
        .filter(|version| !version.is_empty())
        .fold(Application::new("chorus"), Application::upgrades_from);
    application
        .version(&version)
        .aggregate::<chorus_demo::bank_account::BankAccount>()
        .aggregate::<chorus_demo::notebook::Notebook>()
        .aggregate::<chorus_demo::transfer::Transfer>()
        .process_manager(|| chorus_demo::transfer::TransferSaga)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.global);
    let result = match cli.command {
        Command::Chorus(command) => cli::run(command, &demo_application()),
        Command::Demo(options) => {
            tokio_runtime().and_then(|runtime| runtime.block_on(demo::run(options)))
        }
        Command::Bench(options) => {
            tokio_runtime().and_then(|runtime| runtime.block_on(bench::run(options)))
        }
        Command::Sim { args } => simulator(&args),
    };
    cli::exit_code(result)
}

/// Runs `chorus-sim` from this program's directory (the simulator is its own binary: it is
/// built with a Byzantine test hook the node must not carry).
fn simulator(args: &[String]) -> Result<(), String> {
    let executable =
        std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let simulator = executable.with_file_name("chorus-sim");
    if !simulator.exists() {
        return Err(format!(
            "{} is not built; build it with `cargo build --release -p chorus-sim` (or run \
             `cargo run --release -p chorus-sim -- ...`)",
            simulator.display()
        ));
    }
    let status = std::process::Command::new(&simulator)
        .args(args)
        .status()
        .map_err(|error| format!("{}: {error}", simulator.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chorus-sim exited with {status}"))
    }
}
