//! `chorus`: run a node (`chorus node --config node.toml`), a local cluster of node
//! processes (`chorus init`, `chorus up --nodes 4`), the demo (`chorus demo`), a benchmark
//! against a cluster (`chorus bench`), or a client (`chorus client ...`).

mod admin_client;
mod admission;
mod bench;
mod client;
mod config;
mod demo;
mod frames;
mod http;
mod joining;
mod local;
mod peer_reads;
mod queues;
mod read_wire;
mod runtime;
mod transport;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::config::{NodeConfig, hex, load_or_create_key};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "A decentralized event-sourcing cluster"
)]
struct Cli {
    /// Log format on stderr: `human` or `json` (one object per line). Levels come from
    /// `RUST_LOG` (default `warn`).
    #[arg(
        long,
        global = true,
        env = "CHORUS_LOG_FORMAT",
        default_value = "human",
        value_parser = ["human", "json"]
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node from a configuration file (TOML).
    Node {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// On the first start, join the running network this node (an HTTP address,
        /// `http://HOST:PORT`) belongs to: learn its map there, ask the section this node's
        /// name falls in to admit it (an operator must approve its key: `chorus admin
        /// admit`), fetch the section's state, and serve. Several nodes, separated by
        /// commas, must agree on the members (one honest node among them exposes a lie).
        #[arg(long)]
        join: Option<String>,
    },
    /// Write (or keep) the keys and configuration files of a local cluster of N nodes on
    /// loopback without starting it; prints each node's configuration file and HTTP address.
    /// Start a node with `chorus node --config <file>`. With `--join`, write one node that
    /// will join a running network instead (its own directory is `--data-dir`).
    Init {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Where each node's directory goes (`node-0`, `node-1`, ...); with `--join`, the
        /// joining node's own directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// A running node's HTTP address (`http://HOST:PORT`; several separated by commas
        /// must agree): write one node with no peer list that learns the network there on
        /// its first start and asks to be admitted.
        #[arg(long, conflicts_with = "nodes")]
        join: Option<String>,
        #[command(flatten)]
        local: local::LocalOptions,
    },
    /// The main job on embedded defaults: start a local cluster (unless one is running under
    /// `--data-dir`), drive a Notebook and BankAccount workload with a progress bar, and show
    /// what every node agreed.
    Demo(demo::DemoOptions),
    /// Talk to a node: send a command, read or follow a stream, show its status.
    Client {
        /// The node's HTTP address (default: node 0 of the local cluster under `--data-dir`).
        #[arg(long)]
        node: Option<String>,
        /// Where the local cluster's data lives (to find a node when `--node` is absent).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: client::ClientAction,
    },
    /// Run the simulator with these arguments (`chorus sim sweep --engine --seeds 20`): the
    /// `chorus-sim` program built next to this one (`cargo build --release -p chorus-sim`).
    #[command(disable_help_flag = true)]
    Sim {
        /// Arguments for `chorus-sim` (`--help` shows its own).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Load a cluster at increasing client concurrency and print committed commands per
    /// second and latency percentiles (the last line is one JSON object). Starts a fresh
    /// local cluster unless `--target` names running nodes.
    Bench(bench::BenchOptions),
    /// An operator's request to the admin API: admit a key, remove a node, show the policy.
    /// Goes to every node of the local cluster under `--data-dir`, or to one node
    /// (`--node` with `--token`, or `--config`). A section admits or removes a node once more
    /// than two thirds of its members asked for it.
    Admin {
        #[command(subcommand)]
        action: admin_client::AdminAction,
        #[command(flatten)]
        targets: admin_client::AdminTargets,
    },
    /// Start a local cluster of node processes on loopback, print each node's HTTP address,
    /// and stop them on Ctrl-C or SIGTERM. Data (keys, stores, configurations) stays under
    /// `--data-dir`, so running it again resumes the same cluster.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Where each node's directory goes (`node-0`, `node-1`, ...).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[command(flatten)]
        local: local::LocalOptions,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let _ = LOG_FORMAT.set(cli.log_format.clone());
    let result = match cli.command {
        Command::Node { config, join } => run_node(&config, join.as_deref()),
        Command::Init {
            join: Some(url),
            data_dir,
            local,
            ..
        } => init_joiner(&data_dir, &url, &local),
        Command::Init {
            nodes,
            data_dir,
            local,
            join: None,
        } => local::init(nodes, &data_dir, &local).map(|configs| {
            for (path, config) in configs {
                say(&format!("{} http://{}", path.display(), config.http));
            }
        }),
        Command::Demo(options) => {
            tokio_runtime().and_then(|runtime| runtime.block_on(demo::run(options)))
        }
        Command::Bench(options) => {
            tokio_runtime().and_then(|runtime| runtime.block_on(bench::run(options)))
        }
        Command::Up {
            nodes,
            data_dir,
            local,
        } => tokio_runtime()
            .and_then(|runtime| runtime.block_on(local::up(nodes, &data_dir, &local))),
        Command::Sim { args } => simulator(&args),
        Command::Admin { action, targets } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(admin_client::run(action, targets)))
        }
        Command::Client {
            node,
            data_dir,
            action,
        } => tokio_runtime()
            .and_then(|runtime| runtime.block_on(client::run_cli(node, &data_dir, action))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `chorus init --join`: writes the joiner, prints its configuration file and address, and
/// tells the operator what to approve.
fn init_joiner(data_dir: &Path, url: &str, local: &local::LocalOptions) -> Result<(), String> {
    let (path, config, key) = local::init_joiner(data_dir, url, local)?;
    say(&format!("{} http://{}", path.display(), config.http));
    eprintln!(
        "node {key} will join the network of {url}. Its section admits it once the \
         operators of more than two thirds of the members approve it, for a local \
         cluster: chorus admin admit {key} --data-dir <the cluster's data directory>. \
         Then start it: chorus node --config {}",
        path.display()
    );
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn run_node(path: &Path, join: Option<&str>) -> Result<(), String> {
    let mut checked = NodeConfig::load(path).map_err(|error| error.to_string())?;
    let key = load_or_create_key(&checked.config.data_dir).map_err(|error| error.to_string())?;
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        joining::learn_peers(&mut checked, join).await?;
        let addresses = transport::AddressBook::new(&checked.peers);
        let (swarm, p2p) = transport::start(key.to_bytes(), checked.listen.clone(), &checked.peers)
            .await
            .map_err(|error| error.to_string())?;
        // Our own address too: a joiner that asks us learns it with the others'.
        addresses.insert(
            chorus_consensus::PeerId(key.verifying_key().to_bytes()),
            p2p.clone(),
        );
        let listener = tokio::net::TcpListener::bind(checked.http)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", checked.http))?;
        let http = listener
            .local_addr()
            .map_err(|error| format!("http address: {error}"))?;
        let (inputs, input_receiver) = queues::EngineInputs::new(queues::ENGINE_INPUTS_MAX);
        let (outbound, outbound_receiver) =
            queues::Outbound::new(queues::OUTBOUND_MAX, std::sync::Arc::clone(&inputs.drops));
        let engine_thread = spawn_engine(&checked, &key, input_receiver, outbound)?;
        let (reads, reads_receiver) = peer_reads::PeerReads::new();
        tokio::spawn(transport::run(
            swarm,
            addresses.clone(),
            outbound_receiver,
            reads_receiver,
            inputs.clone(),
        ));
        say(&format!(
            "node {} p2p {p2p} http http://{http}",
            hex(&key.verifying_key().to_bytes())
        ));
        info!(%http, %p2p, "node running");
        let served = http::serve(
            listener,
            http::router(
                inputs,
                http::admin::AdminToken(checked.config.admin_token.clone()),
                http::Network { addresses, reads },
            ),
            shutdown_signal(),
        );
        // On a signal the server stops taking connections and finishes open requests, but
        // a command waiting for agreement can wait long: they get `SHUTDOWN_GRACE`.
        let grace = async {
            shutdown_signal().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            () = served => {}
            () = grace => info!("open requests dropped at shutdown"),
        }
        // The engine thread ends when every input sender is gone (the tasks holding them stop
        // with the runtime); each input was made durable as it was handled.
        drop(engine_thread);
        Ok(())
    })
}

/// Starts the engine thread and waits until the engine is built there.
fn spawn_engine(
    checked: &config::Checked,
    key: &ed25519_dalek::SigningKey,
    input_receiver: queues::EngineReceiver,
    outbound: queues::Outbound,
) -> Result<std::thread::JoinHandle<()>, String> {
    // The engine lives on its own thread (its store blocks on fsync), built there: it
    // holds process managers, which need not be `Send`.
    let (started, startup) = std::sync::mpsc::sync_channel(1);
    let engine_checked = checked.clone();
    let engine_key = key.clone();
    let tick_interval = Duration::from_millis(checked.config.gossip_interval_ms);
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let policy = match admission::Policy::load(&engine_checked) {
                Ok(policy) => policy,
                Err(error) => {
                    let _ = started.send(Err(format!("admission policy: {error}")));
                    return;
                }
            };
            let engine = match runtime::start_engine(&engine_checked, &engine_key, DEMO, &policy) {
                Ok(engine) => {
                    let _ = started.send(Ok(()));
                    engine
                }
                Err(error) => {
                    let _ = started.send(Err(error.to_string()));
                    return;
                }
            };
            if let Err(error) = runtime::run_engine(
                engine,
                input_receiver,
                outbound,
                DEMO,
                (tick_interval, policy),
            ) {
                error!(%error, "the engine stopped");
                std::process::exit(2);
            }
        })
        .map_err(|error| format!("cannot start the engine thread: {error}"))?;
    startup
        .recv()
        .map_err(|_| "the engine thread died while starting".to_owned())??;
    Ok(engine_thread)
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

/// The application this binary runs: the demo domain (`chorus-demo`).
const DEMO: runtime::Domain = runtime::Domain {
    registry: chorus_demo::registry,
    process_managers: chorus_demo::process_managers,
};

/// How long a stopping node lets open HTTP requests finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The log format this process was started with; the node processes it starts use it too.
pub static LOG_FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Prints a line on stdout; a closed stdout (the reader went away) is not an error for a
/// launcher whose job is its children.
pub fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
