//! The facts proxy end to end: `pdp::run` syncing from the fake control
//! plane (which accepts writes), with the sync interval at an hour so that
//! only the proxy can explain what the PDP answers after a write.

use std::collections::HashMap;
use std::time::Duration;

use pdp::config::Config;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::binary::wait_ready;
use pdp_devkit::fake_control_plane::{FakeControlPlane, RetryAfter, Shape, ENV_KEY};

pub(crate) fn environment() -> pdp::model::DataDocument {
    serde_json::from_value(json!({
        "resources": [
            {"key": "document", "actions": {"read": {}, "write": {}},
             "roles": {"owner": {"permissions": ["read", "write"],
                                 "granted_to": {"users_with_role": [
                                     {"role": "manager", "on_resource": "folder", "linked_by_relation": "parent"}]}}},
             "relations": {"parent": {"resource": "folder"}}},
            {"key": "folder", "actions": {"read": {}},
             "roles": {"manager": {"permissions": ["read"]}}}
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]}
        ],
        "users": [{"key": "alice"}],
        "tenants": [{"key": "default"}],
        "role_assignments": [{"user": "alice", "role": "viewer", "tenant": "default"}]
    }))
    .expect("a valid data document")
}

pub(crate) struct Pdp {
    pub(crate) url: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Pdp {
    pub(crate) async fn start(cp: &FakeControlPlane, extra: &[(&str, &str)]) -> Pdp {
        let mut env: HashMap<String, String> = [
            ("PDP_API_KEY", ENV_KEY),
            ("PDP_CONTROL_PLANE", &cp.url()),
            ("PDP_SYNC_INTERVAL", "1h"),
            ("PDP_LOG_LEVEL", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Config::load(None, &env).expect("valid configuration");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = pdp::run(
                config,
                listener,
                async {
                    let _ = rx.await;
                },
                None,
            )
            .await;
        });
        assert!(
            wait_ready(&format!("{url}/ready"), Duration::from_secs(10)).await,
            "the PDP did not sync from the fake control plane"
        );
        Pdp {
            url,
            client: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// A request through the PDP with its key; status, headers and body.
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ENV_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("the PDP answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /facts/role_assignments`.
    async fn assign(&self, assignment: Value) -> (u16, Value) {
        self.write(reqwest::Method::POST, "/facts/role_assignments", assignment)
            .await
    }

    async fn write(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let (status, _, body) = self.send(method, path, Some(body), &[]).await;
        (status, body)
    }

    pub(crate) async fn allowed(&self, user: &str, action: &str, resource: Value) -> bool {
        let q = json!({"user": {"key": user}, "action": action, "resource": resource});
        let (status, _, body) = self
            .send(reqwest::Method::POST, "/allowed", Some(q), &[])
            .await;
        assert_eq!(status, 200, "{body}");
        body["allow"].as_bool().expect("allow")
    }

    /// `POST /control-plane/connectivity/enable` or `/disable`.
    pub(crate) async fn switch(&self, on: bool) -> (u16, Value) {
        let path = if on { "enable" } else { "disable" };
        let path = format!("/control-plane/connectivity/{path}");
        let (status, _, body) = self.send(reqwest::Method::POST, &path, None, &[]).await;
        (status, body)
    }

    /// The authenticated health detail's `sync.last_failed_call`.
    async fn last_failed_call(&self) -> Value {
        let (_, _, health) = self.send(reqwest::Method::GET, "/health", None, &[]).await;
        health["sync"]["last_failed_call"].clone()
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Polls `done` every 20 ms until it holds, for at most `limit`.
pub(crate) async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut done: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn doc_in(tenant: &str) -> Value {
    json!({"type": "document", "tenant": tenant})
}

#[tokio::test]
async fn a_write_through_the_proxy_is_served_before_its_answer() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    use reqwest::Method;

    assert!(!pdp.allowed("bob", "read", doc_in("acme")).await);
    let (s, user) = pdp
        .write(
            Method::POST,
            "/facts/users",
            json!({"key": "bob", "email": "bob@x.test"}),
        )
        .await;
    assert_eq!(s, 201, "{user}");
    assert_eq!(user["key"], "bob");
    let (s, _) = pdp
        .write(
            Method::POST,
            "/facts/tenants",
            json!({"key": "acme", "name": "Acme"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, ra) = pdp
        .assign(json!({"user": "bob", "role": "editor", "tenant": "acme"}))
        .await;
    assert_eq!(s, 201, "{ra}");
    assert!(
        pdp.allowed("bob", "write", doc_in("acme")).await,
        "assigned, then checked"
    );

    // A cursor read before a write has expired after it.
    let (s, _, page) = pdp
        .send(Method::GET, "/local/role_assignments?limit=1", None, &[])
        .await;
    assert_eq!(s, 200);
    let cursor = page["pagination"]["cursor"]
        .as_str()
        .expect("more than one")
        .to_owned();
    assert!(
        pdp.allowed("bob", "read", doc_in("acme")).await,
        "editor extends viewer"
    );

    let (s, _) = pdp
        .write(Method::POST, "/facts/users", json!({"key": "carl"}))
        .await;
    assert_eq!(s, 201);
    let (s, _, body) = pdp
        .send(
            Method::GET,
            &format!("/local/role_assignments?limit=1&cursor={cursor}"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("expired_cursor")),
        "{body}"
    );

    // The local list shows it.
    let (s, _, list) = pdp
        .send(Method::GET, "/local/role_assignments?user=bob", None, &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        list,
        json!([{"user": "bob", "role": "editor", "tenant": "acme"}])
    );

    // The /v2 form, unassigning: denied at once.
    let (s, _) = pdp
        .write(
            Method::DELETE,
            "/v2/facts/any-project/any-env/role_assignments",
            json!({"user": "bob", "role": "editor", "tenant": "acme"}),
        )
        .await;
    assert!((200..300).contains(&s), "{s}");
    assert!(
        !pdp.allowed("bob", "write", doc_in("acme")).await,
        "unassigned, then checked"
    );

    // An instance and a tuple that derives a role on it.
    let (s, _) = pdp.assign(json!({"user": "bob", "role": "manager", "tenant": "acme", "resource_instance": "folder:f1"})).await;
    assert_eq!(s, 201);
    let doc1 = json!({"type": "document", "key": "d1", "tenant": "acme"});
    assert!(!pdp.allowed("bob", "write", doc1.clone()).await);
    let (s, _) = pdp
        .write(
            Method::POST,
            "/facts/resource_instances",
            json!({"key": "d1", "resource": "document", "tenant": "acme"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = pdp
        .write(
            Method::POST,
            "/facts/relationship_tuples",
            json!({"subject": "folder:f1", "relation": "parent", "object": "document:d1", "tenant": "acme"}),
        )
        .await;
    assert_eq!(s, 201);
    assert!(
        pdp.allowed("bob", "write", doc1.clone()).await,
        "owner derived from manager of the parent"
    );
    // The SDKs percent-encode keys in the path: the folder, deleted by
    // `folder%3Af1`, takes the derivation along.
    let (s, _, _) = pdp
        .send(
            Method::DELETE,
            "/facts/resource_instances/folder%3Af1",
            None,
            &[],
        )
        .await;
    assert_eq!(s, 204);
    assert!(
        !pdp.allowed("bob", "write", doc1.clone()).await,
        "the parent is gone"
    );

    // What the control plane saw: the delete asked for the deleted object,
    // and no request claimed the PDP republishes the change.
    let log = cp.requests();
    let delete = log
        .iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with("/role_assignments"))
        .expect("the unassign reached the control plane");
    assert!(
        delete.query.contains("return_deleted=true"),
        "{:?}",
        delete.query
    );
    assert!(log.iter().all(|r| r
        .headers
        .iter()
        .all(|(name, _)| name != "x-permit-consistent-update")));
    assert!(pdp.metric("pdp_facts_writes_total").await >= 6.0);
    assert!(pdp.metric("pdp_snapshot_pending_writes").await >= 6.0);
    pdp.stop().await;
}

#[tokio::test]
async fn a_write_the_control_plane_refuses_changes_nothing() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    let (s, body) = pdp
        .assign(json!({"user": "alice", "role": "no-such-role", "tenant": "default"}))
        .await;
    assert_eq!(s, 404, "the control plane's status passes through: {body}");
    assert!(body["detail"].is_string(), "and its body: {body}");
    assert_eq!(pdp.metric("pdp_facts_writes_total").await, 0.0);
    assert!(pdp.allowed("alice", "read", doc_in("default")).await);
    assert!(!pdp.allowed("alice", "write", doc_in("default")).await);
    pdp.stop().await;
}

#[tokio::test]
async fn bad_wait_headers_are_400_before_anything_is_forwarded() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    let before = cp.requests().len();
    for (name, value) in [
        ("X-Wait-Timeout", "soon"),
        ("X-Wait-Timeout", "-2"),
        ("X-Timeout-Policy", "retry"),
    ] {
        let (s, _, body) = pdp
            .send(
                reqwest::Method::POST,
                "/facts/users",
                Some(json!({"key": "carol"})),
                &[(name, value)],
            )
            .await;
        assert_eq!(s, 400, "{name}: {value}: {body}");
        assert_eq!(body["error"], "invalid_header");
        assert!(body["detail"].as_str().unwrap().contains(name), "{body}");
    }
    // Nothing but the environment's facts: no climbing out with `..`
    // (sent raw: an HTTP client would normalize it away).
    for path in [
        "/facts/../../../schema/p/e/roles",
        "/facts/users/%2E%2E/%2E%2E/x",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = pdp.url.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ENV_KEY}\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    assert_eq!(cp.requests().len(), before, "nothing was forwarded");
    // Without the key: refused, not forwarded.
    let resp = reqwest::Client::new()
        .post(format!("{}/facts/users", pdp.url))
        .json(&json!({"key": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(cp.requests().len(), before);
    pdp.stop().await;
}

#[tokio::test]
async fn a_write_not_served_in_time_is_424_when_the_policy_says_fail() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    let assign = json!({"user": "alice", "role": "editor", "tenant": "default"});
    // A wait of zero is over before any write is served.
    let (s, _, body) = pdp
        .send(
            reqwest::Method::POST,
            "/facts/role_assignments",
            Some(assign),
            &[("X-Wait-Timeout", "0"), ("X-Timeout-Policy", "fail")],
        )
        .await;
    assert_eq!(s, 424, "{body}");
    assert_eq!(body["detail"], "Timeout waiting for update to be received");
    assert_eq!(pdp.metric("pdp_facts_wait_timeouts_total").await, 1.0);
    // The write went through upstream and is served all the same.
    assert!(
        eventually(Duration::from_secs(2), || pdp.allowed(
            "alice",
            "write",
            doc_in("default")
        ))
        .await
    );
    // With the default policy, the control plane's answer comes back.
    let (s, _, _) = pdp
        .send(
            reqwest::Method::POST,
            "/facts/users",
            Some(json!({"key": "dave"})),
            &[("X-Wait-Timeout", "0")],
        )
        .await;
    assert_eq!(s, 201);
    pdp.stop().await;
}

#[tokio::test]
async fn a_429_passes_through_with_its_retry_after() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    cp.rate_limit_after("facts", 0, RetryAfter::Seconds(7));
    let (s, headers, _) = pdp
        .send(
            reqwest::Method::POST,
            "/facts/users",
            Some(json!({"key": "erin"})),
            &[],
        )
        .await;
    assert_eq!(s, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    assert!(!pdp.allowed("erin", "read", doc_in("default")).await);
    pdp.stop().await;
}

/// The race a write must survive: a full sync reads the assignments before
/// the write, the write is served, then the sync swaps in what it read.
#[tokio::test]
async fn a_write_survives_a_sync_that_read_its_lists_before_it() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    // Something else changes meanwhile, so that the held sync swaps.
    let mut changed = environment();
    changed
        .users
        .push(serde_json::from_value(json!({"key": "zed"})).unwrap());
    cp.set_document(&changed);
    let hold = cp.hold("role_assignments");
    let (s, _, _) = pdp.send(reqwest::Method::POST, "/sync", None, &[]).await;
    assert_eq!(s, 202);
    tokio::time::timeout(Duration::from_secs(10), hold.arrived())
        .await
        .expect("the sync reached the assignments");
    let (s, _) = pdp
        .assign(json!({"user": "alice", "role": "editor", "tenant": "default"}))
        .await;
    assert_eq!(s, 201);
    assert!(pdp.allowed("alice", "write", doc_in("default")).await);
    let swaps = pdp.metric("pdp_snapshot_swaps").await;
    hold.release();
    // The sync swaps in lists read before the write...
    assert!(
        eventually(Duration::from_secs(4), || async {
            pdp.metric("pdp_snapshot_swaps").await > swaps
        })
        .await,
        "the held sync finished"
    );
    // ...and the write is still served over them.
    assert!(
        pdp.allowed("alice", "write", doc_in("default")).await,
        "the write survived the swap"
    );
    assert_eq!(pdp.metric("pdp_snapshot_pending_writes").await, 1.0);
    // A sync that starts after the write reads it, and lets it go (a
    // requested sync waits out the 5 s minimum gap after the last one).
    let (s, _, _) = pdp.send(reqwest::Method::POST, "/sync", None, &[]).await;
    assert_eq!(s, 202);
    assert!(
        eventually(Duration::from_secs(15), || async {
            pdp.metric("pdp_snapshot_pending_writes").await == 0.0
        })
        .await,
        "a sync that started after the write lets it go"
    );
    assert!(
        pdp.allowed("alice", "write", doc_in("default")).await,
        "now from the sync itself"
    );
    pdp.stop().await;
}

/// Writes served since the last sync are in the journal beside the backup:
/// a restart with the control plane down serves them too.
#[tokio::test]
async fn a_restart_in_an_outage_serves_the_writes_since_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().to_str().unwrap().to_owned();
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[("PDP_BACKUP_DIR", &backup)]).await;
    let (s, _) = pdp
        .assign(json!({"user": "alice", "role": "editor", "tenant": "default"}))
        .await;
    assert_eq!(s, 201);
    let journal = dir.path().join(pdp::sync::JOURNAL_FILE);
    assert!(
        eventually(Duration::from_secs(2), || async { journal.exists() }).await,
        "the journal was written"
    );
    pdp.stop().await;

    cp.go_down();
    let pdp = Pdp::start(&cp, &[("PDP_BACKUP_DIR", &backup)]).await;
    assert!(
        pdp.allowed("alice", "write", doc_in("default")).await,
        "the write outlived the restart"
    );
    pdp.stop().await;
}

#[tokio::test]
async fn a_pdp_serving_a_file_has_no_facts_proxy() {
    let server = crate::support::TestServer::start_fixture("tests/fixtures/sdk.json").await;
    let (status, body) = server.post("/facts/users", &json!({"key": "x"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no_control_plane");
    server.stop().await;
}

/// The control-plane call log: the fake's request ids, and the failing
/// call named in the authenticated health detail.
#[tokio::test]
async fn the_call_log_names_the_failing_call_by_its_request_id() {
    use pdp_devkit::fake_control_plane::Fault;
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[("PDP_SYNC_DEADLINE", "2s")]).await;
    let (s, _, log) = pdp
        .send(reqwest::Method::GET, "/control-plane/log", None, &[])
        .await;
    assert_eq!(s, 200);
    let calls = log["calls"].as_array().expect("calls").clone();
    let sent: Vec<String> = cp.requests().iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(calls.len(), sent.len(), "every call, and only those");
    for (call, id) in calls.iter().zip(&sent) {
        assert_eq!(call["request_id"], json!(id), "{call}");
        assert_eq!(call["by"], "sync");
    }

    cp.fail("users", Fault::Status(500));
    let (s, _, _) = pdp.send(reqwest::Method::POST, "/sync", None, &[]).await;
    assert_eq!(s, 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !pdp.last_failed_call().await.is_null()
        })
        .await,
        "the failure reached the health detail"
    );
    let call = pdp.last_failed_call().await;
    assert_eq!(call["status"], "500", "{call}");
    assert!(call["path"].as_str().unwrap().contains("/users"), "{call}");
    let id = call["request_id"].as_str().expect("a request id");
    let fake = cp.requests();
    let seen = fake
        .iter()
        .find(|r| r.request_id == id)
        .expect("the fake's own id");
    assert_eq!(seen.status, 500);
    pdp.stop().await;
}

/// Switched off, the PDP makes no call (sync or proxy) and serves the last
/// snapshot; switched on, it syncs again.
#[tokio::test]
async fn connectivity_off_makes_no_calls_and_on_resumes_them() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &[]).await;
    use reqwest::Method;
    let (s, _, body) = pdp
        .send(Method::GET, "/control-plane/connectivity", None, &[])
        .await;
    assert_eq!((s, body), (200, json!({"enabled": true})));
    let (s, body) = pdp.switch(false).await;
    assert_eq!((s, body), (200, json!({"enabled": false})));
    let before = cp.requests().len();
    let (s, _, _) = pdp.send(Method::POST, "/sync", None, &[]).await;
    assert_eq!(s, 202);
    let (s, _, body) = pdp
        .send(
            Method::POST,
            "/facts/users",
            Some(json!({"key": "off"})),
            &[],
        )
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("connectivity"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cp.requests().len(), before, "no call while switched off");
    assert!(
        pdp.allowed("alice", "read", doc_in("default")).await,
        "the last snapshot serves"
    );

    let (s, body) = pdp.switch(true).await;
    assert_eq!((s, body), (200, json!({"enabled": true})));
    assert!(
        eventually(Duration::from_secs(10), || async {
            cp.requests().len() > before
        })
        .await,
        "the requested sync runs once switched on"
    );
    let (s, _) = pdp
        .write(Method::POST, "/facts/users", json!({"key": "on"}))
        .await;
    assert_eq!(s, 201);
    pdp.stop().await;
}

/// Every series `deploy/grafana/pdp.json` queries is one the PDP exports,
/// once each kind of event has happened once.
#[tokio::test]
async fn the_dashboard_queries_only_exported_series() {
    use pdp_devkit::fake_control_plane::Fault;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/pdp.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("pdp_") || word.starts_with("process_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    queried.insert(base.to_owned());
                }
            }
        }
    }
    assert!(queried.len() > 15, "{queried:?}");

    // One of everything: a decision (and its upload to the decision-log
    // ingress), a failed and a successful sync, a 429, a write through the
    // proxy; as a hub, for the fleet's series.
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(
        &cp,
        &[
            ("PDP_SYNC_DEADLINE", "2s"),
            ("PDP_DECISION_LOGS_MAX_DELAY", "1s"),
            ("PDP_HUB", "true"),
        ],
    )
    .await;
    assert!(pdp.allowed("alice", "read", doc_in("default")).await);
    assert!(!pdp.allowed("alice", "write", doc_in("default")).await);
    let (s, _) = pdp
        .write(
            reqwest::Method::POST,
            "/facts/users",
            json!({"key": "dash"}),
        )
        .await;
    assert_eq!(s, 201);
    assert!(
        eventually(Duration::from_secs(10), || async {
            pdp.metric("pdp_decision_log_shipped_total").await > 0.0
        })
        .await,
        "the decisions were shipped"
    );
    cp.fail_times("users", Fault::Status(500), 1_000);
    cp.rate_limit_after("schema", 0, RetryAfter::Seconds(1));
    pdp.send(reqwest::Method::POST, "/sync", None, &[]).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            pdp.metric("pdp_sync_failures_total").await > 0.0
        })
        .await,
        "the sync failed"
    );
    let text = pdp
        .client
        .get(format!("{}/metrics", pdp.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
        })
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|q| !exported.contains(q.as_str()))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    pdp.stop().await;
}
