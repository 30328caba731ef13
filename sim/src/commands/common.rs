//! Helpers the subcommands share: percentiles, hex, CPU time, a progress bar.

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
