//! A member that starts late in an instance gets in by gossip, as long as the others decided
//! its missed rounds less than `Config::prune_min_age_ms` ago: pruning waits for that age, so
//! they still hold the whole instance and it is not beyond anybody's window.
//!
//! Adversary: none. The case is an honest member whose instance of a new section generation
//! starts after the others went 16 decided rounds on (a fraction of a second under load): a
//! refreshed member that fetches its state slowly, or one restarted at that moment. With
//! pruning by rounds alone the others saw it beyond their window, answered it with `Behind`
//! only, and it waited seconds for a second refresh; with two such members of four, the
//! section could not vote one (RELIABILITY.md, "A lagging member not brought back").
//!
//! While a member has no event in the order at all, the age is `prune_min_age_absent_ms`
//! (longer): a member that has not started its instance yet may start later than the age
//! and still get in (RELIABILITY.md, "Two members behind after a whole-section restart").
//! A member that took part and then stopped gets no such wait: memory stays bounded by the
//! age once every member has been heard in the order.

mod common;

use chorus_consensus::Config;
use chorus_consensus::harness::Cluster;
use common::run_among;
use rand::SeedableRng;
use rand::rngs::StdRng;

const LATE: usize = 3;
const ON_TIME: [usize; 3] = [0, 1, 2];
const ALL: [usize; 4] = [0, 1, 2, 3];
/// The harness's clock: one sync per millisecond. The others run this long without the
/// late member, under the age below.
const ALONE_MS: u64 = 2_500;
const AGE_MS: u64 = 3_000;

/// Longer than the age, shorter than the age while a member is absent.
const ALONE_LONGER_MS: u64 = 6_000;
const ABSENT_AGE_MS: u64 = 8_000;

fn config(prune_min_age_ms: u64, prune_min_age_absent_ms: u64) -> Config {
    Config {
        prune_min_age_ms,
        prune_min_age_absent_ms,
        ..Config::default()
    }
}

/// The others go on without the late member for `alone_ms`; returns the cluster and whether
/// any of them sees it beyond its window then. Checks that they decided enough rounds for
/// pruning by rounds to have dropped the start of the instance.
fn others_go_on_alone(config: &Config, alone_ms: u64, seed: u64) -> (Cluster, StdRng, bool) {
    let mut cluster = Cluster::new(ALL.len(), config, seed, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(seed);
    run_among(&mut cluster, &ON_TIME, &mut rng, 0..alone_ms);
    let decided = cluster.nodes[0].stats().undecided_round;
    assert!(
        decided > 2 * config.prune_window_rounds,
        "seed {seed}: only {decided} rounds decided: too few for pruning by rounds"
    );
    let lags = ON_TIME
        .iter()
        .any(|&member| cluster.nodes[member].lags_beyond_window(&cluster.ids[LATE]));
    (cluster, rng, lags)
}

/// The late member starts after `alone_ms` and runs with the others for 3 s: it orders what
/// they had and more, and takes part (pruning goes on, it is not behind).
fn late_member_gets_in(config: &Config, alone_ms: u64, seed: u64) {
    let (mut cluster, mut rng, lags) = others_go_on_alone(config, alone_ms, seed);
    assert!(!lags, "seed {seed}: the late member is beyond a window");
    assert!(
        cluster.blocks[LATE].is_empty(),
        "seed {seed}: it was not late"
    );
    let others_had = cluster.blocks[0].len();
    run_among(&mut cluster, &ALL, &mut rng, alone_ms..alone_ms + 3_000);
    cluster
        .check_prefix_agreement(&ALL)
        .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
    // It ordered everything the others had before it came, and what came after.
    let late_has = cluster.blocks[LATE].len();
    assert!(
        late_has > others_had,
        "seed {seed}: the late member has {late_has} blocks, the others had {others_had}"
    );
    // And it takes part: the others hold its recent events, and pruning went on.
    let stats = cluster.nodes[0].stats();
    assert!(
        stats.events_pruned > 0,
        "seed {seed}: nothing pruned: {stats:?}"
    );
    assert!(
        !cluster.nodes[0].lags_beyond_window(&cluster.ids[LATE]),
        "seed {seed}: the late member fell behind again"
    );
}

#[test]
fn a_member_that_starts_late_within_the_age_gets_in_by_gossip() {
    for seed in [1, 2, 3] {
        late_member_gets_in(&config(AGE_MS, 0), ALONE_MS, seed);
    }
}

// Later than the age, but the member has no event in the order: the others wait for the
// longer age, and it still gets in.
#[test]
fn a_member_absent_from_the_order_gets_in_later_than_the_age() {
    for seed in [1, 2, 3] {
        late_member_gets_in(&config(AGE_MS, ABSENT_AGE_MS), ALONE_LONGER_MS, seed);
    }
}

// The same late start with the age alone: beyond the window (what the longer age prevents).
#[test]
fn without_the_absent_age_a_member_later_than_the_age_is_beyond_the_window() {
    for seed in [1, 2, 3] {
        let (_, _, lags) = others_go_on_alone(&config(AGE_MS, 0), ALONE_LONGER_MS, seed);
        assert!(lags, "seed {seed}: nobody pruned past the late member");
    }
}

// The longer age is only for a member never heard in the order: one that took part and then
// stopped is beyond the window once the age has passed, so a crashed member holds no more
// than the age's events.
#[test]
fn a_member_that_took_part_then_stopped_gets_only_the_age() {
    for seed in [1, 2, 3] {
        let config = config(AGE_MS, ABSENT_AGE_MS);
        let mut cluster = Cluster::new(ALL.len(), &config, seed, 0).expect("cluster");
        let mut rng = StdRng::seed_from_u64(seed);
        run_among(&mut cluster, &ALL, &mut rng, 0..500);
        assert!(
            !cluster.blocks[LATE].is_empty(),
            "seed {seed}: it took no part"
        );
        run_among(&mut cluster, &ON_TIME, &mut rng, 500..500 + ALONE_LONGER_MS);
        assert!(
            ON_TIME
                .iter()
                .all(|&member| cluster.nodes[member].lags_beyond_window(&cluster.ids[LATE])),
            "seed {seed}: the stopped member is not beyond every window"
        );
    }
}

// The same start with pruning by rounds alone: the others see the late member beyond their
// window (what the age above prevents).
#[test]
fn without_the_age_a_late_member_is_beyond_the_window() {
    for seed in [1, 2, 3] {
        let (cluster, _, lags) = others_go_on_alone(&config(0, 0), ALONE_MS, seed);
        assert!(lags, "seed {seed}: nobody pruned past the late member");
        assert!(cluster.blocks[LATE].is_empty());
    }
}
