//! Event store benchmark: durable appends, stream and `$all` reads, aggregate loads.
//!
//! ```text
//! cargo run --release -p chorus-aggregate --example store_bench
//! cargo run --release -p chorus-aggregate --example store_bench -- --batch-sizes 1,1000 --seconds-per-size 2
//! ```
//!
//! Phases, all against one fresh redb file (a temporary directory unless `--dir` is given):
//!
//! 1. Appends: for each `--batch-sizes` entry, batches of that many `--payload-bytes` events,
//!    each batch to one of `--streams` streams in turn (`ExpectedVersion::Any`), one
//!    `EventStore::append` (one durable transaction, one fsync) per batch, for
//!    `--seconds-per-size` or `--max-events-per-size` events. Then group commit:
//!    `EventStore::append_group` of `--group-batches` single-event batches per transaction,
//!    as the engine commits a block. Events/s count the time spent inside the store calls
//!    (building the batches is not timed); latency is per store call.
//! 2. Reads: one `--read-events`-event stream forward with `read_stream`, and the whole store
//!    (`$all`) forward with `read`, both in pages of `--page-size`; the median of `--passes`.
//! 3. Aggregate load: a `BankAccount` stream of `--load-events` events (opened, then
//!    deposits), loaded through `Repository::load` without snapshots and with a snapshot
//!    `--snapshot-behind` events before the end; the median of `--passes`.
//!
//! A probe of the disk's own fsync latency (4 KiB write + fdatasync in the same directory)
//! puts the append latencies in context. The last line of output is one JSON object.

use std::fs::File;
use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chorus_aggregate::domain::encode_event;
use chorus_aggregate::limits::{BATCH_BYTES_MAX, BATCH_EVENTS_MAX, EVENT_PAYLOAD_BYTES_MAX};
use chorus_aggregate::{
    Aggregate, AppendBatch, Direction, EventId, EventStore, ExpectedVersion, Filter, MessageId,
    NewEvent, Repository, SnapshotRecord, StreamKey, StreamWrite, TypeName,
};
use chorus_demo::bank_account::{BankAccount, BankAccountEvent};
use clap::{CommandFactory, Parser};
use serde_json::{Value, json};

/// The issue's targets.
const TARGET_APPEND_EVENTS_PER_S: f64 = 200_000.0;
const TARGET_APPEND_BATCH: usize = 1000;
const TARGET_READ_EVENTS_PER_S: f64 = 1_000_000.0;

#[derive(Parser, Debug)]
#[command(
    name = "store_bench",
    about = "Durable appends, reads and aggregate loads of the redb event store"
)]
struct Args {
    /// Directory for the store file (default: a fresh temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events per append batch; one durable transaction per batch, one row per size.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    batch_sizes: Vec<usize>,
    /// Bytes per event payload.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Streams the append batches go to, in turn (each batch writes one stream).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Seconds of appends per batch size (and for the group commit row).
    #[arg(long, default_value_t = 5.0)]
    seconds_per_size: f64,
    /// Most events appended per batch size (the row ends at whichever limit comes first).
    #[arg(long, default_value_t = 1_000_000)]
    max_events_per_size: u64,
    /// Single-event batches per `append_group` transaction (0: skip the group commit row).
    #[arg(long, default_value_t = 100)]
    group_batches: usize,
    /// Events of the stream read by the stream-read phase.
    #[arg(long, default_value_t = 100_000)]
    read_events: u64,
    /// Events per read call.
    #[arg(long, default_value_t = 1000)]
    page_size: usize,
    /// Passes of each read and load; the median is reported.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Events of the aggregate stream loaded by the load phase.
    #[arg(long, default_value_t = 100_000)]
    load_events: u64,
    /// How many events before the end of the aggregate stream the snapshot is taken.
    #[arg(long, default_value_t = 100)]
    snapshot_behind: u64,
    /// fsync probes of the disk (0: skip the probe).
    #[arg(long, default_value_t = 200)]
    fsync_probes: usize,
}

fn main() {
    let args = Args::parse();
    validate(&args);
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().expect("cannot create a temporary directory")),
    };
    let dir = match (&args.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made when --dir is absent"),
    };
    std::fs::create_dir_all(&dir).expect("cannot create --dir");
    run(&args, &dir);
}

/// Refuses flags that make no sense, with clap's own error format (exit status 2).
fn validate(args: &Args) {
    let fail = |message: String| -> ! {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit()
    };
    if args.batch_sizes.is_empty() {
        fail("--batch-sizes must list at least one batch size, e.g. 1,10,100,1000".into());
    }
    for &size in &args.batch_sizes {
        if size == 0 || size > BATCH_EVENTS_MAX {
            fail(format!(
                "--batch-sizes: {size} is not a batch size; each must be in 1..={BATCH_EVENTS_MAX} events"
            ));
        }
        if size.saturating_mul(args.payload_bytes) > BATCH_BYTES_MAX {
            fail(format!(
                "--batch-sizes: {size} events of {} bytes exceed the store's {BATCH_BYTES_MAX}-byte batch limit",
                args.payload_bytes
            ));
        }
    }
    if args.payload_bytes < 16 || args.payload_bytes > EVENT_PAYLOAD_BYTES_MAX {
        fail(format!(
            "--payload-bytes must be in 16..={EVENT_PAYLOAD_BYTES_MAX} (payloads carry a unique counter)"
        ));
    }
    if args.streams == 0 {
        fail("--streams must be at least 1".into());
    }
    if !(args.seconds_per_size.is_finite() && args.seconds_per_size > 0.0) {
        fail("--seconds-per-size must be a positive number of seconds".into());
    }
    if args.max_events_per_size == 0 {
        fail("--max-events-per-size must be at least 1".into());
    }
    if args.group_batches > BATCH_EVENTS_MAX {
        fail(format!(
            "--group-batches must be at most {BATCH_EVENTS_MAX}"
        ));
    }
    if args.read_events == 0 {
        fail("--read-events must be at least 1".into());
    }
    if args.page_size == 0 {
        fail("--page-size must be at least 1".into());
    }
    if args.passes == 0 {
        fail("--passes must be at least 1".into());
    }
    if args.load_events < 2 {
        fail("--load-events must be at least 2 (an opening and a deposit)".into());
    }
    if args.snapshot_behind == 0 || args.snapshot_behind >= args.load_events {
        fail(format!(
            "--snapshot-behind must be in 1..{} (less than --load-events)",
            args.load_events
        ));
    }
}

/// Makes the benchmark's events: unique ids and payloads even in a reused `--dir`.
struct Feed {
    /// The store's head when the run began, so a rerun in the same directory never repeats ids
    /// or stream names.
    nonce: u64,
    counter: u64,
    payload_bytes: usize,
    streams: Vec<StreamKey>,
    next_stream: usize,
    event_type: TypeName,
}

impl Feed {
    fn event(&mut self) -> NewEvent {
        self.counter += 1;
        let mut payload = vec![0xA5; self.payload_bytes];
        payload[..8].copy_from_slice(&self.nonce.to_le_bytes());
        payload[8..16].copy_from_slice(&self.counter.to_le_bytes());
        NewEvent {
            event_id: self.event_id(),
            event_type: self.event_type.clone(),
            event_version: 1,
            payload,
            supersedes: None,
        }
    }

    fn event_id(&self) -> EventId {
        EventId::derive(&[
            b"store_bench",
            &self.nonce.to_le_bytes(),
            &self.counter.to_le_bytes(),
        ])
    }

    /// A batch of `events` new events to the next stream in turn.
    fn batch(&mut self, events: usize) -> AppendBatch {
        let stream = self.streams[self.next_stream % self.streams.len()].clone();
        self.next_stream += 1;
        let events = (0..events).map(|_| self.event()).collect();
        self.batch_to(stream, ExpectedVersion::Any, events)
    }

    fn batch_to(
        &self,
        stream: StreamKey,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> AppendBatch {
        let cause = MessageId::derive(&[
            b"store_bench batch",
            &self.nonce.to_le_bytes(),
            &self.counter.to_le_bytes(),
        ]);
        AppendBatch {
            command_id: None,
            causation_id: cause,
            correlation_id: cause,
            // The store reads no clock; any increasing agreed time will do.
            timestamp_ms: 1_800_000_000_000 + self.counter,
            metadata: None,
            writes: vec![StreamWrite {
                stream,
                expected,
                events,
            }],
        }
    }
}

/// One row of the append table.
struct AppendRow {
    label: String,
    kind: &'static str,
    batch_events: usize,
    batches_per_commit: usize,
    commits: u64,
    events: u64,
    /// Seconds inside the store calls.
    busy_s: f64,
    wall_s: f64,
    cpu_s: Option<f64>,
    /// Bytes this process caused to be written to storage (Linux `/proc/self/io`).
    written_bytes: Option<u64>,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl AppendRow {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.busy_s
    }

    fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.busy_s
    }

    fn disk_bytes_per_event(&self) -> Option<f64> {
        self.written_bytes
            .filter(|_| self.events > 0)
            .map(|bytes| bytes as f64 / self.events as f64)
    }

    fn json(&self) -> Value {
        json!({
            "kind": self.kind,
            "batch_events": self.batch_events,
            "batches_per_commit": self.batches_per_commit,
            "commits": self.commits,
            "events": self.events,
            "seconds_in_store": round(self.busy_s, 3),
            "seconds_wall": round(self.wall_s, 3),
            "events_per_s": round(self.events_per_s(), 1),
            "commits_per_s": round(self.commits_per_s(), 1),
            "wall_events_per_s": round(self.events as f64 / self.wall_s, 1),
            "cpu_fraction": self.cpu_s.map(|cpu| round(cpu / self.wall_s, 3)),
            "disk_bytes_written": self.written_bytes,
            "disk_bytes_per_event": self.disk_bytes_per_event().map(|bytes| round(bytes, 1)),
            "latency_p50_us": round(self.p50_us, 1),
            "latency_p99_us": round(self.p99_us, 1),
            "latency_max_us": round(self.max_us, 1),
        })
    }
}

/// A read or load measured over several passes.
struct Passes {
    events: u64,
    seconds: Vec<f64>,
}

impl Passes {
    fn median_s(&self) -> f64 {
        median(&self.seconds)
    }

    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.median_s()
    }

    fn json(&self) -> Value {
        json!({
            "events": self.events,
            "passes": self.seconds.len(),
            "median_ms": round(self.median_s() * 1e3, 3),
            "events_per_s_median": round(self.events_per_s(), 1),
            "ms_each": self.seconds.iter().map(|s| round(s * 1e3, 3)).collect::<Vec<_>>(),
        })
    }
}

fn run(args: &Args, dir: &Path) {
    let machine = Machine::probe(dir);
    let path = dir.join("store_bench.redb");
    let store = EventStore::open(&path).expect("cannot open the event store");
    let nonce = store.head_position().expect("head position");
    let streams = (0..args.streams)
        .map(|index| {
            StreamKey::new("Bench", &format!("r{nonce}-s{index}")).expect("valid stream name")
        })
        .collect();
    let mut feed = Feed {
        nonce,
        counter: 0,
        payload_bytes: args.payload_bytes,
        streams,
        next_stream: 0,
        event_type: TypeName::new("Benchmarked").expect("valid type name"),
    };

    println!(
        "store_bench: {}-byte events, {} streams, {} s per batch size, every commit durable (redb immediate durability, one transaction per batch)",
        args.payload_bytes, args.streams, args.seconds_per_size
    );
    println!(
        "machine: {} cores ({}), {} RAM; store {} on {}",
        machine.cores,
        machine.cpu_model,
        machine.mem_total_kib.map_or_else(
            || "? GiB".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        ),
        path.display(),
        machine.filesystem
    );
    let fsync = fsync_probe(dir, args.fsync_probes);
    if let Some((p50, p99)) = fsync {
        println!(
            "disk fsync probe ({} × 4 KiB write + fdatasync): p50 {:.0} µs, p99 {:.0} µs",
            args.fsync_probes, p50, p99
        );
    }

    // Create every stream first, in one commit, so the rows measure appends, not creation.
    let creation: Vec<_> = (0..args.streams).map(|_| feed.batch(1)).collect();
    store.append_group(&creation).expect("creating the streams");

    // 1. Appends.
    let per_size = Duration::from_secs_f64(args.seconds_per_size);
    let mut rows = Vec::new();
    for &size in &args.batch_sizes {
        let label = format!("append, batches of {size}");
        let row = measure(&label, per_size, args.max_events_per_size, || {
            let batch = feed.batch(size);
            let start = Instant::now();
            let outcome = store.append(&batch).expect("append");
            let took = start.elapsed();
            assert!(!outcome.duplicate, "an append was taken for a repeat");
            (took, size)
        });
        rows.push(AppendRow {
            kind: "append",
            batch_events: size,
            batches_per_commit: 1,
            ..row
        });
    }
    if args.group_batches > 0 {
        let group = args.group_batches;
        let label = format!("append_group, {group} batches of 1");
        let row = measure(&label, per_size, args.max_events_per_size, || {
            let batches: Vec<_> = (0..group).map(|_| feed.batch(1)).collect();
            let start = Instant::now();
            let outcomes = store.append_group(&batches).expect("group commit");
            let took = start.elapsed();
            for outcome in outcomes {
                let outcome = outcome.expect("a batch of the group was refused");
                assert!(!outcome.duplicate, "a batch was taken for a repeat");
            }
            (took, group)
        });
        rows.push(AppendRow {
            kind: "append_group",
            batch_events: 1,
            batches_per_commit: group,
            ..row
        });
    }

    // 2. Reads: a long stream, then the whole store.
    eprintln!(
        "setup: a {}-event stream for the read phase",
        group_digits(args.read_events)
    );
    let long = StreamKey::new("Bench", &format!("r{nonce}-long")).expect("valid stream name");
    let mut written = 0;
    while written < args.read_events {
        let count = (args.read_events - written).min(1000);
        let events = (0..count).map(|_| feed.event()).collect();
        let batch = feed.batch_to(long.clone(), ExpectedVersion::Exact(written), events);
        store.append(&batch).expect("append to the long stream");
        written += count;
    }
    let page = args.page_size;
    let stream_read = passes(args.passes, "read_stream", || {
        let mut from = 1;
        let mut events = 0;
        loop {
            let slice = store
                .read_stream(&long, from, Direction::Forward, page)
                .expect("read_stream");
            events += slice.events.len() as u64;
            black_box(&slice.events);
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        events
    });
    assert_eq!(
        stream_read.events, args.read_events,
        "the stream read missed events"
    );

    // 3. Aggregate load: set up before the `$all` read so that `$all` covers it too.
    let bank = build_account(&store, &mut feed, args);
    let head = store.head_position().expect("head position");
    let all_read = passes(args.passes, "$all", || {
        // From this run's first event: a reused --dir holds earlier runs' events before it.
        let mut from = nonce + 1;
        let mut events = 0;
        loop {
            let slice = store
                .read(&Filter::All, from, Direction::Forward, page)
                .expect("read $all");
            events += slice.events.len() as u64;
            black_box(&slice.events);
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        events
    });
    assert_eq!(all_read.events, head - nonce, "the $all read missed events");
    let loads = measure_loads(&store, &bank, args);

    let store_bytes = std::fs::metadata(&path).map(|meta| meta.len()).ok();
    report(
        args,
        &machine,
        &path,
        fsync,
        &rows,
        &stream_read,
        &all_read,
        &bank,
        &loads,
        store_bytes,
    );
}

/// Runs `commit` (which builds its batches, then times only the store call and returns that
/// time and its event count) until the time budget or the event cap is spent.
fn measure(
    label: &str,
    budget: Duration,
    max_events: u64,
    mut commit: impl FnMut() -> (Duration, usize),
) -> AppendRow {
    eprintln!("{label}: up to {:.1} s", budget.as_secs_f64());
    let mut latencies_us = Vec::new();
    let mut events = 0u64;
    let mut busy = Duration::ZERO;
    let cpu_before = cpu_seconds();
    let written_before = written_bytes();
    let start = Instant::now();
    let mut next_report = Duration::from_secs(1);
    while start.elapsed() < budget && events < max_events {
        let (took, count) = commit();
        busy += took;
        events += count as u64;
        latencies_us.push(took.as_secs_f64() * 1e6);
        let elapsed = start.elapsed();
        if elapsed >= next_report {
            eprintln!(
                "  {:>4.1} s: {} events, {:.0} events/s",
                elapsed.as_secs_f64(),
                group_digits(events),
                events as f64 / busy.as_secs_f64()
            );
            next_report += Duration::from_secs(1);
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let written_bytes = written_bytes()
        .zip(written_before)
        .map(|(after, before)| after.saturating_sub(before));
    let commits = latencies_us.len() as u64;
    AppendRow {
        label: label.to_owned(),
        kind: "",
        batch_events: 0,
        batches_per_commit: 0,
        commits,
        events,
        busy_s: busy.as_secs_f64(),
        wall_s,
        cpu_s,
        written_bytes,
        p50_us: percentile(&mut latencies_us, 0.50),
        p99_us: percentile(&mut latencies_us, 0.99),
        max_us: latencies_us.last().copied().unwrap_or(f64::NAN),
    }
}

/// Times `pass` (which returns how many events it saw) `count` times.
fn passes(count: usize, what: &str, mut pass: impl FnMut() -> u64) -> Passes {
    eprintln!("{what}: {count} passes");
    let mut seconds = Vec::with_capacity(count);
    let mut events = None;
    for _ in 0..count {
        let start = Instant::now();
        let seen = pass();
        seconds.push(start.elapsed().as_secs_f64());
        if let Some(previous) = events {
            assert_eq!(previous, seen, "{what}: passes saw different event counts");
        }
        events = Some(seen);
    }
    Passes {
        events: events.unwrap_or(0),
        seconds,
    }
}

/// The aggregate stream of the load phase and what a load must find.
struct Account {
    stream: StreamKey,
    events: u64,
    snapshot_version: u64,
    final_state: BankAccount,
}

/// Writes a `BankAccount` stream (opened, then deposits of 1) directly through the store in
/// batches of 1,000 encoded events, and a snapshot `--snapshot-behind` events before its end.
fn build_account(store: &EventStore, feed: &mut Feed, args: &Args) -> Account {
    eprintln!(
        "setup: a {}-event BankAccount stream",
        group_digits(args.load_events)
    );
    let stream = StreamKey::new(BankAccount::CATEGORY, &format!("r{}-bench", feed.nonce))
        .expect("valid stream name");
    let snapshot_version = args.load_events - args.snapshot_behind;
    let mut state = BankAccount::default();
    let mut snapshot_state = None;
    let mut version = 0;
    while version < args.load_events {
        let count = (args.load_events - version).min(1000);
        let mut events = Vec::with_capacity(count as usize);
        for sequence in version + 1..=version + count {
            let event = if sequence == 1 {
                BankAccountEvent::AccountOpened {
                    owner: "store_bench".into(),
                }
            } else {
                BankAccountEvent::Deposited {
                    amount: 1,
                    balance: state.balance + 1,
                    transfer: None,
                }
            };
            state = state.apply(&event);
            if sequence == snapshot_version {
                snapshot_state = Some(state.clone());
            }
            let encoded = encode_event(&event).expect("encode a BankAccount event");
            feed.counter += 1;
            events.push(NewEvent {
                event_id: feed.event_id(),
                event_type: encoded.event_type,
                event_version: encoded.event_version,
                payload: encoded.payload,
                supersedes: None,
            });
        }
        let batch = feed.batch_to(stream.clone(), ExpectedVersion::Exact(version), events);
        store
            .append(&batch)
            .expect("append to the BankAccount stream");
        version += count;
    }
    let snapshot_state = snapshot_state.expect("the snapshot version is inside the stream");
    let snapshot = SnapshotRecord {
        schema_version: <BankAccount as Aggregate>::SCHEMA_VERSION,
        version: snapshot_version,
        // A freshly built stream, never corrected or deleted: epoch 0.
        epoch: 0,
        state: serde_json::to_vec(&snapshot_state).expect("encode the snapshot"),
    };
    store
        .write_snapshot(&stream, &snapshot)
        .expect("write the snapshot");
    Account {
        stream,
        events: args.load_events,
        snapshot_version,
        final_state: state,
    }
}

/// Load timings: without snapshots, with the snapshot, and the bare read of the same stream.
struct Loads {
    cold: Passes,
    snapshot: Passes,
    read_only: Passes,
}

fn measure_loads(store: &EventStore, account: &Account, args: &Args) -> Loads {
    let without = Repository::<BankAccount>::new(store).with_snapshots_every(None);
    let cold = passes(args.passes, "load without snapshot", || {
        let loaded = without.load(&account.stream).expect("load");
        assert_eq!(loaded.snapshot_version, None);
        assert_eq!(loaded.version, account.events);
        assert_eq!(
            loaded.state, account.final_state,
            "a load rebuilt another state"
        );
        loaded.events_applied
    });
    let with = Repository::<BankAccount>::new(store).with_snapshots_every(Some(100));
    let snapshot = passes(args.passes, "load with snapshot", || {
        let loaded = with.load(&account.stream).expect("load");
        assert_eq!(loaded.snapshot_version, Some(account.snapshot_version));
        assert_eq!(loaded.version, account.events);
        assert_eq!(
            loaded.state, account.final_state,
            "a load rebuilt another state"
        );
        loaded.events_applied
    });
    // The store's share of a load without snapshot: the same reads, no decoding or applying.
    let read_only = passes(args.passes, "read of the BankAccount stream", || {
        let mut from = 1;
        let mut events = 0;
        loop {
            let slice = store
                .read_stream(
                    &account.stream,
                    from,
                    Direction::Forward,
                    chorus_aggregate::limits::READ_COUNT_MAX,
                )
                .expect("read_stream");
            events += slice.events.len() as u64;
            black_box(&slice.events);
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        events
    });
    Loads {
        cold,
        snapshot,
        read_only,
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    machine: &Machine,
    path: &Path,
    fsync: Option<(f64, f64)>,
    rows: &[AppendRow],
    stream_read: &Passes,
    all_read: &Passes,
    account: &Account,
    loads: &Loads,
    store_bytes: Option<u64>,
) {
    println!();
    println!(
        "{:<34} {:>9} {:>10} {:>11} {:>10} {:>9} {:>9} {:>9} {:>5} {:>9}",
        "appends (durable)",
        "commits",
        "events",
        "events/s",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu",
        "disk B/ev"
    );
    for row in rows {
        println!(
            "{:<34} {:>9} {:>10} {:>11} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>5} {:>9}",
            row.label,
            group_digits(row.commits),
            group_digits(row.events),
            group_digits(row.events_per_s().round() as u64),
            group_digits(row.commits_per_s().round() as u64),
            row.p50_us / 1e3,
            row.p99_us / 1e3,
            row.max_us / 1e3,
            row.cpu_s.map_or_else(
                || "n/a".into(),
                |cpu| format!("{:.0}%", 100.0 * cpu / row.wall_s)
            ),
            row.disk_bytes_per_event()
                .map_or_else(|| "n/a".into(), |bytes| group_digits(bytes.round() as u64)),
        );
    }
    println!(
        "(events/s and commits/s over the time inside the store calls; latency per commit; cpu: process CPU time over wall time; disk B/ev: bytes written to storage per event, /proc/self/io)"
    );

    println!();
    println!(
        "{:<34} {:>10} {:>11} {:>12}",
        format!(
            "reads (pages of {}, median of {})",
            args.page_size, args.passes
        ),
        "events",
        "ms",
        "events/s"
    );
    for (label, read) in [
        ("read_stream forward, one stream", stream_read),
        ("$all forward (read, Filter::All)", all_read),
    ] {
        println!(
            "{:<34} {:>10} {:>11.1} {:>12}",
            label,
            group_digits(read.events),
            read.median_s() * 1e3,
            group_digits(read.events_per_s().round() as u64)
        );
    }

    println!();
    println!(
        "{:<34} {:>10} {:>11} {:>12}",
        format!("BankAccount load ({} events)", group_digits(account.events)),
        "applied",
        "ms",
        "events/s"
    );
    let snapshot_label = format!("snapshot at {}", group_digits(account.snapshot_version));
    for (label, load) in [
        ("no snapshot", &loads.cold),
        (snapshot_label.as_str(), &loads.snapshot),
        ("(its read_stream alone, no decode)", &loads.read_only),
    ] {
        println!(
            "{:<34} {:>10} {:>11.3} {:>12}",
            label,
            group_digits(load.events),
            load.median_s() * 1e3,
            group_digits(load.events_per_s().round() as u64)
        );
    }
    let speedup = loads.cold.median_s() / loads.snapshot.median_s();
    println!("snapshot speed-up: {speedup:.0}×");

    let target_row = rows
        .iter()
        .find(|row| row.kind == "append" && row.batch_events == TARGET_APPEND_BATCH);
    let append_met = target_row.map(|row| row.events_per_s() >= TARGET_APPEND_EVENTS_PER_S);
    let stream_met = stream_read.events_per_s() >= TARGET_READ_EVENTS_PER_S;
    let all_met = all_read.events_per_s() >= TARGET_READ_EVENTS_PER_S;
    println!();
    match target_row {
        Some(row) => println!(
            "target ≥ 200,000 durable events/s at batches of 1,000: {} ({:.2}× the target)",
            group_digits(row.events_per_s().round() as u64),
            row.events_per_s() / TARGET_APPEND_EVENTS_PER_S
        ),
        None => println!("target ≥ 200,000 durable events/s at batches of 1,000: not measured"),
    }
    println!(
        "target ≥ 1,000,000 events/s read: stream {} ({:.2}×), $all {} ({:.2}×)",
        group_digits(stream_read.events_per_s().round() as u64),
        stream_read.events_per_s() / TARGET_READ_EVENTS_PER_S,
        group_digits(all_read.events_per_s().round() as u64),
        all_read.events_per_s() / TARGET_READ_EVENTS_PER_S
    );
    if let Some(bytes) = store_bytes {
        println!(
            "store file: {:.1} MiB at the end (this run wrote {} events)",
            bytes as f64 / 1024.0 / 1024.0,
            group_digits(all_read.events)
        );
    }

    let summary = json!({
        "benchmark": "event_store",
        "machine": {
            "cores": machine.cores,
            "cpu_model": machine.cpu_model,
            "mem_total_kib": machine.mem_total_kib,
            "filesystem": machine.filesystem,
        },
        "store_path": path.display().to_string(),
        "store_bytes": store_bytes,
        "payload_bytes": args.payload_bytes,
        "streams": args.streams,
        "seconds_per_size": args.seconds_per_size,
        "fsync_probe_p50_us": fsync.map(|(p50, _)| round(p50, 1)),
        "fsync_probe_p99_us": fsync.map(|(_, p99)| round(p99, 1)),
        "appends": rows.iter().map(AppendRow::json).collect::<Vec<_>>(),
        "page_size": args.page_size,
        "read_stream": stream_read.json(),
        "read_all": all_read.json(),
        "load": {
            "aggregate": BankAccount::CATEGORY,
            "stream_events": account.events,
            "snapshot_version": account.snapshot_version,
            "no_snapshot": loads.cold.json(),
            "with_snapshot": loads.snapshot.json(),
            "read_only": loads.read_only.json(),
            "speedup": round(speedup, 1),
        },
        "targets": {
            "append_batch_1000_events_per_s": TARGET_APPEND_EVENTS_PER_S,
            "append_met": append_met,
            "read_events_per_s": TARGET_READ_EVENTS_PER_S,
            "read_stream_met": stream_met,
            "read_all_met": all_met,
        },
    });
    println!("{summary}");
}

/// What the header says about the machine, all from /proc (Linux; "?" elsewhere).
struct Machine {
    cores: usize,
    cpu_model: String,
    mem_total_kib: Option<u64>,
    /// Type and device of the filesystem holding the store.
    filesystem: String,
}

impl Machine {
    fn probe(dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(|| "?".into(), |(_, model)| model.trim().to_owned());
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| {
                let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse().ok()
            });
        Self {
            cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            cpu_model,
            mem_total_kib,
            filesystem: filesystem_of(dir).unwrap_or_else(|| "?".into()),
        }
    }
}

/// The type and device of the mount holding `dir` (the longest mount point it is under).
fn filesystem_of(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(mount).then(|| {
                (
                    mount.len(),
                    format!("{kind} ({device}, mounted at {mount})"),
                )
            })
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, description)| description)
}

/// p50 and p99 in µs of `probes` 4 KiB writes, each followed by fdatasync, in `dir`.
fn fsync_probe(dir: &Path, probes: usize) -> Option<(f64, f64)> {
    if probes == 0 {
        return None;
    }
    eprintln!("fsync probe: {probes} × 4 KiB write + fdatasync");
    let path = dir.join("fsync_probe");
    let mut file = File::create(&path).expect("create the fsync probe file");
    let block = [0x5Au8; 4096];
    let mut latencies = Vec::with_capacity(probes);
    for index in 0..probes {
        // Alternate between two blocks so each probe dirties a block.
        let offset = (index % 2) as u64 * 4096;
        let start = Instant::now();
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.write_all(&block).expect("write the fsync probe");
        file.sync_data().expect("fdatasync the fsync probe");
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Some((
        percentile(&mut latencies, 0.50),
        percentile(&mut latencies, 0.99),
    ))
}

/// Sorts `values` and returns the value at `quantile` (NaN when empty).
fn percentile(values: &mut [f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * quantile).round() as usize;
    values[rank]
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    percentile(&mut values, 0.5)
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

/// Bytes this process caused to be sent to storage, from /proc (Linux); `None` elsewhere.
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let line = io.lines().find(|line| line.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Rounds for the JSON line; NaN and infinities become `null` there (serde_json's rule).
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// 1234567 as "1,234,567".
fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}
