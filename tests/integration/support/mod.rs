//! Test helpers: the real HTTP server on 127.0.0.1:0, fed a data document;
//! `engine` calls the decision functions directly, JSON in and out. The
//! fake control plane to sync from is `pdp_devkit::fake_control_plane`.

pub mod engine;

use std::path::Path;
use std::sync::Arc;

use pdp::http::{App, HttpSettings};
use pdp::metrics::Metrics;
use pdp::model::DataDocument;
use pdp::snapshot::Staged;
use pdp::store::{Source, Store};
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

pub const KEY: &str = "test-key";

pub struct TestServer {
    pub base_url: String,
    pub addr: std::net::SocketAddr,
    pub store: Arc<Store>,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn document(json: Value) -> DataDocument {
    serde_json::from_value(json).expect("a valid data document")
}

pub fn read_fixture(path: impl AsRef<Path>) -> DataDocument {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    pdp::read_document(&path).expect("a readable fixture")
}

pub fn settings() -> HttpSettings {
    HttpSettings {
        api_key: Some(pdp::config::ApiKey::new(KEY)),
        ..HttpSettings::default()
    }
}

impl TestServer {
    /// The server with `doc` loaded and the bearer key [`KEY`].
    pub async fn start(doc: DataDocument) -> TestServer {
        Self::start_with(Some(doc), settings()).await
    }

    /// The server on a data file under the project root.
    pub async fn start_fixture(path: &str) -> TestServer {
        Self::start(read_fixture(path)).await
    }

    pub async fn start_with(doc: Option<DataDocument>, settings: HttpSettings) -> TestServer {
        let store = Arc::new(Store::new());
        if let Some(doc) = doc {
            store
                .install(Staged::from_document(&doc), Source::Embedded)
                .expect("the document builds");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App {
            store: store.clone(),
            settings,
            metrics: Arc::new(Metrics::new(prometheus::Registry::new()).unwrap()),
            refresh: Arc::new(Notify::new()),
            sync_state: None,
            heavy: Default::default(),
            facts: None,
            decision_log: None,
            hub: None,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(pdp::http::serve(app, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            base_url: format!("http://{addr}"),
            addr,
            store,
            client: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// POSTs JSON with the bearer key; returns status and parsed body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("the request is answered");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// `/allowed` answer for a query.
    pub async fn allowed(&self, query: Value) -> bool {
        let (status, body) = self.post("/allowed", &query).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["allow"], body["result"]);
        body["allow"].as_bool().expect("allow is a boolean")
    }

    /// Stops accepting, drains and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
