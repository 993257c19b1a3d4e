//! Decision logs end to end: `pdp::run` syncing from the fake control
//! plane, whose ingress records every chunk it is sent, or writing a
//! rotated file.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pdp_devkit::fake_control_plane::{FakeControlPlane, Ingress, IngressChunk, Shape, ENV_KEY};
use reqwest::Method;
use serde_json::{json, Value};

use crate::facts::{doc_in, environment, eventually, Pdp};

/// Ship quickly, so that a test waits a fraction of a second.
const FAST: [(&str, &str); 2] = [
    ("PDP_DECISION_LOGS_MIN_DELAY", "50ms"),
    ("PDP_DECISION_LOGS_MAX_DELAY", "100ms"),
];

fn settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    FAST.iter().chain(extra).copied().collect()
}

/// Every event the ingress took, by decision id.
fn events(chunks: &[IngressChunk]) -> Vec<Value> {
    chunks
        .iter()
        .filter(|c| c.status == 204)
        .flat_map(|c| c.events.clone().unwrap_or_default())
        .collect()
}

async fn shipped(cp: &FakeControlPlane, n: usize) -> bool {
    eventually(Duration::from_secs(15), || async {
        events(&cp.ingress_chunks()).len() >= n
    })
    .await
}

/// A decision through the PDP: its id (the response header) and answer.
async fn decide(pdp: &Pdp, path: &str, body: Value) -> (String, Value) {
    let (status, headers, answer) = pdp.send(Method::POST, path, Some(body), &[]).await;
    assert_eq!(status, 200, "{path}: {answer}");
    let id = headers
        .get("x-decision-id")
        .expect("a decision id in the response")
        .to_str()
        .unwrap()
        .to_owned();
    (id, answer)
}

#[tokio::test]
async fn every_decision_reaches_the_ingress_once_with_its_fields_and_masks() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(
        &cp,
        &settings(&[(
            "PDP_DECISION_LOGS_MASK",
            "/user/attributes/ssn, /subject/id",
        )]),
    )
    .await;
    let mut sent: HashMap<String, (&str, Value, Value)> = HashMap::new();
    for i in 0..20 {
        let q = json!({"user": {"key": "alice", "attributes": {"ssn": format!("123-45-{i:04}")}},
                       "action": "read", "resource": doc_in("default")});
        let (id, answer) = decide(&pdp, "/allowed", q.clone()).await;
        sent.insert(id, ("permit/root", q, answer));
    }
    let bulk = json!([{"user": "alice", "action": "read", "resource": doc_in("default")},
                      {"user": "bob", "action": "read", "resource": doc_in("default")}]);
    let (id, answer) = decide(&pdp, "/allowed/bulk", bulk.clone()).await;
    sent.insert(id, ("permit/bulk", bulk, answer));
    let perms = json!({"user": {"key": "alice"}, "tenants": ["default"]});
    let (id, answer) = decide(&pdp, "/user-permissions", perms.clone()).await;
    sent.insert(id, ("permit/user_permissions", perms, answer));
    let eval = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                      "resource": {"type": "document", "id": "d1"}});
    let (id, answer) = decide(&pdp, "/access/v1/evaluation", eval.clone()).await;
    sent.insert(id, ("authzen/evaluation", eval, answer));
    // Bulk checks of distinct keys, each event tens of KB: several chunks.
    for b in 0..8 {
        let checks: Vec<Value> = (0..400)
            .map(|i| {
                json!({"user": format!("user-{b}-{i}-{:x}", (b * 7919 + i * 104_729) % 1_000_003),
                       "action": "read", "resource": doc_in("default")})
            })
            .collect();
        let (id, answer) = decide(&pdp, "/allowed/bulk", Value::Array(checks.clone())).await;
        sent.insert(id, ("permit/bulk", Value::Array(checks), answer));
    }
    assert!(shipped(&cp, sent.len()).await, "every decision is shipped");
    // The authenticated health detail says so too (once the answers to
    // the uploads are in).
    let health = || async { pdp.send(Method::GET, "/health", None, &[]).await.2 };
    assert!(
        eventually(Duration::from_secs(5), || async {
            health().await["decision_logs"]["shipped"] == sent.len()
        })
        .await,
        "{}",
        health().await
    );
    let health = health().await;
    let log = &health["decision_logs"];
    assert_eq!(log["held_events"], 0, "{health}");
    assert_eq!(log["dropped"]["buffer_full"], 0, "{health}");
    // The last flush at shutdown sends nothing twice.
    pdp.stop().await;

    let chunks = cp.ingress_chunks();
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    let mut instances = HashSet::new();
    let mut seen = HashSet::new();
    for c in &chunks {
        assert!(c.gzipped_bytes <= 65_536, "{} bytes", c.gzipped_bytes);
        let header = |name: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("content-encoding"), Some("gzip"));
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("authorization"), Some(&*format!("Bearer {ENV_KEY}")));
        let events = c.events.as_ref().expect("a gzipped JSON array");
        let text = serde_json::to_string(events).unwrap();
        assert!(!text.contains(ENV_KEY), "credentials never appear");
        assert!(!text.contains("123-45-"), "masked values never appear");
        for e in events {
            let id = e["decision_id"].as_str().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "{id} shipped twice");
            let (path, input, answer) = sent.get(&id).expect("a decision that was made");
            assert_eq!(e["path"], *path);
            assert_eq!(e["result"], *answer, "{id}");
            if *path == "permit/root" {
                assert_eq!(e["input"]["user"]["attributes"]["ssn"], "****");
                assert_eq!(e["masked"], json!(["/input/user/attributes/ssn"]));
                assert_eq!(e["input"]["resource"], input["resource"]);
            } else if *path == "authzen/evaluation" {
                assert_eq!(e["input"]["subject"]["id"], "****");
                assert_eq!(e["input"]["action"], input["action"]);
            } else {
                assert_eq!(e["input"], *input, "the request as received");
            }
            assert_eq!(e["labels"]["version"], env!("CARGO_PKG_VERSION"));
            instances.insert(e["labels"]["id"].as_str().unwrap().to_owned());
            let at = e["timestamp"].as_str().unwrap();
            assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
            assert!(e["metrics"]["timer_server_handler_ns"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(seen.len(), sent.len(), "every decision exactly once");
    assert_eq!(instances.len(), 1, "one instance id");
}

#[tokio::test]
async fn uploads_are_in_the_call_log_with_the_ingress_request_ids() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &settings(&[])).await;
    decide(
        &pdp,
        "/allowed",
        json!({"user": "alice", "action": "read", "resource": doc_in("default")}),
    )
    .await;
    assert!(shipped(&cp, 1).await);
    let (_, _, log) = pdp.send(Method::GET, "/control-plane/log", None, &[]).await;
    let upload = log["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["by"] == "decision_logs")
        .cloned()
        .expect("the upload is logged");
    assert_eq!(upload["path"], "/v1/decision_logs/ingress");
    assert_eq!(upload["status"], "204");
    assert_eq!(upload["request_id"], "fake-ingress-1");

    // A refusal is the last failed call, named by its request id.
    cp.set_ingress(Ingress::Refuse(503));
    decide(
        &pdp,
        "/allowed",
        json!({"user": "alice", "action": "read", "resource": doc_in("default")}),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, _, health) = pdp.send(Method::GET, "/health", None, &[]).await;
            health["sync"]["last_failed_call"]["by"] == "decision_logs"
        })
        .await
    );
    let (_, _, health) = pdp.send(Method::GET, "/health", None, &[]).await;
    let failed = &health["sync"]["last_failed_call"];
    assert_eq!(failed["status"], "503");
    assert_eq!(failed["request_id"], "fake-ingress-2");
    pdp.stop().await;
}

/// A stalled ingress holds one chunk; the queue fills to its bound and
/// drops the rest at the door, counted, while every decision is answered;
/// once the ingress answers, what was held is shipped.
#[tokio::test]
async fn a_stalled_ingress_counts_drops_and_every_decision_is_answered() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    cp.set_ingress(Ingress::Stall);
    let pdp = Pdp::start(
        &cp,
        &settings(&[
            ("PDP_DECISION_LOGS_BUFFER_EVENTS", "50"),
            ("PDP_SYNC_REQUEST_TIMEOUT", "1s"),
        ]),
    )
    .await;
    let q = json!({"user": "alice", "action": "read", "resource": doc_in("default")});
    decide(&pdp, "/allowed", q.clone()).await;
    // The first chunk is posted and stalls.
    assert!(
        eventually(Duration::from_secs(10), || async {
            !cp.ingress_chunks().is_empty()
        })
        .await
    );
    for _ in 0..300 {
        decide(&pdp, "/allowed", q.clone()).await;
    }
    let dropped = pdp
        .metric("pdp_decision_log_dropped_total{reason=\"buffer_full\"}")
        .await;
    assert!(dropped >= 250.0, "{dropped} dropped");
    let held = pdp.metric("pdp_decision_log_queue_events").await;
    assert!(held <= 50.0, "{held} held");
    assert!(pdp.metric("pdp_decision_log_events_total").await >= 301.0);

    cp.set_ingress(Ingress::Accept);
    assert!(
        eventually(Duration::from_secs(20), || async {
            pdp.metric("pdp_decision_log_shipped_total").await >= 50.0
        })
        .await,
        "what was held is shipped once the ingress answers"
    );
    assert!(pdp.metric("pdp_decision_log_upload_failures_total").await >= 1.0);
    pdp.stop().await;
}

#[tokio::test]
async fn a_chunk_the_ingress_refuses_as_malformed_is_dropped_and_counted() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    cp.set_ingress(Ingress::Refuse(400));
    let pdp = Pdp::start(&cp, &settings(&[])).await;
    let q = json!({"user": "alice", "action": "read", "resource": doc_in("default")});
    decide(&pdp, "/allowed", q.clone()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pdp.metric("pdp_decision_log_dropped_total{reason=\"rejected\"}")
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(
        pdp.metric("pdp_decision_log_uploads_total{status=\"400\"}")
            .await,
        1.0
    );
    pdp.stop().await;
}

#[tokio::test]
async fn connectivity_off_stops_uploads_and_on_resumes_them() {
    let cp = FakeControlPlane::start(&environment(), Shape::Paged).await;
    let pdp = Pdp::start(&cp, &settings(&[])).await;
    let (s, _) = pdp.switch(false).await;
    assert_eq!(s, 200);
    let q = json!({"user": "alice", "action": "read", "resource": doc_in("default")});
    for _ in 0..5 {
        decide(&pdp, "/allowed", q.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        cp.ingress_chunks().is_empty(),
        "no upload while switched off"
    );
    let (s, _) = pdp.switch(true).await;
    assert_eq!(s, 200);
    assert!(
        shipped(&cp, 5).await,
        "the held decisions go once switched on"
    );
    pdp.stop().await;
}

#[tokio::test]
async fn decisions_go_to_a_rotated_file_and_the_last_ones_are_written_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logs/decisions.jsonl");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-data.json");
    let env: HashMap<String, String> = [
        ("PDP_DATA_FILE", data),
        ("PDP_LOG_LEVEL", "warn"),
        ("PDP_DECISION_LOGS", "file"),
        ("PDP_DECISION_LOGS_FILE", file.to_str().unwrap()),
        ("PDP_DECISION_LOGS_FILE_MAX_BYTES", "4000"),
        ("PDP_DECISION_LOGS_FILE_KEEP", "2"),
        // Longer than the test: only the flush at stop writes.
        ("PDP_DECISION_LOGS_MIN_DELAY", "1h"),
        ("PDP_DECISION_LOGS_MAX_DELAY", "1h"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = pdp::config::Config::load(None, &env).expect("valid configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pdp::run(
        config,
        listener,
        async {
            let _ = stopped.await;
        },
        None,
    ));
    let mut ids = Vec::new();
    for i in 0..40 {
        let resp = reqwest::Client::new()
            .post(format!("{url}/allowed"))
            .json(&json!({"user": format!("u{i}"), "action": "read", "resource": {"type": "document"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        ids.push(resp.headers()["x-decision-id"].to_str().unwrap().to_owned());
    }
    let _ = stop.send(());
    server.await.unwrap().expect("a clean stop");

    let read = |path: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
            .collect()
    };
    let current = read(&file);
    let rotated: Vec<Value> = (1..=2)
        .flat_map(|n| read(&file.with_extension(format!("jsonl.{n}"))))
        .collect();
    assert!(!rotated.is_empty(), "the file was rotated");
    assert!(!file.with_extension("jsonl.3").exists(), "two kept");
    let last = current.last().or(rotated.first()).expect("events written");
    assert_eq!(
        last["decision_id"],
        *ids.last().unwrap(),
        "the newest is last"
    );
    for e in current.iter().chain(&rotated) {
        assert_eq!(e["path"], "permit/root");
        assert!(ids.contains(&e["decision_id"].as_str().unwrap().to_owned()));
    }
}

#[test]
fn decision_log_settings_are_checked() {
    let load = |pairs: &[(&str, &str)]| {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pdp::config::Config::load(None, &env)
    };
    let c = load(&[("PDP_API_KEY", "k")]).unwrap();
    assert_eq!(
        c.decision_logs,
        Some(pdp::decisions::Destination::ControlPlane),
        "on when syncing"
    );
    assert_eq!(
        load(&[]).unwrap().decision_logs,
        None,
        "off on the embedded example"
    );
    for bad in [
        &[("PDP_DECISION_LOGS", "control-plane")][..],
        &[("PDP_DECISION_LOGS", "file")],
        &[("PDP_DECISION_LOGS", "kafka")],
        &[("PDP_DECISION_LOGS_MASK", "user/ssn")],
        &[
            ("PDP_DECISION_LOGS_MIN_DELAY", "5s"),
            ("PDP_DECISION_LOGS_MAX_DELAY", "1s"),
        ],
        &[("PDP_DECISION_LOGS_BUFFER_EVENTS", "0")],
    ] {
        let errors = load(bad).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("DECISION_LOGS")),
            "{bad:?}: {errors:?}"
        );
    }
}
