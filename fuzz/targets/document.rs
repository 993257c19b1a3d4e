//! The data document → snapshot constructor: the streaming reader a data
//! file and a sync's pages go through, then the build, then decisions on
//! what was built. A crash is a panic; a refusal is an answer.

use pdp::decide::{self, AllowedQuery, UserPermissionsQuery};
use pdp::snapshot::{Snapshot, Staged};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(staged) = Staged::from_json_str(text) else {
            return;
        };
        let _ = staged.content_hash();
        let Ok(snap) = Snapshot::from_staged(staged) else {
            return;
        };
        // Decisions over whatever the document named.
        let users: Vec<String> = snap.user_keys().take(4).map(str::to_owned).collect();
        for user in users.iter().map(String::as_str).chain(["nobody"]) {
            for body in [
                format!(
                    r#"{{"user": "{user}", "action": "read", "resource": {{"type": "document", "tenant": "default"}}}}"#
                ),
                format!(
                    r#"{{"user": {{"key": "{user}", "attributes": {{"level": 3}}}}, "action": "write", "resource": {{"type": "file", "key": "f1", "tenant": "t1"}}}}"#
                ),
            ] {
                if let Ok(q) = serde_json::from_str::<AllowedQuery>(&body) {
                    let _ = decide::check(&snap, &q);
                    let _ = decide::allowed_tenants(&snap, &q);
                }
            }
            let body = format!(
                r#"{{"user": {{"key": "{user}"}}, "context": {{"enable_abac_user_permissions": true}}}}"#
            );
            if let Ok(q) = serde_json::from_str::<UserPermissionsQuery>(&body) {
                let _ = decide::user_permissions(&snap, &q);
            }
        }
    });
}
