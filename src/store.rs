//! The current snapshot, swapped whole and read without locks.
//!
//! Readers call [`Store::load`] once per request and decide against that one
//! value, so an answer never mixes two snapshots; a writer builds the next
//! snapshot off to the side and [`Store::swap`]s it in. Nothing here waits:
//! `arc-swap` makes the load a few atomic operations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

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
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot, or `None` before the first one is loaded.
    pub fn load(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    pub fn swap(&self, next: Loaded) {
        self.current.store(Some(Arc::new(next)));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}
