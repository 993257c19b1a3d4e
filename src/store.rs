//! The current snapshot, swapped whole and read without locks.
//!
//! Readers call [`Store::current`] once per request and decide against that
//! one value, so an answer never mixes two snapshots. Every snapshot enters
//! through [`Store::install`], whatever its source (the embedded example, a
//! data file, the backup, a control-plane sync): it validates and builds the
//! staged document off to the side, logs what it holds and what it dropped,
//! and swaps it in. Nothing here waits: `arc-swap` makes the load a few
//! atomic operations.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::snapshot::{BuildError, Counts, Snapshot, Staged, Unapplied, Write};

/// Where a snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Source {
    File(PathBuf),
    Embedded,
    Backup(PathBuf),
    ControlPlane,
    /// A hub PDP's `/v1/snapshot`, or a bundle file served over HTTP.
    Upstream(String),
}

impl Source {
    /// The source as one word, for logs.
    fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Embedded => "embedded example",
            Source::Backup(_) => "backup",
            Source::ControlPlane => "control plane",
            Source::Upstream(_) => "upstream",
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
    /// For a sync: [`Store::write_seq`] when it started. The writes applied
    /// by then are in what it read, and are let go; later ones are applied
    /// again over it. `None` keeps every pending write.
    pub writes_before: Option<u64>,
    /// Writes served over the document from the start, before any still
    /// pending here: those a hub had applied over the base it sent.
    pub writes: Vec<Write>,
    /// The document as a hub hands it on ([`Store::since`]); kept only by
    /// a PDP that serves as one.
    pub base: Option<Arc<BaseFrame>>,
}

impl From<Source> for Provenance {
    fn from(source: Source) -> Self {
        Provenance {
            source,
            content_hash: None,
            fresh_at: None,
            writes_before: None,
            writes: Vec::new(),
            base: None,
        }
    }
}

/// A snapshot's document in the backup's sealed form, as a hub sends it in
/// full bundles (docs/fleet.md).
#[derive(Debug)]
pub struct BaseFrame {
    /// The backup file's bytes: header, MAC and the staged document.
    pub bytes: Bytes,
    /// The environment it is sealed for.
    pub environment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotMeta {
    pub source: Source,
    pub content_hash: String,
    #[serde(skip)]
    pub loaded_at: SystemTime,
    /// The sequence number of the last write applied over the full
    /// snapshot; 0 when none is.
    pub last_write: u64,
    /// Counts the changes of the served content other than a write
    /// applied on top: a new document, or writes let go. With
    /// `last_write`, it names a version a follower can be brought up to
    /// date from by the writes after it.
    pub generation: u64,
}

pub struct Loaded {
    pub snapshot: Snapshot,
    pub meta: SnapshotMeta,
    pub base: Option<Arc<BaseFrame>>,
}

/// How the served content differs from a version of it ([`Store::since`]).
pub enum Since {
    /// Nothing is served yet.
    Nothing,
    /// The version is the current one.
    Current(Arc<Loaded>),
    /// The writes after the version, in order, lead to the current one.
    Writes(Arc<Loaded>, Vec<Write>),
    /// The version is of another generation: the current document and the
    /// writes served over it.
    Full(Arc<Loaded>, Vec<Write>),
}

pub struct Store {
    current: ArcSwapOption<Loaded>,
    /// Unix milliseconds when the serving snapshot was last known current:
    /// swapped in, or confirmed unchanged by a sync.
    confirmed_ms: AtomicU64,
    swaps: AtomicU64,
    /// Writes applied over the full snapshot and not yet let go by a sync.
    /// Held while a new snapshot is put in service, so a write and a swap
    /// never interleave; never held by a reader.
    pending: Mutex<Pending>,
    /// Woken when the pending writes change (the journal follows them).
    pub writes_changed: Notify,
    /// Bumped on every change of the served snapshot: long polls wait on it.
    changed: watch::Sender<u64>,
    /// Bumped whenever the snapshot is confirmed current.
    confirmed: watch::Sender<u64>,
    generations: AtomicU64,
    /// Random per process: a version another process named is not one
    /// this one can lead a follower on from.
    instance: String,
    /// A follower's: the upstream version it has reached.
    followed: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct Pending {
    /// `(sequence number, write)`, in the order applied.
    writes: Vec<(u64, Write)>,
    /// The last sequence number handed out.
    seq: u64,
    /// How the last few generations lead to the current one, oldest first
    /// (kept by a hub only).
    links: VecDeque<Link>,
}

/// How the content served at the end of one generation becomes the next
/// generation's document: what a hub sends a follower still at the old one
/// (docs/fleet.md).
struct Link {
    from_generation: u64,
    /// The last write of the old generation that `diff` starts from;
    /// a follower past it gets the full snapshot.
    from_last: u64,
    /// Whether no write came after `from_last` in the old generation, so
    /// a follower can be led on through this link from the one before.
    complete: bool,
    /// The old generation's writes up to `from_last`.
    before: Vec<(u64, Write)>,
    /// From the content at `from_last` to the new document.
    diff: Vec<Write>,
    to_generation: u64,
}

/// Generations a hub remembers the way from.
const LINKS: usize = 4;
/// The most writes a delta across generations carries; more, and the
/// full snapshot is sent.
const MAX_BRIDGE: usize = 250_000;

impl Pending {
    /// The writes that lead from `(generation, last_write)` to the current
    /// generation `current` and its writes, if the links still reach it.
    fn bridge(&self, generation: u64, last_write: u64, current: u64) -> Option<Vec<Write>> {
        let start = self
            .links
            .iter()
            .position(|l| l.from_generation == generation && last_write <= l.from_last)?;
        let mut out = Vec::new();
        let mut at = generation;
        for (k, link) in self.links.iter().skip(start).enumerate() {
            if link.from_generation != at || (k > 0 && !link.complete) {
                return None;
            }
            let after = if k == 0 { last_write } else { 0 };
            out.extend(
                link.before
                    .iter()
                    .filter(|&&(seq, _)| seq > after)
                    .map(|(_, w)| w.clone()),
            );
            out.extend(link.diff.iter().cloned());
            if out.len() > MAX_BRIDGE {
                return None;
            }
            at = link.to_generation;
            if at == current {
                out.extend(self.writes.iter().map(|(_, w)| w.clone()));
                return (out.len() <= MAX_BRIDGE).then_some(out);
            }
        }
        None
    }
}

/// The difference [`Store::swap`] found between the content served and
/// the document it is replaced with.
struct Found {
    generation: u64,
    last_write: u64,
    diff: Vec<Write>,
}

/// What [`Store::apply`] did with a batch of confirmed writes.
#[derive(Debug, Default)]
pub struct Applied {
    /// Writes now served.
    pub applied: usize,
    /// Writes naming schema this snapshot lacks, by index in the batch;
    /// the next full sync brings them.
    pub refused: Vec<(usize, Unapplied)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `(instance, generation, last_write)` of a version.
fn split_version(version: &str) -> Option<(&str, u64, u64)> {
    let mut parts = version.split('.');
    let (instance, generation, last) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((instance, generation.parse().ok()?, last.parse().ok()?))
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

impl Default for Store {
    fn default() -> Self {
        Store {
            current: ArcSwapOption::default(),
            confirmed_ms: AtomicU64::default(),
            swaps: AtomicU64::default(),
            pending: Mutex::default(),
            writes_changed: Notify::new(),
            changed: watch::Sender::new(0),
            confirmed: watch::Sender::new(0),
            generations: AtomicU64::default(),
            instance: format!("{:016x}", rand::random::<u64>()),
            followed: watch::Sender::new(None),
        }
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes whenever the served snapshot does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes whenever the served snapshot is confirmed current.
    pub fn confirmations(&self) -> watch::Receiver<u64> {
        self.confirmed.subscribe()
    }

    /// The version `meta` is, as hubs name it to followers (`ETag`):
    /// `"{instance}.{generation}.{last_write}"`.
    pub fn version(&self, meta: &SnapshotMeta) -> String {
        format!("{}.{}.{}", self.instance, meta.generation, meta.last_write)
    }

    /// The version served now.
    pub fn current_version(&self) -> Option<String> {
        self.current
            .load()
            .as_deref()
            .map(|l| self.version(&l.meta))
    }

    /// `(generation, last_write)` of a version this process named.
    pub fn parse_version(&self, version: &str) -> Option<(u64, u64)> {
        let (instance, generation, last) = split_version(version)?;
        (instance == self.instance).then_some((generation, last))
    }

    /// A follower has reached `version` of its upstream.
    pub fn followed(&self, version: &str) {
        self.followed.send_replace(Some(version.to_owned()));
    }

    /// Waits up to `timeout` for this follower to reach `version` of its
    /// upstream, or one after it; whether it did.
    pub async fn follow_to(&self, version: &str, timeout: Duration) -> bool {
        let Some((instance, generation, last)) = split_version(version) else {
            return false;
        };
        let reached = |v: &Option<String>| {
            v.as_deref()
                .and_then(split_version)
                .is_some_and(|(i, g, l)| i == instance && (g, l) >= (generation, last))
        };
        let mut rx = self.followed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(reached))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What was served at `(generation, last_write)` lacks of what is
    /// served now, read under the lock writes and swaps take, so the
    /// snapshot and the writes agree.
    pub fn since(&self, generation: u64, last_write: u64) -> Since {
        let pending = self.pending();
        let Some(current) = self.current.load_full() else {
            return Since::Nothing;
        };
        let meta = &current.meta;
        let all = || pending.writes.iter().map(|(_, w)| w.clone()).collect();
        if meta.generation != generation || last_write > meta.last_write {
            if let Some(writes) = pending.bridge(generation, last_write, meta.generation) {
                return Since::Writes(current, writes);
            }
            return Since::Full(current.clone(), all());
        }
        if last_write == meta.last_write {
            return Since::Current(current);
        }
        // Every write after `last_write` is still pending: writes are let go
        // only with a new generation.
        let after: Vec<Write> = pending
            .writes
            .iter()
            .filter(|&&(seq, _)| seq > last_write)
            .map(|(_, w)| w.clone())
            .collect();
        Since::Writes(current, after)
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
            writes_before,
            writes,
            base,
        } = provenance.into();
        let started = Instant::now();
        let content_hash = content_hash.unwrap_or_else(|| staged.content_hash());
        let snapshot = Snapshot::from_staged(staged)?;
        let counts = snapshot.counts().clone();
        let kind = source.kind();
        let meta = SnapshotMeta {
            source,
            content_hash,
            loaded_at: SystemTime::now(),
            last_write: 0,
            generation: 0,
        };
        self.swap(
            Loaded {
                snapshot,
                meta,
                base,
            },
            writes_before,
            writes,
        );
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

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets go of the writes acknowledged before `writes_before` and puts
    /// `snapshot` in service with `first`, then the rest, applied over it;
    /// returns the snapshot it replaced.
    fn replace(
        &self,
        pending: &mut Pending,
        next: Loaded,
        writes_before: Option<u64>,
        first: Vec<Write>,
        found: Option<Found>,
    ) -> Option<Arc<Loaded>> {
        let Loaded {
            snapshot,
            mut meta,
            base,
        } = next;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        // Found against what is served now (or earlier in its generation:
        // writes may have come while it was worked out).
        let served = self.current.load();
        let link = match (found, served.as_deref()) {
            (Some(f), Some(cur))
                if cur.meta.generation == f.generation && f.last_write <= cur.meta.last_write =>
            {
                Some(Link {
                    from_generation: f.generation,
                    from_last: f.last_write,
                    complete: f.last_write == cur.meta.last_write,
                    before: pending
                        .writes
                        .iter()
                        .filter(|&&(seq, _)| seq <= f.last_write)
                        .cloned()
                        .collect(),
                    diff: f.diff,
                    to_generation: generation,
                })
            }
            _ => None,
        };
        drop(served);
        if let Some(link) = link {
            if pending.links.len() == LINKS {
                pending.links.pop_front();
            }
            pending.links.push_back(link);
        }
        let before = pending.writes.len();
        if let Some(seen) = writes_before {
            pending.writes.retain(|&(seq, _)| seq > seen);
        }
        if !first.is_empty() {
            let rest = std::mem::take(&mut pending.writes);
            for w in first.into_iter().chain(rest.into_iter().map(|(_, w)| w)) {
                pending.seq += 1;
                let seq = pending.seq;
                pending.writes.push((seq, w));
            }
        }
        let (snapshot, refused) = snapshot.with_writes(pending.writes.iter().map(|(_, w)| w));
        for (i, e) in &refused {
            warn!(error = %e, write = ?pending.writes[*i].1, "a pending write no longer applies; the next sync settles it");
        }
        meta.last_write = pending.writes.last().map_or(0, |&(seq, _)| seq);
        meta.generation = generation;
        // The journal holds the writes over the document in service: a new
        // document with any writes before or after needs it rewritten.
        if before > 0 || !pending.writes.is_empty() {
            self.writes_changed.notify_one();
        }
        let old = self.current.swap(Some(Arc::new(Loaded {
            snapshot,
            meta,
            base,
        })));
        self.changed.send_modify(|n| *n += 1);
        old
    }

    /// Serves `writes`, confirmed by the control plane, over the current
    /// snapshot at once: their cost is the rows they touch. They stay
    /// applied over later snapshots until a sync that started after them
    /// is swapped in. Before the first snapshot they are kept, and applied
    /// over it.
    pub fn apply(&self, writes: Vec<Write>) -> Applied {
        let mut pending = self.pending();
        let Some(current) = self.current.load_full() else {
            let applied = writes.len();
            for w in writes {
                pending.seq += 1;
                let seq = pending.seq;
                pending.writes.push((seq, w));
            }
            self.writes_changed.notify_one();
            return Applied {
                applied,
                refused: Vec::new(),
            };
        };
        let (snapshot, refused) = current.snapshot.with_writes(&writes);
        let mut applied = 0;
        for (i, w) in writes.into_iter().enumerate() {
            if refused.iter().any(|&(r, _)| r == i) {
                continue;
            }
            pending.seq += 1;
            let seq = pending.seq;
            pending.writes.push((seq, w));
            applied += 1;
        }
        if applied > 0 {
            let mut meta = current.meta.clone();
            meta.last_write = pending.seq;
            self.current.store(Some(Arc::new(Loaded {
                snapshot,
                meta,
                base: current.base.clone(),
            })));
            self.writes_changed.notify_one();
            self.changed.send_modify(|n| *n += 1);
        }
        Applied { applied, refused }
    }

    /// A sync that found the serving document unchanged: the writes
    /// acknowledged before `writes_before` are in it, and are let go.
    pub fn settle(&self, writes_before: u64) {
        let next = {
            let pending = self.pending();
            if pending
                .writes
                .first()
                .is_none_or(|&(seq, _)| seq > writes_before)
            {
                return;
            }
            let Some(current) = self.current.load_full() else {
                return;
            };
            Loaded {
                snapshot: current.snapshot.without_writes(),
                meta: current.meta.clone(),
                base: current.base.clone(),
            }
        };
        // Writes may come meanwhile: they are after `writes_before`, and
        // stay applied over `next`.
        let found = self.difference(&next);
        let mut pending = self.pending();
        self.replace(&mut pending, next, Some(writes_before), Vec::new(), found);
    }

    /// The sequence number of the last write applied; a sync records it
    /// when it starts ([`Provenance::writes_before`]).
    pub fn write_seq(&self) -> u64 {
        self.pending().seq
    }

    /// How many writes are applied and not yet let go.
    pub fn pending_count(&self) -> usize {
        self.pending().writes.len()
    }

    /// The writes applied and not yet let go, oldest first.
    pub fn pending_writes(&self) -> Vec<Write> {
        self.pending()
            .writes
            .iter()
            .map(|(_, w)| w.clone())
            .collect()
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
    ///
    /// The pending writes not let go by `writes_before` are applied over
    /// `next` first ([`Provenance::writes_before`]).
    ///
    /// A hub works out how what is served now differs from `next`'s
    /// document first, off the lock (it reads both whole), so that its
    /// followers get that difference rather than the whole ([`Store::since`]).
    fn swap(&self, next: Loaded, writes_before: Option<u64>, first: Vec<Write>) {
        let found = self.difference(&next);
        let old = {
            let mut pending = self.pending();
            self.replace(&mut pending, next, writes_before, first, found)
        };
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.mark_fresh();
        if let Some(old) = old {
            retire(old, RETIRE_WAIT);
        }
    }

    /// What turns the content served now into `next`'s document, when both
    /// are kept for followers (a hub) and the difference is small enough
    /// to be worth sending: a sixteenth of the facts, give or take.
    fn difference(&self, next: &Loaded) -> Option<Found> {
        let served = self.current.load_full()?;
        if served.base.is_none() || next.base.is_none() {
            return None;
        }
        let c = next.snapshot.counts();
        let facts = c.users
            + c.tenants
            + c.resource_instances
            + c.tenant_role_assignments
            + c.instance_role_assignments
            + c.relationship_tuples;
        let started = Instant::now();
        let diff = next
            .snapshot
            .changes_since(&served.snapshot, facts / 16 + 1024);
        tracing::debug!(
            writes = diff.as_ref().map(Vec::len),
            took_ms = started.elapsed().as_millis() as u64,
            "difference for followers"
        );
        Some(Found {
            generation: served.meta.generation,
            last_write: served.meta.last_write,
            diff: diff?,
        })
    }

    /// Records that the control plane confirmed the serving snapshot is current.
    pub fn mark_fresh(&self) {
        self.confirmed_ms.store(now_ms(), Ordering::Relaxed);
        self.confirmed.send_modify(|n| *n += 1);
    }

    /// Records when the serving snapshot was last known current.
    pub fn mark_fresh_at(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        self.confirmed_ms.store(ms, Ordering::Relaxed);
        self.confirmed.send_modify(|n| *n += 1);
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
        store.swap(loaded(), None, Vec::new());
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
                last_write: 0,
                generation: 0,
            },
            base: None,
        }
    }

    #[test]
    fn a_swap_frees_the_old_snapshot_itself_once_readers_let_go() {
        let store = Arc::new(Store::new());
        store.swap(loaded(), None, Vec::new());
        let old = Arc::downgrade(store.load().as_ref().expect("loaded"));
        // A request deciding against the old snapshot while the swap runs.
        let reader = store.current();
        let swapper = {
            let store = store.clone();
            std::thread::spawn(move || store.swap(loaded(), None, Vec::new()))
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

    fn staged(users: &[&str]) -> Staged {
        let users: Vec<String> = users
            .iter()
            .map(|u| format!(r#"{{"key": "{u}"}}"#))
            .collect();
        Staged::from_json_str(&format!(
            r#"{{"roles": [{{"key": "viewer", "permissions": []}}], "users": [{}]}}"#,
            users.join(",")
        ))
        .expect("a valid document")
    }

    fn assign(user: &str) -> Write {
        Write::Assign(crate::snapshot::Assignment {
            user: user.into(),
            role: "viewer".into(),
            tenant: "t".into(),
            resource_instance: None,
        })
    }

    fn served(store: &Store, user: &str) -> bool {
        store.load().expect("loaded").snapshot.has_user(user)
    }

    fn synced(seen: u64) -> Provenance {
        Provenance {
            writes_before: Some(seen),
            ..Source::ControlPlane.into()
        }
    }

    #[test]
    fn pending_writes_outlive_syncs_that_started_before_them() {
        let store = Store::new();
        // Before the first snapshot a write is kept, and applied over it.
        assert_eq!(store.apply(vec![assign("early")]).applied, 1);
        store.install(staged(&[]), synced(0)).unwrap();
        assert!(served(&store, "early"));
        assert_eq!(store.load().unwrap().meta.last_write, 1);

        // A sync starts (seq 1 seen); a write comes; the sync swaps in.
        let seen = store.write_seq();
        assert_eq!(store.apply(vec![assign("late")]).applied, 1);
        store.install(staged(&["early"]), synced(seen)).unwrap();
        assert!(
            served(&store, "late"),
            "a write after the sync's start survives it"
        );
        assert_eq!(store.pending_writes(), vec![assign("late")]);

        // A sync that started after it lets it go.
        let seen = store.write_seq();
        store
            .install(staged(&["early", "late"]), synced(seen))
            .unwrap();
        assert!(store.pending_writes().is_empty());
        assert_eq!(store.load().unwrap().snapshot.applied_writes(), 0);
        assert_eq!(store.load().unwrap().meta.last_write, 0);

        // An unchanged document settles the writes before it the same way.
        assert_eq!(store.apply(vec![assign("again")]).applied, 1);
        store.settle(store.write_seq() - 1);
        assert_eq!(store.pending_writes().len(), 1, "not before it");
        store.settle(store.write_seq());
        assert!(store.pending_writes().is_empty());
        assert!(
            !served(&store, "again"),
            "the document is what is served now"
        );
    }

    #[test]
    fn a_hub_leads_followers_across_a_new_document_by_the_difference() {
        let store = Store::new();
        let hub = |seen| Provenance {
            writes_before: Some(seen),
            base: Some(Arc::new(BaseFrame {
                bytes: Bytes::new(),
                environment: "env".into(),
            })),
            ..Source::ControlPlane.into()
        };
        store.install(staged(&["a"]), hub(0)).unwrap();
        let first = store.load().unwrap().meta.generation;
        assert_eq!(store.apply(vec![assign("a")]).applied, 1);
        // A follower that has the document, and one that has the write too.
        let at_start = Snapshot::from_staged(staged(&["a"])).unwrap();
        let (at_write, _) = at_start.with_writes(&[assign("a")]);

        // The next document has another user, and not the write (the
        // control plane has it undone); a write comes after the sync began.
        let seen = store.write_seq();
        assert_eq!(store.apply(vec![assign("c")]).applied, 1);
        store.install(staged(&["a", "b"]), hub(seen)).unwrap();
        let now = store.load().unwrap();
        assert_ne!(now.meta.generation, first);
        for (follower, last_write) in [(&at_start, 0), (&at_write, 1)] {
            let Since::Writes(_, writes) = store.since(first, last_write) else {
                panic!("a delta from write {last_write}");
            };
            let (followed, refused) = follower.with_writes(&writes);
            assert!(refused.is_empty());
            assert_eq!(
                now.snapshot.changes_since(&followed, usize::MAX),
                Some(Vec::new()),
                "from write {last_write}, the follower serves what the hub does"
            );
        }
        // Past what the difference started from: the whole.
        assert!(matches!(store.since(first, 9), Since::Full(..)));

        // Without a document kept for followers, nothing is worked out.
        let plain = Store::new();
        plain.install(staged(&["a"]), synced(0)).unwrap();
        let first = plain.load().unwrap().meta.generation;
        plain.install(staged(&["a", "b"]), synced(0)).unwrap();
        assert!(matches!(plain.since(first, 0), Since::Full(..)));
    }

    #[tokio::test]
    async fn a_follower_has_reached_a_version_and_every_one_before_it() {
        let store = Store::new();
        let wait = Duration::from_millis(20);
        assert!(
            !store.follow_to("i.1.3", wait).await,
            "nothing followed yet"
        );
        store.followed("i.1.5");
        assert!(store.follow_to("i.1.3", wait).await);
        assert!(store.follow_to("i.1.5", wait).await);
        assert!(
            store.follow_to("i.0.9", wait).await,
            "an earlier generation"
        );
        assert!(!store.follow_to("i.1.6", wait).await);
        assert!(!store.follow_to("i.2.0", wait).await);
        assert!(!store.follow_to("j.1.1", wait).await, "another hub process");
        assert!(!store.follow_to("not a version", wait).await);
        let later = store.follow_to("i.2.1", Duration::from_secs(5));
        let (reached, ()) = tokio::join!(later, async { store.followed("i.2.1") });
        assert!(reached, "woken when the follower gets there");
    }
}
