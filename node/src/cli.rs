//! The command line every Chorus application gets (`node`, `init`, `up`, `client`,
//! `admin`), run by [`Application::main`](crate::Application::main) or, beside a program's own
//! subcommands, by [`run`] (the `chorus` binary adds `demo`, `bench` and `sim`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::application::Application;
use crate::{admin_client, client, local};

/// Options of every subcommand.
#[derive(Args, Debug, Clone)]
pub struct GlobalOptions {
    /// Log format on stderr: `human` or `json` (one object per line). Levels come from
    /// `RUST_LOG` (default `warn`).
    #[arg(
        long,
        global = true,
        env = "CHORUS_LOG_FORMAT",
        default_value = "human",
        value_parser = ["human", "json"]
    )]
    pub log_format: String,
}

/// The command line of an application with no subcommands of its own.
#[derive(Parser, Debug)]
#[command(version, about = "An event-sourced application on Chorus")]
struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands every application has.
// Doc comments are clap's help text; the flattened option groups and nested subcommands
// carry their own.
#[allow(missing_docs)]
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Talk to a node: send a command, read or follow a stream, show its status.
    Client {
        /// The node's HTTP address (default: node 0 of the local cluster under `--data-dir`).
        #[arg(long)]
        node: Option<String>,
        /// Where the local cluster's data lives (to find a node when `--node` is absent).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The API token to send (default: the local cluster's, from its node 0).
        #[arg(long, env = "CHORUS_TOKEN")]
        token: Option<String>,
        #[command(subcommand)]
        action: client::ClientAction,
    },
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

/// Parses the process's arguments and runs them for `application`: what
/// [`Application::main`] does.
pub fn main(application: &Application) -> ExitCode {
    let command = Cli::command().name(application.name().to_owned());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    init_logging(&cli.global);
    exit_code(run(cli.command, application))
}

/// Starts logging on stderr in the chosen format (once per process); the node processes a
/// launcher starts use the same format.
pub fn init_logging(options: &GlobalOptions) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    if options.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let _ = LOG_FORMAT.set(options.log_format.clone());
}

/// Prints an error on stderr, and says how the program ends.
pub fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand for `application`.
pub fn run(command: Command, application: &Application) -> Result<(), String> {
    match command {
        Command::Node { config, join } => application.run_node(&config, join.as_deref()),
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
                say(&format!("{} {}", path.display(), config.base_url()));
            }
        }),
        Command::Up {
            nodes,
            data_dir,
            local,
        } => tokio_runtime()
            .and_then(|runtime| runtime.block_on(local::up(nodes, &data_dir, &local))),
        Command::Admin { action, targets } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(admin_client::run(action, targets)))
        }
        Command::Client {
            node,
            data_dir,
            token,
            action,
        } => tokio_runtime().and_then(|runtime| {
            let token = token.or_else(|| local::client_token(&data_dir));
            runtime.block_on(client::run_cli(node, &data_dir, token, action))
        }),
    }
}

/// `chorus init --join`: writes the joiner, prints its configuration file and address, and
/// tells the operator what to approve.
fn init_joiner(data_dir: &Path, url: &str, local: &local::LocalOptions) -> Result<(), String> {
    let (path, config, key) = local::init_joiner(data_dir, url, local)?;
    say(&format!("{} {}", path.display(), config.base_url()));
    eprintln!(
        "node {key} will join the network of {url}. Its section admits it once the \
         operators of more than two thirds of the members approve it, for a local \
         cluster: chorus admin admit {key} --data-dir <the cluster's data directory>. \
         Then start it: chorus node --config {}",
        path.display()
    );
    Ok(())
}

/// A multi-threaded tokio runtime, or why there is none.
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
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

/// The log format this process was started with; the node processes it starts use it too.
pub static LOG_FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Prints a line on stdout; a closed stdout (the reader went away) is not an error for a
/// launcher whose job is its children.
pub fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
