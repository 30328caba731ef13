//! Throughput benchmark: n members in one process, real ed25519 signatures, lossless
//! in-memory delivery, Supermajority blocks by default.
//!
//! ```text
//! cargo run --release -p chorus-consensus --example throughput -- --nodes 4 --payload-bytes 256 --seconds 10
//! ```
//!
//! Every member proposes payloads (keeping at most `--window` of its own in flight) and votes
//! for every payload it learns from others, so each payload needs a supermajority of votes.
//! Members sync in random pairs; a "sync round" is n syncs. All members' block sequences are
//! checked against each other as they come: a disagreement aborts with an error.
//! The last line of output is one JSON object with every figure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chorus_consensus::harness::Cluster;
use chorus_consensus::{BlockMode, Config, Observation, ObservationHash};
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
    /// Wall-clock seconds to run before measuring (the pipeline fills: the first blocks take
    /// one vote-to-block latency to appear).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Own proposals each member keeps in flight (voted, not yet in a block).
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// New proposals a member makes per sync at most.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// `supermajority` or `single`.
    #[arg(long, default_value = "supermajority")]
    mode: String,
    /// Most votes per gossip event.
    #[arg(long, default_value_t = 4096)]
    votes_per_event: usize,
    /// Seed for keys and partner choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Pending {
    voted_at: Instant,
    voted_at_sync: u64,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.nodes < 1 || args.nodes > 256 {
        return Err("--nodes must be in 1..=256".into());
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
    let config = Config {
        block_mode: mode,
        votes_per_event_max: args.votes_per_event,
        votes_pending_max: (args.window * args.nodes * 2).max(args.votes_per_event),
        ..Config::default()
    };
    let mut cluster =
        Cluster::new(args.nodes, &config, args.seed, 0).map_err(|error| error.to_string())?;
    cluster.echo_votes = mode == BlockMode::Supermajority;
    let mut rng = StdRng::seed_from_u64(args.seed);
    println!(
        "throughput: {} nodes, {}-byte payloads, {:?} mode, {} s after {} s warm-up, window {} per node",
        args.nodes, args.payload_bytes, mode, args.seconds, args.warmup_seconds, args.window
    );

    let mut pending: Vec<HashMap<ObservationHash, Pending>> =
        (0..args.nodes).map(|_| HashMap::new()).collect();
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut latencies_rounds: Vec<f64> = Vec::new();
    let mut canonical: Vec<ObservationHash> = Vec::new();
    let mut consumed = vec![0usize; args.nodes];
    let mut next_payload = vec![0u64; args.nodes];
    let mut syncs: u64 = 0;
    let mut peak_events_held = 0usize;

    let start = Instant::now();
    let warmup_end = start + Duration::from_secs(args.warmup_seconds);
    let deadline = warmup_end + Duration::from_secs(args.seconds);
    let mut next_report = start + Duration::from_secs(1);
    // Figures at the end of the warm-up: (wall instant, cpu seconds, agreed blocks, events).
    let mut measure_from: Option<(Instant, Option<f64>, usize, u64)> = None;
    while Instant::now() < deadline {
        if measure_from.is_none() && Instant::now() >= warmup_end {
            let events: u64 = cluster
                .nodes
                .iter()
                .map(|node| node.stats().events_created)
                .sum();
            measure_from = Some((
                Instant::now(),
                cpu_seconds(),
                consumed.iter().min().copied().unwrap_or(0),
                events,
            ));
            latencies_ms.clear();
            latencies_rounds.clear();
        }
        let requester = (syncs as usize) % args.nodes;
        // Top up the requester's own proposals.
        let room = args
            .window
            .saturating_sub(pending[requester].len())
            .min(args.batch);
        for _ in 0..room {
            let observation = Observation::payload(payload(
                requester,
                next_payload[requester],
                args.payload_bytes,
            ));
            next_payload[requester] += 1;
            let hash = observation.hash();
            if cluster.nodes[requester].vote_for(observation).is_err() {
                break;
            }
            pending[requester].insert(
                hash,
                Pending {
                    voted_at: Instant::now(),
                    voted_at_sync: syncs,
                },
            );
        }
        if args.nodes > 1 {
            let mut responder = rng.gen_range(0..args.nodes - 1);
            if responder >= requester {
                responder += 1;
            }
            cluster
                .sync(requester, responder, start.elapsed().as_millis() as u64)
                .map_err(|error| error.to_string())?;
        } else {
            return Err("a single member has nobody to sync with; use --nodes 2 or more".into());
        }
        syncs += 1;
        // Check agreement and measure latency on the requester's new blocks.
        let blocks = std::mem::take(&mut cluster.blocks[requester]);
        for block in blocks {
            let position = consumed[requester];
            consumed[requester] += 1;
            match canonical.get(position) {
                Some(expected) if *expected != block.observation_hash => {
                    return Err(format!(
                        "DISAGREEMENT: member {requester} block {position} differs"
                    ));
                }
                Some(_) => {}
                None => canonical.push(block.observation_hash),
            }
            if let Some(entry) = pending[requester].remove(&block.observation_hash) {
                latencies_ms.push(entry.voted_at.elapsed().as_secs_f64() * 1000.0);
                latencies_rounds.push((syncs - entry.voted_at_sync) as f64 / args.nodes as f64);
            }
        }
        if syncs % 64 == 0 {
            peak_events_held = peak_events_held.max(
                cluster
                    .nodes
                    .iter()
                    .map(|node| node.stats().events_held)
                    .max()
                    .unwrap_or(0),
            );
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let agreed = consumed.iter().min().copied().unwrap_or(0);
            println!(
                "  t={:>3.0}s agreed blocks {agreed:>10}",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let (measured_at, cpu_at, agreed_at, events_at) =
        measure_from.unwrap_or((start, Some(0.0), 0, 0));
    let elapsed = measured_at.elapsed().as_secs_f64();
    let cpu = cpu_seconds().map(|end| end - cpu_at.unwrap_or(0.0));
    let agreed = (consumed.iter().min().copied().unwrap_or(0) - agreed_at) as f64;
    let events_created: u64 = cluster
        .nodes
        .iter()
        .map(|node| node.stats().events_created)
        .sum::<u64>()
        - events_at;
    let payloads_per_second = agreed / elapsed;
    let events_per_block = if agreed > 0.0 {
        events_created as f64 / agreed
    } else {
        f64::NAN
    };
    let (p50_ms, p99_ms) = (
        percentile(&mut latencies_ms, 0.50),
        percentile(&mut latencies_ms, 0.99),
    );
    let (p50_rounds, p99_rounds) = (
        percentile(&mut latencies_rounds, 0.50),
        percentile(&mut latencies_rounds, 0.99),
    );
    let peak_rss_mb = peak_rss_kb().map(|kb| kb as f64 / 1024.0);
    let cpu_us_per_payload = cpu.filter(|_| agreed > 0.0).map(|cpu| cpu * 1e6 / agreed);

    println!("{payloads_per_second:.0} payloads/s");
    println!("agreed payloads: {agreed:.0} in {elapsed:.2} s measured ({syncs} syncs in all)");
    println!("gossip events per block: {events_per_block:.4} ({events_created} events)");
    println!(
        "vote-to-block latency: p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms; p50 {p50_rounds:.1} sync rounds, p99 {p99_rounds:.1}"
    );
    println!(
        "peak memory: {} MiB RSS; peak events held by one member: {peak_events_held}",
        fmt_opt(peak_rss_mb)
    );
    println!(
        "CPU: {} s, {} µs per ordered payload",
        fmt_opt(cpu),
        fmt_opt(cpu_us_per_payload)
    );
    println!(
        "{{\"benchmark\":\"consensus_throughput\",\"nodes\":{},\"payload_bytes\":{},\"mode\":\"{:?}\",\"seconds\":{elapsed:.3},\"payloads_per_s\":{payloads_per_second:.1},\"agreed_payloads\":{agreed},\"events_per_block\":{},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_p50_sync_rounds\":{},\"latency_p99_sync_rounds\":{},\"peak_rss_mib\":{},\"peak_events_held\":{peak_events_held},\"cpu_s\":{},\"cpu_us_per_payload\":{}}}",
        args.nodes,
        args.payload_bytes,
        mode,
        json_num(events_per_block),
        json_num(p50_ms),
        json_num(p99_ms),
        json_num(p50_rounds),
        json_num(p99_rounds),
        json_opt(peak_rss_mb),
        json_opt(cpu),
        json_opt(cpu_us_per_payload),
    );
    Ok(())
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

/// CPU time of this (single-threaded) process, from /proc (Linux); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let schedstat = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let nanos: f64 = schedstat.split_whitespace().next()?.parse().ok()?;
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

fn json_opt(value: Option<f64>) -> String {
    value
        .filter(|value| value.is_finite())
        .map_or_else(|| "null".into(), |value| format!("{value:.3}"))
}

/// A JSON number, or `null` for NaN and infinities (which JSON cannot express).
fn json_num(value: f64) -> String {
    json_opt(Some(value))
}
