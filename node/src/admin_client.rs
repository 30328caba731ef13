//! `chorus admin`: an operator's requests to the admin API of one node or of every node of a
//! local cluster (admit a key, remove a node, show the policy). A section admits or removes
//! a node only once more than two thirds of its members' operators asked, so for a local
//! cluster the request goes to every node.

use std::path::PathBuf;

use axum::http::Method;
use serde_json::json;

use crate::client::Client;
use crate::config::{NodeConfig, parse_public_key};

/// What to ask.
#[derive(Debug, clap::Subcommand)]
pub enum AdminAction {
    /// Approve a key: the node votes to admit it when it asks to join.
    Admit {
        /// The node's public key, 64 hex digits (`chorus node` prints it at start).
        key: String,
    },
    /// Withdraw a key's approval and, if it is a member, vote to remove it.
    Remove {
        /// The node's public key, 64 hex digits.
        key: String,
    },
    /// Show the admission policy.
    Show,
}

/// Which nodes to ask.
#[derive(Debug, clap::Args)]
pub struct AdminTargets {
    /// One node's HTTP address (with `--token`).
    #[arg(long, global = true, requires = "token")]
    pub node: Option<String>,
    /// The admin token of `--node`.
    #[arg(
        long,
        global = true,
        env = "CHORUS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// One node's configuration file (its address and token are read from it).
    #[arg(long, global = true, conflicts_with = "node")]
    pub config: Option<PathBuf>,
    /// Without `--node` or `--config`: every node of the local cluster under this directory.
    #[arg(long, global = true, default_value = "data")]
    pub data_dir: PathBuf,
}

/// Runs `chorus admin`: one line per node asked; fails if any node refused or could not be
/// reached.
pub async fn run(action: AdminAction, targets: AdminTargets) -> Result<(), String> {
    let (path, body) = match &action {
        AdminAction::Admit { key } => ("/admin/admit", Some(node_body(key)?)),
        AdminAction::Remove { key } => ("/admin/remove", Some(node_body(key)?)),
        AdminAction::Show => ("/admin/admission", None),
    };
    let method = if body.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let mut failed = 0;
    let nodes = nodes(&targets)?;
    for client in &nodes {
        match client.request(method.clone(), path, body.as_ref()).await {
            Ok(answer) if (200..300).contains(&answer.status) => {
                crate::cli::say(&format!("{} {}", client.base(), answer.body));
            }
            Ok(answer) => {
                failed += 1;
                crate::cli::say(&format!(
                    "{} {} {}",
                    client.base(),
                    answer.status,
                    answer.body
                ));
            }
            Err(error) => {
                failed += 1;
                crate::cli::say(&format!("{} unreachable: {error}", client.base()));
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} nodes did not take the request",
            nodes.len()
        ));
    }
    Ok(())
}

fn node_body(key: &str) -> Result<serde_json::Value, String> {
    parse_public_key(key).map_err(|error| format!("{key:?}: {error}"))?;
    Ok(json!({ "node": key.trim() }))
}

/// The nodes to ask, each with its token.
fn nodes(targets: &AdminTargets) -> Result<Vec<Client>, String> {
    if let (Some(node), Some(token)) = (&targets.node, &targets.token) {
        return Ok(vec![Client::new(node)?.with_token(token.clone())]);
    }
    let paths = match &targets.config {
        Some(path) => vec![path.clone()],
        None => crate::local::config_paths(&targets.data_dir),
    };
    if paths.is_empty() {
        return Err(format!(
            "no node to ask: no cluster under {} (use --node with --token, or --config)",
            targets.data_dir.display()
        ));
    }
    paths
        .iter()
        .map(|path| {
            let checked = NodeConfig::load(path).map_err(|error| error.to_string())?;
            let token = checked.config.admin_token.clone().ok_or_else(|| {
                format!("{}: no admin_token: the admin API is off", path.display())
            })?;
            let client = Client::new(&checked.config.base_url())?.with_token(token);
            crate::local::trusted(
                client,
                crate::local::config_trust(&checked.config).as_deref(),
            )
        })
        .collect()
}
