//! Table-driven cases for each rule of `docs/semantics.md`, run against the
//! engine and the reference evaluator alike.
//!
//! Documents are written inline as JSON so each table reads like the spec
//! section it pins. A table reports every failing row at once, naming the
//! row and what the engine and the reference each answered.

use serde_json::{json, Value};

use crate::support::engine::{doc, Engine};
use pdp_devkit::reference::{self, Reference};

/// An `/allowed` query.
fn ask(user: &str, action: &str, resource: Value) -> Value {
    json!({"user": {"key": user}, "action": action, "resource": resource})
}

/// Runs `/allowed` rows against both evaluators; panics listing every row
/// where either disagrees with the expected answer.
fn table(d: &Value, rows: &[(&str, Value, bool)]) {
    let engine = Engine::from_json(d);
    let parsed = doc(d);
    let mut failures = Vec::new();
    for (name, q, want) in rows {
        let got = engine.allowed(q);
        let reference = reference::allowed(&Reference::new(&parsed), q);
        if got != *want || reference != *want {
            failures.push(format!(
                "  {name}: want {want}, engine {got}, reference {reference}\n    query {q}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Compares a multi-answer endpoint's body with the expected one, on both
/// evaluators.
fn same(name: &str, engine: Value, reference: Value, want: Value) {
    assert_eq!(engine, want, "{name}: engine");
    assert_eq!(reference, want, "{name}: reference");
}

// ---------------------------------------------------------------------------
// §1 and §3: RBAC
// ---------------------------------------------------------------------------

fn rbac_doc() -> Value {
    json!({
        "resources": [
            {"key": "document",
             "actions": {"read": {}, "write": {}, "delete": {}, "share": {}},
             "action_groups": {"manage": ["delete", "share"]}},
            {"key": "folder", "actions": {"read": {}}}
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]},
            {"key": "admin", "permissions": ["document:manage"], "extends": ["editor"]},
            {"key": "stale", "permissions": ["ghost:read", "document:fly", "folder:read"]}
        ],
        "tenants": [{"key": "acme"}, {"key": "globex"}],
        "users": [
            {"key": "alice"},
            {"key": "bob", "roles": [{"role": "viewer", "tenant": "globex"}]},
            {"key": "carol", "roles": [{"role": "admin", "tenant": "acme"}]},
            {"key": "dave"}
        ],
        "role_assignments": [
            {"user": "alice", "role": "editor", "tenant": "acme"},
            {"user": "carol", "role": "admin", "tenant": "acme", "resource_instance": null},
            {"user": "dave", "role": "stale", "tenant": "acme"}
        ],
        "resource_instances": [
            {"key": "g1", "resource": "document", "tenant": "globex", "attributes": {}}
        ]
    })
}

#[test]
fn rbac_inheritance_groups_and_tenant_isolation() {
    let doc = rbac_doc();
    let acme = json!({"type": "document", "tenant": "acme"});
    let globex = json!({"type": "document", "tenant": "globex"});
    table(
        &doc,
        &[
            ("own permission", ask("alice", "write", acme.clone()), true),
            (
                "permission of an extended role",
                ask("alice", "read", acme.clone()),
                true,
            ),
            (
                "not granted by any role held",
                ask("alice", "delete", acme.clone()),
                false,
            ),
            (
                "extends is transitive",
                ask("carol", "read", acme.clone()),
                true,
            ),
            (
                "a group grants each of its actions",
                ask("carol", "share", acme.clone()),
                true,
            ),
            (
                "a group grants each of its actions (2)",
                ask("carol", "delete", acme.clone()),
                true,
            ),
            (
                "a group name is not itself an action",
                ask("carol", "manage", acme.clone()),
                false,
            ),
            (
                "role in another tenant",
                ask("alice", "read", globex.clone()),
                false,
            ),
            (
                "users[].roles counts like an assignment",
                ask("bob", "read", globex.clone()),
                true,
            ),
            (
                "users[].roles is tenant-scoped too",
                ask("bob", "read", acme.clone()),
                false,
            ),
            (
                "resource key plays no part, even an instance of another tenant",
                ask(
                    "alice",
                    "read",
                    json!({"type": "document", "key": "g1", "tenant": "acme"}),
                ),
                true,
            ),
            (
                "resource attributes play no part",
                ask(
                    "alice",
                    "read",
                    json!({"type": "document", "tenant": "acme", "attributes": {"x": 1}}),
                ),
                true,
            ),
            (
                "unknown permission type grants nothing",
                ask("dave", "read", json!({"type": "ghost", "tenant": "acme"})),
                false,
            ),
            (
                "unknown action grants nothing",
                ask("dave", "fly", acme.clone()),
                false,
            ),
            (
                "valid permission beside unknown ones",
                ask("dave", "read", json!({"type": "folder", "tenant": "acme"})),
                true,
            ),
        ],
    );
}

#[test]
fn unknown_anything_and_missing_tenant_deny() {
    let doc = rbac_doc();
    table(
        &doc,
        &[
            (
                "unknown user",
                ask(
                    "mallory",
                    "read",
                    json!({"type": "document", "tenant": "acme"}),
                ),
                false,
            ),
            (
                "unknown tenant",
                ask(
                    "alice",
                    "read",
                    json!({"type": "document", "tenant": "nowhere"}),
                ),
                false,
            ),
            (
                "unknown type",
                ask(
                    "alice",
                    "read",
                    json!({"type": "spaceship", "tenant": "acme"}),
                ),
                false,
            ),
            (
                "unknown action",
                ask(
                    "alice",
                    "launch",
                    json!({"type": "document", "tenant": "acme"}),
                ),
                false,
            ),
            (
                "null tenant",
                ask("alice", "read", json!({"type": "document", "tenant": null})),
                false,
            ),
            (
                "absent tenant",
                ask("alice", "read", json!({"type": "document"})),
                false,
            ),
            (
                "empty tenant",
                ask("alice", "read", json!({"type": "document", "tenant": ""})),
                false,
            ),
            (
                "string user is a key",
                json!({"user": "alice", "action": "read", "resource": {"type": "document", "tenant": "acme"}}),
                true,
            ),
        ],
    );
}

#[test]
fn debug_reasons_name_the_first_failing_step() {
    let d = rbac_doc();
    let engine = Engine::from_json(&d);
    let parsed = doc(&d);
    let rows = [
        (
            "allow",
            ask(
                "alice",
                "read",
                json!({"type": "document", "tenant": "acme"}),
            ),
        ),
        (
            "no_tenant",
            ask("mallory", "read", json!({"type": "spaceship"})),
        ),
        (
            "user_not_synced",
            ask(
                "mallory",
                "read",
                json!({"type": "spaceship", "tenant": "nowhere"}),
            ),
        ),
        (
            "no_such_tenant",
            ask(
                "alice",
                "read",
                json!({"type": "spaceship", "tenant": "nowhere"}),
            ),
        ),
        (
            "no_such_resource",
            ask(
                "alice",
                "launch",
                json!({"type": "spaceship", "tenant": "acme"}),
            ),
        ),
        (
            "no_such_action",
            ask(
                "alice",
                "launch",
                json!({"type": "document", "tenant": "acme"}),
            ),
        ),
        (
            "no_permission",
            ask(
                "alice",
                "delete",
                json!({"type": "document", "tenant": "acme"}),
            ),
        ),
    ];
    for (want, q) in rows {
        let body = engine.allowed_debug(&q);
        let text = body.to_string();
        assert!(
            text.contains(&format!("\"{want}\"")),
            "engine debug for {q} should say {want}: {body}"
        );
        assert_eq!(
            reference::decision(&Reference::new(&parsed), &q).2,
            want,
            "reference for {q}"
        );
    }
}

#[test]
fn extends_cycles_and_unknown_parents_are_refused_naming_the_roles() {
    let cyclic = json!({
        "roles": [
            {"key": "alpha", "extends": ["beta"]},
            {"key": "beta", "extends": ["gamma"]},
            {"key": "gamma", "extends": ["alpha"]},
            {"key": "fine"}
        ]
    });
    let err = Engine::build(&doc(&cyclic))
        .err()
        .expect("a cyclic extends is refused");
    let text = err.to_string();
    for role in ["alpha", "beta", "gamma"] {
        assert!(text.contains(role), "error should name {role}: {text}");
    }

    let resource_cycle = json!({
        "resources": [{"key": "doc", "actions": {"read": {}},
                       "roles": {"a": {"extends": ["b"]}, "b": {"extends": ["a"]}}}]
    });
    let err = Engine::build(&doc(&resource_cycle))
        .err()
        .expect("a resource-role cycle is refused");
    let text = err.to_string();
    assert!(text.contains('a') && text.contains('b'), "{text}");

    let dangling = json!({"roles": [{"key": "editor", "extends": ["nobody"]}]});
    let err = Engine::build(&doc(&dangling))
        .err()
        .expect("extending an unknown role is refused");
    let text = err.to_string();
    assert!(text.contains("editor") && text.contains("nobody"), "{text}");
}

// ---------------------------------------------------------------------------
// §4: ReBAC
// ---------------------------------------------------------------------------

/// Permit's documented example (docs/contract.md, Decision model): folder editors are
/// editors of the files in the folder.
fn folder_file_doc() -> Value {
    json!({
        "resources": [
            {"key": "folder", "actions": {"read": {}, "write": {}},
             "relations": {"parent": {"resource": "folder"}},
             "roles": {
                "viewer": {"permissions": ["read"]},
                "editor": {"permissions": ["write"], "extends": ["viewer"],
                           "granted_to": {"users_with_role": [
                               {"role": "editor", "on_resource": "folder", "linked_by_relation": "parent"}]}},
                "owner": {"permissions": [], "extends": ["editor"]}
             }},
            {"key": "file", "actions": {"read": {}, "write": {}, "delete": {}},
             "relations": {"parent": {"subject_resource": "folder"}},
             "roles": {
                "viewer": {"permissions": ["read"],
                           "granted_to": {"users_with_role": [
                               {"role": "viewer", "on_resource": "folder", "linked_by_relation": "parent"}]}},
                "editor": {"permissions": ["read", "write"],
                           "granted_to": {"users_with_role": [
                               {"role": "editor", "on_resource": "folder", "linked_by_relation": "parent"}]}}
             }}
        ],
        "tenants": [{"key": "default"}, {"key": "other"}],
        "users": [{"key": "alice"}, {"key": "bob"}, {"key": "olga"}, {"key": "vera"}],
        "role_assignments": [
            {"user": "alice", "role": "editor", "tenant": "default", "resource_instance": "folder:finance"},
            {"user": "olga", "role": "owner", "tenant": "default", "resource_instance": "folder:finance"},
            {"user": "vera", "role": "viewer", "tenant": "default", "resource_instance": "folder:root"}
        ],
        "resource_instances": [
            {"key": "finance", "resource": "folder", "tenant": "default"},
            {"key": "2023_report", "resource": "file", "tenant": "default"}
        ],
        "relationship_tuples": [
            {"subject": "folder:finance", "relation": "parent", "object": "file:2023_report", "tenant": "default"},
            {"subject": "folder:root", "relation": "parent", "object": "folder:finance", "tenant": "default"},
            {"subject": "folder:finance", "relation": "parent", "object": "folder:q1"},
            {"subject": "folder:q1", "relation": "parent", "object": "file:q1_budget"},
            {"subject": "team:finance", "relation": "parent", "object": "file:team_notes"}
        ]
    })
}

fn file(key: &str) -> Value {
    json!({"type": "file", "key": key, "tenant": "default"})
}

#[test]
fn rebac_folder_editor_is_file_editor() {
    table(
        &folder_file_doc(),
        &[
            (
                "documented derivation",
                ask("alice", "write", file("2023_report")),
                true,
            ),
            (
                "derived role's own permissions",
                ask("alice", "read", file("2023_report")),
                true,
            ),
            (
                "derived role grants only its permissions",
                ask("alice", "delete", file("2023_report")),
                false,
            ),
            (
                "no tuple, no derivation",
                ask("alice", "write", file("unrelated")),
                false,
            ),
            (
                "user without a role on the folder",
                ask("bob", "write", file("2023_report")),
                false,
            ),
            (
                "direct role on the folder itself",
                ask(
                    "alice",
                    "write",
                    json!({"type": "folder", "key": "finance", "tenant": "default"}),
                ),
                true,
            ),
            (
                "ReBAC needs a resource key",
                ask(
                    "alice",
                    "write",
                    json!({"type": "file", "tenant": "default"}),
                ),
                false,
            ),
            (
                "ReBAC needs a tenant",
                ask(
                    "alice",
                    "write",
                    json!({"type": "file", "key": "2023_report", "tenant": null}),
                ),
                false,
            ),
            (
                "an instance of another tenant: no derived role in this one",
                ask(
                    "alice",
                    "write",
                    json!({"type": "file", "key": "2023_report", "tenant": "other"}),
                ),
                false,
            ),
            (
                "depth 2 through an implicit folder",
                ask("alice", "write", file("q1_budget")),
                true,
            ),
            (
                "holding owner (extends editor) is not holding editor for a derivation",
                ask("olga", "write", file("2023_report")),
                false,
            ),
            (
                "but owner has editor's permissions on the folder itself",
                ask(
                    "olga",
                    "write",
                    json!({"type": "folder", "key": "finance", "tenant": "default"}),
                ),
                true,
            ),
            (
                "a role without a derivation rule does not flow down",
                ask("vera", "read", file("2023_report")),
                false,
            ),
            (
                "a tuple whose subject has the wrong type derives nothing",
                ask("alice", "read", file("team_notes")),
                false,
            ),
        ],
    );
}

#[test]
fn rebac_cycles_in_tuples_terminate_and_grant_only_from_a_real_chain() {
    let d = json!({
        "resources": [
            {"key": "folder", "actions": {"read": {}},
             "relations": {"parent": {"resource": "folder"}},
             "roles": {"viewer": {"permissions": ["read"],
                                  "granted_to": {"users_with_role": [
                                      {"role": "viewer", "on_resource": "folder", "linked_by_relation": "parent"}]}}}}
        ],
        "tenants": [{"key": "default"}],
        "users": [{"key": "alice"}, {"key": "bob"}],
        "role_assignments": [
            {"user": "alice", "role": "viewer", "tenant": "default", "resource_instance": "folder:a"}
        ],
        "relationship_tuples": [
            {"subject": "folder:a", "relation": "parent", "object": "folder:b"},
            {"subject": "folder:b", "relation": "parent", "object": "folder:c"},
            {"subject": "folder:c", "relation": "parent", "object": "folder:a"},
            {"subject": "folder:x", "relation": "parent", "object": "folder:y"},
            {"subject": "folder:y", "relation": "parent", "object": "folder:x"},
            {"subject": "folder:self", "relation": "parent", "object": "folder:self"}
        ]
    });
    let f = |k: &str| json!({"type": "folder", "key": k, "tenant": "default"});
    table(
        &d,
        &[
            ("start of the cycle", ask("alice", "read", f("a")), true),
            (
                "one step round the cycle",
                ask("alice", "read", f("b")),
                true,
            ),
            (
                "two steps round the cycle",
                ask("alice", "read", f("c")),
                true,
            ),
            (
                "a cycle nobody holds a role in grants nothing",
                ask("alice", "read", f("x")),
                false,
            ),
            (
                "a self-loop grants nothing",
                ask("alice", "read", f("self")),
                false,
            ),
            ("no role anywhere", ask("bob", "read", f("b")), false),
        ],
    );
}

fn no_direct_doc(rule_when: Value, granted_when: Value) -> Value {
    json!({
        "resources": [
            {"key": "folder", "actions": {"read": {}, "write": {}},
             "roles": {"editor": {"permissions": ["read", "write"]},
                       "viewer": {"permissions": ["read"]}}},
            {"key": "file", "actions": {"read": {}, "write": {}, "comment": {}},
             "relations": {"parent": {"resource": "folder"}},
             "roles": {
                "commenter": {"permissions": ["comment"]},
                "editor": {"permissions": ["read", "write"],
                           "granted_to": {"when": granted_when, "users_with_role": [
                               {"role": "editor", "on_resource": "folder", "linked_by_relation": "parent",
                                "when": rule_when}]}},
                "reader": {"permissions": ["read"],
                           "granted_to": {"users_with_role": [
                               {"role": "viewer", "on_resource": "folder", "linked_by_relation": "parent"}]}}
             }}
        ],
        "tenants": [{"key": "default"}],
        "users": [{"key": "alice"}, {"key": "bob"}],
        "role_assignments": [
            {"user": "alice", "role": "editor", "tenant": "default", "resource_instance": "folder:f"},
            {"user": "alice", "role": "viewer", "tenant": "default", "resource_instance": "folder:f"},
            {"user": "alice", "role": "commenter", "tenant": "default", "resource_instance": "file:mine"},
            {"user": "bob", "role": "editor", "tenant": "default", "resource_instance": "folder:f"}
        ],
        "relationship_tuples": [
            {"subject": "folder:f", "relation": "parent", "object": "file:mine"},
            {"subject": "folder:f", "relation": "parent", "object": "file:theirs"}
        ]
    })
}

#[test]
fn no_direct_roles_on_object_at_rule_and_granted_to_level() {
    for (level, d) in [
        (
            "rule",
            no_direct_doc(json!({"no_direct_roles_on_object": true}), Value::Null),
        ),
        (
            "granted_to",
            no_direct_doc(Value::Null, json!({"no_direct_roles_on_object": true})),
        ),
    ] {
        let f = |k: &str| json!({"type": "file", "key": k, "tenant": "default"});
        let rows = [
            (
                "any direct role on the object blocks the rule",
                ask("alice", "write", f("mine")),
                false,
            ),
            (
                "the direct role itself still applies",
                ask("alice", "comment", f("mine")),
                true,
            ),
            (
                "a rule without the flag still derives",
                ask("alice", "read", f("mine")),
                true,
            ),
            (
                "no direct role on this object: the rule applies",
                ask("alice", "write", f("theirs")),
                true,
            ),
            (
                "another user without a direct role",
                ask("bob", "write", f("mine")),
                true,
            ),
        ];
        eprintln!("no_direct_roles_on_object at {level} level");
        table(&d, &rows);
    }
    // Without the flag the direct role does not block anything.
    table(
        &no_direct_doc(Value::Null, Value::Null),
        &[(
            "flag off",
            ask(
                "alice",
                "write",
                json!({"type": "file", "key": "mine", "tenant": "default"}),
            ),
            true,
        )],
    );
}

#[test]
fn rebac_grants_users_without_tenant_roles_and_ignores_assignment_tenant() {
    let d = json!({
        "resources": [{"key": "doc", "actions": {"read": {}}, "roles": {"reader": {"permissions": ["read"]}}}],
        "tenants": [{"key": "t1"}, {"key": "t2"}],
        "users": [{"key": "una"}],
        "role_assignments": [{"user": "una", "role": "reader", "tenant": "t2", "resource_instance": "doc:d1"},
                             {"user": "una", "role": "reader", "tenant": "t2", "resource_instance": "doc:d3"}],
        "resource_instances": [{"key": "d1", "resource": "doc", "tenant": "t2"}]
    });
    table(
        &d,
        &[
            (
                "instance role, no tenant role",
                ask(
                    "una",
                    "read",
                    json!({"type": "doc", "key": "d1", "tenant": "t2"}),
                ),
                true,
            ),
            (
                "an instance of another tenant grants nothing in this one",
                ask(
                    "una",
                    "read",
                    json!({"type": "doc", "key": "d1", "tenant": "t1"}),
                ),
                false,
            ),
            (
                "assignment tenant not compared (d3 has no tenant of its own)",
                ask(
                    "una",
                    "read",
                    json!({"type": "doc", "key": "d3", "tenant": "t1"}),
                ),
                true,
            ),
            (
                "a different instance",
                ask(
                    "una",
                    "read",
                    json!({"type": "doc", "key": "d2", "tenant": "t2"}),
                ),
                false,
            ),
            (
                "no key: RBAC only, and no tenant role",
                ask("una", "read", json!({"type": "doc", "tenant": "t2"})),
                false,
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// §5: ABAC
// ---------------------------------------------------------------------------

/// One user set with `cond`, granting `document:read` on every document.
/// alice has stored attributes and the `editor` role in acme.
fn abac_doc(cond: Value) -> Value {
    json!({
        "resources": [{"key": "document", "actions": {"read": {}, "write": {}}},
                      {"key": "folder", "actions": {"read": {}}}],
        "roles": [{"key": "editor", "permissions": []}],
        "tenants": [{"key": "acme", "attributes": {"plan": "pro"}}, {"key": "globex", "attributes": {"plan": "free"}}],
        "users": [{"key": "alice", "email": "alice@acme.test", "first_name": "Alice",
                   "attributes": {"dept": "eng", "level": 3, "tags": ["a", "b"],
                                  "profile": {"team": "core"}, "flag": true, "count": "1"}}],
        "role_assignments": [{"user": "alice", "role": "editor", "tenant": "acme"}],
        "resource_instances": [{"key": "d1", "resource": "document", "tenant": "acme",
                                "attributes": {"owner": "alice", "classification": "internal", "level": 2}}],
        "condition_sets": [{"key": "who", "type": "userset", "conditions": cond}],
        "condition_set_rules": [{"user_set": "who", "permission": "document:read", "resource_set": "__autogen_document"}]
    })
}

/// Does the user set `{"user.x": {op: operand}}` match when the request
/// carries `user.attributes.x = a`?
fn op_row(op: &str, a: Value, operand: Value, want: bool) -> (String, Value, Value, bool) {
    let name = format!("{a} {op} {operand}");
    let cond = json!({"allOf": [{"user.x": {op: operand}}]});
    let q = json!({"user": {"key": "alice", "attributes": {"x": a}}, "action": "read",
                   "resource": {"type": "document", "tenant": "acme"}});
    (name, cond, q, want)
}

#[test]
fn every_abac_operator_true_and_false() {
    let rows = vec![
        op_row("equals", json!("eng"), json!("eng"), true),
        op_row("equals", json!("eng"), json!("ops"), false),
        op_row("equals", json!(1), json!(1.0), true),
        op_row("equals", json!("1"), json!(1), false),
        op_row("equals", json!(true), json!("true"), false),
        op_row("equals", json!([1, 2]), json!([1, 2]), true),
        op_row("equals", json!({"k": 1}), json!({"k": 1.0}), true),
        op_row("not-equals", json!("eng"), json!("ops"), true),
        op_row("not-equals", json!("eng"), json!("eng"), false),
        op_row("not-equals", json!(1), json!("1"), true),
        op_row("greater-than", json!(5), json!(3), true),
        op_row("greater-than", json!(3), json!(5), false),
        op_row("greater-than", json!("b"), json!("a"), true),
        op_row("greater-than", json!("5"), json!(3), false),
        op_row("greater-than-equals", json!(3), json!(3.0), true),
        op_row("greater-than-equals", json!(2), json!(3), false),
        op_row("less-than", json!(2), json!(3), true),
        op_row("less-than", json!(3), json!(3), false),
        op_row(
            "less-than",
            json!("2026-01-01T00:00:00Z"),
            json!("2026-11-25T00:00:00Z"),
            true,
        ),
        op_row("less-than", json!(true), json!(false), false),
        op_row("less-than-equals", json!(3), json!(3), true),
        op_row("less-than-equals", json!(4), json!(3), false),
        op_row("contains", json!("engineering"), json!("gin"), true),
        op_row("contains", json!("engineering"), json!("xyz"), false),
        op_row("contains", json!(["a", "b"]), json!("a"), true),
        op_row("contains", json!(["a", "b"]), json!("z"), false),
        op_row("contains", json!(15), json!("5"), false),
        op_row("array_contains", json!(["a", "b"]), json!("a"), true),
        op_row("array_contains", json!(["a", "b"]), json!(["a", "b"]), true),
        op_row("array_contains", json!(["a"]), json!(["a", "c"]), false),
        op_row("array_contains", json!("ab"), json!("a"), false),
        op_row(
            "array_superset",
            json!(["a", "b", "c"]),
            json!(["a", "c"]),
            true,
        ),
        op_row("array_superset", json!(["a"]), json!(["a", "b"]), false),
        op_row("array_superset", json!(["a"]), json!("a"), false),
        op_row("array_subset", json!(["a"]), json!(["a", "b"]), true),
        op_row("array_subset", json!(["a", "z"]), json!(["a", "b"]), false),
        op_row(
            "array_intersect",
            json!(["a", "z"]),
            json!(["a", "b"]),
            true,
        ),
        op_row("array_intersect", json!(["z"]), json!(["a"]), false),
        op_row("in", json!("eng"), json!(["eng", "ops"]), true),
        op_row("in", json!("hr"), json!(["eng", "ops"]), false),
        op_row("in", json!("gin"), json!("engineering"), true),
        op_row("in", json!(1), json!(["1"]), false),
        op_row("between", json!(5), json!([1, 10]), true),
        op_row("between", json!(1), json!([1, 10]), true),
        op_row("between", json!(10), json!([1, 10]), true),
        op_row("between", json!(11), json!([1, 10]), false),
        op_row("between", json!("b"), json!(["a", "c"]), true),
        op_row("between", json!(5), json!(["1", "10"]), false),
        op_row(
            "object_match",
            json!({"k": 1, "o": "z"}),
            json!({"match": {"k": {"equals": 1}}}),
            true,
        ),
        op_row(
            "object_match",
            json!({"k": 2}),
            json!({"match": {"k": {"equals": 1}}}),
            false,
        ),
        op_row(
            "object_match",
            json!({"o": 1}),
            json!({"match": {"k": {"equals": 1}}}),
            false,
        ),
        op_row(
            "object_match",
            json!("k"),
            json!({"match": {"k": {"equals": 1}}}),
            false,
        ),
        op_row(
            "any_match",
            json!([{"k": 1}, {"k": 2}]),
            json!({"match": {"k": {"equals": 2}}}),
            true,
        ),
        op_row(
            "any_match",
            json!([{"k": 1}]),
            json!({"match": {"k": {"equals": 2}}}),
            false,
        ),
        op_row(
            "any_match",
            json!([]),
            json!({"match": {"k": {"equals": 2}}}),
            false,
        ),
        op_row(
            "all_match",
            json!([{"k": 1}, {"k": 1.0}]),
            json!({"match": {"k": {"equals": 1}}}),
            true,
        ),
        op_row(
            "all_match",
            json!([{"k": 1}, {"k": 2}]),
            json!({"match": {"k": {"equals": 1}}}),
            false,
        ),
        op_row(
            "all_match",
            json!([]),
            json!({"match": {"k": {"equals": 1}}}),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (name, cond, q, want) in rows {
        let d = abac_doc(cond);
        let engine = Engine::from_json(&d).allowed(&q);
        let reference = reference::allowed(&Reference::new(&doc(&d)), &q);
        if engine != want || reference != want {
            failures.push(format!(
                "  {name}: want {want}, engine {engine}, reference {reference}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} operator rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rows of `(name, condition, request user attributes, expected)` on the
/// standard ABAC document, reading alice's `document` in acme (or `d1`).
fn cond_rows(rows: Vec<(&str, Value, Value, bool)>) {
    let mut failures = Vec::new();
    for (name, cond, q, want) in rows {
        let d = abac_doc(cond);
        let engine = Engine::from_json(&d).allowed(&q);
        let reference = reference::allowed(&Reference::new(&doc(&d)), &q);
        if engine != want || reference != want {
            failures.push(format!(
                "  {name}: want {want}, engine {engine}, reference {reference}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn read_d(user_attrs: Value, resource: Value, context: Value) -> Value {
    json!({"user": {"key": "alice", "attributes": user_attrs}, "action": "read",
           "resource": resource, "context": context})
}

fn acme_doc() -> Value {
    json!({"type": "document", "tenant": "acme"})
}

#[test]
fn abac_logic_missing_attributes_and_refs() {
    let plain = || read_d(json!({}), acme_doc(), json!({}));
    cond_rows(vec![
        (
            "stored attribute",
            json!({"user.dept": {"equals": "eng"}}),
            plain(),
            true,
        ),
        ("empty allOf is true", json!({"allOf": []}), plain(), true),
        ("empty anyOf is false", json!({"anyOf": []}), plain(), false),
        (
            "and alias",
            json!({"and": [{"user.dept": {"equals": "eng"}}, {"user.level": {"equals": 3}}]}),
            plain(),
            true,
        ),
        (
            "or alias",
            json!({"or": [{"user.dept": {"equals": "ops"}}, {"user.level": {"equals": 3}}]}),
            plain(),
            true,
        ),
        (
            "anyOf none true",
            json!({"anyOf": [{"user.dept": {"equals": "ops"}}, {"user.level": {"equals": 4}}]}),
            plain(),
            false,
        ),
        (
            "not of a true leaf",
            json!({"not": {"user.dept": {"equals": "eng"}}}),
            plain(),
            false,
        ),
        (
            "not of a false leaf in a list",
            json!({"not": [{"user.dept": {"equals": "ops"}}]}),
            plain(),
            true,
        ),
        (
            "several keys in a leaf are ANDed",
            json!({"user.dept": {"equals": "eng"}, "user.level": {"equals": 4}}),
            plain(),
            false,
        ),
        (
            "several keys in a leaf, all true",
            json!({"user.dept": {"equals": "eng"}, "user.level": {"equals": 3}}),
            plain(),
            true,
        ),
        (
            "nested path",
            json!({"user.profile.team": {"equals": "core"}}),
            plain(),
            true,
        ),
        (
            "subject is user",
            json!({"subject.dept": {"equals": "eng"}}),
            plain(),
            true,
        ),
        (
            "environment is context",
            json!({"environment.ip": {"equals": "10.0.0.1"}}),
            read_d(json!({}), acme_doc(), json!({"ip": "10.0.0.1"})),
            true,
        ),
        (
            "missing attribute: leaf false",
            json!({"user.missing": {"equals": "x"}}),
            plain(),
            false,
        ),
        (
            "missing attribute: not-equals false",
            json!({"user.missing": {"not-equals": "x"}}),
            plain(),
            false,
        ),
        (
            "missing attribute: not of the leaf true",
            json!({"not": [{"user.missing": {"equals": "x"}}]}),
            plain(),
            true,
        ),
        (
            "missing nested attribute",
            json!({"user.profile.missing": {"equals": "core"}}),
            plain(),
            false,
        ),
        (
            "path through a non-object",
            json!({"user.dept.x": {"equals": "eng"}}),
            plain(),
            false,
        ),
        (
            "no coercion: \"1\" is not 1",
            json!({"user.count": {"equals": 1}}),
            plain(),
            false,
        ),
        (
            "no coercion: true is not \"true\"",
            json!({"user.flag": {"equals": "true"}}),
            plain(),
            false,
        ),
        (
            "ref to an equal attribute",
            json!({"user.dept": {"equals": {"ref": "context.dept"}}}),
            read_d(json!({}), acme_doc(), json!({"dept": "eng"})),
            true,
        ),
        (
            "ref to a different attribute",
            json!({"user.dept": {"equals": {"ref": "context.dept"}}}),
            read_d(json!({}), acme_doc(), json!({"dept": "ops"})),
            false,
        ),
        (
            "ref to a missing attribute is false",
            json!({"user.dept": {"equals": {"ref": "context.dept"}}}),
            plain(),
            false,
        ),
        (
            "ref under not-equals, missing: still false",
            json!({"user.dept": {"not-equals": {"ref": "context.dept"}}}),
            plain(),
            false,
        ),
        (
            "ref across entities",
            json!({"resource.owner": {"equals": {"ref": "user.key"}}}),
            read_d(
                json!({}),
                json!({"type": "document", "key": "d1", "tenant": "acme"}),
                json!({}),
            ),
            true,
        ),
        (
            "ref with an ordering operator",
            json!({"user.level": {"greater-than": {"ref": "resource.level"}}}),
            read_d(
                json!({}),
                json!({"type": "document", "key": "d1", "tenant": "acme"}),
                json!({}),
            ),
            true,
        ),
    ]);
}

#[test]
fn abac_attribute_layers_and_overrides() {
    let d1 = || json!({"type": "document", "key": "d1", "tenant": "acme"});
    cond_rows(vec![
        (
            "request overrides stored: old value gone",
            json!({"user.dept": {"equals": "eng"}}),
            read_d(json!({"dept": "ops"}), acme_doc(), json!({})),
            false,
        ),
        (
            "request overrides stored: new value seen",
            json!({"user.dept": {"equals": "ops"}}),
            read_d(json!({"dept": "ops"}), acme_doc(), json!({})),
            true,
        ),
        (
            "request adds a key, stored keys stay",
            json!({"allOf": [{"user.new": {"equals": 1}}, {"user.dept": {"equals": "eng"}}]}),
            read_d(json!({"new": 1}), acme_doc(), json!({})),
            true,
        ),
        (
            "built-in key",
            json!({"user.key": {"equals": "alice"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "built-in email",
            json!({"user.email": {"equals": "alice@acme.test"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "built-in first_name",
            json!({"user.first_name": {"equals": "Alice"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "unknown last_name is missing",
            json!({"not": [{"user.last_name": {"equals": ""}}]}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "built-in roles in the query's tenant",
            json!({"user.roles": {"array_contains": "editor"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "built-in roles are per tenant",
            json!({"user.roles": {"array_contains": "editor"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "globex"}),
                json!({}),
            ),
            false,
        ),
        (
            "built-in tenants",
            json!({"user.tenants": {"equals": ["acme"]}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "globex"}),
                json!({}),
            ),
            true,
        ),
        (
            "resource built-in type",
            json!({"resource.type": {"equals": "document"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "resource built-in tenant is the query's",
            json!({"resource.tenant": {"equals": "acme"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "resource key absent when not given",
            json!({"not": [{"resource.key": {"equals": "d1"}}]}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "resource built-in key",
            json!({"resource.key": {"equals": "d1"}}),
            read_d(json!({}), d1(), json!({})),
            true,
        ),
        (
            "stored instance attribute",
            json!({"resource.classification": {"equals": "internal"}}),
            read_d(json!({}), d1(), json!({})),
            true,
        ),
        (
            "request resource attribute overrides stored",
            json!({"resource.classification": {"equals": "internal"}}),
            read_d(
                json!({}),
                json!({"type": "document", "key": "d1", "tenant": "acme", "attributes": {"classification": "public"}}),
                json!({}),
            ),
            false,
        ),
        (
            "request resource attribute without an instance",
            json!({"resource.classification": {"equals": "public"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "acme", "attributes": {"classification": "public"}}),
                json!({}),
            ),
            true,
        ),
        (
            "tenant built-in key",
            json!({"tenant.key": {"equals": "globex"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "globex"}),
                json!({}),
            ),
            true,
        ),
        (
            "tenant attributes visible with a role there",
            json!({"tenant.plan": {"equals": "pro"}}),
            read_d(json!({}), acme_doc(), json!({})),
            true,
        ),
        (
            "tenant attributes hidden without a role there",
            json!({"tenant.plan": {"equals": "free"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "globex"}),
                json!({}),
            ),
            false,
        ),
        (
            "context from the request",
            json!({"context.ip": {"equals": "1.2.3.4"}}),
            read_d(json!({}), acme_doc(), json!({"ip": "1.2.3.4"})),
            true,
        ),
        (
            "resource.context merged over context",
            json!({"context.ip": {"equals": "5.6.7.8"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "acme", "context": {"ip": "5.6.7.8"}}),
                json!({"ip": "1.2.3.4"}),
            ),
            true,
        ),
        (
            "resource.context keeps other context keys",
            json!({"context.zone": {"equals": "eu"}}),
            read_d(
                json!({}),
                json!({"type": "document", "tenant": "acme", "context": {"ip": "5.6.7.8"}}),
                json!({"zone": "eu"}),
            ),
            true,
        ),
        (
            "ABAC needs a tenant",
            json!({"allOf": []}),
            read_d(json!({}), json!({"type": "document"}), json!({})),
            false,
        ),
    ]);
    // A user unknown to the snapshot has only the request's attributes and key.
    let stranger = |attrs: Value| json!({"user": {"key": "zed", "attributes": attrs}, "action": "read", "resource": acme_doc()});
    cond_rows(vec![
        (
            "unknown user: request attributes",
            json!({"user.dept": {"equals": "eng"}}),
            stranger(json!({"dept": "eng"})),
            true,
        ),
        (
            "unknown user: key",
            json!({"user.key": {"equals": "zed"}}),
            stranger(json!({})),
            true,
        ),
        (
            "unknown user: roles is present and empty",
            json!({"user.roles": {"equals": []}}),
            stranger(json!({})),
            true,
        ),
    ]);
}

#[test]
fn abac_sets_rules_parents_and_autogen() {
    let d = json!({
        "resources": [{"key": "document", "id": "res-doc-uuid", "actions": {"read": {}, "write": {}, "share": {}},
                       "action_groups": {"collab": ["write", "share"]}},
                      {"key": "folder", "actions": {"read": {}}}],
        "roles": [{"key": "editor", "permissions": []}, {"key": "viewer", "permissions": []}],
        "tenants": [{"key": "acme"}, {"key": "globex"}],
        "users": [{"key": "eve", "attributes": {"dept": "eng", "level": 3}},
                  {"key": "sam", "attributes": {"dept": "eng", "level": 3}},
                  {"key": "otto", "attributes": {"dept": "ops", "level": 3}},
                  {"key": "jun", "attributes": {"dept": "eng", "level": 1}}],
        "role_assignments": [{"user": "eve", "role": "editor", "tenant": "acme"},
                             {"user": "otto", "role": "viewer", "tenant": "acme"}],
        "resource_instances": [{"key": "pub", "resource": "document", "tenant": "acme", "attributes": {"public": true}},
                               {"key": "sec", "resource": "document", "tenant": "acme", "attributes": {"public": false}}],
        "condition_sets": [
            {"key": "engineers", "id": "us-eng-uuid", "type": "userset", "conditions": {"allOf": [{"user.dept": {"equals": "eng"}}]}},
            {"key": "senior_engineers", "type": "userset", "parent_id": "us-eng-uuid",
             "conditions": {"allOf": [{"user.level": {"greater-than-equals": 2}}]}},
            {"key": "public_docs", "type": "resourceset", "resource": {"key": "document"},
             "conditions": {"allOf": [{"resource.public": {"equals": true}}]}},
            {"key": "public_docs_by_id", "type": "resourceset", "resource_id": "res-doc-uuid",
             "conditions": {"allOf": [{"resource.public": {"equals": true}}]}},
            {"key": "__autogen_viewer", "type": "userset", "conditions": {"allOf": [{"user.dept": {"equals": "nobody"}}]}}
        ],
        "condition_set_rules": [
            {"user_set": "senior_engineers", "permission": "document:write", "resource_set": "public_docs"},
            {"user_set": "engineers", "permission": "document:read", "resource_set": "public_docs"},
            {"user_set": "engineers", "permission": "folder:read", "resource_set": "public_docs"},
            {"user_set": "__autogen_editor", "permission": "document:collab", "resource_set": "__autogen_document"},
            {"user_set": "__autogen_viewer", "permission": "folder:read", "resource_set": "__autogen_folder"},
            {"user_set": "engineers", "permission": "document:share", "resource_set": "no_such_set"},
            {"user_set": "engineers", "permission": "document:read", "resource_set": "public_docs_by_id"}
        ]
    });
    let r = |ty: &str, key: Option<&str>, tenant: &str| match key {
        Some(k) => json!({"type": ty, "key": k, "tenant": tenant}),
        None => json!({"type": ty, "tenant": tenant}),
    };
    table(
        &d,
        &[
            (
                "user set and resource set match",
                ask("sam", "write", r("document", Some("pub"), "acme")),
                true,
            ),
            (
                "resource set conditions fail",
                ask("sam", "write", r("document", Some("sec"), "acme")),
                false,
            ),
            (
                "child set needs the parent's conditions (named by id)",
                ask("otto", "write", r("document", Some("pub"), "acme")),
                false,
            ),
            (
                "child set's own conditions",
                ask("jun", "write", r("document", Some("pub"), "acme")),
                false,
            ),
            (
                "parent alone suffices for its own rule",
                ask("jun", "read", r("document", Some("pub"), "acme")),
                true,
            ),
            (
                "resource set bound to another type",
                ask("eve", "read", r("folder", Some("pub"), "acme")),
                false,
            ),
            (
                "resource set by resource_id, request attributes",
                ask(
                    "jun",
                    "read",
                    json!({"type": "document", "tenant": "acme", "attributes": {"public": true}}),
                ),
                true,
            ),
            (
                "autogen user set by role (unlisted), group permission",
                ask("eve", "share", r("document", None, "acme")),
                true,
            ),
            (
                "autogen: role only in the query's tenant",
                ask("eve", "share", r("document", None, "globex")),
                false,
            ),
            (
                "autogen: action outside the group",
                ask("eve", "read", r("document", None, "acme")),
                false,
            ),
            (
                "listed autogen set: its conditions are ignored",
                ask("otto", "read", r("folder", None, "acme")),
                true,
            ),
            (
                "rule naming an unknown set is ignored",
                ask("eve", "share", r("document", Some("pub"), "globex")),
                false,
            ),
        ],
    );
}

#[test]
fn malformed_conditions_are_refused_naming_the_set() {
    for cond in [
        json!({"allOf": [{"user.dept": {"resembles": "eng"}}]}),
        json!({"allOf": "not a list"}),
    ] {
        let mut d = abac_doc(cond.clone());
        d["condition_sets"][0]["key"] = json!("odd_set");
        let err = Engine::build(&doc(&d))
            .err()
            .unwrap_or_else(|| panic!("{cond} should be refused"));
        assert!(err.to_string().contains("odd_set"), "{err}");
    }
}

/// A chain of `n` sets, `s0` ← `s1` ← … ← `s{n-1}` (each the parent of the
/// next), with the rule on the last; only the root `s0` tests anything.
fn chain_doc(n: usize) -> Value {
    let mut d = abac_doc(json!({"allOf": []}));
    let sets: Vec<Value> = (0..n)
        .map(|i| {
            let conditions = if i == 0 {
                json!({"allOf": [{"user.dept": {"equals": "eng"}}]})
            } else {
                json!({"allOf": []})
            };
            let mut set = json!({"key": format!("s{i}"), "id": format!("id-{i}"), "type": "userset", "conditions": conditions});
            if i > 0 {
                set["parent_id"] = json!(format!("id-{}", i - 1));
            }
            set
        })
        .collect();
    d["condition_sets"] = Value::Array(sets);
    d["condition_set_rules"][0]["user_set"] = json!(format!("s{}", n - 1));
    d
}

#[test]
fn parent_chains_are_bounded_and_each_link_is_compiled_once() {
    use pdp::snapshot::MAX_PARENT_DEPTH;
    // The longest chain allowed: the root's condition still decides.
    let e = Engine::from_json(&chain_doc(MAX_PARENT_DEPTH));
    let ask = |dept: &str| {
        json!({"user": {"key": "alice", "attributes": {"dept": dept}}, "action": "read",
               "resource": {"type": "document", "tenant": "acme"}})
    };
    assert!(e.allowed(&ask("eng")));
    assert!(!e.allowed(&ask("ops")));
    // One longer, or the 5,000 of the review (38 s and 4.8 GB to build
    // before), is refused at once, naming a set too deep and the limit.
    for n in [MAX_PARENT_DEPTH + 1, 5_000] {
        let err = Engine::build(&doc(&chain_doc(n)))
            .err()
            .unwrap_or_else(|| panic!("a chain of {n} is refused"));
        let text = err.to_string();
        assert!(
            text.contains("condition set `s") && text.contains("longer than 32"),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// §6: multi-answer endpoints
// ---------------------------------------------------------------------------

fn multi_doc() -> Value {
    json!({
        "resources": [
            {"key": "document", "actions": {"read": {}, "write": {}},
             "relations": {"parent": {"resource": "folder"}},
             "roles": {"editor": {"permissions": ["read", "write"],
                                  "granted_to": {"users_with_role": [
                                      {"role": "owner", "on_resource": "folder", "linked_by_relation": "parent"}]}}}},
            {"key": "folder", "actions": {"read": {}},
             "roles": {"owner": {"permissions": ["read"]}}}
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "admin", "permissions": ["document:write", "folder:read"], "extends": ["viewer"]}
        ],
        "tenants": [{"key": "acme", "attributes": {"plan": "pro"}}, {"key": "beta"}, {"key": "zeta"}],
        "users": [{"key": "ann"}, {"key": "ben"}, {"key": "cy"}],
        "role_assignments": [
            {"user": "ann", "role": "admin", "tenant": "acme"},
            {"user": "ann", "role": "viewer", "tenant": "zeta"},
            {"user": "ben", "role": "viewer", "tenant": "acme"},
            {"user": "ben", "role": "owner", "tenant": "acme", "resource_instance": "folder:f"},
            {"user": "cy", "role": "editor", "tenant": "beta", "resource_instance": "document:d2"}
        ],
        "resource_instances": [
            {"key": "d1", "resource": "document", "tenant": "acme", "attributes": {"size": 1}},
            {"key": "d2", "resource": "document", "tenant": "beta"},
            {"key": "f", "resource": "folder", "tenant": "acme"}
        ],
        "relationship_tuples": [{"subject": "folder:f", "relation": "parent", "object": "document:d1"}]
    })
}

#[test]
fn user_tenants_lists_tenants_with_a_tenant_role_in_key_order() {
    let d = multi_doc();
    let (e, p) = (Engine::from_json(&d), doc(&d));
    for (user, want) in [
        (
            "ann",
            json!([{"key": "acme", "attributes": {"plan": "pro"}}, {"key": "zeta", "attributes": {}}]),
        ),
        (
            "ben",
            json!([{"key": "acme", "attributes": {"plan": "pro"}}]),
        ),
        ("cy", json!([])),
        ("nobody", json!([])),
    ] {
        let q = json!({"user": {"key": user}});
        same(
            user,
            e.user_tenants(&q),
            reference::user_tenants(&Reference::new(&p), &q),
            want,
        );
    }
}

#[test]
fn all_tenants_tries_each_candidate_tenant() {
    let d = multi_doc();
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let entry = |t: Value| json!({"allow": true, "result": true, "tenant": t});
    let acme = json!({"key": "acme", "attributes": {"plan": "pro"}});
    let zeta = json!({"key": "zeta", "attributes": {}});
    let rows = [
        (
            "RBAC in two tenants",
            ask("ann", "read", json!({"type": "document"})),
            json!([entry(acme.clone()), entry(zeta)]),
        ),
        (
            "RBAC in one of them",
            ask(
                "ann",
                "write",
                json!({"type": "document", "tenant": "zeta"}),
            ),
            json!([entry(acme.clone())]),
        ),
        (
            "ReBAC counts, but only in tenants where the user has a tenant role",
            ask("ben", "write", json!({"type": "document", "key": "d1"})),
            json!([entry(acme)]),
        ),
        (
            "known user without tenant roles has no candidates",
            ask("cy", "write", json!({"type": "document", "key": "d2"})),
            json!([]),
        ),
        (
            "unknown user: every tenant tried, none allows",
            ask("zed", "read", json!({"type": "document"})),
            json!([]),
        ),
    ];
    for (name, q, want) in rows {
        same(
            name,
            e.allowed_tenants(&q),
            reference::allowed_tenants(&Reference::new(&p), &q),
            json!({"allowed_tenants": want}),
        );
    }
}

#[test]
fn user_permissions_entries_and_filters() {
    let d = multi_doc();
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let ann_acme = json!({"tenant": {"key": "acme", "attributes": {"plan": "pro"}},
                          "permissions": ["document:read", "document:write", "folder:read"],
                          "roles": ["admin"]});
    let ann_zeta =
        json!({"tenant": {"key": "zeta"}, "permissions": ["document:read"], "roles": ["viewer"]});
    let ben_acme = json!({"tenant": {"key": "acme", "attributes": {"plan": "pro"}},
                          "permissions": ["document:read"], "roles": ["viewer"]});
    let ben_f = json!({"resource": {"key": "f", "type": "folder", "attributes": {}},
                       "permissions": ["folder:read"], "roles": ["owner"]});
    let ben_d1 = json!({"resource": {"key": "d1", "type": "document", "attributes": {"size": 1}},
                        "permissions": ["document:read", "document:write"], "roles": ["editor"]});
    let cy_d2 = json!({"resource": {"key": "d2", "type": "document", "attributes": {}},
                       "permissions": ["document:read", "document:write"], "roles": ["editor"]});
    let up = |user: &str, extra: Value| {
        let mut q = json!({"user": {"key": user}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            q[k] = v;
        }
        q
    };
    let rows = [
        (
            "tenant entries",
            up("ann", json!({})),
            json!({"__tenant:acme": ann_acme, "__tenant:zeta": ann_zeta}),
        ),
        (
            "null filters are no filters",
            up(
                "ann",
                json!({"tenants": null, "resources": null, "resource_types": null}),
            ),
            json!({"__tenant:acme": ann_acme, "__tenant:zeta": ann_zeta}),
        ),
        (
            "direct and derived instance entries",
            up("ben", json!({})),
            json!({"__tenant:acme": ben_acme, "folder:f": ben_f, "document:d1": ben_d1}),
        ),
        (
            "instance role without tenant role",
            up("cy", json!({})),
            json!({"document:d2": cy_d2}),
        ),
        ("unknown user", up("zed", json!({})), json!({})),
        (
            "tenants filter, bare key",
            up("ann", json!({"tenants": ["zeta"]})),
            json!({"__tenant:zeta": ann_zeta}),
        ),
        (
            "tenants filter, prefixed key",
            up("ann", json!({"tenants": ["__tenant:acme"]})),
            json!({"__tenant:acme": ann_acme}),
        ),
        (
            "tenants filter keeps instances of that tenant",
            up("ben", json!({"tenants": ["acme"]})),
            json!({"__tenant:acme": ben_acme, "folder:f": ben_f, "document:d1": ben_d1}),
        ),
        (
            "tenants filter drops instances of other tenants",
            up("cy", json!({"tenants": ["acme"]})),
            json!({}),
        ),
        (
            "resources filter by type:key, also filters tenant entries",
            up("ben", json!({"resources": ["document:d1"]})),
            json!({"document:d1": ben_d1}),
        ),
        (
            "resources filter by bare key",
            up("ben", json!({"resources": ["f"]})),
            json!({"folder:f": ben_f}),
        ),
        (
            "resources filter naming the tenant keeps its entry",
            up("ben", json!({"resources": ["__tenant:acme", "f"]})),
            json!({"__tenant:acme": ben_acme, "folder:f": ben_f}),
        ),
        (
            "resources filter with tenants: tenant entries by tenants only",
            up("ben", json!({"tenants": ["acme"], "resources": ["f"]})),
            json!({"__tenant:acme": ben_acme, "folder:f": ben_f}),
        ),
        (
            "resource_types: __tenant",
            up("ben", json!({"resource_types": ["__tenant"]})),
            json!({"__tenant:acme": ben_acme}),
        ),
        (
            "resource_types: a type",
            up("ben", json!({"resource_types": ["document"]})),
            json!({"document:d1": ben_d1}),
        ),
    ];
    for (name, q, want) in rows {
        same(
            name,
            e.user_permissions(&q),
            reference::user_permissions(&Reference::new(&p), &q),
            want,
        );
    }
}

#[test]
fn user_permissions_abac_only_when_enabled() {
    let d = json!({
        "resources": [{"key": "document", "actions": {"read": {}, "write": {}}}],
        "roles": [{"key": "member", "permissions": []}],
        "tenants": [{"key": "acme"}, {"key": "beta"}],
        "users": [{"key": "ann", "attributes": {"dept": "eng"}}],
        "role_assignments": [{"user": "ann", "role": "member", "tenant": "acme"}],
        "resource_instances": [{"key": "pub", "resource": "document", "tenant": "acme", "attributes": {"public": true}},
                               {"key": "sec", "resource": "document", "tenant": "acme", "attributes": {"public": false}}],
        "condition_sets": [
            {"key": "eng", "type": "userset", "conditions": {"allOf": [{"user.dept": {"equals": "eng"}}]}},
            {"key": "public", "type": "resourceset", "resource": "document", "conditions": {"allOf": [{"resource.public": {"equals": true}}]}}
        ],
        "condition_set_rules": [
            {"user_set": "__autogen_member", "permission": "document:read", "resource_set": "__autogen_document"},
            {"user_set": "eng", "permission": "document:write", "resource_set": "public"}
        ]
    });
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let off = json!({"user": {"key": "ann"}});
    same(
        "ABAC off",
        e.user_permissions(&off),
        reference::user_permissions(&Reference::new(&p), &off),
        json!({"__tenant:acme": {"tenant": {"key": "acme"}, "permissions": [], "roles": ["member"]}}),
    );
    let on = json!({"user": {"key": "ann"}, "context": {"enable_abac_user_permissions": true}});
    same(
        "ABAC on",
        e.user_permissions(&on),
        reference::user_permissions(&Reference::new(&p), &on),
        json!({
            "__tenant:acme": {"tenant": {"key": "acme"}, "permissions": ["document:read"], "roles": ["member"]},
            "document:pub": {"resource": {"key": "pub", "type": "document", "attributes": {"public": true}},
                             "permissions": ["document:write"], "roles": []}
        }),
    );
}

#[test]
fn authorized_users_rbac_and_rebac_parts() {
    let d = multi_doc();
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let rows = [
        (
            "RBAC only without a key",
            json!({"action": "read", "resource": {"type": "document", "tenant": "acme"}}),
            json!({"resource": "document:*", "tenant": "acme", "users": {
                "ann": [{"user": "ann", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}],
                "ben": [{"user": "ben", "tenant": "acme", "resource": "__tenant:acme", "role": "viewer"}]}}),
        ),
        (
            "only roles granting the action",
            json!({"action": "write", "resource": {"type": "document", "tenant": "acme"}}),
            json!({"resource": "document:*", "tenant": "acme", "users": {
                "ann": [{"user": "ann", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}]}}),
        ),
        (
            "ReBAC part with a key, derived roles included",
            json!({"action": "write", "resource": {"type": "document", "key": "d1", "tenant": "acme"}}),
            json!({"resource": "document:d1", "tenant": "acme", "users": {
                "ann": [{"user": "ann", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}],
                "ben": [{"user": "ben", "tenant": "acme", "resource": "document:d1", "role": "editor"}]}}),
        ),
        (
            "a user with both parts",
            json!({"action": "read", "resource": {"type": "document", "key": "d1", "tenant": "acme"}}),
            json!({"resource": "document:d1", "tenant": "acme", "users": {
                "ann": [{"user": "ann", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}],
                "ben": [{"user": "ben", "tenant": "acme", "resource": "__tenant:acme", "role": "viewer"},
                        {"user": "ben", "tenant": "acme", "resource": "document:d1", "role": "editor"}]}}),
        ),
        (
            "tenant defaults to default",
            json!({"action": "read", "resource": {"type": "document"}}),
            json!({"resource": "document:*", "tenant": "default", "users": {}}),
        ),
        (
            "the ReBAC part in the instance's own tenant",
            json!({"action": "write", "resource": {"type": "document", "key": "d2", "tenant": "beta"}}),
            json!({"resource": "document:d2", "tenant": "beta", "users": {
                "cy": [{"user": "cy", "tenant": "beta", "resource": "document:d2", "role": "editor"}]}}),
        ),
        (
            "no ReBAC part for an instance of another tenant",
            json!({"action": "write", "resource": {"type": "document", "key": "d2", "tenant": "zeta"}}),
            json!({"resource": "document:d2", "tenant": "zeta", "users": {}}),
        ),
    ];
    for (name, q, want) in rows {
        same(
            name,
            e.authorized_users(&q),
            reference::authorized_users(&Reference::new(&p), &q),
            want,
        );
    }
}

/// §4: an instance named only by an assignment or a tuple exists with no
/// tenant, whatever the assignment's own tenant says; so a `tenants` filter
/// never keeps it, and ABAC `/user-permissions` never lists it under a tenant.
#[test]
fn implicit_instances_have_no_tenant() {
    let d = json!({
        "resources": [{"key": "doc", "actions": {"read": {}}, "roles": {"reader": {"permissions": ["read"]}}}],
        "tenants": [{"key": "t0"}],
        "users": [{"key": "ann"}, {"key": "ben"}],
        "role_assignments": [{"user": "ann", "role": "reader", "tenant": "t0", "resource_instance": "doc:implicit"}],
        "condition_set_rules": [{"user_set": "everyone", "permission": "doc:read", "resource_set": "open"}],
        "condition_sets": [
            {"key": "everyone", "type": "userset", "conditions": {"allOf": []}},
            {"key": "open", "type": "resourceset", "resource": "doc", "conditions": {"allOf": []}}
        ]
    });
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let entry = json!({"resource": {"key": "implicit", "type": "doc", "attributes": {}},
                       "permissions": ["doc:read"], "roles": ["reader"]});
    let q = json!({"user": {"key": "ann"}});
    same(
        "no filter",
        e.user_permissions(&q),
        reference::user_permissions(&Reference::new(&p), &q),
        json!({"doc:implicit": entry}),
    );
    let q = json!({"user": {"key": "ann"}, "tenants": ["t0"]});
    same(
        "tenants filter",
        e.user_permissions(&q),
        reference::user_permissions(&Reference::new(&p), &q),
        json!({}),
    );
    let q = json!({"user": {"key": "ben"}, "tenants": ["t0"], "context": {"enable_abac_user_permissions": true}});
    same(
        "ABAC over instances of the tenant",
        e.user_permissions(&q),
        reference::user_permissions(&Reference::new(&p), &q),
        json!({}),
    );
}

/// §6: an ABAC instance entry of `/user-permissions` grants what `/allowed`
/// would on that instance, so a user set reading `resource.*` sees the
/// instance's attributes there too.
#[test]
fn abac_user_permissions_agree_with_allowed_per_instance() {
    let d = json!({
        "resources": [{"key": "doc", "actions": {"read": {}}}],
        "tenants": [{"key": "t0"}],
        "users": [{"key": "ann"}],
        "resource_instances": [{"key": "d1", "resource": "doc", "tenant": "t0", "attributes": {"level": 1}}],
        "condition_sets": [
            {"key": "low", "type": "userset", "conditions": {"not": [{"resource.level": {"greater-than-equals": 1}}]}},
            {"key": "any_doc", "type": "resourceset", "resource": "doc", "conditions": {"allOf": []}}
        ],
        "condition_set_rules": [{"user_set": "low", "permission": "doc:read", "resource_set": "any_doc"}]
    });
    let (e, p) = (Engine::from_json(&d), doc(&d));
    let check = ask(
        "ann",
        "read",
        json!({"type": "doc", "key": "d1", "tenant": "t0"}),
    );
    assert!(
        !e.allowed(&check) && !reference::allowed(&Reference::new(&p), &check),
        "/allowed denies d1"
    );
    let q = json!({"user": {"key": "ann"}, "tenants": ["t0"], "context": {"enable_abac_user_permissions": true}});
    same(
        "so user-permissions lists nothing",
        e.user_permissions(&q),
        reference::user_permissions(&Reference::new(&p), &q),
        json!({}),
    );
}

/// §5.3: `__autogen_<role>` reads the user's real tenant roles, not a
/// `roles` attribute the request supplies.
#[test]
fn autogen_user_sets_ignore_request_roles() {
    let d = json!({
        "resources": [{"key": "doc", "actions": {"read": {}}}],
        "roles": [{"key": "viewer", "permissions": []}],
        "tenants": [{"key": "t0"}],
        "users": [{"key": "u"}],
        "condition_set_rules": [{"user_set": "__autogen_viewer", "permission": "doc:read", "resource_set": "__autogen_doc"}]
    });
    table(
        &d,
        &[(
            "request claims the role",
            json!({"user": {"key": "u", "attributes": {"roles": ["viewer"]}}, "action": "read",
                   "resource": {"type": "doc", "tenant": "t0"}}),
            false,
        )],
    );
}
