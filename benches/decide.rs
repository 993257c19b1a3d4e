//! Criterion benchmarks of the engine on generated environments (`pdp_devkit::gen`):
//! `decide::check` for RBAC, ReBAC depth 1/2/3, ABAC and a bulk of 100 (one
//! at a time, and as the server decides it with `decide::check_bulk`), the
//! same RBAC queries parsed from their JSON bodies, staging a document from
//! its JSON text, snapshot build (from a parsed document, and from a staged
//! one alone), the difference a hub sends followers after a sync (twenty
//! facts fewer), and backup (the staged document in bincode) encode/decode.
//! Beside the checks, a naive floor measured in the same run:
//! `HashMap<(user, tenant), Vec<role>>` plus a `HashSet<(type, action)>` probe
//! per role, the least work an RBAC answer takes.
//!
//! After the runs it prints the memory figures: RSS growth while building
//! each snapshot (from /proc/self/statm), per role assignment and per tuple.
//!
//! ```text
//! cargo bench --bench decide                       # small (10k) and medium (100k)
//! PDP_BENCH_LARGE=1 cargo bench --bench decide     # + large (1M) and rebac_large
//! cargo bench --bench decide -- rbac               # a filter, as usual
//! ```
//! Inputs (documents, snapshots, parsed queries) are built outside the timed
//! loops; each iteration answers the next query of a fixed, labelled mix.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use pdp::decide::{self, AllowedQuery};
use pdp::http;
use pdp::model::DataDocument;
use pdp::snapshot::{Snapshot, Staged};
use pdp_devkit::gen::{generate, GenSpec, Query, QueryMix};
use pdp_devkit::reference::{self, Reference};

/// Resident bytes of this process.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The naive RBAC floor: two hash probes on borrowed keys, no allocation.
struct Naive<'a> {
    roles: HashMap<(&'a str, &'a str), Vec<&'a str>>,
    perms: HashMap<&'a str, HashSet<(&'a str, &'a str)>>,
}

impl<'a> Naive<'a> {
    fn new(doc: &'a DataDocument) -> Self {
        let mut roles: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for ra in &doc.role_assignments {
            if let (None, Some(t)) = (&ra.resource_instance, &ra.tenant) {
                roles.entry((&ra.user, t)).or_default().push(&ra.role);
            }
        }
        // Flattened by the reference evaluator, so the rule is not written a
        // third time here; the floor is about the lookup, not the build. The
        // grants are re-borrowed from the document so a probe allocates nothing.
        let reference = Reference::new(doc);
        let mut perms = HashMap::new();
        for r in &doc.roles {
            let set: HashSet<(&str, &str)> = reference::tenant_role_grants(&reference, &r.key)
                .iter()
                .filter_map(|(t, a)| {
                    let res = doc.resources.iter().find(|x| x.key == *t)?;
                    let (action, _) = res.actions.get_key_value(a)?;
                    Some((res.key.as_str(), action.as_str()))
                })
                .collect();
            perms.insert(r.key.as_str(), set);
        }
        Naive { roles, perms }
    }

    fn check(&self, user: &str, tenant: &str, ty: &str, action: &str) -> bool {
        self.roles.get(&(user, tenant)).is_some_and(|rs| {
            rs.iter()
                .any(|r| self.perms.get(r).is_some_and(|p| p.contains(&(ty, action))))
        })
    }
}

struct Memory {
    env: &'static str,
    assignments: usize,
    tuples: usize,
    instances: usize,
    rss_delta: usize,
    index_heap: usize,
    backup_bytes: usize,
}

fn bodies(qs: &[Query]) -> Vec<String> {
    qs.iter().map(|q| q.to_json().to_string()).collect()
}

fn parse(bodies: &[String]) -> Vec<AllowedQuery<'_>> {
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).expect("generated bodies parse"))
        .collect()
}

fn bench_env(c: &mut Criterion, name: &'static str, spec: GenSpec, memory: &mut Vec<Memory>) {
    let doc = generate(&spec);
    let rss0 = rss_bytes();
    let snap = Snapshot::build(&doc).expect("generated documents are valid");
    let rss1 = rss_bytes();
    let cfg = bincode::config::standard();
    let staged = Staged::from_document(&doc);
    let backup = bincode::serde::encode_to_vec(&staged, cfg).expect("encodes");
    let json = serde_json::to_string(&doc).expect("encodes");
    memory.push(Memory {
        env: name,
        assignments: doc.role_assignments.len(),
        tuples: doc.relationship_tuples.len(),
        instances: doc.resource_instances.len(),
        rss_delta: rss1.saturating_sub(rss0),
        index_heap: snap.index_heap_bytes(),
        backup_bytes: backup.len(),
    });

    let mut mix = QueryMix::new(&doc, spec.seed);
    let sets: Vec<(&str, Vec<String>)> = vec![
        ("rbac", bodies(&mix.rbac(1_000))),
        ("rebac_depth1", bodies(&mix.rebac(1, 1_000))),
        ("rebac_depth2", bodies(&mix.rebac(2, 1_000))),
        ("rebac_depth3", bodies(&mix.rebac(3, 1_000))),
        ("abac", bodies(&mix.abac(1_000))),
        ("mixed", bodies(&mix.mixed(1_000))),
    ];
    let naive = Naive::new(&doc);
    let rbac_raw = mix.rbac(1_000);

    let mut g = c.benchmark_group(format!("check/{name}"));
    g.throughput(Throughput::Elements(1));
    for (kind, raw) in &sets {
        let qs = parse(raw);
        if qs.is_empty() {
            continue;
        }
        let mut i = 0;
        g.bench_function(*kind, |b| {
            b.iter(|| {
                i = (i + 1) % qs.len();
                black_box(decide::check(&snap, black_box(&qs[i])))
            })
        });
    }
    // What the HTTP path does per request before encoding: parse, then decide.
    let rbac_bodies = &sets[0].1;
    let mut i = 0;
    g.bench_function("rbac_parse_and_check", |b| {
        b.iter(|| {
            i = (i + 1) % rbac_bodies.len();
            let q: AllowedQuery =
                http::decode(black_box(rbac_bodies[i].as_bytes())).expect("parses");
            black_box(decide::check(&snap, &q).allow)
        })
    });
    let mut i = 0;
    g.bench_function("baseline_naive_rbac", |b| {
        b.iter(|| {
            i = (i + 1) % rbac_raw.len();
            let q = &rbac_raw[i];
            black_box(naive.check(
                &q.user,
                q.tenant.as_deref().unwrap_or(""),
                &q.resource_type,
                &q.action,
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("bulk100/{name}"));
    g.throughput(Throughput::Elements(100));
    let mixed = parse(&sets[5].1);
    let chunks: Vec<&[AllowedQuery]> = mixed.chunks_exact(100).collect();
    let mut i = 0;
    g.bench_function("check_x100", |b| {
        b.iter(|| {
            i = (i + 1) % chunks.len();
            let allowed = chunks[i]
                .iter()
                .filter(|q| decide::check(&snap, q).allow)
                .count();
            black_box(allowed)
        })
    });
    // The same checks as the server decides a bulk: ids and first rows for
    // all hundred, then the decisions (`decide::check_bulk`). Then bodies in
    // the SDK's `filter_objects` shape: one user and action on 100 files.
    let filter_bodies: Vec<String> = mix.filter(10, 100).iter().flat_map(|r| bodies(r)).collect();
    let filter = parse(&filter_bodies);
    let filter_chunks: Vec<&[AllowedQuery]> = filter.chunks_exact(100).collect();
    for (id, set) in [
        ("check_bulk", &chunks),
        ("check_bulk_one_user", &filter_chunks),
    ] {
        if set.is_empty() {
            continue;
        }
        let mut i = 0;
        g.bench_function(id, |b| {
            b.iter(|| {
                i = (i + 1) % set.len();
                let allowed = decide::check_bulk(&snap, set[i])
                    .iter()
                    .filter(|d| d.allow)
                    .count();
                black_box(allowed)
            })
        });
    }
    // The whole bulk request minus the socket: decode the 100-item body (as
    // the server does, `http::decode`), decide, encode the answer.
    // `direct` writes the bytes as src/http.rs does; `via_value` builds a
    // `json!` value around the answers, the generic way it replaced.
    let bulk_bodies: Vec<String> = sets[5]
        .1
        .chunks_exact(100)
        .map(|c| format!("[{}]", c.join(",")))
        .collect();
    let mut i = 0;
    g.bench_function("request_via_value", |b| {
        b.iter(|| {
            i = (i + 1) % bulk_bodies.len();
            let qs: Vec<AllowedQuery> = http::decode(bulk_bodies[i].as_bytes()).expect("parses");
            let answers: Vec<_> = decide::check_bulk(&snap, &qs)
                .iter()
                .map(|d| d.to_response(false))
                .collect();
            black_box(
                serde_json::to_vec(&serde_json::json!({ "allow": answers })).expect("encodes"),
            )
        })
    });
    let mut i = 0;
    g.bench_function("request_direct", |b| {
        b.iter(|| {
            i = (i + 1) % bulk_bodies.len();
            let qs: Vec<AllowedQuery> = http::decode(bulk_bodies[i].as_bytes()).expect("parses");
            let mut out = Vec::with_capacity(16 + qs.len() * 30);
            out.extend_from_slice(b"{\"allow\":[");
            for (n, d) in decide::check_bulk(&snap, &qs).iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if d.allow {
                    br#"{"allow":true,"result":true}"#
                } else {
                    br#"{"allow":false,"result":false}"#
                });
            }
            out.extend_from_slice(b"]}");
            black_box(out)
        })
    });
    let mut i = 0;
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            i = (i + 1) % bulk_bodies.len();
            let qs: Vec<AllowedQuery> = http::decode(bulk_bodies[i].as_bytes()).expect("parses");
            black_box(qs.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("snapshot/{name}"));
    let slow = doc.role_assignments.len() >= 500_000 || doc.relationship_tuples.len() >= 500_000;
    g.sample_size(if slow { 10 } else { 20 });
    g.measurement_time(Duration::from_secs(if slow { 20 } else { 5 }));
    g.throughput(Throughput::Elements(doc.role_assignments.len() as u64));
    g.bench_with_input(BenchmarkId::new("build", name), &doc, |b, doc| {
        b.iter(|| black_box(Snapshot::build(doc).expect("valid")))
    });
    // What a hub works out when a sync finds a changed document: ten
    // assignments and ten tuples fewer, against the document it serves.
    let mut changed = doc.clone();
    let keep = changed.role_assignments.len().saturating_sub(10);
    changed.role_assignments.truncate(keep);
    let keep = changed.relationship_tuples.len().saturating_sub(10);
    changed.relationship_tuples.truncate(keep);
    let next = Snapshot::build(&changed).expect("valid");
    g.bench_function(BenchmarkId::new("difference", name), |b| {
        b.iter(|| black_box(next.changes_since(&snap, usize::MAX).expect("one schema")))
    });
    drop(next);
    g.bench_with_input(BenchmarkId::new("stage_json", name), &json, |b, json| {
        b.iter_batched(
            || (),
            |()| Staged::from_json_str(json).expect("stages"),
            BatchSize::PerIteration,
        )
    });
    g.bench_function(BenchmarkId::new("build_staged", name), |b| {
        b.iter_batched(
            || Staged::from_document(&doc),
            |staged| Snapshot::from_staged(staged).expect("valid"),
            BatchSize::PerIteration,
        )
    });
    g.bench_with_input(
        BenchmarkId::new("backup_encode", name),
        &staged,
        |b, staged| {
            b.iter(|| black_box(bincode::serde::encode_to_vec(staged, cfg).expect("encodes")))
        },
    );
    g.bench_with_input(
        BenchmarkId::new("backup_decode", name),
        &backup,
        |b, bytes| {
            b.iter_batched(
                || (),
                |()| {
                    let (s, _): (Staged, usize) =
                        bincode::serde::decode_from_slice(bytes, cfg).expect("decodes");
                    s
                },
                // Dropping a 1M document is not part of decoding it.
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut memory = Vec::new();
    bench_env(&mut c, "small", GenSpec::small(), &mut memory);
    bench_env(&mut c, "medium", GenSpec::medium(), &mut memory);
    if std::env::var_os("PDP_BENCH_LARGE").is_some_and(|v| v != "0") {
        bench_env(&mut c, "large", GenSpec::large(), &mut memory);
        bench_env(&mut c, "rebac_large", GenSpec::rebac_large(), &mut memory);
    }
    c.final_summary();

    println!("\nmemory (RSS growth while building the snapshot; engine's own index estimate; bincode backup size):");
    println!(
        "{:<12} {:>11} {:>9} {:>9} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "env",
        "assignments",
        "instances",
        "tuples",
        "rss_delta",
        "B/assign",
        "B/tuple",
        "index_heap",
        "backup"
    );
    for m in memory {
        let per = |n: usize| {
            if n == 0 {
                "n/a".to_string()
            } else {
                format!("{:.0}", m.rss_delta as f64 / n as f64)
            }
        };
        println!(
            "{:<12} {:>11} {:>9} {:>9} {:>12} {:>10} {:>10} {:>12} {:>10}",
            m.env,
            m.assignments,
            m.instances,
            m.tuples,
            m.rss_delta,
            per(m.assignments),
            per(m.tuples),
            m.index_heap,
            m.backup_bytes
        );
    }
}
