//! The `pdp` binary as an operator runs it: configuration errors, the
//! embedded default, and SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pdp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pdp"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    cmd
}

/// Polls `url` until it answers 200, for at most `limit`.
pub async fn wait_ready(url: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().as_u16() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn bad_configuration_exits_64_naming_every_problem() {
    let out = pdp()
        .env("PDP_PORT", "seventy")
        .env("PDP_DEBUG", "maybe")
        .env("PDP_MAX_STALENESS", "-3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["PDP_PORT", "PDP_DEBUG", "PDP_MAX_STALENESS"] {
        assert!(stderr.contains(key), "{key} not reported in:\n{stderr}");
    }
}

#[test]
fn an_api_key_set_but_empty_exits_64_naming_it() {
    let out = pdp().env("PDP_API_KEY", "").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PDP_API_KEY"), "{stderr}");
}

#[test]
fn a_broken_data_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.json");
    std::fs::write(&file, r#"{"roles": [{"key": "a", "extends": ["a"]}]}"#).unwrap();
    let out = pdp()
        .env("PDP_PORT", free_port().to_string())
        .env("PDP_DATA_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("inheritance cycle: a -> a"), "{stderr}");
}

#[tokio::test]
async fn serves_the_embedded_default_and_drains_on_sigterm() {
    let port = free_port();
    let mut child = pdp()
        .env("PDP_PORT", port.to_string())
        .env("PDP_LOG_FORMAT", "json")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_ready(&format!("{base}/ready"), Duration::from_secs(10)).await);
    let ready: serde_json::Value = reqwest::get(format!("{base}/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["snapshot"]["source"]["kind"], "embedded", "{ready}");
    assert!(
        ready["detail"]
            .as_str()
            .is_some_and(|d| d.contains("example")),
        "/ready says the data is the example: {ready}"
    );
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/allowed"))
        .json(&serde_json::json!({"user": "alice", "action": "read", "resource": {"type": "document", "tenant": "acme"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allow"], true);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_local_file_never_goes_stale() {
    let port = free_port();
    let mut child = pdp()
        .env("PDP_PORT", port.to_string())
        .env("PDP_DATA_FILE", "config/example-data.json")
        .env("PDP_MAX_STALENESS", "100ms")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_ready(&format!("{base}/ready"), Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = reqwest::get(format!("{base}/ready"))
        .await
        .unwrap()
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status.as_u16(),
        200,
        "the staleness limit is for synced snapshots only"
    );
}

/// SIGHUP while the first snapshot loads asks for a reload, it does not end
/// the process; and the open file limit is raised to the hard one.
#[tokio::test]
async fn a_hangup_during_the_first_load_is_a_reload_not_an_exit() {
    use std::io::BufRead;
    let port = free_port();
    let mut child = pdp()
        .env("PDP_PORT", port.to_string())
        .env("PDP_DATA_FILE", "config/example-data.json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The data file is read right after this line is written.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("pdp listening") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no listening line"
        );
    }
    for _ in 0..3 {
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_ready(&format!("{base}/ready"), Duration::from_secs(10)).await);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(
        files[0], files[1],
        "soft limit raised to the hard one: {limits}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = drain.join().unwrap();
    assert!(log.contains("SIGHUP: refresh requested"), "{log}");
}

#[test]
fn export_refuses_what_it_cannot_do_with_a_clear_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle.bin");
    // No --out: a usage error.
    let run = pdp().arg("export").output().unwrap();
    assert_eq!(run.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--out"));
    // No key to authenticate the bundle with.
    let run = pdp()
        .args(["export", "--out"])
        .arg(&out)
        .env("PDP_DATA_FILE", "config/example-data.json")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&run.stderr).contains("PDP_API_KEY"));
    // A broken data file.
    let broken = dir.path().join("env.json");
    std::fs::write(&broken, "{").unwrap();
    let run = pdp()
        .args(["export", "--out"])
        .arg(&out)
        .env("PDP_API_KEY", "permit_key_x")
        .env("PDP_DATA_FILE", &broken)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(65));
    // No control plane within the deadline.
    let run = pdp()
        .args(["export", "--out"])
        .arg(&out)
        .env("PDP_API_KEY", "permit_key_x")
        .env("PDP_CONTROL_PLANE", "http://127.0.0.1:9")
        .env("PDP_SYNC_DEADLINE", "1s")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(69));
    assert!(!out.exists(), "nothing is written when the export fails");
    // An unknown command.
    let run = pdp().arg("serve-please").output().unwrap();
    assert_eq!(run.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&run.stderr).contains("usage"));
}
