//! The SDK fixture (`tests/fixtures/sdk.json`) decided in-process, from the
//! exact request bodies the pinned official SDKs put on the wire (captured from
//! `permit` 3.0.0 and `permitio` 2.7.6). This is the fast half of the
//! real-client test in `tests/sdk/`: it needs no Python or Node, so a change
//! that breaks how an SDK's body decodes, or what the fixture grants, fails
//! `cargo test` before the slower SDK run.

use pdp::decide;
use pdp::model::DataDocument;
use pdp::snapshot::Snapshot;
use serde_json::{json, Value};

fn fixture() -> Snapshot {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk.json");
    let text = std::fs::read_to_string(path).expect("read tests/fixtures/sdk.json");
    let doc: DataDocument = serde_json::from_str(&text).expect("sdk.json is a data document");
    Snapshot::build(&doc).expect("sdk.json builds a snapshot")
}

/// Decode `body` the way the server does (from the JSON text) and decide it.
fn allowed(snap: &Snapshot, body: &Value) -> bool {
    let text = body.to_string();
    let query: decide::AllowedQuery =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not decode: {e}"));
    decide::check(snap, &query).allow
}

/// Python `permit.check(user, action, "document")`: `key: null`, tenant
/// copied into `resource.context`.
fn python_body(user: &str, action: &str, kind: &str, key: Option<&str>, tenant: &str) -> Value {
    json!({"user": {"key": user}, "action": action,
           "resource": {"type": kind, "key": key, "tenant": tenant, "context": {"tenant": tenant}},
           "context": {}})
}

#[test]
fn python_sdk_bodies_decide_as_the_fixture_grants() {
    let snap = fixture();
    let cases = [
        ("alice", "write", "document", None, "default", true),
        ("alice", "write", "document", None, "acme", false),
        ("bob", "pay", "invoice", None, "globex", true),
        ("bob", "pay", "invoice", None, "acme", false),
        ("carol", "share", "document", Some("d1"), "default", true),
        ("carol", "share", "document", None, "default", false),
        ("mallory", "read", "document", None, "default", false),
    ];
    for (user, action, kind, key, tenant, want) in cases {
        let body = python_body(user, action, kind, key, tenant);
        assert_eq!(allowed(&snap, &body), want, "{body}");
    }
}

#[test]
fn node_sdk_bodies_decide_as_the_fixture_grants() {
    let snap = fixture();
    // Node omits an absent key, passes a user object as is (camelCase), and
    // adds no resource.context.
    let with_camel_case_user = json!({
        "user": {"key": "alice", "firstName": "Alice", "email": "alice@example.com", "attributes": {"dept": "eng"}},
        "action": "approve", "resource": {"type": "invoice", "key": "i1", "tenant": "default"}, "context": {}});
    assert!(allowed(&snap, &with_camel_case_user));
    let no_key = json!({"user": {"key": "bob"}, "action": "read",
                        "resource": {"type": "document", "tenant": "default"}, "context": {}});
    assert!(!allowed(&snap, &no_key));
}

#[test]
fn without_a_tenant_even_an_instance_owner_is_denied() {
    // What both SDKs send with use_default_tenant_if_empty / useDefaultTenantIfEmpty off.
    let snap = fixture();
    let python = json!({"user": {"key": "carol"}, "action": "write",
                        "resource": {"type": "document", "key": "d1", "context": {}}, "context": {}});
    let node = json!({"user": {"key": "alice"}, "action": "read",
                      "resource": {"type": "document"}, "context": {}});
    assert!(!allowed(&snap, &python));
    assert!(!allowed(&snap, &node));
}
