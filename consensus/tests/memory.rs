//! Bounded memory: pruning keeps what a member holds flat over a long run, and never changes
//! a decision (consensus-notes.md, "What the tests should pin down").

mod common;

use chorus_consensus::harness::Cluster;
use chorus_consensus::{Block, Config, Observation, Stats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Runs `syncs` random syncs among `members` members, each proposing a payload every few syncs
/// and echoing the others'; returns the blocks of member 0 and its stats sampled over time.
fn long_run(members: usize, syncs: usize, config: &Config, seed: u64) -> (Vec<Block>, Vec<Stats>) {
    let mut cluster = Cluster::new(members, config, seed, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut samples = Vec::new();
    for step in 0..syncs {
        let requester = rng.gen_range(0..members);
        let mut responder = rng.gen_range(0..members - 1);
        if responder >= requester {
            responder += 1;
        }
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("payload {step}").into_bytes()),
            );
        }
        cluster
            .sync(requester, responder, step as u64)
            .expect("sync");
        if step % 500 == 0 {
            samples.push(cluster.nodes[0].stats());
        }
    }
    (std::mem::take(&mut cluster.blocks[0]), samples)
}

// Proves that events, tallies and fame votes held stay flat while history keeps growing.
#[test]
fn memory_stays_flat_over_a_long_run() {
    // A second of the harness's clock (a sync per millisecond), a thirtieth of the run, so
    // the bound below tests the rounds window and the age together.
    let config = Config {
        prune_min_age_ms: 1_000,
        ..Config::default()
    };
    let (blocks, samples) = long_run(4, 30_000, &config, 11);
    let last = samples.last().expect("samples");
    assert!(
        last.max_round > 20 * config.prune_window_rounds,
        "run too short to exercise pruning: {last:?}"
    );
    assert!(last.events_pruned > 0, "nothing was pruned: {last:?}");
    assert!(
        blocks.len() > 5_000,
        "too few blocks to be a long run: {}",
        blocks.len()
    );
    // Held and retired events are bounded by the kept rounds, not by history.
    assert!(
        ((last.events_held + last.events_retired) as u64) * 10 < last.events_inserted,
        "held {} and retired {} of {} inserted events",
        last.events_held,
        last.events_retired,
        last.events_inserted
    );
    // Flat: the second half of the run never holds much more than the first half did.
    let half = samples.len() / 2;
    let peak =
        |range: &[Stats], field: fn(&Stats) -> usize| range.iter().map(field).max().unwrap_or(0);
    for (name, field) in [
        (
            "events_held",
            (|stats: &Stats| stats.events_held) as fn(&Stats) -> usize,
        ),
        ("events_retired", |stats: &Stats| stats.events_retired),
        ("events_unordered", |stats: &Stats| stats.events_unordered),
        ("observations_pending", |stats: &Stats| {
            stats.observations_pending
        }),
        ("observations_remembered", |stats: &Stats| {
            stats.observations_remembered
        }),
        ("fame_votes_held", |stats: &Stats| stats.fame_votes_held),
    ] {
        let (early, late) = (
            peak(&samples[1..half], field),
            peak(&samples[half..], field),
        );
        assert!(
            late <= early * 3 / 2 + 16,
            "{name} grew from {early} to {late}"
        );
    }
}

// Proves that pruning changes no decision: the same schedule with and without pruning yields
// the same blocks, rounds received and timestamps.
#[test]
fn pruning_does_not_change_any_decision() {
    let pruned = Config {
        prune_window_rounds: 10,
        observation_window_rounds: 1_000_000,
        ..Config::default()
    };
    let unpruned = Config {
        prune_window_rounds: 1_000_000,
        observation_window_rounds: 1_000_000,
        ..Config::default()
    };
    for seed in [3, 4] {
        let (with_pruning, samples) = long_run(5, 6_000, &pruned, seed);
        let (without_pruning, unpruned_samples) = long_run(5, 6_000, &unpruned, seed);
        let last = samples.last().expect("samples");
        assert!(
            last.events_pruned > 0,
            "the pruned run pruned nothing: {last:?}"
        );
        assert_eq!(unpruned_samples.last().expect("samples").events_pruned, 0);
        assert!(!with_pruning.is_empty());
        assert_eq!(
            with_pruning, without_pruning,
            "seed {seed}: pruning changed the blocks"
        );
    }
}
