//! What a reload holds at its peak, counted by the allocator: stages a data
//! document from its file and builds a snapshot from it, as the PDP does on
//! a reload, beside a snapshot already built, and prints the heap's live
//! bytes and peak at each step (with the process's RSS for comparison).
//!
//! ```text
//! cargo run --release --example reload_memory -- target/load/large-7/env.json
//! ```
//!
//! The allocator is the PDP's own (mimalloc), wrapped to count. Capacity
//! reserved but not yet written counts in full here, though the OS backs
//! it only when touched, so the peaks are upper bounds on what RSS sees.

use std::alloc::{GlobalAlloc, Layout};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use pdp::snapshot::Snapshot;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: forwards to mimalloc unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { INNER.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: as above.
        unsafe { INNER.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { INNER.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both blocks are live while the old one is copied.
        grew(new_size);
        // SAFETY: as above.
        let moved = unsafe { INNER.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Relaxed);
        moved
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let peak = PEAK.load(Relaxed);
    println!(
        "{what:<34} live {:7.1} MiB   peak {:7.1} MiB   (VmRSS {} kB)",
        mib(LIVE.load(Relaxed)),
        mib(peak),
        status_kib("VmRSS:")
    );
    PEAK.store(LIVE.load(Relaxed), Relaxed);
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
    let steady = LIVE.load(Relaxed);
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
