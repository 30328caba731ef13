//! Members run the same domain (issue 16), with real processes.
//!
//! The adversary is a misconfigured operator: a node started with another application (here
//! the demo with another domain version, `CHORUS_DEMO_DOMAIN_VERSION`) on a member's data,
//! as a joiner, or as a founder. Each must be refused with a message naming both domains,
//! and the section must go on committing without it.

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{CHORUS, Nodes, commit, http, open_accounts, section_size, status_of};

/// How long a refused node may take to stop.
const REFUSAL_BOUND: Duration = Duration::from_secs(60);

/// Runs `chorus node --config CONFIG ARGS` with another domain version until it exits, and
/// returns its status and stderr.
fn run_other_domain(config: &Path, args: &[&str]) -> (ExitStatus, String) {
    let log = config.with_extension("other-domain.log");
    let mut child = Command::new(CHORUS)
        .env("CHORUS_DEMO_DOMAIN_VERSION", "2")
        .arg("node")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("chorus node starts");
    let deadline = Instant::now() + REFUSAL_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a node of another domain kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The section's domain as `/status` names it, and the refused node's.
fn assert_names_both(address: &str, stderr: &str) {
    let domain = &status_of(address)["domain"];
    let section = format!(
        "version {:?} fingerprint {}",
        domain["version"].as_str().expect("a version"),
        domain["fingerprint"].as_str().expect("a fingerprint")
    );
    assert!(
        stderr.contains(&section),
        "the section's domain is not named:\n{stderr}"
    );
    assert!(
        stderr.contains("version \"2\""),
        "the node's own domain is not named:\n{stderr}"
    );
}

#[test]
fn a_member_or_joiner_of_another_domain_is_refused_naming_both() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let founder = nodes.addresses[0].clone();
    let accounts = vec!["BankAccount@d0".to_owned()];
    open_accounts(&founder, &accounts);
    commit(&founder, &accounts[0], 1);

    // A member restarted with another application on its data: refused at start.
    nodes.kill(3);
    let (status, stderr) = run_other_domain(&nodes.configs[3], &[]);
    assert!(!status.success(), "{status}");
    assert_names_both(&founder, &stderr);
    nodes.restart(3);
    commit(&nodes.addresses[3], &accounts[0], 2);

    // A joiner with another application: the members refuse it, it stops, they stay four.
    let joiner = nodes.add_joiner(directory.path(), "joiner", toml::Table::new());
    let join = nodes.addresses[0].clone();
    let (status, stderr) = run_other_domain(&nodes.configs[joiner], &["--join", &join]);
    assert!(!status.success(), "{status}");
    assert_names_both(&founder, &stderr);
    assert_eq!(section_size(&founder), 4);
    commit(&founder, &accounts[0], 3);
    nodes.stop();
}

#[test]
fn a_founder_of_another_domain_stops_and_the_others_commit() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::init(directory.path(), 4);
    for index in 0..3 {
        nodes.restart(index);
    }
    let (status, stderr) = run_other_domain(&nodes.configs[3], &[]);
    assert!(!status.success(), "{status}");
    assert_names_both(&nodes.addresses[0], &stderr);
    let accounts = vec!["BankAccount@f0".to_owned()];
    open_accounts(&nodes.addresses[1], &accounts);
    commit(&nodes.addresses[2], &accounts[0], 1);
    // The members dropped its sync requests, and count them.
    let dropped: u64 = nodes.addresses[..3]
        .iter()
        .map(|address| {
            http(address, "GET", "/metrics", None)
                .1
                .lines()
                .find(|line| {
                    line.starts_with("chorus_peer_refusals_total{reason=\"other_domain\"}")
                })
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        dropped > 0,
        "no member counted a sync request of another domain"
    );
    nodes.stop();
}
