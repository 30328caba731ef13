//! What the multi-process tests share: a minimal HTTP client, the `chorus` launcher
//! (`chorus up`) and single node processes (`chorus init` + `chorus node`), and a client
//! load that records which commands were acknowledged.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The `chorus` binary under test.
pub const CHORUS: &str = env!("CARGO_BIN_EXE_chorus");

/// A minimal HTTP/1.1 request (the tests need no client library): status and body, or why
/// the node could not be reached.
pub fn try_http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    try_http_within(base, method, path, body, Duration::from_secs(40))
}

/// `try_http` that gives up when no answer came within `timeout` (as a client that moves
/// on to the next node would).
pub fn try_http_within(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let address = base.trim_start_matches("http://");
    let body = body.unwrap_or("");
    let authorization = token_for(base)
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_raw(base, &request, timeout)
}

/// The API token each node under test takes, by HTTP address (each test's clusters have
/// their own): `try_http` sends it.
static TOKENS: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());

/// Sends `token` with every request to `address` from now on.
pub fn remember_token(address: &str, token: &str) {
    TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(address.trim_end_matches('/').to_owned(), token.to_owned());
}

/// The token requests to `base` carry, if the test registered one.
pub fn token_for(base: &str) -> Option<String> {
    TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(base.trim_end_matches('/'))
        .cloned()
}

/// The secret of the first API token in a node's configuration file.
pub fn config_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table
        .get("tokens")?
        .as_array()?
        .first()?
        .get("secret")?
        .as_str()
        .map(str::to_owned)
}

/// Sends `request` as it is (a whole HTTP/1.1 request, which should ask for `Connection:
/// close`) and reads the answer until the node closes the connection: status and body, or an
/// error if no answer came within `timeout`.
pub fn try_raw(base: &str, request: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(timeout))?;
    // A node may answer before it has read the whole request (a declared length over its
    // limit) and close the connection: the write then fails, but the answer is there to read.
    let written = stream.write_all(request.as_bytes());
    let mut response = String::new();
    let read = stream.read_to_string(&mut response);
    if response.is_empty() {
        written?;
        read?;
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `try_http` where the node must answer.
pub fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_http(base, method, path, body)
        .unwrap_or_else(|error| panic!("{method} {base}{path}: {error}"))
}

/// Parses JSON or fails the test naming the text.
pub fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Sends a command with a given id.
pub fn submit(base: &str, stream: &str, command: Value, id: &str) -> (u16, Value) {
    let body = json!({ "command": command, "command_id": id }).to_string();
    let (status, text) = http(
        base,
        "POST",
        &format!("/streams/{stream}/commands"),
        Some(&body),
    );
    (status, json_of(&text))
}

/// A stream's events as one node serves them, read a page of 1,000 at a time.
pub fn events(base: &str, stream: &str) -> Vec<Value> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    loop {
        let from = all.len() + 1;
        let path = format!("/streams/{stream}?from={from}&count={PAGE}");
        let (status, text) = http(base, "GET", &path, None);
        assert_eq!(status, 200, "{text}");
        let page = json_of(&text)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let full = page.len() == PAGE;
        all.extend(page);
        if !full {
            return all;
        }
    }
}

/// Every event of `path` (`/all` or a category), three at a time, following each page's
/// `next` cursor to the end.
pub fn gathered(address: &str, path: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut from = "1".to_owned();
    loop {
        let (status, text) = http(address, "GET", &format!("{path}?from={from}&count=3"), None);
        assert_eq!(status, 200, "{path} on {address}: {text}");
        let page = json_of(&text);
        all.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => from = next.to_owned(),
            None => return all,
        }
    }
}

/// A node's `/status` (`Null` when it does not answer).
pub fn status_of(address: &str) -> Value {
    match try_http(address, "GET", "/status", None) {
        Ok((200, text)) => json_of(&text),
        _ => Value::Null,
    }
}

/// Members of the node's section, as its `/status` says (0 when it does not answer).
pub fn section_size(address: &str) -> usize {
    status_of(address)["members"].as_array().map_or(0, Vec::len)
}

/// The node's public key, from its `/status`.
pub fn node_id(address: &str) -> [u8; 32] {
    parse_key(status_of(address)["id"].as_str().expect("an id"))
}

/// 64 hex digits to 32 bytes.
pub fn parse_key(hex: &str) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).expect("hex");
    }
    bytes
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Sets `field` of the node configuration file `config` to `value`.
pub fn set_config_field(config: &Path, field: &str, value: toml::Value) {
    let text = std::fs::read_to_string(config).expect("config");
    let mut table: toml::Table = toml::from_str(&text).expect("config parses");
    table.insert(field.into(), value);
    std::fs::write(config, toml::to_string(&table).expect("config writes")).expect("written");
}

/// How long a membership test waits for anything (a join, a removal, a commit).
pub const MEMBERSHIP_BOUND: Duration = Duration::from_secs(60);

/// Commits deposit `number` (command id `1000 + number`) on `stream` through `address`,
/// retrying while the section changes, for at most `MEMBERSHIP_BOUND`.
pub fn commit(address: &str, stream: &str, number: usize) {
    let body = json!({"command": deposit(), "command_id": command_id(1_000 + number)});
    wait_for(&format!("deposit {number} on {stream} to commit"), || {
        matches!(
            try_http(
                address,
                "POST",
                &format!("/streams/{stream}/commands"),
                Some(&body.to_string())
            ),
            Ok((200 | 201, _))
        )
    });
}

/// Waits until `done` holds, looking every 200 ms, at most `MEMBERSHIP_BOUND`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + MEMBERSHIP_BOUND;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {MEMBERSHIP_BOUND:?} for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A command id from a number (32 hex digits).
pub fn command_id(index: usize) -> String {
    format!("{index:032x}")
}

/// Waits until a node answers `/health`.
pub fn wait_healthy(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(try_http(address, "GET", "/health/live", None), Ok((200, _))) {
            return;
        }
        assert!(Instant::now() < deadline, "{address} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `chorus up` as a child; its stdout lines name the nodes' HTTP addresses.
pub struct Up {
    child: Child,
    /// The nodes' HTTP addresses.
    pub addresses: Vec<String>,
}

impl Up {
    /// Starts `chorus up --nodes N` and waits until every node answers.
    pub fn start(data_dir: &Path, nodes: usize) -> Self {
        let mut child = Command::new(CHORUS)
            .args(["up", "--nodes", &nodes.to_string(), "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chorus up starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addresses = Vec::new();
        while addresses.len() < nodes {
            let line = lines
                .next()
                .expect("chorus up prints every node's address")
                .expect("reads");
            if let Some(address) = line.strip_prefix("http://") {
                addresses.push(format!("http://{address}"));
            }
        }
        if let Some(token) = config_token(&data_dir.join("node-0").join("node.toml")) {
            for address in &addresses {
                remember_token(address, &token);
            }
        }
        // Keep reading what `up` prints, so it never writes to a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        // Built before waiting, so a node that never answers still gets `up` stopped.
        let up = Self { child, addresses };
        for address in &up.addresses {
            wait_healthy(address);
        }
        up
    }

    /// SIGTERM, as Ctrl-C would: `up` stops its nodes and exits 0.
    pub fn stop(mut self) {
        terminate(&mut self.child, "chorus up");
    }
}

impl Drop for Up {
    /// A failed test still stops the nodes: SIGTERM makes `up` stop them (SIGKILL would
    /// orphan them), SIGKILL only if it does not exit.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(child: &mut Child, what: &str) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cluster of separately started node processes (`chorus init`, then one `chorus node`
/// per node), so a test can kill and restart each.
pub struct Nodes {
    /// The nodes' configuration files.
    pub configs: Vec<PathBuf>,
    /// The nodes' HTTP addresses.
    pub addresses: Vec<String>,
    children: Vec<Option<Child>>,
    /// Per node, a file its stderr goes to (else the test's stderr).
    logs: Vec<Option<PathBuf>>,
    /// Per node, more arguments for `chorus node` (`--join URL`).
    extra_args: Vec<Vec<String>>,
    /// Per node, environment variables for `chorus node` (the demo's domain version).
    envs: Vec<Vec<(String, String)>>,
}

impl Nodes {
    /// Writes the configurations of `count` nodes under `data_dir` and starts them all.
    pub fn start(data_dir: &Path, count: usize) -> Self {
        let mut nodes = Self::init(data_dir, count);
        for index in 0..count {
            nodes.restart(index);
        }
        nodes
    }

    /// Adds a node whose configuration the test wrote (not started); its stderr goes to
    /// `log`. Returns its index.
    pub fn add(&mut self, config: PathBuf, address: String, log: PathBuf, args: &[&str]) -> usize {
        if let Some(token) = config_token(&config) {
            remember_token(&address, &token);
        }
        self.configs.push(config);
        self.addresses.push(address);
        self.children.push(None);
        self.logs.push(Some(log));
        self.extra_args
            .push(args.iter().map(|arg| (*arg).to_owned()).collect());
        self.envs.push(Vec::new());
        self.configs.len() - 1
    }

    /// Writes a joining node's configuration under `directory/name` (free ports, no peers:
    /// it learns the network from the first node, which it is pointed at with `--join`),
    /// with `fields` added, and adds it to the nodes, not started. Its stderr goes to
    /// `directory/name.log`. Returns its index.
    pub fn add_joiner(&mut self, directory: &Path, name: &str, fields: toml::Table) -> usize {
        let port = || chorus_node::local::free_port().expect("a free port");
        let http_address = format!("127.0.0.1:{}", port());
        let data_dir = directory.join(name);
        let mut table = toml::Table::new();
        table.insert("data_dir".into(), data_dir.display().to_string().into());
        table.insert(
            "listen".into(),
            format!("/ip4/127.0.0.1/tcp/{}", port()).into(),
        );
        table.insert("http".into(), http_address.clone().into());
        table.insert("gossip_interval_ms".into(), 5.into());
        // The cluster's API token, so a test reads the joiner as it reads the others.
        if let Some(tokens) = std::fs::read_to_string(&self.configs[0])
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|founder| founder.get("tokens").cloned())
        {
            table.insert("tokens".into(), tokens);
        }
        table.extend(fields);
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let config = data_dir.join("node.toml");
        std::fs::write(&config, toml::to_string(&table).expect("toml")).expect("written");
        let founder = self.addresses[0].clone();
        self.add(
            config,
            format!("http://{http_address}"),
            directory.join(format!("{name}.log")),
            &["--join", &founder],
        )
    }

    /// Writes the configurations of `count` nodes under `data_dir` without starting them
    /// (`restart` starts each).
    pub fn init(data_dir: &Path, count: usize) -> Self {
        let output = Command::new(CHORUS)
            .args(["init", "--nodes", &count.to_string(), "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("chorus init runs");
        assert!(output.status.success(), "chorus init: {output:?}");
        let mut configs = Vec::new();
        let mut addresses = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let (config, address) = line.split_once(' ').expect("'<config> <address>' lines");
            if let Some(token) = config_token(Path::new(config)) {
                remember_token(address, &token);
            }
            configs.push(PathBuf::from(config));
            addresses.push(address.to_owned());
        }
        assert_eq!(configs.len(), count, "one line per node");
        Self {
            configs,
            addresses,
            children: (0..count).map(|_| None).collect(),
            logs: vec![None; count],
            extra_args: vec![Vec::new(); count],
            envs: vec![Vec::new(); count],
        }
    }

    /// Starts node `index` (again) from its configuration and data, and waits until it
    /// answers.
    pub fn restart(&mut self, index: usize) {
        assert!(self.children[index].is_none(), "node {index} is running");
        let stderr = match &self.logs[index] {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("log file opens"),
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(CHORUS)
            .arg("node")
            .arg("--config")
            .arg(&self.configs[index])
            .args(&self.extra_args[index])
            .envs(self.envs[index].iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("chorus node starts");
        self.children[index] = Some(child);
        wait_healthy(&self.addresses[index]);
    }

    /// Sets an environment variable node `index` gets from its next start on.
    pub fn set_env(&mut self, index: usize, key: &str, value: &str) {
        self.envs[index].retain(|(set, _)| set != key);
        self.envs[index].push((key.to_owned(), value.to_owned()));
    }

    /// Sends node `index`'s stderr to `path` from its next start on.
    pub fn log_to(&mut self, index: usize, path: PathBuf) {
        self.logs[index] = Some(path);
    }

    /// Waits, up to `bound`, for node `index` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, index: usize, bound: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + bound;
        let child = self.children[index].as_mut().expect("node is running");
        loop {
            if let Some(status) = child.try_wait().expect("waits") {
                self.children[index] = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node {index} kept running");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill(&mut self, index: usize) {
        let mut child = self.children[index].take().expect("node is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// SIGSTOP (`resume` sends SIGCONT): the process keeps its memory and sockets but does
    /// nothing, as a node on a stalled machine.
    pub fn pause(&mut self, index: usize) {
        self.signal(index, "-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, index: usize) {
        self.signal(index, "-CONT");
    }

    fn signal(&self, index: usize, signal: &str) {
        let child = self.children[index].as_ref().expect("node is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} node {index}");
    }

    /// SIGTERM to every running node; each must exit cleanly.
    pub fn stop(mut self) {
        for (index, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child.as_mut() {
                terminate(child, &format!("node {index}"));
            }
        }
        self.children.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a client learned about one command it sent.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The command id (hex).
    pub id: String,
    /// The stream.
    pub stream: String,
    /// The node it was sent to.
    pub node: usize,
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// The HTTP status, or `None` when the node could not be reached or the connection broke.
    pub status: Option<u16>,
}

impl Sent {
    /// The command was acknowledged as agreed and durable.
    pub fn acknowledged(&self) -> bool {
        matches!(self.status, Some(200 | 201))
    }
}

/// One client thread per node, each sending deposits of 1 to `accounts` in turn until
/// stopped; command ids are unique across clients (`first_id` onwards, client-interleaved).
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sent>>>,
}

/// A deposit of 1.
pub fn deposit() -> Value {
    json!({"Deposit": {"amount": 1, "transfer": null}})
}

impl Load {
    /// Starts the clients.
    pub fn start(addresses: &[String], accounts: &[String], first_id: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = addresses
            .iter()
            .enumerate()
            .map(|(client, address)| {
                let stop = Arc::clone(&stop);
                let address = address.clone();
                let accounts = accounts.to_vec();
                let clients = addresses.len();
                let started = Instant::now();
                std::thread::spawn(move || {
                    let mut sent = Vec::new();
                    let mut next = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let id = command_id(first_id + next * clients + client);
                        let stream = accounts[(next + client) % accounts.len()].clone();
                        next += 1;
                        let body = json!({ "command": deposit(), "command_id": id }).to_string();
                        let path = format!("/streams/{stream}/commands");
                        let at = started.elapsed();
                        let status = try_http(&address, "POST", &path, Some(&body))
                            .ok()
                            .map(|(status, _)| status);
                        if status.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        sent.push(Sent {
                            id,
                            stream,
                            node: client,
                            at,
                            status,
                        });
                    }
                    sent
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients and returns everything they sent.
    pub fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|client| client.join().expect("client thread"))
            .collect()
    }
}

/// A client that got no answer sends the same command ids again, through `address`: each
/// must be answered as committed (the first try or this one), and is recorded as sent
/// again. Returns how many were.
pub fn resend_unanswered(address: &str, sent: &mut Vec<Sent>) -> usize {
    let unanswered: Vec<Sent> = sent
        .iter()
        .filter(|command| !command.acknowledged())
        .cloned()
        .collect();
    for command in &unanswered {
        let (status, answer) = submit(address, &command.stream, deposit(), &command.id);
        assert!(
            matches!(status, 200 | 201),
            "{}: {status} {answer}",
            command.id
        );
        sent.push(Sent {
            status: Some(status),
            ..command.clone()
        });
    }
    unanswered.len()
}

/// Opens the accounts through node 0.
pub fn open_accounts(address: &str, accounts: &[String]) {
    for (index, account) in accounts.iter().enumerate() {
        let (status, answer) = submit(
            address,
            account,
            json!({"OpenAccount": {"owner": account}}),
            &command_id(10_000_000 + index),
        );
        assert_eq!(status, 201, "{account}: {answer}");
    }
}

/// Waits until every node serves the same events for every account, then checks what the
/// clients were told: every acknowledged command's event is there exactly once, no command
/// is applied twice, and each balance equals its deposits. Returns the agreed events.
pub fn check_accounts(
    addresses: &[String],
    accounts: &[String],
    sent: &[Sent],
) -> BTreeMap<String, Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut agreed = BTreeMap::new();
    for account in accounts {
        let expected = loop {
            let held: Vec<Vec<Value>> = addresses
                .iter()
                .map(|address| events(address, account))
                .collect();
            if held.windows(2).all(|pair| pair[0] == pair[1]) {
                break held.into_iter().next().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{account}: the nodes still differ: {:?}",
                held.iter().map(Vec::len).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut seen = BTreeSet::new();
        for event in &expected {
            if let Some(id) = event["command_id"].as_str() {
                assert!(seen.insert(id.to_owned()), "{account}: {id} applied twice");
            }
        }
        let deposits = expected
            .iter()
            .filter(|event| event["type"] == "Deposited")
            .count() as u64;
        let balance = expected
            .last()
            .and_then(|event| event["payload"]["balance"].as_u64());
        assert_eq!(balance, Some(deposits), "{account}: balance and deposits");
        agreed.insert(account.clone(), expected);
    }
    for command in sent.iter().filter(|command| command.acknowledged()) {
        let held = agreed[&command.stream]
            .iter()
            .filter(|event| event["command_id"] == command.id.as_str())
            .count();
        assert_eq!(held, 1, "acknowledged {} held {held} times", command.id);
    }
    agreed
}

/// Waits until every node answers `/health` 200 (ready) with the same head; panics naming
/// `story`, the heads and each node's health after `bound`. Returns how long it took and
/// the head.
pub fn wait_caught_up(addresses: &[String], bound: Duration, story: &str) -> (Duration, u64) {
    let started = Instant::now();
    loop {
        let ready = addresses
            .iter()
            .all(|address| matches!(try_http(address, "GET", "/health", None), Ok((200, _))));
        let heads: Vec<u64> = addresses
            .iter()
            .map(|address| {
                let (_, text) = http(address, "GET", "/status", None);
                json_of(&text)["head_position"].as_u64().unwrap_or(0)
            })
            .collect();
        if ready && heads.windows(2).all(|pair| pair[0] == pair[1]) {
            return (started.elapsed(), heads[0]);
        }
        if started.elapsed() > bound {
            let health: Vec<String> = addresses
                .iter()
                .map(|address| format!("{:?}", try_http(address, "GET", "/health", None)))
                .collect();
            panic!("{story}: not caught up within {bound:?}: heads {heads:?}, {health:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
