//! The fake control plane as a process, for harnesses outside Rust (the SDK
//! run in `tests/sdk/run.sh`): serves a data document through the v2 list
//! endpoints and takes the facts writes, on 127.0.0.1.
//!
//! ```text
//! fake_control_plane <data-document.json> [--port N] [--shape bare|paged|cursor]
//! ```
//!
//! Prints `listening http://127.0.0.1:PORT` once it accepts, then serves
//! until SIGTERM or SIGINT. The keys it
//! knows are `pdp_devkit::fake_control_plane::{ENV_KEY, PROJECT_KEY,
//! ORG_KEY}`.

use std::io::Write;
use std::process::ExitCode;

use pdp::model::DataDocument;
use pdp_devkit::fake_control_plane::{FakeControlPlane, Shape};
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fake_control_plane <data-document.json> [--port N] [--shape bare|paged|cursor]"
    );
    ExitCode::from(64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        return usage();
    };
    let (mut port, mut shape) = (0u16, Shape::Paged);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => return usage(),
            },
            ("--shape", Some(s)) => {
                shape = match s.as_str() {
                    "bare" => Shape::Bare,
                    "paged" => Shape::Paged,
                    "cursor" => Shape::Cursor,
                    _ => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let doc: DataDocument = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("fake_control_plane: {path}: {e}");
            return ExitCode::from(65);
        }
    };
    let cp = FakeControlPlane::start_on(port, &doc, shape).await;
    println!("listening {}", cp.url());
    let _ = std::io::stdout().flush();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake_control_plane: cannot handle signals");
        return ExitCode::from(69);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}
