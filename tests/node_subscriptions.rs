//! A subscriber that loses its node every few seconds (issue 16): the node it reads from is
//! killed (`kill -9`) and restarted while commands keep committing, and the client crate's
//! subscription moves to the next node by itself, resuming after the last event it yielded.
//! It must see every event of the stream exactly once, in order, the same as a read.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::{Nodes, command_id, deposit, try_http};

/// Deposits the writer commits.
const DEPOSITS: usize = 120;

#[test]
fn a_subscriber_moved_between_dying_nodes_sees_every_event_once_in_order() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let account = "BankAccount@subscribed".to_owned();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    // The account is opened with the full envelope: a correlation id and metadata, which its
    // event carries on every node.
    let correlation = format!("{:032x}", 0xc0de);
    let open = chorus_client::Command::new(&account, &json!({"OpenAccount": {"owner": "s"}}))
        .expect("a command")
        .correlated_with(&correlation)
        .with_metadata(json!({"source": "node_subscriptions", "attempt": 1}));
    let token = support::token_for(&nodes.addresses[0]).expect("the cluster's token");
    let opener = chorus_client::Client::new(&[nodes.addresses[0].clone()])
        .expect("a client")
        .with_token(&token);
    let receipt = runtime.block_on(opener.send(&open)).expect("opened");

    // The writer commits through node 0, which is never killed, one deposit every 50 ms,
    // each sent again under its id until it commits.
    let writer = {
        let (address, account) = (nodes.addresses[0].clone(), account.clone());
        std::thread::spawn(move || {
            for number in 0..DEPOSITS {
                let body = json!({"command": deposit(), "command_id": command_id(5_000 + number)});
                let path = format!("/streams/{account}/commands");
                let deadline = Instant::now() + Duration::from_secs(60);
                while !matches!(
                    try_http(&address, "POST", &path, Some(&body.to_string())),
                    Ok((200 | 201, _))
                ) {
                    assert!(
                        Instant::now() < deadline,
                        "deposit {number} never committed"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The subscriber knows nodes 1, 2, 3 and 0, in that order, and starts on node 1.
    let order = [1, 2, 3, 0];
    let urls: Vec<String> = order
        .iter()
        .map(|node| nodes.addresses[*node].clone())
        .collect();
    let client = chorus_client::Client::new(&urls)
        .expect("a client")
        .with_token(&token);
    let mut subscription = runtime.block_on(async { client.subscribe_stream(&account, 1) });
    let expected = DEPOSITS + 1; // the opening event, then the deposits
    let mut sequences = Vec::new();
    let mut first = None;
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sequences.len() < expected {
        assert!(
            Instant::now() < deadline,
            "only {} events arrived",
            sequences.len()
        );
        let event = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
        });
        match event {
            Ok(Some(Ok(event))) => {
                sequences.push(event.sequence);
                first.get_or_insert(event);
            }
            Ok(Some(Err(error))) => panic!("the subscription failed: {error}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {} // nothing new for a moment
        }
        // Every two seconds the node the subscriber should be on dies, and comes back a
        // second later (in the same step: the others carry the section meanwhile).
        if Instant::now() >= next_kill && kills < 3 {
            let victim = order[kills];
            nodes.kill(victim);
            std::thread::sleep(Duration::from_secs(1));
            nodes.restart(victim);
            kills += 1;
            next_kill = Instant::now() + Duration::from_secs(2);
        }
    }
    writer.join().expect("the writer finished");
    assert_eq!(kills, 3, "the load ended before every kill");
    let in_order: Vec<u64> = (1..=expected as u64).collect();
    assert_eq!(sequences, in_order, "each event once, in order");
    let first = first.expect("the opening event");
    assert_eq!(first.correlation_id.as_deref(), Some(correlation.as_str()));
    assert_eq!(
        first.causation_id.as_deref(),
        Some(receipt.command_id.as_str())
    );
    assert_eq!(
        first.metadata,
        Some(json!({"source": "node_subscriptions", "attempt": 1}))
    );
    // And they are the stream's events as a read gives them.
    let read = runtime
        .block_on(client.read_stream(&account, 1, 1_000))
        .expect("a read");
    assert_eq!(read.len(), expected);
    nodes.stop();
}
