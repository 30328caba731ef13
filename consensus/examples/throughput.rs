//! Throughput benchmark: n members in one process, real ed25519 signatures, lossless
//! in-memory delivery, Supermajority blocks by default.
//!
//! ```text
//! cargo run --release -p chorus-consensus --example throughput -- --nodes 4 --payload-bytes 256 --seconds 10
//! ```
//!
//! Every member proposes payloads (keeping at most `--window` of its own in flight) and votes
//! for every payload it learns from others, so each payload needs a supermajority of votes.
//! Worker threads (`--threads`, default: one per core) each drive a share of the members: a
//! worker picks one of its members as requester and a random other member as responder, and
//! runs one sync. A "sync round" is n syncs. Every block of every member is checked against
//! the first member to output a block at that position: a disagreement aborts with an error.
//! Figures are measured after a warm-up. The last line of output is one JSON object.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chorus_consensus::harness::member_key;
use chorus_consensus::{BlockMode, Config, Consensus, Observation, ObservationHash, PeerId};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Ordered payloads per second of n in-process members")]
struct Args {
    /// Members in the group.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Bytes per payload.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Wall-clock seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Wall-clock seconds to run before measuring (the first blocks take one vote-to-block
    /// latency to appear).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Worker threads (0: one per available core, at most one per member).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Own proposals each member keeps in flight (voted, not yet in a block).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// New proposals a member makes per sync at most.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// `supermajority` or `single`.
    #[arg(long, default_value = "supermajority")]
    mode: String,
    /// Most votes per gossip event (larger events cost more than they save: their buffers
    /// outgrow the allocator's heap and every event maps fresh pages).
    #[arg(long, default_value_t = 1024)]
    votes_per_event: usize,
    /// Seed for keys and partner choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One member and the benchmark's bookkeeping for it.
struct Member {
    consensus: Consensus,
    /// Own proposals not yet in one of this member's blocks.
    pending: HashMap<ObservationHash, Pending>,
    /// Blocks this member has output.
    blocks_output: usize,
    next_payload: u64,
}

struct Pending {
    voted_at: Instant,
    voted_at_sync: u64,
}

/// What the workers share.
struct Shared {
    members: Vec<RwLock<Member>>,
    ids: Vec<PeerId>,
    /// Block hashes in order, as first output by any member.
    canonical: Mutex<Vec<ObservationHash>>,
    syncs: AtomicU64,
    stop: AtomicBool,
    /// (latency ms, latency in sync rounds) of own proposals, since the warm-up.
    latencies: Mutex<(Vec<f64>, Vec<f64>)>,
    failure: Mutex<Option<String>>,
    echo_votes: bool,
    args: Args,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.nodes < 2 || args.nodes > 256 {
        return Err("--nodes must be in 2..=256".into());
    }
    if args.payload_bytes < 16 {
        return Err("--payload-bytes must be at least 16 (payloads carry a unique id)".into());
    }
    let mode = match args.mode.as_str() {
        "supermajority" => BlockMode::Supermajority,
        "single" => BlockMode::Single,
        other => {
            return Err(format!(
                "--mode must be supermajority or single, not {other:?}"
            ));
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let threads = if args.threads == 0 {
        cores
    } else {
        args.threads
    }
    .clamp(1, args.nodes);
    let config = Config {
        block_mode: mode,
        votes_per_event_max: args.votes_per_event,
        votes_pending_max: (args.window * args.nodes * 2).max(args.votes_per_event),
        ..Config::default()
    };
    let keys: Vec<_> = (0..args.nodes)
        .map(|index| member_key(args.seed, index))
        .collect();
    let ids: Vec<PeerId> = keys
        .iter()
        .map(|key| PeerId(key.verifying_key().to_bytes()))
        .collect();
    let mut members = Vec::new();
    for key in keys {
        let consensus =
            Consensus::new(config.clone(), key, &ids, 0).map_err(|error| error.to_string())?;
        members.push(RwLock::new(Member {
            consensus,
            pending: HashMap::new(),
            blocks_output: 0,
            next_payload: 0,
        }));
    }
    println!(
        "throughput: {} nodes, {}-byte payloads, {:?} mode, {} threads, {} s after {} s warm-up, window {} per node",
        args.nodes,
        args.payload_bytes,
        mode,
        threads,
        args.seconds,
        args.warmup_seconds,
        args.window
    );
    let shared = Arc::new(Shared {
        members,
        ids,
        canonical: Mutex::new(Vec::new()),
        syncs: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latencies: Mutex::new((Vec::new(), Vec::new())),
        failure: Mutex::new(None),
        echo_votes: mode == BlockMode::Supermajority,
        args,
    });
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|worker| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || run_worker(&shared, worker, threads, start))
        })
        .collect();

    // Warm up, take the starting figures, measure, stop.
    let args = &shared.args;
    let mut second = 0;
    let report = |second: u64| println!("  t={second:>3}s agreed blocks {:>10}", agreed(&shared));
    while second < args.warmup_seconds {
        std::thread::sleep(Duration::from_secs(1));
        second += 1;
        report(second);
    }
    let (measured_at, cpu_at, agreed_at, events_at) = (
        Instant::now(),
        cpu_seconds(),
        agreed(&shared),
        events_created(&shared),
    );
    lock(&shared.latencies).0.clear();
    lock(&shared.latencies).1.clear();
    let deadline = measured_at + Duration::from_secs(args.seconds);
    while Instant::now() < deadline && lock(&shared.failure).is_none() {
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
        second += 1;
        report(second);
    }
    let elapsed = measured_at.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_at).map(|(end, begin)| end - begin);
    let agreed_payloads = (agreed(&shared) - agreed_at) as f64;
    let events = events_created(&shared) - events_at;
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a worker thread panicked".to_string())?;
    }
    if let Some(failure) = lock(&shared.failure).take() {
        return Err(failure);
    }

    let syncs = shared.syncs.load(Ordering::Relaxed);
    let peak_events_held = shared
        .members
        .iter()
        .map(|member| read(member).consensus.stats().events_held)
        .max()
        .unwrap_or(0);
    let payloads_per_second = agreed_payloads / elapsed;
    let events_per_block = events as f64 / agreed_payloads;
    let (mut latencies_ms, mut latencies_rounds) = std::mem::take(&mut *lock(&shared.latencies));
    let (p50_ms, p99_ms) = (
        percentile(&mut latencies_ms, 0.50),
        percentile(&mut latencies_ms, 0.99),
    );
    let (p50_rounds, p99_rounds) = (
        percentile(&mut latencies_rounds, 0.50),
        percentile(&mut latencies_rounds, 0.99),
    );
    let peak_rss_mb = peak_rss_kb().map(|kb| kb as f64 / 1024.0);
    let cpu_us_per_payload = cpu
        .filter(|_| agreed_payloads > 0.0)
        .map(|cpu| cpu * 1e6 / agreed_payloads);

    println!("{payloads_per_second:.0} payloads/s");
    println!(
        "agreed payloads: {agreed_payloads:.0} in {elapsed:.2} s measured ({syncs} syncs in all)"
    );
    println!("gossip events per block: {events_per_block:.4} ({events} events)");
    println!(
        "vote-to-block latency: p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms; p50 {p50_rounds:.1} sync rounds, p99 {p99_rounds:.1}"
    );
    println!(
        "peak memory: {} MiB RSS; events held by the fullest member at the end: {peak_events_held}",
        fmt_opt(peak_rss_mb)
    );
    println!(
        "CPU: {} s over {threads} threads, {} µs per ordered payload",
        fmt_opt(cpu),
        fmt_opt(cpu_us_per_payload)
    );
    println!(
        "{{\"benchmark\":\"consensus_throughput\",\"nodes\":{},\"payload_bytes\":{},\"mode\":\"{:?}\",\"threads\":{threads},\"seconds\":{elapsed:.3},\"payloads_per_s\":{payloads_per_second:.1},\"agreed_payloads\":{agreed_payloads},\"events_per_block\":{},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_p50_sync_rounds\":{},\"latency_p99_sync_rounds\":{},\"peak_rss_mib\":{},\"events_held_max\":{peak_events_held},\"cpu_s\":{},\"cpu_us_per_payload\":{},\"cpu_s_per_payload\":{}}}",
        args.nodes,
        args.payload_bytes,
        mode,
        json(Some(events_per_block)),
        json(Some(p50_ms)),
        json(Some(p99_ms)),
        json(Some(p50_rounds)),
        json(Some(p99_rounds)),
        json(peak_rss_mb),
        json(cpu),
        json(cpu_us_per_payload),
        cpu_us_per_payload
            .filter(|value| value.is_finite())
            .map_or_else(|| "null".into(), |value| format!("{:.9}", value / 1e6)),
    );
    Ok(())
}

/// One worker: syncs its members (`worker`, `worker + threads`, ...) with random partners.
fn run_worker(shared: &Shared, worker: usize, threads: usize, start: Instant) {
    let args = &shared.args;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(worker as u64));
    let mine: Vec<usize> = (worker..args.nodes).step_by(threads).collect();
    let mut turn = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let requester = mine[turn % mine.len()];
        turn += 1;
        let mut responder = rng.gen_range(0..args.nodes - 1);
        if responder >= requester {
            responder += 1;
        }
        if let Err(failure) = sync_once(shared, requester, responder, start) {
            *lock(&shared.failure) = Some(failure);
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Tops up the requester's proposals, runs one sync, and checks the blocks it produced. Never
/// holds two members' locks at once.
fn sync_once(
    shared: &Shared,
    requester: usize,
    responder: usize,
    start: Instant,
) -> Result<(), String> {
    let args = &shared.args;
    let syncs = shared.syncs.load(Ordering::Relaxed);
    let request = {
        let mut member = write(&shared.members[requester]);
        let room = args
            .window
            .saturating_sub(member.pending.len())
            .min(args.batch);
        for _ in 0..room {
            let counter = member.next_payload;
            member.next_payload += 1;
            let observation = Observation::payload(payload(requester, counter, args.payload_bytes));
            let Ok(hash) = member.consensus.vote_for(observation) else {
                break;
            };
            member.pending.insert(
                hash,
                Pending {
                    voted_at: Instant::now(),
                    voted_at_sync: syncs,
                },
            );
        }
        member.consensus.sync_request()
    };
    let response = read(&shared.members[responder])
        .consensus
        .answer_sync_request(&shared.ids[requester], &request)
        .map_err(|error| error.to_string())?;
    let now_ms = start.elapsed().as_millis() as u64;
    let mut member = write(&shared.members[requester]);
    member
        .consensus
        .handle_sync_response(now_ms, &shared.ids[responder], response)
        .map_err(|error| error.to_string())?;
    let syncs = shared.syncs.fetch_add(1, Ordering::Relaxed) + 1;
    while let Some(event) = member.consensus.poll_unpersisted() {
        member.consensus.handle_persisted(event.header.index);
    }
    while let Some((hash, _)) = member.consensus.poll_observation() {
        if shared.echo_votes {
            // Back-pressure only drops an echo; the proposer's own vote still stands.
            let _ = member.consensus.vote_for_hash(hash);
        }
    }
    while member.consensus.poll_evidence().is_some() {}
    let mut latencies = Vec::new();
    let mut canonical = lock(&shared.canonical);
    while let Some(block) = member.consensus.poll_block() {
        let position = member.blocks_output;
        member.blocks_output += 1;
        match canonical.get(position) {
            Some(expected) if *expected != block.observation_hash => {
                return Err(format!(
                    "DISAGREEMENT: member {requester} block {position} differs"
                ));
            }
            Some(_) => {}
            None => canonical.push(block.observation_hash),
        }
        if let Some(entry) = member.pending.remove(&block.observation_hash) {
            let rounds = syncs.saturating_sub(entry.voted_at_sync) as f64 / args.nodes as f64;
            latencies.push((entry.voted_at.elapsed().as_secs_f64() * 1000.0, rounds));
        }
    }
    drop(canonical);
    drop(member);
    let mut all = lock(&shared.latencies);
    for (ms, rounds) in latencies {
        all.0.push(ms);
        all.1.push(rounds);
    }
    Ok(())
}

/// Blocks output by every member (the slowest member's count).
fn agreed(shared: &Shared) -> usize {
    shared
        .members
        .iter()
        .map(|member| read(member).blocks_output)
        .min()
        .unwrap_or(0)
}

fn events_created(shared: &Shared) -> u64 {
    shared
        .members
        .iter()
        .map(|member| read(member).consensus.stats().events_created)
        .sum()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A unique payload: member and counter up front, filler after.
fn payload(member: usize, counter: u64, bytes: usize) -> Vec<u8> {
    let mut payload = vec![0xA5; bytes];
    payload[..8].copy_from_slice(&(member as u64).to_le_bytes());
    payload[8..16].copy_from_slice(&counter.to_le_bytes());
    payload
}

fn percentile(values: &mut [f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * quantile).round() as usize;
    values[rank]
}

/// CPU time of all of this process's threads, from /proc (Linux); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let mut nanos = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += schedstat.split_whitespace().next()?.parse::<f64>().ok()?;
    }
    Some(nanos / 1e9)
}

/// Peak resident set size in KiB, from /proc (Linux); `None` elsewhere.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |value| format!("{value:.2}"))
}

/// A JSON number, or `null` when unknown, NaN or infinite (which JSON cannot express).
fn json(value: Option<f64>) -> String {
    value
        .filter(|value| value.is_finite())
        .map_or_else(|| "null".into(), |value| format!("{value:.3}"))
}
