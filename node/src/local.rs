//! A local cluster of node processes on loopback: `chorus init` writes its configuration,
//! `chorus up` runs it until Ctrl-C, and `chorus demo` / `chorus bench` start one when none
//! is running. Keys, ports and configurations stay under the data directory, so starting
//! again resumes the same cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Child;

use crate::access::TokenConfig;
use crate::cli::say;
use crate::client::Client;
use crate::config::{NodeConfig, PeerConfig, hex, load_or_create_key, store_new_key};

/// Most nodes a local cluster may have.
pub const LOCAL_NODES_MAX: usize = 64;

/// How the nodes of a local cluster run.
#[derive(Clone, Debug, clap::Args)]
pub struct LocalOptions {
    /// `supermajority` or `single`.
    #[arg(long, default_value = "supermajority")]
    pub block_mode: String,
    /// Milliseconds between a node's gossip syncs: agreement takes a few rounds of gossip,
    /// so this sets the latency floor (and the idle traffic).
    #[arg(long, default_value_t = DEFAULT_GOSSIP_INTERVAL_MS)]
    pub gossip_interval_ms: u64,
    /// Serve the HTTP API over TLS, with a self-signed certificate for 127.0.0.1 and
    /// localhost written beside the nodes (`cluster.crt`), which `chorus client`, `demo` and
    /// `bench` trust by themselves.
    #[arg(long)]
    pub tls: bool,
}

/// Local clusters gossip every 5 ms: on loopback a sync takes well under a millisecond, and
/// agreement latency is a few gossip rounds (BENCHMARKS.md).
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 5;

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            block_mode: "supermajority".into(),
            gossip_interval_ms: DEFAULT_GOSSIP_INTERVAL_MS,
            tls: false,
        }
    }
}

/// Ports a local cluster's nodes listen on are drawn from here: below the ephemeral range
/// (Linux: 32768 and up), where the kernel also picks the source port of every outgoing
/// connection. A port picked there by binding port 0 was free when picked, but until its node
/// binds it, a connection of an earlier node could take it as its source port, and the node
/// then failed to start ("Address already in use"; seen in CI).
pub const LOCAL_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on loopback (bound, then released for the node to take), from
/// `LOCAL_PORTS` if one of a few random tries is free, else any.
pub fn free_port() -> Result<u16, String> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..64 {
        let port = rng.gen_range(LOCAL_PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free port: {error}"))
}

/// Writes the configuration files of a local cluster of `nodes` under `data_dir`, keeping the
/// keys and ports of an earlier run (so a cluster resumes where it stopped), and returns them.
pub fn init(
    nodes: usize,
    data_dir: &Path,
    options: &LocalOptions,
) -> Result<Vec<(PathBuf, NodeConfig)>, String> {
    if !(1..=LOCAL_NODES_MAX).contains(&nodes) {
        return Err(format!("--nodes must be between 1 and {LOCAL_NODES_MAX}"));
    }
    // A data directory holds one cluster: its member list is in every node's saved state.
    let existing_nodes = config_paths(data_dir).len();
    if existing_nodes > 0 && existing_nodes != nodes {
        return Err(format!(
            "{} holds a cluster of {existing_nodes} nodes; use --nodes {existing_nodes} or \
             another --data-dir",
            data_dir.display()
        ));
    }
    // A new cluster gets keys balanced over its sections; an earlier run's keys are kept.
    if existing_nodes == 0 {
        for (index, key) in balanced_keys(nodes).iter().enumerate() {
            let directory = data_dir.join(format!("node-{index}"));
            if !directory.join("node.key").exists() {
                store_new_key(&directory, key).map_err(|error| error.to_string())?;
            }
        }
    }
    // One API token for the whole local cluster (kept from an earlier run), so a client
    // of it needs one; `chorus client`, `demo` and `bench` read it from node 0.
    let tokens = cluster_tokens(&data_dir.join("node-0").join("node.toml"));
    // TLS: asked for, or kept from an earlier run (its certificate is there).
    let tls = if options.tls || data_dir.join(CLUSTER_CERTIFICATE).exists() {
        Some(cluster_certificate(data_dir)?)
    } else {
        None
    };
    // Keys and ports: kept from an earlier run (its configuration files), else new.
    let members = (0..nodes)
        .map(|index| LocalMember::find_or_make(data_dir.join(format!("node-{index}")), options))
        .collect::<Result<Vec<_>, String>>()?;
    let mut configs = Vec::with_capacity(nodes);
    for (index, member) in members.iter().enumerate() {
        let peers = members
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, other)| PeerConfig {
                public_key: hex(&other.key.verifying_key().to_bytes()),
                address: other.listen.clone(),
            })
            .collect();
        configs.push(member.write_config(peers, &tokens, tls.as_ref())?);
    }
    Ok(configs)
}

/// One founder of a local cluster: its key, ports and settings, kept from an earlier run
/// (its configuration file) or new.
struct LocalMember {
    directory: PathBuf,
    key: ed25519_dalek::SigningKey,
    listen: String,
    http: String,
    block_mode: String,
    gossip_interval_ms: u64,
    admin_token: String,
}

impl LocalMember {
    fn find_or_make(directory: PathBuf, options: &LocalOptions) -> Result<Self, String> {
        let key = load_or_create_key(&directory).map_err(|error| error.to_string())?;
        Ok(match NodeConfig::read(&directory.join("node.toml")).ok() {
            // A cluster's settings stay what it was started with: its logs and saved
            // section states depend on them.
            Some(config) => Self {
                directory,
                key,
                listen: config.listen,
                http: config.http,
                block_mode: config.block_mode,
                gossip_interval_ms: config.gossip_interval_ms,
                admin_token: config.admin_token.unwrap_or_else(new_token),
            },
            None => Self {
                directory,
                key,
                listen: format!("/ip4/127.0.0.1/tcp/{}", free_port()?),
                http: format!("127.0.0.1:{}", free_port()?),
                block_mode: options.block_mode.clone(),
                gossip_interval_ms: options.gossip_interval_ms,
                admin_token: new_token(),
            },
        })
    }

    /// Writes its configuration (readable by its owner only: it holds the admin token), with
    /// `peers` as the founding members.
    fn write_config(
        &self,
        peers: Vec<PeerConfig>,
        tokens: &[TokenConfig],
        tls: Option<&(PathBuf, PathBuf)>,
    ) -> Result<(PathBuf, NodeConfig), String> {
        let config = NodeConfig {
            data_dir: self.directory.clone(),
            listen: self.listen.clone(),
            http: self.http.clone(),
            peers,
            join: false,
            section_size_min: SECTION_SIZE_MIN,
            block_mode: self.block_mode.clone(),
            gossip_interval_ms: self.gossip_interval_ms,
            admission: "allow-list".to_owned(),
            admit: Vec::new(),
            admin_token: Some(self.admin_token.clone()),
            remove_silent_after_ms: chorus_engine::engine::limits::REMOVE_SILENT_AFTER_MS,
            join_from: None,
            auth: None,
            tokens: tokens.to_vec(),
            tls_certificate: tls.map(|(certificate, _)| certificate.clone()),
            tls_key: tls.map(|(_, key)| key.clone()),
            join_trust: None,
        };
        config.clone().check().map_err(|error| error.to_string())?;
        let path = self.directory.join("node.toml");
        let text = toml::to_string(&config).map_err(|error| error.to_string())?;
        crate::config::write_private(&path, text.as_bytes())
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Ok((path, config))
    }
}

/// Writes (or keeps) the key and configuration of one node that will join the running
/// network `join_from` (a node's HTTP address) in `data_dir`: free loopback ports, no
/// peers (it learns them from `join_from` on its first start), an admin token. Returns the
/// configuration file, the configuration, and the node's public key (hex), which the
/// members' operators approve with `chorus admin admit`.
pub fn init_joiner(
    data_dir: &Path,
    join_from: &str,
    options: &LocalOptions,
) -> Result<(PathBuf, NodeConfig, String), String> {
    // Checked before anything is written: bad input changes nothing.
    crate::config::join_urls(join_from).map_err(|problem| format!("--join: {problem}"))?;
    let key = load_or_create_key(data_dir).map_err(|error| error.to_string())?;
    let public = hex(&key.verifying_key().to_bytes());
    let path = data_dir.join("node.toml");
    if let Ok(checked) = NodeConfig::load(&path) {
        return Ok((path, checked.config, public));
    }
    let config = NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen: format!("/ip4/127.0.0.1/tcp/{}", free_port()?),
        http: format!("127.0.0.1:{}", free_port()?),
        peers: Vec::new(),
        join: true,
        join_from: Some(join_from.to_owned()),
        section_size_min: SECTION_SIZE_MIN,
        block_mode: options.block_mode.clone(),
        gossip_interval_ms: options.gossip_interval_ms,
        admission: "allow-list".to_owned(),
        admit: Vec::new(),
        admin_token: Some(new_token()),
        remove_silent_after_ms: chorus_engine::engine::limits::REMOVE_SILENT_AFTER_MS,
        auth: None,
        tokens: vec![local_token()],
        tls_certificate: None,
        tls_key: None,
        join_trust: None,
    };
    config.clone().check().map_err(|error| error.to_string())?;
    let text = toml::to_string(&config).map_err(|error| error.to_string())?;
    crate::config::write_private(&path, text.as_bytes())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok((path, config, public))
}

/// The smallest section of a local cluster.
pub const SECTION_SIZE_MIN: usize = 4;

/// Keys for a new local cluster of `nodes`, drawn as the simulator draws them: the most
/// sections (a power of two) that give each at least `SECTION_SIZE_MIN` members, and keys
/// drawn until each section's prefix holds its share (shares differ by at most one), so
/// `chorus up --nodes 8` forms two sections of four.
fn balanced_keys(nodes: usize) -> Vec<ed25519_dalek::SigningKey> {
    let mut sections = 1;
    while nodes / (sections * 2) >= SECTION_SIZE_MIN {
        sections *= 2;
    }
    let bits = sections.trailing_zeros() as usize;
    let share = |bucket: usize| nodes / sections + usize::from(bucket < nodes % sections);
    let mut buckets: Vec<Vec<ed25519_dalek::SigningKey>> = vec![Vec::new(); sections];
    // Each draw lands in a given bucket with probability 1/sections: this ends quickly.
    while (0..sections).any(|bucket| buckets[bucket].len() < share(bucket)) {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let name = chorus_routing::XorName::from_public_key(&key.verifying_key().to_bytes());
        let bucket = (0..bits).fold(0, |index, bit| index * 2 + usize::from(name.bit(bit)));
        if buckets[bucket].len() < share(bucket) {
            buckets[bucket].push(key);
        }
    }
    buckets.into_iter().flatten().collect()
}

/// A new local cluster's API token: reads and writes every database, and the admin API.
fn local_token() -> TokenConfig {
    TokenConfig {
        name: "local".to_owned(),
        secret: new_token(),
        read: vec!["*".to_owned()],
        write: vec!["*".to_owned()],
        admin: true,
    }
}

/// The API tokens of the local cluster whose node 0 is configured at `path`, or a new one.
fn cluster_tokens(path: &Path) -> Vec<TokenConfig> {
    match NodeConfig::read(path) {
        Ok(config) if !config.tokens.is_empty() => config.tokens,
        _ => vec![local_token()],
    }
}

/// The secret a client of the local cluster under `data_dir` sends: node 0's first token
/// that may write (`None`: no cluster there, or an open one).
pub fn client_token(data_dir: &Path) -> Option<String> {
    let config = NodeConfig::read(&data_dir.join("node-0").join("node.toml")).ok()?;
    config
        .tokens
        .into_iter()
        .find(|token| !token.write.is_empty())
        .map(|token| token.secret)
}

/// The local cluster's certificate, beside its nodes' directories: self-signed, for
/// 127.0.0.1 and localhost (its key is `cluster.key`, readable by its owner only).
pub const CLUSTER_CERTIFICATE: &str = "cluster.crt";

/// The local cluster's certificate and key under `data_dir`, made if missing.
fn cluster_certificate(data_dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let certificate = data_dir.join(CLUSTER_CERTIFICATE);
    let key = data_dir.join("cluster.key");
    if certificate.exists() && key.exists() {
        return Ok((certificate, key));
    }
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|error| format!("cannot make a certificate: {error}"))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|error| format!("{}: {error}", data_dir.display()))?;
    crate::config::write_private(&key, made.signing_key.serialize_pem().as_bytes())
        .map_err(|error| format!("{}: {error}", key.display()))?;
    std::fs::write(&certificate, made.cert.pem())
        .map_err(|error| format!("{}: {error}", certificate.display()))?;
    Ok((certificate, key))
}

/// The certificate a client of the local cluster under `data_dir` trusts, if it serves TLS.
pub fn client_trust(data_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(data_dir.join(CLUSTER_CERTIFICATE)).ok()
}

/// `client`, trusting `pem` if there is one (a local cluster serving TLS).
pub fn trusted(client: Client, pem: Option<&[u8]>) -> Result<Client, String> {
    match pem {
        Some(pem) => client.trusting(pem),
        None => Ok(client),
    }
}

/// The certificate a node's configuration serves, for a client of it to trust.
pub fn config_trust(config: &NodeConfig) -> Option<Vec<u8>> {
    std::fs::read(config.tls_certificate.as_ref()?).ok()
}

/// A fresh admin token: 32 random bytes, hex.
fn new_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// The configuration files of the local cluster under `data_dir` (`node-0/node.toml`, ...,
/// up to the first missing one).
pub fn config_paths(data_dir: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|index| data_dir.join(format!("node-{index}")).join("node.toml"))
        .take_while(|path| path.exists())
        .collect()
}

/// The HTTP addresses of the local cluster under `data_dir` if every node of it answers, or
/// `None` (no cluster there, or not all of it running).
pub async fn running(data_dir: &Path) -> Option<Vec<String>> {
    let mut addresses = Vec::new();
    for path in config_paths(data_dir) {
        let checked = NodeConfig::load(&path).ok()?;
        addresses.push(checked.config.base_url());
    }
    if addresses.is_empty() {
        return None;
    }
    let trust = client_trust(data_dir);
    for address in &addresses {
        let client = trusted(Client::new(address).ok()?, trust.as_deref()).ok()?;
        if !client.healthy().await {
            return None;
        }
    }
    Some(addresses)
}

/// Node processes started by this program.
pub struct LocalCluster {
    children: Vec<Child>,
    /// The nodes' HTTP addresses.
    pub addresses: Vec<String>,
}

impl LocalCluster {
    /// Starts one `chorus node` process per configuration (their stdout is dropped, their
    /// logs go to our stderr) and waits until every node answers, at most `ready_within`.
    pub async fn start(
        configs: &[(PathBuf, NodeConfig)],
        ready_within: Duration,
    ) -> Result<Self, String> {
        let executable = std::env::current_exe()
            .map_err(|error| format!("cannot find this program: {error}"))?;
        let mut cluster = Self {
            children: Vec::with_capacity(configs.len()),
            addresses: Vec::with_capacity(configs.len()),
        };
        for (path, config) in configs {
            let child = tokio::process::Command::new(&executable)
                .arg("node")
                .arg("--config")
                .arg(path)
                .env(
                    "CHORUS_LOG_FORMAT",
                    crate::cli::LOG_FORMAT.get().map_or("human", String::as_str),
                )
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|error| format!("cannot start a node: {error}"))?;
            cluster.children.push(child);
            cluster.addresses.push(config.base_url());
        }
        let deadline = tokio::time::Instant::now() + ready_within;
        for (index, address) in cluster.addresses.clone().iter().enumerate() {
            let trust = configs
                .get(index)
                .and_then(|(_, config)| config_trust(config));
            let client = trusted(Client::new(address)?, trust.as_deref())?;
            while !client.healthy().await {
                if let Ok(Some(status)) = cluster.children[index].try_wait() {
                    cluster.stop().await;
                    return Err(format!("node {index} exited while starting ({status})"));
                }
                if tokio::time::Instant::now() >= deadline {
                    cluster.stop().await;
                    return Err(format!("node {index} ({address}) did not answer in time"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    /// The node processes' ids (those still running).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Waits until a node exits on its own; its index and exit status.
    pub async fn first_exit(&mut self) -> (usize, String) {
        let exits = self.children.iter_mut().map(|child| Box::pin(child.wait()));
        let (status, index, _) = futures::future::select_all(exits).await;
        let status = match status {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        };
        (index, status)
    }

    /// SIGTERM to every node (each stops its HTTP server cleanly), then SIGKILL to any still
    /// running after 5 s.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        let stops = self.children.iter_mut().map(|child| async move {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// `chorus up`: starts the cluster, prints each node's HTTP address, and runs until Ctrl-C
/// or SIGTERM (then stops the nodes) or until a node stops on its own (then stops the others
/// and fails).
pub async fn up(nodes: usize, data_dir: &Path, options: &LocalOptions) -> Result<(), String> {
    if running(data_dir).await.is_some() {
        return Err(format!(
            "a cluster is already running with its data under {}",
            data_dir.display()
        ));
    }
    let configs = init(nodes, data_dir, options)?;
    let mut cluster = LocalCluster::start(&configs, Duration::from_secs(60)).await?;
    for address in &cluster.addresses {
        say(address);
    }
    say(&format!(
        "{nodes} nodes running, data under {}; Ctrl-C stops them",
        data_dir.display()
    ));
    let failed = tokio::select! {
        () = crate::cli::shutdown_signal() => None,
        exit = cluster.first_exit() => Some(exit),
    };
    cluster.stop().await;
    match failed {
        None => {
            say("stopped");
            Ok(())
        }
        Some((index, status)) => Err(format!(
            "node {index} stopped on its own ({status}); the others were stopped"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ports_are_free_and_below_the_ephemeral_range() {
        for _ in 0..20 {
            let port = free_port().expect("a free port");
            assert!(LOCAL_PORTS.contains(&port), "port {port}");
            let listener = std::net::TcpListener::bind(("127.0.0.1", port));
            assert!(listener.is_ok(), "port {port} is taken");
        }
    }

    #[test]
    fn a_new_local_cluster_forms_balanced_sections() {
        for (nodes, sections) in [(4, 1), (7, 1), (8, 2), (12, 2), (16, 4)] {
            let keys: Vec<[u8; 32]> = balanced_keys(nodes)
                .iter()
                .map(|key| key.verifying_key().to_bytes())
                .collect();
            assert_eq!(keys.len(), nodes);
            let map = chorus_routing::SectionMap::with_members(SECTION_SIZE_MIN, &keys);
            assert_eq!(map.section_count(), sections, "{nodes} nodes");
            let sizes: Vec<usize> = map.sections().map(|section| section.len()).collect();
            let (least, most) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                most.zip(least)
                    .is_some_and(|(most, least)| most - least <= 1),
                "{sizes:?}"
            );
        }
    }
}
