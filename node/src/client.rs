//! `chorus client`, over the client crate (`chorus-client`), whose one-node `NodeClient`
//! (raw JSON answers) `chorus demo`, `bench`, `admin` and the launcher use too.

use std::path::Path;

use chorus_client::ExpectedVersion;
use futures::StreamExt;

use serde_json::{Value, json};

pub use chorus_client::raw::{Answer, NodeClient as Client, POOL_IDLE_TIMEOUT, REQUEST_TIMEOUT};

const _: () = assert!(POOL_IDLE_TIMEOUT.as_secs() < crate::http::HEADER_READ_TIMEOUT.as_secs());

/// What an answer's outcome was, in one word (`Committed`, `Refused`, ...), or the error.
pub fn outcome_name(answer: &Answer) -> String {
    answer.body["outcome"]
        .as_object()
        .and_then(|outcome| outcome.keys().next().cloned())
        .or_else(|| {
            answer.body["error"]
                .as_str()
                .map(|error| format!("error: {error}"))
        })
        .unwrap_or_else(|| format!("status {}", answer.status))
}

/// What `chorus client` does.
#[derive(Debug, clap::Subcommand)]
pub enum ClientAction {
    /// Send a command, for example
    /// `chorus client send BankAccount@alice '{"Deposit": {"amount": 5, "transfer": null}}'`;
    /// prints the answer (the command id and its outcome) as JSON. Sent again under the same
    /// id while the node is busy or unreachable (at most once applied).
    Send {
        /// The stream (`Category@id`).
        stream: String,
        /// The command, as its aggregate's JSON.
        command: String,
        /// The command id (32 hex digits; sending the same id again never applies it twice).
        /// Random if absent.
        #[arg(long)]
        id: Option<String>,
        /// `any` (the default), `no_stream`, or the version the stream must be at.
        #[arg(long)]
        expected_version: Option<String>,
    },
    /// Print a stream's events, one JSON object per line.
    Read {
        /// The stream (`Category@id`).
        stream: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most events.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Print a stream's events, then each new one as it is agreed, until Ctrl-C (a
    /// subscription: it reconnects by itself and never prints an event twice).
    Tail {
        /// The stream (`Category@id`).
        stream: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Print the node's status as JSON.
    Status,
}

/// The nodes `chorus client` talks to: `--node` (one, or several separated by commas, tried
/// in turn), else every node of the local cluster, node 0 first.
fn pick_nodes(node: Option<String>, data_dir: &Path) -> Result<Vec<String>, String> {
    if let Some(node) = node {
        return Ok(node.split(',').map(|url| url.trim().to_owned()).collect());
    }
    let mut nodes = Vec::new();
    for path in crate::local::config_paths(data_dir) {
        let checked = crate::config::NodeConfig::load(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        nodes.push(checked.config.base_url());
    }
    if nodes.is_empty() {
        return Err(format!(
            "no --node given and no local cluster under {}",
            data_dir.display()
        ));
    }
    Ok(nodes)
}

/// Runs `chorus client`. A command the node does not commit is an error (exit code 1), with
/// the reason printed.
pub async fn run_cli(
    node: Option<String>,
    data_dir: &Path,
    token: Option<String>,
    action: ClientAction,
) -> Result<(), String> {
    let nodes = pick_nodes(node, data_dir)?;
    let mut client = chorus_client::Client::new(&nodes).map_err(|error| error.to_string())?;
    if let Some(token) = &token {
        client = client.with_token(token);
    }
    let trust = crate::local::client_trust(data_dir);
    if let Some(pem) = &trust {
        client = client.trusting(pem).map_err(|error| error.to_string())?;
    }
    match action {
        ClientAction::Send {
            stream,
            command,
            id,
            expected_version,
        } => send(&client, &stream, &command, id, expected_version).await,
        ClientAction::Read {
            stream,
            from,
            count,
        } => {
            let events = client
                .read_stream(&stream, from, count)
                .await
                .map_err(|error| error.to_string())?;
            for event in events {
                say_json(&event);
            }
            Ok(())
        }
        ClientAction::Tail { stream, from } => tail(&client, &stream, from).await,
        ClientAction::Status => {
            let status = crate::local::trusted(Client::new(&nodes[0])?, trust.as_deref())?;
            let answer = status.get("/status").await?;
            crate::cli::say(&answer.body.to_string());
            if answer.status == 200 {
                Ok(())
            } else {
                Err(format!("status {}", answer.status))
            }
        }
    }
}

fn say_json(value: &impl serde::Serialize) {
    crate::cli::say(&serde_json::to_string(value).unwrap_or_default());
}

/// `chorus client send`: `expected_version` is a number or a name (`any`, `no_stream`).
async fn send(
    client: &chorus_client::Client,
    stream: &str,
    command: &str,
    id: Option<String>,
    expected_version: Option<String>,
) -> Result<(), String> {
    let command: Value = serde_json::from_str(command)
        .map_err(|error| format!("the command is not JSON: {error}"))?;
    let mut command =
        chorus_client::Command::new(stream, &command).map_err(|error| error.to_string())?;
    if let Some(id) = id {
        command = command.with_id(&id);
    }
    if let Some(expected) = expected_version {
        command = command.expecting(match (expected.as_str(), expected.parse::<u64>()) {
            (_, Ok(version)) => ExpectedVersion::Exact(version),
            ("any", _) => ExpectedVersion::Any,
            ("no_stream", _) => ExpectedVersion::NoStream,
            _ => {
                return Err(format!(
                    "--expected-version {expected}: use any, no_stream or a version number"
                ));
            }
        });
    }
    match client.send(&command).await {
        Ok(receipt) => {
            say_json(&json!({ "command_id": receipt.command_id, "outcome": receipt.outcome }));
            Ok(())
        }
        Err(error) => Err(format!("command {}: {error}", command.command_id)),
    }
}

/// `chorus client tail`: prints the stream's events from `from`, then each new one, until
/// Ctrl-C.
async fn tail(client: &chorus_client::Client, stream: &str, from: u64) -> Result<(), String> {
    let mut subscription = client.subscribe_stream(stream, from);
    loop {
        let event = tokio::select! {
            () = crate::cli::shutdown_signal() => return Ok(()),
            event = subscription.next() => event,
        };
        match event {
            Some(Ok(event)) => say_json(&event),
            Some(Err(error)) => return Err(error.to_string()),
            None => return Ok(()),
        }
    }
}
