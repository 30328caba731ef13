//! A local cluster of 8 real processes forms two sections of four (`chorus init` draws keys
//! balanced over the prefixes). Commands for streams of both sections, sent to every node,
//! are forwarded to the responsible section and commit once; every node answers a read of
//! any stream with the same events (a node of the other section reads it from a member of
//! the responsible one), and `$all` and a category, gathered from both sections page by page,
//! are the same from every node and hold every event once. A subscription to a stream the
//! node's section does not hold is answered 421, naming the section that does.

mod support;

use chorus_aggregate::StreamKey;
use chorus_routing::XorName;
use serde_json::json;
use support::{Nodes, command_id, deposit, events, gathered, http, json_of, open_accounts};

#[test]
fn eight_nodes_form_two_sections_and_any_node_answers_every_read() {
    let directory = tempfile::tempdir().expect("temp dir");
    let nodes = Nodes::start(directory.path(), 8);
    let prefixes: Vec<String> = nodes
        .addresses
        .iter()
        .map(|address| {
            let status = json_of(&http(address, "GET", "/status", None).1);
            assert_eq!(status["sections"], 2, "{status}");
            assert_eq!(
                status["members"].as_array().map(Vec::len),
                Some(4),
                "{status}"
            );
            status["prefix"].as_str().expect("a prefix").to_owned()
        })
        .collect();
    let mut distinct = prefixes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["0", "1"], "two sections of one bit");

    // One account in each section.
    let section_of = |account: &str| {
        let stream = StreamKey::new("BankAccount", account).expect("a stream key");
        let name = XorName::from_stream_key(&stream.qualified());
        if name.bit(0) { "1" } else { "0" }
    };
    let mut accounts = Vec::new();
    for section in ["0", "1"] {
        let account = (0..)
            .map(|index| format!("s{index}"))
            .find(|account| section_of(account) == section)
            .expect("an account name");
        accounts.push(format!("BankAccount@{account}"));
    }
    open_accounts(&nodes.addresses[0], &accounts);

    // A deposit on each account through every node: each commits once.
    for (node, address) in nodes.addresses.iter().enumerate() {
        for (index, account) in accounts.iter().enumerate() {
            let body = json!({"command": deposit(), "command_id": command_id(node * 10 + index)});
            let (status, text) = http(
                address,
                "POST",
                &format!("/streams/{account}/commands"),
                Some(&body.to_string()),
            );
            assert_eq!(status, 201, "node {node}, {account}: {text}");
        }
    }
    // Sent again through another node, a deposit is not applied twice.
    let again = json!({"command": deposit(), "command_id": command_id(0)});
    let (status, text) = http(
        &nodes.addresses[7],
        "POST",
        &format!("/streams/{}/commands", accounts[0]),
        Some(&again.to_string()),
    );
    assert_eq!(status, 200, "{text}");

    for (index, account) in accounts.iter().enumerate() {
        let section = if index == 0 { "0" } else { "1" };
        let holders: Vec<&String> = nodes
            .addresses
            .iter()
            .zip(&prefixes)
            .filter(|(_, prefix)| *prefix == section)
            .map(|(address, _)| address)
            .collect();
        assert_eq!(holders.len(), 4);
        // Every member of the section holds the open and the eight deposits, once each.
        support::wait_caught_up(
            &holders
                .iter()
                .map(|address| (*address).clone())
                .collect::<Vec<_>>(),
            std::time::Duration::from_secs(30),
            "the section's members",
        );
        let expected = events(holders[0], account);
        assert_eq!(
            expected.len(),
            1 + nodes.addresses.len(),
            "{account}: {expected:?}"
        );
        for holder in &holders {
            assert_eq!(&events(holder, account), &expected, "{account} on {holder}");
        }
        // Every other node reads it from the responsible section: the same events, and
        // backward the same in reverse (newest first, in pages of three).
        let mut reversed = expected.clone();
        reversed.reverse();
        for address in &nodes.addresses {
            assert_eq!(
                &events(address, account),
                &expected,
                "{account} on {address}"
            );
            assert_eq!(
                backward(address, account),
                reversed,
                "{account} backward on {address}"
            );
        }
        // A subscription follows one node's store: the other section's nodes send the
        // subscriber to the right section.
        for (address, prefix) in nodes.addresses.iter().zip(&prefixes) {
            if prefix == section {
                continue;
            }
            let path = format!("/streams/{account}/subscribe");
            let (status, text) = http(address, "GET", &path, None);
            assert_eq!(status, 421, "{account} on {address}: {text}");
            let answer = json_of(&text);
            assert_eq!(answer["section"], section, "{text}");
            assert_eq!(
                answer["members"].as_array().map(Vec::len),
                Some(4),
                "{text}"
            );
        }
    }

    // `$all`, the category and an event type, gathered from both sections in small pages,
    // are the same from every node and hold each account's events once (the type: its
    // deposits).
    let deposits = gathered(&nodes.addresses[0], "/types/Deposited");
    for account in &accounts {
        let held = deposits
            .iter()
            .filter(|event| event["stream"] == account.as_str())
            .count();
        assert_eq!(held, nodes.addresses.len(), "/types/Deposited: {account}");
    }
    assert!(deposits.iter().all(|event| event["type"] == "Deposited"));
    for address in &nodes.addresses[1..] {
        assert_eq!(
            gathered(address, "/types/Deposited"),
            deposits,
            "types on {address}"
        );
    }
    for path in ["/all", "/categories/BankAccount"] {
        let first = gathered(&nodes.addresses[0], path);
        for account in &accounts {
            let held = first
                .iter()
                .filter(|event| event["stream"] == account.as_str())
                .count();
            assert_eq!(held, 1 + nodes.addresses.len(), "{path}: {account}");
        }
        for address in &nodes.addresses[1..] {
            assert_eq!(gathered(address, path), first, "{path} on {address}");
        }
    }
    nodes.stop();
}

/// A stream's events newest first, three at a time, following each page's `next`.
fn backward(address: &str, stream: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut path = format!("/streams/{stream}?direction=backward&count=3");
    loop {
        let (status, text) = http(address, "GET", &path, None);
        assert_eq!(status, 200, "{path} on {address}: {text}");
        let page = json_of(&text);
        all.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => {
                path = format!("/streams/{stream}?direction=backward&count=3&from={next}");
            }
            None => return all,
        }
    }
}
