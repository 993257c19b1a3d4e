//! The current snapshot, swapped whole and read without locks.
//!
//! Readers call [`Store::current`] once per request and decide against that
//! one value, so an answer never mixes two snapshots. Every snapshot enters
//! through [`Store::install`], whatever its source (the embedded example, a
//! data file, the backup, a control-plane sync): it validates and builds the
//! staged document off to the side, logs what it holds and what it dropped,
//! and swaps it in. Nothing here waits: `arc-swap` makes the load a few
//! atomic operations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use tracing::{info, warn};

use crate::snapshot::{BuildError, Counts, Snapshot, Staged};

/// Where a snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Source {
    File(PathBuf),
    Embedded,
    Backup(PathBuf),
    ControlPlane,
}

impl Source {
    /// The source as one word, for logs.
    fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Embedded => "embedded example",
            Source::Backup(_) => "backup",
            Source::ControlPlane => "control plane",
        }
    }
}

/// Where a staged document comes from and how current it is known to be.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub source: Source,
    /// The document's [`Staged::content_hash`], when the caller has already
    /// computed it (a sync compares it first; a backup stores it).
    pub content_hash: Option<String>,
    /// When the data was last known current; now if `None`. A restored
    /// backup is as fresh as the last sync that wrote or confirmed it.
    pub fresh_at: Option<SystemTime>,
}

impl From<Source> for Provenance {
    fn from(source: Source) -> Self {
        Provenance {
            source,
            content_hash: None,
            fresh_at: None,
        }
    }
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

/// How long [`Store::swap`] waits for requests to let go of the snapshot it
/// replaced.
const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// Drops `old` here once no one else holds it, waiting up to `wait`. Nothing
/// can take a new reference: it is out of the store.
fn retire(old: Arc<Loaded>, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
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

    /// Validates and builds `staged` and puts it in service: the one way a
    /// snapshot enters the store. A document the build refuses changes
    /// nothing. Runs for CPU-seconds on a large environment, so async
    /// callers run it on a blocking thread.
    pub fn install(
        &self,
        staged: Staged,
        provenance: impl Into<Provenance>,
    ) -> Result<Counts, BuildError> {
        let Provenance {
            source,
            content_hash,
            fresh_at,
        } = provenance.into();
        let started = Instant::now();
        let content_hash = content_hash.unwrap_or_else(|| staged.content_hash());
        let snapshot = Snapshot::from_staged(staged)?;
        let counts = snapshot.counts().clone();
        let kind = source.kind();
        self.swap(Loaded {
            snapshot,
            meta: SnapshotMeta {
                source,
                content_hash,
                loaded_at: SystemTime::now(),
            },
        });
        if let Some(at) = fresh_at {
            self.mark_fresh_at(at);
        }
        info!(
            source = kind,
            users = counts.users,
            tenants = counts.tenants,
            tenant_role_assignments = counts.tenant_role_assignments,
            instance_role_assignments = counts.instance_role_assignments,
            resource_instances = counts.resource_instances,
            relationship_tuples = counts.relationship_tuples,
            dropped_facts = counts.dropped_facts,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        if counts.dropped_facts > 0 {
            warn!(
                source = kind,
                dropped = counts.dropped_facts,
                "facts referring to unknown schema were dropped"
            );
        }
        Ok(counts)
    }

    /// Swaps `next` in, then frees the snapshot it replaced.
    ///
    /// A request that is deciding during the swap still holds the old
    /// snapshot, and whoever lets go of it last frees it: a million-assignment
    /// environment takes milliseconds to free, which must not land on a
    /// request. So the caller (a blocking thread that has just built `next`)
    /// waits for those requests, which hold it for one decision, and frees
    /// it itself. A holder that keeps it past two seconds frees it
    /// instead.
    fn swap(&self, next: Loaded) {
        let old = self.current.swap(Some(Arc::new(next)));
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.mark_fresh();
        if let Some(old) = old {
            retire(old, RETIRE_WAIT);
        }
    }

    /// Records that the control plane confirmed the serving snapshot is current.
    pub fn mark_fresh(&self) {
        self.confirmed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Records when the serving snapshot was last known current.
    fn mark_fresh_at(&self, at: SystemTime) {
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
        store.swap(loaded());
        assert!(store.freshness_age() < Duration::from_secs(5));
        assert_eq!(store.swaps(), 1);
        store.mark_fresh_at(SystemTime::now() - Duration::from_secs(3600));
        assert!(store.freshness_age() >= Duration::from_secs(3599));
        store.mark_fresh();
        assert!(store.freshness_age() < Duration::from_secs(5));
    }

    fn loaded() -> Loaded {
        Loaded {
            snapshot: Snapshot::empty(),
            meta: SnapshotMeta {
                source: Source::Embedded,
                content_hash: String::new(),
                loaded_at: SystemTime::now(),
            },
        }
    }

    #[test]
    fn a_swap_frees_the_old_snapshot_itself_once_readers_let_go() {
        let store = Arc::new(Store::new());
        store.swap(loaded());
        let old = Arc::downgrade(store.load().as_ref().expect("loaded"));
        // A request deciding against the old snapshot while the swap runs.
        let reader = store.current();
        let swapper = {
            let store = store.clone();
            std::thread::spawn(move || store.swap(loaded()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!swapper.is_finished(), "the swap waits for the reader");
        assert!(old.upgrade().is_some());
        drop(reader);
        swapper.join().expect("swap");
        assert!(old.upgrade().is_none(), "freed by the swap, not the reader");
        assert_eq!(store.swaps(), 2);
    }

    #[test]
    fn a_holder_past_the_wait_frees_it_instead() {
        let kept = Arc::new(loaded());
        let started = Instant::now();
        retire(kept.clone(), Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(Arc::strong_count(&kept), 1, "the holder has the last one");
    }
}
