//! `chorus bench`: load against a cluster (a running one, or a fresh local one it starts and
//! stops), at increasing client concurrency. Each client adds 256-byte notes (by default) to
//! its own notebooks through one node (clients spread over the nodes); a command counts once
//! the node answers it committed, which it does only when the events are agreed and durable
//! on that node. Prints committed commands per second and latency percentiles per level, and
//! the figures as one JSON object on the last line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use chorus_node::cli::say;
use chorus_node::client::{Client, outcome_name};
use chorus_node::local::{self, LocalCluster};

use crate::bench_transfers::TransferLevel;

/// What `chorus bench` was asked.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Nodes of the local cluster it starts.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// A running node's HTTP address (repeat for several); clients spread over them.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// The API token to send to `--target` nodes (a local cluster's own is used otherwise).
    #[arg(long, env = "CHORUS_TOKEN")]
    pub token: Option<String>,
    /// Client counts, one level each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,
    /// Seconds per level.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Bytes of note text per command.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// How the nodes of a local cluster it starts run.
    #[command(flatten)]
    pub local: local::LocalOptions,
    /// Where the cluster it starts keeps its data (default: a fresh temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Measure the idle cluster instead of loading it: rounds of a quiet period (each node's
    /// CPU measured over its last 30 s, local clusters only) followed by one timed command.
    #[arg(long)]
    pub idle: bool,
    /// With `--idle`: seconds of quiet before each timed command.
    #[arg(long, default_value_t = 60.0)]
    pub quiet_seconds: f64,
    /// With `--idle`: how many rounds.
    #[arg(long, default_value_t = 3)]
    pub idle_rounds: usize,
    /// Load the demo's transfer saga instead of notes: clients start transfers between
    /// accounts; the figures are transfers finished per second (each one four commands on
    /// three streams) and how long the last ones took after the load stopped.
    #[arg(long, conflicts_with = "idle")]
    pub transfers: bool,
}

/// One level's figures.
#[derive(Clone, Debug)]
struct Level {
    concurrency: usize,
    committed: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Level {
    fn per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "committed": self.committed,
            "errors": self.errors,
            "seconds": round2(self.elapsed.as_secs_f64()),
            "committed_per_second": round2(self.per_second()),
            "p50_ms": round2(percentile(&self.latencies_ms, 0.50)),
            "p90_ms": round2(percentile(&self.latencies_ms, 0.90)),
            "p99_ms": round2(percentile(&self.latencies_ms, 0.99)),
        })
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The `q` quantile (nearest rank) of unsorted samples; 0 when there are none.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Checks the options before anything starts.
pub fn check(options: &BenchOptions) -> Result<(), String> {
    if options.concurrency.is_empty() || options.concurrency.contains(&0) {
        return Err("--concurrency: give client counts above 0, like 1,8,32".into());
    }
    if options.concurrency.iter().any(|clients| *clients > 4096) {
        return Err("--concurrency: at most 4096 clients".into());
    }
    if !(options.seconds > 0.0 && options.seconds <= 3600.0) {
        return Err("--seconds must be above 0 and at most 3600".into());
    }
    if options.payload_bytes == 0 || options.payload_bytes > 64 * 1024 {
        return Err("--payload-bytes must be between 1 and 65536".into());
    }
    if !(options.quiet_seconds >= 1.0 && options.quiet_seconds <= 3600.0) {
        return Err("--quiet-seconds must be between 1 and 3600".into());
    }
    if !(1..=100).contains(&options.idle_rounds) {
        return Err("--idle-rounds must be between 1 and 100".into());
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(options: BenchOptions) -> Result<(), String> {
    check(&options)?;
    let mut started = None;
    let mut temporary = None;
    let mut token = options.token.clone();
    let mut trust = None;
    let targets = if options.targets.is_empty() {
        let data_dir = match &options.data_dir {
            Some(directory) => directory.clone(),
            None => {
                let directory = tempfile::tempdir()
                    .map_err(|error| format!("no temporary directory: {error}"))?;
                let path = directory.path().to_owned();
                temporary = Some(directory);
                path
            }
        };
        let addresses = if let Some(addresses) = local::running(&data_dir).await {
            say(&format!(
                "using the cluster running under {}",
                data_dir.display()
            ));
            addresses
        } else {
            say(&format!(
                "starting a local cluster of {} nodes under {}",
                options.nodes,
                data_dir.display()
            ));
            let configs = local::init(options.nodes, &data_dir, &options.local)?;
            let cluster = LocalCluster::start(&configs, Duration::from_secs(60)).await?;
            let addresses = cluster.addresses.clone();
            started = Some(cluster);
            addresses
        };
        token = token.or_else(|| local::client_token(&data_dir));
        trust = local::client_trust(&data_dir);
        addresses
    } else {
        options.targets.clone()
    };
    let auth = (token.as_deref(), trust.as_deref());
    if options.idle {
        let pids = started.as_ref().map_or_else(Vec::new, LocalCluster::pids);
        let idle = crate::bench_idle::IdleOptions {
            quiet: Duration::from_secs_f64(options.quiet_seconds),
            rounds: options.idle_rounds,
        };
        let result = tokio::select! {
            result = idle_run(&idle, &targets, auth, &pids) => result,
            () = chorus_node::cli::shutdown_signal() => Err("interrupted".to_owned()),
        };
        if let Some(cluster) = started {
            cluster.stop().await;
        }
        drop(temporary);
        say(&result?.to_string());
        return Ok(());
    }
    if options.transfers {
        let result = tokio::select! {
            result = transfer_levels(&options, &targets, auth) => result,
            () = chorus_node::cli::shutdown_signal() => Err("interrupted".to_owned()),
        };
        if let Some(cluster) = started {
            cluster.stop().await;
        }
        drop(temporary);
        let levels = result?;
        let summary = json!({
            "bench": "chorus_transfers",
            "nodes": targets.len(),
            "seconds_per_level": options.seconds,
            "block_mode": options.local.block_mode,
            "levels": levels.iter().map(TransferLevel::json).collect::<Vec<_>>(),
        });
        say(&summary.to_string());
        return Ok(());
    }
    // Ctrl-C or SIGTERM stops the load and the cluster this benchmark started.
    let result = tokio::select! {
        result = levels(&options, &targets, auth) => result,
        () = chorus_node::cli::shutdown_signal() => Err("interrupted".to_owned()),
    };
    if let Some(cluster) = started {
        cluster.stop().await;
    }
    drop(temporary);
    let levels = result?;
    let best = levels.iter().map(Level::per_second).fold(0.0_f64, f64::max);
    let summary = json!({
        "bench": "chorus",
        "nodes": targets.len(),
        "payload_bytes": options.payload_bytes,
        "seconds_per_level": options.seconds,
        "block_mode": options.local.block_mode,
        "gossip_interval_ms": options.local.gossip_interval_ms,
        "levels": levels.iter().map(Level::json).collect::<Vec<_>>(),
        "best_committed_per_second": round2(best),
    });
    say(&summary.to_string());
    Ok(())
}

/// `--idle`: the clients, then the rounds.
async fn idle_run(
    options: &crate::bench_idle::IdleOptions,
    targets: &[String],
    (token, trust): (Option<&str>, Option<&[u8]>),
    pids: &[u32],
) -> Result<Value, String> {
    let clients: Vec<Client> = targets
        .iter()
        .map(|target| local::trusted(with_token(Client::new(target)?, token), trust))
        .collect::<Result<_, _>>()?;
    crate::bench_idle::run(options, &clients, pids).await
}

/// `--transfers`: one level per client count.
async fn transfer_levels(
    options: &BenchOptions,
    targets: &[String],
    (token, trust): (Option<&str>, Option<&[u8]>),
) -> Result<Vec<TransferLevel>, String> {
    let clients: Vec<Client> = targets
        .iter()
        .map(|target| local::trusted(with_token(Client::new(target)?, token), trust))
        .collect::<Result<_, _>>()?;
    let run: u32 = rand::random();
    say(&TransferLevel::header());
    let mut results = Vec::new();
    for (index, &concurrency) in options.concurrency.iter().enumerate() {
        let level =
            crate::bench_transfers::level(&clients, run, index, concurrency, options.seconds)
                .await?;
        say(&level.row());
        results.push(level);
    }
    Ok(results)
}

async fn levels(
    options: &BenchOptions,
    targets: &[String],
    (token, trust): (Option<&str>, Option<&[u8]>),
) -> Result<Vec<Level>, String> {
    let clients: Vec<Client> = targets
        .iter()
        .map(|target| local::trusted(with_token(Client::new(target)?, token), trust))
        .collect::<Result<_, _>>()?;
    for client in &clients {
        if !client.healthy().await {
            return Err(format!("{} does not answer /health/live", client.base()));
        }
    }
    // One run tag, so streams never collide with an earlier run's on the same cluster.
    let run: u32 = rand::random();
    say(&format!(
        "{:>11} {:>10} {:>12} {:>9} {:>9} {:>9} {:>7}",
        "concurrency", "committed", "committed/s", "p50 ms", "p90 ms", "p99 ms", "errors"
    ));
    let mut results = Vec::new();
    for (level_index, &concurrency) in options.concurrency.iter().enumerate() {
        let level = level(options, &clients, run, level_index, concurrency).await?;
        say(&format!(
            "{:>11} {:>10} {:>12.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            level.concurrency,
            level.committed,
            level.per_second(),
            percentile(&level.latencies_ms, 0.50),
            percentile(&level.latencies_ms, 0.90),
            percentile(&level.latencies_ms, 0.99),
            level.errors
        ));
        if let Some(error) = &level.first_error {
            say(&format!("  first error: {error}"));
        }
        results.push(level);
    }
    Ok(results)
}

/// Streams each client writes to (commands on one stream are agreed one after another, so
/// a client keeps a few).
const STREAMS_PER_CLIENT: usize = 4;

/// One level: every client's notebooks are created (not timed), then `concurrency`
/// clients send notes for `--seconds`.
async fn level(
    options: &BenchOptions,
    nodes: &[Client],
    run: u32,
    level_index: usize,
    concurrency: usize,
) -> Result<Level, String> {
    let streams = StreamNames { run, level_index };
    create_notebooks(nodes, streams, concurrency).await?;
    let text = "n".repeat(options.payload_bytes);
    let duration = Duration::from_secs_f64(options.seconds);
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("  {spinner} {msg}").map_err(|error| error.to_string())?,
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    progress.set_message(format!("{concurrency} clients"));
    let deadline = Instant::now() + duration;
    let begin = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|client| {
            let node = nodes[client % nodes.len()].clone();
            let (text, progress) = (text.clone(), progress.clone());
            tokio::spawn(async move {
                send_notes(node, streams, client, text, deadline, progress).await
            })
        })
        .collect();
    let mut level = Level {
        concurrency,
        committed: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
    };
    for task in tasks {
        let sent = task
            .await
            .map_err(|error| format!("a client task failed: {error}"))?;
        level.committed += sent.latencies_ms.len();
        level.latencies_ms.extend(sent.latencies_ms);
        level.errors += sent.errors;
        if level.first_error.is_none() {
            level.first_error = sent.first_error;
        }
    }
    // Every client stops at the deadline once its command in flight is answered.
    level.elapsed = begin.elapsed();
    progress.finish_and_clear();
    Ok(level)
}

/// The names of one level's streams: unique per bench run and level.
#[derive(Clone, Copy)]
struct StreamNames {
    run: u32,
    level_index: usize,
}

impl StreamNames {
    fn of(self, client: usize, stream: usize) -> String {
        let StreamNames { run, level_index } = self;
        format!("Notebook@bench-{run:08x}-{level_index}-{client}-{stream}")
    }
}

/// Creates every client's `STREAMS_PER_CLIENT` notebooks, with a progress bar.
async fn create_notebooks(
    nodes: &[Client],
    streams: StreamNames,
    concurrency: usize,
) -> Result<(), String> {
    let setup = ProgressBar::new((concurrency * STREAMS_PER_CLIENT) as u64).with_style(
        ProgressStyle::with_template("  creating notebooks {bar:30} {pos}/{len}")
            .map_err(|error| error.to_string())?,
    );
    let mut creations = Vec::new();
    for client in 0..concurrency {
        let node = nodes[client % nodes.len()].clone();
        let setup = setup.clone();
        creations.push(tokio::spawn(async move {
            for stream in 0..STREAMS_PER_CLIENT {
                let name = streams.of(client, stream);
                let command = json!({"InitiateNotebook": {"title": "bench"}});
                let answer = node.submit(&name, command, None).await?;
                if answer.status != 201 {
                    return Err(format!("{name}: {}", outcome_name(&answer)));
                }
                setup.inc(1);
            }
            Ok::<(), String>(())
        }));
    }
    for creation in creations {
        creation
            .await
            .map_err(|error| format!("a client task failed: {error}"))??;
    }
    setup.finish_and_clear();
    Ok(())
}

/// What one client's commands came to.
#[derive(Default)]
pub struct Sent {
    /// Latencies of the committed ones.
    pub latencies_ms: Vec<f64>,
    /// Commands not committed.
    pub errors: usize,
    /// The first of those, in a word.
    pub first_error: Option<String>,
}

impl Sent {
    /// Sends one command and tallies it; true if it was committed. A busy or failing node is
    /// not hammered by a client in a tight loop: a failure waits a moment.
    pub async fn submit(&mut self, node: &Client, stream: &str, command: Value) -> bool {
        let started = Instant::now();
        match node.submit(stream, command, None).await {
            Ok(answer) if answer.status == 201 => {
                self.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1_000.0);
                true
            }
            Ok(answer) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| outcome_name(&answer));
                tokio::time::sleep(Duration::from_millis(20)).await;
                false
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
                tokio::time::sleep(Duration::from_millis(50)).await;
                false
            }
        }
    }
}

/// One client: a note at a time, round its notebooks, until `deadline`.
async fn send_notes(
    node: Client,
    streams: StreamNames,
    client: usize,
    text: String,
    deadline: Instant,
    progress: ProgressBar,
) -> Sent {
    let mut sent = Sent::default();
    let mut next = 0usize;
    while Instant::now() < deadline {
        let stream = streams.of(client, next % STREAMS_PER_CLIENT);
        next += 1;
        let command = json!({"AddNote": {"text": text, "author": "bench"}});
        if sent.submit(&node, &stream, command).await {
            progress.inc(1);
        }
    }
    sent
}

/// The client, sending `token` if there is one.
pub fn with_token(client: Client, token: Option<&str>) -> Client {
    match token {
        Some(token) => client.with_token(token.to_owned()),
        None => client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.50), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&samples, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn bad_options_are_refused_before_anything_starts() {
        let good = BenchOptions {
            nodes: 4,
            targets: Vec::new(),
            token: None,
            concurrency: vec![1, 8],
            seconds: 1.0,
            payload_bytes: 256,
            local: local::LocalOptions::default(),
            data_dir: None,
            idle: false,
            quiet_seconds: 60.0,
            idle_rounds: 3,
            transfers: false,
        };
        assert!(check(&good).is_ok());
        for bad in [
            BenchOptions {
                concurrency: vec![],
                ..good.clone()
            },
            BenchOptions {
                concurrency: vec![0],
                ..good.clone()
            },
            BenchOptions {
                seconds: 0.0,
                ..good.clone()
            },
            BenchOptions {
                seconds: f64::NAN,
                ..good.clone()
            },
            BenchOptions {
                payload_bytes: 0,
                ..good.clone()
            },
            BenchOptions {
                quiet_seconds: 0.5,
                ..good.clone()
            },
            BenchOptions {
                idle_rounds: 0,
                ..good.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
