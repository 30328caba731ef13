//! Members prune at different times. An event whose other-parent some members already pruned
//! must still be inserted by them, with the same round as where the parent is held: refusing
//! it split the section for good (RELIABILITY.md, "A late event on a pruned parent").
//!
//! Adversary: none needed. An honest member that comes back from behind builds on the last
//! event it holds of a peer, which others pruned; a member that still holds that parent
//! inserts the event and builds on it; every later event of that member then names it as
//! an ancestor.

use std::ops::Range;

use chorus_consensus::harness::{Cluster, member_key, random_pair};
use chorus_consensus::{Config, Consensus, EventHash, Observation};
use rand::SeedableRng;
use rand::rngs::StdRng;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const LAGGARD: usize = 3;

/// Random syncs among `members`, each requester voting on every third step.
fn run_among(cluster: &mut Cluster, members: &[usize], rng: &mut StdRng, steps: Range<u64>) {
    for step in steps {
        let (requester, responder) = random_pair(rng, members);
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("payload {step}").into_bytes()),
            );
        }
        cluster.sync(requester, responder, step).expect("sync");
    }
}

/// The laggard's latest event.
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

    // The laggard drops out until A has pruned past everything the laggard holds of A: two
    // decided rounds past the point where A sees it beyond its window, well within the
    // window after that (A still has the pruned events retired).
    let mut step = 150;
    let mut lagging_since = None;
    loop {
        let undecided = cluster.nodes[A].stats().undecided_round;
        if cluster.nodes[A].lags_beyond_window(&cluster.ids[LAGGARD]) {
            let since = *lagging_since.get_or_insert(undecided);
            if undecided >= since + 2 {
                break;
            }
        }
        assert!(
            step < 20_000,
            "seed {seed}: A never pruned past the laggard"
        );
        run_among(&mut cluster, &[A, B, C], &mut rng, step..step + 5);
        step += 5;
    }

    // Back, it asks A: nothing A sends connects to what it holds, and it builds its next
    // event on the last event of A it holds, which A pruned.
    cluster.vote(LAGGARD, Observation::payload(b"late vote".to_vec()));
    let report = cluster.sync(LAGGARD, A, step).expect("laggard syncs");
    assert!(
        report.created_event,
        "seed {seed}: the laggard made no event"
    );
    let late = latest_of(&cluster, LAGGARD);

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
    let blocks_before = cluster.blocks[A].len();
    let rejected_before = cluster.nodes[A].stats().events_rejected;
    run_among(&mut cluster, &[A, B, C], &mut rng, step + 3..step + 1_003);
    assert!(
        cluster.blocks[A].len() > blocks_before + 50,
        "seed {seed}: A stopped ordering ({} blocks before, {} after)",
        blocks_before,
        cluster.blocks[A].len()
    );
    assert_eq!(
        cluster.nodes[A].stats().events_rejected,
        rejected_before,
        "seed {seed}: A refused B's or C's events"
    );
    if let Err(disagreement) = cluster.check_prefix_agreement(&[A, B, C]) {
        panic!("seed {seed}: {disagreement}");
    }
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
