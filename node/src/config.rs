//! A node's configuration: a TOML file, with every field checked on load. Bad input is an
//! error that names the field; nothing starts on a bad configuration.

use crate::access::{Access, TokenConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chorus_consensus::{BlockMode, PeerId};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// One node's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its key (`node.key`) and its redb file (`node.redb`).
    pub data_dir: PathBuf,
    /// The libp2p address to listen on (`/ip4/127.0.0.1/tcp/7200`; port 0 picks one).
    pub listen: String,
    /// The HTTP API address (`127.0.0.1:7100`).
    pub http: String,
    /// The other members at the network's start: every node of a cluster lists the same set.
    /// With `join`, the running nodes this node knows of instead.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// This node was not a founder: on its first start it asks the section its name falls in
    /// (by the map `peers` gives) to admit it, and fetches the section's state once admitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Running nodes' HTTP addresses (`http://HOST:PORT`, several separated by commas) to
    /// learn the network from on the first start, as `chorus node --join` gives them
    /// (written by `chorus init --join`). With several, they must agree on the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_from: Option<String>,
    /// The smallest section (sections split when both halves keep this many).
    #[serde(default = "default_section_size_min")]
    pub section_size_min: usize,
    /// `supermajority` (members re-execute and vote for identical events) or `single`.
    #[serde(default = "default_block_mode")]
    pub block_mode: String,
    /// Gossip interval, ms.
    #[serde(default = "default_gossip_interval_ms")]
    pub gossip_interval_ms: u64,
    /// Whom this member votes to admit: `allow-list` (the founding `peers`, the keys in
    /// `admit`, and those admitted at run time) or `open` (any node: local experiments only).
    #[serde(default = "default_admission")]
    pub admission: String,
    /// Keys (64 hex digits) this member votes to admit when they ask to join.
    #[serde(default)]
    pub admit: Vec<String>,
    /// The bearer token of the admin API (`/admin/...`, `chorus admin`); without one the
    /// admin API is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// A member from which nothing new was heard this long (ms) is voted out; 0 turns the
    /// rule off. A restart shorter than this does not remove a member.
    #[serde(default = "default_remove_silent_after_ms")]
    pub remove_silent_after_ms: u64,
    /// `tokens` (the default: every read and write needs one of `tokens`) or `open` (anyone
    /// who reaches the HTTP port reads and writes: local experiments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The API tokens clients send as `Authorization: Bearer <secret>`, with their scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
    /// Serve the HTTP API over TLS with this certificate chain (PEM), with `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<PathBuf>,
    /// The private key (PEM) of `tls_certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Certificates (PEM) to trust when a joining node reads the nodes it joins through
    /// over HTTPS (a cluster's self-signed certificate). Without it, a node trusts its own
    /// `tls_certificate` (the members of a local TLS cluster share one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_trust: Option<PathBuf>,
}

impl NodeConfig {
    /// The node's HTTP API as a URL: `https://` when it serves TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls_certificate.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http)
    }
}

/// Another node: its public key (hex) and libp2p address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Its libp2p address.
    pub address: String,
}

fn default_section_size_min() -> usize {
    4
}

fn default_block_mode() -> String {
    "supermajority".to_owned()
}

fn default_gossip_interval_ms() -> u64 {
    20
}

fn default_admission() -> String {
    "allow-list".to_owned()
}

fn default_remove_silent_after_ms() -> u64 {
    chorus_engine::engine::limits::REMOVE_SILENT_AFTER_MS
}

/// Shortest admin token: guessing it must be hopeless.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 16;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for a node configuration.
    #[error("{path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        error: String,
    },
    /// A field has a bad value.
    #[error("{field}: {error}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong.
        error: String,
    },
}

/// A checked configuration, ready to run.
#[derive(Clone, Debug)]
pub struct Checked {
    /// As written.
    pub config: NodeConfig,
    /// The libp2p listen address.
    pub listen: Multiaddr,
    /// The HTTP address.
    pub http: SocketAddr,
    /// The peers, parsed.
    pub peers: Vec<(PeerId, Multiaddr)>,
    /// The block mode.
    pub block_mode: BlockMode,
    /// `admission = "open"`.
    pub open_admission: bool,
    /// The keys of `admit`, parsed.
    pub admit: Vec<PeerId>,
    /// The liveness rule's span; `None` if off.
    pub remove_silent_after_ms: Option<u64>,
    /// Who may use the HTTP API.
    pub access: Access,
}

impl NodeConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        Self::read(path)?.check()
    }

    /// Reads a TOML file without checking its values (to keep what an older file holds).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            error: error.to_string(),
        })
    }

    /// Checks every field.
    pub fn check(self) -> Result<Checked, ConfigError> {
        let field = |field: &str, error: String| ConfigError::Field {
            field: field.to_owned(),
            error,
        };
        let listen: Multiaddr = self
            .listen
            .parse()
            .map_err(|error| field("listen", format!("not a multiaddr: {error}")))?;
        let http: SocketAddr = self.http.parse().map_err(|error| {
            field(
                "http",
                format!("not an address like 127.0.0.1:7100: {error}"),
            )
        })?;
        let peers = self.checked_peers()?;
        let block_mode = match self.block_mode.as_str() {
            "supermajority" => BlockMode::Supermajority,
            "single" => BlockMode::Single,
            other => {
                return Err(field(
                    "block_mode",
                    format!("{other:?}; use \"supermajority\" or \"single\""),
                ));
            }
        };
        if self.section_size_min == 0 {
            return Err(field("section_size_min", "must be at least 1".to_owned()));
        }
        if let Some(urls) = &self.join_from {
            join_urls(urls).map_err(|problem| field("join_from", problem))?;
        }
        if !(1..=10_000).contains(&self.gossip_interval_ms) {
            return Err(field(
                "gossip_interval_ms",
                "must be between 1 and 10000".to_owned(),
            ));
        }
        let open_admission = match self.admission.as_str() {
            "allow-list" => false,
            "open" => true,
            other => {
                return Err(field(
                    "admission",
                    format!("{other:?}; use \"allow-list\" or \"open\""),
                ));
            }
        };
        let admit = self.checked_admission()?;
        let remove_silent_after_ms = self.checked_silence()?;
        let access = self.checked_access()?;
        Ok(Checked {
            access,
            config: self,
            listen,
            http,
            peers,
            block_mode,
            open_admission,
            admit,
            remove_silent_after_ms,
        })
    }

    /// The liveness rule's span (`None`: off), at least ten gossip intervals.
    fn checked_silence(&self) -> Result<Option<u64>, ConfigError> {
        match self.remove_silent_after_ms {
            0 => Ok(None),
            span if span < 10 * self.gossip_interval_ms => Err(ConfigError::Field {
                field: "remove_silent_after_ms".to_owned(),
                error: format!("{span} is under ten gossip intervals; use 0 to turn the rule off"),
            }),
            span => Ok(Some(span)),
        }
    }

    /// Who may use the HTTP API (`auth`, `tokens`, `admin_token`) and over what (`tls_*`).
    fn checked_access(&self) -> Result<Access, ConfigError> {
        let field = |field: &str, error: String| ConfigError::Field {
            field: field.to_owned(),
            error,
        };
        if self.tls_certificate.is_some() != self.tls_key.is_some() {
            return Err(field(
                "tls_certificate",
                "tls_certificate and tls_key go together".to_owned(),
            ));
        }
        Access::new(
            self.auth.as_deref(),
            &self.tokens,
            self.admin_token.as_deref(),
        )
        .map_err(|problem| field("auth", problem))
    }

    /// The founding peers, each key and address checked.
    fn checked_peers(&self) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
        let field = |field: String, error: String| ConfigError::Field { field, error };
        let mut peers = Vec::with_capacity(self.peers.len());
        for (index, peer) in self.peers.iter().enumerate() {
            let key = parse_public_key(&peer.public_key)
                .map_err(|error| field(format!("peers[{index}].public_key"), error))?;
            let address: Multiaddr = peer.address.parse().map_err(|error| {
                field(
                    format!("peers[{index}].address"),
                    format!("not a multiaddr: {error}"),
                )
            })?;
            peers.push((key, address));
        }
        Ok(peers)
    }

    /// The keys approved in `admit`, with `admin_token` checked too.
    fn checked_admission(&self) -> Result<Vec<PeerId>, ConfigError> {
        let field = |field: String, error: String| ConfigError::Field { field, error };
        let admit = self
            .admit
            .iter()
            .enumerate()
            .map(|(index, key)| {
                parse_public_key(key).map_err(|error| field(format!("admit[{index}]"), error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(token) = &self.admin_token {
            if token.chars().count() < ADMIN_TOKEN_CHARS_MIN
                || token.chars().any(char::is_whitespace)
            {
                return Err(field(
                    "admin_token".to_owned(),
                    format!("must be at least {ADMIN_TOKEN_CHARS_MIN} characters, without spaces"),
                ));
            }
        }
        Ok(admit)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The nodes to learn the network from, as `--join` and `join_from` give them: one HTTP
/// address, or several separated by commas; why not, naming the bad one.
pub fn join_urls(text: &str) -> Result<Vec<&str>, String> {
    let urls: Vec<&str> = text.split(',').map(str::trim).collect();
    for url in &urls {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!(
                "{url:?} is not an HTTP address like http://127.0.0.1:7100 (several are \
                 separated by commas)"
            ));
        }
    }
    Ok(urls)
}

/// An ed25519 public key from 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<PeerId, String> {
    let key = parse_hex32(text)?;
    if ed25519_dalek::VerifyingKey::from_bytes(&key).is_err() {
        return Err("not an ed25519 public key".to_owned());
    }
    Ok(PeerId(key))
}

/// 32 bytes from 64 hex digits.
pub fn parse_hex32(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return Err(format!(
            "expected 64 hex digits, found {} characters",
            text.len()
        ));
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
            .map_err(|_| format!("not hex at character {}", index * 2))?;
    }
    Ok(bytes)
}

/// The node's secret key from `data_dir/node.key` (64 hex digits), created with fresh
/// randomness if the file does not exist: the directory (if new) readable by its owner only
/// (0700), the key written whole to a private temporary file (0600, synced) and then linked
/// as `node.key`, so a crash never leaves a half-written key and two processes never end
/// with two different keys.
pub fn load_or_create_key(data_dir: &Path) -> Result<ed25519_dalek::SigningKey, ConfigError> {
    let path = data_dir.join("node.key");
    let read = |error| ConfigError::Read {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = parse_hex32(&text).map_err(|error| ConfigError::Field {
                field: path.display().to_string(),
                error,
            })?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&secret))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(data_dir).map_err(read)?;
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            match write_secret(&path, hex(&key.to_bytes()).as_bytes()) {
                Ok(()) => Ok(key),
                // Another process created it meanwhile: its key is the node's.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_key(data_dir)
                }
                Err(error) => Err(read(error)),
            }
        }
        Err(error) => Err(read(error)),
    }
}

/// Writes `bytes` to `path`, replacing it, readable by its owner only (0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // An existing file keeps its mode on open: make it private too.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `key` as `data_dir/node.key` (the directory made private if new), failing if a
/// key is there already: as `load_or_create_key` writes one, for a key drawn elsewhere.
pub fn store_new_key(data_dir: &Path, key: &ed25519_dalek::SigningKey) -> Result<(), ConfigError> {
    let path = data_dir.join("node.key");
    let read = |error| ConfigError::Read {
        path: path.clone(),
        error,
    };
    create_private_dir(data_dir).map_err(read)?;
    write_secret(&path, hex(&key.to_bytes()).as_bytes()).map_err(read)
}

/// Creates `directory` and its missing parents, mode 0700 on Unix (an existing directory is
/// left as it is).
fn create_private_dir(directory: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(directory)
}

/// Writes `bytes` to a new file at `path`, failing with `AlreadyExists` if it exists: whole
/// or not at all. The bytes go to a temporary file beside it (mode 0600 on Unix), synced,
/// then hard-linked as `path` (which fails if `path` exists) and the directory synced.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // A name no other writer uses, process or thread.
    let nonce: u64 = rand::random();
    let temporary = path.with_extension(format!("tmp-{}-{nonce:016x}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    linked?;
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            data_dir: PathBuf::from("data/node-0"),
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            http: "127.0.0.1:0".into(),
            peers: vec![PeerConfig {
                public_key: hex(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                    .verifying_key()
                    .to_bytes()),
                address: "/ip4/127.0.0.1/tcp/7201".into(),
            }],
            join: false,
            section_size_min: 4,
            block_mode: "supermajority".into(),
            gossip_interval_ms: 20,
            admission: "allow-list".into(),
            admit: vec![hex(&ed25519_dalek::SigningKey::from_bytes(&[2; 32])
                .verifying_key()
                .to_bytes())],
            admin_token: Some("a-long-enough-admin-token".into()),
            remove_silent_after_ms: 60_000,
            auth: Some("open".into()),
            tokens: Vec::new(),
            tls_certificate: None,
            tls_key: None,
            join_trust: None,
            join_from: None,
        }
    }

    #[test]
    fn a_good_configuration_checks_and_survives_toml() {
        let text = toml::to_string(&config()).expect("serialises");
        let parsed: NodeConfig = toml::from_str(&text).expect("parses");
        assert_eq!(parsed, config());
        let checked = parsed.check().expect("checks");
        assert_eq!(checked.peers.len(), 1);
        assert_eq!(checked.block_mode, BlockMode::Supermajority);
        assert!(!checked.open_admission);
        assert_eq!(checked.admit.len(), 1);
        assert_eq!(checked.remove_silent_after_ms, Some(60_000));
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.listen = "nowhere".into()), "listen"),
            (Box::new(|c| c.http = "localhost".into()), "http"),
            (
                Box::new(|c| c.join_from = Some("127.0.0.1:7100".into())),
                "join_from",
            ),
            (
                Box::new(|c| c.peers[0].public_key = "abc".into()),
                "peers[0].public_key",
            ),
            (
                Box::new(|c| c.peers[0].address = "x".into()),
                "peers[0].address",
            ),
            (Box::new(|c| c.block_mode = "fast".into()), "block_mode"),
            (Box::new(|c| c.section_size_min = 0), "section_size_min"),
            (Box::new(|c| c.gossip_interval_ms = 0), "gossip_interval_ms"),
            (Box::new(|c| c.admission = "closed".into()), "admission"),
            (Box::new(|c| c.admit[0] = "00".repeat(31)), "admit[0]"),
            (
                Box::new(|c| c.admin_token = Some("short".into())),
                "admin_token",
            ),
            (
                Box::new(|c| c.remove_silent_after_ms = 100),
                "remove_silent_after_ms",
            ),
        ];
        for (mutate, name) in cases {
            let mut bad = config();
            mutate(&mut bad);
            let error = bad.check().expect_err("refused").to_string();
            assert!(error.starts_with(name), "{error} should name {name}");
        }
        let unknown = "data_dir = \"d\"\nlisten = \"/ip4/127.0.0.1/tcp/0\"\nhttp = \"127.0.0.1:0\"\ncolour = \"red\"\n";
        assert!(
            toml::from_str::<NodeConfig>(unknown).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let bytes = [0xab; 32];
        assert_eq!(parse_hex32(&hex(&bytes)), Ok(bytes));
        assert!(parse_hex32("zz").is_err());
        assert!(parse_hex32(&"g".repeat(64)).is_err());
        assert!(parse_hex32(&"é".repeat(32)).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_is_private_and_loads_again() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = root.path().join("a").join("node-0");
        let key = load_or_create_key(&data_dir).expect("created");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&data_dir.join("node.key")), 0o600);
        assert_eq!(mode(&data_dir), 0o700);
        // Only the key: its temporary file is gone.
        assert_eq!(std::fs::read_dir(&data_dir).expect("listed").count(), 1);
        let again = load_or_create_key(&data_dir).expect("loaded");
        assert_eq!(key.to_bytes(), again.to_bytes());
    }

    #[test]
    fn processes_racing_to_create_a_key_end_with_one_key() {
        for _ in 0..20 {
            let root = tempfile::tempdir().expect("tempdir");
            let data_dir = root.path().join("node-0");
            let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| load_or_create_key(&data_dir).expect("key").to_bytes()))
                    .collect();
                racers
                    .into_iter()
                    .map(|racer| racer.join().expect("racer"))
                    .collect()
            });
            assert!(keys.windows(2).all(|pair| pair[0] == pair[1]), "{keys:?}");
            let stored = load_or_create_key(&data_dir).expect("stored").to_bytes();
            assert_eq!(stored, keys[0]);
        }
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it_and_is_left_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("node.key");
        std::fs::write(&path, "not a key").expect("write");
        let error = load_or_create_key(root.path()).expect_err("refused");
        assert!(error.to_string().contains("node.key"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a key");
    }
}
