//! Follower mode (docs/fleet.md): the snapshot comes from an upstream, a
//! hub PDP's `/v1/snapshot` or a bundle file any HTTP server serves,
//! instead of the control plane. A follower never lists the environment.
//!
//! From a hub it long-polls: `If-None-Match` names the version it serves
//! and `Prefer: wait` lets the hub hold the request until there is a newer
//! one, which comes as the writes since (a delta) or whole. From a file it
//! polls at the sync interval with the file's `ETag`. Every bundle is
//! authenticated with the API key and must be of the environment already
//! served; a full one is installed as a sync's document is (built aside,
//! swapped whole, written as the backup), a delta applied as the facts
//! proxy's writes are. Failures back off with jitter and keep the last
//! good snapshot serving; `/health` says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::backup::{self, BackupKey};
use super::bundle::{self, Bundle, Kind};
use super::{backoff, excerpt, jittered, request_id, stopped, unix_secs, Call, SyncError};
use super::{SyncMetrics, SyncOutcome, SyncState};
use crate::config::ApiKey;
use crate::store::{BaseFrame, Provenance, Source, Store};

/// How long a hub is asked to hold a poll.
pub const LONG_POLL: Duration = Duration::from_secs(30);
/// The least time between two polls of a hub, should it answer at once.
const MIN_GAP: Duration = Duration::from_millis(500);
/// The largest bundle read (a backup's limit, and room for writes).
const MAX_BUNDLE_BYTES: usize = (4 << 30) + (256 << 20);
/// The most of an error answer read: enough to show why.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Writes served over the document past which the next poll asks for the
/// whole again: each costs memory and time on every later swap, and the
/// hub's document has them in by then.
const COMPACT_AFTER: usize = 50_000;

pub struct FollowConfig {
    /// `PDP_UPSTREAM_URL`: a PDP (no path) or a bundle file (a path).
    pub url: String,
    pub api_key: ApiKey,
    /// The most a request may wait for each read (a long poll's answer
    /// comes within [`LONG_POLL`] more).
    pub request_timeout: Duration,
    /// The most one whole request may take, a full bundle's body
    /// included (`PDP_SYNC_DEADLINE`).
    pub deadline: Duration,
    /// Between polls of a bundle file.
    pub interval: Duration,
    pub backup_dir: Option<PathBuf>,
    /// Keep each document sealed in memory, to serve followers in turn.
    pub hub: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// What the upstream URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A PDP: its `/v1/snapshot`, long-polled.
    Hub(String),
    /// A bundle file, polled at the interval.
    File(String),
}

impl Target {
    /// A URL without a path (or with `/` alone) names a PDP.
    pub fn of(url: &str) -> Target {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        match after_scheme.find('/') {
            Some(i) if &after_scheme[i..] != "/" => Target::File(url.to_owned()),
            _ => Target::Hub(format!("{}/v1/snapshot", url.trim_end_matches('/'))),
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Hub(u) | Target::File(u) => u,
        }
    }
}

pub struct Follower {
    config: FollowConfig,
    target: Target,
    http: reqwest::Client,
    key: BackupKey,
    state: Arc<SyncState>,
    metrics: Arc<SyncMetrics>,
    /// The environment served; a bundle of another is refused.
    environment: Option<String>,
    /// The bundle version served, from this upstream.
    version: Option<String>,
    /// A bundle file's `ETag`, as its server sent it.
    etag: Option<String>,
    /// When the document served was synced from the control plane: an
    /// older one is not taken (a replayed bundle would roll it back).
    synced_at: Option<SystemTime>,
    /// The writes the last full bundle carried: those a full bundle taken
    /// again would not let go either.
    full_writes: usize,
}

/// What a restore from the backup at start put in service.
pub struct Restored {
    pub environment: String,
    pub synced_at: SystemTime,
}

impl Follower {
    /// `restored`: the backup restored at start, if one was.
    pub fn new(
        config: FollowConfig,
        state: Arc<SyncState>,
        metrics: Arc<SyncMetrics>,
        restored: Option<Restored>,
    ) -> Result<Follower, reqwest::Error> {
        // A stalled connection is given up after a read timeout, a slow
        // one with a large bundle only at the deadline.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .read_timeout(LONG_POLL + config.request_timeout)
            .timeout(config.deadline)
            .user_agent(concat!("pdp/", env!("CARGO_PKG_VERSION"), " (follower)"))
            .build()?;
        let (environment, synced_at) = match restored {
            Some(r) => (Some(r.environment), Some(r.synced_at)),
            None => (None, None),
        };
        if let Some(env) = &environment {
            state.set_environment(env);
        }
        Ok(Follower {
            target: Target::of(&config.url),
            key: BackupKey::derive(&config.api_key),
            config,
            http,
            state,
            metrics,
            environment,
            version: None,
            etag: None,
            synced_at,
            full_writes: 0,
        })
    }

    /// Follows the upstream until `stop`. `refresh` (`POST /sync`, SIGHUP)
    /// cuts a wait between polls short; a long poll hears of every change
    /// at once anyway.
    pub async fn run(
        mut self,
        store: Arc<Store>,
        refresh: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        info!(upstream = self.target.url(), "following an upstream");
        loop {
            if !self.state.calls.connected() {
                self.state.set_phase("disconnected");
                tokio::select! {
                    () = self.state.calls.until_connected() => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            let started = Instant::now();
            self.state.attempt_started();
            self.metrics.attempts.inc();
            self.metrics.last_attempt.set(unix_secs(SystemTime::now()));
            let outcome = tokio::select! {
                outcome = self.poll(&store) => outcome,
                _ = stopped(&mut stop) => return,
            };
            let took = started.elapsed();
            let wait = match outcome {
                Ok(outcome) => {
                    self.state.succeeded(outcome, 1, took);
                    self.metrics.last_success.set(unix_secs(SystemTime::now()));
                    if outcome == SyncOutcome::Swapped {
                        self.metrics.swaps.inc();
                        self.metrics.duration.observe(took.as_secs_f64());
                    }
                    match self.target {
                        // Something new: ask again at once. An unchanged
                        // answer that came back early (a hub that does not
                        // hold polls) is not asked again in a loop.
                        Target::Hub(_) if outcome == SyncOutcome::Swapped => Duration::ZERO,
                        Target::Hub(_) => MIN_GAP.saturating_sub(took),
                        Target::File(_) => jittered(self.config.interval, 0.1),
                    }
                }
                Err(e) => {
                    warn!(error = %e, cause = e.cause(), "upstream: no snapshot taken; the last one keeps serving");
                    self.state.failed(&e, 1, took);
                    self.metrics.failures.with_label_values(&[e.cause()]).inc();
                    backoff(
                        self.config.backoff_min,
                        self.config.backoff_max,
                        self.state.consecutive_failures(),
                    )
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = refresh.notified() => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One request to the upstream, and what it brought applied.
    async fn poll(&mut self, store: &Arc<Store>) -> Result<SyncOutcome, SyncError> {
        // Writes applied here from now on may be newer than what comes back.
        let writes_before = store.write_seq();
        let url = self.target.url().to_owned();
        // reqwest asks for gzip and decompresses.
        let mut request = self
            .http
            .get(&url)
            .header(header::ACCEPT, bundle::MEDIA_TYPE);
        // A hub is sent the key; a file's server (a CDN, an object store)
        // is not: the bundle's MAC is what proves it.
        if let Target::Hub(_) = self.target {
            request = request.bearer_auth(self.config.api_key.expose());
        }
        match (&self.target, &self.version, &self.etag) {
            (Target::Hub(_), Some(version), _) => {
                self.state.set_phase("long_polling");
                request = request
                    .header(header::IF_NONE_MATCH, format!("\"{version}\""))
                    .header("prefer", format!("wait={}", LONG_POLL.as_secs()));
            }
            (Target::File(_), _, Some(etag)) => {
                request = request.header(header::IF_NONE_MATCH, etag.as_str());
            }
            _ => {}
        }
        let path = reqwest::Url::parse(&url).map_or_else(|_| url.clone(), |u| u.path().to_owned());
        let mut call = Call::new("upstream", "GET", path, "other");
        let started = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                call.status = if e.is_timeout() { "timeout" } else { "network" }.into();
                call.error = Some(call.status.clone());
                self.state.calls.record(call.took(started.elapsed()));
                return Err(SyncError::Upstream(format!(
                    "{url}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "unreachable"
                    }
                )));
            }
        };
        let status = response.status();
        call.status = status.as_str().to_owned();
        call.request_id = request_id(response.headers());
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // As fresh as the hub says it is; an answer that does not say
        // confirms nothing. A bundle file is as fresh as its document.
        let hub_fresh_at = response
            .headers()
            .get(super::hub::AGE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .and_then(|ms| SystemTime::now().checked_sub(Duration::from_millis(ms)))
            .filter(|_| matches!(self.target, Target::Hub(_)));
        if !status.is_success() && status != http::StatusCode::NOT_MODIFIED {
            let body = read_limited(response, MAX_ERROR_BYTES).await;
            let why = body
                .as_ref()
                .map_or_else(|e| e.clone(), |b| excerpt(&String::from_utf8_lossy(b)));
            call.error = Some(why.clone());
            self.state.calls.record(call.took(started.elapsed()));
            return Err(SyncError::Upstream(format!(
                "{url} answered {status}: {why}"
            )));
        }
        let body = read_limited(response, MAX_BUNDLE_BYTES).await;
        self.state.calls.record(call.took(started.elapsed()));
        if status == http::StatusCode::NOT_MODIFIED {
            if self.version.is_none() && self.etag.is_none() {
                return Err(SyncError::Upstream(format!(
                    "{url} answered 304 to a request that named no version"
                )));
            }
            if let Some(at) = hub_fresh_at {
                store.mark_fresh_at(at);
            }
            return Ok(SyncOutcome::Unchanged);
        }
        let body = body.map_err(|e| SyncError::Upstream(format!("{url}: {e}")))?;
        let outcome = self.apply(store, body, writes_before, hub_fresh_at).await?;
        if let Some(at) = hub_fresh_at {
            store.mark_fresh_at(at);
        }
        if matches!(self.target, Target::File(_)) {
            self.etag = etag;
        }
        Ok(outcome)
    }

    /// Authenticates a bundle and applies it, off the async workers.
    async fn apply(
        &mut self,
        store: &Arc<Store>,
        body: Bytes,
        writes_before: u64,
        hub_fresh_at: Option<SystemTime>,
    ) -> Result<SyncOutcome, SyncError> {
        let key = self.key.clone();
        let decoded = tokio::task::spawn_blocking(move || bundle::decode(body, &key))
            .await
            .map_err(|e| SyncError::Internal(e.to_string()))?
            .map_err(|e| SyncError::Refused(e.to_string()))?;
        match &self.environment {
            Some(env) if *env != decoded.environment => {
                return Err(SyncError::Refused(format!(
                    "the bundle is of environment {}, this PDP serves {env}",
                    decoded.environment
                )));
            }
            Some(_) => {}
            // Known before anything of it is served, so that the journal
            // of what is written over it is sealed to it from the first.
            None => {
                self.state.set_environment(&decoded.environment);
                self.environment = Some(decoded.environment.clone());
            }
        }
        let Bundle {
            kind,
            version,
            from,
            environment,
            base,
            writes,
        } = decoded;
        let outcome = match (kind, base) {
            (Kind::Full, Some(base)) => {
                self.install(
                    store,
                    base,
                    &environment,
                    writes,
                    writes_before,
                    hub_fresh_at,
                )
                .await?
            }
            (Kind::Delta, _) if matches!(self.target, Target::File(_)) => {
                return Err(SyncError::Refused(
                    "a bundle file must be a full bundle, not a delta".into(),
                ))
            }
            (Kind::Delta, _) => {
                if from.is_none() || from != self.version {
                    let why = format!(
                        "a delta from version {}, this PDP serves {}",
                        from.as_deref().unwrap_or("none"),
                        self.version.as_deref().unwrap_or("none")
                    );
                    // Not from what is served: ask for the whole next time.
                    self.version = None;
                    return Err(SyncError::Refused(why));
                }
                let n = writes.len();
                let applier = store.clone();
                let (applied, pending) = tokio::task::spawn_blocking(move || {
                    let applied = applier.apply(writes);
                    (applied, applier.pending_count())
                })
                .await
                .map_err(|e| SyncError::Internal(e.to_string()))?;
                tracing::debug!(
                    writes = n,
                    applied = applied.applied,
                    "upstream: delta applied"
                );
                if !applied.refused.is_empty() {
                    for (_, why) in &applied.refused {
                        warn!(%why, "upstream: a write names schema this snapshot lacks; taking the whole bundle next");
                    }
                    // The hub serves what this could not apply: the whole
                    // brings it.
                    self.version = None;
                    return Ok(SyncOutcome::Swapped);
                }
                // Only as many as a full bundle would let go: the hub's
                // own writes come back with it.
                if pending.saturating_sub(self.full_writes) > COMPACT_AFTER {
                    info!(
                        writes = pending,
                        "upstream: many writes served over the document; taking the whole bundle next"
                    );
                    store.followed(&version);
                    self.version = None;
                    return Ok(SyncOutcome::Swapped);
                }
                SyncOutcome::Swapped
            }
            (Kind::Full, None) => {
                return Err(SyncError::Refused(
                    "a full bundle without its document".into(),
                ))
            }
        };
        // Writes sent through the hub wait for this (`facts::VERSION_HEADER`).
        store.followed(&version);
        self.version = Some(version);
        Ok(outcome)
    }

    /// A full bundle: its document checked as a backup is, built, swapped
    /// in with the writes it carries, and kept as this PDP's backup. One
    /// older than the document served is refused; the one served, with
    /// the writes served, is kept as it is.
    async fn install(
        &mut self,
        store: &Arc<Store>,
        base: Bytes,
        environment: &str,
        writes: Vec<crate::snapshot::Write>,
        writes_before: u64,
        hub_fresh_at: Option<SystemTime>,
    ) -> Result<SyncOutcome, SyncError> {
        let key = self.key.clone();
        let store = store.clone();
        let backup_dir = self.config.backup_dir.clone();
        let hub = self.config.hub;
        let source = Source::Upstream(self.target.url().to_owned());
        let environment = environment.to_owned();
        let backup_failures = self.metrics.backup_failures.clone();
        let served_since = self.synced_at;
        let carried = writes.len();
        let (outcome, synced_at) = tokio::task::spawn_blocking(move || {
            let doc = backup::decode_backup(&base, &key)
                .map_err(|e| SyncError::Refused(format!("its document: {e}")))?;
            if doc.environment != environment {
                return Err(SyncError::Refused(format!(
                    "its document is of environment {}, the bundle says {environment}",
                    doc.environment
                )));
            }
            // A hub says how fresh it is; a file is as fresh as the sync it
            // was made from.
            let fresh_at = hub_fresh_at
                .map_or(doc.synced_at, |h| h.max(doc.synced_at))
                .min(SystemTime::now());
            let same = store.load().is_some_and(|l| {
                l.meta.content_hash == doc.content_hash && store.pending_writes() == writes
            });
            if same {
                store.mark_fresh_at(fresh_at);
                return Ok((SyncOutcome::Unchanged, doc.synced_at));
            }
            // Older than what is served, and not confirmed current since
            // (a hub that synced it earlier and has confirmed it after is
            // as good): a replayed or stale cached bundle is not taken.
            if let Some(served) = served_since.filter(|&s| fresh_at < s) {
                return Err(SyncError::Refused(format!(
                    "its document was synced at {}, before the one served ({}): an old bundle is not taken",
                    unix_secs(doc.synced_at),
                    unix_secs(served)
                )));
            }
            let provenance = Provenance {
                source,
                content_hash: Some(doc.content_hash),
                fresh_at: Some(fresh_at),
                writes_before: Some(writes_before),
                writes,
                base: hub.then(|| {
                    Arc::new(BaseFrame {
                        bytes: base.clone(),
                        environment: environment.clone(),
                    })
                }),
            };
            store
                .install(doc.staged, provenance)
                .map_err(|e| SyncError::Build(e.to_string()))?;
            if let Some(dir) = backup_dir {
                if let Err(e) = backup::write_backup_bytes(&dir, &base) {
                    tracing::error!(error = %e, "cannot write the offline backup");
                    backup_failures.inc();
                }
            }
            Ok((SyncOutcome::Swapped, doc.synced_at))
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))??;
        self.synced_at = Some(synced_at);
        self.full_writes = carried;
        Ok(outcome)
    }
}

/// The body, read up to `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(part)) => {
                if body.len() + part.len() > limit {
                    return Err(format!("a body over {limit} bytes"));
                }
                body.extend_from_slice(&part);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(if e.is_timeout() {
                    "timed out reading the body".into()
                } else {
                    "the body was cut off".into()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_path_names_a_pdp() {
        assert_eq!(
            Target::of("http://pdp-hub:7766"),
            Target::Hub("http://pdp-hub:7766/v1/snapshot".into())
        );
        assert_eq!(
            Target::of("http://pdp-hub:7766/"),
            Target::Hub("http://pdp-hub:7766/v1/snapshot".into())
        );
        assert_eq!(
            Target::of("https://cdn.example.com/pdp/bundle.bin"),
            Target::File("https://cdn.example.com/pdp/bundle.bin".into())
        );
    }
}
