//! Every request decoder (the Permit API and AuthZEN), through the real
//! handler on the embedded example: the first byte picks a deciding route,
//! the rest is the body; or, past them, `GET /local/role_assignments` with
//! the rest as its query string. A crash is a panic, a 5xx, or an answer
//! that is not JSON, or a 4xx whose body names no problem.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pdp::http::{App, HeavyWork, HttpSettings, Route};
use pdp::metrics::Metrics;
use pdp::snapshot::Staged;
use pdp::store::{Source, Store};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let store = Arc::new(Store::new());
    let staged = Staged::from_json_str(pdp::EMBEDDED_DATA).expect("the example parses");
    store
        .install(staged, Source::Embedded)
        .expect("the example builds");
    let app = App {
        store,
        settings: HttpSettings {
            debug: true,
            ..HttpSettings::default()
        },
        metrics: Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics")),
        refresh: Default::default(),
        sync_state: None,
        heavy: HeavyWork::new(1),
    };
    let routes: Vec<&'static str> = Route::ALL
        .iter()
        .filter(|r| r.spec().decisions.is_some())
        .map(|r| r.spec().path)
        .collect();
    // A panic aborts the process (the crash AFL records): nothing is
    // observed after one.
    let (app, runtime) = (AssertUnwindSafe(app), AssertUnwindSafe(runtime));
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, body)) = data.split_first() else {
            return;
        };
        let pick = usize::from(pick) % (routes.len() + 1);
        let (path, req) = match routes.get(pick) {
            Some(&path) => (
                path,
                http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::copy_from_slice(body)))
                    .expect("a request"),
            ),
            None => {
                let path = "/local/role_assignments";
                let Ok(query) = std::str::from_utf8(body) else {
                    return;
                };
                // Only what can be a URI reaches the server.
                let Ok(req) = http::Request::get(format!("{path}?{query}")).body(Full::default())
                else {
                    return;
                };
                (path, req)
            }
        };
        let resp = runtime.block_on(app.handle(req));
        let status = resp.status();
        assert!(
            status.is_success() || status.is_client_error(),
            "{path}: {status}"
        );
        let bytes = runtime
            .block_on(resp.into_body().collect())
            .expect("a body")
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON answer");
        if status.is_client_error() {
            assert!(
                answer["error"].is_string() && answer["detail"].is_string(),
                "{path}: {status} {answer}"
            );
        }
    });
}
