//! A fake Permit control plane: a real HTTP server on 127.0.0.1:0 that serves
//! a data document through the public v2 list endpoints, in a chosen
//! response shape, paginated; knows environment, project and organization
//! keys (anything else is a 401); rate-limits with 429 + `Retry-After`; and
//! fails on command. It logs every request with its arrival time so tests
//! can assert on what the PDP sent, and when.
//!
//! Items are kept as pre-serialized JSON text so the benchmark can serve a
//! million role assignments without holding a million `serde_json::Value`s.
//! The integration tests (`tests/integration/sync.rs`) and the full-sync
//! benchmark (`src/bin/sync_bench.rs`) both drive it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pdp::model::DataDocument;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub const ENV_KEY: &str = "permit_key_env";
pub const PROJECT_KEY: &str = "permit_key_project";
pub const ORG_KEY: &str = "permit_key_org";
pub const ORG_ID: &str = "7c1a0e4e-0000-4000-8000-00000000000a";
pub const PROJECT_ID: &str = "7c1a0e4e-0000-4000-8000-00000000000b";
pub const ENV_ID: &str = "7c1a0e4e-0000-4000-8000-00000000000c";

/// The list endpoints, by the name in their path, with the data document's
/// field each one fills.
pub const LISTS: [(&str, &str); 9] = [
    ("resources", "resources"),
    ("roles", "roles"),
    ("condition_sets", "condition_sets"),
    ("users", "users"),
    ("tenants", "tenants"),
    ("role_assignments", "role_assignments"),
    ("resource_instances", "resource_instances"),
    ("relationship_tuples", "relationship_tuples"),
    ("set_rules", "condition_set_rules"),
];

/// How list responses are shaped (docs/contract.md, Paging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `[...]`; the listing ends at a short page.
    Bare,
    /// `{"data": [...], "total_count": n, "page_count": p}`.
    Paged,
    /// `{"data": [...], "pagination": {"cursor": c, "hasMore": b}}`.
    Cursor,
}

/// A failure the fake produces on every matching request until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// 200 with the page's JSON cut in half.
    TruncatedJson,
    /// Refuse every request that carries a cursor (400), as an expired one.
    ExpireCursors,
    /// Before serving any page after the first, insert a new item at the
    /// front of the list: the next page repeats an item (and the total
    /// changes), as when data changes between pages. Users list only.
    GrowBetweenPages,
    /// Before serving any page after the first, append a new user at the
    /// end of the list: the total grows, nothing shifts. Users list only.
    AppendBetweenPages,
    /// Before serving any page after the first, delete the list's first
    /// item: the rest shift back, and one item would go unread.
    DeleteBetweenPages,
    /// Go down while answering: this connection and every other one is
    /// dropped and the port stops accepting until `come_up`.
    GoDown,
}

#[derive(Debug, Clone, Copy)]
pub enum RetryAfter {
    Seconds(u64),
    /// An HTTP date this far in the future.
    Date(Duration),
    /// This header value as it is; nothing is held back after it.
    Raw(&'static str),
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names lower-cased, as sent.
    pub headers: Vec<(String, String)>,
    /// `facts`, `schema` or `other`.
    pub class: &'static str,
    pub status: u16,
    /// The `X-Request-Id` the fake answered with, as Permit's API does.
    pub request_id: String,
}

/// How the decision-log ingress answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Take every chunk: 204, as OPA's services answer.
    Accept,
    /// Accept the request and never answer.
    Stall,
    /// Answer with this status.
    Refuse(u16),
}

/// One chunk the decision-log ingress received.
#[derive(Debug, Clone)]
pub struct IngressChunk {
    pub at: Instant,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body's length as sent (gzipped).
    pub gzipped_bytes: usize,
    /// The events, or `None` when the body was not a gzipped JSON array
    /// or the fake keeps counts only ([`FakeControlPlane::keep_ingress_events`]).
    pub events: Option<Vec<serde_json::Value>>,
    /// How many events the chunk held.
    pub event_count: usize,
    /// The status answered (0: none, stalled).
    pub status: u16,
}

/// A page held back ([`FakeControlPlane::hold`]): the next request for a
/// list is answered with the list as it was when the request arrived, but
/// only once the hold is released.
pub struct Hold {
    inner: Arc<HoldInner>,
}

struct HoldInner {
    list: &'static str,
    arrived: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Hold {
    /// Resolves once a request for the list is being held.
    pub async fn arrived(&self) {
        self.inner.arrived.notified().await;
    }

    /// Lets the held request be answered (dropping the hold does too, so
    /// a failed test does not leave a request waiting forever).
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // A permit: a request that arrives after this goes straight on.
        self.inner.release.notify_one();
    }
}

struct RateLimit {
    class: &'static str,
    /// Requests of the class still answered normally before the 429.
    allowed: usize,
    retry_after: RetryAfter,
    /// Set when the 429 is sent: nothing of the class may arrive before.
    blocked_until: Option<Instant>,
    early: usize,
}

struct State {
    lists: HashMap<&'static str, Vec<String>>,
    shape: Shape,
    /// (list or `*`, fault, times left to fire; `None` = until cleared)
    faults: Vec<(&'static str, Fault, Option<usize>)>,
    rate_limit: Option<RateLimit>,
    log: Vec<Logged>,
    grown: usize,
    /// Bumped on `set_document`, so old cursors are recognisably old.
    generation: u64,
    /// Lists whose next page is held; taken by the request it holds.
    holds: Vec<Arc<HoldInner>>,
    /// For the ids of objects written.
    next_id: u64,
    ingress: Ingress,
    keep_events: bool,
    /// What the decision-log ingress received, kept apart from `log`
    /// (the API's requests).
    chunks: Vec<IngressChunk>,
}

pub struct FakeControlPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn go_down(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.abort();
        }
    }
}

impl FakeControlPlane {
    pub async fn start(doc: &DataDocument, shape: Shape) -> FakeControlPlane {
        Self::start_on(0, doc, shape).await
    }

    /// [`start`](Self::start) on 127.0.0.1:`port` (0: any free port).
    pub async fn start_on(port: u16, doc: &DataDocument, shape: Shape) -> FakeControlPlane {
        Self::try_start_on(port, doc, shape)
            .await
            .expect("bind 127.0.0.1")
    }

    /// [`start_on`](Self::start_on), with a port that cannot be had (in
    /// use, not permitted) an error rather than a panic: the binary's case.
    pub async fn try_start_on(
        port: u16,
        doc: &DataDocument,
        shape: Shape,
    ) -> std::io::Result<FakeControlPlane> {
        let listener = try_bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lists: lists_of(doc),
                shape,
                faults: Vec::new(),
                rate_limit: None,
                log: Vec::new(),
                grown: 0,
                generation: 0,
                holds: Vec::new(),
                next_id: 0,
                ingress: Ingress::Accept,
                keep_events: true,
                chunks: Vec::new(),
            }),
            server: Mutex::new(None),
        });
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve(listener, shared.clone()));
        *shared.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        Ok(FakeControlPlane { addr, shared })
    }

    /// The base URL to give the PDP as `PDP_CONTROL_PLANE`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_document(&self, doc: &DataDocument) {
        let mut s = self.lock();
        s.lists = lists_of(doc);
        s.generation += 1;
    }

    /// Fail every request to `list` (a path name from [`LISTS`], or `*`).
    pub fn fail(&self, list: &'static str, fault: Fault) {
        self.lock().faults.push((list, fault, None));
    }

    /// Like [`fail`](Self::fail), for the next `times` requests it applies to.
    pub fn fail_times(&self, list: &'static str, fault: Fault, times: usize) {
        self.lock().faults.push((list, fault, Some(times)));
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Answer the `(allowed + 1)`-th request of `class` (`facts`/`schema`/
    /// `other`) with 429 and `Retry-After`, then serve normally again,
    /// counting any request of the class that arrives too early.
    pub fn rate_limit_after(&self, class: &'static str, allowed: usize, retry_after: RetryAfter) {
        self.lock().rate_limit = Some(RateLimit {
            class,
            allowed,
            retry_after,
            blocked_until: None,
            early: 0,
        });
    }

    /// When the 429 was lifted, and how many requests came before that.
    pub fn rate_limit_report(&self) -> Option<(Instant, usize)> {
        let s = self.lock();
        let rl = s.rate_limit.as_ref()?;
        Some((rl.blocked_until?, rl.early))
    }

    /// The API's requests, oldest first (decision-log uploads are kept
    /// apart: [`ingress_chunks`](Self::ingress_chunks)).
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// How `POST /v1/decision_logs/ingress` answers from now on.
    pub fn set_ingress(&self, ingress: Ingress) {
        self.lock().ingress = ingress;
    }

    /// Whether received events are kept (the default) or only counted, as
    /// a long benchmark needs.
    pub fn keep_ingress_events(&self, keep: bool) {
        self.lock().keep_events = keep;
    }

    /// The chunks the decision-log ingress received, oldest first.
    pub fn ingress_chunks(&self) -> Vec<IngressChunk> {
        self.lock().chunks.clone()
    }

    /// Holds the next page request for `list` (a path name from
    /// [`LISTS`]): answered with the list as it was on arrival, once the
    /// returned [`Hold`] is released.
    pub fn hold(&self, list: &'static str) -> Hold {
        let inner = Arc::new(HoldInner {
            list,
            arrived: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        self.lock().holds.push(inner.clone());
        Hold { inner }
    }

    /// Stop accepting and drop every open connection: the PDP sees
    /// connection refused / reset, as when the control plane is down.
    pub fn go_down(&self) {
        self.shared.go_down();
    }

    /// Listen again on the same address.
    pub fn come_up(&self) {
        let mut server = self.shared.server.lock().unwrap_or_else(|p| p.into_inner());
        if server.is_none() {
            *server = Some(tokio::spawn(serve(bind(self.addr), self.shared.clone())));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn bind(addr: SocketAddr) -> TcpListener {
    try_bind(addr).expect("bind 127.0.0.1")
}

fn try_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Rebinding the same port after go_down must not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

fn lists_of(doc: &DataDocument) -> HashMap<&'static str, Vec<String>> {
    let value = serde_json::to_value(doc).expect("a data document serializes");
    LISTS
        .iter()
        .map(|&(path, field)| {
            let items = value[field]
                .as_array()
                .map(|a| a.iter().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            (path, items)
        })
        .collect()
}

/// Build lists straight from JSON item text (the benchmark's generator).
impl FakeControlPlane {
    pub fn set_raw_list(&self, path: &'static str, items: Vec<String>) {
        self.lock().lists.insert(path, items);
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set, so aborting the server task aborts them.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn class_of(path: &str) -> &'static str {
    if path.starts_with("/v2/facts/") {
        "facts"
    } else if path.starts_with("/v2/schema/") {
        "schema"
    } else {
        "other"
    }
}

fn json(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("static response parts")
}

/// What to do after the state lock is released.
enum Reply {
    Now(Response<Full<Bytes>>),
    Hang,
    GoDown,
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Bodies are small here (writes); a failed read is an empty body.
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == INGRESS_PATH {
        return ingress(shared, &parts, &body).await;
    }
    let (reply, held, request_id) = {
        let mut s = shared.lock();
        let reply = route(&mut s, &parts, &body);
        let status = match &reply {
            Reply::Now(r) => r.status().as_u16(),
            Reply::Hang | Reply::GoDown => 0,
        };
        let path = parts.uri.path();
        // A held list: the first page request for it after `hold`.
        let held = if parts.method == http::Method::GET {
            let list = path.rsplit('/').next().unwrap_or("");
            s.holds
                .iter()
                .position(|h| h.list == list)
                .map(|at| s.holds.remove(at))
        } else {
            None
        };
        let request_id = format!("fake-request-{}", s.log.len() + 1);
        s.log.push(Logged {
            request_id: request_id.clone(),
            at: Instant::now(),
            method: parts.method.to_string(),
            path: path.to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers: header_pairs(&parts.headers),
            class: class_of(path),
            status,
        });
        (reply, held, request_id)
    };
    if let Some(hold) = held {
        let released = hold.release.notified();
        hold.arrived.notify_one();
        released.await;
    }
    match reply {
        Reply::Now(mut r) => {
            if let Ok(v) = request_id.parse() {
                r.headers_mut().insert("x-request-id", v);
            }
            r
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json(504, "{}")
        }
        Reply::GoDown => {
            // Aborting the server task aborts this connection's task too;
            // it never answers.
            shared.go_down();
            std::future::pending().await
        }
    }
}

/// The bearer token of a request.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Headers as logged: names lower-cased, values as text.
fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Where Permit's PDP (OPA's decision-log plugin) posts decision logs.
pub const INGRESS_PATH: &str = "/v1/decision_logs/ingress";

/// The decision-log ingress: the environment key, `POST`, a gzipped JSON
/// array; each chunk recorded with its events.
async fn ingress(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let key = bearer(&parts.headers);
    let gzipped = parts
        .headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let parsed = gzipped.then(|| gunzip_array(body)).flatten();
    let malformed = parsed.is_none();
    let (mode, keep) = {
        let s = shared.lock();
        (s.ingress, s.keep_events)
    };
    let event_count = parsed.as_ref().map_or(0, Vec::len);
    let events = parsed.filter(|_| keep);
    let status = match mode {
        _ if parts.method != http::Method::POST => 405,
        _ if key != Some(ENV_KEY) => 401,
        _ if malformed => 400,
        Ingress::Accept => 204,
        Ingress::Stall => 0,
        Ingress::Refuse(status) => status,
    };
    let request_id = {
        let mut s = shared.lock();
        s.chunks.push(IngressChunk {
            at: Instant::now(),
            headers: header_pairs(&parts.headers),
            gzipped_bytes: body.len(),
            events,
            event_count,
            status,
        });
        format!("fake-ingress-{}", s.chunks.len())
    };
    if status == 0 {
        std::future::pending::<()>().await;
    }
    let mut r = if status == 204 {
        no_content()
    } else {
        json(
            status,
            format!("{{\"detail\": \"ingress answered {status}\"}}"),
        )
    };
    if let Ok(v) = request_id.parse() {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn gunzip_array(body: &[u8]) -> Option<Vec<serde_json::Value>> {
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

fn route(s: &mut State, req: &http::request::Parts, body: &[u8]) -> Reply {
    let path = req.uri.path();
    let class = class_of(path);
    let key = bearer(&req.headers).unwrap_or("");
    let scope = match key {
        ENV_KEY => (Some(PROJECT_ID), Some(ENV_ID)),
        PROJECT_KEY => (Some(PROJECT_ID), None),
        ORG_KEY => (None, None),
        _ => {
            return Reply::Now(json(401, r#"{"detail": "Invalid API key"}"#));
        }
    };

    if let Some(rl) = s.rate_limit.as_mut().filter(|rl| rl.class == class) {
        if let Some(until) = rl.blocked_until {
            if Instant::now() < until {
                rl.early += 1;
                return Reply::Now(json(429, r#"{"detail": "too many requests"}"#));
            }
        } else if rl.allowed == 0 {
            let (header, until) = match rl.retry_after {
                RetryAfter::Seconds(n) => (n.to_string(), Instant::now() + Duration::from_secs(n)),
                RetryAfter::Date(d) => {
                    let now = SystemTime::now();
                    let header = httpdate::fmt_http_date(now + d);
                    // The date has whole seconds: block until exactly the
                    // instant it names, as the client will read it.
                    let named = httpdate::parse_http_date(&header).expect("own date parses");
                    let left = named.duration_since(now).unwrap_or_default();
                    (header, Instant::now() + left)
                }
                RetryAfter::Raw(v) => (v.to_owned(), Instant::now()),
            };
            rl.blocked_until = Some(until);
            let mut r = json(429, r#"{"detail": "too many requests"}"#);
            r.headers_mut()
                .insert("retry-after", header.parse().expect("ascii header"));
            return Reply::Now(r);
        } else {
            rl.allowed -= 1;
        }
    }

    if path == "/v2/api-key/scope" {
        // Faults on the list name "scope": a status, or a body with no ids.
        if let Some(at) = s
            .faults
            .iter()
            .position(|(l, _, left)| *l == "scope" && *left != Some(0))
        {
            if let Some(n) = &mut s.faults[at].2 {
                *n -= 1;
            }
            return Reply::Now(match s.faults[at].1 {
                Fault::Status(code) => json(code, r#"{"detail": "injected failure"}"#),
                _ => json(200, "{}"),
            });
        }
        let body = serde_json::json!({
            "organization_id": ORG_ID,
            "project_id": scope.0,
            "environment_id": scope.1,
        });
        return Reply::Now(json(200, body.to_string()));
    }

    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if req.method != http::Method::GET {
        return match parts.as_slice() {
            ["v2", "facts", p, e, rest @ ..] if !rest.is_empty() => {
                if scope != (Some(PROJECT_ID), Some(ENV_ID)) || *p != PROJECT_ID || *e != ENV_ID {
                    return Reply::Now(json(
                        403,
                        r#"{"detail": "key not scoped to this environment"}"#,
                    ));
                }
                // SDKs percent-encode path parameters: `doc%3A1`, `a%40b.c`.
                let rest: Vec<String> = rest.iter().map(|seg| percent_decode(seg)).collect();
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                // Faults name the list a write goes to, as a read's do; a
                // user's roles are role assignments too. Of the faults, those
                // that fit a write: a status, no answer, going down (each
                // before the write is made).
                let assigns = matches!(rest.as_slice(), ["users", _, "roles"]);
                if let Some(at) = s.faults.iter().position(|(l, f, left)| {
                    (*l == "*" || *l == rest[0] || (assigns && *l == "role_assignments"))
                        && *left != Some(0)
                        && matches!(f, Fault::Status(_) | Fault::Hang | Fault::GoDown)
                }) {
                    if let Some(n) = &mut s.faults[at].2 {
                        *n -= 1;
                    }
                    return match s.faults[at].1 {
                        Fault::Hang => Reply::Hang,
                        Fault::GoDown => Reply::GoDown,
                        Fault::Status(code) => {
                            Reply::Now(json(code, r#"{"detail": "injected failure"}"#))
                        }
                        _ => Reply::Now(json(500, r#"{"detail": "injected failure"}"#)),
                    };
                }
                let query = parse_query(req.uri.query().unwrap_or(""));
                Reply::Now(write(s, &req.method, &rest, &query, body))
            }
            _ => Reply::Now(json(404, r#"{"detail": "not found"}"#)),
        };
    }
    let (proj, env, list) = match parts.as_slice() {
        ["v2", "facts" | "schema", p, e, list] => (*p, *e, *list),
        _ => return Reply::Now(json(404, r#"{"detail": "not found"}"#)),
    };
    if scope != (Some(PROJECT_ID), Some(ENV_ID)) || proj != PROJECT_ID || env != ENV_ID {
        return Reply::Now(json(
            403,
            r#"{"detail": "key not scoped to this environment"}"#,
        ));
    }
    let Some(&(list, _)) = LISTS.iter().find(|(name, _)| *name == list) else {
        return Reply::Now(json(404, r#"{"detail": "no such list"}"#));
    };
    let expected_class = if ["resources", "roles", "condition_sets"].contains(&list) {
        "schema"
    } else {
        "facts"
    };
    if class != expected_class {
        return Reply::Now(json(404, r#"{"detail": "no such list"}"#));
    }

    let query = parse_query(req.uri.query().unwrap_or(""));
    let per_page = query
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let cursor = query.get("cursor").cloned();
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);

    let mut truncate = false;
    for i in 0..s.faults.len() {
        let (l, fault, left) = s.faults[i];
        let applies = (l == "*" || l == list)
            && left != Some(0)
            && match fault {
                Fault::ExpireCursors => cursor.is_some(),
                Fault::GrowBetweenPages => list == "users" && (page > 1 || cursor.is_some()),
                Fault::DeleteBetweenPages => page > 1 || cursor.is_some(),
                Fault::AppendBetweenPages => list == "users" && (page > 1 || cursor.is_some()),
                _ => true,
            };
        if !applies {
            continue;
        }
        if let Some(n) = &mut s.faults[i].2 {
            *n -= 1;
        }
        match fault {
            Fault::Status(code) => {
                return Reply::Now(json(code, r#"{"detail": "injected failure"}"#));
            }
            Fault::Hang => return Reply::Hang,
            Fault::GoDown => return Reply::GoDown,
            Fault::TruncatedJson => truncate = true,
            Fault::ExpireCursors => {
                return Reply::Now(json(400, r#"{"detail": "cursor expired"}"#));
            }
            Fault::GrowBetweenPages => {
                s.grown += 1;
                let item = serde_json::json!({"key": format!("late-user-{}", s.grown)});
                s.lists
                    .entry("users")
                    .or_default()
                    .insert(0, item.to_string());
            }
            Fault::AppendBetweenPages => {
                s.grown += 1;
                let item = serde_json::json!({"key": format!("late-user-{}", s.grown)});
                s.lists.entry("users").or_default().push(item.to_string());
            }
            Fault::DeleteBetweenPages => {
                if let Some(items) = s.lists.get_mut(list).filter(|l| !l.is_empty()) {
                    items.remove(0);
                }
            }
        }
    }

    let offset = match &cursor {
        Some(c) => match parse_cursor(c, s.generation) {
            Some(o) => o,
            None => return Reply::Now(json(400, r#"{"detail": "invalid cursor"}"#)),
        },
        None => (page - 1) * per_page,
    };
    let items = s.lists.get(list).map(Vec::as_slice).unwrap_or(&[]);
    let total = items.len();
    let end = (offset + per_page).min(total);
    let slice = items.get(offset..end).unwrap_or(&[]);
    let mut body = String::with_capacity(slice.iter().map(|i| i.len() + 1).sum::<usize>() + 100);
    let array = |body: &mut String| {
        body.push('[');
        for (i, item) in slice.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(item);
        }
        body.push(']');
    };
    // The bare lists that document `include_total_count` answer paged
    // when asked for it, as Permit's do (contract §4.4).
    let counted = query
        .get("include_total_count")
        .is_some_and(|v| v == "true")
        && matches!(list, "role_assignments" | "roles" | "resources");
    let shape = match s.shape {
        Shape::Bare if counted => Shape::Paged,
        shape => shape,
    };
    match shape {
        Shape::Bare => array(&mut body),
        Shape::Paged => {
            body.push_str(r#"{"data":"#);
            array(&mut body);
            let pages = total.div_ceil(per_page);
            body.push_str(&format!(r#","total_count":{total},"page_count":{pages}}}"#));
        }
        Shape::Cursor => {
            body.push_str(r#"{"data":"#);
            array(&mut body);
            let more = end < total;
            let next = if more {
                format!(r#""g{}o{end}""#, s.generation)
            } else {
                "null".to_owned()
            };
            body.push_str(&format!(
                r#","pagination":{{"cursor":{next},"hasMore":{more}}}}}"#
            ));
        }
    }
    if truncate {
        body.truncate(body.len() / 2);
    }
    Reply::Now(json(StatusCode::OK.as_u16(), body))
}

fn parse_cursor(c: &str, generation: u64) -> Option<usize> {
    let (g, o) = c.strip_prefix('g')?.split_once('o')?;
    // A cursor from before the data was replaced has expired.
    (g.parse::<u64>().ok()? == generation).then_some(())?;
    o.parse().ok()
}

/// `%XX` escapes decoded; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// ---- writes ------------------------------------------------------------------
//
// The facts writes the SDKs send (docs/contract.md, Facts proxy), made to
// the stored lists so that a later sync reads them, and answered with
// Permit's read models (ids, scope and timestamps included: the Python SDK
// parses them strictly).

use serde_json::{json as j, Value};

/// A write refused: the status and the `detail` of its body.
struct Refused(u16, String);

fn detail(status: u16, detail: &str) -> Refused {
    Refused(status, detail.to_owned())
}

fn answer(status: u16, v: &Value) -> Response<Full<Bytes>> {
    json(status, v.to_string())
}

fn no_content() -> Response<Full<Bytes>> {
    Response::builder()
        .status(204)
        .body(Full::new(Bytes::new()))
        .expect("static response parts")
}

const WRITTEN_AT: &str = "2026-12-03T00:00:00+00:00";

impl State {
    fn items(&self, list: &str) -> Vec<Value> {
        self.lists
            .get(list)
            .map(|l| {
                l.iter()
                    .filter_map(|i| serde_json::from_str(i).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_items(&mut self, list: &'static str, items: &[Value]) {
        self.lists
            .insert(list, items.iter().map(Value::to_string).collect());
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_id)
    }

    /// The read model around `item`: ids, scope and timestamps.
    fn read_model(&mut self, item: &Value, extra: &[&str]) -> Value {
        let mut v = item.clone();
        if let Some(o) = v.as_object_mut() {
            let id = self.id();
            o.insert("id".into(), j!(id));
            o.insert("organization_id".into(), j!(ORG_ID));
            o.insert("project_id".into(), j!(PROJECT_ID));
            o.insert("environment_id".into(), j!(ENV_ID));
            o.insert("created_at".into(), j!(WRITTEN_AT));
            o.insert("updated_at".into(), j!(WRITTEN_AT));
            for field in extra {
                let id = self.id();
                o.entry(field.to_string()).or_insert(j!(id));
            }
        }
        v
    }

    fn has(&self, list: &str, f: impl Fn(&Value) -> bool) -> bool {
        self.lists.get(list).is_some_and(|l| {
            l.iter()
                .filter_map(|i| serde_json::from_str::<Value>(i).ok())
                .any(|v| f(&v))
        })
    }

    fn has_key(&self, list: &str, key: &str) -> bool {
        self.has(list, |v| v["key"] == j!(key))
    }

    fn has_instance(&self, id: &str) -> bool {
        self.has("resource_instances", |v| {
            format!(
                "{}:{}",
                v["resource"].as_str().unwrap_or(""),
                v["key"].as_str().unwrap_or("")
            ) == id
        })
    }

    /// Whether `role` exists: a tenant role, or a role of the instance's type.
    fn role_exists(&self, role: &str, instance: Option<&str>) -> bool {
        match instance {
            None => self.has_key("roles", role),
            Some(i) => {
                let ty = i.split(':').next().unwrap_or("");
                self.has("resources", |r| {
                    r["key"] == j!(ty) && r["roles"].get(role).is_some()
                })
            }
        }
    }

    fn upsert(&mut self, list: &'static str, same: impl Fn(&Value) -> bool, item: Value) {
        let mut items = self.items(list);
        match items.iter_mut().find(|v| same(v)) {
            Some(v) => *v = item,
            None => items.push(item),
        }
        self.set_items(list, &items);
    }

    fn remove_where(&mut self, list: &'static str, gone: impl Fn(&Value) -> bool) -> usize {
        let mut items = self.items(list);
        let before = items.len();
        items.retain(|v| !gone(v));
        self.set_items(list, &items);
        before - items.len()
    }
}

fn instance_id(v: &Value) -> String {
    format!(
        "{}:{}",
        v["resource"].as_str().unwrap_or(""),
        v["key"].as_str().unwrap_or("")
    )
}

/// An assignment as sent: `{user?, role, tenant?, resource_instance?}`;
/// `user` is the one a `users/{key}/roles` path names, and wins.
fn assignment(v: &Value, user: Option<&str>) -> Option<Value> {
    let user = user.or(v["user"].as_str())?;
    let role = v["role"].as_str()?;
    let tenant = v["tenant"].as_str().unwrap_or("default");
    let instance = v["resource_instance"].as_str().filter(|s| !s.is_empty());
    Some(j!({"user": user, "role": role, "tenant": tenant, "resource_instance": instance}))
}

fn same_assignment(a: &Value) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| {
        v["user"] == a["user"]
            && v["role"] == a["role"]
            && v["tenant"] == a["tenant"]
            && v["resource_instance"].as_str() == a["resource_instance"].as_str()
    }
}

/// Checks an assignment: the user, tenant and role exist.
fn check_assignment(s: &State, a: &Value) -> Result<(), Refused> {
    let (user, role, tenant) = (
        a["user"].as_str().unwrap_or(""),
        a["role"].as_str().unwrap_or(""),
        a["tenant"].as_str().unwrap_or(""),
    );
    if !s.has_key("users", user) {
        return Err(detail(
            404,
            &format!("Could not find 'User' with key '{user}'"),
        ));
    }
    if !s.has_key("tenants", tenant) {
        return Err(detail(
            404,
            &format!("Could not find 'Tenant' with key '{tenant}'"),
        ));
    }
    if !s.role_exists(role, a["resource_instance"].as_str()) {
        return Err(detail(
            404,
            &format!("Could not find 'Role' with key '{role}'"),
        ));
    }
    Ok(())
}

/// A tenant-level assignment as a user's own `roles` carry it: the sync
/// merges those with the assignments list, so both are one fact here.
fn in_user_roles(a: &Value) -> impl Fn(&Value) -> bool + '_ {
    move |u: &Value| {
        a["resource_instance"].is_null()
            && u["key"] == a["user"]
            && u["roles"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["role"] == a["role"] && r["tenant"] == a["tenant"])
            })
    }
}

/// Drops the `roles` a user carries that `gone` names (user key, role).
fn drop_user_roles(s: &mut State, gone: impl Fn(&Value, &Value) -> bool) {
    let mut users = s.items("users");
    let mut changed = false;
    for u in &mut users {
        let key = u["key"].clone();
        if let Some(rs) = u.get_mut("roles").and_then(Value::as_array_mut) {
            let before = rs.len();
            rs.retain(|r| !gone(&key, r));
            changed |= rs.len() != before;
        }
    }
    if changed {
        s.set_items("users", &users);
    }
}

fn assign(s: &mut State, a: &Value) -> Result<Value, Refused> {
    check_assignment(s, a)?;
    if s.has("role_assignments", same_assignment(a)) || s.has("users", in_user_roles(a)) {
        return Err(detail(409, "the role is already assigned"));
    }
    if let Some(i) = a["resource_instance"].as_str() {
        if !s.has_instance(i) {
            let (ty, key) = i.split_once(':').unwrap_or((i, ""));
            let inst = j!({"key": key, "resource": ty, "tenant": a["tenant"], "attributes": {}});
            s.upsert("resource_instances", |_| false, inst);
        }
    }
    let mut items = s.items("role_assignments");
    items.push(a.clone());
    s.set_items("role_assignments", &items);
    Ok(s.read_model(a, &["user_id", "role_id", "tenant_id"]))
}

fn unassign(s: &mut State, a: &Value) -> Result<Value, Refused> {
    let embedded = s.has("users", in_user_roles(a));
    if s.remove_where("role_assignments", same_assignment(a)) == 0 && !embedded {
        return Err(detail(404, "no such role assignment"));
    }
    if embedded {
        drop_user_roles(s, |user, r| {
            *user == a["user"] && r["role"] == a["role"] && r["tenant"] == a["tenant"]
        });
    }
    Ok(s.read_model(a, &["user_id", "role_id", "tenant_id"]))
}

fn tuple(v: &Value) -> Option<Value> {
    Some(j!({
        "subject": v["subject"].as_str()?, "relation": v["relation"].as_str()?,
        "object": v["object"].as_str()?, "tenant": v["tenant"].as_str().unwrap_or("default"),
    }))
}

/// A bulk call's tuples, every one well-formed, or the call refused.
fn tuples(list: &Value, field: &str) -> Result<Vec<Value>, Refused> {
    list.as_array()
        .ok_or_else(|| detail(422, &format!("a bulk call takes {{\"{field}\": [...]}}")))?
        .iter()
        .map(|v| tuple(v).ok_or_else(|| detail(422, "a tuple needs subject, relation and object")))
        .collect()
}

fn same_tuple(t: &Value) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| {
        v["subject"] == t["subject"] && v["relation"] == t["relation"] && v["object"] == t["object"]
    }
}

fn relate(s: &mut State, t: &Value) -> Value {
    for end in ["subject", "object"] {
        let id = t[end].as_str().unwrap_or("");
        if !s.has_instance(id) {
            let (ty, key) = id.split_once(':').unwrap_or((id, ""));
            let inst = j!({"key": key, "resource": ty, "tenant": t["tenant"], "attributes": {}});
            s.upsert("resource_instances", |_| false, inst);
        }
    }
    s.upsert("relationship_tuples", same_tuple(t), t.clone());
    s.read_model(t, &["subject_id", "relation_id", "object_id", "tenant_id"])
}

fn user_item(v: &Value, key: &str) -> Value {
    j!({
        "key": key, "email": v["email"], "first_name": v["first_name"], "last_name": v["last_name"],
        "attributes": attributes_of(v),
    })
}

/// The user's read model; its `roles` are its tenant-level ones.
fn user_read(s: &mut State, item: &Value) -> Value {
    let mut roles = item["roles"].as_array().cloned().unwrap_or_default();
    for a in s.items("role_assignments") {
        if a["user"] == item["key"] && a["resource_instance"].is_null() {
            let role = j!({"role": a["role"], "tenant": a["tenant"]});
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    let mut v = s.read_model(item, &[]);
    v["roles"] = Value::Array(roles);
    v["associated_tenants"] = j!([]);
    v
}

/// `item` with the fields of a PATCH body over it, except those naming it.
fn merged(mut item: Value, body: &Value, fixed: &[&str]) -> Result<Value, Refused> {
    let fields = body
        .as_object()
        .ok_or_else(|| detail(422, "the body must be a JSON object"))?;
    for (k, v) in fields {
        if !fixed.contains(&k.as_str()) {
            item[k] = v.clone();
        }
    }
    Ok(item)
}

fn attributes_of(v: &Value) -> Value {
    if v["attributes"].is_object() {
        v["attributes"].clone()
    } else {
        j!({})
    }
}

fn tenant_item(v: &Value, key: &str) -> Value {
    j!({
        "key": key, "name": v["name"].as_str().unwrap_or(key), "description": v["description"],
        "attributes": attributes_of(v),
    })
}

fn tenant_read(s: &mut State, item: &Value) -> Value {
    let mut v = s.read_model(item, &[]);
    v["last_action_at"] = j!(WRITTEN_AT);
    v
}

/// One write under `/v2/facts/{proj}/{env}/`, `rest` the path after it.
fn write(
    s: &mut State,
    method: &http::Method,
    rest: &[&str],
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    use http::Method as M;
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                let d = format!("the body is not JSON: {e}");
                return json(422, j!({ "detail": d }).to_string());
            }
        }
    };
    let m = method.clone();
    let result: Result<Response<Full<Bytes>>, Refused> = (|| match (m, rest) {
        (M::POST, ["users"]) => {
            let key = body["key"]
                .as_str()
                .ok_or_else(|| detail(422, "a user needs a key"))?;
            if s.has_key("users", key) {
                return Err(detail(409, "a user with this key exists"));
            }
            let item = user_item(&body, key);
            s.upsert("users", |_| false, item.clone());
            Ok(answer(201, &user_read(s, &item)))
        }
        (M::PUT, ["users", key]) => {
            if !body.is_object() {
                return Err(detail(422, "the body must be a JSON object"));
            }
            let mut item = user_item(&body, key);
            // A replaced user keeps its roles: they are assignments, which
            // a PUT of the user does not touch.
            if let Some(old) = s.items("users").into_iter().find(|v| v["key"] == j!(key)) {
                if old["roles"].is_array() {
                    item["roles"] = old["roles"].clone();
                }
            }
            s.upsert("users", |v| v["key"] == j!(key), item.clone());
            Ok(answer(200, &user_read(s, &item)))
        }
        (M::PATCH, ["users", key]) => {
            let item = s
                .items("users")
                .into_iter()
                .find(|v| v["key"] == j!(key))
                .ok_or_else(|| detail(404, "no such user"))?;
            let item = merged(item, &body, &["key", "id"])?;
            s.upsert("users", |v| v["key"] == j!(key), item.clone());
            Ok(answer(200, &user_read(s, &item)))
        }
        (M::DELETE, ["users", key]) => {
            if s.remove_where("users", |v| v["key"] == j!(key)) == 0 {
                return Err(detail(404, "no such user"));
            }
            s.remove_where("role_assignments", |v| v["user"] == j!(key));
            Ok(no_content())
        }
        (M::POST, ["users", _, "roles"]) | (M::POST, ["role_assignments"]) => {
            let user = (rest.len() == 3).then(|| rest[1]);
            let a = assignment(&body, user)
                .ok_or_else(|| detail(422, "an assignment needs a user and a role"))?;
            Ok(answer(201, &assign(s, &a)?))
        }
        (M::DELETE, ["users", _, "roles"]) | (M::DELETE, ["role_assignments"]) => {
            let user = (rest.len() == 3).then(|| rest[1]);
            let a = assignment(&body, user)
                .ok_or_else(|| detail(422, "an assignment needs a user and a role"))?;
            let deleted = unassign(s, &a)?;
            Ok(
                if query.get("return_deleted").is_some_and(|v| v == "true") {
                    answer(200, &deleted)
                } else {
                    no_content()
                },
            )
        }
        (M::POST, ["role_assignments", "bulk"]) | (M::DELETE, ["role_assignments", "bulk"]) => {
            let items: Vec<Value> = body
                .as_array()
                .ok_or_else(|| detail(422, "a bulk call takes an array"))?
                .iter()
                .map(|v| {
                    assignment(v, None)
                        .ok_or_else(|| detail(422, "an assignment needs a user and a role"))
                })
                .collect::<Result<_, _>>()?;
            if method == M::POST {
                for a in &items {
                    check_assignment(s, a)?;
                }
                let mut n = 0;
                for a in &items {
                    if assign(s, a).is_ok() {
                        n += 1;
                    }
                }
                Ok(answer(200, &j!({"assignments_created": n})))
            } else {
                let n = items.iter().filter(|a| unassign(s, a).is_ok()).count();
                Ok(answer(200, &j!({"assignments_removed": n})))
            }
        }
        (M::POST, ["tenants"]) => {
            let key = body["key"]
                .as_str()
                .ok_or_else(|| detail(422, "a tenant needs a key"))?;
            if s.has_key("tenants", key) {
                return Err(detail(409, "a tenant with this key exists"));
            }
            let item = tenant_item(&body, key);
            s.upsert("tenants", |_| false, item.clone());
            Ok(answer(201, &tenant_read(s, &item)))
        }
        (M::PATCH | M::PUT, ["tenants", key]) => {
            let item = s
                .items("tenants")
                .into_iter()
                .find(|v| v["key"] == j!(key))
                .ok_or_else(|| detail(404, "no such tenant"))?;
            let item = merged(item, &body, &["key", "id"])?;
            s.upsert("tenants", |v| v["key"] == j!(key), item.clone());
            Ok(answer(200, &tenant_read(s, &item)))
        }
        (M::DELETE, ["tenants", key]) => {
            if s.remove_where("tenants", |v| v["key"] == j!(key)) == 0 {
                return Err(detail(404, "no such tenant"));
            }
            s.remove_where("role_assignments", |v| v["tenant"] == j!(key));
            drop_user_roles(s, |_, r| r["tenant"] == j!(key));
            let doomed: Vec<String> = s
                .items("resource_instances")
                .iter()
                .filter(|v| v["tenant"] == j!(key))
                .map(instance_id)
                .collect();
            s.remove_where("resource_instances", |v| v["tenant"] == j!(key));
            s.remove_where("relationship_tuples", |v| {
                doomed
                    .iter()
                    .any(|i| v["subject"] == j!(i) || v["object"] == j!(i))
            });
            Ok(no_content())
        }
        (M::POST, ["resource_instances"]) => {
            let (Some(key), Some(ty)) = (body["key"].as_str(), body["resource"].as_str()) else {
                return Err(detail(422, "an instance needs a key and a resource"));
            };
            if !s.has_key("resources", ty) {
                return Err(detail(
                    404,
                    &format!("Could not find 'Resource' with key '{ty}'"),
                ));
            }
            let id = format!("{ty}:{key}");
            if s.has_instance(&id) {
                return Err(detail(409, "an instance with this key exists"));
            }
            let item = j!({"key": key, "resource": ty, "tenant": body["tenant"],
                           "attributes": attributes_of(&body)});
            s.upsert("resource_instances", |_| false, item.clone());
            Ok(answer(
                201,
                &s.read_model(&item, &["resource_id", "tenant_id"]),
            ))
        }
        (M::PATCH, ["resource_instances", id]) => {
            let item = s
                .items("resource_instances")
                .into_iter()
                .find(|v| instance_id(v) == *id)
                .ok_or_else(|| detail(404, "no such instance"))?;
            let item = merged(item, &body, &["key", "resource", "id"])?;
            s.upsert(
                "resource_instances",
                |v| instance_id(v) == *id,
                item.clone(),
            );
            Ok(answer(
                200,
                &s.read_model(&item, &["resource_id", "tenant_id"]),
            ))
        }
        (M::PUT, ["resource_instances", id]) => {
            // Create or replace: the path names the instance, the body its
            // tenant and attributes.
            let Some((ty, key)) = id
                .split_once(':')
                .filter(|(t, k)| !t.is_empty() && !k.is_empty())
            else {
                return Err(detail(422, "an instance is named type:key"));
            };
            if !body.is_object() {
                return Err(detail(422, "the body must be a JSON object"));
            }
            if !s.has_key("resources", ty) {
                return Err(detail(
                    404,
                    &format!("Could not find 'Resource' with key '{ty}'"),
                ));
            }
            let item = j!({"key": key, "resource": ty, "tenant": body["tenant"],
                           "attributes": attributes_of(&body)});
            s.upsert(
                "resource_instances",
                |v| instance_id(v) == *id,
                item.clone(),
            );
            Ok(answer(
                200,
                &s.read_model(&item, &["resource_id", "tenant_id"]),
            ))
        }
        (M::DELETE, ["resource_instances", id]) => {
            if s.remove_where("resource_instances", |v| instance_id(v) == *id) == 0 {
                return Err(detail(404, "no such instance"));
            }
            s.remove_where("role_assignments", |v| v["resource_instance"] == j!(id));
            s.remove_where("relationship_tuples", |v| {
                v["subject"] == j!(id) || v["object"] == j!(id)
            });
            Ok(no_content())
        }
        (M::POST, ["relationship_tuples"]) => {
            let t = tuple(&body)
                .ok_or_else(|| detail(422, "a tuple needs subject, relation and object"))?;
            Ok(answer(201, &relate(s, &t)))
        }
        (M::DELETE, ["relationship_tuples"]) => {
            let t = tuple(&body)
                .ok_or_else(|| detail(422, "a tuple needs subject, relation and object"))?;
            if s.remove_where("relationship_tuples", same_tuple(&t)) == 0 {
                return Err(detail(404, "no such tuple"));
            }
            Ok(no_content())
        }
        (M::POST, ["relationship_tuples", "bulk"]) => {
            // All checked before any is made: a bad one changes nothing.
            for t in &tuples(&body["operations"], "operations")? {
                relate(s, t);
            }
            Ok(answer(200, &j!({})))
        }
        (M::DELETE, ["relationship_tuples", "bulk"]) => {
            for t in &tuples(&body["idents"], "idents")? {
                s.remove_where("relationship_tuples", same_tuple(t));
            }
            Ok(answer(200, &j!({})))
        }
        _ => Err(detail(404, "no such facts endpoint")),
    })();
    result.unwrap_or_else(|Refused(status, d)| json(status, j!({ "detail": d }).to_string()))
}
