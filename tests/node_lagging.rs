//! Real processes: a member that falls behind (SIGSTOP twice in a row, kill -9 then a kill of
//! the whole section, a stall then a kill of the whole section) is brought back: every node
//! reports ready with the same head within `CATCH_UP_BOUND`, and the healthy three keep
//! committing during each fault. The simulator runs the same sequences
//! (`sim/tests/lagging.rs`).

mod support;

use std::time::Duration;

use support::{Load, Nodes, Sent, check_accounts, open_accounts, wait_caught_up};

/// Real time within which a lagging node is ready with the others' head once its faults are
/// over and the load stopped (ARCHITECTURE.md: refresh interval, hint and transfer).
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);

/// Loads the three nodes other than `down` for `duration` and checks that they committed.
fn load_healthy(
    nodes: &Nodes,
    accounts: &[String],
    down: usize,
    duration: Duration,
    first_id: usize,
) -> Vec<Sent> {
    let healthy: Vec<String> = (0..nodes.addresses.len())
        .filter(|node| *node != down)
        .map(|node| nodes.addresses[node].clone())
        .collect();
    let load = Load::start(&healthy, accounts, first_id);
    std::thread::sleep(duration);
    let sent = load.finish();
    let acknowledged = sent.iter().filter(|command| command.acknowledged()).count();
    assert!(
        acknowledged >= 5,
        "the healthy nodes committed {acknowledged} of {} commands while node {down} was down",
        sent.len()
    );
    // `Load` numbers clients from 0 over the addresses it was given.
    sent.into_iter()
        .map(|command| Sent {
            node: if command.node >= down {
                command.node + 1
            } else {
                command.node
            },
            ..command
        })
        .collect()
}

/// Every node answers `/health` 200 (ready) with the same head, within `CATCH_UP_BOUND`.
fn assert_caught_up(nodes: &Nodes, story: &str) -> Duration {
    let (took, head) = wait_caught_up(&nodes.addresses, CATCH_UP_BOUND, story);
    eprintln!("{story}: every node ready at head {head} after {took:?}");
    took
}

/// `kill -9` of every node, then every node started again from its data.
fn kill_all_and_restart(nodes: &mut Nodes) {
    for index in 0..nodes.addresses.len() {
        nodes.kill(index);
    }
    for index in 0..nodes.addresses.len() {
        nodes.restart(index);
    }
}

#[test]
fn a_lagging_member_is_brought_back_whatever_the_order_of_faults() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let accounts: Vec<String> = (0..8)
        .map(|index| format!("BankAccount@lag{index}"))
        .collect();
    open_accounts(&nodes.addresses[0], &accounts);
    let mut sent = Vec::new();

    // The double stall: SIGSTOP 8 s under load, SIGCONT, 4 s, SIGSTOP 8 s again, SIGCONT.
    nodes.pause(1);
    sent.extend(load_healthy(
        &nodes,
        &accounts,
        1,
        Duration::from_secs(8),
        0,
    ));
    nodes.resume(1);
    sent.extend(load_healthy(
        &nodes,
        &accounts,
        1,
        Duration::from_secs(4),
        100_000,
    ));
    nodes.pause(1);
    sent.extend(load_healthy(
        &nodes,
        &accounts,
        1,
        Duration::from_secs(8),
        200_000,
    ));
    nodes.resume(1);
    assert_caught_up(&nodes, "double stall");

    // A kill -9 of 5 s, then, before it caught up, the whole section.
    nodes.kill(2);
    sent.extend(load_healthy(
        &nodes,
        &accounts,
        2,
        Duration::from_secs(5),
        300_000,
    ));
    nodes.restart(2);
    kill_all_and_restart(&mut nodes);
    assert_caught_up(&nodes, "kill, then kill all");

    // A 9 s stall, then the whole section.
    nodes.pause(3);
    sent.extend(load_healthy(
        &nodes,
        &accounts,
        3,
        Duration::from_secs(9),
        400_000,
    ));
    nodes.resume(3);
    kill_all_and_restart(&mut nodes);
    assert_caught_up(&nodes, "stall, then kill all");

    // Nothing acknowledged lost or doubled; commands that got no answer may or may not have
    // committed (the check counts what the stores hold).
    check_accounts(&nodes.addresses, &accounts, &sent);
    nodes.stop();
}
