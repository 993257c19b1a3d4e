//! The fleet benchmark (docs/fleet.md): a hub and `FOLLOWERS` follower
//! processes (`pdp` binaries) on a generated environment (`large`: 1M role
//! assignments), the hub syncing from the fake control plane, all on
//! 127.0.0.1. It measures, in order:
//!
//! 1. Writes: `WRITES` role assignments, each through the next follower's
//!    `/facts`; for each, the time until every follower answers the check
//!    it allows, from the write's request and from its answer (p50, p99,
//!    max), and the delta bytes the hub sent per follower per write.
//! 2. Idle: the hub's CPU over `IDLE_SECS` with its followers' long polls
//!    alone, then with `POLLERS` more clients long-polling it as followers
//!    do, and its RSS.
//! 3. The control plane: the requests the fleet makes in `WINDOW_SECS`,
//!    with a sync asked of the hub every `SYNC_INTERVAL` seconds
//!    (`POST /sync`), against those of one lone PDP asked to sync at the
//!    same moments from its own fake; and what the hub sent in full
//!    bundles meanwhile. (Both sync on request only, so that phases 1 and
//!    2 measure no sync.)
//!
//! ```text
//! cargo build --release -p pdp --bin pdp && cargo run --release -p pdp-devkit --bin fleet_bench
//! PRESET=medium FOLLOWERS=4 WRITES=20 IDLE_SECS=10 WINDOW_SECS=120 ...
//! ```
//!
//! Every process it starts is killed when it ends; every wait is bounded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdp_devkit::fake_control_plane::{FakeControlPlane, Shape, ENV_KEY};
use pdp_devkit::gen::{generate, GenSpec};
use serde_json::{json, Value};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `pdp` process, killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn spawn(bin: &str, env: &[(&str, String)]) -> Proc {
        let port = free_port();
        let child = Command::new(bin)
            .env_clear()
            .env("PDP_HOST", "127.0.0.1")
            .env("PDP_PORT", port.to_string())
            .env("PDP_API_KEY", ENV_KEY)
            .env("PDP_LOG_LEVEL", "warn")
            .env("PDP_DECISION_LOGS", "off")
            .env("MIMALLOC_PURGE_DELAY", "0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (build it: cargo build --release -p pdp)"));
        Proc {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&self, http: &reqwest::Client, limit: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(r) = http.get(format!("{}/ready", self.url)).send().await {
                if r.status() == 200 {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} not ready in {limit:?}", self.url);
    }

    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th of the line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
        ticks / 100.0
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    async fn metric(&self, http: &reqwest::Client, series: &str) -> f64 {
        let text = http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn allowed(http: &reqwest::Client, url: &str, q: &Value) -> bool {
    let Ok(r) = http
        .post(format!("{url}/allowed"))
        .bearer_auth(ENV_KEY)
        .json(q)
        .send()
        .await
    else {
        return false;
    };
    r.json::<Value>().await.is_ok_and(|v| v["allow"] == true)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    // Interrupted, the run is dropped: the processes it started are killed.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("fleet: interrupted"),
        _ = term.recv() => eprintln!("fleet: terminated"),
    }
}

async fn run() {
    let preset = std::env::var("PRESET").unwrap_or_else(|_| "large".into());
    let followers = knob("FOLLOWERS", 10) as usize;
    let writes = knob("WRITES", 100) as usize;
    let pollers = knob("POLLERS", 100) as usize;
    let idle = Duration::from_secs(knob("IDLE_SECS", 60));
    let window = Duration::from_secs(knob("WINDOW_SECS", 600));
    let sync_interval = Duration::from_secs(knob("SYNC_INTERVAL", 60));
    let bin = std::env::var("PDP_BIN").unwrap_or_else(|_| "target/release/pdp".into());
    let spec = GenSpec::preset(&preset)
        .expect("PRESET is small, medium, large or rebac_large")
        .with_seed(knob("SEED", 7));
    let doc = generate(&spec);
    eprintln!(
        "fleet: {preset}: {} role assignments; a hub and {followers} followers",
        doc.role_assignments.len()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let limit = Duration::from_secs(900);

    let cp = FakeControlPlane::start(&doc, Shape::Paged).await;
    let unlimited = [
        ("PDP_RATE_LIMIT_OVERALL", "0".to_owned()),
        ("PDP_RATE_LIMIT_FACTS", "0".to_owned()),
        ("PDP_RATE_LIMIT_SCHEMA", "0".to_owned()),
    ];
    let mut env = vec![
        ("PDP_CONTROL_PLANE", cp.url()),
        ("PDP_SYNC_INTERVAL", "24h".to_owned()),
        ("PDP_HUB", "true".to_owned()),
    ];
    env.extend(unlimited.iter().cloned());
    let hub = Proc::spawn(&bin, &env);
    let took = hub.ready(&http, limit).await;
    eprintln!("fleet: hub ready (one sync) in {took:?}");
    let mut fleet = Vec::new();
    let mut joins = Vec::new();
    for _ in 0..followers {
        fleet.push(Proc::spawn(&bin, &[("PDP_UPSTREAM_URL", hub.url.clone())]));
    }
    for f in &fleet {
        joins.push(f.ready(&http, limit).await);
    }
    joins.sort();
    eprintln!(
        "fleet: {followers} followers ready from the hub's full bundle, the last after {:?}",
        joins.last().copied().unwrap_or_default()
    );

    // 1. Writes through the followers, each until every follower serves it.
    let role = doc
        .roles
        .iter()
        .find(|r| r.permissions.iter().any(|p| p.contains(':')) && r.extends.is_empty())
        .expect("a role with a permission");
    let (rtype, action) = role.permissions[0].split_once(':').expect("type:action");
    let tenant = doc.tenants[0].key.clone();
    let delta_before = hub
        .metric(&http, "pdp_hub_sent_bytes_total{kind=\"delta\"}")
        .await;
    let (mut from_request, mut from_answer, mut round_trip) = (Vec::new(), Vec::new(), Vec::new());
    let mut users = doc.users.iter().rev();
    while from_request.len() < writes {
        let user = &users.next().expect("enough users").key;
        let q = json!({"user": {"key": user}, "action": action, "resource": {"type": rtype, "tenant": tenant}});
        if allowed(&http, &fleet[0].url, &q).await {
            continue;
        }
        let via = &fleet[from_request.len() % followers];
        let sent = Instant::now();
        let resp = http
            .post(format!("{}/facts/role_assignments", via.url))
            .bearer_auth(ENV_KEY)
            .json(&json!({"user": user, "role": role.key, "tenant": tenant}))
            .send()
            .await
            .expect("the follower answers");
        assert!(
            resp.status().is_success(),
            "write through {}: {}",
            via.url,
            resp.status()
        );
        let answered = Instant::now();
        let mut polls = tokio::task::JoinSet::new();
        for f in &fleet {
            let (http, q, url) = (http.clone(), q.clone(), f.url.clone());
            polls.spawn(async move {
                let started = Instant::now();
                while !allowed(&http, &url, &q).await {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "{url} never served it"
                    );
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                Instant::now()
            });
        }
        let mut last = answered;
        while let Some(served) = polls.join_next().await {
            last = last.max(served.expect("a poll"));
        }
        round_trip.push(answered - sent);
        from_request.push(last - sent);
        from_answer.push(last.saturating_duration_since(answered));
    }
    let delta_bytes = hub
        .metric(&http, "pdp_hub_sent_bytes_total{kind=\"delta\"}")
        .await
        - delta_before;
    from_request.sort();
    from_answer.sort();
    round_trip.sort();
    println!("| until every follower serves a write ({writes} writes, {followers} followers) | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    for (what, v) in [
        ("from the write's request", &from_request),
        ("from its answer", &from_answer),
        (
            "(the write's own answer: follower, hub, control plane and back)",
            &round_trip,
        ),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap())
        );
    }
    println!(
        "\nhub delta bytes per follower per write: {:.0}",
        delta_bytes / (writes * followers) as f64
    );

    // 2. The hub idle, with its followers' long polls, then with more.
    let idle_cpu = {
        let before = hub.cpu_seconds();
        tokio::time::sleep(idle).await;
        hub.cpu_seconds() - before
    };
    let etag = http
        .get(format!("{}/v1/snapshot", hub.url))
        .bearer_auth(ENV_KEY)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long_polls: Vec<_> = (0..pollers)
        .map(|_| {
            let (http, url, mut etag, stop) = (
                http.clone(),
                format!("{}/v1/snapshot", hub.url),
                etag.clone(),
                stop.clone(),
            );
            // As a follower does: its version named, the next one taken.
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(resp) = http
                        .get(&url)
                        .bearer_auth(ENV_KEY)
                        .header("if-none-match", &etag)
                        .header("prefer", "wait=30")
                        .timeout(Duration::from_secs(40))
                        .send()
                        .await
                    else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    };
                    if let Some(e) = resp.headers().get("etag").and_then(|v| v.to_str().ok()) {
                        etag = e.to_owned();
                    }
                    let _ = resp.bytes().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = hub.metric(&http, "pdp_hub_long_polls").await;
    let polled_cpu = {
        let before = hub.cpu_seconds();
        tokio::time::sleep(idle).await;
        hub.cpu_seconds() - before
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in long_polls {
        p.abort();
    }
    let per_min = |cpu: f64| cpu / idle.as_secs_f64() * 60.0;
    println!("\n| hub over {idle:?} | CPU seconds a minute | long polls held |");
    println!("| --- | --- | --- |");
    println!(
        "| {followers} followers | {:.3} | {followers} |",
        per_min(idle_cpu)
    );
    println!(
        "| {followers} followers + {pollers} long-polling clients | {:.3} | {held} |",
        per_min(polled_cpu)
    );
    println!(
        "hub RSS {:.0} MB, a follower's {:.0} MB",
        hub.rss_mb(),
        fleet[0].rss_mb()
    );

    // 3. The control plane: the fleet against one lone PDP, same window.
    let lone_cp = FakeControlPlane::start(&doc, Shape::Paged).await;
    let mut lone_env = vec![
        ("PDP_CONTROL_PLANE", lone_cp.url()),
        ("PDP_SYNC_INTERVAL", "24h".to_owned()),
    ];
    lone_env.extend(unlimited.iter().cloned());
    let lone = Proc::spawn(&bin, &lone_env);
    lone.ready(&http, limit).await;
    let (fleet_before, lone_before) = (cp.requests().len(), lone_cp.requests().len());
    let full_before = hub
        .metric(&http, "pdp_hub_sent_bytes_total{kind=\"full\"}")
        .await;
    let swaps_before = fleet[0].metric(&http, "pdp_sync_swaps_total").await;
    eprintln!("fleet: counting control-plane requests for {window:?}");
    let started = Instant::now();
    let mut syncs = 0;
    while started.elapsed() < window {
        for p in [&hub, &lone] {
            let r = http
                .post(format!("{}/sync", p.url))
                .bearer_auth(ENV_KEY)
                .send()
                .await
                .expect("POST /sync");
            assert!(r.status().is_success(), "POST /sync: {}", r.status());
        }
        syncs += 1;
        tokio::time::sleep(sync_interval.min(window.saturating_sub(started.elapsed()))).await;
    }
    // The last syncs asked for finish before the counts are read.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let fleet_requests = cp.requests().len() - fleet_before;
    let lone_requests = lone_cp.requests().len() - lone_before;
    let full_bytes = hub
        .metric(&http, "pdp_hub_sent_bytes_total{kind=\"full\"}")
        .await
        - full_before;
    let swaps = fleet[0].metric(&http, "pdp_sync_swaps_total").await - swaps_before;
    println!(
        "\n| control-plane requests in {window:?}, {syncs} syncs asked for, one every {sync_interval:?} | requests |"
    );
    println!("| --- | --- |");
    println!("| the fleet: a hub and {followers} followers | {fleet_requests} |");
    println!("| one PDP alone | {lone_requests} |");
    println!(
        "| ratio | {:.3} |",
        fleet_requests as f64 / lone_requests.max(1) as f64
    );
    println!(
        "meanwhile the hub sent {:.1} MB of full bundles ({:.1} MB per follower); a follower swapped {swaps} times",
        full_bytes / 1e6,
        full_bytes / 1e6 / followers as f64
    );
}
