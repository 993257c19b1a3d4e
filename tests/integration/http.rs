//! The Permit PDP API over a real socket: every endpoint, every
//! authentication outcome, every class of bad input, readiness, metrics,
//! HTTP/2, and snapshot swaps under load.

use std::io::{Read, Write};
use std::time::Duration;

use pdp::http::HttpSettings;
use pdp::snapshot::Staged;
use pdp::store::Source;
use serde_json::{json, Value};

use crate::support::{document, settings, TestServer, KEY};

fn env() -> Value {
    json!({
        "resources": [
            {"key": "document", "actions": {"read": {}, "write": {}, "delete": {}},
             "roles": {"owner": {"permissions": ["read", "write", "delete"]}}},
            {"key": "invoice", "actions": {"read": {}, "pay": {}}}
        ],
        "roles": [
            {"key": "viewer", "permissions": ["document:read"]},
            {"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]},
            {"key": "billing", "permissions": ["invoice:pay", "invoice:read"]}
        ],
        "tenants": [{"key": "default"}, {"key": "acme", "attributes": {"tier": "gold"}}, {"key": "globex"}],
        "users": [{"key": "alice"}, {"key": "bob"}],
        "role_assignments": [
            {"user": "alice", "role": "editor", "tenant": "acme"},
            {"user": "alice", "role": "viewer", "tenant": "default"},
            {"user": "bob", "role": "billing", "tenant": "globex"},
            {"user": "bob", "role": "owner", "tenant": "acme", "resource_instance": "document:d1"}
        ]
    })
}

async fn server() -> TestServer {
    TestServer::start(document(env())).await
}

fn q(user: Value, action: &str, resource: Value) -> Value {
    json!({"user": user, "action": action, "resource": resource, "context": {}})
}

#[tokio::test]
async fn allowed_answers_rbac_and_rebac_with_result_mirroring_allow() {
    let s = server().await;
    let cases = [
        (
            q(
                json!({"key": "alice"}),
                "write",
                json!({"type": "document", "tenant": "acme"}),
            ),
            true,
        ),
        (
            q(
                json!("alice"),
                "read",
                json!({"type": "document", "tenant": "acme", "key": null}),
            ),
            true,
        ),
        (
            q(
                json!({"key": "alice"}),
                "write",
                json!({"type": "document", "tenant": "default"}),
            ),
            false,
        ),
        (
            q(
                json!({"key": "alice"}),
                "write",
                json!({"type": "document", "tenant": "globex"}),
            ),
            false,
        ),
        (
            q(
                json!({"key": "alice"}),
                "write",
                json!({"type": "document"}),
            ),
            false,
        ),
        (
            q(
                json!({"key": "bob"}),
                "pay",
                json!({"type": "invoice", "tenant": "globex"}),
            ),
            true,
        ),
        (
            q(
                json!({"key": "bob"}),
                "delete",
                json!({"type": "document", "key": "d1", "tenant": "acme"}),
            ),
            true,
        ),
        (
            q(
                json!({"key": "bob"}),
                "delete",
                json!({"type": "document", "key": "d2", "tenant": "acme"}),
            ),
            false,
        ),
        (
            q(
                json!({"key": "nobody"}),
                "read",
                json!({"type": "document", "tenant": "acme"}),
            ),
            false,
        ),
    ];
    for (query, want) in cases {
        assert_eq!(s.allowed(query.clone()).await, want, "{query}");
    }
}

#[tokio::test]
async fn debug_reasons_when_enabled() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            debug: true,
            ..settings()
        },
    )
    .await;
    let (_, body) = s
        .post(
            "/allowed",
            &q(
                json!("alice"),
                "write",
                json!({"type": "document", "tenant": "acme"}),
            ),
        )
        .await;
    assert_eq!(
        body["debug"],
        json!({"reason": "allow", "allowing_sources": ["rbac"]})
    );
    let (_, body) = s
        .post(
            "/allowed",
            &q(
                json!("zed"),
                "write",
                json!({"type": "document", "tenant": "acme"}),
            ),
        )
        .await;
    assert_eq!(body["debug"]["reason"], "user_not_synced");
    let (_, body) = server()
        .await
        .post(
            "/allowed",
            &q(
                json!("alice"),
                "write",
                json!({"type": "document", "tenant": "acme"}),
            ),
        )
        .await;
    assert!(
        body.get("debug").is_none(),
        "no debug block unless PDP_DEBUG: {body}"
    );
}

#[tokio::test]
async fn bulk_keeps_order_and_length() {
    let s = server().await;
    let checks = json!([
        q(
            json!("alice"),
            "write",
            json!({"type": "document", "tenant": "acme"})
        ),
        q(
            json!("alice"),
            "write",
            json!({"type": "document", "tenant": "globex"})
        ),
        q(
            json!("bob"),
            "pay",
            json!({"type": "invoice", "tenant": "globex"})
        ),
    ]);
    let (status, body) = s.post("/allowed/bulk", &checks).await;
    assert_eq!(status, 200);
    let allows: Vec<bool> = body["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["allow"].as_bool().unwrap())
        .collect();
    assert_eq!(allows, [true, false, true]);
    let (status, body) = s.post("/allowed/bulk", &json!([])).await;
    assert_eq!((status, body), (200, json!({"allow": []})));
}

#[tokio::test]
async fn multi_answer_endpoints() {
    let s = server().await;
    let (status, body) = s
        .post(
            "/allowed/all-tenants",
            &q(json!("alice"), "read", json!({"type": "document"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"allowed_tenants": [
            {"allow": true, "result": true, "tenant": {"key": "acme", "attributes": {"tier": "gold"}}},
            {"allow": true, "result": true, "tenant": {"key": "default", "attributes": {}}}
        ]})
    );

    let (status, body) = s
        .post(
            "/user-permissions",
            &json!({"user": {"key": "alice"}, "tenants": ["acme"], "resources": null, "resource_types": null}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"__tenant:acme": {"tenant": {"key": "acme", "attributes": {"tier": "gold"}},
               "permissions": ["document:read", "document:write"], "roles": ["editor"]}})
    );
    let (_, body) = s
        .post("/user-permissions", &json!({"user": {"key": "bob"}}))
        .await;
    assert_eq!(
        body["document:d1"],
        json!({"resource": {"key": "d1", "type": "document", "attributes": {}},
               "permissions": ["document:delete", "document:read", "document:write"], "roles": ["owner"]})
    );

    let (status, body) = s
        .post(
            "/authorized_users",
            &json!({"action": "read", "resource": {"type": "document", "key": "d1", "tenant": "acme"}, "context": {}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"resource": "document:d1", "tenant": "acme", "users": {
            "alice": [{"user": "alice", "tenant": "acme", "resource": "__tenant:acme", "role": "editor"}],
            "bob": [{"user": "bob", "tenant": "acme", "resource": "document:d1", "role": "owner"}]
        }})
    );

    let (status, body) = s
        .post("/user-tenants", &json!({"user": {"key": "alice"}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!([{"key": "acme", "attributes": {"tier": "gold"}}, {"key": "default", "attributes": {}}])
    );
}

#[tokio::test]
async fn caller_authentication() {
    let s = server().await;
    let body = q(
        json!("alice"),
        "read",
        json!({"type": "document", "tenant": "acme"}),
    );
    let send = |auth: Option<&'static str>| {
        let mut req = s.client.post(s.url("/allowed")).json(&body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(None).await, 401);
    assert_eq!(send(Some("Bearer wrong-key")).await, 403);
    assert_eq!(send(Some("Basic dGVzdC1rZXk=")).await, 403);
    assert_eq!(
        send(Some("Bearer  test-key")).await,
        403,
        "the token is not trimmed"
    );
    assert_eq!(send(Some("Bearer")).await, 403);
    assert_eq!(send(Some("Bearer test-key")).await, 200);
    assert_eq!(send(Some("bearer test-key")).await, 200);
    assert_eq!(send(Some("BEARER test-key")).await, 200);
    // Health, readiness and metrics need no key.
    for path in ["/health", "/healthy", "/ready", "/metrics", "/livez"] {
        assert_eq!(s.get(path).await.0, 200, "{path}");
    }
    // An operator's sync trigger does.
    let status = s.client.post(s.url("/sync")).send().await.unwrap().status();
    assert_eq!(status, 401);
    let status = s
        .client
        .post(s.url("/sync"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            max_body_bytes: 4096,
            max_bulk_items: 3,
            ..settings()
        },
    )
    .await;
    let raw = |path: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = s.client.post(s.url(path)).bearer_auth(KEY).body(body);
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("error bodies are JSON");
            (status, body)
        }
    };
    let json_ct = Some("application/json");
    // Objects only: serde would read an array as the fields in order.
    for (path, body) in [
        (
            "/allowed",
            r#"["alice", "read", {"type": "document", "tenant": "acme"}]"#,
        ),
        (
            "/allowed",
            r#"{"user": "alice", "action": "read", "resource": ["document", null, "acme"]}"#,
        ),
        (
            "/allowed/bulk",
            r#"[["alice", "read", {"type": "document", "tenant": "acme"}]]"#,
        ),
        (
            "/allowed/all-tenants",
            r#"["alice", "read", {"type": "document"}]"#,
        ),
        ("/user-permissions", r#"["alice"]"#),
        (
            "/authorized_users",
            r#"["read", {"type": "document", "tenant": "acme"}]"#,
        ),
        ("/user-tenants", r#"["alice"]"#),
    ] {
        let (st, reply) = raw(path, json_ct, body.as_bytes().to_vec()).await;
        assert_eq!(st, 422, "{path} {body}: {reply}");
        assert_eq!(reply["error"], "invalid_request", "{reply}");
    }
    let (st, body) = raw("/allowed", json_ct, b"{\"user\": ".to_vec()).await;
    assert_eq!(st, 400);
    assert_eq!(body["error"], "invalid_json");
    let (st, _) = raw("/allowed", json_ct, Vec::new()).await;
    assert_eq!(st, 400);
    // A key with a byte that is not UTF-8 (0xff) inside a string.
    let (st, body) = raw(
        "/allowed",
        json_ct,
        b"{\"user\":\"al\xffice\",\"action\":\"read\",\"resource\":{\"type\":\"document\"}}"
            .to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(body["error"], "invalid_json");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("not UTF-8"), "{body}");
    let (st, _) = raw("/allowed", Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!(st, 415);
    let (st, _) = raw("/allowed", None, b"{}".to_vec()).await;
    assert_eq!(st, 415);
    // A compressed body is refused as such, not as bytes that are not UTF-8.
    for (coding, expect) in [("gzip", 415), ("br", 415), ("identity", 200)] {
        let resp = s
            .client
            .post(s.url("/allowed"))
            .bearer_auth(KEY)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", coding)
            .body(r#"{"user": "alice", "action": "read", "resource": {"type": "document", "tenant": "acme"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expect, "{coding}");
        let body: Value = resp.json().await.unwrap();
        if expect == 415 {
            assert_eq!(body["error"], "unsupported_encoding", "{body}");
            assert!(body["detail"].as_str().unwrap().contains(coding), "{body}");
        }
    }
    let (st, _) = raw(
        "/allowed",
        Some("application/json; charset=utf-8"),
        serde_json::to_vec(&q(
            json!("alice"),
            "read",
            json!({"type": "document", "tenant": "acme"}),
        ))
        .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "a charset parameter is fine");
    let (st, body) = raw(
        "/allowed",
        json_ct,
        br#"{"user": {"key": "alice"}, "resource": {"type": "document"}}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 422);
    assert!(
        body["detail"].as_str().unwrap().contains("action"),
        "names the field: {body}"
    );
    let (st, body) = raw(
        "/allowed",
        json_ct,
        br#"{"user": 5, "action": "read", "resource": {"type": "d"}}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["field"], "user", "{body}");
    // A value of the wrong type is named by its path, in the body and the
    // detail, also inside a bulk body.
    for (path, body, field) in [
        (
            "/allowed",
            r#"{"user": "a", "action": 5, "resource": {"type": "d"}}"#,
            "action",
        ),
        (
            "/allowed",
            r#"{"user": "a", "action": "read", "resource": {"type": "d", "tenant": 7}}"#,
            "resource.tenant",
        ),
        (
            "/allowed",
            r#"{"user": {"key": "a", "attributes": [1]}, "action": "read", "resource": {"type": "d"}}"#,
            "user.attributes",
        ),
        (
            "/allowed/bulk",
            r#"[{"user": "a", "action": "read", "resource": {"type": "d"}}, {"user": {"key": true}, "action": "read", "resource": {"type": "d"}}]"#,
            "[1].user.key",
        ),
        (
            "/user-permissions",
            r#"{"user": "a", "tenants": "acme"}"#,
            "tenants",
        ),
    ] {
        let (st, reply) = raw(path, json_ct, body.as_bytes().to_vec()).await;
        assert_eq!(st, 422, "{path} {body}: {reply}");
        assert_eq!(reply["field"], field, "{path} {body}: {reply}");
        let detail = reply["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("`{field}`")), "{reply}");
    }
    let (st, _) = raw(
        "/allowed",
        json_ct,
        br#"{"user": {"name": "x"}, "action": "read", "resource": {"type": "d"}}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 422, "a user without a key");
    let (st, _) = raw("/allowed/bulk", json_ct, b"{}".to_vec()).await;
    assert_eq!(st, 422, "bulk takes an array");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    let (st, body) = raw("/allowed", json_ct, big.into_bytes()).await;
    assert_eq!(st, 413, "{body}");
    let four = serde_json::to_vec(&vec![q(json!("a"), "read", json!({"type": "d"})); 4]).unwrap();
    let (st, body) = raw("/allowed/bulk", json_ct, four).await;
    assert_eq!(st, 413);
    assert_eq!(body["error"], "too_many_items");

    let (st, body) = s.get("/nope").await;
    assert_eq!((st, body["error"].as_str()), (404, Some("not_found")));
    let resp = s
        .client
        .get(s.url("/allowed"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = s.client.delete(s.url("/ready")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn hostile_bodies_never_break_the_server() {
    let s = server().await;
    let nasty: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00],
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        br#"{"user": {"key": "a", "attributes": []}, "action": "r", "resource": {"type": "d"}}"#.to_vec(),
        br#"{"user": {"key": "a"}, "action": "r", "resource": {"type": "d", "tenant": 7}}"#.to_vec(),
        br#"{"user": {"key": "a"}, "action": "r", "resource": {"type": "d", "context": 7}}"#.to_vec(),
        "\"\u{1F600}\"".as_bytes().to_vec(),
        b"null".to_vec(),
    ];
    for path in [
        "/allowed",
        "/allowed/bulk",
        "/allowed/all-tenants",
        "/user-permissions",
        "/authorized_users",
        "/user-tenants",
    ] {
        for body in &nasty {
            let resp = s
                .client
                .post(s.url(path))
                .bearer_auth(KEY)
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            // Some bodies are fine for endpoints that ignore the odd field;
            // none may fail the server, and none is a valid /allowed query.
            assert!(status < 500, "{path} {body:?} -> {status}");
            if path == "/allowed" {
                assert!((400..500).contains(&status), "{path} {body:?} -> {status}");
            }
        }
    }
    assert!(
        s.allowed(q(
            json!("alice"),
            "read",
            json!({"type": "document", "tenant": "acme"})
        ))
        .await
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            header_read_timeout: Duration::from_millis(300),
            ..settings()
        },
    )
    .await;
    let (took, _) = send_raw(s.addr, b"POST /allowed HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        took < Duration::from_secs(4),
        "the server closed the connection: {took:?}"
    );
}

/// Writes `bytes` on a new connection to `addr` and reads until the server
/// closes it (5 s at most): how long that took, and what came back.
async fn send_raw(addr: std::net::SocketAddr, bytes: &'static [u8]) -> (Duration, String) {
    tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(bytes).unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A body that stops arriving is cut off like a slow head; a declared
/// length over the cap is refused before any of the body is read.
#[tokio::test]
async fn slow_bodies_are_cut_off_and_long_ones_refused_at_once() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            header_read_timeout: Duration::from_millis(300),
            // Raw requests below; a key would be answered before any body.
            api_key: None,
            ..settings()
        },
    )
    .await;
    let (took, answer) = send_raw(
        s.addr,
        b"POST /allowed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    assert!(took < Duration::from_secs(4), "still open after {took:?}");
    assert!(answer.is_empty(), "{answer}");
    let (_, answer) = send_raw(
        s.addr,
        b"POST /allowed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

#[tokio::test]
async fn not_ready_until_a_snapshot_is_loaded() {
    let s = TestServer::start_with(None, settings()).await;
    let (status, body) = s.get("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    let (status, _) = s
        .post(
            "/allowed",
            &q(
                json!("alice"),
                "read",
                json!({"type": "document", "tenant": "acme"}),
            ),
        )
        .await;
    assert_eq!(status, 503, "checks fail closed before the first snapshot");
    s.store
        .install(Staged::from_document(&document(env())), Source::Embedded)
        .unwrap();
    let (status, body) = s.get("/ready").await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok"})),
        "no key, no detail"
    );
    let resp = s
        .client
        .get(s.url("/ready"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["snapshot"]["objects"]["users"], 2);
    assert_eq!(body["snapshot"]["source"]["kind"], "embedded");
    assert!(body["snapshot"]["content_hash"].as_str().unwrap().len() == 64);
}

#[tokio::test]
async fn stale_snapshots_fail_closed_when_asked() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            max_staleness: Some(Duration::from_millis(200)),
            ..settings()
        },
    )
    .await;
    let query = q(
        json!("alice"),
        "read",
        json!({"type": "document", "tenant": "acme"}),
    );
    assert_eq!(s.post("/allowed", &query).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = s.post("/allowed", &query).await;
    assert_eq!(status, 503);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PDP_MAX_STALENESS"),
        "{body}"
    );
    assert_eq!(s.get("/ready").await.0, 503);
    s.store.mark_fresh();
    assert_eq!(s.post("/allowed", &query).await.0, 200);
}

#[tokio::test]
async fn metrics_count_decisions_and_requests() {
    let s = server().await;
    s.allowed(q(
        json!("alice"),
        "read",
        json!({"type": "document", "tenant": "acme"}),
    ))
    .await;
    s.allowed(q(
        json!("alice"),
        "read",
        json!({"type": "document", "tenant": "globex"}),
    ))
    .await;
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "pdp_decisions_total{endpoint=\"allowed\",outcome=\"allow\"} 1",
        "pdp_decisions_total{endpoint=\"allowed\",outcome=\"deny\"} 1",
        "pdp_http_requests_total{route=\"/allowed\",status=\"200\"} 2",
        "pdp_snapshot_objects{kind=\"users\"} 2",
        "pdp_decision_duration_seconds_count{endpoint=\"allowed\"} 2",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_and_http2_is_served() {
    let s = server().await;
    let resp = s
        .client
        .get(s.url("/ready"))
        .header("X-Request-ID", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(s.url("/allowed"))
        .bearer_auth(KEY)
        .json(&q(
            json!("alice"),
            "read",
            json!({"type": "document", "tenant": "acme"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.json::<Value>().await.unwrap()["allow"], true);

    // HEAD: the GET answer's headers and no body, over either protocol (a
    // body on an HTTP/2 HEAD answer resets the stream).
    let get = s.client.get(s.url("/livez")).send().await.unwrap();
    let length = get.headers()["content-length"].clone();
    for client in [&s.client, &h2] {
        for (path, status) in [("/livez", 200), ("/nothing", 404)] {
            let resp = client.head(s.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), status, "{path}");
            if path == "/livez" {
                assert_eq!(resp.headers()["content-length"], length);
            }
            assert!(resp.bytes().await.unwrap().is_empty());
        }
    }
}

/// Two snapshots that answer a pair of checks oppositely: any response
/// mixing them would show a request decided against both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_never_error_or_mix() {
    let doc_for = |role: &str| {
        document(json!({
            "resources": [{"key": "document", "actions": {"read": {}, "write": {}}}],
            "roles": [{"key": "r", "permissions": [format!("document:{role}")]}],
            "tenants": [{"key": "t"}],
            "role_assignments": [{"user": "u", "role": "r", "tenant": "t"}]
        }))
    };
    let (a, b) = (doc_for("read"), doc_for("write"));
    let s = TestServer::start(a.clone()).await;
    let checks = json!([
        q(
            json!("u"),
            "read",
            json!({"type": "document", "tenant": "t"})
        ),
        q(
            json!("u"),
            "write",
            json!({"type": "document", "tenant": "t"})
        ),
    ]);
    let store = s.store.clone();
    let swapper = tokio::spawn(async move {
        for i in 0..200 {
            let doc = if i % 2 == 0 { &b } else { &a };
            store
                .install(Staged::from_document(doc), Source::Embedded)
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let client = s.client.clone();
        let url = s.url("/allowed/bulk");
        let checks = checks.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..60 {
                let resp = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&checks)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let body: Value = resp.json().await.unwrap();
                answers.push((
                    body["allow"][0]["allow"].as_bool().unwrap(),
                    body["allow"][1]["allow"].as_bool().unwrap(),
                ));
            }
            answers
        }));
    }
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    swapper.await.unwrap();
    for pair in &seen {
        assert!(
            *pair == (true, false) || *pair == (false, true),
            "mixed answer {pair:?}"
        );
    }
}

/// The handler answers without a socket, from a request with any body type:
/// the same answers, errors and metrics as over the wire.
#[tokio::test]
async fn the_handler_answers_without_a_socket() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use pdp::http::App;
    use pdp::metrics::Metrics;
    use pdp::store::Store;

    let store = std::sync::Arc::new(Store::new());
    store
        .install(Staged::from_document(&document(env())), Source::Embedded)
        .unwrap();
    let app = App {
        store,
        settings: settings(),
        metrics: std::sync::Arc::new(Metrics::new(prometheus::Registry::new()).unwrap()),
        refresh: Default::default(),
        sync_state: None,
        heavy: Default::default(),
        facts: None,
        decision_log: None,
        hub: None,
    };
    let call = |method: &str, path: &str, key: Option<&str>, body: &str| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    };
    let answer = |resp: http::Response<Full<Bytes>>| async move {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let allowed = q(
        json!("alice"),
        "write",
        json!({"type": "document", "tenant": "acme"}),
    );
    let (status, body) = answer(
        app.handle(call("POST", "/allowed", Some(KEY), &allowed.to_string()))
            .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"allow": true, "result": true}))
    );
    let (status, body) = answer(
        app.handle(call("POST", "/allowed", None, &allowed.to_string()))
            .await,
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("missing_authorization"))
    );
    let (status, body) = answer(app.handle(call("GET", "/allowed", Some(KEY), "")).await).await;
    assert_eq!(
        (status, &body["error"]),
        (405, &json!("method_not_allowed"))
    );
    let (status, body) = answer(
        app.handle(call("POST", "/access/v1/evaluation", Some(KEY), "{}"))
            .await,
    )
    .await;
    assert_eq!((status, &body["field"]), (400, &json!("subject")));
    let (status, _) = answer(app.handle(call("GET", "/livez", None, "")).await).await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(app.metrics.render(&app.store)).unwrap();
    assert!(
        metrics.contains(r#"pdp_http_requests_total{route="/allowed",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pdp_decisions_total{endpoint="allowed",outcome="allow"} 1"#),
        "{metrics}"
    );
}

/// Past `max_connections`, a connection answers the probes alone: a flood
/// of idle clients cannot fail the kubelet's probes, and other requests
/// get a 503 that says why.
#[tokio::test]
async fn at_the_connection_cap_the_probes_still_get_through() {
    let s = TestServer::start_with(
        Some(document(env())),
        HttpSettings {
            max_connections: 2,
            ..settings()
        },
    )
    .await;
    // Two connections that hold their places and send nothing.
    let _idle: Vec<_> = [0, 1]
        .iter()
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    for path in ["/livez", "/ready", "/health"] {
        let resp = fresh().get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    let resp = fresh()
        .post(s.url("/allowed"))
        .bearer_auth(KEY)
        .json(&q(
            json!("alice"),
            "read",
            json!({"type": "document", "tenant": "acme"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections", "{body}");
    // Their places come back when they close.
    drop(_idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = fresh()
        .post(s.url("/allowed"))
        .bearer_auth(KEY)
        .json(&q(
            json!("alice"),
            "read",
            json!({"type": "document", "tenant": "acme"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// A JSON object of `n` string attributes of 90 bytes: about `n` × 100
/// bytes of request, as the review's amplified requests carried.
fn padding(n: usize) -> Value {
    (0..n)
        .map(|i| (format!("k{i}"), json!("x".repeat(90))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The security review's amplified requests, on the generated environment:
/// `/user-permissions` with ABAC over every tenant and ~900 KB of user
/// attributes, and an AuthZEN batch of 10,000 items sharing ~300 KB of
/// subject properties. With one worker thread, both are answered, and
/// `/livez`, asked again and again while they run, answers at once (they
/// run off the worker: `HeavyWork`).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn amplified_requests_leave_the_probes_answered() {
    use pdp_devkit::gen::{generate, GenSpec};

    let doc = generate(&GenSpec::small());
    let tenants: Vec<&str> = doc.tenants.iter().map(|t| t.key.as_str()).collect();
    let s = TestServer::start(doc.clone()).await;
    let user_permissions = json!({
        "user": {"key": "user-1", "attributes": padding(9_000)},
        "tenants": tenants,
        "context": {"enable_abac_user_permissions": true},
    });
    let items: Vec<Value> = (0..10_000)
        .map(|i| json!({"action": {"name": "read"}, "resource": {"type": "document", "id": format!("doc-{i}")}}))
        .collect();
    let evaluations = json!({
        "subject": {"type": "user", "id": "user-1", "properties": padding(3_000)},
        "evaluations": items,
    });
    let bodies = [
        ("/user-permissions", user_permissions),
        ("/access/v1/evaluations", evaluations),
    ];
    let heavy: Vec<_> = bodies
        .into_iter()
        .map(|(path, body)| {
            let body = body.to_string();
            assert!(body.len() < 1 << 20, "{path}: {} bytes", body.len());
            let req = s
                .client
                .post(s.url(path))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body);
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.bytes().await.unwrap().len())
            })
        })
        .collect();
    let mut probes = Vec::new();
    while heavy.iter().any(|h| !h.is_finished()) {
        let started = std::time::Instant::now();
        let resp = s.client.get(s.url("/livez")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        probes.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for h in heavy {
        let (status, len) = h.await.unwrap();
        assert_eq!(status, 200, "an amplified request is answered");
        assert!(len > 100, "with a real answer ({len} bytes)");
    }
    // Not a speed target (those are in benches/): the probes answered
    // between the heavy work, not after it. Run in place, the first probe
    // waits for both requests (over 300 ms in a debug build) and it is the
    // only one.
    let slowest = probes.iter().max().copied().unwrap_or_default();
    assert!(
        probes.len() >= 3 && slowest < Duration::from_millis(100),
        "{} probes while the heavy requests ran, the slowest {slowest:?}",
        probes.len()
    );
}

/// `GET /local/role_assignments` with the key; status and body.
async fn local(s: &TestServer, query: &str) -> (u16, Value) {
    let resp = s
        .client
        .get(s.url(&format!("/local/role_assignments{query}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn local_role_assignments_are_listed_filtered_and_paged() {
    let s = server().await;
    let alice_acme = json!({"user": "alice", "role": "editor", "tenant": "acme"});
    let alice_default = json!({"user": "alice", "role": "viewer", "tenant": "default"});
    let bob_globex = json!({"user": "bob", "role": "billing", "tenant": "globex"});
    // The instance's tenant is not known (no instance listed): `default`.
    let bob_d1 = json!({"user": "bob", "role": "owner", "tenant": "default", "resource_instance": "document:d1"});
    // By user, then tenant roles in the snapshot's order, then instances.
    let all = json!([alice_default, alice_acme, bob_globex, bob_d1]);
    assert_eq!(local(&s, "").await, (200, all.clone()));
    assert_eq!(
        s.get("/local/role_assignments").await.0,
        401,
        "the key is needed"
    );
    for (query, want) in [
        ("?user=alice", json!([alice_default, alice_acme])),
        ("?user=nobody", json!([])),
        ("?role=owner", json!([bob_d1])),
        ("?tenant=acme", json!([alice_acme])),
        ("?resource=document", json!([bob_d1])),
        ("?resource_instance=document:d1", json!([bob_d1])),
        ("?resource_instance=d1&user=bob", json!([bob_d1])),
        ("?user=bob&tenant=globex", json!([bob_globex])),
        (
            "?per_page=3",
            json!([alice_default, alice_acme, bob_globex]),
        ),
        ("?per_page=3&page=2", json!([bob_d1])),
        ("?per_page=3&page=3", json!([])),
        ("?unknown=1", all.clone()),
    ] {
        assert_eq!(local(&s, query).await, (200, want), "{query}");
    }
    // Out of range or malformed: a 422 naming the parameter.
    for (query, param) in [
        ("?per_page=0", "per_page"),
        ("?per_page=101", "per_page"),
        ("?page=0", "page"),
        ("?page=x", "page"),
        ("?limit=101", "limit"),
        ("?page=1&limit=2", "page"),
        ("?cursor=nonsense", "cursor"),
        ("?user=a&user=b", "user"),
    ] {
        let (status, body) = local(&s, query).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["field"], param, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request", "{query}: {body}");
    }
    let long = format!("?cursor={}", "a".repeat(1025));
    assert_eq!(local(&s, &long).await.0, 422);

    // The cursor form reads the same list, two at a time.
    let mut read = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let (status, body) = local(&s, &query).await;
        assert_eq!(status, 200, "{body}");
        read.extend(body["data"].as_array().unwrap().iter().cloned());
        let cursor = &body["pagination"]["cursor"];
        if body["pagination"]["hasMore"] == false {
            assert!(cursor.is_null(), "{body}");
            break;
        }
        let cursor = cursor.as_str().unwrap();
        assert!(cursor.len() <= 1024);
        query = format!("?limit=2&cursor={cursor}");
    }
    assert_eq!(Value::Array(read), all);

    // A cursor from a replaced snapshot has expired; a reload of the same
    // document keeps it.
    let (_, body) = local(&s, "?limit=1").await;
    let cursor = body["pagination"]["cursor"].as_str().unwrap().to_owned();
    s.store
        .install(Staged::from_document(&document(env())), Source::Embedded)
        .unwrap();
    assert_eq!(local(&s, &format!("?limit=1&cursor={cursor}")).await.0, 200);
    let mut changed = env();
    changed["users"] = json!([{"key": "carol"}]);
    s.store
        .install(Staged::from_document(&document(changed)), Source::Embedded)
        .unwrap();
    let (status, body) = local(&s, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "expired_cursor", "{body}");
}
