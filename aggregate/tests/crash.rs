//! Crash safety of the event store: a child process appending batches is killed (SIGKILL on
//! Unix) at random points, many times over one store file. After each kill the store reopens,
//! every batch the child acknowledged is there whole, and no partial batch is visible. Some
//! runs of units are committed deferred (`Commit::Deferred`) and acknowledged only after the
//! commit that makes them durable (`make_durable`, or a replay-log append): the store then
//! holds a prefix of the units begun, every acknowledged one among them.
//!
//! The test binary runs itself again as the child (`child_appender`, switched on by
//! environment variables). The child's batches are a pure function of its seed, so the parent
//! regenerates them and checks the store against them exactly, besides checking the store's
//! own invariants (dense numbering, whole batches, indexes agreeing with `$all`).
//!
//! Replay with `CHORUS_CRASH_SEED=<seed> CHORUS_CRASH_ITERATIONS=<n>`: the batches repeat
//! exactly; the kill points depend on timing and do not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use chorus_aggregate::{
    AppendBatch, AppendOutcome, CommandId, Commit, Direction, EventId, EventStore, ExpectedVersion,
    Filter, MessageId, NewEvent, RecordedEvent, StreamKey, StreamWrite, TypeName,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Makes the test binary the child appender, on the store file it names.
const CHILD_STORE_VAR: &str = "CHORUS_CRASH_CHILD_STORE";
/// The child's seed: it decides every batch the child appends.
const CHILD_SEED_VAR: &str = "CHORUS_CRASH_CHILD_SEED";
/// Makes the test binary a child that creates new stores in the directory it names.
const CHILD_CREATE_DIR_VAR: &str = "CHORUS_CRASH_CHILD_CREATE_DIR";
/// The child's run number (the parent's iteration), part of every batch tag.
const CHILD_RUN_VAR: &str = "CHORUS_CRASH_CHILD_RUN";
/// The parent's seed, for replay; random when unset.
const SEED_VAR: &str = "CHORUS_CRASH_SEED";
/// How many children the parent kills.
const ITERATIONS_VAR: &str = "CHORUS_CRASH_ITERATIONS";
const DEFAULT_ITERATIONS: u64 = 20;

/// How long the parent waits for a child's first acknowledgement (debug builds, slow CI).
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How many events one read asks for when paging.
const PAGE: usize = 1_000;

/// Streams every child writes to, so the same streams grow across kills: two categories of the
/// default database and one of another database. Batches also create fresh streams.
const POOL: [&str; 7] = [
    "Crash@a",
    "Crash@b",
    "Crash@c",
    "Crash@d",
    "Audit@log",
    "crashdb/Ledger@x",
    "crashdb/Ledger@y",
];

// ---------------------------------------------------------------------------------------------
// The plan: what a child appends, derived from its run number and seed alone.
// ---------------------------------------------------------------------------------------------

/// One write of a planned batch.
struct PlannedWrite {
    stream: StreamKey,
    /// The batch creates the stream (so it must not exist before, nor after a rollback).
    fresh: bool,
    /// Index (within the batch) of the write's first event.
    first: usize,
    count: usize,
}

/// One planned append batch. Event `i` of the batch carries the payload
/// `"<tag> <i> <events in batch> "` and then `padding[i]` bytes of a fixed pattern.
struct PlannedBatch {
    tag: String,
    command_id: CommandId,
    timestamp_ms: u64,
    /// Event `i` has type `types[i % types.len()]`.
    types: Vec<TypeName>,
    writes: Vec<PlannedWrite>,
    padding: Vec<usize>,
}

impl PlannedBatch {
    fn event_count(&self) -> usize {
        self.padding.len()
    }

    fn event_id(&self, index: usize) -> EventId {
        event_id(&self.tag, index)
    }

    fn event_type(&self, index: usize) -> &TypeName {
        &self.types[index % self.types.len()]
    }

    fn payload(&self, index: usize) -> Vec<u8> {
        payload(&self.tag, index, self.event_count(), self.padding[index])
    }

    /// The batch's events as the store must hold them: (stream, index within the batch), in
    /// position order.
    fn events(&self) -> impl Iterator<Item = (&StreamKey, usize)> {
        self.writes
            .iter()
            .flat_map(|write| (write.first..write.first + write.count).map(|i| (&write.stream, i)))
    }

    /// The append, with the version each write expects its stream at.
    fn append_batch(&self, expected: &[ExpectedVersion]) -> AppendBatch {
        AppendBatch {
            command_id: Some(self.command_id),
            causation_id: self.command_id.into(),
            correlation_id: MessageId::derive(&[b"crash correlation", self.tag.as_bytes()]),
            timestamp_ms: self.timestamp_ms,
            metadata: None,
            writes: self
                .writes
                .iter()
                .zip(expected)
                .map(|(write, &expected)| StreamWrite {
                    stream: write.stream.clone(),
                    expected,
                    events: (write.first..write.first + write.count)
                        .map(|index| NewEvent {
                            event_id: self.event_id(index),
                            event_type: self.event_type(index).clone(),
                            event_version: 1,
                            payload: self.payload(index),
                            supersedes: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What one store call appends: one batch through `append`, or several through `append_group`
/// (one transaction either way, so the unit commits whole or not at all).
struct PlannedUnit {
    number: usize,
    grouped: bool,
    /// Committed deferred, through `append_group_with` (acknowledged after a barrier).
    deferred: bool,
    /// After this deferred unit, the child makes it and those before it durable.
    barrier: Option<Barrier>,
    batches: Vec<PlannedBatch>,
}

/// How a child makes its deferred units durable.
#[derive(Clone, Copy)]
enum Barrier {
    MakeDurable,
    /// A replay-log append, which makes every earlier write durable too.
    LogAppend,
}

impl PlannedUnit {
    fn event_count(&self) -> usize {
        self.batches.iter().map(PlannedBatch::event_count).sum()
    }
}

struct Planner {
    rng: ChaCha8Rng,
    run: u64,
    seed: u64,
    batches: u64,
    units: usize,
}

impl Planner {
    fn new(run: u64, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            run,
            seed,
            batches: 0,
            units: 0,
        }
    }

    fn next_unit(&mut self) -> PlannedUnit {
        let deferred = self.rng.gen_bool(0.3);
        let barrier = match self.rng.gen_range(0..10) {
            _ if !deferred => None,
            0..3 => Some(Barrier::MakeDurable),
            3..5 => Some(Barrier::LogAppend),
            _ => None,
        };
        let grouped = deferred || self.rng.gen_bool(0.2);
        let batches = if grouped {
            self.rng.gen_range(2..=4)
        } else {
            1
        };
        let number = self.units;
        self.units += 1;
        PlannedUnit {
            number,
            grouped,
            deferred,
            barrier,
            batches: (0..batches).map(|_| self.next_batch()).collect(),
        }
    }

    fn next_batch(&mut self) -> PlannedBatch {
        let rng = &mut self.rng;
        let tag = format!("r{}.{:04x}.b{}", self.run, self.seed & 0xffff, self.batches);
        let timestamp_ms = 1_700_000_000_000 + self.run * 1_000_000 + self.batches;
        self.batches += 1;
        let total: usize = match rng.gen_range(0..100) {
            0..50 => rng.gen_range(1..=10),
            50..80 => rng.gen_range(11..=100),
            _ => rng.gen_range(101..=300),
        };
        let streams = if total >= 2 && rng.gen_bool(0.3) {
            rng.gen_range(2..=total.min(3))
        } else {
            1
        };
        // Split the events over the streams, at least one each.
        let mut cuts: Vec<usize> = rand::seq::index::sample(rng, total - 1, streams - 1)
            .into_iter()
            .map(|cut| cut + 1)
            .collect();
        cuts.sort_unstable();
        cuts.push(total);
        let pool = rand::seq::index::sample(rng, POOL.len(), streams);
        let mut writes = Vec::with_capacity(streams);
        let mut first = 0;
        for (number, (end, pooled)) in cuts.into_iter().zip(pool).enumerate() {
            let fresh = rng.gen_bool(0.1);
            let stream = if fresh {
                key(&format!("Fresh@{tag}-{number}"))
            } else {
                key(POOL[pooled])
            };
            writes.push(PlannedWrite {
                stream,
                fresh,
                first,
                count: end - first,
            });
            first = end;
        }
        let padding = (0..total)
            .map(|_| match rng.gen_range(0..1_000) {
                0..900 => rng.gen_range(0..=200),
                900..998 => rng.gen_range(201..=4_000),
                _ => rng.gen_range(20_000..=PADDING_MAX),
            })
            .collect();
        let types = match rng.gen_range(0..100) {
            0..5 => vec![
                type_name("CrashNoted"),
                type_name(&format!("CrashKind-{tag}")),
            ],
            5..50 => vec![type_name("CrashNoted")],
            _ => vec![type_name("CrashNoted"), type_name("CrashCounted")],
        };
        PlannedBatch {
            command_id: command_id(&tag),
            tag,
            timestamp_ms,
            types,
            writes,
            padding,
        }
    }
}

fn key(text: &str) -> StreamKey {
    StreamKey::parse(text).expect("valid stream key")
}

fn type_name(text: &str) -> TypeName {
    TypeName::new(text).expect("valid type name")
}

fn event_id(tag: &str, index: usize) -> EventId {
    EventId::derive(&[tag.as_bytes(), &(index as u64).to_le_bytes()])
}

fn command_id(tag: &str) -> CommandId {
    CommandId::derive(&[b"crash", tag.as_bytes()])
}

fn payload(tag: &str, index: usize, count: usize, padding: usize) -> Vec<u8> {
    let mut bytes = format!("{tag} {index} {count} ").into_bytes();
    bytes.extend_from_slice(padding_of(index, padding));
    bytes
}

/// Longest padding a plan uses.
const PADDING_MAX: usize = 120_000;

/// The padding of event `index` of a batch: `length` bytes of the alphabet over and over,
/// starting at letter `index % 26`, so a torn or shifted payload shows.
fn padding_of(index: usize, length: usize) -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        (0..PADDING_MAX + 26)
            .map(|offset| b'a' + (offset % 26) as u8)
            .collect()
    });
    &pattern[index % 26..index % 26 + length]
}

/// A payload's batch tag, event index and batch size, after checking its padding is intact.
fn parse_payload(bytes: &[u8]) -> Result<(&str, usize, usize), String> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    let mut parts = bytes.splitn(4, |&byte| byte == b' ');
    let mut field = || {
        parts
            .next()
            .and_then(|part| std::str::from_utf8(part).ok())
            .ok_or_else(|| format!("payload {:?} is not \"<tag> <index> <count> …\"", shown()))
    };
    let (tag, index, count) = (field()?, field()?, field()?);
    let number = |text: &str| {
        text.parse::<usize>()
            .map_err(|_| format!("payload {:?} has a bad number {text:?}", shown()))
    };
    let header = tag.len() + index.len() + count.len() + 3;
    let (index, count) = (number(index)?, number(count)?);
    let padding = bytes.get(header..).unwrap_or_default();
    if padding.len() > PADDING_MAX || padding != padding_of(index, padding.len()) {
        return Err(format!(
            "payload of event {index} of batch {tag} has torn or foreign padding ({} bytes)",
            padding.len()
        ));
    }
    Ok((tag, index, count))
}

// ---------------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------------

/// Not a test on its own: the crash tests run this binary again with `CHORUS_CRASH_CHILD_STORE`
/// (or `CHORUS_CRASH_CHILD_CREATE_DIR`) set, to make it the child they kill; without those
/// variables it returns at once and passes.
#[test]
fn child_appender() {
    let number = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
    };
    let reason = if let Some(path) = std::env::var_os(CHILD_STORE_VAR) {
        match (number(CHILD_RUN_VAR), number(CHILD_SEED_VAR)) {
            (Some(run), Some(seed)) => append_until_killed(Path::new(&path), run, seed),
            _ => format!("{CHILD_RUN_VAR} and {CHILD_SEED_VAR} must be numbers"),
        }
    } else if let Some(directory) = std::env::var_os(CHILD_CREATE_DIR_VAR) {
        match number(CHILD_RUN_VAR) {
            Some(run) => create_until_killed(Path::new(&directory), run),
            None => format!("{CHILD_RUN_VAR} must be a number"),
        }
    } else {
        return;
    };
    let mut out = std::io::stdout().lock();
    // The parent treats this line, or the exit without a kill, as a failure.
    writeln!(out, "\nERR {}", reason.replace('\n', " ")).expect("write to stdout");
    out.flush().expect("flush stdout");
    std::process::exit(2);
}

/// Creates new stores, one after another, in `directory`, until killed; returns only on
/// failure, with the reason.
fn create_until_killed(directory: &Path, run: u64) -> String {
    for number in 0.. {
        let path = directory.join(format!("store-{run}-{number}.redb"));
        if let Err(error) = EventStore::open(&path) {
            return format!("cannot create {}: {error}", path.display());
        }
    }
    unreachable!("the loop above ends only by returning")
}

/// Appends the planned units forever, printing `BEGIN <unit>` before each store call and
/// `ACK <tag> <events>` for each batch once it is durable: when the call returned, or for
/// deferred units after the barrier that follows them. Returns only on failure, with the
/// reason.
fn append_until_killed(path: &Path, run: u64, seed: u64) -> String {
    let store = match EventStore::open(path) {
        Ok(store) => store,
        Err(error) => return format!("cannot open {}: {error}", path.display()),
    };
    let mut versions: HashMap<StreamKey, u64> = HashMap::new();
    let mut planner = Planner::new(run, seed);
    let mut out = std::io::stdout();
    // The test harness has printed "test child_appender ... " without ending the line.
    if out.write_all(b"\n").and_then(|()| out.flush()).is_err() {
        return "cannot write to stdout".to_owned();
    }
    // Acknowledgements of deferred units, waiting for a barrier.
    let mut undurable = String::new();
    loop {
        let unit = planner.next_unit();
        if !unit.deferred && !undurable.is_empty() {
            if let Err(error) = store.make_durable() {
                return format!("make_durable: {error}");
            }
            if !acknowledge(&mut out, &std::mem::take(&mut undurable)) {
                return "cannot write to stdout".to_owned();
            }
        }
        let mut appends = Vec::with_capacity(unit.batches.len());
        let mut after = Vec::with_capacity(unit.batches.len());
        for batch in &unit.batches {
            let mut expected = Vec::with_capacity(batch.writes.len());
            let mut reached = Vec::with_capacity(batch.writes.len());
            for write in &batch.writes {
                let version = if write.fresh {
                    0
                } else if let Some(&version) = versions.get(&write.stream) {
                    version
                } else {
                    match store.stream_info(&write.stream) {
                        Ok(info) => info.map_or(0, |info| info.version),
                        Err(error) => return format!("stream_info {}: {error}", write.stream),
                    }
                };
                expected.push(if write.fresh {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                });
                let version = version + write.count as u64;
                versions.insert(write.stream.clone(), version);
                reached.push(version);
            }
            appends.push(batch.append_batch(&expected));
            after.push(reached);
        }
        let tags: Vec<&str> = unit
            .batches
            .iter()
            .map(|batch| batch.tag.as_str())
            .collect();
        let begin = format!("BEGIN {} {}\n", unit.number, tags.join(","));
        if out
            .write_all(begin.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return "cannot write to stdout".to_owned();
        }
        let commit = if unit.deferred {
            Commit::Deferred
        } else {
            Commit::Durable
        };
        let outcomes: Vec<AppendOutcome> = if unit.grouped {
            match store.append_group_with(&appends, commit) {
                Ok(outcomes) => match outcomes.into_iter().collect::<Result<Vec<_>, _>>() {
                    Ok(outcomes) => outcomes,
                    Err(error) => return format!("a batch of group {tags:?} failed: {error}"),
                },
                Err(error) => return format!("append_group {tags:?}: {error}"),
            }
        } else {
            match store.append(&appends[0]) {
                Ok(outcome) => vec![outcome],
                Err(error) => return format!("append {tags:?}: {error}"),
            }
        };
        let mut acks = String::new();
        for ((batch, outcome), reached) in unit.batches.iter().zip(&outcomes).zip(&after) {
            let versions: Vec<u64> = outcome
                .streams
                .iter()
                .map(|stream| stream.version)
                .collect();
            let written = outcome.last_position + 1 - outcome.first_position;
            if outcome.duplicate || versions != *reached || written != batch.event_count() as u64 {
                return format!(
                    "batch {} of {} events, expected to reach versions {reached:?}, has outcome \
                     {outcome:?}",
                    batch.tag,
                    batch.event_count()
                );
            }
            acks.push_str(&format!("ACK {} {}\n", batch.tag, batch.event_count()));
        }
        if unit.deferred {
            undurable.push_str(&acks);
            let made_durable = match unit.barrier {
                None => Ok(()),
                Some(Barrier::MakeDurable) => store.make_durable(),
                Some(Barrier::LogAppend) => {
                    store.append_log_records(&[(run, unit.number.to_le_bytes().to_vec())])
                }
            };
            if let Err(error) = made_durable {
                return format!("barrier after unit {}: {error}", unit.number);
            }
            if unit.barrier.is_none() {
                continue;
            }
            if store.has_deferred_writes() {
                return format!(
                    "deferred writes left after the barrier of unit {}",
                    unit.number
                );
            }
            acks = std::mem::take(&mut undurable);
        }
        if !acknowledge(&mut out, &acks) {
            return "cannot write to stdout".to_owned();
        }
    }
}

/// Prints acknowledgement lines; false if stdout is gone.
fn acknowledge(out: &mut std::io::Stdout, acks: &str) -> bool {
    out.write_all(acks.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------------

/// What one child printed before it died, and how it died.
struct ChildRun {
    lines: Vec<String>,
    stderr: String,
    status: ExitStatus,
    /// From spawn to kill.
    lifetime: Duration,
}

/// Where a kill landed, as the store tells it afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KillPoint {
    /// Before the child began its first append (while starting or opening the store).
    BeforeFirstAppend,
    /// Units begun were rolled back: the append in flight, which did not commit, or deferred
    /// units not made durable yet.
    MidAppendRolledBack,
    /// After an append committed, before the child acknowledged all of it.
    CommittedNotAcknowledged,
    /// Between appends: everything begun was committed and acknowledged.
    BetweenAppends,
}

/// What one iteration found.
struct IterationReport {
    kill: KillPoint,
    acked_batches: usize,
    committed_batches: usize,
    store_events: usize,
    reopen: Duration,
}

#[derive(Default)]
struct Totals {
    kills: BTreeMap<KillPoint, usize>,
    acked_batches: usize,
    committed_batches: usize,
    unacked_committed_batches: usize,
    store_events: usize,
    slowest_reopen: Duration,
    store_bytes: u64,
}

#[test]
fn killed_appenders_leave_whole_batches_only() {
    let seed = std::env::var(SEED_VAR)
        .ok()
        .map(|text| text.parse::<u64>().expect("CHORUS_CRASH_SEED is a number"))
        .unwrap_or_else(rand::random);
    let iterations = std::env::var(ITERATIONS_VAR)
        .ok()
        .map(|text| {
            text.parse::<u64>()
                .expect("CHORUS_CRASH_ITERATIONS is a number")
        })
        .unwrap_or(DEFAULT_ITERATIONS);
    let fail = |iteration: u64, reason: String| -> ! {
        panic!(
            "{reason}\n\ncrash test seed {seed}, iteration {iteration} of {iterations}\nreplay: \
             {SEED_VAR}={seed} {ITERATIONS_VAR}={iterations} cargo test -p chorus-aggregate \
             --test crash -- --nocapture\n(the batches replay exactly; the kill points depend \
             on timing)"
        )
    };
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("crash.redb");
    // The store is created before the first child: a kill while redb initialises a new file
    // leaves one that never opens again (`a_kill_while_creating_the_store_leaves_it_openable`).
    drop(EventStore::open(&path).expect("create the store"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut history: Vec<PlannedBatch> = Vec::new();
    let mut totals = Totals::default();
    let started = Instant::now();
    println!("crash test: seed {seed}, {iterations} iterations");
    for iteration in 0..iterations {
        let child_seed: u64 = rng.r#gen();
        // Most kills come some time after the first acknowledgement, so they land among the
        // appends; a few come right after spawn, while the child starts or opens the store.
        let early = rng.gen_bool(0.15);
        let delay = Duration::from_millis(if early {
            rng.gen_range(0..=80)
        } else {
            rng.gen_range(5..=200)
        });
        let run = run_child(&path, iteration, child_seed, !early, delay)
            .unwrap_or_else(|reason| fail(iteration, reason));
        let report =
            verify(&path, iteration, child_seed, &run, &mut history).unwrap_or_else(|reason| {
                fail(
                    iteration,
                    format!(
                        "{reason}\n\nthe child printed (stdout):\n{}\nits stderr:\n{}",
                        last_lines(&run.lines),
                        run.stderr
                    ),
                )
            });
        println!(
            "iteration {iteration}: killed {} ms after spawn{}, {:?}; acked {} batches, found {} \
             committed ({} unacknowledged); store holds {} events; reopen took {} ms",
            run.lifetime.as_millis(),
            if early { " (early)" } else { "" },
            report.kill,
            report.acked_batches,
            report.committed_batches,
            report.committed_batches - report.acked_batches,
            report.store_events,
            report.reopen.as_millis(),
        );
        *totals.kills.entry(report.kill).or_default() += 1;
        totals.acked_batches += report.acked_batches;
        totals.committed_batches += report.committed_batches;
        totals.unacked_committed_batches += report.committed_batches - report.acked_batches;
        totals.store_events = report.store_events;
        totals.slowest_reopen = totals.slowest_reopen.max(report.reopen);
        totals.store_bytes = std::fs::metadata(&path).map_or(0, |metadata| metadata.len());
    }
    println!(
        "crash test summary: seed {seed}, {iterations} kills in {:.1} s: {:?}; {} batches \
         acknowledged, {} committed ({} committed but unacknowledged, which is legal); {} \
         events ({} MB) in the store at the end; slowest reopen {} ms",
        started.elapsed().as_secs_f64(),
        totals.kills,
        totals.acked_batches,
        totals.committed_batches,
        totals.unacked_committed_batches,
        totals.store_events,
        totals.store_bytes >> 20,
        totals.slowest_reopen.as_millis(),
    );
}

/// Spawns the child on the store, kills it `delay` after its first acknowledgement (or after
/// spawn, when `wait_for_ack` is false), and collects what it printed.
fn run_child(
    path: &Path,
    iteration: u64,
    seed: u64,
    wait_for_ack: bool,
    delay: Duration,
) -> Result<ChildRun, String> {
    let executable = std::env::current_exe().map_err(|error| format!("current_exe: {error}"))?;
    let spawned = Instant::now();
    let mut child = Command::new(executable)
        .args([
            "child_appender",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE_VAR, path)
        .env(CHILD_SEED_VAR, seed.to_string())
        .env(CHILD_RUN_VAR, iteration.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot spawn the child: {error}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = mpsc::channel();
    let stdout_reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        // Whatever was read before an error is still worth showing.
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut lines = Vec::new();
    let mut acked = !wait_for_ack;
    if wait_for_ack {
        let deadline = spawned + FIRST_ACK_TIMEOUT;
        // Ends on the first ACK, at the deadline, or when the child closes its stdout.
        while let Ok(line) =
            receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            acked = line.starts_with("ACK ");
            lines.push(line);
            if acked {
                break;
            }
        }
    }
    if acked {
        thread::sleep(delay);
    }
    // SIGKILL on Unix. An error means the child is gone already; `wait` tells how it ended.
    let _ = child.kill();
    let status = child
        .wait()
        .map_err(|error| format!("cannot wait for the child: {error}"))?;
    let lifetime = spawned.elapsed();
    lines.extend(receiver.iter());
    stdout_reader.join().expect("stdout reader");
    let stderr = stderr_reader.join().expect("stderr reader");
    let run = ChildRun {
        lines,
        stderr,
        status,
        lifetime,
    };
    let failure = |what: &str| {
        Err(format!(
            "{what} (exit status {:?})\nthe child printed (stdout):\n{}\nits stderr:\n{}",
            run.status,
            last_lines(&run.lines),
            run.stderr
        ))
    };
    if run.lines.iter().any(|line| line.starts_with("ERR")) {
        return failure("the child failed");
    }
    if !killed(run.status) {
        return failure("the child ended without being killed");
    }
    if !acked {
        return failure(&format!(
            "the child acknowledged nothing within {} s",
            FIRST_ACK_TIMEOUT.as_secs()
        ));
    }
    Ok(run)
}

fn killed(status: ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(9)
    }
    #[cfg(not(unix))]
    {
        !status.success()
    }
}

/// Reopens the store after a kill and checks it: against the store's own invariants, and
/// exactly against the batches committed before (`history`) followed by the units this child
/// began, of which it must hold every acknowledged one and may hold those in flight besides
/// (one unit, or a run of deferred units not yet made durable), in order.
/// Adds what this child committed to `history`.
fn verify(
    path: &Path,
    iteration: u64,
    seed: u64,
    run: &ChildRun,
    history: &mut Vec<PlannedBatch>,
) -> Result<IterationReport, String> {
    // What the child said.
    let mut begun = 0usize;
    let mut acks: Vec<(String, usize)> = Vec::new();
    for line in &run.lines {
        if let Some(rest) = line.strip_prefix("BEGIN ") {
            let number = rest.split(' ').next().and_then(|text| text.parse().ok());
            if number != Some(begun) {
                return Err(format!(
                    "BEGIN line {line:?} out of order; expected unit {begun}"
                ));
            }
            begun += 1;
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let ack = rest
                .split_once(' ')
                .and_then(|(tag, count)| Some((tag.to_owned(), count.parse().ok()?)))
                .ok_or_else(|| format!("bad ACK line {line:?}"))?;
            acks.push(ack);
        }
    }
    // What it was to do: the units it began, and the next one, which it never began.
    let mut planner = Planner::new(iteration, seed);
    let units: Vec<PlannedUnit> = (0..=begun).map(|_| planner.next_unit()).collect();
    let planned: Vec<&PlannedBatch> = units[..begun]
        .iter()
        .flat_map(|unit| &unit.batches)
        .collect();
    if acks.len() > planned.len() {
        return Err(format!(
            "the child acknowledged {} batches but began only {} (in {begun} units)",
            acks.len(),
            planned.len()
        ));
    }
    for ((tag, count), batch) in acks.iter().zip(&planned) {
        if *tag != batch.tag || *count != batch.event_count() {
            return Err(format!(
                "the child acknowledged {tag} with {count} events where the plan has {} with {}",
                batch.tag,
                batch.event_count()
            ));
        }
    }
    // Units acknowledged whole; a unit acknowledged in part committed all the same.
    let mut acked_units = 0;
    let mut covered = 0;
    for unit in &units[..begun] {
        if covered + unit.batches.len() > acks.len() {
            break;
        }
        covered += unit.batches.len();
        acked_units += 1;
    }
    let partly_acked = covered < acks.len();
    let least = acked_units + usize::from(partly_acked);
    // A prefix of the units begun: a durable unit is begun only after every earlier one was
    // acknowledged, so at most one is in flight, unless a run of deferred units is.
    let most = begun;

    let opening = Instant::now();
    let store =
        EventStore::open(path).map_err(|error| format!("reopen after the kill: {error}"))?;
    let reopen = opening.elapsed();
    let events = read_filter(&store, &Filter::All)?;
    let found = check_invariants(&store, &events)?;
    // Every acknowledged batch is there whole (the exact comparison below says it again, and
    // more, but less directly).
    for (tag, count) in &acks {
        let present = found.get(tag.as_str()).copied().unwrap_or(0);
        if present != *count {
            return Err(format!(
                "acknowledged batch {tag} of {count} events has {present} of them in the store"
            ));
        }
    }

    // Exactly the history, then a prefix of this child's units.
    let earlier: usize = history.iter().map(PlannedBatch::event_count).sum();
    if events.len() < earlier {
        return Err(format!(
            "the store holds {} events, fewer than the {earlier} committed before this child",
            events.len()
        ));
    }
    compare(&events[..earlier], history.iter())?;
    let new = &events[earlier..];
    let mut sizes = vec![0usize];
    for unit in &units {
        sizes.push(sizes[sizes.len() - 1] + unit.event_count());
    }
    let Some(committed) = (least..=most).find(|&units| sizes[units] == new.len()) else {
        return Err(format!(
            "this child began {begun} units and acknowledged {} batches ({acked_units} whole \
             units{}), so the store must hold {} new events ({least} units) or at most {} ({most} \
             units); it holds {}",
            acks.len(),
            if partly_acked { " and part of one" } else { "" },
            sizes[least],
            sizes[most],
            new.len()
        ));
    };
    compare(
        new,
        units[..committed].iter().flat_map(|unit| &unit.batches),
    )?;

    // Committed batches answer their command ids with where they landed; the unit that did not
    // commit left nothing behind: no command outcome, no stream it was to create.
    let mut position = earlier as u64;
    for batch in units[..committed].iter().flat_map(|unit| &unit.batches) {
        let outcome = store
            .command_outcome(batch.command_id)
            .map_err(|error| format!("command_outcome: {error}"))?
            .ok_or_else(|| format!("committed batch {} has no command outcome", batch.tag))?;
        let expected = (position + 1, position + batch.event_count() as u64);
        if (outcome.first_position, outcome.last_position) != expected {
            return Err(format!(
                "command outcome of batch {} names positions {}..={}, but it sits at {}..={}",
                batch.tag, outcome.first_position, outcome.last_position, expected.0, expected.1
            ));
        }
        position = expected.1;
    }
    for batch in &units[committed].batches {
        let outcome = store
            .command_outcome(batch.command_id)
            .map_err(|error| format!("command_outcome: {error}"))?;
        if outcome.is_some() {
            return Err(format!(
                "uncommitted batch {} has a command outcome: {outcome:?}",
                batch.tag
            ));
        }
        for write in batch.writes.iter().filter(|write| write.fresh) {
            let info = store
                .stream_info(&write.stream)
                .map_err(|error| format!("stream_info: {error}"))?;
            if info.is_some() {
                return Err(format!(
                    "uncommitted batch {} created stream {}: {info:?}",
                    batch.tag, write.stream
                ));
            }
        }
    }
    drop(store);

    let kill = if begun == 0 {
        KillPoint::BeforeFirstAppend
    } else if committed < begun {
        KillPoint::MidAppendRolledBack
    } else if acks.len() < planned.len() {
        KillPoint::CommittedNotAcknowledged
    } else {
        KillPoint::BetweenAppends
    };
    let committed_batches = units[..committed]
        .iter()
        .map(|unit| unit.batches.len())
        .sum();
    history.extend(
        units
            .into_iter()
            .take(committed)
            .flat_map(|unit| unit.batches),
    );
    Ok(IterationReport {
        kill,
        acked_batches: acks.len(),
        committed_batches,
        store_events: events.len(),
        reopen,
    })
}

/// Every event `filter` covers, paging forward.
fn read_filter(store: &EventStore, filter: &Filter) -> Result<Vec<RecordedEvent>, String> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let slice = store
            .read(filter, from, Direction::Forward, PAGE)
            .map_err(|error| format!("read {filter:?} from {from}: {error}"))?;
        events.extend(slice.events);
        match slice.next {
            Some(next) => from = next,
            None => return Ok(events),
        }
    }
}

/// Every event of a stream, paging forward.
fn read_whole_stream(store: &EventStore, stream: &StreamKey) -> Result<Vec<RecordedEvent>, String> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let slice = store
            .read_stream(stream, from, Direction::Forward, PAGE)
            .map_err(|error| format!("read_stream {stream} from {from}: {error}"))?;
        events.extend(slice.events);
        match slice.next {
            Some(next) => from = next,
            None => return Ok(events),
        }
    }
}

/// What the store must satisfy whatever was appended: dense global positions and per-stream
/// sequence numbers, whole batches at consecutive positions, and every index (stream, category,
/// type, counters) agreeing with `$all`. Returns the number of events of each batch tag found.
fn check_invariants<'e>(
    store: &EventStore,
    events: &'e [RecordedEvent],
) -> Result<HashMap<&'e str, usize>, String> {
    let head = store
        .head_position()
        .map_err(|error| format!("head_position: {error}"))?;
    if events.len() as u64 != head {
        return Err(format!(
            "$all holds {} events but the head position is {head}",
            events.len()
        ));
    }
    // Per batch tag: the size its events claim, and (index, position) of each event found.
    let mut batches: HashMap<&str, (usize, Vec<IndexAt>)> = HashMap::new();
    let mut streams: BTreeMap<&StreamKey, Vec<&RecordedEvent>> = BTreeMap::new();
    let mut categories: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut types: BTreeMap<&TypeName, Vec<u64>> = BTreeMap::new();
    let mut latest_timestamp_ms = 0;
    for (offset, event) in events.iter().enumerate() {
        if event.position != offset as u64 + 1 {
            return Err(format!(
                "$all is not dense: its event {} has position {}",
                offset + 1,
                event.position
            ));
        }
        let (tag, index, count) = parse_payload(&event.payload)
            .map_err(|reason| format!("at position {}: {reason}", event.position))?;
        if event.event_id != event_id(tag, index) || event.command_id != Some(command_id(tag)) {
            return Err(format!(
                "position {} holds event {index} of batch {tag} under another event or command id",
                event.position
            ));
        }
        let batch = batches.entry(tag).or_insert((count, Vec::new()));
        if batch.0 != count {
            return Err(format!(
                "batch {tag} has events claiming {} and {count} events",
                batch.0
            ));
        }
        batch.1.push((index, event.position));
        streams.entry(&event.stream).or_default().push(event);
        categories
            .entry((
                event.stream.database().as_str(),
                event.stream.category().as_str(),
            ))
            .or_default()
            .push(event.position);
        types
            .entry(&event.event_type)
            .or_default()
            .push(event.position);
        latest_timestamp_ms = latest_timestamp_ms.max(event.timestamp_ms);
    }
    // Whole batches only, each at consecutive positions in its own order.
    for (tag, (count, found)) in &batches {
        let indexes: Vec<usize> = found.iter().map(|&(index, _)| index).collect();
        if indexes != (0..*count).collect::<Vec<_>>() {
            return Err(format!(
                "partial or disordered batch {tag}: {} of its {count} events, indexes {}",
                found.len(),
                abbreviate(&indexes)
            ));
        }
        let first = found[0].1;
        if found
            .iter()
            .enumerate()
            .any(|(offset, &(_, position))| position != first + offset as u64)
        {
            let positions: Vec<u64> = found.iter().map(|&(_, position)| position).collect();
            return Err(format!(
                "batch {tag} is not at consecutive positions: {}",
                abbreviate(&positions)
            ));
        }
    }
    // Streams: dense sequence numbers in global order, the version they end at, and a read of
    // the stream itself agreeing with `$all`.
    for (stream, stream_events) in &streams {
        for (offset, event) in stream_events.iter().enumerate() {
            if event.sequence != offset as u64 + 1 {
                return Err(format!(
                    "stream {stream}: its event {} in global order (position {}) has sequence {}",
                    offset + 1,
                    event.position,
                    event.sequence
                ));
            }
        }
        let version = store
            .stream_info(stream)
            .map_err(|error| format!("stream_info {stream}: {error}"))?
            .map(|info| info.version);
        if version != Some(stream_events.len() as u64) {
            return Err(format!(
                "stream {stream} holds {} events in $all, but its version is {version:?}",
                stream_events.len()
            ));
        }
        let read = read_whole_stream(store, stream)?;
        let wanted: Vec<u64> = stream_events.iter().map(|event| event.position).collect();
        let got: Vec<u64> = read.iter().map(|event| event.position).collect();
        if got != wanted {
            return Err(format!(
                "reading stream {stream} gives positions {}, $all gives {}",
                abbreviate(&got),
                abbreviate(&wanted)
            ));
        }
    }
    for ((database, category), wanted) in &categories {
        let filter = Filter::Category(
            database.parse().map_err(|error| format!("{error}"))?,
            category.parse().map_err(|error| format!("{error}"))?,
        );
        let got: Vec<u64> = read_filter(store, &filter)?
            .iter()
            .map(|event| event.position)
            .collect();
        if got != *wanted {
            return Err(format!(
                "category {database}/{category} reads positions {}, $all gives {}",
                abbreviate(&got),
                abbreviate(wanted)
            ));
        }
    }
    let listed: BTreeSet<TypeName> = store
        .list_event_types()
        .map_err(|error| format!("list_event_types: {error}"))?
        .into_iter()
        .collect();
    let used: BTreeSet<TypeName> = types.keys().map(|&name| name.clone()).collect();
    if listed != used {
        return Err(format!(
            "the store lists event types {listed:?}, but its events use {used:?}"
        ));
    }
    for (event_type, wanted) in &types {
        let got: Vec<u64> = read_filter(store, &Filter::EventType((*event_type).clone()))?
            .iter()
            .map(|event| event.position)
            .collect();
        if got != *wanted {
            return Err(format!(
                "event type {event_type} reads positions {}, $all gives {}",
                abbreviate(&got),
                abbreviate(wanted)
            ));
        }
    }
    let latest = store
        .latest_timestamp_ms()
        .map_err(|error| format!("latest_timestamp_ms: {error}"))?;
    if latest != latest_timestamp_ms {
        return Err(format!(
            "the store's latest timestamp is {latest}, its newest event's is {latest_timestamp_ms}"
        ));
    }
    Ok(batches
        .into_iter()
        .map(|(tag, (_, found))| (tag, found.len()))
        .collect())
}

/// An event's index within its batch, and its global position.
type IndexAt = (usize, u64);

/// Compares stored events, in order, with the events of planned batches, in order.
fn compare<'a>(
    events: &[RecordedEvent],
    batches: impl Iterator<Item = &'a PlannedBatch>,
) -> Result<(), String> {
    let mut events = events.iter();
    for batch in batches {
        for (stream, index) in batch.events() {
            let Some(event) = events.next() else {
                return Err(format!(
                    "the store ends before event {index} of batch {}",
                    batch.tag
                ));
            };
            let matches = event.stream == *stream
                && event.event_id == batch.event_id(index)
                && event.event_type == *batch.event_type(index)
                && event.event_version == 1
                && payload_matches(&event.payload, batch, index)
                && event.command_id == Some(batch.command_id)
                && event.causation_id == MessageId::from(batch.command_id)
                && event.timestamp_ms == batch.timestamp_ms
                && event.supersedes.is_none();
            if !matches {
                return Err(format!(
                    "position {} holds {:?} of stream {} ({} payload bytes, type {}), where event \
                     {index} of batch {} in stream {stream} belongs",
                    event.position,
                    String::from_utf8_lossy(&event.payload[..event.payload.len().min(40)]),
                    event.stream,
                    event.payload.len(),
                    event.event_type,
                    batch.tag
                ));
            }
        }
    }
    match events.next() {
        Some(event) => Err(format!(
            "position {} holds {:?}, past every batch that may be committed",
            event.position,
            String::from_utf8_lossy(&event.payload[..event.payload.len().min(40)])
        )),
        None => Ok(()),
    }
}

/// Whether `bytes` is the payload of event `index` of `batch`, without building it.
fn payload_matches(bytes: &[u8], batch: &PlannedBatch, index: usize) -> bool {
    let header = format!("{} {index} {} ", batch.tag, batch.event_count());
    bytes.len() == header.len() + batch.padding[index]
        && bytes.starts_with(header.as_bytes())
        && bytes[header.len()..] == *padding_of(index, batch.padding[index])
}

/// The end of what a child printed, for a failure message.
fn last_lines(lines: &[String]) -> String {
    const SHOWN: usize = 40;
    let skipped = lines.len().saturating_sub(SHOWN);
    let mut text = if skipped > 0 {
        format!("({skipped} earlier lines left out)\n")
    } else {
        String::new()
    };
    text.push_str(&lines[skipped..].join("\n"));
    text
}

/// A long list, shortened for a message.
fn abbreviate<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.len() <= 12 {
        format!("{items:?}")
    } else {
        format!(
            "{:?} … {:?} ({} in all)",
            &items[..6],
            &items[items.len() - 6..],
            items.len()
        )
    }
}

/// A kill while `EventStore::open` creates a new file must leave either no store or one that
/// opens. redb 4 writes a new file's magic number last and refuses a non-empty file without
/// it, so the store builds a new file under a temporary name and renames it into place; before
/// that, about one kill in ten during creation left a file that never opened again.
#[test]
fn a_kill_while_creating_the_store_leaves_it_openable() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for run in 0..20 {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "child_appender",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CREATE_DIR_VAR, directory.path())
            .env(CHILD_RUN_VAR, run.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        thread::sleep(Duration::from_millis(rng.gen_range(30..=150)));
        // An error means the child is gone already; its output tells why.
        let _ = child.kill();
        let output = child.wait_with_output().expect("wait for the child");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(!printed.contains("ERR"), "the child failed: {printed}");
        assert!(killed(output.status), "the child ended unkilled: {printed}");
    }
    let mut broken = Vec::new();
    let mut stores = 0;
    for entry in std::fs::read_dir(directory.path()).expect("list the directory") {
        let path = entry.expect("directory entry").path();
        // Leftover `.<name>.creating` files of interrupted creations are not stores (the
        // next open of that name replaces them).
        if path.extension().is_none_or(|extension| extension != "redb") {
            continue;
        }
        stores += 1;
        if let Err(error) = EventStore::open(&path) {
            let length = std::fs::metadata(&path).map_or(0, |metadata| metadata.len());
            broken.push(format!("{} ({length} bytes): {error}", path.display()));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {stores} stores created by killed children do not open:\n{}",
        broken.len(),
        broken.join("\n")
    );
}
