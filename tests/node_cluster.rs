//! Real nodes: `chorus up` starts 4 processes on loopback that talk over libp2p; commands sent
//! over HTTP to any node are agreed and every node serves identical streams; bad input gets a
//! clear error and changes nothing; garbage on the gossip port does not take a node down.
//! Kill -9 and restarts are in `node_kill_one.rs` and `node_restart_group.rs`.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Up, command_id, events, http, json_of, submit, try_raw};

#[test]
fn four_real_nodes_agree_answer_bad_input_clearly_and_stop_cleanly() {
    let directory = tempfile::tempdir().expect("temp dir");
    let up = Up::start(directory.path(), 4);
    let nodes = up.addresses.clone();
    commands_commit_once_whoever_gets_them(&nodes);
    bad_input_gets_clear_errors(&nodes);
    gossip_garbage_does_not_take_a_node_down(directory.path(), &nodes);
    every_node_serves_the_same_stream(&nodes);
    reads_across_streams(&nodes);
    metrics_are_prometheus_text(&nodes);
    a_subscription_catches_up_then_goes_live(&nodes);
    up.stop();
}

/// Commands to every node; each is committed once, whoever gets it.
fn commands_commit_once_whoever_gets_them(nodes: &[String]) {
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
}

/// Bad input: clear errors with the right status, nothing written.
fn bad_input_gets_clear_errors(nodes: &[String]) {
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
    // A declared length far over the limit with two bytes sent (the body never comes): 413 at
    // once, in the API's error shape.
    let (status, text) = try_raw(
        &nodes[1],
        "POST /streams/BankAccount@alice/commands HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: 2000000000\r\n\
         Connection: close\r\n\r\n{}",
        Duration::from_secs(10),
    )
    .expect("answered within 10 s");
    assert_eq!(status, 413, "{text}");
    assert!(json_of(&text)["error"].is_string(), "{text}");
    // A wrong method and a query parameter the route does not take: JSON errors too.
    let (status, text) = http(&nodes[1], "DELETE", "/all", None);
    assert_eq!(status, 405, "{text}");
    assert!(json_of(&text)["error"].is_string(), "{text}");
    let (status, text) = http(&nodes[1], "GET", "/all?database=Bad!", None);
    assert_eq!(status, 400, "{text}");
    assert!(
        json_of(&text)["error"]
            .as_str()
            .is_some_and(|error| error.contains("database"))
    );
    let (status, answer) = submit(
        &nodes[3],
        "BankAccount@alice",
        json!({"Withdraw": {"amount": 1000, "transfer": null}}),
        &command_id(901),
    );
    assert_eq!(status, 409, "a refused command: {answer}");
    // An expected version the stream has passed: refused with the versions named.
    let pinned = json!({
        "command": {"Deposit": {"amount": 1, "transfer": null}},
        "command_id": command_id(902),
        "expected_version": 3,
    });
    let (status, text) = http(
        &nodes[2],
        "POST",
        "/streams/BankAccount@alice/commands",
        Some(&pinned.to_string()),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("is at version 9"), "{text}");
    let (status, text) = http(
        &nodes[2],
        "POST",
        "/streams/BankAccount@alice/commands",
        Some(
            r#"{"command": {"Deposit": {"amount": 1, "transfer": null}}, "expected_version": "soon"}"#,
        ),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("expected_version"), "{text}");
}

/// Garbage on the gossip port: the noise handshake fails, the node stays up and keeps
/// agreeing.
fn gossip_garbage_does_not_take_a_node_down(directory: &std::path::Path, nodes: &[String]) {
    let config = std::fs::read_to_string(directory.join("node-0/node.toml"))
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
}

/// Every node serves the same stream: the opening and eight deposits.
fn every_node_serves_the_same_stream(nodes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = events(&nodes[0], "BankAccount@alice");
    assert_eq!(expected.len(), 9, "{expected:?}");
    for node in nodes {
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
}

/// Reads across streams: the category, $all (in store order, paged), listings. Node 1
/// first applies bob's opening (node 0 answered it; the others apply it moments later).
fn reads_across_streams(nodes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while events(&nodes[1], "BankAccount@bob").is_empty() {
        assert!(
            Instant::now() < deadline,
            "node 1 never applied bob's opening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, text) = http(&nodes[1], "GET", "/categories/BankAccount?count=1000", None);
    assert_eq!(status, 200, "{text}");
    let category = json_of(&text)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(category.len(), 10, "alice's 9 and bob's opening: {text}");
    let (status, text) = http(&nodes[1], "GET", "/all?count=4", None);
    assert_eq!(status, 200, "{text}");
    let page = json_of(&text);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(4), "{text}");
    let next = page["next"].as_u64().expect("a next page");
    let (status, text) = http(
        &nodes[1],
        "GET",
        &format!("/all?from={next}&count=1000"),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let rest = json_of(&text)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rest.len(), 6, "{text}");
    let (status, text) = http(&nodes[1], "GET", "/databases", None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["databases"], json!(["default"]), "{text}");
    let (_, text) = http(&nodes[1], "GET", "/databases/default/categories", None);
    assert_eq!(
        json_of(&text)["categories"],
        json!(["BankAccount"]),
        "{text}"
    );
    let (_, text) = http(
        &nodes[1],
        "GET",
        "/databases/default/categories/BankAccount/streams",
        None,
    );
    let streams = json_of(&text)["streams"].clone();
    assert_eq!(streams[0]["stream"], "BankAccount@alice", "{text}");
    assert_eq!(streams[0]["version"], 9, "{text}");
    assert_eq!(streams[1]["stream"], "BankAccount@bob", "{text}");
    let (status, _) = http(&nodes[1], "GET", "/categories/no%20such?from=x", None);
    assert_eq!(status, 400);
}

/// Metrics in Prometheus text.
fn metrics_are_prometheus_text(nodes: &[String]) {
    let (status, text) = http(&nodes[0], "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("# TYPE chorus_consensus_blocks_total counter"),
        "{text}"
    );
    let committed: u64 = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("chorus_commands_answered_total{outcome=\"committed\"} ")
        })
        .and_then(|value| value.parse().ok())
        .expect("a committed count");
    assert!(committed >= 3, "{text}");
}

/// A subscription: catch-up from sequence 8, then a new event arrives live.
fn a_subscription_catches_up_then_goes_live(nodes: &[String]) {
    let mut subscription =
        TcpStream::connect(nodes[2].trim_start_matches("http://")).expect("connects");
    subscription
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let token = support::token_for(&nodes[2]).expect("the cluster's token");
    write!(
        subscription,
        "GET /streams/BankAccount@alice/subscribe?from=8 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .expect("writes");
    let (status, answer) = submit(
        &nodes[3],
        "BankAccount@alice",
        json!({"Deposit": {"amount": 5, "transfer": null}}),
        &command_id(903),
    );
    assert_eq!(status, 201, "{answer}");
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while seen.matches("data:").count() < 3 {
        let read = std::io::Read::read(&mut subscription, &mut buffer).expect("the events come");
        assert!(read > 0, "the subscription ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    for sequence in [8, 9, 10] {
        assert!(
            seen.contains(&format!("id: {sequence}\n")),
            "{sequence}: {seen}"
        );
    }
    assert!(seen.contains("\"balance\":85"), "the live event: {seen}");
}
