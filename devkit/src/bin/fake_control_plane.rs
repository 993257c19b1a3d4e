//! The fake control plane as a process, for harnesses outside Rust (the SDK
//! run in `tests/sdk/run.sh`): serves a data document through the v2 list
//! endpoints and takes the facts writes, on 127.0.0.1.
//!
//! ```text
//! fake_control_plane <data-document.json> [--port N] [--shape bare|paged|cursor]
//!                    [--ingress accept|stall|STATUS]
//! ```
//!
//! `--ingress` sets how the decision-log ingress answers: take every chunk
//! (the default), never answer, or answer with that status. The process
//! counts the events it receives and keeps none of them.
//!
//! Prints `listening http://127.0.0.1:PORT` once it accepts (port 0, the
//! default, is any free one), then serves until SIGTERM or SIGINT, or until
//! its stdin reaches end of file when stdin is a pipe or socket (a parent
//! holding the write end can stop it by going away; a shell's `&` gives
//! `/dev/null`, which is never waited on). The keys it knows are
//! `pdp_devkit::fake_control_plane::{ENV_KEY, PROJECT_KEY, ORG_KEY}`; writes
//! take `ENV_KEY`.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;

use pdp::model::DataDocument;
use pdp_devkit::fake_control_plane::{FakeControlPlane, Ingress, Shape};
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fake_control_plane <data-document.json> [--port N] [--shape bare|paged|cursor] [--ingress accept|stall|STATUS]"
    );
    ExitCode::from(64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        return usage();
    };
    let (mut port, mut shape, mut ingress) = (0u16, Shape::Paged, Ingress::Accept);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => return usage(),
            },
            ("--ingress", Some(i)) => {
                ingress = match i.as_str() {
                    "accept" => Ingress::Accept,
                    "stall" => Ingress::Stall,
                    status => match status.parse() {
                        Ok(s @ 100..=599) => Ingress::Refuse(s),
                        _ => return usage(),
                    },
                }
            }
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
    let cp = match FakeControlPlane::try_start_on(port, &doc, shape).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("fake_control_plane: 127.0.0.1:{port}: {e}");
            return ExitCode::from(69);
        }
    };
    cp.set_ingress(ingress);
    cp.keep_ingress_events(false);
    // The listener is bound and listening: connections queue from now on.
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
        _ = stdin_closed() => {}
    }
    drop(cp);
    ExitCode::SUCCESS
}

/// Resolves when stdin, if a pipe or a socket, reaches end of file (or
/// fails). A terminal, a file or `/dev/null` never resolves it: those say
/// nothing about the parent.
async fn stdin_closed() {
    let piped = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_socket());
    if !piped {
        return std::future::pending().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Blocking reads on a thread of their own; tokio's stdin needs a
    // feature this crate does not otherwise use.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}
