//! Random engine-mode runs: every seed draws a cluster, a network, faults (a partition, a
//! crash and restart, a forged proposal), membership changes (a leave, a join with state
//! transfer), the transfer saga or not, and a workload, and must end with every command
//! answered and no checker violation. CI runs a few seeds; `CHORUS_SIM_CLUSTER_SEEDS=N` runs
//! more, `CHORUS_SIM_CLUSTER_START=S` starts elsewhere.

use chorus_sim::cluster::{ClusterOutcome, run_cluster_seed};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_engine_runs_find_no_violation() {
    let seeds = env_number("CHORUS_SIM_CLUSTER_SEEDS", 4);
    let start = env_number("CHORUS_SIM_CLUSTER_START", 0);
    let mut failures = Vec::new();
    let mut committed = 0;
    for seed in start..start + seeds {
        let outcome = run_cluster_seed(seed);
        committed += outcome.committed;
        if let Some(failure) = failure(seed, &outcome) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(committed > 0, "no command committed in {seeds} runs");
}

/// A seed that once failed, run as it is drawn now: a node joins a section whose
/// join splits it, restarts on the rolling upgrade's binary before it has enough welcomes,
/// and then hears again only from the members of its own half, which could never make two
/// thirds of the members it knew: it stayed joining and its section never upgraded. The
/// other half now still sends the welcome of the handover it holds. (The draw depends on the
/// code's timing: the scenario is exercised as long as this seed draws it; the failure
/// showed when process managers began to keep many events in flight.)
#[test]
fn engine_seed_210_once_stranded_a_joiner_passes() {
    let outcome = run_cluster_seed(210);
    assert_eq!(failure(210, &outcome), None);
}

/// A seed that once stopped a section for good: node 2, restarted in a rolling upgrade, came
/// back beyond the prune window and built on parents the others had pruned; one member that
/// had not pruned them yet built on node 2's events, and the others then refused its whole
/// chain (RELIABILITY.md, "A late event on a pruned parent"). Pruned events are now retired
/// for a window, so such events are inserted. (It fails without that fix at this code; the
/// draw depends on timing, so it guards the case while the seed draws it.)
#[test]
fn engine_seed_179_once_stopped_a_section_on_pruned_parents_passes() {
    let outcome = run_cluster_seed(179);
    assert_eq!(failure(179, &outcome), None);
}

/// What a seed with violations did and what it violated, with the command that replays it.
fn failure(seed: u64, outcome: &ClusterOutcome) -> Option<String> {
    if outcome.violations.is_empty() {
        return None;
    }
    Some(format!(
        "seed {seed} (replay: CHORUS_SIM_CLUSTER_START={seed} CHORUS_SIM_CLUSTER_SEEDS=1 cargo test -p chorus-sim --test cluster_sweep)\n  {}\n  violations:\n    {}",
        outcome.story.join("\n  "),
        outcome
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n    ")
    ))
}
