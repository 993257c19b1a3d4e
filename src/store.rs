//! The current snapshot, swapped whole and read without locks.
//!
//! Readers call [`Store::load`] once per request and decide against that one
//! value, so an answer never mixes two snapshots; a writer builds the next
//! snapshot off to the side and [`Store::swap`]s it in. Nothing here waits:
//! `arc-swap` makes the load a few atomic operations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::snapshot::Snapshot;

/// Where a snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Source {
    File(PathBuf),
    Embedded,
    Backup(PathBuf),
    ControlPlane,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotMeta {
    pub source: Source,
    pub content_hash: String,
    #[serde(skip)]
    pub loaded_at: SystemTime,
}

pub struct Loaded {
    pub snapshot: Snapshot,
    pub meta: SnapshotMeta,
}

#[derive(Default)]
pub struct Store {
    current: ArcSwapOption<Loaded>,
    /// Unix milliseconds when the serving snapshot was last known current:
    /// swapped in, or confirmed unchanged by a sync.
    confirmed_ms: AtomicU64,
    swaps: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot, or `None` before the first one is loaded.
    pub fn load(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// The current snapshot for the length of one request: no reference
    /// count is touched, so concurrent requests share no cache line.
    pub fn current(&self) -> arc_swap::Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    pub fn swap(&self, next: Loaded) {
        self.current.store(Some(Arc::new(next)));
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.mark_fresh();
    }

    /// Records that the control plane confirmed the serving snapshot is current.
    pub fn mark_fresh(&self) {
        self.confirmed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Records when the serving snapshot was last known current, e.g. the
    /// time of the sync that wrote a backup being restored.
    pub fn mark_fresh_at(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        self.confirmed_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the snapshot was last swapped in or confirmed current.
    pub fn freshness_age(&self) -> Duration {
        let confirmed = self.confirmed_ms.load(Ordering::Relaxed);
        Duration::from_millis(now_ms().saturating_sub(confirmed))
    }

    /// Snapshots swapped in since start.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_swaps_and_confirmations() {
        let store = Store::new();
        assert!(store.current().is_none());
        store.swap(Loaded {
            snapshot: Snapshot::empty(),
            meta: SnapshotMeta {
                source: Source::Embedded,
                content_hash: String::new(),
                loaded_at: SystemTime::now(),
            },
        });
        assert!(store.freshness_age() < Duration::from_secs(5));
        assert_eq!(store.swaps(), 1);
        store.mark_fresh_at(SystemTime::now() - Duration::from_secs(3600));
        assert!(store.freshness_age() >= Duration::from_secs(3599));
        store.mark_fresh();
        assert!(store.freshness_age() < Duration::from_secs(5));
    }
}
