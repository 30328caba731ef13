//! The HTTP API over TLS (issue 16): `chorus up --tls` serves HTTPS with the local cluster's
//! self-signed certificate; the CLI and the client crate trust it (and send the token); a
//! client that does not trust it, or speaks plain HTTP, gets nothing from the nodes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    CHORUS, config_token, hex, set_config_field, status_of, try_raw, wait_for, wait_healthy,
};

/// `chorus up --tls` as a child, stopped with SIGTERM.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_tls_cluster_serves_https_to_clients_that_trust_its_certificate() {
    let directory = tempfile::tempdir().expect("temp dir");
    let data_dir = directory.path().join("tls");
    let mut child = Command::new(CHORUS)
        .args(["up", "--nodes", "4", "--tls", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chorus up starts");
    let stdout = child.stdout.take().expect("stdout");
    let up = Up(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut addresses = Vec::new();
    while addresses.len() < 4 {
        let line = lines
            .next()
            .expect("chorus up prints every node")
            .expect("reads");
        if line.starts_with("https://") {
            addresses.push(line);
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let certificate = std::fs::read(data_dir.join("cluster.crt")).expect("the certificate");
    let token = config_token(&data_dir.join("node-0").join("node.toml")).expect("a token");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let trusting = chorus_client::Client::new(&addresses)
        .expect("a client")
        .with_token(&token)
        .trusting(&certificate)
        .expect("trusts the certificate");
    let receipt = runtime
        .block_on(trusting.submit("Notebook@tls", &json!({"InitiateNotebook": {"title": "t"}})))
        .expect("committed over TLS");
    assert!(!receipt.duplicate);
    // The CLI finds the cluster's certificate and token by itself.
    let read = Command::new(CHORUS)
        .args(["client", "--data-dir"])
        .arg(&data_dir)
        .args(["read", "Notebook@tls"])
        .output()
        .expect("chorus client runs");
    assert!(read.status.success(), "{read:?}");
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("NotebookInitiated"),
        "{read:?}"
    );

    // A client that does not trust the certificate is refused by its own TLS check.
    let stranger = chorus_client::Client::new(&addresses[..1])
        .expect("a client")
        .with_token(&token)
        .with_retry(chorus_client::Retry {
            attempts: 2,
            first_backoff: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
        });
    let refused =
        runtime.block_on(stranger.submit("Notebook@tls", &json!({"AddNote": {"text": "x"}})));
    assert!(
        matches!(refused, Err(chorus_client::ClientError::Unavailable { .. })),
        "{refused:?}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = addresses[0].replacen("https://", "http://", 1);
    let answer = try_raw(
        &plain,
        "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(!matches!(answer, Ok((200, _))), "{answer:?}");

    // A node joins through a node's HTTPS address, trusting the cluster's certificate
    // (`join_trust`); approved by the members' operators, it is admitted.
    let joiner_dir = directory.path().join("joiner");
    std::fs::create_dir_all(&joiner_dir).expect("joiner dir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
    std::fs::write(joiner_dir.join("node.key"), hex(&key.to_bytes())).expect("key written");
    let joiner_id = hex(&key.verifying_key().to_bytes());
    let admitted = Command::new(CHORUS)
        .args(["admin", "admit", &joiner_id, "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("chorus admin runs");
    assert!(
        admitted.status.success(),
        "chorus admin over TLS: {admitted:?}"
    );
    let init = Command::new(CHORUS)
        .args(["init", "--join", &addresses[0], "--data-dir"])
        .arg(&joiner_dir)
        .output()
        .expect("chorus init runs");
    assert!(init.status.success(), "chorus init --join: {init:?}");
    let stdout = String::from_utf8_lossy(&init.stdout).into_owned();
    let (config, joiner_address) = stdout.trim().split_once(' ').expect("'<config> <address>'");
    set_config_field(
        std::path::Path::new(config),
        "join_trust",
        data_dir.join("cluster.crt").display().to_string().into(),
    );
    let joiner = Up(Command::new(CHORUS)
        .args(["node", "--config", config])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the joiner starts"));
    wait_healthy(joiner_address);
    wait_for("the joiner to be admitted over TLS", || {
        status_of(joiner_address)["members"]
            .as_array()
            .is_some_and(|members| members.len() == 5)
    });
    drop(joiner);
    drop(up);
}
