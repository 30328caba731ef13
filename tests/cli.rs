//! The `chorus` command line as a user meets it: the demo (the README's main command) runs a
//! real local cluster end to end and reports that every node agrees; bad flags and bad
//! files get a clear error and a failing exit code, and start nothing.

mod support;

use std::process::Command;

use support::CHORUS;

fn run(args: &[&str], directory: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(CHORUS)
        .args(args)
        .current_dir(directory)
        .output()
        .expect("chorus runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_demo_starts_a_cluster_drives_the_workload_and_shows_agreement() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (ok, stdout, stderr) = run(&["demo", "--commands", "60"], directory.path());
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("starting a local cluster of 4 nodes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("every node serves the same streams"),
        "{stdout}"
    );
    assert!(stdout.contains("BankAccount@alice"), "{stdout}");
    let committed: usize = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Committed: "))
        .and_then(|count| count.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(committed >= 40, "few commands committed: {stdout}");
    // The data stays: the cluster's keys and stores are under ./data.
    for index in 0..4 {
        assert!(
            directory
                .path()
                .join(format!("data/node-{index}/node.redb"))
                .exists()
        );
    }
    // A second demo resumes the same cluster: the accounts are there already.
    let (ok, stdout, stderr) = run(&["demo", "--commands", "20"], directory.path());
    assert!(ok, "second demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("every node serves the same streams"),
        "{stdout}"
    );
}

#[test]
fn bad_flags_and_files_get_a_clear_error_and_start_nothing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 8] = [
        (&["init", "--join", "127.0.0.1:7100"], "--join"),
        (
            &["init", "--join", "http://127.0.0.1:7100", "--nodes", "3"],
            "--nodes",
        ),
        (&["bench", "--concurrency", "0"], "--concurrency"),
        (&["bench", "--seconds", "0"], "--seconds"),
        (&["up", "--nodes", "0"], "--nodes"),
        (&["demo", "--commands", "0"], "--commands"),
        (&["node", "--config", "missing.toml"], "missing.toml"),
        (&["client", "status"], "no local cluster"),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = run(args, directory.path());
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains(expected),
            "{args:?}: the error does not name {expected}: {stderr}"
        );
    }
    std::fs::write(
        directory.path().join("bad.toml"),
        "listen = 5\nsurprise = true\n",
    )
    .expect("writes");
    let (ok, _, stderr) = run(&["node", "--config", "bad.toml"], directory.path());
    assert!(!ok);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(
        !directory.path().join("data").exists(),
        "a refused command created data"
    );
}
