//! The fast seed sweep CI runs: every fault kind, group sizes 4 to 10. More seeds with
//! `CHORUS_SIM_SEEDS=n` (the long sweep is `chorus-sim sweep --seeds 10000`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_sim::sweep::{SweepOptions, run_seed};

const SEEDS_DEFAULT: u64 = 200;

// Every seed of the fast sweep passes every checker; a failure names the seed and the
// command that replays it.
#[test]
fn fast_sweep_finds_no_violation() {
    let seeds = std::env::var("CHORUS_SIM_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    let options = SweepOptions::default();
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let faults = Mutex::new(std::collections::BTreeMap::<&'static str, u64>::new());
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds {
                        break;
                    }
                    let outcome = run_seed(seed, &options, false);
                    let mut totals = faults.lock().expect("faults lock");
                    for (kind, count) in &outcome.stats.faults {
                        *totals.entry(kind).or_default() += count;
                    }
                    drop(totals);
                    if !outcome.violations.is_empty() {
                        failures.lock().expect("failures lock").push(format!(
                            "seed {seed}: {:?}\n  replay: cargo run --release -p chorus-sim -- \
                             replay --seed {seed} {}",
                            outcome.violations,
                            options.flags()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sweep really injected every kind of fault.
    let faults = faults.into_inner().expect("faults");
    if seeds >= SEEDS_DEFAULT {
        for kind in chorus_sim::sweep::FaultKind::all() {
            assert!(
                faults.get(kind.name()).copied().unwrap_or(0) > 0,
                "no {kind} fault injected: {faults:?}"
            );
        }
    }
}
