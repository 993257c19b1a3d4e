//! The soak driver (`benches/soak.sh` runs it): mixed traffic at a fixed
//! rate against a running PDP for a set time, while the snapshot is
//! reloaded every few seconds; it reports errors, latency percentiles per
//! minute, the PDP's RSS every 30 s, and whether every reload gave the same
//! answers as the first snapshot.
//!
//! ```text
//! soak --url http://127.0.0.1:18766 --key KEY --load-dir target/load/large-7 \
//!      --pid PID [--rate 2000] [--duration 600] [--reload-every 10]
//! ```
//!
//! The load is open-loop: request i is due at start + i/rate, and its
//! latency is counted from when it was due, so a stall shows in the
//! percentiles instead of slowing the load (no coordinated omission). The
//! mix, by request: 70% `/allowed`, 10% `/allowed/bulk` (100 checks),
//! 10% `/user-permissions`, 10% AuthZEN `/access/v1/evaluation`, each
//! from the `gen --load-dir` files. A reload is `POST /sync` (the PDP
//! re-reads its data file and swaps); it counts as done when the
//! `pdp_snapshot_swaps` gauge moves. Then the probe set (the first
//! `--probes` checks, in bulk) must answer exactly as before the first
//! reload. Exit status 1 on any error or any changed answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

struct Args {
    url: String,
    key: String,
    load_dir: PathBuf,
    pid: u32,
    rate: u64,
    duration: Duration,
    reload_every: Duration,
    probes: usize,
    max_in_flight: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        key: String::new(),
        load_dir: PathBuf::new(),
        pid: 0,
        rate: 2_000,
        duration: Duration::from_secs(600),
        reload_every: Duration::from_secs(10),
        probes: 1_000,
        max_in_flight: 512,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--key" => args.key = value()?,
            "--load-dir" => args.load_dir = value()?.into(),
            "--pid" => args.pid = num(value()?)? as u32,
            "--rate" => args.rate = num(value()?)?.max(1),
            "--duration" => args.duration = Duration::from_secs(num(value()?)?),
            "--reload-every" => args.reload_every = Duration::from_secs(num(value()?)?.max(1)),
            "--probes" => args.probes = num(value()?)? as usize,
            "--max-in-flight" => args.max_in_flight = num(value()?)?.max(1) as usize,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.url.is_empty() || args.load_dir.as_os_str().is_empty() || args.pid == 0 {
        return Err("--url, --load-dir and --pid are required".into());
    }
    Ok(args)
}

fn lines(dir: &Path, file: &str) -> Vec<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run gen --load-dir first)", path.display()))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The AuthZEN evaluation of a Permit check.
fn authzen_body(check: &str) -> String {
    let q: Value = serde_json::from_str(check).expect("a generated check");
    let r = &q["resource"];
    json!({
        "subject": {"type": "user", "id": q["user"]["key"]},
        "action": {"name": q["action"]},
        "resource": {"type": r["type"], "id": r["key"].as_str().unwrap_or("*"),
                     "properties": {"tenant": r["tenant"]}},
    })
    .to_string()
}

/// One request kind: its path and bodies.
struct Kind {
    name: &'static str,
    path: &'static str,
    bodies: Vec<String>,
}

#[derive(Default)]
struct Minute {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn swaps(client: &reqwest::Client, url: &str) -> Option<u64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pdp_snapshot_swaps "))
        .and_then(|v| v.trim().parse().ok())
}

/// The probe set's answers, in order.
async fn probe(
    client: &reqwest::Client,
    args: &Args,
    checks: &[String],
) -> Result<Vec<bool>, String> {
    let mut answers = Vec::with_capacity(checks.len());
    for chunk in checks.chunks(100) {
        let body = format!("[{}]", chunk.join(","));
        let resp = client
            .post(format!("{}/allowed/bulk", args.url))
            .bearer_auth(&args.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("probe: {}", resp.status()));
        }
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        let allow = v["allow"].as_array().ok_or("probe: no allow array")?;
        answers.extend(allow.iter().map(|d| d["allow"].as_bool().unwrap_or(false)));
    }
    Ok(answers)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let checks = lines(&args.load_dir, "allowed.jsonl");
    let kinds = Arc::new(vec![
        Kind {
            name: "allowed",
            path: "/allowed",
            bodies: checks.clone(),
        },
        Kind {
            name: "bulk",
            path: "/allowed/bulk",
            bodies: lines(&args.load_dir, "bulk.jsonl"),
        },
        Kind {
            name: "user-permissions",
            path: "/user-permissions",
            bodies: lines(&args.load_dir, "user_permissions.jsonl"),
        },
        Kind {
            name: "authzen",
            path: "/access/v1/evaluation",
            bodies: checks.iter().take(5_000).map(|c| authzen_body(c)).collect(),
        },
    ]);
    // By request number mod 10: 7 single checks, then one of each other.
    const MIX: [usize; 10] = [0, 0, 0, 1, 0, 0, 2, 0, 0, 3];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let probe_checks: Vec<String> = checks.iter().take(args.probes).cloned().collect();
    let baseline = match probe(&client, &args, &probe_checks).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: the PDP does not answer the probe set: {e}");
            std::process::exit(1);
        }
    };
    let minutes: Arc<Mutex<BTreeMap<u64, Minute>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight));
    let late = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    // Reloads, each followed by the probe set.
    let reloader = {
        let (client, args, baseline) = (client.clone(), args.clone(), baseline.clone());
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut n = 0u32;
            while start.elapsed() + args.reload_every < args.duration {
                tokio::time::sleep(args.reload_every).await;
                let before = swaps(&client, &args.url).await.unwrap_or(0);
                let sent = client
                    .post(format!("{}/sync", args.url))
                    .bearer_auth(&args.key)
                    .send()
                    .await;
                let t0 = Instant::now();
                let mut swapped = false;
                while t0.elapsed() < Duration::from_secs(30) {
                    if swaps(&client, &args.url).await.is_some_and(|s| s > before) {
                        swapped = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
                let answers = probe(&client, &args, &probe_checks).await;
                let outcome = match (sent, swapped, answers) {
                    (Err(e), ..) => format!("reload {n}: POST /sync failed: {e}"),
                    (_, false, _) => format!("reload {n}: no swap within 30 s"),
                    (_, _, Err(e)) => format!("reload {n}: {e}"),
                    (_, _, Ok(a)) if a != baseline => {
                        let changed = a.iter().zip(&baseline).filter(|(x, y)| x != y).count();
                        format!("reload {n}: {changed} of {} answers changed", a.len())
                    }
                    _ => String::new(),
                };
                if !outcome.is_empty() {
                    eprintln!("soak: {outcome}");
                    log.push(outcome);
                }
                let ms = t0.elapsed().as_millis();
                eprintln!("soak: reload {n} swapped in {ms} ms, answers checked");
            }
            (n, log)
        })
    };

    // RSS every 30 s.
    let rss_task = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if start.elapsed() > args.duration {
                    break;
                }
                if let Some(kb) = rss_kb(args.pid) {
                    samples.push((start.elapsed().as_secs(), kb));
                    eprintln!(
                        "soak: {:>4} s RSS {} MB",
                        start.elapsed().as_secs(),
                        kb / 1024
                    );
                }
            }
            samples
        })
    };

    // The open-loop load.
    let total = args.rate * args.duration.as_secs();
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            // Past the in-flight bound the PDP is not keeping up: counted,
            // and as an error, rather than queued without end.
            late.fetch_add(1, Ordering::Relaxed);
            minutes
                .lock()
                .unwrap()
                .entry(i / (args.rate * 60))
                .or_default()
                .errors += 1;
            continue;
        };
        let kind = &kinds[MIX[(i % 10) as usize]];
        let body = kind.bodies[(i / 10) as usize % kind.bodies.len()].clone();
        let req = client
            .post(format!("{}{}", args.url, kind.path))
            .bearer_auth(&args.key)
            .header("content-type", "application/json")
            .body(body);
        let minutes = minutes.clone();
        let minute = i / (args.rate * 60);
        tokio::spawn(async move {
            let ok = match req.send().await {
                Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                Err(_) => false,
            };
            let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
            {
                let mut m = minutes.lock().unwrap();
                let m = m.entry(minute).or_default();
                m.latencies_us.push(us);
                if !ok {
                    m.errors += 1;
                }
            }
            drop(permit);
        });
    }
    // Let the last requests finish.
    let _ = in_flight.acquire_many(args.max_in_flight as u32).await;
    let (reloads, reload_failures) = reloader.await.expect("the reloader");
    let rss = rss_task.await.expect("the RSS sampler");

    let minutes = minutes.lock().unwrap();
    println!("minute  requests   errors    p50_us    p99_us  p99.9_us");
    let mut errors = 0;
    for (m, data) in minutes.iter() {
        let mut l = data.latencies_us.clone();
        l.sort_unstable();
        errors += data.errors;
        println!(
            "{:>6} {:>9} {:>8} {:>9} {:>9} {:>9}",
            m + 1,
            l.len(),
            data.errors,
            percentile(&l, 0.50),
            percentile(&l, 0.99),
            percentile(&l, 0.999)
        );
    }
    println!(
        "rss_mb_every_30s {}",
        rss.iter()
            .map(|(_, kb)| (kb / 1024).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let kinds_list = kinds.iter().map(|k| k.name).collect::<Vec<_>>().join("/");
    println!(
        "RESULT rate={} duration_s={} mix={kinds_list}=7/1/1/1 requests={total} errors={errors} late={} reloads={reloads} reload_failures={} probes={}",
        args.rate,
        args.duration.as_secs(),
        late.load(Ordering::Relaxed),
        reload_failures.len(),
        baseline.len()
    );
    if errors > 0 || !reload_failures.is_empty() {
        std::process::exit(1);
    }
}
