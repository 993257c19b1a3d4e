//! Read-your-writes benchmark (docs/read-your-writes.md): what a write
//! through the facts proxy costs to serve, and what pending writes cost a
//! decision, on a generated environment (`large`: 100k users, 1M role
//! assignments, by default).
//!
//! - A full rebuild of the snapshot (`Store::install`), the cost a write
//!   would have if it rebuilt: median of `REBUILDS` runs.
//! - `WRITES` single writes through `Store::apply`, one at a time as the
//!   proxy applies them (role assigned and unassigned at tenant and
//!   instance level, users upserted): p50, p99, max.
//! - `decide::check` over a fixed query mix against the same tables with
//!   no writes pending and with `PENDING` pending, alternated for `ROUNDS`
//!   rounds: median nanoseconds per check each, and their ratio.
//!
//! ```text
//! cargo run --release -p pdp-devkit --bin writes_bench
//! PRESET=medium WRITES=1000 PENDING=10000 ROUNDS=7 QUERIES=200000 taskset -c 1 ...
//! ```
//!
//! With `SERVE=<port>` it measures nothing: it builds the environment,
//! applies `PENDING` writes (0 for none), writes the query mix as request
//! bodies to `BODIES` (one per line) if given, and serves the PDP API on
//! 127.0.0.1:`port` until SIGTERM: one side of `benches/writes.sh`, the
//! load benchmark with and without pending writes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pdp::decide::{self, AllowedQuery};
use pdp::snapshot::{Assignment, Snapshot, Staged, Write};
use pdp::store::{Source, Store};
use pdp_devkit::gen::{generate, GenSpec, QueryMix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A write of the mix: a tenant role assigned or taken away, an instance
/// role assigned, a user's profile replaced; all on the environment's own
/// users, roles, tenants and instances.
fn draw(rng: &mut ChaCha8Rng, doc: &pdp::model::DataDocument) -> Write {
    let ra = &doc.role_assignments[rng.random_range(0..doc.role_assignments.len())];
    let user = doc.users[rng.random_range(0..doc.users.len())].key.clone();
    match rng.random_range(0..4) {
        0 => Write::Unassign(Assignment {
            user: ra.user.clone(),
            role: ra.role.clone(),
            tenant: ra.tenant.clone().unwrap_or_default(),
            resource_instance: ra.resource_instance.clone(),
        }),
        1 => Write::Assign(Assignment {
            user,
            role: ra.role.clone(),
            tenant: ra.tenant.clone().unwrap_or_default(),
            resource_instance: ra.resource_instance.clone(),
        }),
        2 => {
            let t = &doc.tenants[rng.random_range(0..doc.tenants.len())].key;
            let role = &doc.roles[rng.random_range(0..doc.roles.len())].key;
            Write::Assign(Assignment {
                user,
                role: role.clone(),
                tenant: t.clone(),
                resource_instance: None,
            })
        }
        _ => Write::UpsertUser {
            email: Some(format!("{user}@written.test")),
            first_name: None,
            last_name: None,
            attributes: json!({"dept": "eng", "level": rng.random_range(0..5)})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            key: user,
        },
    }
}

/// Nanoseconds per check over `queries` against `snap`.
fn ns_per_check(snap: &Snapshot, queries: &[AllowedQuery]) -> f64 {
    let started = Instant::now();
    for q in queries {
        black_box(decide::check(snap, black_box(q)).allow);
    }
    started.elapsed().as_nanos() as f64 / queries.len() as f64
}

/// `SERVE` mode: the store with `pending` writes, over HTTP.
fn serve(port: u16, doc: &pdp::model::DataDocument, pending: usize, n_queries: usize) {
    use std::sync::Arc;
    let store = Arc::new(Store::new());
    store
        .install(Staged::from_document(doc), Source::Embedded)
        .expect("builds");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let writes: Vec<Write> = (0..pending).map(|_| draw(&mut rng, doc)).collect();
    for chunk in writes.chunks(100) {
        store.apply(chunk.to_vec());
    }
    if let Some(path) = std::env::var("BODIES").ok().filter(|p| !p.is_empty()) {
        let bodies: Vec<String> = QueryMix::new(doc, 7)
            .mixed(n_queries)
            .iter()
            .map(|q| q.to_json().to_string())
            .collect();
        std::fs::write(&path, bodies.join("\n") + "\n").expect("write the bodies");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let app = Arc::new(pdp::http::App {
            store,
            settings: pdp::http::HttpSettings::default(),
            metrics: Arc::new(
                pdp::metrics::Metrics::new(prometheus::Registry::new()).expect("metrics"),
            ),
            refresh: Arc::default(),
            sync_state: None,
            heavy: pdp::http::HeavyWork::default(),
            facts: None,
            decision_log: None,
            hub: None,
        });
        eprintln!("writes_bench: serving on 127.0.0.1:{port} with {pending} writes pending");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM");
        pdp::http::serve(app, listener, async move {
            term.recv().await;
        })
        .await;
    });
}

fn main() {
    let preset = std::env::var("PRESET").unwrap_or_else(|_| "large".into());
    let writes = knob("WRITES", 1_000);
    let pending = knob("PENDING", 10_000);
    let rounds = knob("ROUNDS", 5);
    let n_queries = knob("QUERIES", 100_000);
    let rebuilds = knob("REBUILDS", 3);
    let spec = GenSpec::preset(&preset)
        .unwrap_or_else(|| panic!("no preset {preset}"))
        .with_seed(7);
    let doc = generate(&spec);
    eprintln!(
        "writes_bench: {preset}: {} users, {} role assignments",
        doc.users.len(),
        doc.role_assignments.len()
    );
    if let Some(port) = std::env::var("SERVE").ok().and_then(|p| p.parse().ok()) {
        return serve(port, &doc, knob("PENDING", 10_000), n_queries);
    }

    let store = Store::new();
    let mut rebuild = Vec::new();
    for _ in 0..rebuilds {
        let staged = Staged::from_document(&doc);
        let started = Instant::now();
        store.install(staged, Source::Embedded).expect("builds");
        rebuild.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let rebuild_ms = median(rebuild);

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut took = Vec::with_capacity(writes);
    for _ in 0..writes {
        let w = draw(&mut rng, &doc);
        let started = Instant::now();
        let applied = store.apply(vec![w]);
        took.push(started.elapsed());
        assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    }
    took.sort();
    let batch: Vec<Write> = (writes.min(pending)..pending)
        .map(|_| draw(&mut rng, &doc))
        .collect();
    for chunk in batch.chunks(100) {
        store.apply(chunk.to_vec());
    }
    let with = store.load().expect("loaded").snapshot.clone();
    let without = with.without_writes();
    assert_eq!(with.applied_writes(), pending.max(writes));

    let bodies: Vec<String> = QueryMix::new(&doc, 7)
        .mixed(n_queries)
        .iter()
        .map(|q| q.to_json().to_string())
        .collect();
    let queries: Vec<AllowedQuery> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).expect("generated bodies parse"))
        .collect();
    // Warm both, then alternate which goes first.
    ns_per_check(&without, &queries);
    ns_per_check(&with, &queries);
    let (mut zero, mut some) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            zero.push(ns_per_check(&without, &queries));
            some.push(ns_per_check(&with, &queries));
        } else {
            some.push(ns_per_check(&with, &queries));
            zero.push(ns_per_check(&without, &queries));
        }
    }
    let ratios: Vec<String> = zero
        .iter()
        .zip(&some)
        .map(|(z, s)| format!("{:.3}", s / z))
        .collect();
    let (zero, some) = (median(zero), median(some));

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| environment | {preset}: {} role assignments |",
        doc.role_assignments.len()
    );
    println!("| full rebuild (median of {rebuilds}) | {rebuild_ms:.0} ms |");
    println!(
        "| one write applied, p50 / p99 / max of {writes} | {:.1} / {:.1} / {:.1} µs |",
        us(percentile(&took, 0.5)),
        us(percentile(&took, 0.99)),
        us(*took.last().expect("writes"))
    );
    println!(
        "| check, 0 writes pending (median of {rounds}, {n_queries} queries) | {zero:.0} ns |"
    );
    println!(
        "| check, {} writes pending | {some:.0} ns |",
        pending.max(writes)
    );
    println!(
        "| pending / none | {:.3} (rounds: {}) |",
        some / zero,
        ratios.join(", ")
    );
}
