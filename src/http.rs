//! The HTTP edge: accept, route and decode, decide, encode.
//!
//! One hyper server answers the Permit PDP API, the AuthZEN API, health,
//! readiness and metrics on one port, over HTTP/1.1 (keep-alive) and HTTP/2
//! (h2c). Routing is a plain `match` on the path. Every failure is an
//! [`ApiError`], turned into a response in one place ([`ApiError::status`]
//! and [`error_response`]): bad input gets a 4xx with a JSON body naming
//! the problem; nothing a client sends can make the server panic or answer 500.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::authzen;
use crate::decide::{self, AllowedQuery};
use crate::metrics::{Endpoint, Metrics};
use crate::store::{Loaded, Source, Store};
use crate::sync::SyncState;

/// What the HTTP layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub api_key: Option<String>,
    pub debug: bool,
    pub max_body_bytes: usize,
    pub max_bulk_items: usize,
    /// A connection with no request in flight that begins none for this
    /// long, or whose request's body stops arriving for this long, is
    /// closed (see `idle_watchdog`).
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_staleness: Option<Duration>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            api_key: None,
            debug: false,
            max_body_bytes: 1 << 20,
            max_bulk_items: 10_000,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            max_staleness: None,
        }
    }
}

/// Shared state of the server: cheap to clone behind an `Arc`.
pub struct App {
    pub store: Arc<Store>,
    pub settings: HttpSettings,
    pub metrics: Arc<Metrics>,
    /// Woken by `POST /sync` (a sync, or a reload of the data file).
    pub refresh: Arc<Notify>,
    /// The sync task's status, shown by `/health` when syncing.
    pub sync_state: Option<Arc<SyncState>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    #[error("Missing Authorization header")]
    MissingAuth,
    #[error("You are not authorized to access this resource, please check your API key.")]
    BadKey,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding {0} is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{count} items in one request; the limit is {limit}")]
    TooManyItems { count: usize, limit: usize },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("request body has the wrong shape: {0}")]
    WrongShape(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Authzen(#[from] authzen::AuthzenError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MissingAuth => StatusCode::UNAUTHORIZED,
            ApiError::BadKey => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BodyTooLarge(_) | ApiError::TooManyItems { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BadJson(_) | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::Authzen(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::WrongShape(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::MissingAuth => "missing_authorization",
            ApiError::BadKey => "invalid_api_key",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::TooManyItems { .. } => "too_many_items",
            ApiError::BadJson(_) => "invalid_json",
            ApiError::WrongShape(_) => "invalid_request",
            ApiError::NotReady(_) => "not_ready",
            ApiError::BodyRead(_) => "body_read_error",
            ApiError::Authzen(_) => "invalid_request",
        }
    }
}

/// Decodes a query, answers it with `f`, and encodes the answer.
fn answer<'b, Q: Deserialize<'b>, R: Serialize>(
    body: &'b [u8],
    f: impl FnOnce(&Q) -> R,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let q: Q = decode(body)?;
    Ok(json_response(StatusCode::OK, &f(&q)))
}

/// Decodes a JSON body: syntax errors (and bytes that are not UTF-8) are
/// 400, shape errors 422.
///
/// The body is checked as UTF-8 once, then parsed as `str`: serde_json then
/// borrows every string as it is instead of validating each one, which
/// made a 100-check bulk body decode 15-25% faster (criterion,
/// `bulk100/*/decode_only`).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadJson(format!("the body is not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::WrongShape(e.to_string()),
        _ => ApiError::BadJson(e.to_string()),
    })
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            warn!(error = %e, "failed to encode a response");
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"{\"error\":\"internal\",\"detail\":\"internal error\"}",
            )));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

const ALLOW_BODY: &[u8] = b"{\"allow\":true,\"result\":true}";
const DENY_BODY: &[u8] = b"{\"allow\":false,\"result\":false}";

fn static_json(body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let status = e.status();
    let body = match e {
        // Carries the field at fault as well.
        ApiError::Authzen(az) => az.to_body(),
        _ => json!({"error": e.code(), "detail": e.to_string()}),
    };
    let mut resp = json_response(status, &body);
    if let ApiError::MethodNotAllowed { allow, .. } = e {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Allowed,
    Bulk,
    AllTenants,
    UserPermissions,
    AuthorizedUsers,
    UserTenants,
    Sync,
    Health,
    Ready,
    Live,
    Metrics,
    AuthzenEvaluation,
    AuthzenEvaluations,
    AuthzenSearchSubject,
    AuthzenSearchResource,
    AuthzenSearchAction,
    AuthzenConfiguration,
}

/// Route labels for metrics, indexed by `Route as usize`; the last is for
/// requests that matched no route.
pub const ROUTE_LABELS: &[&str] = &[
    "/allowed",
    "/allowed/bulk",
    "/allowed/all-tenants",
    "/user-permissions",
    "/authorized_users",
    "/user-tenants",
    "/sync",
    "/health",
    "/ready",
    "/livez",
    "/metrics",
    "/access/v1/evaluation",
    "/access/v1/evaluations",
    "/access/v1/search/subject",
    "/access/v1/search/resource",
    "/access/v1/search/action",
    "/.well-known/authzen-configuration",
    "unmatched",
];

impl Route {
    fn find(method: &Method, path: &str) -> Result<Route, ApiError> {
        let (route, allow) = match path {
            "/allowed" => (Route::Allowed, "POST"),
            "/allowed/bulk" => (Route::Bulk, "POST"),
            "/allowed/all-tenants" => (Route::AllTenants, "POST"),
            "/user-permissions" => (Route::UserPermissions, "POST"),
            "/authorized_users" => (Route::AuthorizedUsers, "POST"),
            "/user-tenants" => (Route::UserTenants, "POST"),
            "/sync" => (Route::Sync, "POST"),
            "/health" | "/healthy" => (Route::Health, "GET"),
            "/ready" => (Route::Ready, "GET"),
            "/livez" => (Route::Live, "GET"),
            "/metrics" => (Route::Metrics, "GET"),
            "/access/v1/evaluation" => (Route::AuthzenEvaluation, "POST"),
            "/access/v1/evaluations" => (Route::AuthzenEvaluations, "POST"),
            "/access/v1/search/subject" => (Route::AuthzenSearchSubject, "POST"),
            "/access/v1/search/resource" => (Route::AuthzenSearchResource, "POST"),
            "/access/v1/search/action" => (Route::AuthzenSearchAction, "POST"),
            // Also the per-tenant form `/.well-known/authzen-configuration/<tenant>`.
            p if p == "/.well-known/authzen-configuration"
                || p.starts_with("/.well-known/authzen-configuration/") =>
            {
                (Route::AuthzenConfiguration, "GET")
            }
            _ => return Err(ApiError::NotFound(path.to_owned())),
        };
        let ok = match allow {
            "GET" => method == Method::GET || method == Method::HEAD,
            _ => method == Method::POST,
        };
        if !ok {
            return Err(ApiError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
                allow,
            });
        }
        Ok(route)
    }

    fn label(self) -> &'static str {
        ROUTE_LABELS[self as usize]
    }

    /// Routes that need no caller key: probes, metrics, and AuthZEN
    /// metadata (a PEP reads it before it has credentials).
    fn public(self) -> bool {
        matches!(
            self,
            Route::Health
                | Route::Ready
                | Route::Live
                | Route::Metrics
                | Route::AuthzenConfiguration
        )
    }

    fn authzen_op(self) -> Option<authzen::Op> {
        Some(match self {
            Route::AuthzenEvaluation => authzen::Op::Evaluation,
            Route::AuthzenEvaluations => authzen::Op::Evaluations,
            Route::AuthzenSearchSubject => authzen::Op::SearchSubject,
            Route::AuthzenSearchResource => authzen::Op::SearchResource,
            Route::AuthzenSearchAction => authzen::Op::SearchAction,
            _ => return None,
        })
    }
}

impl App {
    /// Bearer-key check (contract §1.2), in constant time.
    fn authenticate<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let Some(expected) = &self.settings.api_key else {
            return Ok(());
        };
        let value = req
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingAuth)?
            .as_bytes();
        if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            return Err(ApiError::BadKey);
        }
        if bool::from(value[7..].ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::BadKey)
        }
    }

    /// The snapshot to decide against, or why there is none to trust.
    fn snapshot(&self) -> Result<arc_swap::Guard<Option<Arc<Loaded>>>, ApiError> {
        let loaded = self.store.current();
        if loaded.is_none() {
            return Err(ApiError::NotReady(
                "no policy snapshot has been loaded yet".into(),
            ));
        }
        if let Some(max) = self.settings.max_staleness {
            let age = self.store.freshness_age();
            if age > max {
                return Err(ApiError::NotReady(format!(
                    "the policy snapshot was last confirmed {}s ago, over the {}s limit (PDP_MAX_STALENESS)",
                    age.as_secs(),
                    max.as_secs()
                )));
            }
        }
        Ok(loaded)
    }

    async fn handle(&self, req: Request<Incoming>, progress: &Progress) -> Response<Full<Bytes>> {
        let request_id = req.headers().get("x-request-id").cloned();
        let head = req.method() == Method::HEAD;
        let (label, mut resp) = match Route::find(req.method(), req.uri().path()) {
            Ok(route) => {
                let resp = match self.dispatch(route, req, progress).await {
                    Ok(resp) => resp,
                    Err(e) => error_response(&e),
                };
                (route as usize, resp)
            }
            Err(e) => (ROUTE_LABELS.len() - 1, error_response(&e)),
        };
        self.metrics.http(label, resp.status().as_u16());
        if let Some(id) = request_id {
            resp.headers_mut().insert("x-request-id", id);
        }
        if head {
            // The headers of the GET answer and no body: hyper leaves the
            // body out over HTTP/1 but would send it over HTTP/2, where a
            // body on a HEAD answer is a protocol error.
            let len = std::mem::take(resp.body_mut()).collect().await;
            let len = len.map_or(0, |b| b.to_bytes().len());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        resp
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        progress: &Progress,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        if !route.public() {
            self.authenticate(&req)?;
        }
        match route {
            Route::Health => Ok(self.health(true)),
            Route::Ready => Ok(self.health(false)),
            Route::Live => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Route::Metrics => {
                let mut resp =
                    Response::new(Full::new(Bytes::from(self.metrics.render(&self.store))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(resp)
            }
            Route::AuthzenConfiguration => {
                // HTTP/2 names the server in the URI (`:authority`), HTTP/1.1
                // in `Host`; a value that is no authority is not echoed.
                let authority = req.uri().authority().cloned().or_else(|| {
                    let host = req.headers().get(header::HOST)?.to_str().ok()?;
                    host.parse::<http::uri::Authority>().ok()
                });
                let host = authority.as_ref().map_or("localhost:7766", |a| a.as_str());
                let https = req
                    .headers()
                    .get("x-forwarded-proto")
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
                let scheme = if https { "https" } else { "http" };
                let meta = authzen::configuration(&format!("{scheme}://{host}"));
                Ok(json_response(StatusCode::OK, &meta))
            }
            Route::Sync => {
                self.refresh.notify_one();
                Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"status": "refresh requested"}),
                ))
            }
            _ => {
                let body = self.read_json_body(req, progress).await?;
                let guard = self.snapshot()?;
                match guard.as_deref() {
                    Some(loaded) => self.decide(route, loaded, &body),
                    None => Err(ApiError::NotReady(
                        "no policy snapshot has been loaded yet".into(),
                    )),
                }
            }
        }
    }

    fn decide(
        &self,
        route: Route,
        loaded: &Loaded,
        body: &[u8],
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let snap = &loaded.snapshot;
        let debug = self.settings.debug;
        let started = Instant::now();
        let ok = |endpoint: Endpoint, allowed: u64, denied: u64, resp| {
            self.metrics
                .decisions(endpoint, allowed, denied, started.elapsed());
            Ok(resp)
        };
        match route {
            Route::Allowed => {
                let q: AllowedQuery = decode(body)?;
                let d = decide::check(snap, &q);
                let resp = if debug {
                    json_response(StatusCode::OK, &d.to_response(debug))
                } else {
                    // The two answers without debug are constants.
                    static_json(if d.allow { ALLOW_BODY } else { DENY_BODY })
                };
                ok(Endpoint::Allowed, d.allow as u64, !d.allow as u64, resp)
            }
            Route::Bulk => {
                let qs: Vec<AllowedQuery> = decode(body)?;
                if qs.len() > self.settings.max_bulk_items {
                    return Err(ApiError::TooManyItems {
                        count: qs.len(),
                        limit: self.settings.max_bulk_items,
                    });
                }
                let decisions = decide::check_bulk(snap, &qs);
                let allowed = decisions.iter().filter(|d| d.allow).count() as u64;
                let resp = if debug {
                    let allow: Vec<_> = decisions.iter().map(|d| d.to_response(true)).collect();
                    json_response(StatusCode::OK, &json!({ "allow": allow }))
                } else {
                    // Written directly from the two constant answers: no
                    // intermediate JSON value for a hundred checks.
                    let mut out = Vec::with_capacity(12 + decisions.len() * (DENY_BODY.len() + 1));
                    out.extend_from_slice(b"{\"allow\":[");
                    for (i, d) in decisions.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(if d.allow { ALLOW_BODY } else { DENY_BODY });
                    }
                    out.extend_from_slice(b"]}");
                    let mut resp = Response::new(Full::new(Bytes::from(out)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                };
                ok(
                    Endpoint::Bulk,
                    allowed,
                    decisions.len() as u64 - allowed,
                    resp,
                )
            }
            Route::AllTenants => {
                let q: AllowedQuery = decode(body)?;
                let r = decide::allowed_tenants(snap, &q);
                let n = r.allowed_tenants.len() as u64;
                ok(
                    Endpoint::AllTenants,
                    n,
                    (n == 0) as u64,
                    json_response(StatusCode::OK, &r),
                )
            }
            Route::UserPermissions => {
                let resp = answer(body, |q: &decide::UserPermissionsQuery| {
                    decide::user_permissions(snap, q)
                })?;
                ok(Endpoint::UserPermissions, 0, 0, resp)
            }
            Route::AuthorizedUsers => {
                let resp = answer(body, |q: &decide::AuthorizedUsersQuery| {
                    decide::authorized_users(snap, q)
                })?;
                ok(Endpoint::AuthorizedUsers, 0, 0, resp)
            }
            Route::UserTenants => {
                let resp = answer(body, |q: &decide::UserTenantsQuery| {
                    decide::user_tenants(snap, q)
                })?;
                ok(Endpoint::UserTenants, 0, 0, resp)
            }
            _ => match route.authzen_op() {
                Some(op) => self.authzen(op, snap, body, started),
                None => Err(ApiError::NotFound(route.label().to_owned())),
            },
        }
    }

    fn authzen(
        &self,
        op: authzen::Op,
        snap: &crate::snapshot::Snapshot,
        body: &[u8],
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let limits = authzen::Limits {
            max_batch_items: self.settings.max_bulk_items,
        };
        let answer = authzen::handle(op, snap, body, &limits)?;
        let (endpoint, allowed, denied) = match &answer {
            authzen::Response::Evaluation(r) => (
                Endpoint::AuthzenEvaluation,
                r.decision as u64,
                !r.decision as u64,
            ),
            authzen::Response::Evaluations(r) => {
                let allowed = r.evaluations.iter().filter(|e| e.decision).count() as u64;
                (
                    Endpoint::AuthzenEvaluations,
                    allowed,
                    r.evaluations.len() as u64 - allowed,
                )
            }
            authzen::Response::Search(_) => (Endpoint::AuthzenSearch, 0, 0),
        };
        self.metrics
            .decisions(endpoint, allowed, denied, started.elapsed());
        let mut resp = Response::new(Full::new(Bytes::from(answer.to_json())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }

    /// Checks the content type and reads the body within the size cap; the
    /// connection's watchdog cuts off a body that stops arriving.
    async fn read_json_body(
        &self,
        req: Request<Incoming>,
        progress: &Progress,
    ) -> Result<Bytes, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json")
                    || (v.len() > 5 && v[v.len() - 5..].eq_ignore_ascii_case("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        // A compressed body would otherwise fail as "not UTF-8" or as JSON.
        if let Some(coding) = req.headers().get(header::CONTENT_ENCODING) {
            let coding = String::from_utf8_lossy(coding.as_bytes());
            if !coding.trim().eq_ignore_ascii_case("identity") {
                return Err(ApiError::UnsupportedEncoding(coding.into_owned()));
            }
        }
        let _reading = BodyRead::begin(progress);
        read_body(req.into_body(), self.settings.max_body_bytes).await
    }

    fn health(&self, detailed: bool) -> Response<Full<Bytes>> {
        let loaded = self.store.load();
        let fresh = self.snapshot().is_ok();
        let mut body = match &loaded {
            Some(l) => {
                let age = SystemTime::now()
                    .duration_since(l.meta.loaded_at)
                    .unwrap_or_default();
                json!({
                    "status": if fresh { "ok" } else { "stale" },
                    "snapshot": {
                        "source": l.meta.source,
                        "content_hash": l.meta.content_hash,
                        "age_seconds": age.as_secs(),
                        "last_confirmed_seconds_ago": self.store.freshness_age().as_secs(),
                        "objects": l.snapshot.counts(),
                    },
                })
            }
            None => json!({"status": "not_ready", "snapshot": null,
                           "detail": "no policy snapshot has been loaded yet"}),
        };
        if loaded
            .as_ref()
            .is_some_and(|l| l.meta.source == Source::Embedded)
        {
            body["detail"] = json!(
                "serving the embedded example environment, not your policy: \
                 set PDP_API_KEY or PDP_DATA_FILE"
            );
        }
        if detailed {
            if let Some(state) = &self.sync_state {
                body["sync"] = serde_json::to_value(state.status()).unwrap_or_default();
            }
        }
        let status = if fresh {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}

/// Requests a connection has begun and finished, and the bodies it is
/// reading: its service bumps them, its [`idle_watchdog`] reads them. Over
/// HTTP/1 both run in the connection's task, so the atomics are
/// uncontended.
#[derive(Default)]
struct Progress {
    begun: AtomicU64,
    finished: AtomicU64,
    reading: AtomicU64,
}

impl Progress {
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.begun.load(Ordering::Relaxed),
            self.finished.load(Ordering::Relaxed),
            self.reading.load(Ordering::Relaxed),
        )
    }
}

/// A request body being read; no longer once dropped (read, refused, or
/// the request dropped).
struct BodyRead<'a>(&'a Progress);

impl BodyRead<'_> {
    fn begin(progress: &Progress) -> BodyRead<'_> {
        progress.reading.fetch_add(1, Ordering::Relaxed);
        BodyRead(progress)
    }
}

impl Drop for BodyRead<'_> {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request in flight; counted finished when dropped, so a request whose
/// future is dropped (client gone, HTTP/2 stream reset) is finished too.
struct InFlight(Arc<Progress>);

impl InFlight {
    fn begin(progress: Arc<Progress>) -> InFlight {
        progress.begun.fetch_add(1, Ordering::Relaxed);
        InFlight(progress)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Completes once the connection has made no progress for `limit` to 1.5 ×
/// `limit` while it had no request in flight, or while a request in flight
/// waited for its body: a client that connects and sends its request head
/// or body too slowly (or not at all), or a keep-alive connection left
/// idle. A request whose body has arrived is never cut off, however long
/// it takes to answer. It looks every half `limit`, so it costs one timer
/// tick per half period, not per request. A request counts as finished
/// once its answer is built: a client too slow to read an answer for
/// `limit` is cut off as well.
async fn idle_watchdog(progress: &Progress, limit: Duration) {
    let half = limit / 2;
    let mut last = progress.counts();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(half).await;
        let now = progress.counts();
        let (begun, finished, reading) = now;
        if now != last || (begun != finished && reading == 0) {
            last = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        // Two quiet looks: the last request ended at least one whole half
        // period before the first of them.
        if quiet == 2 {
            return;
        }
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    // A declared length over the cap is refused before any of it is read.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(ApiError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge(limit)),
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish within the grace period.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    // HTTP/1 gets no timer: hyper's own header read timeout allocates, arms
    // and drops a runtime timer for every request head (the timer wheel's
    // lock each way), ~1 us of CPU per request here. Each connection's
    // `idle_watchdog` enforces the limit with one timer tick per half period.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let idle_limit = app.settings.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let progress = Arc::new(Progress::default());
                let service = service_fn({
                    let (app, progress) = (app.clone(), progress.clone());
                    move |req| {
                        let app = app.clone();
                        let in_flight = InFlight::begin(progress.clone());
                        async move {
                            let resp = app.handle(req, &in_flight.0).await;
                            drop(in_flight);
                            Ok::<_, Infallible>(resp)
                        }
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    tokio::select! {
                        ended = conn => if let Err(e) = ended {
                            debug!(%peer, error = %e, "connection ended with an error");
                        },
                        () = idle_watchdog(&progress, idle_limit) => {
                            debug!(%peer, limit = ?idle_limit, "closing a connection that sent no complete request in time");
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let in_flight = graceful.count();
    info!(connections = in_flight, "draining");
    tokio::select! {
        _ = graceful.shutdown() => info!("drained"),
        _ = tokio::time::sleep(app.settings.shutdown_grace) => {
            warn!(grace = ?app.settings.shutdown_grace, "grace period over; closing remaining connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decision, Reason};

    #[test]
    fn constant_answers_match_the_encoded_ones() {
        for (allow, body) in [(true, ALLOW_BODY), (false, DENY_BODY)] {
            let d = Decision {
                allow,
                sources: 0,
                reason: Reason::Allow,
            };
            assert_eq!(serde_json::to_vec(&d.to_response(false)).unwrap(), body);
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    /// Awaits `watchdog` and checks that it fired 1 to 1.5 limits after the
    /// connection fell quiet, on the paused test clock.
    async fn closes_in_time(watchdog: impl Future<Output = ()>) {
        let quiet_since = tokio::time::Instant::now();
        watchdog.await;
        let idle = quiet_since.elapsed();
        assert!(
            idle >= LIMIT && idle <= LIMIT * 3 / 2,
            "closed after {idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_limit() {
        closes_in_time(idle_watchdog(&Progress::default(), LIMIT)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_off() {
        let progress = Arc::new(Progress::default());
        let in_flight = InFlight::begin(progress.clone());
        let watchdog = idle_watchdog(&progress, LIMIT);
        tokio::pin!(watchdog);
        // A slow request, over ten limits long, and the connection stays. It
        // ends between two of the watchdog's looks, so the order of timers
        // due at the same instant cannot matter.
        let slow = tokio::time::sleep(LIMIT * 10 + Duration::from_millis(1300));
        tokio::select! {
            () = &mut watchdog => panic!("closed with a request in flight"),
            () = slow => {}
        }
        // Once it is answered, the idle time counts from the answer.
        drop(in_flight);
        closes_in_time(watchdog).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_body_stops_coming_is_cut_off() {
        let progress = Arc::new(Progress::default());
        let _in_flight = InFlight::begin(progress.clone());
        let _reading = BodyRead::begin(&progress);
        closes_in_time(idle_watchdog(&progress, LIMIT)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_keep_alive_connection_stays_open() {
        let progress = Arc::new(Progress::default());
        let watchdog = idle_watchdog(&progress, LIMIT);
        tokio::pin!(watchdog);
        // A request every 0.9 limit for twenty limits.
        for _ in 0..22 {
            tokio::select! {
                () = &mut watchdog => panic!("closed a connection in use"),
                () = tokio::time::sleep(LIMIT * 9 / 10) => {}
            }
            drop(InFlight::begin(progress.clone()));
        }
        // Then it falls silent, and is closed.
        closes_in_time(watchdog).await;
    }

    #[test]
    fn route_labels_line_up_with_routes() {
        assert_eq!(Route::Metrics.label(), "/metrics");
        assert_eq!(Route::Allowed.label(), "/allowed");
        assert_eq!(
            Route::AuthzenConfiguration.label(),
            "/.well-known/authzen-configuration"
        );
        assert_eq!(ROUTE_LABELS.len(), Route::AuthzenConfiguration as usize + 2);
    }
}
