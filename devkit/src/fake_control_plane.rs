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
    pub path: String,
    /// `facts`, `schema` or `other`.
    pub class: &'static str,
    pub status: u16,
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lists: lists_of(doc),
                shape,
                faults: Vec::new(),
                rate_limit: None,
                log: Vec::new(),
                grown: 0,
                generation: 0,
            }),
            server: Mutex::new(None),
        });
        let listener = bind("127.0.0.1:0".parse().expect("literal address"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let server = tokio::spawn(serve(listener, shared.clone()));
        *shared.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        FakeControlPlane { addr, shared }
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

    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
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
    let socket = TcpSocket::new_v4().expect("tcp socket");
    // Rebinding the same port after go_down must not wait out TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind 127.0.0.1");
    socket.listen(128).expect("listen")
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
    let reply = {
        let mut s = shared.lock();
        let reply = route(&mut s, &req);
        let status = match &reply {
            Reply::Now(r) => r.status().as_u16(),
            Reply::Hang | Reply::GoDown => 0,
        };
        s.log.push(Logged {
            at: Instant::now(),
            path: req.uri().path().to_owned(),
            class: class_of(req.uri().path()),
            status,
        });
        reply
    };
    match reply {
        Reply::Now(r) => r,
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

fn route(s: &mut State, req: &Request<Incoming>) -> Reply {
    let path = req.uri().path();
    let class = class_of(path);
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
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

    let query = parse_query(req.uri().query().unwrap_or(""));
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

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
