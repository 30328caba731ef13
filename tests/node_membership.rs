//! Membership of real processes (issue 15): who is admitted and who is removed.
//!
//! The adversary here is a stranger: a process with a fresh key that reaches the members'
//! gossip port, asks to join and forwards commands. It must be refused (the members stay
//! four and keep committing, and it logs why) until the operators of more than two thirds of
//! the members admit its key (`chorus admin admit`); then it joins, receives the section's
//! state, and serves the same streams. Then a member that pauses, and one that restarts,
//! within the liveness span are kept, and one killed for good is voted out, while the others
//! go on committing.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{
    CHORUS, Nodes, command_id, commit, deposit, events, http, json_of, open_accounts, section_size,
    set_config_field, try_http, wait_for,
};

/// The liveness span the test runs with (nodes default to a minute).
const SILENCE_MS: u64 = 4_000;

#[test]
fn a_stranger_is_refused_until_admitted_then_joins_and_a_dead_member_is_removed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::init(directory.path(), 4);
    for config in &nodes.configs {
        set_config_field(config, "remove_silent_after_ms", (SILENCE_MS as i64).into());
    }
    for index in 0..4 {
        nodes.restart(index);
    }
    let founder = nodes.addresses[0].clone();
    let accounts = vec!["BankAccount@m0".to_owned(), "BankAccount@m1".to_owned()];
    open_accounts(&founder, &accounts);
    commit(&founder, &accounts[0], 1);

    // A stranger: a fresh key, pointed at one founder (`--join`), on nobody's allow-list.
    let stranger = add_stranger(&mut nodes, directory.path());
    nodes.restart(stranger);
    let stranger_address = nodes.addresses[stranger].clone();
    let stranger_key = json_of(&http(&stranger_address, "GET", "/status", None).1)["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(section_size(&founder), 4, "a stranger was admitted");
    let log = std::fs::read_to_string(directory.path().join("stranger.log")).expect("log");
    assert!(
        log.contains("refused to admit") && log.contains("allow-list"),
        "the stranger does not say why it was refused:\n{log}"
    );
    let metrics = http(&founder, "GET", "/metrics", None).1;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("chorus_peer_refusals_total{reason=\"join_refused\"}")
            && !line.ends_with(" 0")),
        "refusals are not counted:\n{metrics}"
    );
    // A command sent through the stranger reaches the section as a forward, which is refused.
    let body = json!({"command": deposit(), "command_id": command_id(900)});
    let (status, text) = http(
        &stranger_address,
        "POST",
        "/streams/BankAccount@m0/commands",
        Some(&body.to_string()),
    );
    assert!(
        !(200..300).contains(&status) && text.contains("network map"),
        "{status} {text}"
    );
    // The section keeps committing.
    commit(&founder, &accounts[0], 2);

    // The operators of every founder admit it: it joins, fetches the state, and serves.
    let admitted = Command::new(CHORUS)
        .args(["admin", "admit", &stranger_key, "--data-dir"])
        .arg(directory.path())
        .output()
        .expect("chorus admin runs");
    assert!(admitted.status.success(), "chorus admin: {admitted:?}");
    wait_for("the stranger to be admitted and serve", || {
        section_size(&founder) == 5
            && matches!(
                try_http(&stranger_address, "GET", "/health", None),
                Ok((200, _))
            )
    });
    commit(&founder, &accounts[1], 3);
    wait_for("the joiner to hold the same streams", || {
        accounts
            .iter()
            .all(|account| events(&stranger_address, account) == events(&founder, account))
    });

    // Restarted, the joiner serves again. Its configuration lists no peers: it keeps those
    // it learned at join time in `peers.json` (the members, having learned its address
    // from identify, may also reach it first).
    assert!(directory.path().join("stranger/peers.json").exists());
    nodes.kill(stranger);
    nodes.restart(stranger);
    wait_for("the joiner to serve again after a restart", || {
        matches!(
            try_http(&stranger_address, "GET", "/health", None),
            Ok((200, _))
        )
    });
    commit(&stranger_address, &accounts[0], 6);

    // A member paused for less than the liveness span stays a member, and so does one
    // restarted within it (killed, started again from its data), while commands flow.
    nodes.pause(1);
    std::thread::sleep(Duration::from_millis(SILENCE_MS / 3));
    nodes.resume(1);
    nodes.kill(2);
    nodes.restart(2);
    for number in 0..8 {
        commit(&founder, &accounts[number % 2], 20 + number);
        std::thread::sleep(Duration::from_millis(SILENCE_MS / 5));
    }
    assert_eq!(
        section_size(&founder),
        5,
        "a short pause or a restart removed a member"
    );

    // A member killed for good is voted out by the others, which keep committing. A
    // section votes a member out only while it has work (nobody waits on anyone in an idle
    // one), so a client keeps sending deposits meanwhile.
    nodes.kill(3);
    let mut sent = 0;
    wait_for("the dead member to be removed", || {
        sent += 1;
        let body = json!({"command": deposit(), "command_id": command_id(5_000 + sent)});
        let _ = try_http(
            &founder,
            "POST",
            "/streams/BankAccount@m1/commands",
            Some(&body.to_string()),
        );
        section_size(&founder) == 4
    });
    commit(&founder, &accounts[1], 4);
    commit(&stranger_address, &accounts[0], 5);
    nodes.stop();
}

/// A stranger: a fresh key, no peers, pointed at the first founder with `--join`.
fn add_stranger(nodes: &mut Nodes, directory: &Path) -> usize {
    let mut fields = toml::Table::new();
    fields.insert("remove_silent_after_ms".into(), (SILENCE_MS as i64).into());
    nodes.add_joiner(directory, "stranger", fields)
}
