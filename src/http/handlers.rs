//! The handlers: authenticate, read and decode the body, decide against one
//! snapshot, encode. [`App::handle`] is generic over the request body, so
//! tests can call it without a socket.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use super::error::{decode, decode_seed, json_bytes, json_response, ApiError};
use super::routes::{Cost, Route};
use super::transport::{BodyRead, Progress};
use crate::authzen;
use crate::config::ApiKey;
use crate::decide::{self, AllowedQuery, Obj};
use crate::decisions::{DecisionLog, DECISION_ID_HEADER};
use crate::facts::{FactsProxy, Wait};
use crate::metrics::Metrics;
use crate::store::{Loaded, Source, Store};
use crate::sync::{CallLog, Hub, SyncState};

/// What the HTTP layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub api_key: Option<ApiKey>,
    pub debug: bool,
    pub max_body_bytes: usize,
    pub max_bulk_items: usize,
    /// Connections served at once (see `transport::serve`).
    pub max_connections: usize,
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
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            max_staleness: None,
        }
    }
}

/// Where the requests that can run long are decided: listings, and batches
/// with a large body. They leave the async workers (`block_in_place`), at
/// most `concurrency` at a time, so that the probes and the single checks
/// on the same workers are answered meanwhile: a liveness probe must not
/// time out behind two listings, even with one worker thread. A request
/// waiting for its turn waits asynchronously, holding no thread.
pub struct HeavyWork {
    permits: Semaphore,
}

impl HeavyWork {
    /// A request with a body over this is heavy, unless it is one check:
    /// about a thousand checks, a millisecond of work.
    pub const BODY_BYTES: usize = 64 << 10;
    /// A listing estimated at more rows and checks than this is heavy
    /// (`decide::*_work`). Below it, moving the work costs more than the
    /// work: a thread hand-off is tens of microseconds on one core.
    pub const LISTING_WORK: usize = 10_000;

    pub fn new(concurrency: usize) -> Self {
        HeavyWork {
            permits: Semaphore::new(concurrency.max(1)),
        }
    }

    async fn permit(&self) -> SemaphorePermit<'_> {
        // Never closed: `acquire` fails only on a closed semaphore.
        self.permits
            .acquire()
            .await
            .expect("the heavy-work semaphore is never closed")
    }

    /// A turn for heavy work, waited for; none needed for light work.
    async fn turn(&self, heavy: bool) -> Option<SemaphorePermit<'_>> {
        if heavy {
            Some(self.permit().await)
        } else {
            None
        }
    }

    /// `f`, off the worker if it is heavy.
    fn run<R>(&self, heavy: bool, f: impl FnOnce() -> R) -> R {
        if heavy {
            self.offload(f)
        } else {
            f()
        }
    }

    /// Runs `f` off the async worker. A current-thread runtime (a test's)
    /// has no worker to spare, so there it runs in place.
    fn offload<R>(&self, f: impl FnOnce() -> R) -> R {
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
            _ => f(),
        }
    }
}

impl Default for HeavyWork {
    /// As many at once as there are cores.
    fn default() -> Self {
        HeavyWork::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
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
    pub heavy: HeavyWork,
    /// The facts proxy, when syncing from a control plane.
    pub facts: Option<Arc<FactsProxy>>,
    /// Where decisions are logged, when they are.
    pub decision_log: Option<Arc<DecisionLog>>,
    /// Serves followers, with `PDP_HUB`.
    pub hub: Option<Arc<Hub>>,
}

/// Decodes a query, answers it with `f`, and encodes the answer.
fn answer<'b, Q: Deserialize<'b>, R: Serialize>(
    body: &'b [u8],
    f: impl FnOnce(&Q) -> R,
) -> Result<Bytes, ApiError> {
    let Obj(q): Obj<Q> = decode(body)?;
    to_json(&f(&q))
}

/// An answer's JSON. Our answers are maps with string keys and plain
/// values, which always encode; a failure would be a bug, answered 500.
fn to_json<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::Encode(e.to_string()))
}

const ALLOW_BODY: &[u8] = b"{\"allow\":true,\"result\":true}";
const DENY_BODY: &[u8] = b"{\"allow\":false,\"result\":false}";

impl App {
    /// Bearer-key check (docs/contract.md, Authentication), in constant time.
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
        if expected.matches(&value[7..]) {
            Ok(())
        } else {
            Err(ApiError::BadKey)
        }
    }

    /// The snapshot to decide against, or why there is none to trust.
    fn snapshot(&self) -> Result<arc_swap::Guard<Option<Arc<Loaded>>>, ApiError> {
        let loaded = self.store.current();
        if loaded.is_none() {
            return Err(not_loaded());
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

    /// Answers one request. Generic over the body, so a test can call it
    /// with a `Full<Bytes>` and no socket.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve_request(req, &Progress::default(), false).await
    }

    /// [`App::handle`], reporting to the connection's watchdog while the
    /// body is read. With `probes_only` (a connection past the cap), only
    /// `/livez`, `/ready` and `/health` are answered; the rest get a 503.
    pub(super) async fn serve_request<B>(
        &self,
        req: Request<B>,
        progress: &Progress,
        probes_only: bool,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request_id = req.headers().get("x-request-id").cloned();
        let head = req.method() == Method::HEAD;
        let found = Route::find(req.method(), req.uri().path()).and_then(|route| {
            let probe = matches!(route, Route::Live | Route::Ready | Route::Health);
            if probes_only && !probe {
                return Err(ApiError::TooManyConnections);
            }
            Ok(route)
        });
        let (label, mut resp) = match found {
            Ok(route) => {
                let resp = match self.dispatch(route, req, progress).await {
                    Ok(resp) => resp,
                    Err(e) => e.to_response(),
                };
                (Some(route), resp)
            }
            Err(e) => (None, e.to_response()),
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

    async fn dispatch<B>(
        &self,
        route: Route,
        req: Request<B>,
        progress: &Progress,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let spec = route.spec();
        if spec.needs_key {
            self.authenticate(&req)?;
        }
        if route == Route::LocalRoleAssignments {
            return self.local_role_assignments(req.uri().query()).await;
        }
        if route == Route::Facts {
            let facts = self.facts.as_ref().ok_or(ApiError::NoControlPlane)?;
            let (parts, body) = req.into_parts();
            // The wait headers are checked before anything is read or sent.
            Wait::from_headers(&parts.headers, Duration::ZERO)?;
            let body = {
                let _reading = BodyRead::begin(progress);
                read_body(body, self.settings.max_body_bytes).await?
            };
            return facts
                .handle(&parts.method, &parts.uri, &parts.headers, body)
                .await;
        }
        if route == Route::Snapshot {
            let hub = self.hub.as_ref().ok_or(ApiError::NotAHub(
                "this PDP does not serve followers; start it with PDP_HUB=true",
            ))?;
            return hub.serve(req.headers()).await;
        }
        if route == Route::DecisionLogIngress {
            return self.ingest(req, progress).await;
        }
        let Some(endpoint) = spec.decisions else {
            return Ok(self.serve(route, &req));
        };
        let body = self.read_json_body(req, progress).await?;
        let heavy = self.is_heavy(route, spec.cost, &body)?;
        let _turn = self.heavy.turn(heavy).await;
        let guard = self.snapshot()?;
        let loaded = guard.as_deref().ok_or_else(not_loaded)?;
        let started = Instant::now();
        let (answer, allowed, denied) = self
            .heavy
            .run(heavy, || self.decide(route, loaded, &body))?;
        let took = started.elapsed();
        self.metrics.decisions(endpoint, allowed, denied, took);
        let id = self
            .decision_log
            .as_ref()
            .map(|log| log.record(endpoint, &body, &answer, took));
        let mut resp = json_bytes(answer);
        if let Some(id) = id {
            resp.headers_mut().insert(DECISION_ID_HEADER, id);
        }
        Ok(resp)
    }

    /// `POST /v1/decision_logs/ingress` at a hub: a follower's decision
    /// logs, queued to ship with this PDP's own.
    async fn ingest<B>(
        &self,
        req: Request<B>,
        progress: &Progress,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (Some(_), Some(log)) = (&self.hub, &self.decision_log) else {
            return Err(ApiError::NotAHub(
                "this PDP takes no followers' decision logs: it needs PDP_HUB=true and its own decision logs on",
            ));
        };
        let (parts, body) = req.into_parts();
        let gzipped = match parts.headers.get(header::CONTENT_ENCODING) {
            None => false,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
            Some(v) => {
                return Err(ApiError::UnsupportedEncoding(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ))
            }
        };
        let body = {
            let _reading = BodyRead::begin(progress);
            read_body(body, self.settings.max_body_bytes).await?
        };
        let log = log.clone();
        let queued = tokio::task::spawn_blocking(move || log.ingest(&body, gzipped))
            .await
            .map_err(|e| ApiError::Encode(e.to_string()))?
            .map_err(|detail| ApiError::WrongShape {
                field: None,
                detail,
            })?;
        Ok(json_response(StatusCode::OK, &json!({"queued": queued})))
    }

    /// Whether a request goes to [`HeavyWork`]: by its body's size, and a
    /// listing by what it asks of the snapshot. A body that does not decode
    /// is not heavy: deciding it answers the 4xx.
    fn is_heavy(&self, route: Route, cost: Cost, body: &[u8]) -> Result<bool, ApiError> {
        match cost {
            Cost::Small => return Ok(false),
            _ if body.len() > HeavyWork::BODY_BYTES => return Ok(true),
            Cost::PerItem => return Ok(false),
            Cost::Listing => {}
        }
        let guard = self.snapshot()?;
        let Some(loaded) = guard.as_deref() else {
            return Ok(false);
        };
        let snap = &loaded.snapshot;
        fn work<'b, Q: Deserialize<'b>>(body: &'b [u8], f: impl FnOnce(&Q) -> usize) -> usize {
            decode::<Obj<Q>>(body).map_or(0, |Obj(q)| f(&q))
        }
        let work = match route {
            Route::UserPermissions => work(body, |q| decide::user_permissions_work(snap, q)),
            Route::AllTenants => work(body, |q| decide::allowed_tenants_work(snap, q)),
            Route::UserTenants => work(body, |q| decide::user_tenants_work(snap, q)),
            Route::AuthorizedUsers => work(body, |q| decide::authorized_users_work(snap, q)),
            // The subject and resource searches scan every user, or every
            // instance of a type, by definition; the action search, a few
            // actions and rarely asked, goes with them.
            _ => usize::MAX,
        };
        Ok(work > HeavyWork::LISTING_WORK)
    }

    /// `GET /local/role_assignments`: page form (`page`, `per_page`) → a
    /// bare array; cursor form (`limit`, `cursor`) → `{data, pagination}`.
    async fn local_role_assignments(
        &self,
        query: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let params = ListParams::parse(query.unwrap_or(""))?;
        let filter = params.filter();
        let heavy = {
            let guard = self.snapshot()?;
            guard.as_deref().is_some_and(|l| {
                decide::local_role_assignments_work(&l.snapshot, &filter) > HeavyWork::LISTING_WORK
            })
        };
        let _turn = self.heavy.turn(heavy).await;
        let guard = self.snapshot()?;
        let loaded = guard.as_deref().ok_or_else(not_loaded)?;
        let version = snapshot_version(loaded);
        let run = |offset, limit| {
            self.heavy.run(heavy, || {
                decide::local_role_assignments(&loaded.snapshot, &filter, offset, limit)
            })
        };
        match params.paging {
            Paging::Page { page, per_page } => {
                let offset = (page - 1).saturating_mul(per_page);
                let (items, _) = run(offset, per_page);
                Ok(json_response(StatusCode::OK, &items))
            }
            Paging::Cursor { ref cursor, limit } => {
                let offset = match cursor {
                    None => 0,
                    Some(c) => {
                        let (v, offset) = c.split_once('.').ok_or_else(bad_cursor)?;
                        if v != version {
                            return Err(ApiError::ExpiredCursor);
                        }
                        offset.parse::<usize>().map_err(|_| bad_cursor())?
                    }
                };
                let (items, more) = run(offset, limit);
                let next = more.then(|| format!("{version}.{}", offset + items.len()));
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"data": items, "pagination": {"cursor": next, "hasMore": more}}),
                ))
            }
        }
    }

    /// The routes that read no body and make no decision.
    fn serve<B>(&self, route: Route, req: &Request<B>) -> Response<Full<Bytes>> {
        match route {
            Route::Health | Route::Ready => {
                // Probes carry no key: they get the status alone. The detail
                // (sources, paths, counts, sync errors that can name users
                // and the project) is for callers with the key.
                let detail = self.authenticate(req).is_ok();
                self.health(route == Route::Health, detail)
            }
            Route::Live => json_response(StatusCode::OK, &json!({"status": "ok"})),
            Route::Metrics => {
                let mut resp =
                    Response::new(Full::new(Bytes::from(self.metrics.render(&self.store))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
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
                json_response(StatusCode::OK, &meta)
            }
            Route::CallLog
            | Route::Connectivity
            | Route::ConnectivityOn
            | Route::ConnectivityOff => {
                let Some(state) = &self.sync_state else {
                    return ApiError::NoControlPlane.to_response();
                };
                let calls = &state.calls;
                match route {
                    Route::CallLog => json_response(
                        StatusCode::OK,
                        &json!({"capacity": CallLog::CAPACITY, "calls": calls.recent()}),
                    ),
                    Route::ConnectivityOn => json_response(
                        StatusCode::OK,
                        &json!({"enabled": calls.set_connected(true)}),
                    ),
                    Route::ConnectivityOff => json_response(
                        StatusCode::OK,
                        &json!({"enabled": calls.set_connected(false)}),
                    ),
                    _ => json_response(StatusCode::OK, &json!({"enabled": calls.connected()})),
                }
            }
            Route::Sync => {
                self.refresh.notify_one();
                json_response(
                    StatusCode::ACCEPTED,
                    &json!({"status": "refresh requested"}),
                )
            }
            Route::Allowed
            | Route::Bulk
            | Route::AllTenants
            | Route::UserPermissions
            | Route::AuthorizedUsers
            | Route::UserTenants
            | Route::LocalRoleAssignments
            | Route::Facts
            | Route::Snapshot
            | Route::DecisionLogIngress
            | Route::Authzen(_) => unreachable_decision(route).to_response(),
        }
    }

    /// Decides a deciding route's request: the answer, and how many checks
    /// it allowed and denied (for the decision metrics).
    fn decide(
        &self,
        route: Route,
        loaded: &Loaded,
        body: &[u8],
    ) -> Result<(Bytes, u64, u64), ApiError> {
        let snap = &loaded.snapshot;
        let debug = self.settings.debug;
        match route {
            Route::Allowed => {
                let Obj(q): Obj<AllowedQuery> = decode(body)?;
                let d = decide::check(snap, &q);
                let resp = if debug {
                    to_json(&d.to_response(debug))?
                } else {
                    // The two answers without debug are constants.
                    Bytes::from_static(if d.allow { ALLOW_BODY } else { DENY_BODY })
                };
                Ok((resp, d.allow as u64, !d.allow as u64))
            }
            Route::Bulk => {
                let room = decide::BulkChecks::for_body(body.len(), self.settings.max_bulk_items);
                let qs = decode_seed::<_, Vec<Obj<AllowedQuery>>>(body, room)?;
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
                    to_json(&json!({ "allow": allow }))?
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
                    Bytes::from(out)
                };
                Ok((resp, allowed, decisions.len() as u64 - allowed))
            }
            Route::AllTenants => {
                let Obj(q): Obj<AllowedQuery> = decode(body)?;
                let r = decide::allowed_tenants(snap, &q);
                let n = r.allowed_tenants.len() as u64;
                Ok((to_json(&r)?, n, (n == 0) as u64))
            }
            Route::UserPermissions => Ok((
                answer(body, |q: &decide::UserPermissionsQuery| {
                    decide::user_permissions(snap, q)
                })?,
                0,
                0,
            )),
            Route::AuthorizedUsers => Ok((
                answer(body, |q: &decide::AuthorizedUsersQuery| {
                    decide::authorized_users(snap, q)
                })?,
                0,
                0,
            )),
            Route::UserTenants => Ok((
                answer(body, |q: &decide::UserTenantsQuery| {
                    decide::user_tenants(snap, q)
                })?,
                0,
                0,
            )),
            Route::Authzen(op) => self.authzen(op, snap, body),
            Route::Sync
            | Route::Health
            | Route::Ready
            | Route::Live
            | Route::Metrics
            | Route::AuthzenConfiguration
            | Route::LocalRoleAssignments
            | Route::Facts
            | Route::CallLog
            | Route::Connectivity
            | Route::ConnectivityOn
            | Route::ConnectivityOff
            | Route::Snapshot
            | Route::DecisionLogIngress => Err(unreachable_decision(route)),
        }
    }

    fn authzen(
        &self,
        op: authzen::Op,
        snap: &crate::snapshot::Snapshot,
        body: &[u8],
    ) -> Result<(Bytes, u64, u64), ApiError> {
        let limits = authzen::Limits {
            max_batch_items: self.settings.max_bulk_items,
        };
        let answer = authzen::handle(op, snap, body, &limits)?;
        let (allowed, denied) = match &answer {
            authzen::Response::Evaluation(r) => (r.decision as u64, !r.decision as u64),
            authzen::Response::Evaluations(r) => {
                let allowed = r.evaluations.iter().filter(|e| e.decision).count() as u64;
                (allowed, r.evaluations.len() as u64 - allowed)
            }
            authzen::Response::Search(_) => (0, 0),
        };
        Ok((Bytes::from(answer.to_json()), allowed, denied))
    }

    /// Checks the content type and reads the body within the size cap; the
    /// connection's watchdog cuts off a body that stops arriving.
    async fn read_json_body<B>(
        &self,
        req: Request<B>,
        progress: &Progress,
    ) -> Result<Bytes, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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

    fn health(&self, with_sync: bool, detail: bool) -> Response<Full<Bytes>> {
        let loaded = self.store.load();
        let fresh = self.snapshot().is_ok();
        let status = if fresh {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if !detail {
            let word = match (&loaded, fresh) {
                (None, _) => "not_ready",
                (Some(_), true) => "ok",
                (Some(_), false) => "stale",
            };
            return json_response(status, &json!({ "status": word }));
        }
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
                        // With the hub's ETag, where a follower stands.
                        "generation": l.meta.generation,
                        "last_write": l.meta.last_write,
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
        if with_sync {
            if let Some(state) = &self.sync_state {
                body["sync"] = serde_json::to_value(state.status()).unwrap_or_default();
                // The call to look up in Permit's API log, by its request id.
                body["sync"]["last_failed_call"] =
                    serde_json::to_value(state.calls.last_failure()).unwrap_or_default();
                body["sync"]["connectivity"] = json!(state.calls.connected());
            }
            if let Some(log) = &self.decision_log {
                body["decision_logs"] = log.status();
            }
        }
        json_response(status, &body)
    }
}

async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A declared length over the cap is refused before any of it is read.
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge(limit)),
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// A route sent to the wrong half of dispatch: the table
/// ([`Route::spec`]'s `decisions`) and the two matches disagree. Answered
/// as an unknown route rather than a panic.
fn unreachable_decision(route: Route) -> ApiError {
    ApiError::NotFound(route.spec().path.to_owned())
}

fn not_loaded() -> ApiError {
    ApiError::NotReady("no policy snapshot has been loaded yet".into())
}

/// The version a list cursor is tied to: the snapshot's content, so that
/// reloading the same document keeps cursors valid and any change expires
/// them.
fn snapshot_version(loaded: &Loaded) -> String {
    let hash = &loaded.meta.content_hash;
    let base: String = if hash.is_empty() {
        let at = loaded
            .meta
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        format!("t{:x}", at.as_nanos())
    } else {
        hash.chars().take(16).collect()
    };
    // A write through the facts proxy changes the list as much as a sync.
    match loaded.meta.last_write {
        0 => base,
        n => format!("{base}w{n}"),
    }
}

fn bad_cursor() -> ApiError {
    ApiError::BadParam {
        param: "cursor",
        detail: "is not a cursor this PDP gave".into(),
    }
}

/// How a list is paged.
#[derive(Debug, PartialEq)]
enum Paging {
    Page {
        page: usize,
        per_page: usize,
    },
    Cursor {
        cursor: Option<String>,
        limit: usize,
    },
}

/// The query of `GET /local/role_assignments`.
#[derive(Debug)]
struct ListParams {
    user: Option<String>,
    role: Option<String>,
    tenant: Option<String>,
    resource: Option<String>,
    resource_instance: Option<String>,
    paging: Paging,
}

impl ListParams {
    const MAX_CURSOR: usize = 1024;

    fn parse(query: &str) -> Result<ListParams, ApiError> {
        let (mut user, mut role, mut tenant, mut resource, mut resource_instance) =
            (None, None, None, None, None);
        let (mut page, mut per_page, mut limit, mut cursor) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let (param, slot): (&'static str, &mut Option<String>) = match k.as_ref() {
                "user" => ("user", &mut user),
                "role" => ("role", &mut role),
                "tenant" => ("tenant", &mut tenant),
                "resource" => ("resource", &mut resource),
                "resource_instance" => ("resource_instance", &mut resource_instance),
                "page" => ("page", &mut page),
                "per_page" => ("per_page", &mut per_page),
                "limit" => ("limit", &mut limit),
                "cursor" => ("cursor", &mut cursor),
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(ApiError::BadParam {
                    param,
                    detail: "is given more than once".into(),
                });
            }
        }
        let number = |param: &'static str, v: Option<String>, max: usize, default: usize| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::BadParam {
                    param,
                    detail: format!("must be an integer from 1 to {max}, not {v:?}"),
                }),
        };
        let paging = if limit.is_some() || cursor.is_some() {
            if let Some(param) = [("page", &page), ("per_page", &per_page)]
                .into_iter()
                .find_map(|(name, v)| v.is_some().then_some(name))
            {
                return Err(ApiError::BadParam {
                    param,
                    detail:
                        "cannot be combined with `limit` or `cursor`: page by number or by cursor"
                            .into(),
                });
            }
            if let Some(c) = &cursor {
                if c.is_empty() || c.len() > Self::MAX_CURSOR {
                    return Err(bad_cursor());
                }
            }
            Paging::Cursor {
                cursor,
                limit: number("limit", limit, 100, 30)?,
            }
        } else {
            Paging::Page {
                page: number("page", page, usize::MAX, 1)?,
                per_page: number("per_page", per_page, 100, 30)?,
            }
        };
        Ok(ListParams {
            user,
            role,
            tenant,
            resource,
            resource_instance,
            paging,
        })
    }

    fn filter(&self) -> decide::AssignmentFilter<'_> {
        decide::AssignmentFilter {
            user: self.user.as_deref(),
            role: self.role.as_deref(),
            tenant: self.tenant.as_deref(),
            resource: self.resource.as_deref(),
            resource_instance: self.resource_instance.as_deref(),
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

    /// 20,000 documents in two tenants, and an ABAC rule on a condition
    /// over them: `/user-permissions` with ABAC scans them all.
    fn app_on_many_documents() -> App {
        let instances: Vec<_> = (0..20_000)
            .map(|i| json!({"key": format!("d{i}"), "resource": "document", "tenant": if i % 2 == 0 { "a" } else { "b" }, "attributes": {"public": i % 3 == 0}}))
            .collect();
        let doc: crate::model::DataDocument = serde_json::from_value(json!({
            "resources": [{"key": "document", "actions": {"read": {}}}],
            "roles": [{"key": "viewer", "permissions": ["document:read"]}],
            "tenants": [{"key": "a"}, {"key": "b"}],
            "users": [{"key": "u"}],
            "role_assignments": [{"user": "u", "role": "viewer", "tenant": "a"}],
            "resource_instances": instances,
            "condition_sets": [
                {"key": "all", "type": "userset", "conditions": {"allOf": []}},
                {"key": "public", "type": "resourceset", "resource": {"key": "document"},
                 "conditions": {"allOf": [{"resource.public": {"equals": true}}]}}
            ],
            "condition_set_rules": [{"user_set": "all", "permission": "document:read", "resource_set": "public"}]
        }))
        .unwrap();
        let store = Arc::new(Store::new());
        store
            .install(
                crate::snapshot::Staged::from_document(&doc),
                Source::Embedded,
            )
            .unwrap();
        App {
            store,
            settings: HttpSettings::default(),
            metrics: Arc::new(Metrics::new(prometheus::Registry::new()).unwrap()),
            refresh: Default::default(),
            sync_state: None,
            heavy: HeavyWork::new(1),
            facts: None,
            decision_log: None,
            hub: None,
        }
    }

    #[test]
    fn large_bodies_and_long_listings_are_heavy_single_checks_never() {
        let app = app_on_many_documents();
        let heavy = |route: Route, body: &str| {
            app.is_heavy(route, route.spec().cost, body.as_bytes())
                .unwrap()
        };
        let check =
            r#"{"user": "u", "action": "read", "resource": {"type": "document", "tenant": "a"}}"#;
        assert!(!heavy(Route::Allowed, check));
        let padded = format!(
            r#"{{"user": {{"key": "u", "attributes": {{"pad": "{}"}}}}, "action": "read", "resource": {{"type": "document"}}}}"#,
            "x".repeat(HeavyWork::BODY_BYTES)
        );
        assert!(
            !heavy(Route::Allowed, &padded),
            "one check, whatever its size"
        );
        let bulk = format!("[{}]", vec![check; 100].join(","));
        assert!(!heavy(Route::Bulk, &bulk));
        assert!(heavy(Route::Bulk, &format!("[{padded}]")));
        let listing = r#"{"user": {"key": "u"}, "tenants": ["a"]}"#;
        assert!(!heavy(Route::UserPermissions, listing));
        let abac = r#"{"user": {"key": "u"}, "context": {"enable_abac_user_permissions": true}}"#;
        assert!(
            heavy(Route::UserPermissions, abac),
            "a scan of 20,000 documents"
        );
        assert!(
            !heavy(Route::UserPermissions, "[1]"),
            "a 422, answered in place"
        );
        assert!(heavy(Route::Authzen(authzen::Op::SearchSubject), "{}"));
        assert!(!heavy(
            Route::AuthorizedUsers,
            r#"{"action": "read", "resource": {"type": "document", "tenant": "a"}}"#
        ));
    }

    /// With one worker thread, a task spawned while heavy work runs is run
    /// before that work ends: the work holds until it hears from the task,
    /// so run in place it would wait out its timeout instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn heavy_work_leaves_the_worker_to_the_other_tasks() {
        let heavy = Arc::new(HeavyWork::new(1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let work = {
            let heavy = heavy.clone();
            tokio::spawn(async move {
                let _turn = heavy.permit().await;
                heavy.offload(|| rx.recv_timeout(Duration::from_secs(20)).is_ok())
            })
        };
        // Spawned after the work has its permit and runs: the only worker
        // is the one the work started on.
        tokio::task::yield_now().await;
        let probe = tokio::spawn(async move { tx.send(()).is_ok() });
        assert!(probe.await.unwrap());
        assert!(
            work.await.unwrap(),
            "the task ran only after the heavy work"
        );
    }
}
