//! `chorus bench --transfers`: the demo's transfer saga under load. For `--seconds`, each of
//! `--concurrency` clients starts transfers between accounts, one at a time (a
//! `StartTransfer` command on a new `Transfer@` stream; the saga then withdraws from one
//! account, deposits into the other and completes the transfer: three more commands on three
//! streams, agreed like a client's). A watcher reads the finished transfers
//! (`TransferCompleted`, `TransferFailed`) from one node as they land. After the load stops
//! it waits, at most `DRAIN_LIMIT`, for every started transfer to finish, and reports how
//! many finished per second and how long the last ones took. Prints one JSON object on the
//! last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use chorus_node::cli::say;
use chorus_node::client::{Client, outcome_name};

use crate::bench::{Sent, percentile};

/// How long the watcher waits for the last transfers after the load stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often the watcher reads the finished transfers.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// Events per read page.
const PAGE: usize = 1_000;
/// What each account starts with: no transfer of the bench is ever refused for want of money.
const OPENING_DEPOSIT: u64 = 1_000_000_000;

/// One level's figures.
pub struct TransferLevel {
    concurrency: usize,
    accounts: usize,
    started: usize,
    start_errors: usize,
    completed: usize,
    failed: usize,
    /// Start-command latencies.
    start_latencies_ms: Vec<f64>,
    /// From the first start to the end of the load.
    load: Duration,
    /// When each transfer finished, from the first start.
    finished_at: Vec<Duration>,
}

impl TransferLevel {
    fn finished(&self) -> usize {
        self.completed + self.failed
    }

    /// Finished transfers per second, from the first start to the last finish.
    fn per_second(&self) -> f64 {
        let span = self.finished_at.last().copied().unwrap_or(self.load);
        self.finished() as f64 / span.as_secs_f64().max(1e-9)
    }

    /// From the end of the load to the last finish (zero if all finished within the load).
    fn drain(&self) -> Duration {
        self.finished_at
            .last()
            .map_or(Duration::ZERO, |last| last.saturating_sub(self.load))
    }

    /// Started transfers not finished a second after the load stopped.
    fn unfinished_after_one_second(&self) -> usize {
        let by = self.load + Duration::from_secs(1);
        let finished = self.finished_at.iter().filter(|at| **at <= by).count();
        self.started.saturating_sub(finished)
    }

    pub fn json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "accounts": self.accounts,
            "started": self.started,
            "start_errors": self.start_errors,
            "completed": self.completed,
            "failed": self.failed,
            "unfinished": self.started.saturating_sub(self.finished()),
            "load_seconds": round2(self.load.as_secs_f64()),
            "transfers_per_second": round2(self.per_second()),
            "commands_per_second": round2(4.0 * self.per_second()),
            "drain_ms": round2(self.drain().as_secs_f64() * 1_000.0),
            "unfinished_after_1s": self.unfinished_after_one_second(),
            "start_p50_ms": round2(percentile(&self.start_latencies_ms, 0.5)),
            "start_p99_ms": round2(percentile(&self.start_latencies_ms, 0.99)),
        })
    }

    /// One line of the table.
    pub fn row(&self) -> String {
        format!(
            "{:>11} {:>8} {:>9} {:>7} {:>12.1} {:>9.0} {:>11}",
            self.concurrency,
            self.started,
            self.completed,
            self.failed,
            self.per_second(),
            self.drain().as_secs_f64() * 1_000.0,
            self.unfinished_after_one_second(),
        )
    }

    /// The table's header.
    pub fn header() -> String {
        format!(
            "{:>11} {:>8} {:>9} {:>7} {:>12} {:>9} {:>11}",
            "concurrency",
            "started",
            "completed",
            "failed",
            "transfers/s",
            "drain ms",
            "late (>1s)"
        )
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// One level: the accounts are opened (not timed), then `concurrency` clients start
/// transfers for `seconds` while the watcher counts the finished ones.
pub async fn level(
    nodes: &[Client],
    run: u32,
    level_index: usize,
    concurrency: usize,
    seconds: f64,
) -> Result<TransferLevel, String> {
    let prefix = format!("bench-{run:08x}-{level_index}");
    let accounts = (4 * concurrency).max(32);
    open_accounts(nodes, &prefix, accounts).await?;
    let started = Arc::new(AtomicUsize::new(0));
    let load_over = Arc::new(tokio::sync::Notify::new());
    let begin = Instant::now();
    let watcher = tokio::spawn(watch(
        nodes[0].clone(),
        format!("Transfer@{prefix}-"),
        begin,
        Arc::clone(&started),
        Arc::clone(&load_over),
    ));
    let deadline = begin + Duration::from_secs_f64(seconds);
    let clients: Vec<_> = (0..concurrency)
        .map(|client| {
            let node = nodes[client % nodes.len()].clone();
            let prefix = prefix.clone();
            let started = Arc::clone(&started);
            tokio::spawn(async move {
                start_transfers(node, prefix, client, accounts, deadline, started).await
            })
        })
        .collect();
    let mut level = TransferLevel {
        concurrency,
        accounts,
        started: 0,
        start_errors: 0,
        completed: 0,
        failed: 0,
        start_latencies_ms: Vec::new(),
        load: Duration::ZERO,
        finished_at: Vec::new(),
    };
    let mut first_error = None;
    for client in clients {
        let sent = client
            .await
            .map_err(|error| format!("a client task failed: {error}"))?;
        level.start_latencies_ms.extend(sent.latencies_ms);
        level.start_errors += sent.errors;
        first_error = first_error.or(sent.first_error);
    }
    level.load = begin.elapsed();
    level.started = level.start_latencies_ms.len();
    load_over.notify_one();
    let watched = watcher
        .await
        .map_err(|error| format!("the watcher failed: {error}"))??;
    level.completed = watched.completed;
    level.failed = watched.failed;
    level.finished_at = watched.finished_at;
    if let Some(error) = first_error {
        say(&format!("  first error starting a transfer: {error}"));
    }
    Ok(level)
}

/// Opens `accounts` accounts, each with `OPENING_DEPOSIT`, spread over the nodes.
async fn open_accounts(nodes: &[Client], prefix: &str, accounts: usize) -> Result<(), String> {
    let mut openings = Vec::new();
    for worker in 0..nodes.len().max(8).min(accounts) {
        let node = nodes[worker % nodes.len()].clone();
        let prefix = prefix.to_owned();
        let workers = nodes.len().max(8).min(accounts);
        openings.push(tokio::spawn(async move {
            for index in (worker..accounts).step_by(workers) {
                let stream = format!("BankAccount@{prefix}-a{index}");
                for command in [
                    json!({"OpenAccount": {"owner": "bench"}}),
                    json!({"Deposit": {"amount": OPENING_DEPOSIT, "transfer": null}}),
                ] {
                    let answer = node.submit(&stream, command, None).await?;
                    if answer.status != 201 {
                        return Err(format!("{stream}: {}", outcome_name(&answer)));
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    for opening in openings {
        opening
            .await
            .map_err(|error| format!("an account task failed: {error}"))??;
    }
    Ok(())
}

/// One client: a transfer at a time, from one account to the next (so each account sees
/// transfers from a few clients), until `deadline`.
async fn start_transfers(
    node: Client,
    prefix: String,
    client: usize,
    accounts: usize,
    deadline: Instant,
    started: Arc<AtomicUsize>,
) -> Sent {
    let mut sent = Sent::default();
    let mut number = 0usize;
    while Instant::now() < deadline {
        let from = (client * 3 + number) % accounts;
        let to = (from + 1 + client % (accounts - 1)) % accounts;
        let stream = format!("Transfer@{prefix}-{client}-{number}");
        number += 1;
        let command = json!({"StartTransfer": {
            "from": format!("{prefix}-a{from}"),
            "to": format!("{prefix}-a{to}"),
            "amount": 1,
        }});
        if sent.submit(&node, &stream, command).await {
            started.fetch_add(1, Ordering::Relaxed);
        }
    }
    sent
}

/// What the watcher saw.
struct Watched {
    completed: usize,
    failed: usize,
    finished_at: Vec<Duration>,
}

/// Reads the finished transfers of this level (streams under `streams`) as they land, until
/// the load is over and every started transfer finished, or `DRAIN_LIMIT` after the load.
async fn watch(
    node: Client,
    streams: String,
    begin: Instant,
    started: Arc<AtomicUsize>,
    load_over: Arc<tokio::sync::Notify>,
) -> Result<Watched, String> {
    let mut watched = Watched {
        completed: 0,
        failed: 0,
        finished_at: Vec::new(),
    };
    let mut cursors = [
        ("TransferCompleted", None::<String>),
        ("TransferFailed", None),
    ];
    let mut over_at: Option<Instant> = None;
    loop {
        for (event_type, cursor) in &mut cursors {
            let found = read_new(&node, event_type, cursor, &streams).await?;
            let at = begin.elapsed();
            watched.finished_at.extend(std::iter::repeat_n(at, found));
            if *event_type == "TransferCompleted" {
                watched.completed += found;
            } else {
                watched.failed += found;
            }
        }
        if let Some(over) = over_at {
            let finished = watched.completed + watched.failed;
            if finished >= started.load(Ordering::Relaxed) || over.elapsed() > DRAIN_LIMIT {
                return Ok(watched);
            }
            tokio::time::sleep(WATCH_EVERY).await;
        } else {
            tokio::select! {
                () = load_over.notified() => over_at = Some(Instant::now()),
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
        }
    }
}

/// Reads the events of `event_type` after `cursor`, moving it on; counts those of streams
/// under `streams` (a transfer finishes once: one such event each).
async fn read_new(
    node: &Client,
    event_type: &str,
    cursor: &mut Option<String>,
    streams: &str,
) -> Result<usize, String> {
    let mut found = 0;
    loop {
        let path = match cursor {
            Some(from) => format!("/types/{event_type}?from={from}&count={PAGE}"),
            None => format!("/types/{event_type}?count={PAGE}"),
        };
        let answer = node.get(&path).await?;
        if answer.status != 200 {
            return Err(format!("reading {event_type}: status {}", answer.status));
        }
        let events = answer.body["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        found += events
            .iter()
            .filter(|event| {
                event["stream"]
                    .as_str()
                    .is_some_and(|stream| stream.starts_with(streams))
            })
            .count();
        // A one-section cluster's type read pages by position; `next` is null at the end, so
        // the next read starts after the last event seen.
        match &answer.body["next"] {
            Value::Null => {
                if let Some(position) = events.last().and_then(|event| event["position"].as_u64()) {
                    *cursor = Some((position + 1).to_string());
                }
                return Ok(found);
            }
            Value::String(next) => *cursor = Some(next.clone()),
            other => *cursor = Some(other.to_string()),
        }
        if events.is_empty() {
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(started: usize, load_ms: u64, finished_ms: &[u64]) -> TransferLevel {
        TransferLevel {
            concurrency: 1,
            accounts: 32,
            started,
            start_errors: 0,
            completed: finished_ms.len(),
            failed: 0,
            start_latencies_ms: vec![1.0; started],
            load: Duration::from_millis(load_ms),
            finished_at: finished_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }

    #[test]
    fn figures_count_from_the_first_start_to_the_last_finish() {
        // Four started in a 2 s load; three finished, the last 1.5 s after the load.
        let late = level(4, 2_000, &[500, 1_900, 3_500]);
        assert_eq!(late.per_second(), 3.0 / 3.5);
        assert_eq!(late.drain(), Duration::from_millis(1_500));
        // One unfinished at all, one more finished only after the 1 s grace.
        assert_eq!(late.unfinished_after_one_second(), 2);
        assert_eq!(late.json()["unfinished"], 1);
        // All finished within the load: no drain, nothing late.
        let prompt = level(2, 2_000, &[1_000, 1_500]);
        assert_eq!(prompt.drain(), Duration::ZERO);
        assert_eq!(prompt.unfinished_after_one_second(), 0);
        assert_eq!(prompt.per_second(), 2.0 / 1.5);
    }
}
