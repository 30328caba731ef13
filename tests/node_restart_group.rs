//! Kill -9 a whole section (all 4 real nodes) under load, restart every node from its data
//! directory, and check that the group goes on agreeing with nothing lost or doubled: every
//! acknowledged command's event is held exactly once by every node, new commands commit after
//! the restart, and none of the commands in flight at the crash is applied twice when sent
//! again.

mod support;

use std::time::Duration;

use support::{Load, Nodes, check_accounts, open_accounts, resend_unanswered};

#[test]
fn a_whole_group_killed_under_load_restarts_from_disk_and_goes_on() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let accounts: Vec<String> = (0..3)
        .map(|index| format!("BankAccount@g{index}"))
        .collect();
    open_accounts(&nodes.addresses[0], &accounts);

    let load = Load::start(&nodes.addresses, &accounts, 0);
    std::thread::sleep(Duration::from_secs(4));
    for index in 0..4 {
        nodes.kill(index);
    }
    let mut sent = load.finish();
    let before = sent.iter().filter(|command| command.acknowledged()).count();
    assert!(before >= 20, "the load barely ran: {before}");

    for index in 0..4 {
        nodes.restart(index);
    }
    // The group agrees again: new commands through every node, while a client resends the
    // commands that got no answer.
    let load = Load::start(&nodes.addresses, &accounts, 1_000_000);
    let resent = resend_unanswered(&nodes.addresses[0], &mut sent);
    std::thread::sleep(Duration::from_secs(3));
    let after = load.finish();
    let committed_after = after
        .iter()
        .filter(|command| command.acknowledged())
        .count();
    eprintln!(
        "{before} acknowledged before the crash, {} sent again, {committed_after} new after",
        resent
    );
    assert!(
        committed_after >= 10,
        "the group barely agreed after the restart"
    );
    sent.extend(after);
    check_accounts(&nodes.addresses, &accounts, &sent);
    nodes.stop();
}
