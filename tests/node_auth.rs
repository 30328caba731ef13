//! Client authentication with real processes (issue 16). The adversary is anyone who
//! reaches a node's HTTP port: without one of the node's API tokens it can neither write nor
//! read (401), and a token only does what its scopes say (403 otherwise). The CLI and the
//! client crate send the local cluster's token by themselves.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{
    CHORUS, Nodes, command_id, config_token, json_of, set_config_field, submit, try_raw,
};

/// A raw request without any `Authorization` header.
fn anonymous(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_raw(base, &request, Duration::from_secs(30)).expect("answered")
}

/// A raw request with `token`.
fn bearing(base: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_raw(base, &request, Duration::from_secs(30)).expect("answered")
}

#[test]
fn unauthenticated_requests_get_401_scopes_are_kept_and_the_cli_sends_the_token() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::init(directory.path(), 4);
    // Beside the cluster's own token, a read-only one for the default database.
    const READER: &str = "a-read-only-token-0123456789";
    for config in &nodes.configs {
        let local = config_token(config).expect("init wrote a token");
        let tokens = toml::Value::Array(vec![
            toml::Value::Table(
                toml::toml! { name = "local" secret = local read = ["*"] write = ["*"] admin = true },
            ),
            toml::Value::Table(toml::toml! { name = "reader" secret = READER read = ["default"] }),
        ]);
        set_config_field(config, "tokens", tokens);
    }
    for index in 0..4 {
        nodes.restart(index);
    }
    let node = nodes.addresses[0].clone();
    let deposit = json!({"command": {"OpenAccount": {"owner": "a"}}}).to_string();
    let path = "/streams/BankAccount@auth/commands";

    // No token: 401 for a write and a read, as JSON, with a Bearer challenge.
    for (method, route, body) in [
        ("POST", path, deposit.as_str()),
        ("GET", "/streams/BankAccount@auth", ""),
    ] {
        let (status, text) = anonymous(&node, method, route, body);
        assert_eq!(status, 401, "{method} {route}: {text}");
        assert!(
            json_of(&text)["error"]
                .as_str()
                .is_some_and(|error| error.contains("Bearer")),
            "{text}"
        );
    }
    let (status, _) = bearing(&node, "not-a-token-of-this-node", "POST", path, &deposit);
    assert_eq!(status, 401);
    // A read-only token reads but may not write (403); health and status need nothing.
    let (status, text) = bearing(&node, READER, "POST", path, &deposit);
    assert_eq!(status, 403, "{text}");
    let (status, _) = bearing(&node, READER, "GET", "/streams/BankAccount@auth", "");
    assert_eq!(status, 200);
    assert_eq!(anonymous(&node, "GET", "/status", "").0, 200);
    // The cluster's token writes (the test client sends it).
    let (status, answer) = submit(
        &node,
        "BankAccount@auth",
        json!({"OpenAccount": {"owner": "a"}}),
        &command_id(1),
    );
    assert_eq!(status, 201, "{answer}");

    // `chorus client` finds the local cluster's token by itself; a wrong one is refused.
    let client = |extra: &[&str]| {
        Command::new(CHORUS)
            .args(["client", "--data-dir"])
            .arg(directory.path())
            .args(extra)
            .args([
                "send",
                "BankAccount@auth",
                r#"{"Deposit": {"amount": 3, "transfer": null}}"#,
            ])
            .output()
            .expect("chorus client runs")
    };
    let sent = client(&[]);
    assert!(sent.status.success(), "{sent:?}");
    let refused = client(&["--token", "not-a-token-of-this-node"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    nodes.stop();
}
