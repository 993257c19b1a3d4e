//! Decisions: pure functions from a snapshot and a query to an answer.
//!
//! No I/O, no async, no logging, no locks: everything a decision needs is in
//! the [`Snapshot`](crate::snapshot::Snapshot). The rules are those of `docs/semantics.md`; the section
//! numbers in this module refer to it.
//!
//! - `query`: the request bodies, decoded as Permit's PDP reads them.
//! - `check`: `/allowed` and `/allowed/bulk`, the hot path: ids looked up
//!   once, rows fetched before they are read.
//! - `walk`: relationship walks (derived roles, ReBAC).
//! - `attrs`: the attributes ABAC conditions see.
//! - `listing`: the multi-answer endpoints (`/allowed/all-tenants`,
//!   `/user-tenants`, `/user-permissions`, `/authorized_users`).

mod attrs;
mod check;
mod listing;
mod local;
mod query;
mod walk;

use serde::Serialize;

pub use check::{check, check_bulk};
pub use listing::{
    allowed_tenants, allowed_tenants_work, authorized_users, authorized_users_work,
    user_permissions, user_permissions_work, user_tenants, user_tenants_work, AllTenantsResponse,
    AllowedTenant, AuthorizedAssignment, AuthorizedUsersResponse, PermResource, PermSet,
    PermTenant, PermissionEntry, TenantInfo, UserPermissionsResponse, UserTenantsResponse,
};
pub use local::{
    local_role_assignments, local_role_assignments_work, AssignmentFilter, LocalAssignment,
};
pub use query::{
    AllowedQuery, Attrs, AuthorizedUsersQuery, BulkChecks, Obj, ResourceInput, Str, UserInput,
    UserPermissionsQuery, UserTenantsQuery,
};

/// Why a decision came out as it did (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Allow,
    NoTenant,
    UserNotSynced,
    NoSuchTenant,
    NoSuchResource,
    NoSuchAction,
    NoPermission,
}

pub const RBAC: u8 = 1;
pub const REBAC: u8 = 2;
pub const ABAC: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Bits of [`RBAC`], [`REBAC`], [`ABAC`]: the models that allowed.
    pub sources: u8,
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DebugInfo {
    pub reason: Reason,
    pub allowing_sources: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AllowedResponse {
    pub allow: bool,
    pub result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugInfo>,
}

impl Decision {
    pub fn sources(&self) -> Vec<&'static str> {
        [(RBAC, "rbac"), (REBAC, "rebac"), (ABAC, "abac")]
            .into_iter()
            .filter(|(bit, _)| self.sources & bit != 0)
            .map(|(_, name)| name)
            .collect()
    }

    pub fn to_response(&self, debug: bool) -> AllowedResponse {
        AllowedResponse {
            allow: self.allow,
            result: self.allow,
            debug: debug.then(|| DebugInfo {
                reason: self.reason,
                allowing_sources: self.sources(),
            }),
        }
    }
}

fn deny(reason: Reason) -> Decision {
    Decision {
        allow: false,
        sources: 0,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DataDocument;
    use crate::snapshot::Snapshot;
    use serde_json::{json, Value};

    fn snapshot(doc: Value) -> Snapshot {
        let doc: DataDocument = serde_json::from_value(doc).unwrap();
        Snapshot::build(&doc).unwrap()
    }

    fn rbac_env() -> Snapshot {
        snapshot(json!({
            "resources": [
                {"key": "document", "actions": {"read": {}, "write": {}, "delete": {}},
                 "action_groups": {"modify": ["write", "delete"]}},
                {"key": "invoice", "actions": {"read": {}, "pay": {}}}
            ],
            "roles": [
                {"key": "viewer", "permissions": ["document:read", "invoice:read"]},
                {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]},
                {"key": "admin", "permissions": ["document:modify", "invoice:pay"], "extends": ["editor"]},
                {"key": "ghost", "permissions": ["nothing:read", "document:fly", "bad"]}
            ],
            "tenants": [{"key": "acme"}, {"key": "globex"}],
            "users": [
                {"key": "alice", "roles": [{"role": "admin", "tenant": "acme"}]},
                {"key": "bob"},
                {"key": "carol"}
            ],
            "role_assignments": [
                {"user": "bob", "role": "editor", "tenant": "globex"},
                {"user": "carol", "role": "viewer", "tenant": "acme"},
                {"user": "carol", "role": "ghost", "tenant": "acme"},
                {"user": "carol", "role": "deleted-role", "tenant": "acme"}
            ]
        }))
    }

    fn ask(snap: &Snapshot, body: Value) -> Decision {
        let text = body.to_string();
        let q: AllowedQuery = serde_json::from_str(&text).unwrap();
        check(snap, &q)
    }

    #[test]
    fn rbac_table() {
        let snap = rbac_env();
        let cases = [
            // (user, action, type, tenant, allow, reason)
            (
                "alice",
                "read",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "alice",
                "write",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "alice",
                "delete",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            ("alice", "pay", "invoice", Some("acme"), true, Reason::Allow),
            (
                "alice",
                "read",
                "document",
                Some("globex"),
                false,
                Reason::NoPermission,
            ),
            (
                "bob",
                "write",
                "document",
                Some("globex"),
                true,
                Reason::Allow,
            ),
            (
                "bob",
                "read",
                "invoice",
                Some("globex"),
                true,
                Reason::Allow,
            ),
            (
                "bob",
                "delete",
                "document",
                Some("globex"),
                false,
                Reason::NoPermission,
            ),
            (
                "bob",
                "read",
                "document",
                Some("acme"),
                false,
                Reason::NoPermission,
            ),
            (
                "carol",
                "read",
                "document",
                Some("acme"),
                true,
                Reason::Allow,
            ),
            (
                "carol",
                "write",
                "document",
                Some("acme"),
                false,
                Reason::NoPermission,
            ),
            ("alice", "read", "document", None, false, Reason::NoTenant),
            (
                "alice",
                "read",
                "document",
                Some(""),
                false,
                Reason::NoTenant,
            ),
            (
                "mallory",
                "read",
                "document",
                Some("acme"),
                false,
                Reason::UserNotSynced,
            ),
            (
                "alice",
                "read",
                "document",
                Some("initech"),
                false,
                Reason::NoSuchTenant,
            ),
            (
                "alice",
                "read",
                "spaceship",
                Some("acme"),
                false,
                Reason::NoSuchResource,
            ),
            (
                "alice",
                "fly",
                "document",
                Some("acme"),
                false,
                Reason::NoSuchAction,
            ),
            (
                "alice",
                "modify",
                "document",
                Some("acme"),
                false,
                Reason::NoSuchAction,
            ),
        ];
        for (user, action, ty, tenant, allow, reason) in cases {
            let d = ask(
                &snap,
                json!({"user": {"key": user}, "action": action,
                       "resource": {"type": ty, "tenant": tenant, "key": "k1"}}),
            );
            assert_eq!(
                (d.allow, d.reason),
                (allow, reason),
                "{user} {action} {ty} {tenant:?}"
            );
            assert_eq!(d.sources == RBAC, allow);
        }
        assert_eq!(
            snap.counts().dropped_facts,
            1,
            "the assignment of a deleted role"
        );
    }

    #[test]
    fn lenient_request_shapes() {
        let snap = rbac_env();
        let d = ask(
            &snap,
            json!({"user": "alice", "action": "read",
                   "resource": {"type": "document", "key": null, "tenant": "acme",
                                "attributes": null, "context": null, "id": "x"},
                   "context": null, "sdk": "python", "unknown": [1]}),
        );
        assert!(d.allow);
        let escaped: AllowedQuery = serde_json::from_str(
            r#"{"user": {"key": "al\u0069ce", "attributes": null}, "action": "read",
                "resource": {"type": "document", "tenant": "acme"}}"#,
        )
        .unwrap();
        assert!(check(&snap, &escaped).allow);
    }

    #[test]
    fn extends_cycles_and_dangling_references_are_refused() {
        let cyclic: DataDocument = serde_json::from_value(json!({"roles": [
            {"key": "a", "extends": ["b"]}, {"key": "b", "extends": ["c"]}, {"key": "c", "extends": ["a"]}
        ]}))
        .unwrap();
        match Snapshot::build(&cyclic) {
            Err(crate::snapshot::BuildError::ExtendsCycle { cycle, .. }) => {
                assert_eq!(cycle.first(), cycle.last());
                assert!(cycle.len() == 4, "{cycle:?}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a cycle was accepted"),
        }
        let dangling: DataDocument =
            serde_json::from_value(json!({"roles": [{"key": "a", "extends": ["nope"]}]})).unwrap();
        let err = Snapshot::build(&dangling).err().expect("refused");
        assert!(err.to_string().contains("`a` extends `nope`"), "{err}");
    }

    #[test]
    fn multi_answer_endpoints() {
        let snap = rbac_env();
        let text = json!({"user": "alice", "action": "read", "resource": {"type": "document"}})
            .to_string();
        let q: AllowedQuery = serde_json::from_str(&text).unwrap();
        let all = serde_json::to_value(allowed_tenants(&snap, &q)).unwrap();
        assert_eq!(
            all,
            json!({"allowed_tenants": [{"allow": true, "result": true, "tenant": {"key": "acme", "attributes": {}}}]})
        );
        let text = json!({"user": {"key": "bob"}, "tenants": null}).to_string();
        let up: UserPermissionsQuery = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(user_permissions(&snap, &up)).unwrap(),
            json!({"__tenant:globex": {"tenant": {"key": "globex"},
                   "permissions": ["document:read", "document:write", "invoice:read"],
                   "roles": ["editor"]}})
        );
        let text = json!({"action": "read", "resource": {"type": "document", "tenant": "acme"}})
            .to_string();
        let au: AuthorizedUsersQuery = serde_json::from_str(&text).unwrap();
        let au = serde_json::to_value(authorized_users(&snap, &au)).unwrap();
        assert_eq!(au["resource"], "document:*");
        assert_eq!(
            au["users"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alice", "carol"]
        );
        assert_eq!(
            au["users"]["alice"],
            json!([{"user": "alice", "tenant": "acme", "resource": "__tenant:acme", "role": "admin"}])
        );
    }
}
