//! Background sync against a fake control plane: what the PDP serves after
//! syncs that succeed, fail, are rate-limited or never get a network, and
//! what it does with each kind of API key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pdp::decide::{self, AllowedQuery};
use pdp::model::DataDocument;
use pdp::snapshot::Staged;
use pdp::store::{Source, Store};
use pdp::sync::{
    read_backup, restore_backup, BackupError, FatalKeyError, KeyKind, SyncConfig, SyncMetrics,
    SyncState, Syncer, BACKUP_FILE,
};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use pdp_devkit::fake_control_plane::{
    FakeControlPlane, Fault, RetryAfter, Shape, ENV_KEY, LISTS, ORG_KEY, PROJECT_KEY,
};

/// The key backups are sealed with under [`ENV_KEY`].
fn backup_key() -> pdp::sync::BackupKey {
    pdp::sync::BackupKey::derive(&pdp::config::ApiKey::new(ENV_KEY))
}

/// A seal for backups written by a test, as the sync writes them.
fn seal() -> pdp::sync::Seal {
    pdp::sync::Seal {
        key: backup_key(),
        environment: "test-environment".to_owned(),
    }
}

/// An environment with `users` users, each a viewer in `default` (every
/// third also an editor), 150 documents in 5 folders, and one ABAC rule,
/// so every list the sync reads has items and most span several pages.
fn environment(users: usize) -> DataDocument {
    let user_list: Vec<_> = (0..users)
        .map(|i| {
            json!({"key": format!("user-{i}"), "email": format!("user-{i}@example.com"),
                        "attributes": {"dept": if i % 2 == 0 { "eng" } else { "sales" }}})
        })
        .collect();
    let mut assignments = Vec::new();
    for i in 0..users {
        assignments
            .push(json!({"user": format!("user-{i}"), "role": "viewer", "tenant": "default"}));
        if i % 3 == 0 {
            assignments
                .push(json!({"user": format!("user-{i}"), "role": "editor", "tenant": "default"}));
        }
    }
    let instances: Vec<_> = (0..150)
        .map(|i| json!({"key": format!("d{i}"), "resource": "document", "tenant": "default"}))
        .collect();
    let tuples: Vec<_> = (0..120)
        .map(|i| {
            json!({"subject": format!("folder:f{}", i % 5), "relation": "parent",
                        "object": format!("document:d{i}"), "tenant": "default"})
        })
        .collect();
    serde_json::from_value(json!({
        "resources": [
            {"key": "document", "actions": {"read": {}, "write": {}},
             "roles": {"owner": {"permissions": ["read", "write"]}},
             "relations": {"parent": {"resource": "folder"}}},
            {"key": "folder", "actions": {"read": {}}}
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]}
        ],
        "condition_sets": [
            {"key": "engineers", "type": "userset",
             "conditions": {"allOf": [{"user.dept": {"equals": "eng"}}]}},
            {"key": "all_docs", "type": "resourceset", "resource": "document",
             "conditions": {"allOf": [{"resource.classification": {"equals": "public"}}]}}
        ],
        "users": user_list,
        "tenants": [{"key": "default", "name": "Default"}, {"key": "other", "name": "Other"}],
        "role_assignments": assignments,
        "resource_instances": instances,
        "relationship_tuples": tuples,
        "condition_set_rules": [
            {"user_set": "engineers", "permission": "document:read", "resource_set": "all_docs"}
        ]
    }))
    .expect("test environment is a valid data document")
}

/// `environment(users)` after an operator removed user-1's roles and added
/// a user: a change a caller of `/allowed` notices.
fn changed(users: usize) -> DataDocument {
    let mut doc = environment(users);
    doc.role_assignments.retain(|a| a.user != "user-1");
    let mut newcomer = doc.users[0].clone();
    newcomer.key = "newcomer".to_owned();
    doc.users.push(newcomer);
    let mut role = doc.role_assignments[0].clone();
    role.user = "newcomer".to_owned();
    role.role = "viewer".to_owned();
    doc.role_assignments.push(role);
    doc
}

/// What `/allowed` would answer: may `user` `action` document d7?
fn allowed(store: &Store, user: &str, action: &str) -> Option<bool> {
    let loaded = store.load()?;
    let body = json!({"user": {"key": user}, "action": action,
                      "resource": {"type": "document", "key": "d7", "tenant": "default"}})
    .to_string();
    let query: AllowedQuery = serde_json::from_str(&body).expect("valid /allowed body");
    Some(decide::check(&loaded.snapshot, &query).allow)
}

fn config(fake: &FakeControlPlane) -> SyncConfig {
    SyncConfig {
        control_plane: fake.url(),
        api_key: pdp::config::ApiKey::new(ENV_KEY),
        // Long: tests trigger syncs, as POST /sync does, unless they test
        // the interval itself.
        interval: Duration::from_secs(60),
        request_timeout: Duration::from_millis(300),
        sync_deadline: Duration::from_secs(2),
        per_page: 100,
        overall_per_min: 0,
        facts_per_min: 0,
        schema_per_min: 0,
        limit_window: Duration::from_secs(60),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        min_trigger_gap: Duration::ZERO,
        max_sync_bytes: 1 << 30,
        backup_dir: None,
        hub: false,
    }
}

/// A running sync task and the handles a PDP would hold on it.
struct Running {
    store: Arc<Store>,
    state: Arc<SyncState>,
    metrics: Arc<SyncMetrics>,
    trigger: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), FatalKeyError>>,
}

impl Running {
    fn start(config: SyncConfig, store: Arc<Store>) -> Running {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(SyncMetrics::register(&registry).expect("fresh registry"));
        let state = Arc::new(SyncState::new());
        let syncer =
            Syncer::new(config, state.clone(), metrics.clone()).expect("http client builds");
        let trigger = Arc::new(Notify::new());
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(syncer.run(store.clone(), trigger.clone(), rx));
        Running {
            store,
            state,
            metrics,
            trigger,
            shutdown,
            task,
        }
    }

    /// Wait until the sync task has finished a sync that put `doc` in service.
    async fn serves(&self, doc: &DataDocument, what: &str) {
        let want = Staged::from_document(doc).content_hash();
        eventually(what, Duration::from_secs(8), || {
            // The store is swapped just before the state is updated.
            self.hash().as_deref() == Some(&want) && self.state.status().phase == "idle"
        })
        .await;
    }

    fn hash(&self) -> Option<String> {
        self.store.load().map(|l| l.meta.content_hash.clone())
    }

    /// Trigger a sync and wait until it has finished, whatever the outcome.
    async fn sync_now(&self) -> pdp::sync::SyncStatus {
        let before = self.state.status();
        let done = before.syncs_succeeded + before.syncs_failed;
        self.trigger.notify_one();
        eventually(
            "the triggered sync to finish",
            Duration::from_secs(8),
            || {
                let s = self.state.status();
                s.syncs_succeeded + s.syncs_failed > done
            },
        )
        .await;
        self.state.status()
    }

    async fn stop(self) -> Result<(), FatalKeyError> {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sync task stops on shutdown")
            .expect("sync task did not panic")
    }
}

async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests the fake logged for one list.
fn list_requests(fake: &FakeControlPlane, list: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path.rsplit('/').next() == Some(list))
        .count()
}

#[tokio::test]
async fn an_environment_key_syncs_every_page_in_each_response_shape() {
    let doc = environment(250);
    let lengths = serde_json::to_value(&doc).unwrap();
    for shape in [Shape::Bare, Shape::Paged, Shape::Cursor] {
        let fake = FakeControlPlane::start(&doc, shape).await;
        let run = Running::start(config(&fake), Arc::new(Store::new()));
        run.serves(&doc, "the first sync").await;
        assert_eq!(
            allowed(&run.store, "user-0", "write"),
            Some(true),
            "{shape:?}"
        );
        assert_eq!(
            allowed(&run.store, "user-1", "write"),
            Some(false),
            "{shape:?}"
        );
        assert_eq!(run.store.load().unwrap().meta.source, Source::ControlPlane);

        // Each list was read to its end and no further. A bare list that
        // documents `include_total_count` answers paged when asked for it;
        // one that does not, over more than one page, has its first page
        // read again at the end.
        for (list, field) in LISTS {
            let n = lengths[field].as_array().unwrap().len();
            let counted = matches!(list, "role_assignments" | "roles" | "resources");
            let pages = match shape {
                Shape::Bare if counted => n.div_ceil(100).max(1),
                Shape::Bare if n >= 100 => n / 100 + 2,
                Shape::Bare => 1,
                Shape::Paged | Shape::Cursor => n.div_ceil(100).max(1),
            };
            assert_eq!(
                list_requests(&fake, list),
                pages,
                "{shape:?} {list} ({n} items)"
            );
        }
        let status = run.state.status();
        assert_eq!(status.last_outcome, Some("swapped"));
        assert_eq!(
            status.requests_last_sync as usize,
            fake.requests().len() - 1
        );
        assert!(fake.requests().iter().all(|r| r.status == 200));
        run.stop().await.unwrap();
    }
}

#[tokio::test]
async fn project_and_organization_keys_are_refused_with_the_reason() {
    let fake = FakeControlPlane::start(&environment(5), Shape::Bare).await;
    for (key, kind, words) in [
        (PROJECT_KEY, KeyKind::Project, "a project key"),
        (ORG_KEY, KeyKind::Organization, "an organization key"),
    ] {
        let run = Running::start(
            SyncConfig {
                api_key: pdp::config::ApiKey::new(key),
                ..config(&fake)
            },
            Arc::new(Store::new()),
        );
        let err = tokio::time::timeout(Duration::from_secs(5), run.task)
            .await
            .expect("a wrong key ends the task")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, FatalKeyError::WrongKeyKind { got } if got == kind),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(words) && msg.contains("needs an environment key"),
            "{msg}"
        );
        assert!(run.store.load().is_none());
    }
    let run = Running::start(
        SyncConfig {
            api_key: pdp::config::ApiKey::new("permit_key_revoked"),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    let err = run.task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, FatalKeyError::InvalidKey { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("invalid API key"), "{err}");
    // Only the scope was ever asked for.
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.path == "/v2/api-key/scope"));
}

/// Only a 401 says the key is bad (docs/contract.md, Key scope). A 403 (which a proxy in
/// front of the control plane may send) or a scope that names no
/// organization (`{}` from a misbehaving hop) is retried like an outage,
/// so a fleet with backups keeps serving instead of exiting.
#[tokio::test]
async fn a_403_or_an_empty_scope_is_retried_not_fatal() {
    let doc = environment(20);
    for fault in [Fault::Status(403), Fault::TruncatedJson] {
        let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
        fake.fail_times("scope", fault, 3);
        let run = Running::start(config(&fake), Arc::new(Store::new()));
        run.serves(&doc, "the sync after the faults").await;
        let scopes = fake
            .requests()
            .iter()
            .filter(|r| r.path == "/v2/api-key/scope")
            .count();
        assert_eq!(scopes, 4, "{fault:?}");
        run.stop().await.unwrap();
    }
}

/// The real binary, as an operator runs it: a wrong key kind is exit 64
/// with the reason, not a PDP that serves nothing forever.
#[tokio::test]
async fn the_binary_exits_64_on_a_project_or_organization_key() {
    let fake = FakeControlPlane::start(&environment(5), Shape::Bare).await;
    let backups = tempfile::tempdir().unwrap();
    for (key, words) in [
        (PROJECT_KEY, "a project key"),
        (ORG_KEY, "an organization key"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pdp"))
            .env_clear()
            .env("PDP_API_KEY", key)
            .env("PDP_CONTROL_PLANE", fake.url())
            .env("PDP_HOST", "127.0.0.1")
            .env("PDP_PORT", "0")
            .env("PDP_BACKUP_DIR", backups.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pdp binary runs");
        let until = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("pdp did not exit by itself on {words}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(64), "{stderr}{stdout}");
        assert!(
            stderr.contains(words) || stdout.contains(words),
            "{stderr}{stdout}"
        );
    }
}

async fn retry_after_is_honoured(retry_after: RetryAfter) {
    let doc = environment(250);
    let fake = FakeControlPlane::start(&doc, Shape::Paged).await;
    // The third facts request is refused.
    fake.rate_limit_after("facts", 2, retry_after);
    let started = Instant::now();
    let run = Running::start(config(&fake), Arc::new(Store::new()));
    run.serves(&doc, "the rate-limited sync").await;
    let (lifted, early) = fake.rate_limit_report().expect("the 429 was sent");
    assert_eq!(early, 0, "requests arrived before Retry-After elapsed");
    let refused_at = fake
        .requests()
        .iter()
        .find(|r| r.status == 429)
        .map(|r| r.at)
        .unwrap();
    let after: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.class == "facts" && r.at > refused_at)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|r| r.at >= lifted),
        "a facts request came before {lifted:?}"
    );
    // Schema requests were not held back by a facts 429.
    assert!(lifted > started);
    // The wait is visible in the limiter metric (its length depends on when
    // the client saw the 429, so only its presence is asserted).
    assert!(run.metrics.limiter_wait_seconds() > 0.0);
    run.stop().await.unwrap();
}

/// A `Retry-After` no clock can hold (u64::MAX seconds) fails that sync,
/// which gives up at its deadline instead of waiting; the task lives on.
#[tokio::test]
async fn an_absurd_retry_after_fails_the_sync_not_the_task() {
    let doc = environment(250);
    let fake = FakeControlPlane::start(&doc, Shape::Paged).await;
    fake.rate_limit_after("facts", 2, RetryAfter::Raw("18446744073709551615"));
    let run = Running::start(config(&fake), Arc::new(Store::new()));
    eventually(
        "the rate-limited sync to fail",
        Duration::from_secs(8),
        || run.state.status().syncs_failed > 0,
    )
    .await;
    assert!(run.hash().is_none(), "a partial snapshot was swapped in");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn no_request_is_sent_before_a_retry_after_in_seconds() {
    retry_after_is_honoured(RetryAfter::Seconds(1)).await;
}

#[tokio::test]
async fn no_request_is_sent_before_a_retry_after_date() {
    retry_after_is_honoured(RetryAfter::Date(Duration::from_secs(2))).await;
}

#[tokio::test]
async fn the_limiter_keeps_a_large_sync_under_a_small_limit() {
    // 1,200 users and 1,600 assignments: 36 facts requests against a
    // budget of 20 per second.
    let doc = environment(1_200);
    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    let limit = 20;
    let window = Duration::from_secs(1);
    let run = Running::start(
        SyncConfig {
            facts_per_min: limit,
            limit_window: window,
            sync_deadline: Duration::from_secs(10),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    run.serves(&doc, "the budgeted sync").await;
    let facts: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.class == "facts")
        .map(|r| r.at)
        .collect();
    assert!(
        facts.len() > limit as usize + 10,
        "{} requests",
        facts.len()
    );
    let busiest = facts
        .iter()
        .map(|&start| {
            facts
                .iter()
                .filter(|&&t| t >= start && t < start + window)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= limit as usize,
        "{busiest} facts requests in one window"
    );
    assert!(run.metrics.limiter_wait_seconds() > 0.5);
    run.stop().await.unwrap();
}

/// Sync A; then the control plane changes to B and fails with `fault` on
/// `list`: A keeps serving. Once the fault clears, B is served.
async fn fault_keeps_the_previous_snapshot(
    shape: Shape,
    list: &'static str,
    fault: Fault,
    cause: &str,
) {
    let (a, b) = (environment(250), changed(250));
    let fake = FakeControlPlane::start(&a, shape).await;
    let run = Running::start(config(&fake), Arc::new(Store::new()));
    let hash_a = Staged::from_document(&a).content_hash();
    run.serves(&a, "the first sync").await;
    assert_eq!(allowed(&run.store, "user-1", "read"), Some(true));

    fake.set_document(&b);
    fake.fail(list, fault);
    let status = run.sync_now().await;
    assert_eq!(status.last_outcome, Some("failed"), "{fault:?}: {status:?}");
    assert_eq!(
        status.last_error_cause,
        Some(cause),
        "{fault:?}: {status:?}"
    );
    assert_eq!(run.hash(), Some(hash_a.clone()), "{fault:?}");
    assert_eq!(
        allowed(&run.store, "user-1", "read"),
        Some(true),
        "{fault:?}"
    );

    fake.clear_faults();
    fake.come_up();
    fake.set_document(&b);
    run.trigger.notify_one();
    run.serves(&b, "the sync after the fault cleared").await;
    assert_eq!(
        allowed(&run.store, "user-1", "read"),
        Some(false),
        "{fault:?}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn server_errors_mid_sync_leave_the_previous_snapshot_serving() {
    fault_keeps_the_previous_snapshot(
        Shape::Paged,
        "role_assignments",
        Fault::Status(500),
        "http_5xx",
    )
    .await;
    fault_keeps_the_previous_snapshot(Shape::Bare, "users", Fault::Status(503), "http_5xx").await;
}

#[tokio::test]
async fn a_hanging_control_plane_leaves_the_previous_snapshot_serving() {
    fault_keeps_the_previous_snapshot(Shape::Bare, "resource_instances", Fault::Hang, "timeout")
        .await;
}

#[tokio::test]
async fn truncated_json_leaves_the_previous_snapshot_serving() {
    fault_keeps_the_previous_snapshot(Shape::Cursor, "users", Fault::TruncatedJson, "malformed")
        .await;
}

#[tokio::test]
async fn a_cursor_that_keeps_expiring_leaves_the_previous_snapshot_serving() {
    fault_keeps_the_previous_snapshot(
        Shape::Cursor,
        "role_assignments",
        Fault::ExpireCursors,
        "cursor_expired",
    )
    .await;
}

#[tokio::test]
async fn data_changing_between_pages_leaves_the_previous_snapshot_serving() {
    for shape in [Shape::Bare, Shape::Paged, Shape::Cursor] {
        fault_keeps_the_previous_snapshot(shape, "users", Fault::GrowBetweenPages, "inconsistent")
            .await;
    }
}

/// A deletion while a list is paged shifts the rest back, and one item
/// would go unread: a lost fact, which can grant access. `role_assignments`
/// is asked for its total, which moves; `users` and `resource_instances`,
/// bare here, have their first page read again at the end.
#[tokio::test]
async fn an_item_deleted_between_pages_fails_the_sync_instead_of_going_unread() {
    for list in ["role_assignments", "users", "resource_instances"] {
        fault_keeps_the_previous_snapshot(
            Shape::Bare,
            list,
            Fault::DeleteBetweenPages,
            "inconsistent",
        )
        .await;
    }
}

/// Items added at the end while a list with a total is paged are read
/// with its last page: the total grows, nothing is lost, and the sync
/// goes through (a busy environment must still sync).
#[tokio::test]
async fn items_appended_between_pages_are_read_and_the_sync_goes_through() {
    let doc = environment(250);
    let fake = FakeControlPlane::start(&doc, Shape::Paged).await;
    fake.fail_times("users", Fault::AppendBetweenPages, 1);
    let run = Running::start(config(&fake), Arc::new(Store::new()));
    let status = run.sync_now().await;
    assert_eq!(status.last_outcome, Some("swapped"), "{status:?}");
    let loaded = run.store.load().unwrap();
    assert!(loaded.snapshot.has_user("late-user-1"));
    assert_eq!(loaded.snapshot.counts().users, 251);
    run.stop().await.unwrap();
}

#[tokio::test]
async fn the_control_plane_going_down_mid_sync_leaves_the_previous_snapshot_serving() {
    fault_keeps_the_previous_snapshot(Shape::Paged, "role_assignments", Fault::GoDown, "network")
        .await;
}

#[tokio::test]
async fn an_expired_cursor_restarts_its_listing_once() {
    let doc = environment(250);
    let fake = FakeControlPlane::start(&doc, Shape::Cursor).await;
    fake.fail_times("users", Fault::ExpireCursors, 1);
    let run = Running::start(config(&fake), Arc::new(Store::new()));
    run.serves(&doc, "the sync").await;
    // Page 1, the refused cursor for page 2, then all 3 pages again.
    assert_eq!(list_requests(&fake, "users"), 5);
    assert_eq!(run.state.status().syncs_failed, 0);
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_change_in_the_control_plane_is_served_after_the_next_interval() {
    let (a, b) = (environment(30), changed(30));
    let fake = FakeControlPlane::start(&a, Shape::Paged).await;
    let run = Running::start(
        SyncConfig {
            interval: Duration::from_millis(200),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    run.serves(&a, "the first sync").await;
    let first = run.store.load().unwrap();

    // Nothing changed: syncs go on, the snapshot is not replaced.
    eventually("an unchanged resync", Duration::from_secs(5), || {
        run.state.status().syncs_succeeded >= 3
    })
    .await;
    assert!(Arc::ptr_eq(&first, &run.store.load().unwrap()));
    assert_eq!(run.state.status().last_outcome, Some("unchanged"));

    fake.set_document(&b);
    run.serves(&b, "the change to be served").await;
    assert_eq!(allowed(&run.store, "user-1", "read"), Some(false));
    assert_eq!(allowed(&run.store, "newcomer", "read"), Some(true));
    run.stop().await.unwrap();
}

/// A sync that finds the backup's document again records it, so a restart
/// in an outage counts the backup fresh as of that sync, not as of the one
/// that wrote it (PDP_MAX_STALENESS would otherwise refuse it too early).
#[tokio::test]
async fn an_unchanged_sync_confirms_the_backup() {
    let doc = environment(50);
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    let run = Running::start(
        SyncConfig {
            backup_dir: Some(dir.path().to_owned()),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    run.serves(&doc, "the first sync").await;
    let written = read_backup(dir.path(), &backup_key()).unwrap().synced_at;
    // Backup times are whole seconds.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let status = run.sync_now().await;
    assert_eq!(status.syncs_failed, 0);
    run.stop().await.unwrap();
    assert_eq!(
        read_backup(dir.path(), &backup_key()).unwrap().synced_at,
        written,
        "not rewritten"
    );

    let store = Store::new();
    assert!(restore_backup(&store, dir.path(), &backup_key()).unwrap());
    let age = store.freshness_age();
    assert!(
        age < Duration::from_secs(2),
        "fresh as of the written backup: {age:?}"
    );
}

#[tokio::test]
async fn a_restart_with_the_control_plane_down_serves_the_backup() {
    let doc = environment(250);
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    let with_backup = SyncConfig {
        backup_dir: Some(dir.path().to_owned()),
        ..config(&fake)
    };
    let run = Running::start(with_backup.clone(), Arc::new(Store::new()));
    let hash = Staged::from_document(&doc).content_hash();
    eventually("the backup to be written", Duration::from_secs(5), || {
        read_backup(dir.path(), &backup_key()).is_ok_and(|b| b.content_hash == hash)
    })
    .await;
    run.stop().await.unwrap();

    // The PDP restarts; the control plane is unreachable.
    fake.go_down();
    let store = Arc::new(Store::new());
    assert!(restore_backup(&store, dir.path(), &backup_key()).unwrap());
    let run = Running::start(with_backup, store);
    assert_eq!(run.hash(), Some(hash.clone()));
    assert_eq!(
        run.store.load().unwrap().meta.source,
        Source::Backup(dir.path().join(BACKUP_FILE))
    );
    assert_eq!(allowed(&run.store, "user-0", "write"), Some(true));
    eventually(
        "failed attempts to reach the control plane",
        Duration::from_secs(5),
        || run.state.status().consecutive_failures >= 3,
    )
    .await;
    assert_eq!(run.hash(), Some(hash.clone()));

    // It comes back: the same data is now confirmed by the control plane.
    fake.come_up();
    eventually(
        "the control plane to be used again",
        Duration::from_secs(5),
        || {
            run.store
                .load()
                .is_some_and(|l| l.meta.source == Source::ControlPlane)
        },
    )
    .await;
    assert_eq!(run.hash(), Some(hash));
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_corrupted_backup_is_rejected_and_replaced_by_the_next_sync() {
    let doc = environment(40);
    let dir = tempfile::tempdir().unwrap();
    let path = pdp::sync::write_backup(dir.path(), &Staged::from_document(&doc), &seal()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let store = Arc::new(Store::new());
    let err = restore_backup(&store, dir.path(), &backup_key()).unwrap_err();
    assert!(
        matches!(err, BackupError::Unauthenticated { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not written with this API key"),
        "{err}"
    );
    assert!(
        store.load().is_none(),
        "a corrupt backup must not be served"
    );

    // Truncated (a crash mid-copy) is refused as well.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = restore_backup(&store, dir.path(), &backup_key()).unwrap_err();
    assert!(matches!(err, BackupError::Truncated { .. }), "{err:?}");
    assert!(store.load().is_none());

    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    let run = Running::start(
        SyncConfig {
            backup_dir: Some(dir.path().to_owned()),
            ..config(&fake)
        },
        store,
    );
    let hash = Staged::from_document(&doc).content_hash();
    eventually("a good backup", Duration::from_secs(5), || {
        read_backup(dir.path(), &backup_key()).is_ok_and(|b| b.content_hash == hash)
    })
    .await;
    assert_eq!(run.hash(), Some(hash));
    run.stop().await.unwrap();
}

/// A backup directory that outlives a key change, or is shared between
/// environments, never serves the other key's data: the PDP starts not
/// ready, with the reason in its health detail.
#[tokio::test]
async fn a_backup_written_under_another_key_is_refused() {
    use crate::binary::free_port;

    let dir = tempfile::tempdir().unwrap();
    let other = pdp::sync::Seal {
        key: pdp::sync::BackupKey::derive(&pdp::config::ApiKey::new("permit_key_other_env")),
        environment: "another-environment".to_owned(),
    };
    pdp::sync::write_backup(dir.path(), &Staged::from_document(&environment(5)), &other).unwrap();
    let store = Store::new();
    let err = restore_backup(&store, dir.path(), &backup_key()).unwrap_err();
    assert!(
        matches!(err, BackupError::Unauthenticated { .. }),
        "{err:?}"
    );
    assert!(store.load().is_none());

    // The binary, with its control plane down: not ready, and says why.
    let fake = FakeControlPlane::start(&environment(5), Shape::Bare).await;
    fake.go_down();
    let port = free_port();
    let mut pdp = std::process::Command::new(env!("CARGO_BIN_EXE_pdp"))
        .env_clear()
        .env("PDP_API_KEY", ENV_KEY)
        .env("PDP_CONTROL_PLANE", fake.url())
        .env("PDP_HOST", "127.0.0.1")
        .env("PDP_PORT", port.to_string())
        .env("PDP_BACKUP_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pdp binary runs");
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let got = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .bearer_auth(ENV_KEY)
            .send()
            .await;
        if let Ok(resp) = got {
            let status = resp.status().as_u16();
            break (status, resp.json::<serde_json::Value>().await.unwrap());
        }
        assert!(Instant::now() < until, "the PDP never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = pdp.kill();
    let _ = pdp.wait();
    assert_eq!(health.0, 503, "{}", health.1);
    let refused = health.1["sync"]["backup_refused"]
        .as_str()
        .unwrap_or_default();
    assert!(
        refused.contains("not written with this API key"),
        "{}",
        health.1
    );
}

#[tokio::test]
async fn with_no_backup_and_no_control_plane_nothing_is_served_and_it_keeps_trying() {
    let fake = FakeControlPlane::start(&environment(5), Shape::Bare).await;
    fake.go_down();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::new());
    assert!(!restore_backup(&store, dir.path(), &backup_key()).unwrap());
    let run = Running::start(config(&fake), store);
    eventually("repeated attempts", Duration::from_secs(5), || {
        run.state.status().consecutive_failures >= 5
    })
    .await;
    assert!(run.store.load().is_none());
    assert_eq!(run.state.status().last_error_cause, Some("key_scope"));
    fake.come_up();
    eventually(
        "ready once the control plane answers",
        Duration::from_secs(5),
        || run.store.load().is_some(),
    )
    .await;
    run.stop().await.unwrap();
}

/// The binary as an operator runs it against a control plane: ready after
/// the first sync, `POST /sync` picks up a change, and after a restart with
/// the control plane down it serves the backup.
#[tokio::test]
async fn the_binary_syncs_refreshes_on_demand_and_restarts_from_its_backup() {
    use crate::binary::{free_port, wait_ready};

    let (a, b) = (environment(250), changed(250));
    let fake = FakeControlPlane::start(&a, Shape::Cursor).await;
    let backups = tempfile::tempdir().unwrap();
    let start = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pdp"))
            .env_clear()
            .env("PDP_API_KEY", ENV_KEY)
            .env("PDP_CONTROL_PLANE", fake.url())
            .env("PDP_HOST", "127.0.0.1")
            .env("PDP_PORT", port.to_string())
            .env("PDP_BACKUP_DIR", backups.path())
            .env("PDP_SYNC_REQUEST_TIMEOUT", "1s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pdp binary runs")
    };
    let client = reqwest::Client::new();
    let ask = |base: String, user: &'static str| {
        let client = client.clone();
        async move {
            let body: serde_json::Value = client
                .post(format!("{base}/allowed"))
                .bearer_auth(ENV_KEY)
                .json(&json!({"user": {"key": user}, "action": "read",
                              "resource": {"type": "document", "key": "d7", "tenant": "default"}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["allow"].as_bool()
        }
    };
    let source = |base: String| {
        let client = client.clone();
        async move {
            let body: serde_json::Value = client
                .get(format!("{base}/health"))
                .bearer_auth(ENV_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["snapshot"]["source"]["kind"]
                .as_str()
                .map(str::to_owned)
        }
    };

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut pdp = start(port);
    assert!(wait_ready(&format!("{base}/ready"), Duration::from_secs(15)).await);
    assert_eq!(ask(base.clone(), "user-1").await, Some(true));
    assert_eq!(source(base.clone()).await.as_deref(), Some("control_plane"));

    fake.set_document(&b);
    let sync = client
        .post(format!("{base}/sync"))
        .bearer_auth(ENV_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(sync.status().as_u16(), 202);
    let until = Instant::now() + Duration::from_secs(10);
    while ask(base.clone(), "user-1").await != Some(false) {
        assert!(
            Instant::now() < until,
            "POST /sync did not bring the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the backup of B a moment to land, then crash and restart offline.
    let hash_b = Staged::from_document(&b).content_hash();
    eventually("the backup of the change", Duration::from_secs(5), || {
        read_backup(backups.path(), &backup_key()).is_ok_and(|b| b.content_hash == hash_b)
    })
    .await;
    pdp.kill().unwrap();
    pdp.wait().unwrap();
    fake.go_down();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut pdp = start(port);
    let ready = wait_ready(&format!("{base}/ready"), Duration::from_secs(15)).await;
    let answers = (
        ask(base.clone(), "user-1").await,
        ask(base.clone(), "newcomer").await,
        source(base.clone()).await,
    );
    pdp.kill().unwrap();
    pdp.wait().unwrap();
    assert!(ready, "not ready from the backup");
    assert_eq!(
        answers,
        (Some(false), Some(true), Some("backup".to_owned()))
    );
}

/// A control plane that answers with a redirect does not get the key sent
/// on: the redirect is not followed, so the host it names sees nothing.
#[tokio::test]
async fn redirects_are_not_followed_with_the_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let sink = tokio::spawn(async move {
        loop {
            let (_, _) = elsewhere.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_plane = format!("http://{}", redirector.local_addr().unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked_count = asked.clone();
    let redirecting = tokio::spawn(async move {
        loop {
            let (mut conn, _) = redirector.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            asked_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere_addr}/v2/api-key/scope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let fake = FakeControlPlane::start(&environment(1), Shape::Bare).await;
    let run = Running::start(
        SyncConfig {
            control_plane,
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    eventually(
        "the redirecting control plane is asked",
        Duration::from_secs(5),
        || asked.load(std::sync::atomic::Ordering::SeqCst) >= 2,
    )
    .await;
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(run.store.load().is_none());
    let _ = run.shutdown.send(true);
    sink.abort();
    redirecting.abort();
}

/// How many times the users list was asked for.
fn user_listings(fake: &FakeControlPlane) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path.ends_with("/users"))
        .count()
}

/// `POST /sync` cannot make the PDP re-list the environment back to back:
/// after a failure a request waits out the back-off, and after a success
/// it waits for the least gap between syncs.
#[tokio::test]
async fn sync_requests_wait_out_the_backoff_and_the_least_gap() {
    let doc = environment(20);
    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    fake.fail("users", Fault::Status(400));
    let run = Running::start(
        SyncConfig {
            // A back-off of 2 to 4 s after the first failure.
            backoff_min: Duration::from_secs(4),
            backoff_max: Duration::from_secs(4),
            min_trigger_gap: Duration::from_millis(1500),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    eventually("the first sync fails", Duration::from_secs(5), || {
        user_listings(&fake) == 1
    })
    .await;
    for _ in 0..50 {
        run.trigger.notify_one();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(user_listings(&fake), 1, "requests cut the back-off short");

    fake.clear_faults();
    run.serves(&doc, "the sync after the back-off").await;
    let after_success = user_listings(&fake);
    let succeeded = Instant::now();
    for _ in 0..30 {
        run.trigger.notify_one();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        user_listings(&fake),
        after_success,
        "a request inside the gap"
    );
    eventually(
        "the request is honoured after the gap",
        Duration::from_secs(5),
        || user_listings(&fake) == after_success + 1,
    )
    .await;
    assert!(succeeded.elapsed() >= Duration::from_millis(1400));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        user_listings(&fake),
        after_success + 1,
        "fifty requests, one sync"
    );
    let _ = run.shutdown.send(true);
}

/// A sync error that names a user, the project and the control plane's
/// paths is shown to callers with the key, and to nobody else.
#[tokio::test]
async fn unauthenticated_health_shows_no_sync_detail() {
    use crate::binary::free_port;
    use pdp_devkit::fake_control_plane::PROJECT_ID;

    let fake = FakeControlPlane::start(&environment(250), Shape::Bare).await;
    // A user repeated on the next page: the error names that user.
    fake.fail("users", Fault::GrowBetweenPages);
    let port = free_port();
    let mut pdp = std::process::Command::new(env!("CARGO_BIN_EXE_pdp"))
        .env_clear()
        .env("PDP_API_KEY", ENV_KEY)
        .env("PDP_CONTROL_PLANE", fake.url())
        .env("PDP_HOST", "127.0.0.1")
        .env("PDP_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pdp binary runs");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let get = |path: &'static str, key: Option<&'static str>| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let mut req = client.get(url);
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            match req.send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    let until = Instant::now() + Duration::from_secs(15);
    let detail = loop {
        let body = get("/health", Some(ENV_KEY)).await;
        if body.contains("appeared on two pages") {
            break body;
        }
        assert!(Instant::now() < until, "no sync error in time: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(detail.contains("user-"), "the error names a user: {detail}");
    for path in ["/health", "/healthy", "/ready"] {
        let body = get(path, None).await;
        assert_eq!(body, r#"{"status":"not_ready"}"#, "{path}");
        let body = get(path, Some("a-wrong-key")).await;
        for secret in ["user-", "/v2/facts/", PROJECT_ID, "users"] {
            assert!(!body.contains(secret), "{path} shows {secret}: {body}");
        }
    }
    let _ = pdp.kill();
    let _ = pdp.wait();
}

/// A control plane of raw HTTP/1.1, for faults the fake cannot make: it
/// answers the key's scope as an environment key's and hands every other
/// request (its head, and the connection) to `page`.
async fn raw_control_plane<F, Fut>(page: F) -> (String, JoinHandle<()>)
where
    F: Fn(String, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use pdp_devkit::fake_control_plane::{ENV_ID, ORG_ID, PROJECT_ID};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let page = Arc::new(page);
    let server = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let page = page.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = conn.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                if head.contains("/v2/api-key/scope") {
                    let scope = json!({"organization_id": ORG_ID, "project_id": PROJECT_ID,
                                       "environment_id": ENV_ID});
                    let _ = conn.write_all(json_answer(&scope).as_bytes()).await;
                } else {
                    page(head, conn).await;
                }
            });
        }
    });
    (url, server)
}

/// A whole HTTP/1.1 answer with a JSON body.
fn json_answer(body: &serde_json::Value) -> String {
    let body = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A control plane that streams a list without end: the sync reads one
/// page's worth, fails as malformed within seconds, and the snapshot that
/// was serving keeps serving.
#[tokio::test]
async fn an_endless_page_fails_the_sync_not_the_process() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;

    let streamed = Arc::new(AtomicU64::new(0));
    let counter = streamed.clone();
    let (url, server) = raw_control_plane(move |_, mut conn| {
        let counter = counter.clone();
        async move {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            // Up to 1 GiB, one MiB a chunk, until the reader hangs up.
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..1024 {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if conn.write_all(&framed).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    })
    .await;
    let doc = environment(5);
    let store = Arc::new(Store::new());
    store
        .install(Staged::from_document(&doc), Source::Embedded)
        .unwrap();
    let fake = FakeControlPlane::start(&doc, Shape::Bare).await;
    let started = Instant::now();
    let run = Running::start(
        SyncConfig {
            control_plane: url,
            request_timeout: Duration::from_secs(30),
            sync_deadline: Duration::from_secs(30),
            ..config(&fake)
        },
        store,
    );
    eventually("the sync fails", Duration::from_secs(20), || {
        run.state.status().syncs_failed > 0
    })
    .await;
    let status = run.state.status();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status.last_error_cause, Some("malformed"), "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("larger than")),
        "{status:?}"
    );
    // Read no further than one page's cap, give or take what was in flight.
    let sent = streamed.load(Ordering::SeqCst);
    assert!(sent < 128 << 20, "{sent} bytes were read");
    assert_eq!(
        allowed(&run.store, "user-1", "read"),
        Some(true),
        "still serving"
    );
    run.stop().await.unwrap();
    server.abort();
}

/// A backup dated in the future counts as fresh from now, not for as long
/// as its date lies ahead: PDP_MAX_STALENESS still applies to it.
#[test]
fn a_backup_from_the_future_is_not_fresh_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let doc = environment(3);
    let path = pdp::sync::write_backup(dir.path(), &Staged::from_document(&doc), &seal()).unwrap();
    // Rewrite the sync time a year ahead, as a wrong clock would.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    let staged = read_backup(dir.path(), &backup_key()).unwrap().staged;
    std::fs::remove_file(&path).unwrap();
    pdp::sync::write_backup_at(dir.path(), &staged, &seal(), ahead).unwrap();
    let store = Store::new();
    assert!(restore_backup(&store, dir.path(), &backup_key()).unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(store.freshness_age() >= Duration::from_secs(1));
}

/// A control plane whose cursors go round in a circle (c1 → c2 → c1): the
/// listing fails as inconsistent within a few requests, instead of paging
/// until the sync deadline.
#[tokio::test]
async fn a_cursor_cycle_fails_the_listing_at_once() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;

    let pages = Arc::new(AtomicU64::new(0));
    let served = pages.clone();
    let (url, server) = raw_control_plane(move |head, mut conn| {
        // Every page a new resource, and a cursor that leads on from the
        // first page to c1, c2, c1, ...
        let n = served.fetch_add(1, Ordering::SeqCst);
        let next = if head.contains("cursor=c1") {
            "c2"
        } else {
            "c1"
        };
        let page = json!({"data": [{"key": format!("r{n}"), "actions": {}}],
                          "pagination": {"cursor": next, "hasMore": true}});
        async move {
            let _ = conn.write_all(json_answer(&page).as_bytes()).await;
        }
    })
    .await;
    let fake = FakeControlPlane::start(&environment(1), Shape::Bare).await;
    let run = Running::start(
        SyncConfig {
            control_plane: url,
            sync_deadline: Duration::from_secs(30),
            ..config(&fake)
        },
        Arc::new(Store::new()),
    );
    eventually("the sync fails", Duration::from_secs(10), || {
        run.state.status().syncs_failed > 0
    })
    .await;
    let status = run.state.status();
    assert_eq!(status.last_error_cause, Some("inconsistent"), "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("came round again")),
        "{status:?}"
    );
    assert!(
        pages.load(Ordering::SeqCst) <= 4,
        "{} pages",
        pages.load(Ordering::SeqCst)
    );
    run.stop().await.unwrap();
    server.abort();
}
