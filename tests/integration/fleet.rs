//! The fleet end to end (docs/fleet.md), with real processes: `pdp`
//! binaries as a hub syncing from the fake control plane and followers of
//! it, a follower of a bundle file behind a real nginx, and bundles made
//! with the wrong key or of another environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdp::config::ApiKey;
use pdp::sync::bundle::{self, Kind};
use pdp::sync::{seal_staged, BackupKey, Seal};
use pdp_devkit::fake_control_plane::{FakeControlPlane, Shape, ENV_KEY};
use serde_json::{json, Value};

use crate::binary::{free_port, wait_ready};
use crate::facts::{doc_in, environment, eventually};

/// A `pdp` process, stopped when dropped.
struct Proc {
    child: Child,
    url: String,
    port: u16,
    env: Vec<(String, String)>,
}

impl Proc {
    async fn start(env: &[(&str, &str)]) -> Proc {
        Proc::start_on(free_port(), env).await
    }

    async fn start_on(port: u16, env: &[(&str, &str)]) -> Proc {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_pdp"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PDP_HOST", "127.0.0.1")
            .env("PDP_PORT", port.to_string())
            .env("PDP_API_KEY", ENV_KEY)
            .env("PDP_LOG_LEVEL", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the pdp binary starts");
        let url = format!("http://127.0.0.1:{port}");
        let p = Proc {
            child,
            url,
            port,
            env,
        };
        assert!(
            wait_ready(&format!("{}/ready", p.url), Duration::from_secs(20)).await,
            "{} did not become ready",
            p.url
        );
        p
    }

    /// The same process again, on the same port.
    async fn restart(&mut self) {
        self.kill();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let again = Proc::start_on(self.port, &env).await;
        *self = again;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(ENV_KEY);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("the PDP answers")
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(ENV_KEY)
            .json(&body)
            .send()
            .await
            .expect("the PDP answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn allowed(&self, user: &str, action: &str, resource: Value) -> bool {
        let q = json!({"user": {"key": user}, "action": action, "resource": resource});
        let (status, body) = self.post("/allowed", q).await;
        assert_eq!(status, 200, "{body}");
        body["allow"].as_bool().expect("allow")
    }

    /// Waits, up to `limit`, for this PDP to serve [`with_editor_bob`].
    async fn comes_to_allow_bob_to_write(&self, limit: Duration) {
        assert!(
            eventually(limit, || self.allowed("bob", "write", doc_in("default"))).await,
            "{} did not come to serve the new document",
            self.url
        );
    }

    async fn health(&self) -> Value {
        self.get("/health", &[]).await.json().await.unwrap()
    }

    /// The value of one series of `/metrics`, if it is there.
    async fn metric(&self, series: &str) -> Option<u64> {
        let text = self.get("/metrics", &[]).await.text().await.unwrap();
        let series = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    }

    /// A hub's `pdp_hub_answers_total` of `kind`.
    async fn hub_answers(&self, kind: &str) -> u64 {
        let series = format!("pdp_hub_answers_total{{kind=\"{kind}\"}}");
        self.metric(&series)
            .await
            .unwrap_or_else(|| panic!("no {series} in the metrics"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A hub syncing from `cp` every `interval` (at start, and when asked),
/// with `more` settings.
async fn hub_of(cp: &FakeControlPlane, interval: &str, more: &[(&str, &str)]) -> Proc {
    let url = cp.url();
    let mut env = vec![
        ("PDP_CONTROL_PLANE", url.as_str()),
        ("PDP_SYNC_INTERVAL", interval),
        ("PDP_HUB", "true"),
    ];
    env.extend_from_slice(more);
    Proc::start(&env).await
}

/// A hub syncing from `cp`, and two followers of it.
async fn fleet(cp: &FakeControlPlane) -> (Proc, Proc, Proc) {
    let hub = hub_of(cp, "1h", &[]).await;
    let a = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url)]).await;
    let b = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url)]).await;
    (hub, a, b)
}

fn with_editor_bob() -> pdp::model::DataDocument {
    let mut doc = serde_json::to_value(environment()).unwrap();
    doc["users"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "bob"}));
    doc["role_assignments"]
        .as_array_mut()
        .unwrap()
        .push(json!({"user": "bob", "role": "editor", "tenant": "default"}));
    serde_json::from_value(doc).unwrap()
}

#[tokio::test]
async fn a_change_at_the_control_plane_reaches_both_followers_through_the_hub() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let (hub, a, b) = fleet(&cp).await;
    for p in [&hub, &a, &b] {
        assert!(p.allowed("alice", "read", doc_in("default")).await);
        assert!(!p.allowed("bob", "write", doc_in("default")).await);
    }
    let listed = cp.requests().len();
    let full = hub.hub_answers("full").await;

    cp.set_document(&with_editor_bob());
    let (status, _) = hub.post("/sync", json!({})).await;
    assert_eq!(status, 202);
    for p in [&a, &b] {
        p.comes_to_allow_bob_to_write(Duration::from_secs(10)).await;
        let health = p.health().await;
        assert_eq!(health["snapshot"]["source"]["kind"], "upstream", "{health}");
    }
    assert!(
        cp.requests().len() > listed,
        "the hub synced from the control plane"
    );
    // The new document reached them as its difference, not whole.
    assert_eq!(hub.hub_answers("full").await, full);
    assert!(hub.hub_answers("delta").await >= 2);
}

#[tokio::test]
async fn a_write_through_one_follower_is_served_there_at_once_and_at_the_other_within_a_second() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let (hub, a, b) = fleet(&cp).await;
    assert!(!b.allowed("alice", "write", doc_in("default")).await);

    let (status, body) = a
        .post(
            "/facts/role_assignments",
            json!({"user": "alice", "role": "editor", "tenant": "default"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let written = Instant::now();
    assert!(
        a.allowed("alice", "write", doc_in("default")).await,
        "read-your-writes at the follower that wrote"
    );
    // Served by the hub's delta, in the hub's order, before the answer:
    // not applied on its own at the follower.
    assert_eq!(
        a.metric("pdp_facts_writes_total{outcome=\"followed\"}")
            .await,
        Some(1)
    );
    assert_eq!(
        a.metric("pdp_facts_writes_total{outcome=\"applied\"}")
            .await,
        None
    );
    assert!(
        eventually(Duration::from_secs(1), || b.allowed(
            "alice",
            "write",
            doc_in("default")
        ))
        .await,
        "the other follower did not serve the write within a second"
    );
    eprintln!("served at the other follower after {:?}", written.elapsed());
    assert!(hub.allowed("alice", "write", doc_in("default")).await);
    // It went to the control plane once, through the hub.
    let writes = cp
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/role_assignments"))
        .count();
    assert_eq!(writes, 1);
    let metrics = hub.get("/metrics", &[]).await.text().await.unwrap();
    assert!(
        metrics.contains("pdp_hub_answers_total{kind=\"delta\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_write_through_a_tier_of_hubs_is_served_where_it_was_made_before_it_answers() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let hub = hub_of(&cp, "1h", &[]).await;
    // A follower that is a hub in turn, and a follower of it.
    let middle = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url), ("PDP_HUB", "true")]).await;
    let leaf = Proc::start(&[("PDP_UPSTREAM_URL", &middle.url)]).await;
    assert!(!leaf.allowed("alice", "write", doc_in("default")).await);

    let (status, body) = leaf
        .post(
            "/facts/role_assignments",
            json!({"user": "alice", "role": "editor", "tenant": "default"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for p in [&leaf, &middle, &hub] {
        assert!(
            p.allowed("alice", "write", doc_in("default")).await,
            "{} serves the write once the leaf has answered",
            p.url
        );
    }
    for p in [&leaf, &middle] {
        assert_eq!(
            p.metric("pdp_facts_writes_total{outcome=\"followed\"}")
                .await,
            Some(1),
            "{} took it from its upstream's delta",
            p.url
        );
    }
}

#[tokio::test]
async fn an_unchanged_hub_answers_304_and_holds_a_long_poll() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let hub = hub_of(&cp, "1h", &[]).await;
    let first = hub.get("/v1/snapshot", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-pdp-bundle"], "full");
    assert_eq!(
        first.headers()["content-type"],
        "application/vnd.pdp.bundle"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = first.bytes().await.unwrap();
    let b = bundle::decode(bytes, &BackupKey::derive(&ApiKey::new(ENV_KEY))).unwrap();
    assert_eq!(b.kind, Kind::Full);
    assert_eq!(format!("\"{}\"", b.version), etag);

    let again = hub.get("/v1/snapshot", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());

    let asked = Instant::now();
    let held = hub
        .get(
            "/v1/snapshot",
            &[("if-none-match", &etag), ("prefer", "wait=1")],
        )
        .await;
    assert_eq!(held.status(), 304);
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );

    // A version of another hub process is answered in full.
    let other = hub
        .get("/v1/snapshot", &[("if-none-match", "\"0000.1.0\"")])
        .await;
    assert_eq!(other.headers()["x-pdp-bundle"], "full");

    // Without the key: 401, as every keyed endpoint.
    let anonymous = reqwest::get(format!("{}/v1/snapshot", hub.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // A PDP that is not a hub says so.
    let follower = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url)]).await;
    let refused = follower.get("/v1/snapshot", &[]).await;
    assert_eq!(refused.status(), 404);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "not_a_hub", "{body}");
}

#[tokio::test]
async fn with_the_hub_down_followers_keep_serving_and_catch_up_when_it_returns() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let (mut hub, a, b) = fleet(&cp).await;
    hub.kill();
    for p in [&a, &b] {
        assert!(p.allowed("alice", "read", doc_in("default")).await);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.health().await["sync"]["last_error_cause"] == "upstream"
        })
        .await,
        "{}",
        a.health().await
    );
    cp.set_document(&with_editor_bob());
    hub.restart().await;
    for p in [&a, &b] {
        p.comes_to_allow_bob_to_write(Duration::from_secs(20)).await;
    }
}

/// A static server for bundles: nginx from the distribution, serving `dir`
/// on `port`, stopped when dropped.
struct Nginx {
    child: Child,
    _conf: tempfile::TempDir,
}

impl Nginx {
    fn start(dir: &Path, port: u16) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is installed (Debian's nginx package; .ci/run installs it)");
        let conf = tempfile::tempdir().unwrap();
        let text = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log stderr;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
               fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    etag on;\n  }}\n}}\n",
            pid = conf.path().join("nginx.pid").display(),
            tmp = conf.path().display(),
            root = dir.display(),
        );
        let file = conf.path().join("nginx.conf");
        std::fs::write(&file, text).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&file)
            .arg("-p")
            .arg(conf.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx starts");
        Nginx { child, _conf: conf }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pdp export` of `doc`, into `out`.
fn export(doc: &pdp::model::DataDocument, out: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("env.json");
    std::fs::write(&data, serde_json::to_vec(doc).unwrap()).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_pdp"))
        .args(["export", "--out"])
        .arg(out)
        .env_clear()
        .env("PDP_API_KEY", ENV_KEY)
        .env("PDP_DATA_FILE", &data)
        .env("PDP_LOG_LEVEL", "warn")
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_follower_behind_nginx_serves_an_exported_bundle_and_its_updates() {
    let site = tempfile::tempdir().unwrap();
    let file: PathBuf = site.path().join("bundle.bin");
    export(&environment(), &file);
    let port = free_port();
    let _nginx = Nginx::start(site.path(), port);
    let url = format!("http://127.0.0.1:{port}/bundle.bin");
    assert!(
        eventually(Duration::from_secs(10), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await,
        "nginx did not serve the bundle"
    );
    let backup = tempfile::tempdir().unwrap();
    let follower = Proc::start(&[
        ("PDP_UPSTREAM_URL", &url),
        ("PDP_SYNC_INTERVAL", "200ms"),
        ("PDP_BACKUP_DIR", backup.path().to_str().unwrap()),
    ])
    .await;
    assert!(follower.allowed("alice", "read", doc_in("default")).await);
    assert!(!follower.allowed("bob", "write", doc_in("default")).await);
    // Unchanged: nginx answers 304 to the follower's If-None-Match.
    assert!(
        eventually(Duration::from_secs(5), || async {
            follower.health().await["sync"]["last_outcome"] == "unchanged"
        })
        .await,
        "{}",
        follower.health().await
    );

    // Synced a second later (the backup's clock counts seconds).
    let first = std::fs::read(&file).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    export(&with_editor_bob(), &file);
    follower
        .comes_to_allow_bob_to_write(Duration::from_secs(10))
        .await;
    assert!(backup.path().join(pdp::sync::BACKUP_FILE).exists());
    // Writes go nowhere: a bundle file has no control plane behind it.
    let (status, body) = follower
        .post("/facts/users", json!({"key": "nobody"}))
        .await;
    assert_eq!(status, 404, "{body}");

    // The first bundle served again (a replay, a stale cache): authentic,
    // but older than what is served, so refused.
    std::fs::write(&file, first).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            follower.health().await["sync"]["last_error_cause"] == "bundle_refused"
        })
        .await,
        "{}",
        follower.health().await
    );
    assert!(follower.allowed("bob", "write", doc_in("default")).await);
}

/// A full bundle of `doc`, sealed for `environment` with `key`.
fn bundle_of(doc: &pdp::model::DataDocument, environment: &str, key: &str) -> Vec<u8> {
    let key = BackupKey::derive(&ApiKey::new(key));
    let staged = pdp::snapshot::Staged::from_document(doc);
    let seal = Seal {
        key: key.clone(),
        environment: environment.to_owned(),
    };
    let base = seal_staged(&staged, &seal, std::time::SystemTime::now()).unwrap();
    bundle::encode(
        &key,
        Kind::Full,
        &format!("test.{environment}"),
        None,
        environment,
        Some(&base),
        &[],
    )
}

#[tokio::test]
async fn bundles_of_another_environment_or_with_a_wrong_tag_are_refused_with_the_reason() {
    let site = tempfile::tempdir().unwrap();
    let file = site.path().join("bundle.bin");
    std::fs::write(&file, bundle_of(&environment(), "env-a", ENV_KEY)).unwrap();
    let port = free_port();
    let _nginx = Nginx::start(site.path(), port);
    let url = format!("http://127.0.0.1:{port}/bundle.bin");
    assert!(
        eventually(Duration::from_secs(10), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
    );
    let follower = Proc::start(&[("PDP_UPSTREAM_URL", &url), ("PDP_SYNC_INTERVAL", "200ms")]).await;
    assert!(follower.allowed("alice", "read", doc_in("default")).await);

    let refused = |what: &'static str| {
        let follower = &follower;
        async move {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    let h = follower.health().await;
                    h["sync"]["last_error_cause"] == "bundle_refused"
                        && h["sync"]["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(what))
                })
                .await,
                "{}",
                follower.health().await
            );
        }
    };
    // Another environment's, under the same key.
    std::fs::write(&file, bundle_of(&with_editor_bob(), "env-b", ENV_KEY)).unwrap();
    refused("environment env-b").await;
    // Made with another key (a forged or another environment's bundle).
    std::fs::write(
        &file,
        bundle_of(&with_editor_bob(), "env-a", "permit_key_other"),
    )
    .unwrap();
    refused("not made with this API key").await;
    // Altered after it was made.
    let mut altered = bundle_of(&with_editor_bob(), "env-a", ENV_KEY);
    let last = altered.len() - 2;
    altered[last] ^= 0x20;
    std::fs::write(&file, altered).unwrap();
    refused("not made with this API key").await;
    // Through it all the last good snapshot served.
    assert!(follower.allowed("alice", "read", doc_in("default")).await);
    assert!(!follower.allowed("bob", "write", doc_in("default")).await);
}

#[tokio::test]
async fn a_followers_decisions_reach_the_control_plane_through_the_hub_once() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let fast = ("PDP_DECISION_LOGS_MAX_DELAY", "1s");
    let hub = hub_of(&cp, "1h", &[fast]).await;
    let a = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url), fast]).await;
    let q = json!({"user": {"key": "alice"}, "action": "read", "resource": doc_in("default")});
    let resp = reqwest::Client::new()
        .post(format!("{}/allowed", a.url))
        .bearer_auth(ENV_KEY)
        .json(&q)
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-decision-id"].to_str().unwrap().to_owned();
    let with_id = || {
        cp.ingress_chunks()
            .iter()
            .filter(|c| c.status == 204)
            .flat_map(|c| c.events.clone().unwrap_or_default())
            .filter(|e| e["decision_id"] == id.as_str())
            .collect::<Vec<Value>>()
    };
    assert!(
        eventually(Duration::from_secs(15), || async { !with_id().is_empty() }).await,
        "the follower's decision did not reach the control plane"
    );
    // Shipped by the hub, in its own uploads, as the follower made it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = with_id();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["path"], "permit/root");
    assert_eq!(events[0]["input"], q);
    assert_eq!(events[0]["result"]["allow"], true);
    let (status, _) = hub
        .post("/v1/decision_logs/ingress", json!("not events"))
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_follower_is_as_stale_as_its_hub() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let hub = hub_of(&cp, "1s", &[]).await;
    let a = Proc::start(&[("PDP_UPSTREAM_URL", &hub.url), ("PDP_MAX_STALENESS", "3s")]).await;
    let age = hub.get("/v1/snapshot", &[]).await.headers()["x-pdp-snapshot-age-ms"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(age < 3_000, "{age} ms");
    assert!(a.allowed("alice", "read", doc_in("default")).await);
    // The control plane goes away: the hub stops confirming its snapshot,
    // and the follower, which still reaches the hub, goes stale with it.
    cp.go_down();
    assert!(
        eventually(Duration::from_secs(15), || async {
            let q =
                json!({"user": {"key": "alice"}, "action": "read", "resource": doc_in("default")});
            a.post("/allowed", q).await.0 == 503
        })
        .await,
        "the follower kept answering past the staleness limit"
    );
    cp.come_up();
    // The hub's next sync comes after its back-off.
    assert!(
        eventually(Duration::from_secs(60), || async {
            let q =
                json!({"user": {"key": "alice"}, "action": "read", "resource": doc_in("default")});
            a.post("/allowed", q).await.0 == 200
        })
        .await,
        "the follower did not recover with its hub"
    );
}

#[tokio::test]
async fn export_reads_the_control_plane_once_into_a_bundle_of_its_environment() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle.bin");
    // The fake answers on this test's runtime: the export runs aside.
    let (url, file) = (cp.url(), out.clone());
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pdp"))
            .args(["export", "--out"])
            .arg(&file)
            .env_clear()
            .env("PDP_API_KEY", ENV_KEY)
            .env("PDP_CONTROL_PLANE", url)
            .env("PDP_LOG_LEVEL", "warn")
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "users and attributes: the owner's alone"
    );
    let key = BackupKey::derive(&ApiKey::new(ENV_KEY));
    let b = bundle::decode(std::fs::read(&out).unwrap().into(), &key).unwrap();
    assert_eq!(b.kind, Kind::Full);
    let scope = cp
        .requests()
        .into_iter()
        .find(|r| r.path == "/v2/api-key/scope")
        .expect("the key's scope was read");
    assert_eq!(scope.status, 200);
    let doc = pdp::sync::decode_backup(&b.base.unwrap(), &key).unwrap();
    assert_eq!(doc.environment, b.environment);
    assert!(!b.environment.is_empty());
    assert!(b.writes.is_empty());
}

#[tokio::test]
async fn a_draining_hub_answers_held_polls_at_once() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let mut hub = hub_of(&cp, "1h", &[("PDP_SHUTDOWN_GRACE", "20s")]).await;
    let etag = hub.get("/v1/snapshot", &[]).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let url = format!("{}/v1/snapshot", hub.url);
    let held = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(ENV_KEY)
            .header("if-none-match", etag)
            .header("prefer", "wait=60")
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    });
    // Held: the hub counts it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = hub.get("/metrics", &[]).await.text().await.unwrap();
            m.contains("pdp_hub_long_polls 1")
        })
        .await
    );
    let asked = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &hub.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(held.await.unwrap(), 304);
    let exited = tokio::task::spawn_blocking(move || {
        let status = hub.child.wait();
        (status, hub)
    })
    .await
    .unwrap();
    assert!(exited.0.unwrap().success());
    // Well inside the 20 s grace: the held poll did not hold the drain.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}
