//! A running section of real processes grows by admitted joiners until it splits (issue 15).
//!
//! Four founders with `section_size_min = 3` hold data in streams of both halves of the
//! address space. Joiners with fresh keys, chosen so that each half reaches three members,
//! are admitted one after another (their keys approved by the operators in advance), each
//! written by `chorus init --join` to learn the network from two founders. At the join that gives both halves three members the
//! section splits in two; each half keeps `section_size_min`, holds its streams, commits new
//! commands, and every node answers reads of both halves with the same events.

mod support;

use std::process::Command;

use chorus_aggregate::StreamKey;
use chorus_routing::XorName;
use support::{
    CHORUS, Nodes, commit, events, gathered, hex, node_id, open_accounts, section_size,
    set_config_field, status_of, try_http, wait_for,
};

/// The smallest section, here: two halves of three can form from four founders and a few
/// joiners.
const SECTION_SIZE_MIN: i64 = 3;

#[test]
fn admitted_joiners_grow_a_section_until_it_splits_and_each_half_serves_its_streams() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::init(directory.path(), 4);
    for config in &nodes.configs {
        set_config_field(config, "section_size_min", SECTION_SIZE_MIN.into());
    }
    for index in 0..4 {
        nodes.restart(index);
    }
    let founder = nodes.addresses[0].clone();

    // One account in each half of the address space, with a deposit each.
    let accounts: Vec<String> = [false, true]
        .iter()
        .map(|&half| {
            (0..)
                .map(|index| format!("BankAccount@h{index}"))
                .find(|account| stream_half(account) == half)
                .expect("an account name")
        })
        .collect();
    open_accounts(&founder, &accounts);
    for (index, account) in accounts.iter().enumerate() {
        commit(&founder, account, index);
    }

    // Joiners' keys: as many in each half as it lacks for three members.
    let founder_halves: Vec<bool> = nodes
        .addresses
        .iter()
        .map(|address| key_half(&node_id(address)))
        .collect();
    let mut joiner_keys = Vec::new();
    let mut seed = 0u8;
    for half in [false, true] {
        let have = founder_halves.iter().filter(|&&bit| bit == half).count();
        for _ in have..SECTION_SIZE_MIN as usize {
            let key = loop {
                seed += 1;
                let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
                if key_half(&key.verifying_key().to_bytes()) == half {
                    break key;
                }
            };
            joiner_keys.push(key);
        }
    }
    let joiner_ids: Vec<String> = joiner_keys
        .iter()
        .map(|key| hex(&key.verifying_key().to_bytes()))
        .collect();
    // The founders' operators approve every joiner; each joiner approves the others.
    for id in &joiner_ids {
        let admitted = Command::new(CHORUS)
            .args(["admin", "admit", id, "--data-dir"])
            .arg(directory.path())
            .output()
            .expect("chorus admin runs");
        assert!(admitted.status.success(), "chorus admin: {admitted:?}");
    }

    let bootstrap = format!("{},{}", nodes.addresses[0], nodes.addresses[1]);
    let mut joiners = Vec::new();
    for (number, key) in joiner_keys.iter().enumerate() {
        // `chorus init --join` writes the joiner's configuration (no peers; on its first
        // start it learns the network from two founders, which must agree on the members)
        // and keeps the key put there first.
        let name = format!("joiner{number}");
        let data_dir = directory.path().join(&name);
        std::fs::create_dir_all(&data_dir).expect("data dir");
        std::fs::write(data_dir.join("node.key"), hex(&key.to_bytes())).expect("key written");
        let output = Command::new(CHORUS)
            .args(["init", "--join", &bootstrap, "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("chorus init runs");
        assert!(output.status.success(), "chorus init --join: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (config, address) = stdout.trim().split_once(' ').expect("'<config> <address>'");
        let guidance = String::from_utf8_lossy(&output.stderr);
        assert!(
            guidance.contains(&joiner_ids[number]) && guidance.contains("chorus admin admit"),
            "chorus init --join names the key to approve: {guidance}"
        );
        let config = std::path::PathBuf::from(config);
        set_config_field(&config, "section_size_min", SECTION_SIZE_MIN.into());
        set_config_field(
            &config,
            "admit",
            toml::Value::Array(joiner_ids.iter().map(|id| id.clone().into()).collect()),
        );
        set_config_field(&config, "gossip_interval_ms", 5.into());
        let index = nodes.add(
            config,
            address.to_owned(),
            directory.path().join(format!("{name}.log")),
            &[],
        );
        nodes.restart(index);
        joiners.push(index);
        let address = nodes.addresses[index].clone();
        let last = number + 1 == joiner_keys.len();
        wait_for(&format!("{name} to join and serve"), || {
            let serving = matches!(try_http(&address, "GET", "/health", None), Ok((200, _)));
            serving && (last || section_size(&founder) == 5 + number)
        });
    }

    // The last join split the section: two sections of at least three, each node in the one
    // its name falls in.
    let total = nodes.addresses.len();
    wait_for("the section to split", || {
        nodes.addresses.iter().all(|address| {
            let status = status_of(address);
            status["sections"] == 2
        })
    });
    let mut per_half = [0usize; 2];
    for address in &nodes.addresses {
        let status = status_of(address);
        let members = status["members"].as_array().map_or(0, Vec::len);
        assert!(members >= SECTION_SIZE_MIN as usize, "{status}");
        let half = key_half(&node_id(address));
        assert_eq!(
            status["prefix"],
            if half { "1" } else { "0" },
            "{address}: {status}"
        );
        per_half[usize::from(half)] += 1;
    }
    assert!(
        per_half
            .iter()
            .all(|&count| count >= SECTION_SIZE_MIN as usize),
        "{per_half:?} of {total}"
    );

    // Each half holds its stream, commits on it, and every node reads it the same.
    for (index, account) in accounts.iter().enumerate() {
        commit(&founder, account, 10 + index);
        let holder = nodes
            .addresses
            .iter()
            .find(|address| key_half(&node_id(address)) == stream_half(account))
            .expect("a member of the stream's half")
            .clone();
        wait_for(&format!("{account} to hold its three events"), || {
            events(&holder, account).len() == 3
        });
        let expected = events(&holder, account);
        wait_for(&format!("every node to read {account} the same"), || {
            nodes
                .addresses
                .iter()
                .all(|address| events(address, account) == expected)
        });
    }
    // `$all`, gathered from both halves page by page, is the same from every node (joiners
    // number their section's events as the founders do, so a cursor means the same at
    // every member) and holds each account's events once.
    let all = gathered(&founder, "/all");
    for account in &accounts {
        let held = all
            .iter()
            .filter(|event| event["stream"] == account.as_str());
        assert_eq!(held.count(), 3, "{account} in $all");
    }
    for address in &nodes.addresses {
        assert_eq!(gathered(address, "/all"), all, "$all on {address}");
    }
    nodes.stop();
}

/// The half of the address space (the first bit of the XOR name) a stream falls in.
fn stream_half(account: &str) -> bool {
    let stream = StreamKey::parse(account).expect("a stream key");
    XorName::from_stream_key(&stream.qualified()).bit(0)
}

/// The half a node's key falls in.
fn key_half(key: &[u8; 32]) -> bool {
    XorName::from_public_key(key).bit(0)
}
