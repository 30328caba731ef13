//! The state machine's contract: call order, persistence before sending, the gossip tick, the
//! dot dump, and what gets logged at `warn!`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_consensus::harness::member_key;
use chorus_consensus::{Config, Consensus, Observation, PeerId};
use common::{Byzantine, Scenario};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};

fn members(count: usize, seed: u64) -> (Vec<ed25519_dalek::SigningKey>, Vec<PeerId>) {
    let keys: Vec<_> = (0..count).map(|index| member_key(seed, index)).collect();
    let ids = keys
        .iter()
        .map(|key| PeerId(key.verifying_key().to_bytes()))
        .collect();
    (keys, ids)
}

// Proves that our own events are served to peers only after the caller acknowledged them as
// durable, so a crash can never make us sign two events at one index.
#[test]
fn own_events_are_not_sent_before_they_are_durable() {
    let (keys, ids) = members(4, 5);
    let mut alice = Consensus::new(Config::default(), keys[0].clone(), &ids, 0).expect("alice");
    let bob = Consensus::new(Config::default(), keys[1].clone(), &ids, 0).expect("bob");
    let genesis = alice
        .poll_unpersisted()
        .expect("the first event must be persisted");
    assert_eq!(genesis.header.index, 0);
    assert!(alice.poll_unpersisted().is_none());

    let before = alice
        .handle_sync_request(&ids[1], &bob.sync_request())
        .expect("request");
    assert!(
        before.events.is_empty(),
        "an unacknowledged event was served"
    );

    alice.handle_persisted(0);
    let after = alice
        .handle_sync_request(&ids[1], &bob.sync_request())
        .expect("request");
    assert_eq!(after.events.len(), 1);
    assert_eq!(after.events[0].header.hash(), genesis.header.hash());
}

// Proves that `tick` asks one random other member every `gossip_interval_ms`, and only then.
#[test]
fn tick_emits_one_sync_request_per_interval_to_another_member() {
    let (keys, ids) = members(4, 6);
    let config = Config {
        gossip_interval_ms: 10,
        ..Config::default()
    };
    let mut alice = Consensus::new(config, keys[0].clone(), &ids, 0).expect("alice");
    let mut rng = StdRng::seed_from_u64(1);
    let mut sent = Vec::new();
    for now_ms in 0..100 {
        alice.tick(now_ms, &mut rng);
        while let Some(transmit) = alice.poll_transmit() {
            sent.push((now_ms, transmit));
        }
    }
    assert_eq!(
        sent.iter().map(|(now_ms, _)| *now_ms).collect::<Vec<_>>(),
        (0..100).step_by(10).collect::<Vec<_>>()
    );
    for (_, transmit) in &sent {
        assert_ne!(transmit.to, ids[0], "asked itself");
        assert!(ids.contains(&transmit.to));
        assert_eq!(transmit.request, alice.sync_request());
    }
    let distinct: std::collections::HashSet<_> =
        sent.iter().map(|(_, transmit)| transmit.to).collect();
    assert!(distinct.len() > 1, "partner choice is not random");
}

// Proves that the dot dump shows rounds, witnesses and decided fame, and edges to both parents.
#[test]
fn dot_dump_marks_rounds_witnesses_and_fame() {
    let outcome = Scenario::new(4, 21).run();
    let dot = outcome.cluster.nodes[0].to_dot(Some(4));
    assert!(dot.starts_with("digraph chorus {"));
    assert!(dot.trim_end().ends_with('}'));
    assert!(dot.contains("shape=ellipse"), "no witness shown");
    assert!(dot.contains("palegreen"), "no famous witness shown");
    assert!(
        dot.contains("style=dashed") && dot.contains("style=solid"),
        "parent edges missing"
    );
    assert!(dot.contains("\\nr"), "rounds missing from labels");
    let whole = outcome.cluster.nodes[0].to_dot(None);
    assert!(
        whole.len() > dot.len(),
        "a window of rounds should show less than the whole graph"
    );
}

/// Counts `warn!` events.
struct WarnCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn warnings_during(run: impl FnOnce()) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(WarnCounter(Arc::clone(&count)));
    tracing::subscriber::with_default(subscriber, run);
    count.load(Ordering::Relaxed)
}

// Proves that `warn!` means misbehaviour: an honest run logs none, a run with a forker does.
#[test]
fn only_misbehaviour_is_logged_at_warn() {
    let honest = warnings_during(|| {
        let mut scenario = Scenario::new(5, 8);
        scenario.payloads_per_member = 3;
        let outcome = scenario.run();
        assert!(!outcome.cluster.blocks[0].is_empty());
    });
    assert_eq!(honest, 0, "an honest run logged warnings");

    let forked = warnings_during(|| {
        let mut scenario = Scenario::new(4, 9);
        scenario.byzantine = Byzantine::Fork;
        scenario.byzantine_count = 1;
        let outcome = scenario.run();
        assert!(outcome.forks_injected > 0);
    });
    assert!(forked > 0, "a fork went unreported");
}

// Proves that voting for an observation twice, or for one already decided, adds no block.
#[test]
fn a_vote_repeated_or_late_makes_no_second_block() {
    let mut scenario = Scenario::new(4, 12);
    scenario.payloads_per_member = 2;
    let mut outcome = scenario.run();
    let cluster = &mut outcome.cluster;
    let decided = cluster.blocks[1][0].observation.clone();
    let blocks_before = cluster.blocks[1].len();
    cluster.vote(1, decided.clone());
    cluster.vote(1, decided);
    cluster.vote(1, Observation::payload(b"fresh".to_vec()));
    for step in 0..400u64 {
        let requester = (step % 4) as usize;
        cluster
            .sync(
                requester,
                (requester + 1 + (step as usize / 4) % 3) % 4,
                10_000 + step,
            )
            .expect("sync");
    }
    let new_blocks: Vec<_> = cluster.blocks[1][blocks_before..]
        .iter()
        .map(|block| block.observation.clone())
        .collect();
    assert_eq!(new_blocks, vec![Observation::payload(b"fresh".to_vec())]);
}
