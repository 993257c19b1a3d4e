//! The hub's side of a fleet (docs/fleet.md): `GET /v1/snapshot` hands the
//! serving snapshot to followers as a [`bundle`](super::bundle).
//!
//! A version names what is served: this process, the store's generation
//! (a new document, or writes let go) and the last write applied over it,
//! as the `ETag` `"{instance}.{generation}.{last_write}"`. A follower that
//! names the current version in `If-None-Match` gets a 304, after holding
//! the request up to `Prefer: wait=N` seconds (at most 60) for a change. One
//! that names an earlier version gets a delta: the writes since, and across
//! a new document the difference the sync found, as writes
//! ([`Store::since`]), for as long as the hub remembers the way from it.
//! Any other gets the full bundle, encoded once per generation and shared
//! by every follower that asks for it (a delta likewise, by its two
//! versions). Every answer says how long ago the hub's snapshot was
//! confirmed current ([`AGE_HEADER`]), and a held poll is answered when it
//! is confirmed again, so a follower is exactly as fresh as its hub.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{watch, OnceCell};

use super::backup::BackupKey;
use super::bundle::{self, Kind};
use crate::http::ApiError;
use crate::store::{Loaded, Since, Store};

/// The longest `Prefer: wait` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Bodies shorter than this are sent as they are, asked to compress or not.
const COMPRESS_FROM: usize = 1024;
/// How long ago the hub's snapshot was last known current (a sync that
/// swapped or confirmed it), in milliseconds: a follower is as fresh as its
/// hub, so `PDP_MAX_STALENESS` holds across the fleet.
pub const AGE_HEADER: &str = "x-pdp-snapshot-age-ms";

pub struct Hub {
    store: Arc<Store>,
    key: BackupKey,
    /// The last full bundle, by generation.
    full: Mutex<Option<Arc<Encoded>>>,
    /// The last delta, by the versions it goes between: followers polling
    /// together ask for the same one.
    delta: Mutex<Option<Arc<Encoded>>>,
    stop: watch::Receiver<bool>,
    metrics: HubMetrics,
}

/// A bundle, encoded when first asked for and shared by every follower
/// that asks for the same one.
struct Encoded {
    key: Which,
    /// The version it brings a follower to, with the body: both come from
    /// the one request that encoded it.
    plain: OnceCell<(String, Bytes)>,
    gzip: OnceCell<Bytes>,
}

/// Which bundle an [`Encoded`] is.
#[derive(PartialEq, Eq)]
enum Which {
    /// The full bundle of a generation.
    Full(u64),
    /// The delta between two versions, `from` and `to`.
    Delta(String, String),
}

impl Encoded {
    fn new(key: Which) -> Arc<Encoded> {
        Arc::new(Encoded {
            key,
            plain: OnceCell::new(),
            gzip: OnceCell::new(),
        })
    }

    /// The one in `slot` if it is `key`'s, else a new one put there.
    fn slot(slot: &Mutex<Option<Arc<Encoded>>>, key: Which) -> Arc<Encoded> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(e) if e.key == key => e.clone(),
            _ => {
                let e = Encoded::new(key);
                *slot = Some(e.clone());
                e
            }
        }
    }

    /// The version and body, made by `encode` on a blocking thread the
    /// first time (a million assignments are tens of MB); gzipped when
    /// asked for and long enough to gain, and then `true`.
    async fn body(
        &self,
        gzip: bool,
        encode: impl FnOnce() -> (String, Bytes) + Send + 'static,
    ) -> Result<(String, Bytes, bool), ApiError> {
        let (version, plain) = self
            .plain
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(encode)
                    .await
                    .map_err(|e| ApiError::Encode(e.to_string()))
            })
            .await?
            .clone();
        if !gzip || plain.len() < COMPRESS_FROM {
            return Ok((version, plain, false));
        }
        let body = self
            .gzip
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || gzipped(&plain))
                    .await
                    .map_err(|e| ApiError::Encode(e.to_string()))
            })
            .await?
            .clone();
        Ok((version, body, true))
    }
}

struct HubMetrics {
    /// Answers by kind: full, delta, not_modified.
    answers: IntCounterVec,
    /// Body bytes sent, by kind.
    bytes: IntCounterVec,
    waiting: IntGauge,
}

impl HubMetrics {
    fn register(registry: &Registry) -> prometheus::Result<HubMetrics> {
        let m = HubMetrics {
            answers: IntCounterVec::new(
                Opts::new(
                    "pdp_hub_answers_total",
                    "GET /v1/snapshot answers, by kind: full, delta, not_modified",
                ),
                &["kind"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "pdp_hub_sent_bytes_total",
                    "Bundle bytes sent to followers, by kind (after compression)",
                ),
                &["kind"],
            )?,
            waiting: IntGauge::new(
                "pdp_hub_long_polls",
                "Followers' requests held open until the snapshot changes",
            )?,
        };
        for kind in ["full", "delta", "not_modified"] {
            m.answers.with_label_values(&[kind]);
        }
        for kind in ["full", "delta"] {
            m.bytes.with_label_values(&[kind]);
        }
        registry.register(Box::new(m.answers.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        Ok(m)
    }
}

/// Counts a long poll for as long as it is held.
struct Waiting<'a>(&'a IntGauge);

impl<'a> Waiting<'a> {
    fn begin(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Hub {
    pub fn new(
        store: Arc<Store>,
        key: BackupKey,
        stop: watch::Receiver<bool>,
        registry: &Registry,
    ) -> prometheus::Result<Hub> {
        Ok(Hub {
            store,
            key,
            full: Mutex::new(None),
            delta: Mutex::new(None),
            stop,
            metrics: HubMetrics::register(registry)?,
        })
    }

    fn version(&self, loaded: &Loaded) -> String {
        self.store.version(&loaded.meta)
    }

    /// Answers `GET /v1/snapshot`.
    pub async fn serve(&self, headers: &HeaderMap) -> Result<Response<Full<Bytes>>, ApiError> {
        let named = if_none_match(headers);
        let known = named.as_deref().and_then(|v| self.store.parse_version(v));
        let gzip = accepts_gzip(headers);
        let deadline = Instant::now() + prefer_wait(headers);
        let mut changes = self.store.changes();
        let mut confirmations = self.store.confirmations();
        confirmations.borrow_and_update();
        // Answered at once after a confirmation, so the follower learns how
        // fresh the hub is now (its staleness limit is measured by it).
        let mut confirmed = false;
        let mut stop = self.stop.clone();
        let _waiting = (deadline > Instant::now()).then(|| Waiting::begin(&self.metrics.waiting));
        loop {
            changes.borrow_and_update();
            // Followers polling together ask for the same delta: the one
            // encoded for the first is sent as it is, without gathering
            // its writes again under the store's lock.
            if let Some((version, body, compressed)) = named
                .as_deref()
                .and_then(|from| self.encoded_delta(from, gzip))
            {
                return Ok(self.answered(Kind::Delta, version, body, compressed));
            }
            // An unknown version (or none) is of no generation: a full bundle.
            let (generation, last) = known.unwrap_or((u64::MAX, 0));
            let (kind, body, version, compressed) = match self.store.since(generation, last) {
                Since::Nothing => return Err(not_ready("no snapshot is loaded yet")),
                Since::Current(loaded) => {
                    let now = Instant::now();
                    if now < deadline && !*stop.borrow() && !confirmed {
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = confirmations.changed() => confirmed = true,
                            () = tokio::time::sleep_until(deadline.into()) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                    self.metrics
                        .answers
                        .with_label_values(&["not_modified"])
                        .inc();
                    return Ok(answer(
                        self.store.freshness_age(),
                        StatusCode::NOT_MODIFIED,
                        &self.version(&loaded),
                        None,
                        Bytes::new(),
                        false,
                    ));
                }
                Since::Writes(loaded, writes) => {
                    let base = loaded.base.as_ref().ok_or_else(no_base)?;
                    let version = self.version(&loaded);
                    let from = named.clone().unwrap_or_default();
                    let encoded =
                        Encoded::slot(&self.delta, Which::Delta(from.clone(), version.clone()));
                    let (key, environment) = (self.key.clone(), base.environment.clone());
                    let (version, body, compressed) = encoded
                        .body(gzip, move || {
                            let plain = bundle::encode(
                                &key,
                                Kind::Delta,
                                &version,
                                Some(&from),
                                &environment,
                                None,
                                &writes,
                            );
                            (version, Bytes::from(plain))
                        })
                        .await?;
                    (Kind::Delta, body, version, compressed)
                }
                Since::Full(loaded, writes) => {
                    let (version, body, compressed) = self.full(&loaded, writes, gzip).await?;
                    (Kind::Full, body, version, compressed)
                }
            };
            return Ok(self.answered(kind, version, body, compressed));
        }
    }

    /// A bundle's answer, counted.
    fn answered(
        &self,
        kind: Kind,
        version: String,
        body: Bytes,
        compressed: bool,
    ) -> Response<Full<Bytes>> {
        let label = kind.label();
        self.metrics.answers.with_label_values(&[label]).inc();
        self.metrics
            .bytes
            .with_label_values(&[label])
            .inc_by(body.len() as u64);
        answer(
            self.store.freshness_age(),
            StatusCode::OK,
            &version,
            Some(kind),
            body,
            compressed,
        )
    }

    /// The delta from `from` to the version served now, if one is encoded
    /// already (and compressed, when asked for and worth it).
    fn encoded_delta(&self, from: &str, gzip: bool) -> Option<(String, Bytes, bool)> {
        let to = self.store.current_version()?;
        let slot = self.delta.lock().unwrap_or_else(|p| p.into_inner());
        let e = slot
            .as_ref()
            .filter(|e| e.key == Which::Delta(from.to_owned(), to))?;
        let (version, plain) = e.plain.get()?;
        if !gzip || plain.len() < COMPRESS_FROM {
            return Some((version.clone(), plain.clone(), false));
        }
        Some((version.clone(), e.gzip.get()?.clone(), true))
    }

    /// A full bundle of `loaded`'s generation and the version it brings
    /// a follower to, encoded (and compressed) once per generation. One
    /// encoded at an earlier version of the same generation is as good:
    /// the follower takes the writes since in its next poll, so a stream
    /// of writes does not make every follower that needs the document cost
    /// an encoding of it.
    async fn full(
        &self,
        loaded: &Arc<Loaded>,
        writes: Vec<crate::snapshot::Write>,
        gzip: bool,
    ) -> Result<(String, Bytes, bool), ApiError> {
        let base = loaded.base.clone().ok_or_else(no_base)?;
        let encoded = Encoded::slot(&self.full, Which::Full(loaded.meta.generation));
        let key = self.key.clone();
        let version = self.version(loaded);
        encoded
            .body(gzip, move || {
                let plain = bundle::encode(
                    &key,
                    Kind::Full,
                    &version,
                    None,
                    &base.environment,
                    Some(&base.bytes),
                    &writes,
                );
                (version, Bytes::from(plain))
            })
            .await
    }
}

fn answer(
    age: Duration,
    status: StatusCode,
    version: &str,
    kind: Option<Kind>,
    body: Bytes,
    compressed: bool,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(kind) = kind {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(bundle::MEDIA_TYPE),
        );
        h.insert("x-pdp-bundle", HeaderValue::from_static(kind.label()));
    }
    if compressed {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(AGE_HEADER, HeaderValue::from(age.as_millis() as u64));
    resp
}

fn gzipped(bytes: &[u8]) -> Bytes {
    use std::io::Write;
    let mut gz = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(bytes);
    Bytes::from(gz.finish().unwrap_or_default())
}

fn not_ready(why: &str) -> ApiError {
    ApiError::NotReady(why.to_owned())
}

fn no_base() -> ApiError {
    not_ready("the serving snapshot was not loaded from a control-plane sync, a backup or an upstream, so there is no bundle of it")
}

/// The first entity tag of `If-None-Match`, unquoted (weak or strong).
fn if_none_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let first = v.split(',').next()?.trim();
    let first = first.strip_prefix("W/").unwrap_or(first);
    Some(first.trim_matches('"').to_owned())
}

/// `Prefer: wait=N` (RFC 7240), at most [`MAX_WAIT`]; a preference that
/// does not parse is ignored, as the RFC asks.
fn prefer_wait(headers: &HeaderMap) -> Duration {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()
        .map_or(Duration::ZERO, |s| Duration::from_secs(s).min(MAX_WAIT))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn request_headers_are_read_as_their_rfcs_say() {
        assert_eq!(
            prefer_wait(&headers(&[("prefer", "wait=30")])),
            Duration::from_secs(30)
        );
        assert_eq!(
            prefer_wait(&headers(&[("prefer", "respond-async, wait=600")])),
            MAX_WAIT
        );
        assert_eq!(
            prefer_wait(&headers(&[("prefer", "wait=soon")])),
            Duration::ZERO
        );
        assert_eq!(prefer_wait(&headers(&[])), Duration::ZERO);
        assert_eq!(
            if_none_match(&headers(&[("if-none-match", "W/\"a.1.2\", \"b\"")])).as_deref(),
            Some("a.1.2")
        );
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "br, gzip;q=0.5"
        )])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
    }
}
