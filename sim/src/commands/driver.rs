//! The one sweep driver of both simulators (`sweep` and `sweep --engine`): seeds run on
//! worker threads, a progress bar (a line every 5% without a terminal), each failure printed
//! with its violations and the command that replays it, a summary table, and the figures as
//! one JSON object on the last line. A mode says how to run a seed and what to count.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use chorus_sim::Violation;
use serde_json::{Map, Value, json};

use super::common::seed_progress;

/// What a kind of sweep tells the driver.
pub(crate) trait SweepMode: Sync {
    /// One seed's result.
    type Outcome: Send;
    /// What the summary adds up over the seeds.
    type Tally: Default;

    /// `consensus` or `engine`: the `mode` of the JSON line.
    fn name(&self) -> &'static str;
    /// The options that shape every seed, as flags (empty when none).
    fn flags(&self) -> String;
    /// Runs one seed; a panic of the simulated code must come back as a violation.
    fn run(&self, seed: u64) -> Self::Outcome;
    /// The seed and violations of an outcome.
    fn verdict<'a>(&self, outcome: &'a Self::Outcome) -> (u64, &'a [Violation]);
    /// The command that replays `seed` alone, printing its story.
    fn replay_command(&self, seed: u64) -> String;
    /// More lines about a failed seed (its story, a graph dump).
    fn failure_details(&self, outcome: &Self::Outcome) -> Vec<String>;
    /// Adds one outcome to the tally.
    fn add(&self, tally: &mut Self::Tally, outcome: &Self::Outcome);
    /// The mode's lines of the summary table.
    fn summary(&self, tally: &Self::Tally) -> Vec<(String, String)>;
    /// The mode's figures for the JSON line.
    fn figures(&self, tally: &Self::Tally) -> Map<String, Value>;
}

/// Which seeds, on how many threads.
pub(crate) struct SeedRange {
    /// First seed.
    pub(crate) start: u64,
    /// How many.
    pub(crate) seeds: u64,
    /// Worker threads (0: one per core).
    pub(crate) jobs: usize,
}

/// What every sweep counts, whatever its mode.
#[derive(Default)]
struct Totals {
    runs: u64,
    failed: Vec<u64>,
    by_kind: BTreeMap<&'static str, u64>,
}

/// Runs the seeds of `range` in `mode`; exits non-zero when a seed failed.
pub(crate) fn sweep<M: SweepMode>(mode: &M, range: &SeedRange) -> Result<ExitCode, String> {
    if range.seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    let jobs = match range.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        jobs => jobs,
    }
    .min(usize::try_from(range.seeds).unwrap_or(usize::MAX));
    let started = Instant::now();
    let next = AtomicU64::new(range.start);
    let end = range.start.saturating_add(range.seeds);
    let (sender, receiver) = mpsc::channel::<M::Outcome>();
    let mut totals = Totals::default();
    let mut tally = M::Tally::default();
    std::thread::scope(|scope| -> Result<(), String> {
        for _ in 0..jobs {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || sender.send(mode.run(seed)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let progress = seed_progress(range.seeds)?;
        for outcome in receiver {
            totals.runs += 1;
            mode.add(&mut tally, &outcome);
            let (seed, violations) = mode.verdict(&outcome);
            if !violations.is_empty() {
                for violation in violations {
                    *totals.by_kind.entry(violation.kind.name()).or_default() += 1;
                }
                progress.suspend(|| report_failure(mode, &outcome));
                totals.failed.push(seed);
                progress.set_message(format!("{} failed", totals.failed.len()));
            }
            progress.inc(1);
            // Without a terminal the bar is hidden: a line every 5% instead.
            let every = (range.seeds / 20).max(1);
            if progress.is_hidden() && (totals.runs % every == 0 || totals.runs == range.seeds) {
                eprintln!(
                    "{}/{} seeds, {} failed, {:.0} s",
                    totals.runs,
                    range.seeds,
                    totals.failed.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        progress.finish_and_clear();
        Ok(())
    })?;
    totals.failed.sort_unstable();
    print_summary(mode, range, &totals, &tally, started);
    Ok(if totals.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_failure<M: SweepMode>(mode: &M, outcome: &M::Outcome) {
    let (seed, violations) = mode.verdict(outcome);
    println!("seed {seed} FAILED:");
    for violation in violations {
        println!("  {violation}");
    }
    println!("  replay: {}", mode.replay_command(seed));
    for line in mode.failure_details(outcome) {
        println!("  {line}");
    }
}

fn print_summary<M: SweepMode>(
    mode: &M,
    range: &SeedRange,
    totals: &Totals,
    tally: &M::Tally,
    started: Instant,
) {
    let end = range.start.saturating_add(range.seeds);
    let flags = mode.flags();
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" ({flags})")
    };
    println!("{} sweep: seeds {}..{end}{flags}", mode.name(), range.start);
    let wall = started.elapsed().as_secs_f64();
    let mut rows = vec![("seeds run".to_owned(), totals.runs.to_string())];
    rows.extend(mode.summary(tally));
    rows.push(("wall seconds".to_owned(), format!("{wall:.1}")));
    for (label, value) in rows {
        println!("  {label:<28} {value}");
    }
    if totals.failed.is_empty() {
        println!("  no violation");
    } else {
        println!("  violations in {} seed(s):", totals.failed.len());
        for (kind, count) in &totals.by_kind {
            println!("    {kind:<26} {count}");
        }
        println!("  failing seeds: {:?}", totals.failed);
    }
    let mut figures = Map::new();
    figures.insert("mode".into(), json!(mode.name()));
    figures.insert("start_seed".into(), json!(range.start));
    figures.insert("seeds".into(), json!(totals.runs));
    figures.extend(mode.figures(tally));
    figures.insert("violations".into(), json!(totals.by_kind));
    figures.insert("failed_seeds".into(), json!(totals.failed.len()));
    figures.insert("failed".into(), json!(totals.failed));
    figures.insert("wall_s".into(), json!((wall * 10.0).round() / 10.0));
    println!("{}", Value::Object(figures));
}
