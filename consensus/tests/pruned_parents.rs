//! Members prune at different times. An event whose other-parent some members already pruned
//! must still be inserted by them, with the same round as where the parent is held: refusing
//! it split the section for good (RELIABILITY.md, "A late event on a pruned parent").
//!
//! Adversary: none needed. An honest member that comes back from behind builds on the last
//! event it holds of a peer, which others pruned; a member that still holds that parent
//! inserts the event and builds on it; every later event of that member then names it as
//! an ancestor. And a member that inserts such a late event may retire it at once: the
//! others must still be able to get it from that member (retired events are served).

mod common;

use chorus_consensus::harness::{Cluster, member_key};
use chorus_consensus::{Config, Consensus, EventHash, Observation, SyncResponse};
use common::run_among;
use rand::SeedableRng;
use rand::rngs::StdRng;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const LAGGARD: usize = 3;

/// A member's latest event.
fn latest_of(cluster: &Cluster, member: usize) -> EventHash {
    let id = cluster.ids[member];
    let index = cluster.nodes[member]
        .latest_index_of(&id)
        .expect("a member holds its own events");
    cluster.nodes[member]
        .own_event(index)
        .expect("its latest event")
        .header
        .hash()
}

/// Runs the `active` members without the laggard until `observer` has pruned past
/// everything the laggard holds: two decided rounds past the point where `observer` sees it
/// beyond its window, well within the window after that (the pruned events are still
/// retired there). Returns the next step.
fn drop_out_until_pruned_past(
    cluster: &mut Cluster,
    (observer, active): (usize, &[usize]),
    rng: &mut StdRng,
    mut step: u64,
    seed: u64,
) -> u64 {
    let mut lagging_since = None;
    loop {
        let undecided = cluster.nodes[observer].stats().undecided_round;
        if cluster.nodes[observer].lags_beyond_window(&cluster.ids[LAGGARD]) {
            let since = *lagging_since.get_or_insert(undecided);
            if undecided >= since + 2 {
                return step;
            }
        }
        assert!(
            step < 20_000,
            "seed {seed}: member {observer} never pruned past the laggard"
        );
        run_among(cluster, active, rng, step..step + 5);
        step += 5;
    }
}

/// The laggard votes and hears from A nothing it can insert (as when it is past what A
/// still serves): it builds its next event on the last event of A it holds. Returns it.
fn make_late_event(cluster: &mut Cluster, step: u64, seed: u64) -> EventHash {
    cluster.vote(
        LAGGARD,
        Observation::payload(format!("late vote {step}").into_bytes()),
    );
    let report = cluster.nodes[LAGGARD]
        .handle_sync_response(step, &cluster.ids[A], SyncResponse { events: Vec::new() })
        .expect("an empty answer is taken");
    cluster.drain(LAGGARD);
    assert!(
        report.created_event,
        "seed {seed}: the laggard made no event"
    );
    latest_of(cluster, LAGGARD)
}

/// The section goes on after the late events: the `active` members (A among them) keep
/// ordering and agreeing, and A refuses nothing more.
fn assert_section_goes_on(
    cluster: &mut Cluster,
    active: &[usize],
    rng: &mut StdRng,
    (step, seed): (u64, u64),
) {
    let blocks_before = cluster.blocks[A].len();
    let rejected_before = cluster.nodes[A].stats().events_rejected;
    run_among(cluster, active, rng, step..step + 1_000);
    assert!(
        cluster.blocks[A].len() > blocks_before + 50,
        "seed {seed}: A stopped ordering ({} blocks before, {} after)",
        blocks_before,
        cluster.blocks[A].len()
    );
    assert_eq!(
        cluster.nodes[A].stats().events_rejected,
        rejected_before,
        "seed {seed}: A refused its peers' events"
    );
    if let Err(disagreement) = cluster.check_prefix_agreement(active) {
        panic!("seed {seed}: {disagreement}");
    }
}

#[test]
fn an_event_on_a_parent_some_members_pruned_does_not_split_the_section() {
    for seed in [179, 180, 181] {
        check_seed(seed);
    }
}

fn check_seed(seed: u64) {
    let pruning = Config {
        prune_window_rounds: 10,
        observation_window_rounds: 10,
        ..Config::default()
    };
    // B keeps everything (the prune window is a local setting): it stands for a member that
    // has not pruned yet when the late event arrives.
    let keeping = Config {
        prune_window_rounds: 1_000_000,
        observation_window_rounds: 1_000_000,
        ..pruning.clone()
    };
    let mut cluster = Cluster::new(4, &pruning, seed, 0).expect("cluster");
    cluster.nodes[B] =
        Consensus::new(keeping, member_key(seed, B), &cluster.ids, 0).expect("member B");
    cluster.drain(B);
    let mut rng = StdRng::seed_from_u64(seed);
    run_among(&mut cluster, &[A, B, C, LAGGARD], &mut rng, 0..150);

    // The laggard drops out until A has pruned past everything the laggard holds of A.
    let step = drop_out_until_pruned_past(&mut cluster, (A, &[A, B, C]), &mut rng, 150, seed);

    // Back, it builds its next event on the last event of A it holds, which A pruned.
    let late = make_late_event(&mut cluster, step, seed);

    // B still holds that parent: it inserts the late event and builds on it.
    let report = cluster.sync(B, LAGGARD, step + 1).expect("B syncs");
    assert!(report.inserted > 0 && report.created_event, "seed {seed}");
    let on_late = latest_of(&cluster, B);

    // A pruned the parent. It must insert both, with the rounds B gave them.
    let pruned_before = cluster.nodes[A].stats().events_on_pruned_parents;
    let report = cluster.sync(A, B, step + 2).expect("A syncs");
    assert!(
        report.rejected.is_empty(),
        "seed {seed}: A refused {:?}",
        report.rejected
    );
    assert!(
        cluster.nodes[A].stats().events_on_pruned_parents > pruned_before,
        "seed {seed}: the late event did not take the pruned-parent path"
    );
    for hash in [late, on_late] {
        let at_a = cluster.nodes[A].event_info(&hash).expect("inserted at A");
        let at_b = cluster.nodes[B].event_info(&hash).expect("held at B");
        assert_eq!(
            (at_a.round, at_a.is_witness),
            (at_b.round, at_b.is_witness),
            "seed {seed}: {hash}"
        );
    }

    // The section goes on: A, B and C keep agreeing, on the same rounds.
    assert_section_goes_on(&mut cluster, &[A, B, C], &mut rng, (step + 3, seed));
    let head = cluster.nodes[A]
        .latest_index_of(&cluster.ids[A])
        .expect("A's head");
    for index in head.saturating_sub(40)..=head {
        let hash = cluster.nodes[A]
            .own_event(index)
            .expect("held")
            .header
            .hash();
        let at_a = cluster.nodes[A].event_info(&hash).expect("at A");
        let Some(at_b) = cluster.nodes[B].event_info(&hash) else {
            continue;
        };
        assert_eq!(
            (at_a.round, at_a.is_witness),
            (at_b.round, at_b.is_witness),
            "seed {seed}: A and B disagree on the round of A's event {index}"
        );
    }
}

/// A late event can be retired by the member that inserted it at once: its round is already
/// below that member's horizon, so its next pruning retires it once it is no longer the
/// laggard's latest event. A member that lacks it (but holds its parents) must still get it,
/// or it refuses every later event of each member that built on it: in engine seed 227 with
/// pushes on, the laggard pushed its late events to one member, which built on them and
/// retired them at once, and the others refused its chain for good. Retired events are served
/// for that.
///
/// Seven members, so that the section decides (and prunes) while A takes no part: A never
/// gets the late events while anyone holds them unretired, then asks for them.
#[test]
fn a_late_event_retired_at_once_is_still_served() {
    for seed in [227, 228, 229] {
        check_late_event_served(seed);
    }
}

fn check_late_event_served(seed: u64) {
    const OTHERS: [usize; 5] = [B, C, 4, 5, 6];
    const ACTIVE: [usize; 6] = [A, B, C, 4, 5, 6];
    let config = Config {
        prune_window_rounds: 10,
        observation_window_rounds: 10,
        ..Config::default()
    };
    let mut cluster = Cluster::new(7, &config, seed, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(seed);
    let everyone = [ACTIVE.as_slice(), &[LAGGARD]].concat();
    run_among(&mut cluster, &everyone, &mut rng, 0..300);
    let mut step = drop_out_until_pruned_past(&mut cluster, (B, &ACTIVE), &mut rng, 300, seed);

    // Two late events; B inserts them and builds on the second.
    let late = make_late_event(&mut cluster, step, seed);
    make_late_event(&mut cluster, step + 1, seed);
    let report = cluster.sync(B, LAGGARD, step + 2).expect("B syncs");
    assert!(report.inserted >= 2 && report.created_event, "seed {seed}");
    let on_later = latest_of(&cluster, B);
    let late_at_b = cluster.nodes[B].event_info(&late).expect("held at B");
    step += 3;

    // The others go on without A until every one of them retired the first late event.
    let retired_everywhere = |cluster: &Cluster| {
        OTHERS
            .iter()
            .all(|&member| cluster.nodes[member].event_info(&late).is_none())
    };
    while !retired_everywhere(&cluster) {
        assert!(
            step < 20_000,
            "seed {seed}: the late event was never retired"
        );
        run_among(&mut cluster, &OTHERS, &mut rng, step..step + 1);
        step += 1;
    }

    // A asks B: the retired late events come with the rest, and A inserts them (the first
    // with the round B gave it), then everything built on them.
    let report = cluster.sync(A, B, step).expect("A syncs");
    assert!(
        report.rejected.is_empty(),
        "seed {seed}: A refused {:?}",
        report.rejected
    );
    assert!(
        cluster.nodes[A].event_info(&on_later).is_some(),
        "seed {seed}: A lacks B's event on the late events"
    );
    if let Some(at_a) = cluster.nodes[A].event_info(&late) {
        assert_eq!(
            (at_a.round, at_a.is_witness),
            (late_at_b.round, late_at_b.is_witness),
            "seed {seed}"
        );
    }
    assert_section_goes_on(&mut cluster, &ACTIVE, &mut rng, (step + 1, seed));
}
