//! Kill -9 one of 4 real nodes while clients load every node, restart it from its data
//! directory, and check that nothing a client was told is lost or doubled: every
//! acknowledged command's event is held exactly once by every node, the restarted node
//! included, and commands sent again with the same id after the crash are not applied twice.

mod support;

use std::time::Duration;

use support::{Load, Nodes, Sent, check_accounts, deposit, open_accounts, submit};

#[test]
fn a_node_killed_under_load_restarts_without_losing_or_doubling_anything() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let accounts: Vec<String> = (0..4)
        .map(|index| format!("BankAccount@k{index}"))
        .collect();
    open_accounts(&nodes.addresses[0], &accounts);

    let load = Load::start(&nodes.addresses, &accounts, 0);
    std::thread::sleep(Duration::from_secs(3));
    // Node 1 takes commands from its client when it dies: some are in flight.
    nodes.kill(1);
    std::thread::sleep(Duration::from_secs(3));
    // The other three are more than 2/3 and keep agreeing meanwhile; node 1 comes back from
    // its replay log and store, then catches up by gossip.
    nodes.restart(1);
    std::thread::sleep(Duration::from_secs(4));
    let mut sent = load.finish();

    let acknowledged = sent.iter().filter(|command| command.acknowledged()).count();
    let by_restarted = sent
        .iter()
        .filter(|command| command.node == 1 && command.acknowledged())
        .filter(|command| command.at > Duration::from_secs(6))
        .count();
    eprintln!(
        "{} commands sent, {acknowledged} acknowledged, {by_restarted} by node 1 after its restart",
        sent.len()
    );
    assert!(by_restarted > 0, "the restarted node acknowledged nothing");
    assert!(acknowledged >= 20, "the load barely ran: {acknowledged}");

    // A client that got no answer sends the same command id again: at most once, whatever
    // happened to the first try.
    let unanswered: Vec<Sent> = sent
        .iter()
        .filter(|command| !command.acknowledged())
        .cloned()
        .collect();
    for command in &unanswered {
        let (status, answer) = submit(&nodes.addresses[1], &command.stream, deposit(), &command.id);
        assert!(
            matches!(status, 200 | 201),
            "{}: {status} {answer}",
            command.id
        );
        sent.push(Sent {
            status: Some(status),
            ..command.clone()
        });
    }
    eprintln!("{} sent again", unanswered.len());
    check_accounts(&nodes.addresses, &accounts, &sent);
    nodes.stop();
}
