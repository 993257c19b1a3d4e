//! The `pdp` binary: configuration, logging, bind, run, exit code.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use pdp::config::{Config, LogFormat};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

/// sysexits: EX_USAGE for configuration errors, EX_DATAERR for bad data,
/// EX_UNAVAILABLE when the port or the stop signals cannot be had.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_UNAVAILABLE: u8 = 69;
const EX_IOERR: u8 = 74;

const USAGE: &str = "usage: pdp                 serve (settings: PDP_* variables, README)
       pdp export --out FILE [--environment NAME]
                           write a bundle for followers (docs/fleet.md) from
                           PDP_DATA_FILE, or else from one read of the
                           control plane; PDP_API_KEY authenticates it";

/// What the command line asks for.
enum Command {
    Serve,
    Export {
        out: std::path::PathBuf,
        environment: Option<String>,
    },
    Help,
}

impl Command {
    fn parse(args: &[String]) -> Result<Command, String> {
        let Some(first) = args.first() else {
            return Ok(Command::Serve);
        };
        match first.as_str() {
            "-h" | "--help" | "help" => Ok(Command::Help),
            "export" => {
                let (mut out, mut environment) = (None, None);
                let mut rest = args[1..].iter();
                while let Some(flag) = rest.next() {
                    let mut value = || {
                        rest.next()
                            .cloned()
                            .ok_or_else(|| format!("{flag} needs a value"))
                    };
                    match flag.as_str() {
                        "--out" | "-o" => out = Some(value()?.into()),
                        "--environment" => environment = Some(value()?),
                        other => return Err(format!("export: unknown argument {other:?}")),
                    }
                }
                let out = out.ok_or("export: --out FILE is required")?;
                Ok(Command::Export { out, environment })
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

/// mimalloc returns freed pages to the OS: a snapshot swap frees a whole
/// environment at once, and glibc's allocator would keep it resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match Command::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pdp: {e}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let file = Config::default_file(&env);
    let config = match Config::load(file.as_deref(), &env) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("pdp: configuration error: {e}");
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    init_tracing(&config);
    let (out, environment) = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Export { out, environment } => (out, environment),
        Command::Serve => return serve(config),
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let bundle = match runtime.block_on(pdp::export(&config, environment.as_deref())) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "export failed");
            return ExitCode::from(match e {
                pdp::ExportError::NoKey => EX_USAGE,
                pdp::ExportError::Load(_) => EX_DATAERR,
                pdp::ExportError::Seal(_) => EX_IOERR,
                _ => EX_UNAVAILABLE,
            });
        }
    };
    match write_atomically(&out, &bundle) {
        Ok(()) => {
            info!(file = %out.display(), bytes = bundle.len(), "bundle written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(file = %out.display(), error = %e, "cannot write the bundle");
            ExitCode::from(EX_IOERR)
        }
    }
}

/// Writes `bytes` beside `path` and renames it over `path`, so a server
/// that serves the file never serves half of it. The file holds users and
/// their attributes: it is readable by its owner only (0600) until the
/// operator gives the server that serves it access.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "--out names no file")
    })?;
    pdp::sync::replace_private(dir, name, |f| f.write_all(bytes))
}

fn serve(mut config: Config) -> ExitCode {
    if config.api_key.is_none() && !config.host.is_loopback() {
        warn!(
            requested = %config.host,
            "no PDP_API_KEY: callers are not authenticated, so listening on 127.0.0.1 only"
        );
        config.host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Every idle keep-alive client holds a descriptor; the shell's soft
    // limit (often 1,024) is no limit for a server.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    runtime.block_on(async move {
        // SIGHUP's default action ends the process; from here on it asks for
        // a reload or a sync instead (`pdp::run`), also while the first
        // snapshot is still loading: one that comes then is acted on after.
        let hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot handle SIGHUP; refresh only through POST /sync");
                None
            }
        };
        // Registered now, not when the server first polls for shutdown: a
        // SIGTERM that comes once the PDP answers must drain it, not kill it.
        let stops = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(interrupt)) => [term, interrupt],
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot handle SIGTERM and SIGINT");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        let addr = SocketAddr::new(config.host, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                error!(%addr, error = %e, "cannot listen");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        info!(
            address = %local,
            mode = ?config.mode(),
            "pdp listening; try: curl -s -H 'Content-Type: application/json' -d '{{\"user\":\"alice\",\"action\":\"read\",\"resource\":{{\"type\":\"document\",\"tenant\":\"acme\"}}}}' http://{local}/allowed"
        );
        match pdp::run(config, listener, shutdown_signal(stops), hangups).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ pdp::RunError::Key(_)) => {
                error!(error = %e, "cannot sync with this API key");
                ExitCode::from(EX_USAGE)
            }
            Err(e) => {
                error!(error = %e, "pdp stopped");
                ExitCode::from(EX_DATAERR)
            }
        }
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            error!(error = %e, "cannot start the runtime");
            ExitCode::FAILURE
        })
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on the first of SIGTERM and SIGINT.
async fn shutdown_signal([mut term, mut interrupt]: [Signal; 2]) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => info!("SIGINT: shutting down"),
    }
}
