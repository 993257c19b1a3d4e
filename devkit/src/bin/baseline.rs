//! The ceiling for the load test: a bare hyper server that does the least a
//! PDP could do for `POST /allowed` — read the whole body, answer a fixed
//! `{"allow":true}` — on the same runtime and connection settings as the PDP.
//! Every path answers the same, so `/ready` is 200 too.
//!
//! ```text
//! cargo run --release -p pdp-devkit --bin baseline -- 7001     # or BASELINE_PORT / PDP_PORT
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const ANSWER: &[u8] = br#"{"allow":true}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Reading the body is part of the work a PDP cannot skip.
    let _ = req.into_body().collect().await;
    let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

fn port() -> Result<u16, String> {
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BASELINE_PORT").ok())
        .or_else(|| std::env::var("PDP_PORT").ok())
        .unwrap_or_else(|| "7001".into());
    raw.parse().map_err(|e| format!("bad port {raw:?}: {e}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let port = match port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("baseline: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baseline: bind {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("baseline: listening on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors and the like: keep serving the others.
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
