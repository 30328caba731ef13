//! A rolling domain upgrade with real processes (issue 16). In a file of its own: it stops
//! and starts members several times, and a test running beside it in the same binary could
//! take a stopped member's port meanwhile.

mod support;

use std::time::Duration;

use support::{Nodes, commit, open_accounts, status_of, wait_for};

/// How long the member left on the old program may take to stop.
const REFUSAL_BOUND: Duration = Duration::from_secs(60);

/// The version `/status` says the node's section agreed on.
fn section_version(address: &str) -> String {
    status_of(address)["section_domain"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// A rolling upgrade: members restarted one by one on the new program (domain version 2,
// standing in for 1) go on committing; once three of four run it the section agrees on
// version 2, and the member left on the old program stops, naming the new domain; upgraded
// in turn, it catches up on the same data and serves.
#[test]
fn a_rolling_upgrade_switches_the_section_and_stops_a_member_left_behind() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let accounts = vec!["BankAccount@u0".to_owned()];
    open_accounts(&nodes.addresses[0], &accounts);
    commit(&nodes.addresses[0], &accounts[0], 1);
    let old_log = directory.path().join("node-3-old.log");
    nodes.kill(3);
    nodes.log_to(3, old_log.clone());
    nodes.restart(3);
    for index in 0..3 {
        nodes.kill(index);
        nodes.set_env(index, "CHORUS_DEMO_DOMAIN_VERSION", "2");
        nodes.set_env(index, "CHORUS_DEMO_UPGRADES_FROM", "1");
        nodes.restart(index);
        commit(&nodes.addresses[index], &accounts[0], 2 + index);
        if index < 2 {
            assert_eq!(section_version(&nodes.addresses[3]), "1");
        }
    }
    wait_for("the section to agree on version 2", || {
        nodes.addresses[..3]
            .iter()
            .all(|address| section_version(address) == "2")
    });
    let status = nodes.wait_exit(3, REFUSAL_BOUND);
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(&old_log).unwrap_or_default();
    assert!(
        stderr.contains("the section upgraded to domain version \"2\""),
        "the old member does not say why it stopped:\n{stderr}"
    );
    commit(&nodes.addresses[1], &accounts[0], 5);
    nodes.set_env(3, "CHORUS_DEMO_DOMAIN_VERSION", "2");
    nodes.restart(3);
    commit(&nodes.addresses[3], &accounts[0], 6);
    assert_eq!(section_version(&nodes.addresses[3]), "2");
    nodes.stop();
}
