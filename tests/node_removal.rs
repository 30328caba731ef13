//! The liveness rule with real processes: in a section of 7, two members killed for good are
//! voted out one after the other (5 of 7, then 5 of 6, are more than two thirds), and the
//! section keeps committing throughout. A section votes a member out only while it has work,
//! so a client keeps sending deposits.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Nodes, command_id, deposit, open_accounts, section_size, try_http, wait_for};

/// The liveness span the test runs with (nodes default to a minute).
const SILENCE_MS: i64 = 3_000;

#[test]
fn two_dead_members_of_seven_are_voted_out_and_the_rest_commit() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::init(directory.path(), 7);
    for config in &nodes.configs {
        let text = std::fs::read_to_string(config).expect("config");
        let mut table: toml::Table = toml::from_str(&text).expect("config parses");
        table.insert("remove_silent_after_ms".into(), SILENCE_MS.into());
        std::fs::write(config, toml::to_string(&table).expect("toml")).expect("written");
    }
    for index in 0..7 {
        nodes.restart(index);
    }
    let entry = nodes.addresses[0].clone();
    assert_eq!(section_size(&entry), 7, "one section of seven");
    let account = "BankAccount@r0".to_owned();
    open_accounts(&entry, std::slice::from_ref(&account));

    nodes.kill(5);
    nodes.kill(6);
    let started = Instant::now();
    let mut committed = 0;
    let mut sent = 0;
    let mut seen = Vec::new();
    loop {
        let now = section_size(&entry);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if now <= 5 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "members seen: {seen:?}; {committed} of {sent} deposits committed"
        );
        sent += 1;
        let body = json!({"command": deposit(), "command_id": command_id(sent)});
        let path = format!("/streams/{account}/commands");
        if let Ok((201, _)) = try_http(&entry, "POST", &path, Some(&body.to_string())) {
            committed += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.ends_with(&[6, 5]), "one at a time: {seen:?}");
    // Every live member comes to agree (each applies the removal when it decides that block,
    // so one may be a moment behind the entry node), and the section commits.
    for address in &nodes.addresses[..5] {
        wait_for(&format!("{address} to see five members"), || {
            section_size(address) == 5
        });
    }
    let body = json!({"command": deposit(), "command_id": command_id(1_000_000)});
    let (status, text) = try_http(
        &entry,
        "POST",
        &format!("/streams/{account}/commands"),
        Some(&body.to_string()),
    )
    .expect("answers");
    assert_eq!(status, 201, "{text}");
    assert!(committed > 0, "nothing committed while members were dead");
    nodes.stop();
}
