//! The fake control plane's facts writes, against its own list endpoints:
//! what a write answers, and what a later sync would read.

use pdp::model::DataDocument;
use pdp_devkit::fake_control_plane::{
    FakeControlPlane, Fault, Shape, ENV_ID, ENV_KEY, PROJECT_ID, PROJECT_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

fn environment() -> DataDocument {
    serde_json::from_value(json!({
        "resources": [
            {"key": "document", "actions": {"read": {}, "write": {}},
             "roles": {"owner": {"permissions": ["read", "write"]}},
             "relations": {"parent": {"resource": "folder"}}},
            {"key": "folder", "actions": {"read": {}}, "roles": {}},
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "editor", "permissions": ["document:write"]},
        ],
        "tenants": [{"key": "default"}, {"key": "other"}],
        "users": [
            {"key": "alice"},
            // A tenant-level role carried by the user, not the assignments list.
            {"key": "carol", "roles": [{"role": "editor", "tenant": "default"}]},
        ],
        "role_assignments": [{"user": "alice", "role": "viewer", "tenant": "default"}],
        "resource_instances": [
            {"key": "d1", "resource": "document", "tenant": "default"},
            {"key": "o1", "resource": "document", "tenant": "other"},
        ],
    }))
    .expect("a data document")
}

struct Client {
    http: reqwest::Client,
    facts: String,
    key: &'static str,
}

impl Client {
    fn new(cp: &FakeControlPlane) -> Client {
        Client {
            http: reqwest::Client::new(),
            facts: format!("{}/v2/facts/{PROJECT_ID}/{ENV_ID}", cp.url()),
            key: ENV_KEY,
        }
    }

    /// A request to `facts/{path}`; the status and the body as JSON (null
    /// when empty).
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.facts))
            .bearer_auth(self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the fake answers");
        let status = resp.status().as_u16();
        if status != 204 {
            let ct = resp.headers().get("content-type").cloned();
            assert_eq!(
                ct.as_ref().and_then(|v| v.to_str().ok()),
                Some("application/json"),
                "{path}"
            );
        }
        let bytes = resp.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        (status, body)
    }

    /// The whole of a facts list, as a sync would read it.
    async fn list(&self, list: &str) -> Vec<Value> {
        let (status, body) = self
            .send(Method::GET, &format!("{list}?per_page=100"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().expect("a bare list")
    }
}

fn has(list: &[Value], item: Value) -> bool {
    let want = item.as_object().expect("an object");
    list.iter().any(|v| {
        want.iter()
            .all(|(k, x)| v.get(k).unwrap_or(&Value::Null) == x)
    })
}

#[tokio::test]
async fn a_created_user_with_a_role_is_in_the_lists() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let (s, user) = c
        .send(
            Method::POST,
            "users",
            Some(json!({"key": "bob", "email": "bob@example.test"})),
        )
        .await;
    assert_eq!(s, 201, "{user}");
    assert_eq!(user["key"], "bob");
    assert_eq!(user["email"], "bob@example.test");
    assert_eq!(user["attributes"], json!({}));
    assert!(user["id"].is_string());
    let (s, body) = c
        .send(Method::POST, "users", Some(json!({"key": "bob"})))
        .await;
    assert_eq!(s, 409);
    assert!(body["detail"].is_string());

    let (s, a) = c
        .send(
            Method::POST,
            "users/bob/roles",
            Some(json!({"role": "viewer", "tenant": "default"})),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        (&a["user"], &a["role"], &a["tenant"]),
        (&json!("bob"), &json!("viewer"), &json!("default"))
    );
    assert!(a["resource_instance"].is_null());
    assert!(a["id"].is_string());

    assert!(has(&c.list("users").await, json!({"key": "bob"})));
    assert!(has(
        &c.list("role_assignments").await,
        json!({"user": "bob", "role": "viewer", "tenant": "default"})
    ));
    // The stored items are what the PDP's sync decodes.
    for item in c.list("role_assignments").await {
        serde_json::from_value::<pdp::model::RoleAssignment>(item).expect("decodes");
    }
    let (s, _) = c
        .send(
            Method::POST,
            "role_assignments",
            Some(json!({"user": "bob", "role": "viewer", "tenant": "default"})),
        )
        .await;
    assert_eq!(s, 409, "a duplicate assignment");
}

#[tokio::test]
async fn a_refused_assignment_is_404_and_changes_nothing() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let before = (
        c.list("role_assignments").await,
        c.list("resource_instances").await,
    );
    for (a, what) in [
        (
            json!({"user": "alice", "role": "nope", "tenant": "default"}),
            "nope",
        ),
        (
            json!({"user": "nobody", "role": "viewer", "tenant": "default"}),
            "nobody",
        ),
        (
            json!({"user": "alice", "role": "viewer", "tenant": "nowhere"}),
            "nowhere",
        ),
        // A tenant role is not a role of the document type.
        (
            json!({"user": "alice", "role": "viewer", "tenant": "default",
                   "resource_instance": "document:new"}),
            "viewer",
        ),
        (
            json!({"user": "alice", "role": "owner", "tenant": "default",
                   "resource_instance": "nosuchtype:new"}),
            "owner",
        ),
    ] {
        let (s, body) = c.send(Method::POST, "role_assignments", Some(a)).await;
        assert_eq!(s, 404, "{body}");
        let d = body["detail"].as_str().expect("a detail");
        assert!(d.contains(what), "{d}");
    }
    let (s, _) = c
        .send(
            Method::POST,
            "role_assignments",
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(s, 422, "no user");
    let after = (
        c.list("role_assignments").await,
        c.list("resource_instances").await,
    );
    assert_eq!(before, after);
}

#[tokio::test]
async fn an_instance_role_creates_its_instance() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let a = json!({"user": "alice", "role": "owner", "tenant": "default",
                   "resource_instance": "document:new"});
    let (s, body) = c.send(Method::POST, "role_assignments", Some(a)).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["resource_instance"], "document:new");
    assert!(has(
        &c.list("resource_instances").await,
        json!({"key": "new", "resource": "document", "tenant": "default"})
    ));
    // Deleting the instance takes its assignments with it.
    let (s, _) = c
        .send(Method::DELETE, "resource_instances/document:new", None)
        .await;
    assert_eq!(s, 204);
    assert!(!has(
        &c.list("role_assignments").await,
        json!({"resource_instance": "document:new"})
    ));
}

#[tokio::test]
async fn a_delete_returns_the_assignment_when_asked() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let a = json!({"user": "alice", "role": "viewer", "tenant": "default"});
    let (s, body) = c
        .send(
            Method::DELETE,
            "role_assignments?return_deleted=true",
            Some(a.clone()),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["role"], "viewer");
    assert_eq!(body["tenant"], "default");
    assert!(body["resource_instance"].is_null());
    assert!(c.list("role_assignments").await.is_empty());
    let (s, _) = c
        .send(Method::DELETE, "role_assignments", Some(a.clone()))
        .await;
    assert_eq!(s, 404, "already gone");

    // Without the flag: 204, no body.
    c.send(Method::POST, "role_assignments", Some(a.clone()))
        .await;
    let (s, body) = c.send(Method::DELETE, "role_assignments", Some(a)).await;
    assert_eq!((s, body), (204, Value::Null));

    let log = cp.requests();
    let first = log
        .iter()
        .find(|r| r.method == "DELETE")
        .expect("the delete is logged");
    assert!(first.path.ends_with("/role_assignments"));
    assert_eq!(first.query, "return_deleted=true");
    assert_eq!(first.class, "facts");
    assert_eq!(first.status, 200);
    assert!(first
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == &format!("Bearer {ENV_KEY}")));
    assert!(first.headers.iter().all(|(k, _)| *k == k.to_lowercase()));
}

#[tokio::test]
async fn a_role_the_user_carries_is_deleted_from_the_user() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let a = json!({"user": "carol", "role": "editor", "tenant": "default"});
    let (s, _) = c
        .send(Method::POST, "role_assignments", Some(a.clone()))
        .await;
    assert_eq!(s, 409, "carol already has it");
    let (s, _) = c
        .send(Method::DELETE, "users/carol/roles", Some(a.clone()))
        .await;
    assert_eq!(s, 204);
    let users = c.list("users").await;
    let carol = users
        .iter()
        .find(|u| u["key"] == "carol")
        .expect("carol stays");
    assert_eq!(carol["roles"], json!([]));
}

#[tokio::test]
async fn bulk_assignments_are_all_or_nothing() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let good = json!([
        {"user": "alice", "role": "editor", "tenant": "default"},
        {"user": "alice", "role": "owner", "tenant": "default", "resource_instance": "document:d1"},
    ]);
    let mut bad = good.clone();
    bad.as_array_mut()
        .expect("an array")
        .push(json!({"user": "alice", "role": "nope", "tenant": "default"}));
    let before = c.list("role_assignments").await;
    let (s, _) = c
        .send(Method::POST, "role_assignments/bulk", Some(bad))
        .await;
    assert_eq!(s, 404);
    assert_eq!(c.list("role_assignments").await, before);

    let (s, body) = c
        .send(Method::POST, "role_assignments/bulk", Some(good.clone()))
        .await;
    assert_eq!((s, body), (200, json!({"assignments_created": 2})));
    assert_eq!(c.list("role_assignments").await.len(), before.len() + 2);

    let (s, body) = c
        .send(Method::DELETE, "role_assignments/bulk", Some(good))
        .await;
    assert_eq!((s, body), (200, json!({"assignments_removed": 2})));
    assert_eq!(c.list("role_assignments").await, before);

    let (s, _) = c
        .send(
            Method::POST,
            "role_assignments/bulk",
            Some(json!({"not": "an array"})),
        )
        .await;
    assert_eq!(s, 422);
}

#[tokio::test]
async fn tuples_are_created_and_deleted() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let t = json!({"subject": "folder:f1", "relation": "parent", "object": "document:d1",
                   "tenant": "default"});
    let (s, body) = c
        .send(Method::POST, "relationship_tuples", Some(t.clone()))
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["subject"], "folder:f1");
    assert!(has(&c.list("relationship_tuples").await, t.clone()));
    // The subject did not exist: it does now, in the tuple's tenant.
    assert!(has(
        &c.list("resource_instances").await,
        json!({"key": "f1", "resource": "folder", "tenant": "default"})
    ));
    let ident = json!({"subject": "folder:f1", "relation": "parent", "object": "document:d1"});
    let (s, body) = c
        .send(Method::DELETE, "relationship_tuples", Some(ident.clone()))
        .await;
    assert_eq!((s, body), (204, Value::Null));
    assert!(c.list("relationship_tuples").await.is_empty());
    let (s, _) = c
        .send(Method::DELETE, "relationship_tuples", Some(ident))
        .await;
    assert_eq!(s, 404);

    let ops = json!({"operations": [
        {"subject": "folder:f1", "relation": "parent", "object": "document:d1"},
        {"subject": "folder:f2", "relation": "parent", "object": "document:d2"},
    ]});
    // One bad operation, and none is made.
    let mut bad = ops.clone();
    bad["operations"]
        .as_array_mut()
        .expect("an array")
        .push(json!({"subject": "folder:f3"}));
    let (s, _) = c
        .send(Method::POST, "relationship_tuples/bulk", Some(bad))
        .await;
    assert_eq!(s, 422);
    assert!(c.list("relationship_tuples").await.is_empty());
    let (s, body) = c
        .send(Method::POST, "relationship_tuples/bulk", Some(ops))
        .await;
    assert_eq!((s, body), (200, json!({})));
    assert_eq!(c.list("relationship_tuples").await.len(), 2);
    let idents = json!({"idents": [
        {"subject": "folder:f2", "relation": "parent", "object": "document:d2"},
    ]});
    let (s, body) = c
        .send(Method::DELETE, "relationship_tuples/bulk", Some(idents))
        .await;
    assert_eq!((s, body), (200, json!({})));
    assert_eq!(c.list("relationship_tuples").await.len(), 1);
    // Deleting an instance takes the tuples naming it.
    let (s, _) = c
        .send(Method::DELETE, "resource_instances/folder:f1", None)
        .await;
    assert_eq!(s, 204);
    assert!(c.list("relationship_tuples").await.is_empty());
}

#[tokio::test]
async fn users_tenants_and_instances_are_written() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    // SDKs percent-encode path parameters.
    let (s, u) = c
        .send(
            Method::PUT,
            "users/eve%40example.test",
            Some(json!({"first_name": "Eve"})),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["key"], "eve@example.test");
    let (s, u) = c
        .send(
            Method::PATCH,
            "users/eve%40example.test",
            Some(json!({"last_name": "E", "key": "mallory"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (&u["key"], &u["first_name"], &u["last_name"]),
        (&json!("eve@example.test"), &json!("Eve"), &json!("E"))
    );
    let (s, _) = c.send(Method::PATCH, "users/nobody", Some(json!({}))).await;
    assert_eq!(s, 404);

    let (s, t) = c
        .send(
            Method::POST,
            "tenants",
            Some(json!({"key": "acme", "name": "Acme"})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["attributes"], json!({}));
    let (s, _) = c
        .send(Method::POST, "tenants", Some(json!({"key": "acme"})))
        .await;
    assert_eq!(s, 409);
    let (s, t) = c
        .send(
            Method::PATCH,
            "tenants/acme",
            Some(json!({"attributes": {"tier": "gold"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["name"], "Acme");
    assert_eq!(t["attributes"], json!({"tier": "gold"}));

    let inst = json!({"key": "d9", "resource": "document", "tenant": "acme"});
    let (s, _) = c
        .send(Method::POST, "resource_instances", Some(inst.clone()))
        .await;
    assert_eq!(s, 201);
    let (s, _) = c.send(Method::POST, "resource_instances", Some(inst)).await;
    assert_eq!(s, 409);
    let (s, _) = c
        .send(
            Method::POST,
            "resource_instances",
            Some(json!({"key": "x", "resource": "nosuchtype", "tenant": "acme"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, i) = c
        .send(
            Method::PATCH,
            "resource_instances/document%3Ad9",
            Some(json!({"attributes": {"draft": true}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (&i["tenant"], &i["attributes"]),
        (&json!("acme"), &json!({"draft": true}))
    );
    let (s, _) = c
        .send(
            Method::PUT,
            "resource_instances/document:d10",
            Some(json!({"tenant": "acme"})),
        )
        .await;
    assert_eq!(s, 200, "PUT creates");
    c.send(
        Method::POST,
        "role_assignments",
        Some(json!({"user": "alice", "role": "viewer", "tenant": "acme"})),
    )
    .await;

    // A tenant's deletion takes its assignments and instances.
    let (s, _) = c.send(Method::DELETE, "tenants/acme", None).await;
    assert_eq!(s, 204);
    assert!(!has(&c.list("tenants").await, json!({"key": "acme"})));
    assert!(!has(
        &c.list("resource_instances").await,
        json!({"tenant": "acme"})
    ));
    assert!(!has(
        &c.list("role_assignments").await,
        json!({"tenant": "acme"})
    ));
    // A user's, its assignments.
    let (s, _) = c.send(Method::DELETE, "users/alice", None).await;
    assert_eq!(s, 204);
    assert!(c.list("role_assignments").await.is_empty());
    let (s, _) = c.send(Method::DELETE, "users/alice", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_writes_are_refused() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let mut c = Client::new(&cp);
    let raw = c
        .http
        .post(format!("{}/users", c.facts))
        .bearer_auth(ENV_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(raw.status().as_u16(), 422);
    let body: Value = raw.json().await.expect("a JSON body");
    assert!(body["detail"].is_string());
    let (s, _) = c.send(Method::POST, "nosuchlist", Some(json!({}))).await;
    assert_eq!(s, 404);
    let (s, _) = c
        .send(Method::POST, "users/alice/nosuchthing", Some(json!({})))
        .await;
    assert_eq!(s, 404);

    // Faults name the list: a user's roles are role assignments.
    cp.fail_times("role_assignments", Fault::Status(500), 1);
    let a = json!({"user": "alice", "role": "editor", "tenant": "default"});
    let (s, _) = c
        .send(Method::POST, "users/alice/roles", Some(a.clone()))
        .await;
    assert_eq!(s, 500);
    let (s, _) = c.send(Method::POST, "users/alice/roles", Some(a)).await;
    assert_eq!(s, 201, "the fault fired once");

    // Writes take the environment key only.
    c.key = PROJECT_KEY;
    let (s, _) = c
        .send(Method::POST, "users", Some(json!({"key": "zed"})))
        .await;
    assert_eq!(s, 403);
    c.key = "permit_key_unknown";
    let (s, _) = c
        .send(Method::POST, "users", Some(json!({"key": "zed"})))
        .await;
    assert_eq!(s, 401);
    c.key = ENV_KEY;
    assert!(!has(&c.list("users").await, json!({"key": "zed"})));
}

/// The race the PDP's journal is for, made deterministic: a page read
/// before a write is answered after it, with what it read.
#[tokio::test]
async fn a_held_page_is_answered_as_it_was_on_arrival() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let c = Client::new(&cp);
    let hold = cp.hold("role_assignments");
    let reader = Client::new(&cp);
    let page = tokio::spawn(async move { reader.list("role_assignments").await });
    tokio::time::timeout(std::time::Duration::from_secs(10), hold.arrived())
        .await
        .expect("the page request arrived");
    let a = json!({"user": "alice", "role": "editor", "tenant": "default"});
    let (s, _) = c
        .send(Method::POST, "role_assignments", Some(a.clone()))
        .await;
    assert_eq!(s, 201, "writes go on while a page is held");
    assert!(!page.is_finished(), "held until released");
    hold.release();
    let held = page.await.expect("the reader");
    assert!(!has(&held, a.clone()), "as of arrival");
    assert_eq!(held.len(), 1);
    // The hold was taken: the next page is answered at once, with the write.
    assert!(has(&c.list("role_assignments").await, a));
}

#[tokio::test]
async fn a_dropped_hold_releases_its_page() {
    let cp = FakeControlPlane::start(&environment(), Shape::Bare).await;
    let hold = cp.hold("users");
    let reader = Client::new(&cp);
    let page = tokio::spawn(async move { reader.list("users").await });
    hold.arrived().await;
    drop(hold);
    let users = tokio::time::timeout(std::time::Duration::from_secs(10), page)
        .await
        .expect("answered")
        .expect("the reader");
    assert_eq!(users.len(), 2);
}
