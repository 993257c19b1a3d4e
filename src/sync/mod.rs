//! Background sync from the Permit control plane through its public v2 API
//! (docs/contract.md, List endpoints and Paging): resolve the API key's
//! scope once, then read the whole environment page by page, build a
//! snapshot off to the side and swap it in, write the offline backup, and
//! repeat every interval or on demand.
//!
//! A sync is all-or-nothing: the document is assembled in memory and only a
//! complete, validated one reaches the store, so a failure at any point leaves
//! the last good snapshot serving. Failures are retried with jittered
//! exponential back-off forever; only a key that can never work (401, or a
//! project/organization key) ends the task, because no retry can fix it.
//!
//! Layout: `client` (one HTTP request, its budget and its retries), `limiter`
//! (per-class quotas and `Retry-After` gates), `pages` (the three list
//! shapes), `backup` (the offline file), `state` (what `/health` shows),
//! `metrics` (Prometheus series).

mod backup;
pub mod bundle;
mod calls;
mod client;
mod hub;
mod limiter;
mod metrics;
mod pages;
mod state;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use crate::config::ApiKey;
use crate::snapshot::Staged;
use crate::store::{BaseFrame, Provenance, Source, Store};

pub use backup::{
    decode_backup, frame, read_backup, read_journal, remove_stale_temps, replace_private,
    seal_staged, write_backup, write_backup_at, write_backup_bytes, write_journal, Backup,
    BackupError, BackupKey, Seal, BACKUP_FILE, JOURNAL_FILE,
};
pub use calls::{excerpt, Call, CallLog};
pub use client::{parse_retry_after, request_id, KeyKind, RequestError};
pub use hub::Hub;
pub use limiter::{Class, Limiter};
pub use metrics::SyncMetrics;
pub use state::{SyncState, SyncStatus};
pub use upstream::{FollowConfig, Follower, Restored, Target};

use client::Client;

/// Everything the sync task needs, resolved and validated by the caller
/// (the config module fills it from `PDP_*`).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Base URL, without a trailing `/v2`.
    pub control_plane: String,
    /// The environment API key, sent as `Authorization: Bearer`.
    pub api_key: ApiKey,
    /// Time between the end of one successful sync and the start of the
    /// next, before jitter (±10 %).
    pub interval: Duration,
    /// One HTTP request, connect to last body byte.
    pub request_timeout: Duration,
    /// One whole sync; past it the sync is abandoned and retried later.
    pub sync_deadline: Duration,
    /// Items asked for per page (the API's maximum is 100).
    pub per_page: u32,
    /// Requests allowed per `limit_window`, by class; 0 = unlimited.
    pub overall_per_min: u32,
    pub facts_per_min: u32,
    pub schema_per_min: u32,
    /// The window the three limits above apply to: one minute, as the
    /// control plane publishes them. Tests shorten it.
    pub limit_window: Duration,
    /// First retry delay after a failed request or sync; doubles per
    /// consecutive failure up to `backoff_max`, with full jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The least time between a successful sync and one that `POST /sync`
    /// asks for, so a caller cannot make the PDP re-list the environment
    /// back to back. After a failure a request waits out the back-off.
    pub min_trigger_gap: Duration,
    /// The most body bytes one sync reads, all pages together; past it the
    /// sync fails as malformed (each page is capped at `MAX_PAGE_BYTES`).
    pub max_sync_bytes: u64,
    /// Where the offline backup lives; `None` disables it.
    pub backup_dir: Option<PathBuf>,
    /// Keep each document sealed in memory, for followers (`PDP_HUB`).
    pub hub: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            control_plane: "https://api.permit.io".to_owned(),
            api_key: ApiKey::new(""),
            interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            sync_deadline: Duration::from_secs(30 * 60),
            per_page: 100,
            // Half of the published 5,000 / 3,000 / 1,000 per minute, so the
            // application's own API calls on the same key keep headroom.
            overall_per_min: 2_500,
            facts_per_min: 1_500,
            schema_per_min: 500,
            limit_window: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            min_trigger_gap: Duration::from_secs(5),
            max_sync_bytes: 4 << 30,
            backup_dir: None,
            hub: false,
        }
    }
}

/// A key the control plane will never accept for a PDP. The process should
/// exit 64: retrying cannot help and serving stale data forever would hide it.
#[derive(Debug, thiserror::Error)]
pub enum FatalKeyError {
    #[error(
        "PDP_API_KEY is empty: a PDP needs an environment API key to sync from the control plane"
    )]
    MissingKey,
    #[error("invalid API key: the control plane at {control_plane} answered {status} to GET /v2/api-key/scope")]
    InvalidKey { control_plane: String, status: u16 },
    #[error("PDP_API_KEY is {} key, but a PDP needs an environment key (one scoped to a project and an environment); copy the environment's API key from Permit (Settings → API Keys)", .got.with_article())]
    WrongKeyKind { got: KeyKind },
}

/// Why `pdp export` could not read the environment.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Key(#[from] FatalKeyError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(
        "the control plane did not give the whole environment within {0:?} (PDP_SYNC_DEADLINE)"
    )]
    Deadline(Duration),
}

/// Why one sync failed. The previous snapshot keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Retries of one request ran into the sync deadline.
    #[error("{list}: gave up at the sync deadline after retrying: {last}")]
    Exhausted {
        list: &'static str,
        last: RequestError,
    },
    #[error("{list}: the control plane refused the request: {error}")]
    Rejected {
        list: &'static str,
        error: RequestError,
    },
    #[error("{list} changed while it was being read ({detail}); will read it again")]
    Inconsistent { list: &'static str, detail: String },
    #[error("{list}: the cursor expired twice in one sync")]
    CursorExpired { list: &'static str },
    #[error("sync did not finish within the deadline of {after:?}{}", last.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Deadline {
        after: Duration,
        /// The last failed request, the likely reason it took so long.
        last: Option<RequestError>,
    },
    #[error("the control plane's data was refused: {0}")]
    Build(String),
    #[error("snapshot build task failed: {0}")]
    Internal(String),
    /// A follower's upstream did not answer with a bundle.
    #[error("upstream: {0}")]
    Upstream(String),
    /// A follower refused what its upstream sent.
    #[error("upstream bundle refused: {0}")]
    Refused(String),
}

impl SyncError {
    /// The `cause` label of `pdp_sync_failures_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            SyncError::Exhausted { last, .. } => last.cause(),
            SyncError::Rejected { error, .. } => match error {
                RequestError::Status {
                    status: 401 | 403, ..
                } => "unauthorized",
                RequestError::TooLarge { .. } => "malformed",
                _ => "rejected",
            },
            SyncError::Inconsistent { .. } => "inconsistent",
            SyncError::CursorExpired { .. } => "cursor_expired",
            SyncError::Deadline { last: Some(e), .. } => e.cause(),
            SyncError::Deadline { last: None, .. } => "deadline",
            SyncError::Build(_) => "invalid_data",
            SyncError::Internal(_) => "internal",
            SyncError::Upstream(_) => "upstream",
            SyncError::Refused(_) => "bundle_refused",
        }
    }
}

/// What a successful sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A new snapshot is serving.
    Swapped,
    /// The environment's content hash equals the serving snapshot's.
    Unchanged,
}

/// The background sync task. Construct with [`Syncer::new`], then
/// `tokio::spawn(syncer.run(store, trigger, shutdown))`.
pub struct Syncer {
    config: SyncConfig,
    client: Client,
    state: Arc<SyncState>,
    metrics: Arc<SyncMetrics>,
    /// Hash of the document last written to the backup, so an unchanged
    /// environment is not rewritten every interval.
    backed_up: Option<String>,
}

impl Syncer {
    /// Fails only if the HTTP client cannot be built (TLS backend).
    pub fn new(
        config: SyncConfig,
        state: Arc<SyncState>,
        metrics: Arc<SyncMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let client = Client::new(&config, state.clone(), metrics.clone())?;
        Ok(Self {
            config,
            client,
            state,
            metrics,
            backed_up: None,
        })
    }

    /// The control-plane budget the sync spends; the facts proxy's
    /// requests are charged to it too.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.client.limiter()
    }

    /// Resolve the key, then sync until `shutdown` turns true. Returns an
    /// error only for a key that can never work; everything else is
    /// retried, logged and counted.
    pub async fn run(
        mut self,
        store: Arc<Store>,
        trigger: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), FatalKeyError> {
        if self.config.api_key.expose().is_empty() {
            return Err(FatalKeyError::MissingKey);
        }
        let scope = tokio::select! {
            scope = self.resolve_scope() => scope?,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        self.state
            .set_scope(&scope.project_id, &scope.environment_id);
        tracing::info!(
            organization = %scope.organization_id,
            project = %scope.project_id,
            environment = %scope.environment_id,
            "API key is an environment key; syncing"
        );
        loop {
            // Switched off: no sync starts until it is on again.
            if !self.state.calls.connected() {
                self.state.set_phase("disconnected");
                tracing::info!("control-plane connectivity is off; serving the last snapshot");
                tokio::select! {
                    () = self.state.calls.until_connected() => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
                tracing::info!("control-plane connectivity is on again; syncing");
            }
            let outcome = tokio::select! {
                outcome = self.sync_once(&scope, &store) => outcome,
                _ = stopped(&mut shutdown) => return Ok(()),
            };
            let (wait, trigger_gap) = match outcome {
                Ok(_) => (
                    jittered(self.config.interval, 0.1),
                    self.config.min_trigger_gap,
                ),
                Err(_) => {
                    let wait = backoff(
                        self.config.backoff_min,
                        self.config.backoff_max,
                        self.state.consecutive_failures(),
                    );
                    (wait, wait)
                }
            };
            // A request that comes sooner than the gap is kept (Notify holds
            // it) and honoured when the gap is over.
            let requested = async {
                tokio::time::sleep(trigger_gap.min(wait)).await;
                trigger.notified().await;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = requested => tracing::info!("sync requested"),
                _ = stopped(&mut shutdown) => return Ok(()),
            }
        }
    }

    /// One read of the whole environment, for `pdp export`: the document
    /// and the environment's id. Bounded by the sync deadline, key
    /// resolution included.
    pub async fn fetch_document(&self) -> Result<(Staged, String), ExportError> {
        let after = self.config.sync_deadline;
        let fetch = async {
            let scope = self.resolve_scope().await?;
            let deadline = Instant::now() + after;
            let staged =
                pages::fetch_staged(&self.client, &scope, self.config.per_page, deadline).await?;
            Ok::<_, ExportError>((staged, scope.environment_id))
        };
        tokio::time::timeout(after, fetch)
            .await
            .map_err(|_| ExportError::Deadline(after))?
    }

    /// `GET /v2/api-key/scope` until it answers: network errors and 5xx are
    /// retried with back-off; 401 and non-environment keys are fatal.
    async fn resolve_scope(&self) -> Result<client::Scope, FatalKeyError> {
        let mut failures = 0u32;
        loop {
            self.state.set_phase("resolving_key_scope");
            match self.client.scope().await {
                Ok(scope) => {
                    return match scope.kind() {
                        KeyKind::Environment => Ok(scope),
                        got => Err(FatalKeyError::WrongKeyKind { got }),
                    }
                }
                // Only a 401 says the key is bad (docs/contract.md, Key
                // scope); a 403 may come from a proxy in front of the control plane, and is
                // retried like an outage so a PDP with a backup keeps
                // serving.
                Err(RequestError::Status {
                    status: status @ 401,
                    ..
                }) => {
                    return Err(FatalKeyError::InvalidKey {
                        control_plane: self.config.control_plane.clone(),
                        status,
                    })
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(self.config.backoff_min, self.config.backoff_max, failures);
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot resolve the API key's scope");
                    self.state.scope_failed(&e.to_string());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One full sync, recorded in state and metrics.
    async fn sync_once(
        &mut self,
        scope: &client::Scope,
        store: &Arc<Store>,
    ) -> Result<SyncOutcome, SyncError> {
        let started = Instant::now();
        self.state.attempt_started();
        self.metrics.attempts.inc();
        self.metrics.last_attempt.set(unix_secs(SystemTime::now()));
        let requests_before = self.client.requests_sent();
        self.client.take_last_failure();
        self.client.begin_sync();
        let result = self.fetch_and_swap(scope, store).await;
        let requests = self.client.requests_sent() - requests_before;
        let took = started.elapsed();
        self.metrics.duration.observe(took.as_secs_f64());
        match &result {
            Ok(outcome) => {
                tracing::info!(?outcome, requests, took = ?took, "sync finished");
                self.state.succeeded(*outcome, requests, took);
                self.metrics.last_success.set(unix_secs(SystemTime::now()));
                if *outcome == SyncOutcome::Swapped {
                    self.metrics.swaps.inc();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, cause = e.cause(), requests, "sync failed; the previous snapshot keeps serving");
                self.state.failed(e, requests, took);
                self.metrics.failures.with_label_values(&[e.cause()]).inc();
            }
        }
        result
    }

    async fn fetch_and_swap(
        &mut self,
        scope: &client::Scope,
        store: &Arc<Store>,
    ) -> Result<SyncOutcome, SyncError> {
        self.state.set_phase("fetching");
        // The deadline bounds the network part. Building and swapping are
        // finite CPU work, and cutting them off would only leave a swap
        // racing a failure report.
        let after = self.config.sync_deadline;
        let deadline = Instant::now() + after;
        // Writes applied through the facts proxy by now were acknowledged
        // before any list below is read, so what the lists say includes
        // them; later ones are applied again over what they say.
        let writes_before = store.write_seq();
        let fetch = pages::fetch_staged(&self.client, scope, self.config.per_page, deadline);
        let staged = match tokio::time::timeout(after, fetch).await {
            Ok(staged) => staged?,
            Err(_) => {
                return Err(SyncError::Deadline {
                    after,
                    last: self.client.take_last_failure(),
                })
            }
        };
        self.state.set_phase("building");
        let store = store.clone();
        let backup_dir = self.config.backup_dir.clone();
        let seal = Seal {
            key: BackupKey::derive(&self.config.api_key),
            environment: scope.environment_id.clone(),
        };
        let backed_up = self.backed_up.clone();
        let hub = self.config.hub;
        // Hashing, building and writing a million-assignment environment
        // takes CPU-seconds; keep it off the runtime's worker threads.
        let (outcome, hash, backup_result, confirmed) = tokio::task::spawn_blocking(move || {
            let hash = staged.content_hash();
            // The backup is written before the build, which consumes the
            // staged document; a document the build refuses is not kept,
            // because the backup would then be refused at the next start.
            let pending = match &backup_dir {
                Some(dir) if backed_up.as_deref() != Some(hash.as_str()) => {
                    Some(backup::prepare(dir, &staged, &seal))
                }
                _ => None,
            };
            // Same data from the control plane: nothing to do. Same data
            // restored from a backup or file is rebuilt once anyway, so the
            // source shown by /health says it is now confirmed current.
            let unchanged = store.load().is_some_and(|l| {
                l.meta.content_hash == hash && l.meta.source == Source::ControlPlane
            });
            // A backup already holding this document is confirmed instead
            // of rewritten, so a restart in an outage counts it fresh as of
            // this sync (PDP_MAX_STALENESS), not as of the one that wrote it.
            let confirmed = match (&backup_dir, &pending) {
                (Some(dir), None) if backed_up.as_deref() == Some(hash.as_str()) => {
                    Some(backup::confirm(dir, &hash, SystemTime::now()))
                }
                _ => None,
            };
            let outcome = if unchanged {
                store.mark_fresh();
                store.settle(writes_before);
                SyncOutcome::Unchanged
            } else {
                let base = if hub {
                    let bytes =
                        backup::seal_staged(&staged, &seal, SystemTime::now()).map_err(|e| {
                            SyncError::Internal(format!(
                                "cannot seal the document for followers: {e}"
                            ))
                        })?;
                    Some(Arc::new(BaseFrame {
                        bytes: bytes.into(),
                        environment: seal.environment.clone(),
                    }))
                } else {
                    None
                };
                let provenance = Provenance {
                    source: Source::ControlPlane,
                    content_hash: Some(hash.clone()),
                    fresh_at: None,
                    writes_before: Some(writes_before),
                    writes: Vec::new(),
                    base,
                };
                // Dropping the pending backup removes its file.
                if let Err(e) = store.install(staged, provenance) {
                    return Err(SyncError::Build(e.to_string()));
                }
                SyncOutcome::Swapped
            };
            let backup_result = pending.map(|p| p.and_then(backup::Pending::commit));
            Ok::<_, SyncError>((outcome, hash, backup_result, confirmed))
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))??;
        match backup_result {
            Some(Ok(path)) => {
                tracing::debug!(path = %path.display(), "backup written");
                self.backed_up = Some(hash);
            }
            // The sync itself succeeded and is serving; a backup that could
            // not be written only matters at the next cold start.
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot write the offline backup");
                self.metrics.backup_failures.inc();
            }
            None => {}
        }
        if let Some(Err(e)) = confirmed {
            tracing::warn!(error = %e, "cannot record that the backup is still current");
            self.metrics.backup_failures.inc();
        }
        Ok(outcome)
    }
}

/// Runs `syncer` until shutdown, and restarts it if it panics: a sync task
/// that died would leave the process serving an ever older snapshot with a
/// live `/livez`. A restart is counted as a failure with cause `panic`.
pub async fn supervise(
    syncer: Syncer,
    store: Arc<Store>,
    trigger: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FatalKeyError> {
    let (config, state, metrics) = (
        syncer.config.clone(),
        syncer.state.clone(),
        syncer.metrics.clone(),
    );
    let mut next = Some(syncer);
    let mut restarts = 0u32;
    loop {
        let syncer = match next.take() {
            Some(s) => s,
            None => match Syncer::new(config.clone(), state.clone(), metrics.clone()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot rebuild the sync client");
                    restarts += 1;
                    if wait_or_stop(
                        backoff(config.backoff_min, config.backoff_max, restarts),
                        &mut shutdown,
                    )
                    .await
                    {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        let task = tokio::spawn(syncer.run(store.clone(), trigger.clone(), shutdown.clone()));
        match task.await {
            Ok(result) => return result,
            Err(e) if e.is_panic() => {
                restarts += 1;
                metrics.failures.with_label_values(&["panic"]).inc();
                let wait = backoff(config.backoff_min, config.backoff_max, restarts);
                tracing::error!(error = %e, restart_in = ?wait, "the sync task panicked; restarting it, the last snapshot keeps serving");
                if wait_or_stop(wait, &mut shutdown).await {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Sleeps `wait`; true if shutdown came first.
async fn wait_or_stop(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stopped(shutdown) => true,
    }
}

/// Load the offline backup from `dir` into `store` (source `Backup`). Called
/// at start, before the first sync, so the PDP is ready without the control
/// plane. A missing backup is `Ok(false)`; a corrupt one, or one not
/// written with this key, is an error the caller logs and shows in the
/// health detail, and otherwise ignores.
pub fn restore_backup(
    store: &Store,
    dir: &std::path::Path,
    key: &BackupKey,
) -> Result<bool, BackupError> {
    restore(store, dir, key, false).map(|r| r.is_some())
}

/// [`restore_backup`], keeping the backup's bytes with the snapshot when
/// `hub` (they are what a full bundle carries); says what was restored.
pub fn restore(
    store: &Store,
    dir: &std::path::Path,
    key: &BackupKey,
    hub: bool,
) -> Result<Option<Restored>, BackupError> {
    let path = dir.join(BACKUP_FILE);
    let backup = match read_backup(dir, key) {
        Ok(b) => b,
        Err(BackupError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let base = if hub {
        let bytes = std::fs::read(&path).map_err(|source| BackupError::Io {
            path: path.clone(),
            source,
        })?;
        Some(Arc::new(BaseFrame {
            bytes: bytes.into(),
            environment: backup.environment.clone(),
        }))
    } else {
        None
    };
    // Fresh as of the last sync that wrote or confirmed it, not as of now:
    // under PDP_MAX_STALENESS an old backup must not pass for a current one.
    // A time in the future (a wrong clock, or a planted file) counts as now,
    // not as fresh for as long as it lies ahead.
    let fresh_at = backup::confirmed_at(dir, &backup.content_hash)
        .map_or(backup.synced_at, |c| c.max(backup.synced_at))
        .min(SystemTime::now());
    let provenance = Provenance {
        source: Source::Backup(path),
        content_hash: Some(backup.content_hash),
        fresh_at: Some(fresh_at),
        writes_before: None,
        writes: Vec::new(),
        base,
    };
    store
        .install(backup.staged, provenance)
        .map_err(|e| BackupError::Invalid(e.to_string()))?;
    // The writes served through the facts proxy since that sync: applied
    // again, they are served until the first sync lets them go.
    match backup::read_journal(dir, key, &backup.environment) {
        Ok(writes) if writes.is_empty() => {}
        Ok(writes) => {
            let n = writes.len();
            let applied = store.apply(writes);
            tracing::info!(
                writes = n,
                applied = applied.applied,
                "applied the writes served since the backup"
            );
        }
        Err(e) => tracing::warn!(error = %e, "the journal of served writes is ignored"),
    }
    Ok(Some(Restored {
        environment: backup.environment,
        synced_at: backup.synced_at,
    }))
}

/// Resolves when the shutdown flag is (or becomes) true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An Err means the sender was dropped: treat as shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `base` ± `fraction`, uniformly, so a fleet started together spreads out.
fn jittered(base: Duration, fraction: f64) -> Duration {
    base.mul_f64(rand::random_range((1.0 - fraction)..=(1.0 + fraction)))
}

/// Full-jitter exponential back-off for the `failures`-th consecutive
/// failure (1-based): uniform in [cap/2, cap], cap = min * 2^(failures-1).
pub(crate) fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let cap = min.saturating_mul(1u32 << exp).min(max).max(min);
    cap.mul_f64(rand::random_range(0.5..=1.0))
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for failures in 1..40 {
            let d = backoff(min, max, failures);
            let cap = (min * 2u32.pow(failures.min(20) - 1)).min(max);
            assert!(d >= cap / 2 && d <= cap, "{failures}: {d:?} vs cap {cap:?}");
        }
    }

    #[test]
    fn interval_jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10), 0.1);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }

    #[test]
    fn wrong_key_message_names_both_kinds() {
        let msg = FatalKeyError::WrongKeyKind {
            got: KeyKind::Project,
        }
        .to_string();
        assert!(msg.contains("a project key"), "{msg}");
        assert!(msg.contains("environment key"), "{msg}");
        let msg = FatalKeyError::WrongKeyKind {
            got: KeyKind::Organization,
        }
        .to_string();
        assert!(msg.contains("an organization key"), "{msg}");
    }
}
