//! Helpers the subcommands share: percentiles, hex, CPU time, a progress bar, the rates of a
//! bench run.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// The `percent`-th percentile of `sorted` (0 when empty).
pub(crate) fn percentile(sorted: &[u64], percent: usize) -> u64 {
    sorted
        .get((sorted.len() * percent / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// CPU time of this thread, from Linux's schedstat; wall time elsewhere.
pub(crate) fn thread_cpu_seconds(wall: &Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| wall.elapsed().as_secs_f64(), |ns| ns as f64 / 1e9)
}

/// The progress bar of a sweep over `seeds` seeds.
pub(crate) fn seed_progress(seeds: u64) -> Result<ProgressBar, String> {
    let progress = ProgressBar::new(seeds);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} seeds ({per_sec}, eta {eta}) {msg}",
        )
        .map_err(|error| error.to_string())?
        .progress_chars("=> "),
    );
    Ok(progress)
}

/// What a bench run offered and got done (agreed or committed), over simulated and CPU time.
pub(crate) struct Throughput {
    /// Work offered.
    pub(crate) offered: u64,
    /// Work done within the run.
    pub(crate) done: u64,
    pub(crate) simulated_s: f64,
    pub(crate) cpu_s: f64,
    pub(crate) p50_ms: u64,
    pub(crate) p99_ms: u64,
}

impl Throughput {
    /// The rates of a run that did one piece of work per latency in `latencies_ms`.
    pub(crate) fn new(
        offered: u64,
        mut latencies_ms: Vec<u64>,
        simulated_s: f64,
        cpu_s: f64,
    ) -> Self {
        latencies_ms.sort_unstable();
        Throughput {
            offered,
            done: latencies_ms.len() as u64,
            simulated_s,
            cpu_s,
            p50_ms: percentile(&latencies_ms, 50),
            p99_ms: percentile(&latencies_ms, 99),
        }
    }

    pub(crate) fn per_sim_s(&self) -> f64 {
        self.done as f64 / self.simulated_s
    }

    pub(crate) fn per_cpu_s(&self) -> f64 {
        self.done as f64 / self.cpu_s.max(1e-9)
    }

    pub(crate) fn offered_per_sim_s(&self) -> f64 {
        self.offered as f64 / self.simulated_s
    }
}
