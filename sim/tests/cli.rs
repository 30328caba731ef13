//! The `chorus-sim` binary: replays print the same output every time, sweeps exit non-zero
//! on a violation with the replay command and a graph dump, and bad flags are clear errors.

use std::process::{Command, Output};

fn chorus_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus-sim"))
        .args(args)
        .output()
        .expect("chorus-sim runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// Replaying one seed twice prints byte-identical output.
#[test]
fn replay_prints_the_same_every_time() {
    let args = ["replay", "--seed", "5", "--nodes", "4..=5"];
    let first = chorus_sim(&args);
    let second = chorus_sim(&args);
    assert!(first.status.success(), "{}", stdout(&first));
    assert_eq!(first.stdout, second.stdout);
    assert!(stdout(&first).contains("no violation"));
    assert!(stdout(&first).contains("trace hash"));
}

// A clean sweep exits 0 and ends with its summary as one JSON line.
#[test]
fn clean_sweep_succeeds_with_a_summary() {
    let output = chorus_sim(&[
        "sweep",
        "--seeds",
        "3",
        "--nodes",
        "4",
        "--faults",
        "crash,drop",
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("simulated hours"));
    let last = text.lines().last().expect("output");
    assert!(
        last.starts_with('{') && last.contains("\"seeds\":3"),
        "{last}"
    );
    assert!(last.contains("\"failed_seeds\":0"));
}

// Breaking the fault bound (2 of 4 withholding) fails the sweep: non-zero exit, the seed,
// the one command that replays it, and the failing node's graph in dot.
#[test]
fn failing_sweep_prints_the_replay_command_and_dumps_the_graph() {
    let dir = std::env::temp_dir().join(format!("chorus-sim-cli-{}", std::process::id()));
    let dir_text = dir.to_string_lossy().into_owned();
    let output = chorus_sim(&[
        "sweep",
        "--seeds",
        "1",
        "--nodes",
        "4",
        "--faults",
        "withhold",
        "--byzantine",
        "2",
        "--liveness-ms",
        "2000",
        "--dump-dir",
        &dir_text,
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("seed 0 FAILED"), "{text}");
    assert!(text.contains("liveness violation"), "{text}");
    let replay = "replay: cargo run --release -p chorus-sim -- replay --seed 0 --nodes 4..=4 \
                  --faults withhold --byzantine 2 --liveness-ms 2000";
    assert!(text.contains(replay), "{text}");
    let dump = std::fs::read_dir(&dir)
        .expect("dump dir")
        .filter_map(Result::ok)
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("seed-0-node-")
        })
        .expect("a dot file");
    let dot = std::fs::read_to_string(dump.path()).expect("dot");
    assert!(dot.starts_with("digraph"), "{dot}");
    let _ = std::fs::remove_dir_all(&dir);
}

// Bad flags are clear errors, not panics.
#[test]
fn bad_flags_are_clear_errors() {
    for (args, expected) in [
        (vec!["sweep", "--nodes", "10..=4"], "node range"),
        (vec!["sweep", "--faults", "meteor"], "unknown fault"),
        (vec!["sweep", "--seeds", "0"], "--seeds must be at least 1"),
        (vec!["bench", "--nodes", "1"], "--nodes must be in 2..=64"),
    ] {
        let output = chorus_sim(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

// An engine-mode sweep runs the whole command path per seed and ends with a JSON summary.
#[test]
fn engine_sweep_succeeds_with_a_summary() {
    let output = chorus_sim(&["sweep", "--engine", "--seeds", "1", "--start-seed", "3"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("no violation"), "{text}");
    let last = text.lines().last().expect("output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("a JSON last line");
    assert_eq!(summary["mode"], "engine");
    assert_eq!(summary["seeds"], 1);
    assert!(
        summary["commands"]
            .as_u64()
            .is_some_and(|commands| commands > 0)
    );
    assert_eq!(summary["failed"], serde_json::json!([]));
}

// `replay --engine` replays one seed of the engine sweep: its story and its checkers, the
// same output every time.
#[test]
fn engine_replay_prints_the_story_the_same_every_time() {
    let args = ["replay", "--engine", "--seed", "3"];
    let first = chorus_sim(&args);
    let second = chorus_sim(&args);
    let text = stdout(&first);
    assert!(first.status.success(), "{text}");
    assert_eq!(first.stdout, second.stdout);
    assert!(text.starts_with("engine seed 3\n"), "{text}");
    assert!(text.contains("section(s)"), "{text}");
    assert!(text.contains("no violation"), "{text}");
}
