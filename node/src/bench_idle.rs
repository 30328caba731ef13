//! `chorus bench --idle`: what a cluster with nothing to do costs, and how fast it answers
//! when work comes back. Each round leaves the cluster quiet for `--quiet-seconds`, measures
//! each node process's CPU time over the last `CPU_WINDOW` of it (local clusters only: the
//! processes must be ours), then sends one command and times it. Prints the figures, and
//! one JSON object on the last line.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use chorus_node::cli::say;
use chorus_node::client::{Client, outcome_name};

use crate::bench::percentile;

/// CPU time is measured over at most this much of the quiet period's end.
const CPU_WINDOW: Duration = Duration::from_secs(30);

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// What was asked.
pub struct IdleOptions {
    /// Quiet time before each timed command.
    pub quiet: Duration,
    /// Rounds (quiet period, then one command).
    pub rounds: usize,
}

/// Runs the rounds against `clients` (commands go to each node in turn); `pids` are the
/// node processes when this program started them (CPU is not measured otherwise).
pub async fn run(options: &IdleOptions, clients: &[Client], pids: &[u32]) -> Result<Value, String> {
    let first = clients.first().ok_or("no node to talk to")?;
    let stream = format!("Notebook@idle-{:08x}", rand::random::<u32>());
    let opened = first
        .submit(
            &stream,
            json!({"InitiateNotebook": {"title": "idle"}}),
            None,
        )
        .await?;
    if opened.status != 201 {
        return Err(format!("{stream}: {}", outcome_name(&opened)));
    }
    let window = CPU_WINDOW.min(options.quiet);
    let mut cpu_by_round: Vec<Vec<f64>> = Vec::new();
    let mut wake_ms = Vec::new();
    for round in 0..options.rounds {
        say(&format!(
            "round {} of {}: quiet for {:.0} s",
            round + 1,
            options.rounds,
            options.quiet.as_secs_f64()
        ));
        tokio::time::sleep(options.quiet - window).await;
        let before = cpu_ticks(pids);
        tokio::time::sleep(window).await;
        let after = cpu_ticks(pids);
        if let (Some(before), Some(after)) = (before, after) {
            let percent = before
                .iter()
                .zip(&after)
                .map(|(before, after)| {
                    (after - before) as f64 / USER_HZ / window.as_secs_f64() * 100.0
                })
                .collect::<Vec<_>>();
            say(&format!(
                "  CPU per node over the last {:.0} s: {}",
                window.as_secs_f64(),
                show(&percent)
            ));
            cpu_by_round.push(percent);
        }
        let node = &clients[round % clients.len()];
        let command =
            json!({"AddNote": {"text": format!("after quiet round {round}"), "author": "bench"}});
        let started = Instant::now();
        let answer = node.submit(&stream, command, None).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1_000.0;
        if answer.status != 201 {
            return Err(format!(
                "the command after the quiet period: {}",
                outcome_name(&answer)
            ));
        }
        say(&format!(
            "  first command after the quiet period: {elapsed:.1} ms"
        ));
        wake_ms.push(elapsed);
    }
    let per_node: Vec<f64> = (0..pids.len())
        .map(|node| {
            let samples: Vec<f64> = cpu_by_round.iter().map(|round| round[node]).collect();
            round2(percentile(&samples, 0.5))
        })
        .collect();
    Ok(json!({
        "bench": "chorus-idle",
        "nodes": clients.len(),
        "rounds": options.rounds,
        "quiet_seconds": options.quiet.as_secs_f64(),
        "cpu_window_seconds": window.as_secs_f64(),
        "cpu_percent_of_a_core_per_node_median": if cpu_by_round.is_empty() { Value::Null } else { json!(per_node) },
        "wake_latency_ms": wake_ms.iter().map(|ms| round2(*ms)).collect::<Vec<_>>(),
        "wake_latency_ms_median": round2(percentile(&wake_ms, 0.5)),
    }))
}

/// User plus system CPU ticks of each process, or `None` if one cannot be read (it exited,
/// or this is not Linux).
fn cpu_ticks(pids: &[u32]) -> Option<Vec<u64>> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces: fields count from after its closing ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .collect()
}

fn show(percent: &[f64]) -> String {
    percent
        .iter()
        .map(|value| format!("{value:.2}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
