//! `chorus`: run a node (`chorus node --config node.toml`) or a local cluster of node
//! processes (`chorus up --nodes 4`).

mod config;
mod http;
mod runtime;
mod transport;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::config::{NodeConfig, PeerConfig, hex, load_or_create_key};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "A decentralized event-sourcing cluster"
)]
struct Cli {
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
        /// `supermajority` or `single`.
        #[arg(long, default_value = "supermajority")]
        block_mode: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node { config } => run_node(&config),
        Command::Up {
            nodes,
            data_dir,
            block_mode,
        } => up(nodes, &data_dir, &block_mode),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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

fn run_node(path: &Path) -> Result<(), String> {
    let checked = NodeConfig::load(path).map_err(|error| error.to_string())?;
    let key = load_or_create_key(&checked.config.data_dir).map_err(|error| error.to_string())?;
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        let (swarm, p2p) = transport::start(key.to_bytes(), checked.listen.clone(), &checked.peers)
            .await
            .map_err(|error| error.to_string())?;
        let listener = tokio::net::TcpListener::bind(checked.http)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", checked.http))?;
        let http = listener
            .local_addr()
            .map_err(|error| format!("http address: {error}"))?;
        let (inputs, input_receiver) = std::sync::mpsc::channel();
        let (outbound, outbound_receiver) = tokio::sync::mpsc::unbounded_channel();
        // The engine lives on its own thread (its store blocks on fsync), built there: it
        // holds process managers, which need not be `Send`.
        let (started, startup) = std::sync::mpsc::sync_channel(1);
        let engine_checked = checked.clone();
        let engine_key = key.clone();
        let engine_thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let engine = match runtime::start_engine(&engine_checked, &engine_key) {
                    Ok(engine) => {
                        let _ = started.send(Ok(()));
                        engine
                    }
                    Err(error) => {
                        let _ = started.send(Err(error.to_string()));
                        return;
                    }
                };
                if let Err(error) = runtime::run_engine(engine, input_receiver, outbound) {
                    error!(%error, "the engine stopped");
                    std::process::exit(2);
                }
            })
            .map_err(|error| format!("cannot start the engine thread: {error}"))?;
        startup
            .recv()
            .map_err(|_| "the engine thread died while starting".to_owned())??;
        tokio::spawn(transport::run(
            swarm,
            checked.peers.clone(),
            outbound_receiver,
            inputs.clone(),
        ));
        let ticks = inputs.clone();
        let interval = Duration::from_millis(checked.config.gossip_interval_ms);
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                timer.tick().await;
                if ticks.send(runtime::Input::Tick).is_err() {
                    return;
                }
            }
        });
        say(&format!(
            "node {} p2p {p2p} http http://{http}",
            hex(&key.verifying_key().to_bytes())
        ));
        info!(%http, %p2p, "node running");
        let served = axum::serve(listener, http::router(inputs))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        if let Err(error) = served {
            error!(%error, "http server failed");
        }
        // The engine thread ends when every input sender is gone (the tasks holding them stop
        // with the runtime); each input was made durable as it was handled.
        drop(engine_thread);
        Ok(())
    })
}

/// Prints a line on stdout; a closed stdout (the reader went away) is not an error for a
/// launcher whose job is its children.
fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// A free TCP port on loopback (bound, then released for the node to take).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free port: {error}"))
}

fn up(nodes: usize, data_dir: &Path, block_mode: &str) -> Result<(), String> {
    if !(1..=64).contains(&nodes) {
        return Err("--nodes must be between 1 and 64".into());
    }
    // Keys and ports: kept from an earlier run (its configuration files), else new.
    let mut members = Vec::with_capacity(nodes);
    for index in 0..nodes {
        let directory = data_dir.join(format!("node-{index}"));
        let key = load_or_create_key(&directory).map_err(|error| error.to_string())?;
        let existing = NodeConfig::load(&directory.join("node.toml")).ok();
        let (listen, http) = match existing {
            Some(checked) => (checked.config.listen, checked.config.http),
            None => (
                format!("/ip4/127.0.0.1/tcp/{}", free_port()?),
                format!("127.0.0.1:{}", free_port()?),
            ),
        };
        members.push((directory, key, listen, http));
    }
    let mut configs = Vec::with_capacity(nodes);
    for (index, (directory, _, listen, http)) in members.iter().enumerate() {
        let peers = members
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, (_, key, listen, _))| PeerConfig {
                public_key: hex(&key.verifying_key().to_bytes()),
                address: listen.clone(),
            })
            .collect();
        let config = NodeConfig {
            data_dir: directory.clone(),
            listen: listen.clone(),
            http: http.clone(),
            peers,
            section_size_min: 4,
            block_mode: block_mode.to_owned(),
            gossip_interval_ms: 20,
        };
        config.clone().check().map_err(|error| error.to_string())?;
        let path = directory.join("node.toml");
        let text = toml::to_string(&config).map_err(|error| error.to_string())?;
        std::fs::write(&path, text).map_err(|error| format!("{}: {error}", path.display()))?;
        configs.push((path, config));
    }
    let executable =
        std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        let mut children = Vec::with_capacity(nodes);
        for (path, config) in &configs {
            let child = tokio::process::Command::new(&executable)
                .arg("node")
                .arg("--config")
                .arg(path)
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|error| format!("cannot start a node: {error}"))?;
            say(&format!("http://{}", config.http));
            children.push(child);
        }
        say(&format!(
            "{nodes} nodes running, data under {}; Ctrl-C stops them",
            data_dir.display()
        ));
        let first_exit =
            futures::future::select_all(children.iter_mut().map(|child| Box::pin(child.wait())));
        let failed = tokio::select! {
            () = shutdown_signal() => None,
            (status, index, _) = first_exit => Some((index, status)),
        };
        for child in &mut children {
            if let Some(pid) = child.id() {
                // SIGTERM first, so a node stops its HTTP server cleanly.
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        for child in &mut children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        match failed {
            None => {
                say("stopped");
                Ok(())
            }
            Some((index, status)) => Err(format!(
                "node {index} stopped on its own ({status:?}); the others were stopped"
            )),
        }
    })
}
