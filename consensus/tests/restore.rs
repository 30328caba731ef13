//! Crash and restore from the replay log: the restored member reaches the state it had made
//! durable, re-emits the same blocks, continues its own chain without forking it, and the
//! group keeps agreeing.

use std::sync::Arc;

use chorus_consensus::harness::{Cluster, member_key, random_pair};
use chorus_consensus::{Config, Consensus, LogRecord, Observation, SetupError, SignedEvent};
use rand::SeedableRng;
use rand::rngs::StdRng;

const MEMBERS: usize = 4;
const CRASHED: usize = 2;

/// Pruning by rounds alone, so that the runs below prune within their length (the age's
/// replay: `a_restored_member_prunes_by_age_exactly_as_before`).
fn config() -> Config {
    Config {
        log_records: true,
        prune_min_age_ms: 0,
        ..Config::default()
    }
}

/// Appends member `CRASHED`'s new log records to `log` (and drops the others' records).
fn drain_log(cluster: &mut Cluster, log: &mut Vec<LogRecord>) {
    for (index, node) in cluster.nodes.iter_mut().enumerate() {
        while let Some(record) = node.poll_log_record() {
            if index == CRASHED {
                log.push(record);
            }
        }
    }
}

/// Runs `steps` random syncs (with a vote every few steps if `voting`), appending member
/// `CRASHED`'s log records to `log` as they come.
fn run(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    log: &mut Vec<LogRecord>,
    steps: usize,
    now: &mut u64,
    voting: bool,
) {
    let members: Vec<usize> = (0..MEMBERS).collect();
    for step in 0..steps {
        *now += 1;
        if voting && step % 5 == 0 {
            let member = step % MEMBERS;
            cluster.vote(
                member,
                Observation::payload(format!("{now} {member}").into_bytes()),
            );
        }
        let (requester, responder) = random_pair(rng, &members);
        cluster
            .sync(requester, responder, *now)
            .expect("honest sync");
        drain_log(cluster, log);
    }
}

// Replaying the whole log rebuilds the same graph and the same blocks, and the restored
// member then keeps agreeing with the group without forking its chain.
#[test]
fn restored_member_resumes_without_forking() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut now = 1_000;
    let mut cluster = Cluster::new(MEMBERS, &config(), 7, now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, 3_000, &mut now, true);
    let before = cluster.nodes[CRASHED].stats();
    assert!(before.blocks > 20, "the run agreed too little: {before:?}");
    assert!(
        before.events_pruned > 0,
        "the run must prune to test replayed pruning"
    );

    let ids = cluster.ids.clone();
    let restored = Consensus::restore(config(), member_key(7, CRASHED), &ids, log.clone(), now)
        .expect("restore");
    assert_eq!(
        restored.sync_request(),
        cluster.nodes[CRASHED].sync_request()
    );
    let after = restored.stats();
    assert_eq!(after.events_held, before.events_held);
    assert_eq!(after.max_round, before.max_round);
    assert_eq!(after.blocks, before.blocks);
    cluster.nodes[CRASHED] = restored;
    let old_blocks = std::mem::take(&mut cluster.blocks[CRASHED]);
    cluster.drain(CRASHED);
    assert_eq!(
        cluster.blocks[CRASHED], old_blocks,
        "replay re-emits the same blocks"
    );

    run(&mut cluster, &mut rng, &mut log, 3_000, &mut now, true);
    cluster
        .check_prefix_agreement(&[0, 1, 2, 3])
        .expect("agreement");
    assert!(
        cluster.evidence.iter().all(Vec::is_empty),
        "nobody saw a fork"
    );
    assert!(cluster.blocks[CRASHED].len() > old_blocks.len() + 20);
}

// With the age, pruning goes by consensus time, a function of the order: the replay prunes
// exactly as the live run did (same held, retired and pruned events, same clock). When live
// pruning went by the caller's latest time instead, the two differed; on real nodes a replay
// once forgot a parent that a later logged event named, and the node could not restart.
#[test]
fn a_restored_member_prunes_by_age_exactly_as_before() {
    let config = Config {
        prune_min_age_ms: 500,
        ..config()
    };
    let mut rng = StdRng::seed_from_u64(9);
    let mut now = 1_000;
    let mut cluster = Cluster::new(MEMBERS, &config, 9, now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, 1_500, &mut now, true);
    // Cut off for twice the age, the member then takes many decisions in at once, long
    // after its latest event: the case where a clock other than its events' went astray.
    let others: Vec<usize> = (0..MEMBERS).filter(|&member| member != CRASHED).collect();
    for _ in 0..1_000 {
        now += 1;
        let (requester, responder) = random_pair(&mut rng, &others);
        cluster
            .sync(requester, responder, now)
            .expect("honest sync");
        drain_log(&mut cluster, &mut log);
    }
    // Back, and crashed a moment later, while what it took in at once is still recent.
    run(&mut cluster, &mut rng, &mut log, 40, &mut now, true);
    let before = cluster.nodes[CRASHED].stats();
    assert!(before.events_pruned > 0, "the run must prune: {before:?}");
    let ids = cluster.ids.clone();
    let restored =
        Consensus::restore(config, member_key(9, CRASHED), &ids, log, now).expect("restore");
    let after = restored.stats();
    assert_eq!(
        (after.events_held, after.events_retired, after.events_pruned),
        (
            before.events_held,
            before.events_retired,
            before.events_pruned
        ),
        "the replay pruned otherwise than the member did"
    );
    assert_eq!(
        restored.sync_request(),
        cluster.nodes[CRASHED].sync_request()
    );
    assert_eq!(after.blocks, before.blocks);
}

// A crash loses the records after the last durable one; the member restores from the
// shorter log, creates its next event after its last durable one, and catches up by gossip.
#[test]
fn restore_from_a_truncated_log_catches_up() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut now = 1_000;
    let mut cluster = Cluster::new(MEMBERS, &config(), 8, now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, 1_000, &mut now, true);
    // Crash when the log ends with records that hold no event of ours: those were never
    // synced (a write-ahead log syncs before each own event is sent) and are lost.
    while log.last().is_some_and(|record| record.created.is_some()) {
        run(&mut cluster, &mut rng, &mut log, 1, &mut now, false);
    }
    let durable = log
        .iter()
        .rposition(|record| record.created.is_some())
        .expect("own events")
        + 1;
    let lost = log.len() - durable;
    assert!(lost > 0);
    log.truncate(durable);
    let ids = cluster.ids.clone();
    cluster.nodes[CRASHED] =
        Consensus::restore(config(), member_key(8, CRASHED), &ids, log.clone(), now)
            .expect("restore");
    cluster.blocks[CRASHED].clear();
    cluster.drain(CRASHED);
    run(&mut cluster, &mut rng, &mut log, 3_000, &mut now, true);
    run(&mut cluster, &mut rng, &mut log, 2_000, &mut now, false);
    cluster
        .check_prefix_agreement(&[0, 1, 2, 3])
        .expect("agreement");
    let longest = (0..MEMBERS)
        .map(|m| cluster.blocks[m].len())
        .max()
        .unwrap_or(0);
    assert_eq!(
        cluster.blocks[CRASHED].len(),
        longest,
        "caught up (lost {lost} records)"
    );
    assert!(
        cluster.evidence.iter().all(Vec::is_empty),
        "nobody saw a fork"
    );
}

// A log that is not ours, or out of order, is refused with the record that failed.
#[test]
fn corrupt_logs_are_refused() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut now = 1_000;
    let mut cluster = Cluster::new(MEMBERS, &config(), 9, now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, 300, &mut now, true);
    let ids = cluster.ids.clone();
    // Someone else's log.
    let other = Consensus::restore(config(), member_key(9, 0), &ids, log.clone(), now);
    assert!(matches!(
        other,
        Err(SetupError::CorruptLog { record: 0, .. })
    ));
    // A record missing: later events name parents the replay never saw.
    let mut gapped = log.clone();
    let gap = gapped
        .iter()
        .position(|record| !record.received.is_empty())
        .expect("received");
    gapped.remove(gap);
    let result = Consensus::restore(config(), member_key(9, CRASHED), &ids, gapped, now);
    assert!(
        matches!(result, Err(SetupError::CorruptLog { record, .. }) if record >= gap),
        "{:?}",
        result.err()
    );
    // A record twice.
    let mut doubled = log.clone();
    doubled.insert(gap + 1, log[gap].clone());
    let result = Consensus::restore(config(), member_key(9, CRASHED), &ids, doubled, now);
    assert!(matches!(result, Err(SetupError::CorruptLog { record, .. }) if record == gap + 1));
}

/// A cluster of `MEMBERS` with `config`, run for `steps` voting syncs; returns it with the
/// log of member `CRASHED`.
fn logged_run(
    config: &Config,
    seed: u64,
    steps: usize,
    now: &mut u64,
) -> (Cluster, Vec<LogRecord>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::new(MEMBERS, config, seed, *now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, steps, now, true);
    (cluster, log)
}

// A log in which our own chain forks (a second event at an index we used, or a second first
// event) is refused: restoring it would make us serve both versions, a fork in public.
#[test]
fn a_log_that_forks_our_chain_is_refused() {
    let mut now = 1_000;
    let (cluster, log) = logged_run(&config(), 10, 300, &mut now);
    let key = member_key(10, CRASHED);
    let last_own = log
        .iter()
        .rev()
        .find_map(|record| record.created.clone())
        .expect("own events");
    let (twin, _) = SignedEvent::create(
        &key,
        last_own.header.index,
        last_own.header.self_parent,
        last_own.header.other_parent,
        last_own.header.created_at_ms + 7,
        Vec::new(),
    );
    let (second_genesis, _) = SignedEvent::create(&key, 0, None, None, now, Vec::new());
    for forking in [twin, second_genesis] {
        let mut forked = log.clone();
        forked.push(LogRecord {
            received: Vec::new(),
            created: Some(Arc::new(forking)),
        });
        let result = Consensus::restore(config(), key.clone(), &cluster.ids, forked, now);
        assert!(
            matches!(result, Err(SetupError::CorruptLog { record, .. }) if record == log.len()),
            "{:?}",
            result.err()
        );
    }
}

// Restoring without `log_records` is refused: the restored member would stop logging, and a
// second crash would replay a stale log and sign again at indices it already sent.
#[test]
fn restore_requires_log_records() {
    let mut now = 1_000;
    let (cluster, log) = logged_run(&config(), 11, 100, &mut now);
    let off = Config::default();
    let result = Consensus::restore(off, member_key(11, CRASHED), &cluster.ids, log, now);
    assert!(matches!(result, Err(SetupError::Config(_))));
}

// After a replay, the observations announced for seconding are the undecided ones, not the
// history: with a long history and a small output queue, a fresh proposal is still
// announced.
#[test]
fn replay_announces_undecided_observations_not_history() {
    let small_queue = Config {
        output_queue_max: 20,
        ..config()
    };
    let mut now = 1_000;
    let (mut cluster, mut log) = logged_run(&small_queue, 12, 2_000, &mut now);
    cluster.echo_votes = false;
    let fresh = Observation::payload(b"fresh".to_vec());
    cluster.vote(0, fresh.clone());
    for _ in 0..20 {
        now += 1;
        for (requester, responder) in [(0, 1), (CRASHED, 1), (CRASHED, 0)] {
            cluster.sync(requester, responder, now).expect("sync");
        }
        drain_log(&mut cluster, &mut log);
    }
    let mut restored =
        Consensus::restore(small_queue, member_key(12, CRASHED), &cluster.ids, log, now)
            .expect("restore");
    let mut announced = Vec::new();
    while let Some((hash, _)) = restored.poll_observation() {
        announced.push(hash);
    }
    assert!(
        restored.vote_for_hash(fresh.hash()).is_ok(),
        "the fresh observation is carried and undecided"
    );
    assert!(
        announced.contains(&fresh.hash()),
        "{} announced",
        announced.len()
    );
    assert!(
        announced.len() < 20,
        "history was announced: {}",
        announced.len()
    );
}

// The disk encoding of log records: a log written through `encode_log_record` and read back
// with `decode_log_record` restores the same member; damaged records are errors.
#[test]
fn log_records_survive_their_disk_encoding_and_damage_is_refused() {
    use chorus_consensus::codec::{decode_log_record, encode_log_record};
    let mut rng = StdRng::seed_from_u64(9);
    let mut now = 1_000;
    let mut cluster = Cluster::new(MEMBERS, &config(), 9, now).expect("cluster");
    let mut log = Vec::new();
    drain_log(&mut cluster, &mut log);
    run(&mut cluster, &mut rng, &mut log, 500, &mut now, true);
    let bytes: Vec<Vec<u8>> = log
        .iter()
        .map(|record| encode_log_record(record).expect("encodes"))
        .collect();
    let decoded: Vec<LogRecord> = bytes
        .iter()
        .map(|bytes| decode_log_record(bytes).expect("decodes"))
        .collect();
    assert_eq!(decoded, log);
    let ids = cluster.ids.clone();
    let restored = Consensus::restore(config(), member_key(9, CRASHED), &ids, decoded, now)
        .expect("restore from decoded records");
    assert_eq!(
        restored.sync_request(),
        cluster.nodes[CRASHED].sync_request()
    );
    let longest = bytes
        .iter()
        .max_by_key(|bytes| bytes.len())
        .expect("records");
    assert!(
        decode_log_record(&longest[..longest.len() - 1]).is_err(),
        "a cut record"
    );
    let mut extra = longest.clone();
    extra.push(0);
    assert!(decode_log_record(&extra).is_err(), "trailing bytes");
    let mut version = longest.clone();
    version[0] = 99;
    assert!(decode_log_record(&version).is_err(), "unknown version");
    assert!(decode_log_record(&[]).is_err(), "empty");
}
