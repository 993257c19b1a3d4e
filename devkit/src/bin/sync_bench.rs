//! Full-sync benchmark: 100k users and 1M role assignments from the fake
//! control plane with rate limits off. Reports duration, request count and
//! peak RSS during fetch + build + swap against the steady state around it.
//!
//! The fake runs in a child process (this binary with `serve`), so the
//! RSS figures are the PDP's alone. Run:
//!
//! ```text
//! cargo run --release -p pdp-devkit --bin sync_bench [users] [assignments]
//! ```
//!
//! The data is generated here (a simple generator: users in tenants,
//! tenant roles, instance roles on documents, folder tuples) rather than by
//! `pdp_devkit::gen`, so the figures in `docs/sync.md` stay comparable.

use std::alloc::System;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdp::model::DataDocument;
use pdp::store::Store;
use pdp::sync::{SyncConfig, SyncState, Syncer};
use pdp_devkit::counting::{self, Counting};
use pdp_devkit::fake_control_plane::{FakeControlPlane, Shape, ENV_KEY};
use serde_json::json;
use tokio::sync::{watch, Notify};

/// Live heap bytes, current and peak. RSS alone misleads here: glibc keeps
/// freed pages of the transient data document mapped, so RSS after a sync
/// overstates what the PDP holds; the heap count says what is live.
#[global_allocator]
static ALLOCATOR: Counting<System> = Counting::new(System);

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let serving = args.first().map(String::as_str) == Some("serve");
    if serving {
        args.remove(0);
    }
    let users: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let assignments: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if serving {
        runtime.block_on(serve(users, assignments));
    } else {
        runtime.block_on(measure(users, assignments));
    }
}

/// Child: serve the generated environment until stdin closes; a line
/// `bump` changes one tenant so the next sync must rebuild and swap.
async fn serve(users: usize, assignments: usize) {
    let fake = FakeControlPlane::start(&DataDocument::default(), Shape::Paged).await;
    let tenants = (users / 100).max(1);
    let docs = 100_000.min(assignments.max(1));
    let tenant_list = move |version: u32| -> Vec<String> {
        (0..tenants)
            .map(|t| {
                json!({"key": format!("t{t}"), "name": format!("Tenant {t}"),
                            "attributes": {"tier": t % 3, "version": version}})
                .to_string()
            })
            .collect()
    };
    fake.set_raw_list(
        "resources",
        vec![
            json!({"key": "document", "actions": {"read": {}, "write": {}, "delete": {}},
                   "attributes": {"classification": {"type": "string"}},
                   "roles": {"owner": {"permissions": ["read", "write", "delete"]},
                             "reader": {"permissions": ["read"]},
                             "inherited": {"permissions": ["read"], "granted_to": {"users_with_role": [
                                 {"role": "editor", "on_resource": "folder", "linked_by_relation": "parent"}]}}},
                   "relations": {"parent": {"resource": "folder"}}})
            .to_string(),
            json!({"key": "folder", "actions": {"read": {}},
                   "roles": {"editor": {"permissions": ["read"]}}})
            .to_string(),
        ],
    );
    fake.set_raw_list(
        "roles",
        ["viewer", "editor", "admin"]
            .iter()
            .map(|r| json!({"key": r, "permissions": ["document:read"], "extends": []}).to_string())
            .collect(),
    );
    fake.set_raw_list(
        "users",
        (0..users)
            .map(|u| {
                json!({"key": format!("u{u}"), "email": format!("u{u}@example.com"),
                            "first_name": "First", "last_name": "Last",
                            "attributes": {"dept": (["eng", "sales", "ops"][u % 3]), "level": u % 7}})
                .to_string()
            })
            .collect(),
    );
    fake.set_raw_list("tenants", tenant_list(0));
    // 90% tenant roles, 10% instance roles on documents.
    let instance_roles = assignments / 10;
    let mut list = Vec::with_capacity(assignments);
    for i in 0..assignments - instance_roles {
        let u = i % users;
        let round = i / users;
        list.push(
            json!({"user": format!("u{u}"), "role": (["viewer", "editor", "admin"][round % 3]),
                   "tenant": format!("t{}", (u + round * 7) % tenants), "resource_instance": null})
            .to_string(),
        );
    }
    for i in 0..instance_roles {
        let u = (i * 7) % users;
        list.push(
            json!({"user": format!("u{u}"), "role": (["owner", "reader"][i % 2]),
                   "tenant": format!("t{}", i % tenants),
                   "resource_instance": format!("document:d{}", i % docs)})
            .to_string(),
        );
    }
    fake.set_raw_list("role_assignments", list);
    fake.set_raw_list(
        "resource_instances",
        (0..docs)
            .map(|d| {
                json!({"key": format!("d{d}"), "resource": "document",
                            "tenant": format!("t{}", d % tenants),
                            "attributes": {"classification": "internal"}})
                .to_string()
            })
            .collect(),
    );
    fake.set_raw_list(
        "relationship_tuples",
        (0..docs)
            .map(|d| json!({"subject": format!("folder:f{}", d / 10), "relation": "parent",
                            "object": format!("document:d{d}"), "tenant": format!("t{}", d % tenants)})
                .to_string())
            .collect(),
    );
    println!("{}", fake.url());
    let fake = Arc::new(fake);
    // The server runs on this runtime; stdin is read on a blocking thread.
    let control = fake.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut version = 0;
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "bump" => {
                    version += 1;
                    control.set_raw_list("tenants", tenant_list(version));
                    println!("bumped");
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Reset VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is
/// the peak of what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn measure(users: usize, assignments: usize) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["serve", &users.to_string(), &assignments.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fake control plane");
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let url = from_child
        .next()
        .expect("child prints its url")
        .expect("utf-8");
    eprintln!("fake control plane at {url} ({users} users, {assignments} role assignments)");

    let backups = tempfile::tempdir().expect("tempdir");
    let config = SyncConfig {
        control_plane: url,
        api_key: pdp::config::ApiKey::new(ENV_KEY),
        interval: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(30),
        sync_deadline: Duration::from_secs(1800),
        overall_per_min: 0,
        facts_per_min: 0,
        schema_per_min: 0,
        backup_dir: Some(backups.path().to_owned()),
        ..SyncConfig::default()
    };
    let store = Arc::new(Store::new());
    let state = Arc::new(SyncState::new());
    let metrics =
        Arc::new(pdp::sync::SyncMetrics::register(&prometheus::Registry::new()).expect("registry"));
    let syncer = Syncer::new(config, state.clone(), metrics).expect("client");
    let trigger = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(false);

    let baseline = status_kb("VmRSS:");
    let heap_baseline = counting::live_bytes();
    reset_peak();
    counting::reset_peak();
    let started = Instant::now();
    let task = tokio::spawn(syncer.run(store.clone(), trigger.clone(), stop_rx));
    let wait_syncs = |n: u64| {
        let state = state.clone();
        async move {
            while state.status().syncs_succeeded + state.status().syncs_failed < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_syncs(1).await;
    let cold = started.elapsed();
    let s1 = state.status();
    assert_eq!(s1.last_outcome, Some("swapped"), "{s1:?}");
    let cold_peak = status_kb("VmHWM:");
    let heap_cold_peak = counting::peak_bytes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let steady = status_kb("VmRSS:");
    let heap_steady = counting::live_bytes();
    let backup_bytes = std::fs::metadata(backups.path().join(pdp::sync::BACKUP_FILE))
        .map(|m| m.len())
        .unwrap_or(0);

    // A changed environment: fetch, build the new snapshot while the old
    // one serves, swap, write the backup. Repeated to see whether RSS
    // settles (the allocator reusing freed pages) or keeps growing.
    let rounds: u64 = std::env::var("SYNC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut changed = Duration::ZERO;
    let (mut swap_peak, mut heap_swap_peak, mut after_swap, mut heap_after_swap) = (0, 0, 0, 0);
    let mut before_swap = 0;
    for round in 0..rounds {
        writeln!(to_child, "bump").expect("child stdin");
        assert_eq!(
            from_child.next().and_then(Result::ok).as_deref(),
            Some("bumped")
        );
        reset_peak();
        counting::reset_peak();
        if round == 0 {
            before_swap = status_kb("VmRSS:");
        }
        let started = Instant::now();
        trigger.notify_one();
        wait_syncs(2 + round).await;
        changed = started.elapsed();
        let s2 = state.status();
        assert_eq!(s2.last_outcome, Some("swapped"), "{s2:?}");
        swap_peak = status_kb("VmHWM:");
        heap_swap_peak = counting::peak_bytes();
        tokio::time::sleep(Duration::from_millis(500)).await;
        after_swap = status_kb("VmRSS:");
        heap_after_swap = counting::live_bytes();
        eprintln!(
            "changed sync {}: {:.2} s, peak RSS {:.1} MiB, RSS after {:.1} MiB, live heap peak {:.1} MiB",
            round + 1,
            changed.as_secs_f64(),
            mib(swap_peak),
            mib(after_swap),
            heap_swap_peak as f64 / (1 << 20) as f64
        );
    }

    // Unchanged: fetch and hash only.
    let started = Instant::now();
    trigger.notify_one();
    wait_syncs(2 + rounds).await;
    let unchanged = started.elapsed();
    let s3 = state.status();
    assert_eq!(s3.last_outcome, Some("unchanged"), "{s3:?}");

    let _ = stop.send(true);
    let _ = task.await;

    // Baseline in the same run: the same environment without the network,
    // as a restart does it: read the backup, build the snapshot.
    let started = Instant::now();
    let restored = Store::new();
    let key = pdp::sync::BackupKey::derive(&pdp::config::ApiKey::new(ENV_KEY));
    pdp::sync::restore_backup(&restored, backups.path(), &key)
        .expect("the backup just written loads");
    let from_backup = started.elapsed();
    let started = Instant::now();
    let backup = pdp::sync::read_backup(backups.path(), &key).expect("backup");
    let read_only = started.elapsed();
    let started = Instant::now();
    let snapshot = pdp::snapshot::Snapshot::from_staged(backup.staged).expect("builds");
    let build_only = started.elapsed();
    drop((snapshot, restored));
    drop(to_child);
    let _ = child.wait();

    println!("full sync, {users} users / {assignments} role assignments, limits off, backup on");
    println!(
        "  requests per full sync        {:>10}",
        s1.requests_last_sync
    );
    println!(
        "  cold sync (empty store)       {:>10.2} s  ({:.0} requests/s)",
        cold.as_secs_f64(),
        s1.requests_last_sync as f64 / cold.as_secs_f64()
    );
    println!(
        "  changed sync (build + swap)   {:>10.2} s",
        changed.as_secs_f64()
    );
    println!(
        "  unchanged sync (no swap)      {:>10.2} s",
        unchanged.as_secs_f64()
    );
    println!(
        "  baseline: restore from backup {:>10.2} s  (read {:.2} s, build {:.2} s)",
        from_backup.as_secs_f64(),
        read_only.as_secs_f64(),
        build_only.as_secs_f64()
    );
    println!(
        "  backup file                   {:>10.1} MiB",
        backup_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  RSS before first sync         {:>10.1} MiB",
        mib(baseline)
    );
    println!(
        "  peak RSS, cold sync           {:>10.1} MiB",
        mib(cold_peak)
    );
    println!("  steady RSS after cold sync    {:>10.1} MiB", mib(steady));
    println!(
        "  RSS before changed sync       {:>10.1} MiB",
        mib(before_swap)
    );
    println!(
        "  peak RSS, changed sync        {:>10.1} MiB  ({:.2}x steady)",
        mib(swap_peak),
        swap_peak as f64 / steady.max(1) as f64
    );
    println!(
        "  steady RSS after swap         {:>10.1} MiB",
        mib(after_swap)
    );
    let m = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "  live heap before first sync   {:>10.1} MiB",
        m(heap_baseline)
    );
    println!(
        "  live heap peak, cold sync     {:>10.1} MiB",
        m(heap_cold_peak)
    );
    println!(
        "  live heap after cold sync     {:>10.1} MiB  (the snapshot)",
        m(heap_steady)
    );
    println!(
        "  live heap peak, changed sync  {:>10.1} MiB  ({:.2}x steady)",
        m(heap_swap_peak),
        heap_swap_peak as f64 / heap_steady.max(1) as f64
    );
    println!(
        "  live heap after swap          {:>10.1} MiB",
        m(heap_after_swap)
    );
}
