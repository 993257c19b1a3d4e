//! pdp: a Policy Decision Point sidecar that answers the Permit.io PDP API
//! and OpenID AuthZEN 1.0 from an immutable in-memory snapshot.
//!
//! A request takes three hops: [`http`] accepts it (`transport`), finds its
//! row in the route table (`routes`) and decodes its body (`handlers`);
//! [`decide`] answers from the snapshot the request loaded once from the
//! [`store`]; [`http`] encodes the answer, or maps the error (`error`).
//! Around it:
//!
//! - [`decide`]: `query` (request bodies), `check` (`/allowed` and bulk),
//!   `walk` (derived roles), `attrs` (what ABAC sees), `listing` (the
//!   multi-answer endpoints).
//! - [`snapshot`]: the immutable snapshot. `staged` (a document packed as
//!   it is read), `build` (the one validating constructor), `read` (what
//!   decisions read, by typed id from `ids`).
//! - [`store`]: the serving snapshot behind one `ArcSwap`, and
//!   [`store::Store::install`], the one way in: embedded example, data
//!   file, backup and sync alike.
//! - [`model`]: the data document, the one input format.
//! - [`abac`]: ABAC conditions, compiled once per snapshot.
//! - [`authzen`]: OpenID AuthZEN 1.0 requests mapped onto [`decide`].
//! - [`sync`]: the control-plane sync, its request budget and the backup.
//! - [`config`], [`metrics`]: settings validated before bind; Prometheus
//!   series registered once.
//! - [`run`] wires them: first snapshot, background refresh, serve, drain.
//!
//! Development tools (the generator, the reference evaluator, the fake
//! control plane, benchmark drivers) live in the `devkit` workspace member.
#![forbid(unsafe_code)]

pub mod abac;
pub mod authzen;
pub mod config;
pub mod decide;
pub mod decisions;
pub mod facts;
pub mod http;
pub mod metrics;
pub mod model;
pub mod snapshot;
pub mod store;
pub mod sync;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::{ApiKey, Config, Mode};
use crate::decisions::{DecisionLog, Destination, Sink};
use crate::facts::{FactsProxy, ProxyConfig};
use crate::http::{App, HeavyWork, HttpSettings};
use crate::metrics::Metrics;
use crate::model::DataDocument;
use crate::snapshot::Staged;
use crate::store::{Source, Store};

/// The example environment served when nothing else is configured.
pub const EMBEDDED_DATA: &str = include_str!("../config/example-data.json");

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid data document: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{origin} was refused: {source}")]
    Invalid {
        origin: String,
        source: snapshot::BuildError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The API key can never sync: the process exits 64.
    #[error(transparent)]
    Key(#[from] sync::FatalKeyError),
    #[error("cannot start the control-plane client: {0}")]
    SyncClient(#[from] reqwest::Error),
    #[error("cannot start the facts proxy: {0}")]
    Facts(#[from] facts::ProxyError),
    #[error("cannot start the decision log: {0}")]
    DecisionLogs(#[from] decisions::SinkError),
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("PDP_API_KEY is needed: a bundle is authenticated with a key derived from it, and followers check it")]
    NoKey,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot read the environment from the control plane: {0}")]
    ControlPlane(#[from] sync::ExportError),
    #[error("cannot start the control-plane client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot seal the document: {0}")]
    Seal(#[from] std::io::Error),
}

/// `pdp export` (docs/fleet.md): a full bundle of the environment, which
/// followers can poll from any HTTP server. From `PDP_DATA_FILE` (sealed
/// for `environment`, `local` if not given) or else from one read of the
/// control plane (its environment's id).
pub async fn export(config: &Config, environment: Option<&str>) -> Result<Vec<u8>, ExportError> {
    let api_key = config.api_key.clone().ok_or(ExportError::NoKey)?;
    let (staged, environment) = match &config.data_file {
        Some(path) => (
            read_staged(path)?,
            environment.unwrap_or("local").to_owned(),
        ),
        None => {
            let sync_config = sync::SyncConfig {
                control_plane: config.control_plane.clone(),
                api_key: api_key.clone(),
                request_timeout: config.sync_request_timeout,
                sync_deadline: config.sync_deadline,
                overall_per_min: config.rate_limit_overall,
                facts_per_min: config.rate_limit_facts,
                schema_per_min: config.rate_limit_schema,
                ..sync::SyncConfig::default()
            };
            let metrics = Arc::new(sync::SyncMetrics::register(&prometheus::Registry::new())?);
            let syncer = sync::Syncer::new(sync_config, Arc::new(sync::SyncState::new()), metrics)?;
            syncer.fetch_document().await?
        }
    };
    let key = sync::BackupKey::derive(&api_key);
    let bundle = tokio::task::spawn_blocking(move || {
        let version = format!("export.{}", &staged.content_hash()[..16]);
        let seal = sync::Seal {
            key: key.clone(),
            environment: environment.clone(),
        };
        let base = sync::seal_staged(&staged, &seal, std::time::SystemTime::now())?;
        Ok::<_, std::io::Error>(sync::bundle::encode(
            &key,
            sync::bundle::Kind::Full,
            &version,
            None,
            &environment,
            Some(&base),
            &[],
        ))
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(bundle)
}

/// Reads a data document from a JSON file, whole (for tests and tools).
pub fn read_document(path: &Path) -> Result<DataDocument, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Reads a data document from a JSON file item by item into its staged
/// form: neither the file's text nor the parsed document is ever whole in
/// memory, which is what a reload beside the serving snapshot can afford.
pub fn read_staged(path: &Path) -> Result<Staged, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Staged::from_json_reader(std::io::BufReader::with_capacity(1 << 16, file)).map_err(|source| {
        match source.io_error_kind() {
            Some(kind) => LoadError::Read {
                path: path.to_owned(),
                source: std::io::Error::new(kind, source),
            },
            None => LoadError::Parse {
                path: path.to_owned(),
                source,
            },
        }
    })
}

/// Builds `staged` and puts it in service (see [`Store::install`]); a
/// document the build refuses is an error naming where it came from.
fn install(store: &Store, staged: Staged, source: Source) -> Result<(), LoadError> {
    let origin = format!("{source:?}");
    store
        .install(staged, source)
        .map(drop)
        .map_err(|source| LoadError::Invalid { origin, source })
}

fn load_file(store: &Store, path: &Path) -> Result<(), LoadError> {
    let staged = read_staged(path)?;
    install(store, staged, Source::File(path.to_owned()))
}

/// Runs the PDP on `listener` until `shutdown` completes. Each signal of
/// `hangups` (SIGHUP) asks for a refresh, as `POST /sync` does.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    hangups: Option<tokio::signal::unix::Signal>,
) -> Result<(), RunError> {
    let store = Arc::new(Store::new());
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new())?);
    let refresh = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(hangups) = hangups {
        tokio::spawn(refresh_on_hangup(hangups, refresh.clone(), stop_rx.clone()));
    }
    let mut sync_task = None;
    let mut sync_state = None;
    let mut facts = None;
    // What decision-log uploads share with the sync: its status (the call
    // log, the connectivity switch) and its request budget.
    let mut control_plane = None;

    match config.mode() {
        Mode::Embedded => {
            let staged =
                Staged::from_json_str(EMBEDDED_DATA).map_err(|source| LoadError::Parse {
                    path: "config/example-data.json".into(),
                    source,
                })?;
            install(&store, staged, Source::Embedded)?;
            warn!(
                "neither PDP_API_KEY nor PDP_DATA_FILE is set: serving the embedded EXAMPLE \
                 environment (config/example-data.json), not your policy"
            );
        }
        Mode::File(path) => {
            load_file(&store, &path)?;
            tokio::spawn(reload_on_request(
                store.clone(),
                path,
                refresh.clone(),
                stop_rx.clone(),
            ));
        }
        Mode::ControlPlane => {
            let sync_config = sync::SyncConfig {
                control_plane: config.control_plane.clone(),
                api_key: config.api_key.clone().unwrap_or_else(|| ApiKey::new("")),
                interval: config.sync_interval,
                request_timeout: config.sync_request_timeout,
                sync_deadline: config.sync_deadline,
                overall_per_min: config.rate_limit_overall,
                facts_per_min: config.rate_limit_facts,
                schema_per_min: config.rate_limit_schema,
                backup_dir: config.backup_dir.clone(),
                hub: config.hub,
                ..sync::SyncConfig::default()
            };
            let state = Arc::new(sync::SyncState::new());
            // Ready from the backup at once; the first sync replaces it.
            if let Some(dir) = &sync_config.backup_dir {
                let key = sync::BackupKey::derive(&sync_config.api_key);
                restore_at_start(&store, dir, &key, config.hub, &state);
            }
            let sync_metrics = Arc::new(sync::SyncMetrics::register(metrics.registry())?);
            let backup_dir = sync_config.backup_dir.clone();
            let key = sync::BackupKey::derive(&sync_config.api_key);
            let syncer = sync::Syncer::new(sync_config, state.clone(), sync_metrics)?;
            facts = Some(Arc::new(FactsProxy::new(
                ProxyConfig {
                    control_plane: config.control_plane.clone(),
                    via_hub: false,
                    request_timeout: config.sync_request_timeout,
                    default_wait: config.local_facts_wait_timeout,
                },
                store.clone(),
                state.clone(),
                syncer.limiter(),
                metrics.registry(),
            )?));
            control_plane = Some((state.clone(), syncer.limiter()));
            if let Some(dir) = backup_dir {
                let journal = keep_journal(store.clone(), dir, key, state.clone(), stop_rx.clone());
                tokio::spawn(journal);
            }
            sync_state = Some(state);
            sync_task = Some(tokio::spawn(sync::supervise(
                syncer,
                store.clone(),
                refresh.clone(),
                stop_rx.clone(),
            )));
        }
        Mode::Upstream(url) => {
            let api_key = config.api_key.clone().unwrap_or_else(|| ApiKey::new(""));
            let key = sync::BackupKey::derive(&api_key);
            let state = Arc::new(sync::SyncState::new());
            let restored = config
                .backup_dir
                .as_deref()
                .and_then(|dir| restore_at_start(&store, dir, &key, config.hub, &state));
            let target = sync::Target::of(&url);
            let follower = sync::Follower::new(
                sync::FollowConfig {
                    url: url.clone(),
                    api_key,
                    request_timeout: config.sync_request_timeout,
                    deadline: config.sync_deadline,
                    interval: config.sync_interval,
                    backup_dir: config.backup_dir.clone(),
                    hub: config.hub,
                    backoff_min: std::time::Duration::from_secs(1),
                    backoff_max: std::time::Duration::from_secs(30),
                },
                state.clone(),
                Arc::new(sync::SyncMetrics::register(metrics.registry())?),
                restored,
            )?;
            // The hub spends the control plane's budget; calls to it are
            // not limited here.
            let limiter = Arc::new(sync::Limiter::new(
                0,
                0,
                0,
                std::time::Duration::from_secs(60),
            ));
            // A hub takes writes and decision logs; a bundle file's server
            // does not.
            if matches!(target, sync::Target::Hub(_)) {
                facts = Some(Arc::new(FactsProxy::new(
                    ProxyConfig {
                        control_plane: url.clone(),
                        request_timeout: config.sync_request_timeout,
                        default_wait: config.local_facts_wait_timeout,
                        via_hub: true,
                    },
                    store.clone(),
                    state.clone(),
                    limiter.clone(),
                    metrics.registry(),
                )?));
                control_plane = Some((state.clone(), limiter));
            }
            if let Some(dir) = config.backup_dir.clone() {
                let journal = keep_journal(store.clone(), dir, key, state.clone(), stop_rx.clone());
                tokio::spawn(journal);
            }
            sync_state = Some(state);
            let (store, refresh, stop) = (store.clone(), refresh.clone(), stop_rx.clone());
            sync_task = Some(tokio::spawn(async move {
                follower.run(store, refresh, stop).await;
                Ok(())
            }));
        }
    }
    // Turns true when the drain begins: followers' long polls held by the
    // hub are answered then, not at the end of the grace period.
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = draining_tx.send(true);
    };
    let hub = match (&config.api_key, config.hub) {
        (Some(api_key), true) => Some(Arc::new(sync::Hub::new(
            store.clone(),
            sync::BackupKey::derive(api_key),
            draining_rx,
            metrics.registry(),
        )?)),
        _ => None,
    };

    // Staleness is measured from the last sync; a local file or the embedded
    // example is never synced, so the limit would only ever turn them off.
    let max_staleness = match (config.mode(), config.max_staleness) {
        (Mode::ControlPlane | Mode::Upstream(_), limit) => limit,
        (_, Some(_)) => {
            warn!("PDP_MAX_STALENESS applies only when syncing from the control plane or following an upstream; ignored");
            None
        }
        (_, None) => None,
    };
    let decision_log = match &config.decision_logs {
        None => None,
        Some(destination) => {
            let sink = match destination {
                Destination::ControlPlane => {
                    let (state, limiter) =
                        control_plane.ok_or(decisions::SinkError::NoControlPlane)?;
                    Sink::ControlPlane(Box::new(decisions::Uploader::new(
                        config
                            .upstream_url
                            .as_deref()
                            .unwrap_or(&config.control_plane),
                        config.api_key.clone().unwrap_or_else(|| ApiKey::new("")),
                        config.sync_request_timeout,
                        state,
                        limiter,
                        upload_budget(&config),
                    )?))
                }
                Destination::Stdout => Sink::stdout(),
                Destination::File {
                    path,
                    max_bytes,
                    keep,
                } => Sink::file(path, *max_bytes, *keep)?,
            };
            let log = Arc::new(DecisionLog::new(
                config.decision_log_settings.clone(),
                metrics.registry(),
            )?);
            info!(instance = %log.instance, ?destination, "decision logs on");
            let task = tokio::spawn(decisions::run(log.clone(), sink, stop_rx.clone()));
            Some((log, task))
        }
    };
    let app = Arc::new(App {
        store,
        settings: HttpSettings {
            api_key: config.api_key.clone(),
            debug: config.debug,
            max_body_bytes: config.max_body_bytes,
            max_bulk_items: config.max_bulk_items,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            shutdown_grace: config.shutdown_grace,
            max_staleness,
        },
        metrics,
        refresh,
        sync_state,
        heavy: HeavyWork::default(),
        facts,
        decision_log: decision_log.as_ref().map(|(log, _)| log.clone()),
        hub,
    });
    let serving = http::serve(app, listener, shutdown);
    tokio::pin!(serving);
    let result = match sync_task {
        None => {
            serving.await;
            Ok(())
        }
        Some(task) => tokio::select! {
            () = &mut serving => Ok(()),
            joined = task => match joined {
                // A key that can never sync ends the process (exit 64)
                // rather than serve a backup that will never be refreshed.
                Ok(Err(fatal)) => Err(RunError::Key(fatal)),
                Ok(Ok(())) => {
                    serving.await;
                    Ok(())
                }
                Err(e) => {
                    error!(error = %e, "the sync supervisor failed; the last snapshot keeps serving");
                    serving.await;
                    Ok(())
                }
            },
        },
    };
    let _ = stop_tx.send(true);
    // The decisions of the drained requests go out too (bounded by the
    // task's last flush).
    if let Some((_, task)) = decision_log {
        let _ = task.await;
    }
    result
}

/// Serves the backup in `dir` until the first sync, if there is one this
/// key can read; returns its environment. A refused backup is logged and
/// shown by `/health`.
fn restore_at_start(
    store: &Store,
    dir: &Path,
    key: &sync::BackupKey,
    hub: bool,
    state: &sync::SyncState,
) -> Option<sync::Restored> {
    match sync::remove_stale_temps(dir) {
        Ok(0) => {}
        Ok(n) => info!(
            removed = n,
            "removed temp files a crash left in the backup directory"
        ),
        Err(e) => warn!(error = %e, "cannot clean the backup directory"),
    }
    match sync::restore(store, dir, key, hub) {
        Ok(Some(restored)) => {
            info!(dir = %dir.display(), "serving the offline backup until the first sync");
            Some(restored)
        }
        Ok(None) => {
            info!(dir = %dir.display(), "no offline backup yet");
            None
        }
        Err(e) => {
            warn!(error = %e, "offline backup ignored");
            state.backup_refused(e.to_string());
            None
        }
    }
}

/// Decision-log uploads a minute: what the sync's own classes leave of the
/// overall budget, and never fewer than one a second; 0 (no cap of their
/// own) when the overall budget is unlimited.
fn upload_budget(config: &Config) -> u32 {
    if config.rate_limit_overall == 0 {
        return 0;
    }
    config
        .rate_limit_overall
        .saturating_sub(config.rate_limit_facts)
        .saturating_sub(config.rate_limit_schema)
        .max(60)
}

/// Keeps the journal beside the backup in step with the writes served
/// through the facts proxy, so a restart serves them too: rewritten after
/// each change, a burst of writes coalescing into one rewrite.
async fn keep_journal(
    store: Arc<Store>,
    dir: PathBuf,
    key: sync::BackupKey,
    state: Arc<sync::SyncState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = store.writes_changed.notified() => {}
            _ = stop.changed() => return,
        }
        // The journal is sealed to the environment, known once the key's
        // scope is; writes come through the proxy only after that.
        let Some(environment) = state.environment() else {
            continue;
        };
        let seal = sync::Seal {
            key: key.clone(),
            environment: environment.to_owned(),
        };
        let (store, dir) = (store.clone(), dir.clone());
        let written = tokio::task::spawn_blocking(move || {
            sync::write_journal(&dir, &seal, &store.pending_writes())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot write the journal of served writes"),
            Err(e) => warn!(error = %e, "the journal writer failed"),
        }
    }
}

/// Turns SIGHUP into a refresh request, as `POST /sync` is: a reload of the
/// data file, or a sync.
async fn refresh_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    refresh: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            Some(()) = hangup.recv() => {
                info!("SIGHUP: refresh requested");
                refresh.notify_one();
            }
            _ = stop.changed() => return,
        }
    }
}

/// Re-reads the data file on `POST /sync` or SIGHUP; a bad file is logged
/// and the serving snapshot kept.
async fn reload_on_request(
    store: Arc<Store>,
    path: PathBuf,
    refresh: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = refresh.notified() => {}
            _ = stop.changed() => return,
        }
        let store = store.clone();
        let path = path.clone();
        let result = tokio::task::spawn_blocking(move || load_file(&store, &path)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "reload failed; the previous snapshot keeps serving"),
            Err(e) => error!(error = %e, "reload task failed"),
        }
    }
}
