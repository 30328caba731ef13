//! Regression tests for bugs a review found: each names the attack it pins down.

use std::sync::Arc;

use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::harness::{Cluster, member_key, random_pair};
use chorus_consensus::{
    BlockMode, Config, EventError, OBSERVATION_BYTES_MAX, Observation, ObservationHash,
    SYNC_BYTES_MAX, SignedEvent, SyncRequest, SyncResponse, Vote,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Random syncs with a payload proposed every third step.
fn run(cluster: &mut Cluster, rng: &mut StdRng, steps: std::ops::Range<u64>) {
    let everyone: Vec<usize> = (0..cluster.nodes.len()).collect();
    for step in steps {
        let (requester, responder) = random_pair(rng, &everyone);
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("payload {step}").into_bytes()),
            );
        }
        cluster.sync(requester, responder, step).expect("sync");
    }
}

// Proves that replaying pruned history (genuine signed events, no key needed) inserts nothing
// and orders nothing twice, even once the de-duplication window has passed.
#[test]
fn replayed_pruned_history_is_refused() {
    for mode in [BlockMode::Single, BlockMode::Supermajority] {
        let config = Config {
            block_mode: mode,
            prune_window_rounds: 10,
            // Pruning by rounds alone: the run is shorter than the default age.
            prune_min_age_ms: 0,
            observation_window_rounds: 10,
            ..Config::default()
        };
        let mut cluster = Cluster::new(4, &config, 31, 0).expect("cluster");
        let mut rng = StdRng::seed_from_u64(31);
        run(&mut cluster, &mut rng, 0..60);
        let everything = SyncRequest {
            known: vec![0; 4],
            wanted: Vec::new(),
        };
        let early = cluster.nodes[0]
            .handle_sync_request(&cluster.ids[1], &everything)
            .expect("history");
        assert!(early.events.len() > 40, "too little history captured");
        run(&mut cluster, &mut rng, 60..3_000);
        assert!(
            cluster.nodes[1].stats().events_pruned > 0,
            "nothing was pruned"
        );

        let blocks_before = cluster.blocks[1].len();
        let report = cluster.nodes[1]
            .handle_sync_response(5_000, &cluster.ids[0], early)
            .expect("response");
        assert_eq!(
            report.inserted, 0,
            "{mode:?}: pruned history went back into the graph"
        );
        assert!(
            report
                .rejected
                .iter()
                .all(|error| matches!(error, EventError::Ancient { .. })),
            "{:?}",
            report.rejected
        );
        cluster.drain(1);
        run(&mut cluster, &mut rng, 3_000..3_600);
        let sequence = cluster.block_hashes(1);
        let unique: std::collections::HashSet<_> = sequence.iter().collect();
        assert_eq!(
            unique.len(),
            sequence.len(),
            "{mode:?}: an observation was output twice"
        );
        assert!(
            sequence.len() > blocks_before,
            "{mode:?}: member 1 stopped making progress"
        );
        if let Err(disagreement) = cluster.check_prefix_agreement(&[0, 1, 2, 3]) {
            panic!("{mode:?}: {disagreement}");
        }
    }
}

// Proves that a second first event (index 0) signed after the first was pruned is refused,
// instead of entering the graph unnoticed as a fork on some members and not others.
#[test]
fn a_new_first_event_after_pruning_is_refused() {
    let config = Config {
        prune_window_rounds: 10,
        // Pruning by rounds alone: the run is shorter than the default age.
        prune_min_age_ms: 0,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, &config, 32, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(32);
    run(&mut cluster, &mut rng, 0..3_000);
    assert!(cluster.nodes[1].stats().events_pruned > 0);
    let (second_genesis, _) =
        SignedEvent::create(&member_key(32, 0), 0, None, None, 2_999, Vec::new());
    let hash = second_genesis.header.hash();
    let report = cluster.nodes[1]
        .handle_sync_response(
            3_000,
            &cluster.ids[0],
            SyncResponse {
                events: vec![Arc::new(second_genesis)],
            },
        )
        .expect("response");
    assert_eq!(report.inserted, 0);
    assert!(
        matches!(
            report.rejected.as_slice(),
            [EventError::Ancient { index: 0, .. }]
        ),
        "{:?}",
        report.rejected
    );
    assert!(cluster.nodes[1].event_info(&hash).is_none());
}

// Proves that a sync response to a member that holds everything is empty even after a fork:
// a forker's history is not re-sent on every sync (it would crowd out everything else).
#[test]
fn a_forkers_history_is_not_resent_on_every_sync() {
    let mut cluster = Cluster::new(4, &Config::default(), 33, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(33);
    run(&mut cluster, &mut rng, 0..200);
    // Member 0 forks: a second event at its latest index, delivered to member 1.
    let forker = &cluster.nodes[0];
    let position = forker
        .members()
        .iter()
        .position(|id| *id == cluster.ids[0])
        .expect("member");
    let head_index = forker.sync_request().known[position] - 1;
    let latest = forker.own_event(head_index).expect("head");
    let (fork, _) = SignedEvent::create(
        &member_key(33, 0),
        latest.header.index,
        latest.header.self_parent,
        latest.header.other_parent,
        latest.header.created_at_ms,
        vec![Vote::Full(Observation::payload(b"fork".to_vec()))],
    );
    // Member 1 gets the fork (with whatever else it lacks), member 2 the original.
    for target in [1, 2] {
        let request = cluster.nodes[target].sync_request();
        let mut response = cluster.nodes[0]
            .handle_sync_request(&cluster.ids[target], &request)
            .expect("request");
        response
            .events
            .retain(|event| event.header.hash() != latest.header.hash());
        response.events.push(if target == 1 {
            Arc::new(fork.clone())
        } else {
            Arc::clone(&latest)
        });
        let report = cluster.nodes[target]
            .handle_sync_response(300, &cluster.ids[0], response)
            .expect("response");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        cluster.drain(target);
    }
    run(&mut cluster, &mut rng, 200..800);
    assert!(
        cluster.evidence.iter().any(|evidence| !evidence.is_empty()),
        "the fork was never detected"
    );
    // Member 2 answers member 3 after 3 pulled everything 2 has: nothing to send.
    cluster.sync(3, 2, 900).expect("sync");
    let request = cluster.nodes[3].sync_request();
    let response = cluster.nodes[2]
        .handle_sync_request(&cluster.ids[3], &request)
        .expect("request");
    assert!(
        response.events.is_empty(),
        "{} events re-sent to a member that has them",
        response.events.len()
    );
}

// Proves that votes by hash for observations nobody carried open no tally: a Byzantine event
// full of them costs the receivers nothing that lasts.
#[test]
fn votes_by_hash_for_unknown_observations_are_free() {
    let mut cluster = Cluster::new(4, &Config::default(), 34, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(34);
    run(&mut cluster, &mut rng, 0..30);
    let junk: Vec<Vote> = (0..20_000u32)
        .map(|index| {
            Vote::ByHash(ObservationHash(
                *blake3::hash(&index.to_le_bytes()).as_bytes(),
            ))
        })
        .collect();
    let byzantine = &cluster.nodes[0];
    let position = byzantine
        .members()
        .iter()
        .position(|id| *id == cluster.ids[0])
        .expect("member");
    let head = byzantine
        .own_event(byzantine.sync_request().known[position] - 1)
        .expect("head");
    let other_parent = cluster.nodes[1]
        .own_event(0)
        .expect("genesis")
        .header
        .hash();
    let (event, _) = SignedEvent::create(
        &member_key(34, 0),
        head.header.index + 1,
        Some(head.header.hash()),
        Some(other_parent),
        40,
        junk,
    );
    for target in 1..4 {
        let report = cluster.nodes[target]
            .handle_sync_response(
                40,
                &cluster.ids[0],
                SyncResponse {
                    events: vec![Arc::new(event.clone())],
                },
            )
            .expect("response");
        assert_eq!(report.inserted, 1, "{:?}", report.rejected);
        cluster.drain(target);
    }
    run(&mut cluster, &mut rng, 30..400);
    for member in 1..4 {
        let stats = cluster.nodes[member].stats();
        assert!(
            stats.observations_pending < 100,
            "member {member} keeps {} junk tallies",
            stats.observations_pending
        );
        assert!(stats.blocks > 0);
    }
}

// Proves that a prune window shorter than the stale horizon is refused: pending events would
// be pruned before every member agreed they are stale.
#[test]
fn prune_window_below_the_stale_horizon_is_refused() {
    let key = member_key(35, 0);
    let ids = [chorus_consensus::PeerId(key.verifying_key().to_bytes())];
    for window in [4, 8, chorus_consensus::STALE_ROUNDS + 1] {
        let config = Config {
            prune_window_rounds: window,
            ..Config::default()
        };
        assert!(
            chorus_consensus::Consensus::new(config, key.clone(), &ids, 0).is_err(),
            "window {window} accepted"
        );
    }
    let config = Config {
        prune_window_rounds: chorus_consensus::STALE_ROUNDS + 2,
        ..Config::default()
    };
    assert!(chorus_consensus::Consensus::new(config, key, &ids, 0).is_ok());
}

// Proves that long fork branches cannot wedge the group: a member that signs two 60-event
// branches, shows each to different members and goes silent, does not stop the others from
// fetching both branches, detecting the fork and deciding new rounds.
#[test]
fn long_fork_branches_are_fetched_and_do_not_wedge_the_group() {
    let mut cluster = Cluster::new(4, &Config::default(), 37, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(37);
    run(&mut cluster, &mut rng, 0..100);
    let forker = &cluster.nodes[3];
    let position = forker
        .members()
        .iter()
        .position(|id| *id == cluster.ids[3])
        .expect("member");
    let head = forker
        .own_event(forker.sync_request().known[position] - 1)
        .expect("head");
    let key = member_key(37, 3);
    let branch = |tag: &str| {
        let mut events = Vec::new();
        let mut parent = Arc::clone(&head);
        for step in 0..60u64 {
            let vote = Vote::Full(Observation::payload(format!("{tag} {step}").into_bytes()));
            let (event, _) = SignedEvent::create(
                &key,
                parent.header.index + 1,
                Some(parent.header.hash()),
                head.header.other_parent,
                parent.header.created_at_ms + 1,
                vec![vote],
            );
            parent = Arc::new(event);
            events.push(Arc::clone(&parent));
        }
        events
    };
    let (branch_a, branch_b) = (branch("a"), branch("b"));
    for (target, branch) in [(0, &branch_a), (1, &branch_b), (2, &branch_b)] {
        let request = cluster.nodes[target].sync_request();
        let mut events = cluster.nodes[3]
            .handle_sync_request(&cluster.ids[target], &request)
            .expect("request")
            .events;
        events.extend(branch.iter().cloned());
        let report = cluster.nodes[target]
            .handle_sync_response(1_000, &cluster.ids[3], SyncResponse { events })
            .expect("response");
        assert!(
            report.rejected.is_empty(),
            "member {target}: {:?}",
            report.rejected
        );
        cluster.drain(target);
    }
    // Member 3 goes silent; the others keep gossiping and proposing.
    let undecided_before = cluster.nodes[0].stats().undecided_round;
    for step in 100..1_600u64 {
        let (requester, responder) = random_pair(&mut rng, &[0, 1, 2]);
        if step % 3 == 0 {
            cluster.vote(
                requester,
                Observation::payload(format!("payload {step}").into_bytes()),
            );
        }
        cluster
            .sync(requester, responder, 1_000 + step)
            .expect("sync");
    }
    for member in 0..3 {
        let stats = cluster.nodes[member].stats();
        assert!(
            stats.undecided_round > undecided_before + 5,
            "member {member} stopped deciding rounds: {stats:?}"
        );
        assert!(
            !cluster.evidence[member].is_empty(),
            "member {member} never saw the fork"
        );
    }
    if let Err(disagreement) = cluster.check_prefix_agreement(&[0, 1, 2]) {
        panic!("{disagreement}");
    }
}

/// Observations of the largest allowed size, each distinct.
fn big_observation(tag: u32) -> Observation {
    let mut bytes = vec![0u8; OBSERVATION_BYTES_MAX];
    bytes[..4].copy_from_slice(&tag.to_le_bytes());
    Observation::payload(bytes)
}

// Proves that our own events stay within EVENT_BYTES_MAX whatever votes are queued: peers
// refuse a larger event, and every later event of ours would then name an unknown parent.
#[test]
fn big_votes_spread_over_events_peers_accept() {
    let mut cluster = Cluster::new(4, &Config::default(), 41, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(41);
    let count = 6;
    for tag in 0..count {
        cluster.vote(0, big_observation(tag));
    }
    let everyone: Vec<usize> = (0..4).collect();
    for step in 0..2_000 {
        let (requester, responder) = random_pair(&mut rng, &everyone);
        let report = cluster.sync(requester, responder, step).expect("sync");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        if (0..4).all(|member| cluster.blocks[member].len() == count as usize) {
            break;
        }
    }
    for member in 0..4 {
        assert_eq!(
            cluster.blocks[member].len(),
            count as usize,
            "member {member}"
        );
    }
}

// Proves that a sync response always fits one wire message: a member that slept through
// more than SYNC_BYTES_MAX of history gets it over several syncs, instead of an answer too
// large to send (which it would ask for again, forever).
#[test]
fn sync_responses_fit_one_wire_message() {
    let config = Config {
        prune_window_rounds: 10_000,
        observation_window_rounds: 10_000,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, &config, 42, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(42);
    let count = 80;
    assert!(count * OBSERVATION_BYTES_MAX > SYNC_BYTES_MAX);
    for tag in 0..count {
        cluster.vote(tag % 3, big_observation(tag as u32));
    }
    let awake = [0, 1, 2];
    for step in 0..20_000 {
        let (requester, responder) = random_pair(&mut rng, &awake);
        cluster.sync(requester, responder, step).expect("sync");
        if awake
            .iter()
            .all(|&member| cluster.blocks[member].len() == count)
        {
            break;
        }
    }
    assert_eq!(cluster.blocks[0].len(), count);
    let sleeper = 3;
    for step in 0..100 {
        let request = cluster.nodes[sleeper].sync_request();
        let response = cluster.nodes[0]
            .handle_sync_request(&cluster.ids[sleeper], &request)
            .expect("request");
        let bytes = encode_message(&response).expect("the response fits one message");
        let response: SyncResponse = decode_message(&bytes).expect("decodes");
        let from = cluster.ids[0];
        cluster.nodes[sleeper]
            .handle_sync_response(30_000 + step, &from, response)
            .expect("response");
        cluster.drain(sleeper);
        if cluster.blocks[sleeper].len() == count {
            break;
        }
    }
    assert_eq!(cluster.blocks[sleeper].len(), count);
}

// Proves that an event asked for by hash is sent even when its self-ancestors (which the
// requester holds) would fill the answer: the wanted chain is sent newest first, so the
// byte limit can no longer cut exactly the event that was asked for, on every retry.
#[test]
fn a_wanted_event_behind_large_ancestors_arrives() {
    let config = Config {
        prune_window_rounds: 10_000,
        observation_window_rounds: 10_000,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, &config, 51, 0).expect("cluster");
    cluster.echo_votes = false;
    for tag in 0..75 {
        cluster.vote(3, big_observation(tag));
    }
    // Member 3 builds a chain of large events; everyone pulls it.
    let mut now = 1;
    for _ in 0..40 {
        now += 1;
        cluster.sync(3, (now as usize) % 3, now).expect("sync");
        for member in 0..3 {
            cluster.sync(member, 3, now).expect("sync");
        }
    }
    let ids = cluster.ids.clone();
    let sorted = cluster.nodes[0].members().to_vec();
    let position = |member: usize| sorted.iter().position(|id| *id == ids[member]).expect("id");
    let head_index = cluster.nodes[3].sync_request().known[position(3)] - 1;
    let head = cluster.nodes[3].own_event(head_index).expect("head");
    let m0_head_index = cluster.nodes[0].sync_request().known[position(0)] - 1;
    let m0_head = cluster.nodes[0]
        .own_event(m0_head_index)
        .expect("member 0 head");
    // Member 3 forks its head; member 1 gets the twin, member 0 only a child of the twin.
    let key = member_key(51, 3);
    let (twin, _) = SignedEvent::create(
        &key,
        head_index,
        head.header.self_parent,
        head.header.other_parent,
        head.header.created_at_ms + 1,
        Vec::new(),
    );
    let twin_hash = twin.header.hash();
    let (child, _) = SignedEvent::create(
        &key,
        head_index + 1,
        Some(twin_hash),
        Some(m0_head.header.hash()),
        head.header.created_at_ms + 2,
        Vec::new(),
    );
    let response = SyncResponse {
        events: vec![Arc::new(twin)],
    };
    let report = cluster.nodes[1]
        .handle_sync_response(now, &ids[3], response)
        .expect("twin");
    assert_eq!(report.inserted, 1);
    let response = SyncResponse {
        events: vec![Arc::new(child)],
    };
    cluster.nodes[0]
        .handle_sync_response(now, &ids[1], response)
        .expect("child");
    for _ in 0..3 {
        let request = cluster.nodes[0].sync_request();
        assert!(request.wanted.contains(&twin_hash), "the twin is wanted");
        let response = cluster.nodes[1]
            .handle_sync_request(&ids[0], &request)
            .expect("request");
        cluster.nodes[0]
            .handle_sync_response(now, &ids[1], response)
            .expect("response");
        cluster.drain(0);
        if cluster.nodes[0].event_info(&twin_hash).is_some() {
            return;
        }
    }
    panic!("the wanted event never arrived");
}

// Proves that a request naming the oldest held event of a creator (whose self-parent is
// pruned) is answered, not a panic: any member could otherwise crash its peers with one
// request.
#[test]
fn a_wanted_event_whose_self_parent_is_pruned_is_served() {
    let config = Config {
        prune_window_rounds: 10,
        // Pruning by rounds alone: the run is shorter than the default age.
        prune_min_age_ms: 0,
        observation_window_rounds: 10,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, &config, 61, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(61);
    run(&mut cluster, &mut rng, 0..3_000);
    assert!(cluster.nodes[0].stats().events_pruned > 0);
    let oldest = (0..u64::MAX)
        .find_map(|index| cluster.nodes[0].own_event(index))
        .expect("a held event");
    assert!(oldest.header.index > 0, "nothing of ours was pruned");
    let mut request = cluster.nodes[1].sync_request();
    request.wanted = vec![oldest.header.hash()];
    let response = cluster.nodes[0]
        .handle_sync_request(&cluster.ids[1], &request)
        .expect("answered");
    assert!(
        response
            .events
            .iter()
            .any(|event| event.header.hash() == oldest.header.hash())
    );
}

// Proves that a block resting on our latest event waits until that event is durable: a crash
// before that could replace the event (never sent) by another at the same index, and the
// decision made with the lost one could differ from the group's.
#[test]
fn blocks_wait_for_our_events_to_be_durable() {
    let mut cluster = Cluster::new(4, &Config::default(), 62, 0).expect("cluster");
    let mut rng = StdRng::seed_from_u64(62);
    let everyone: Vec<usize> = (0..4).collect();
    for step in 0..5_000u64 {
        if step % 3 == 0 {
            let payload = Observation::payload(format!("payload {step}").into_bytes());
            cluster.vote((step % 4) as usize, payload);
        }
        let (requester, responder) = random_pair(&mut rng, &everyone);
        if requester != 0 {
            cluster.sync(requester, responder, step).expect("sync");
            continue;
        }
        // Member 0 by hand: sync, and hold its new event back.
        let request = cluster.nodes[0].sync_request();
        let response = cluster.nodes[responder]
            .handle_sync_request(&cluster.ids[0], &request)
            .expect("request");
        let decided_before = cluster.nodes[0].stats().blocks;
        let from = cluster.ids[responder];
        let node = &mut cluster.nodes[0];
        node.handle_sync_response(step, &from, response)
            .expect("response");
        let decided = node.stats().blocks > decided_before;
        let unpersisted: Vec<_> = std::iter::from_fn(|| node.poll_unpersisted()).collect();
        if decided && !unpersisted.is_empty() {
            assert!(
                node.poll_block().is_none(),
                "a block came out before our event was durable"
            );
            let last = unpersisted.last().expect("event").header.index;
            node.handle_persisted(last);
            assert!(
                node.poll_block().is_some(),
                "the block is out once the event is durable"
            );
            return;
        }
        for event in unpersisted {
            node.handle_persisted(event.header.index);
        }
        cluster.drain(0);
    }
    panic!("no step decided a block while an event of member 0 waited");
}

// Proves that a vote made again after its tally was forgotten is counted. Only a full vote
// opens a tally, and the order forgets a pending one `observation_window_rounds` after its
// first vote (well under a second under load), while pruning keeps its carrier for
// `prune_min_age_ms`: votes made again then went by hash (the carrier was an ancestor), were
// ignored, and the observation was never agreed. The engine votes membership changes this
// way (each member when it sees the need, again while the need lasts): a laggard's refresh
// was never agreed, and it waited until the silence rule removed it.
#[test]
fn a_vote_made_again_after_its_tally_was_forgotten_is_counted() {
    let config = Config {
        observation_window_rounds: 20,
        prune_window_rounds: 10,
        // Carriers held far longer than the window lasts.
        prune_min_age_ms: 1_000_000,
        ..Config::default()
    };
    let mut cluster = Cluster::new(4, &config, 63, 0).expect("cluster");
    cluster.echo_votes = false;
    let mut rng = StdRng::seed_from_u64(63);
    let change = Observation::payload(b"refresh member 3".to_vec());
    // Two members vote; the section goes on far past the window without a third.
    cluster.vote(0, change.clone());
    cluster.vote(1, change.clone());
    let mut step = 0;
    while cluster.nodes[0].stats().undecided_round < 3 * config.observation_window_rounds {
        run(&mut cluster, &mut rng, step..step + 100);
        step += 100;
        assert!(step < 200_000, "the section stopped deciding");
    }
    assert!(
        !cluster.block_hashes(0).contains(&change.hash()),
        "two votes of four made a block"
    );
    // Three members vote again, together: it is agreed.
    for member in 0..3 {
        cluster.vote(member, change.clone());
    }
    run(&mut cluster, &mut rng, step..step + 3_000);
    for member in 0..4 {
        assert!(
            cluster.block_hashes(member).contains(&change.hash()),
            "member {member}: the votes made again were not counted"
        );
    }
}
