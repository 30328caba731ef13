//! Real nodes: `chorus up` starts 4 processes on loopback that talk over libp2p; commands sent
//! over HTTP to any node are agreed and every node serves identical streams; bad input gets a
//! clear error and changes nothing; garbage on the gossip port does not take a node down.
//! (Kill -9 and restart of real nodes is not tested yet: issue 6.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A minimal HTTP/1.1 request (the tests need no client library): returns status and body.
fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// `chorus up` as a child; its stdout lines name the nodes' HTTP addresses.
struct Up {
    child: Child,
    addresses: Vec<String>,
}

impl Up {
    fn start(data_dir: &Path, nodes: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
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
        // Keep reading what `up` prints, so it never writes to a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        // Wait until every node answers.
        for address in &addresses {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let up = TcpStream::connect(address.trim_start_matches("http://")).is_ok()
                    && http(address, "GET", "/health", None).0 == 200;
                if up {
                    break;
                }
                assert!(Instant::now() < deadline, "{address} never answered");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { child, addresses }
    }

    /// SIGTERM, as Ctrl-C would: `up` stops its nodes and exits 0.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                assert!(status.success(), "chorus up exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "chorus up did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn submit(base: &str, stream: &str, command: Value, id: &str) -> (u16, Value) {
    let body = json!({ "command": command, "command_id": id }).to_string();
    let (status, text) = http(
        base,
        "POST",
        &format!("/streams/{stream}/commands"),
        Some(&body),
    );
    (status, json_of(&text))
}

fn events(base: &str, stream: &str) -> Vec<Value> {
    let (status, text) = http(base, "GET", &format!("/streams/{stream}?count=1000"), None);
    assert_eq!(status, 200, "{text}");
    json_of(&text)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn command_id(index: usize) -> String {
    format!("{index:032x}")
}

#[test]
fn four_real_nodes_agree_answer_bad_input_clearly_and_stop_cleanly() {
    let directory = tempfile::tempdir().expect("temp dir");
    let up = Up::start(directory.path(), 4);
    let nodes = up.addresses.clone();

    // Commands to every node; each is committed once, whoever gets it.
    let (status, answer) = submit(
        &nodes[0],
        "BankAccount@alice",
        json!({"OpenAccount": {"owner": "alice"}}),
        &command_id(1),
    );
    assert_eq!(status, 201, "{answer}");
    for index in 0..8 {
        let (status, answer) = submit(
            &nodes[index % 4],
            "BankAccount@alice",
            json!({"Deposit": {"amount": 10, "transfer": null}}),
            &command_id(100 + index),
        );
        assert_eq!(status, 201, "deposit {index}: {answer}");
    }
    // The same command id again: answered with its first commit, not applied twice.
    let (status, answer) = submit(
        &nodes[2],
        "BankAccount@alice",
        json!({"Deposit": {"amount": 10, "transfer": null}}),
        &command_id(100),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["outcome"]["AlreadyCommitted"].is_object(),
        "{answer}"
    );

    // Bad input: clear errors with the right status, nothing written.
    let (status, text) = http(
        &nodes[1],
        "POST",
        "/streams/BankAccount@alice/commands",
        Some("{\"command\":"),
    );
    assert_eq!(status, 400, "{text}");
    assert!(json_of(&text)["error"].is_string());
    let (status, answer) = submit(&nodes[1], "Nope@x", json!({"X": {}}), &command_id(900));
    assert_eq!(status, 400, "{answer}");
    let (status, text) = http(&nodes[1], "GET", "/streams/not%20a%20stream", None);
    assert_eq!(status, 400, "{text}");
    let (status, _) = http(&nodes[1], "GET", "/nowhere", None);
    assert_eq!(status, 404);
    let huge = format!("{{\"command\":\"{}\"}}", "a".repeat(2 << 20));
    let (status, _) = http(
        &nodes[1],
        "POST",
        "/streams/BankAccount@alice/commands",
        Some(&huge),
    );
    assert_eq!(status, 413);
    let (status, answer) = submit(
        &nodes[3],
        "BankAccount@alice",
        json!({"Withdraw": {"amount": 1000, "transfer": null}}),
        &command_id(901),
    );
    assert_eq!(status, 409, "a refused command: {answer}");
    // Garbage on the gossip port: the noise handshake fails, the node stays up and keeps
    // agreeing.
    let config = std::fs::read_to_string(directory.path().join("node-0/node.toml"))
        .expect("up wrote the configuration");
    let port = config
        .lines()
        .find_map(|line| line.strip_prefix("listen = \"/ip4/127.0.0.1/tcp/"))
        .and_then(|rest| rest.trim_end_matches('"').parse::<u16>().ok())
        .expect("a loopback listen address");
    for garbage in [
        &b"\x00\x00\x00\x05hello"[..],
        &[0xff; 4096][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        if let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = socket.write_all(garbage);
        }
    }
    let (status, _) = http(&nodes[0], "GET", "/status", None);
    assert_eq!(status, 200, "the node stays up");
    let (status, answer) = submit(
        &nodes[0],
        "BankAccount@bob",
        json!({"OpenAccount": {"owner": "bob"}}),
        &command_id(2),
    );
    assert_eq!(status, 201, "and still agrees: {answer}");

    // Every node serves the same stream: the opening and eight deposits.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = events(&nodes[0], "BankAccount@alice");
    assert_eq!(expected.len(), 9, "{expected:?}");
    for node in &nodes {
        loop {
            let held = events(node, "BankAccount@alice");
            if held == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{node} holds {held:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let balance = expected
        .last()
        .and_then(|event| event["payload"]["balance"].as_u64());
    assert_eq!(balance, Some(80));
    up.stop();
}
