//! Kill -9 one of 4 real nodes while clients load every node, restart it from its data
//! directory, and check that nothing a client was told is lost or doubled: every
//! acknowledged command's event is held exactly once by every node, the restarted node
//! included, and commands sent again with the same id after the crash are not applied twice.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    Load, Nodes, Sent, check_accounts, command_id, deposit, open_accounts, resend_unanswered,
    try_http,
};

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
    // The other three are more than 2/3 and keep agreeing meanwhile. Node 1 comes back from
    // its replay log and store; 3 s under load is far beyond the others' prune window, so
    // it cannot catch up by gossip: they tell it, and the section brings it back by state
    // transfer in a new generation. Its client's commands commit again once it is back.
    nodes.restart(1);
    let restarted_at = Instant::now();
    let committed_by_node_1 = || {
        let body = json!({"command": deposit(), "command_id": command_id(20_000_000)});
        matches!(
            try_http(
                &nodes.addresses[1],
                "POST",
                "/streams/BankAccount@k0/commands",
                Some(&body.to_string()),
            ),
            Ok((200 | 201, _))
        )
    };
    while !committed_by_node_1() {
        assert!(
            restarted_at.elapsed() < Duration::from_secs(60),
            "the restarted node commits nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut sent = load.finish();
    sent.push(Sent {
        id: command_id(20_000_000),
        stream: "BankAccount@k0".into(),
        node: 1,
        at: Duration::ZERO,
        status: Some(201),
    });

    let acknowledged = sent.iter().filter(|command| command.acknowledged()).count();
    let (status, text) = support::http(&nodes.addresses[1], "GET", "/status", None);
    assert_eq!(status, 200, "{text}");
    eprintln!(
        "{} commands sent, {acknowledged} acknowledged; node 1 is in generation {} after {:?}",
        sent.len(),
        support::json_of(&text)["generation"],
        restarted_at.elapsed()
    );
    assert!(acknowledged >= 20, "the load barely ran: {acknowledged}");

    // A client that got no answer sends the same command id again: applied at most once,
    // whatever happened to the first try.
    let resent = resend_unanswered(&nodes.addresses[1], &mut sent);
    eprintln!("{resent} sent again");
    check_accounts(&nodes.addresses, &accounts, &sent);
    nodes.stop();
}
