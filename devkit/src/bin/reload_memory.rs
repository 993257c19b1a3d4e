//! What a reload holds at its peak, counted by the allocator: stages a data
//! document from its file and builds a snapshot from it, as the PDP does on
//! a reload, beside a snapshot already built, and prints the heap's live
//! bytes and peak at each step (with the process's RSS for comparison).
//!
//! ```text
//! cargo run --release -p pdp-devkit --bin reload_memory -- target/load/large-7/env.json
//! ```
//!
//! The allocator is the PDP's own (mimalloc), wrapped to count
//! (`pdp_devkit::counting`, whose peaks are upper bounds on what RSS sees).

use std::path::Path;
use std::process::ExitCode;

use mimalloc::MiMalloc;
use pdp::snapshot::Snapshot;
use pdp_devkit::counting::{self, Counting};

#[global_allocator]
static GLOBAL: Counting<MiMalloc> = Counting::new(MiMalloc);

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn status_kib(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

/// Prints the step and returns its peak, then starts the next step's peak
/// from what is live now.
fn step(what: &str) -> usize {
    let peak = counting::peak_bytes();
    println!(
        "{what:<34} live {:7.1} MiB   peak {:7.1} MiB   (VmRSS {} kB)",
        mib(counting::live_bytes()),
        mib(peak),
        status_kib("VmRSS:")
    );
    counting::reset_peak();
    peak
}

/// Stages and builds, as a reload does; returns the snapshot and the peak.
fn load(path: &Path) -> Result<(Snapshot, usize), String> {
    let staged = pdp::read_staged(path).map_err(|e| e.to_string())?;
    let reading = step("  staged (peak: while reading)");
    let snapshot = Snapshot::from_staged(staged).map_err(|e| e.to_string())?;
    let building = step("  built (peak: while building)");
    Ok((snapshot, reading.max(building)))
}

/// A first load, then a reload beside it, as the PDP's reload runs.
fn run(path: &Path) -> Result<(), String> {
    step("start");
    println!("first load:");
    let (serving, _) = load(path)?;
    let steady = counting::live_bytes();
    println!("reload beside it:");
    let (reloaded, peak) = load(path)?;
    drop(serving);
    step("old snapshot dropped");
    println!(
        "snapshot {:.1} MiB of heap; a reload beside it peaked at {:.1} MiB ({:.2}x)",
        mib(steady),
        mib(peak),
        peak as f64 / steady as f64
    );
    drop(reloaded);
    Ok(())
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: reload_memory DATA_DOCUMENT.json");
        return ExitCode::from(64);
    };
    match run(Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reload_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
