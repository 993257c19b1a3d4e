//! AuthZEN cost against its baseline, the equivalent Permit `/allowed`
//! request (decode + check), measured in the same run; and search cost per
//! candidate on a synthetic environment (10,000 users, 2,000 records).
//! Inputs are built outside the timed loops.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pdp::authzen::{self, Limits, Op};
use pdp::decide::{self, AllowedQuery};
use pdp::model::DataDocument;
use pdp::snapshot::Snapshot;
use serde_json::json;

fn todo_snapshot() -> Snapshot {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/authzen/todo.json"
    );
    let doc = pdp::read_document(std::path::Path::new(path)).expect("fixture");
    Snapshot::build(&doc).expect("builds")
}

const MORTY: &str = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";

/// The search scenario's policy, scaled up: users in 20 departments, one in
/// ten a manager; records owned round-robin.
fn big_search_snapshot(users: usize, records: usize) -> Snapshot {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/authzen/search.json"
    );
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
    let dept = |i: usize| format!("dept-{}", i % 20);
    let role = |i: usize| if i % 10 == 0 { "manager" } else { "employee" };
    doc["users"] = (0..users)
        .map(|i| json!({"key": format!("u{i}"), "attributes": {"role": role(i), "department": dept(i)}}))
        .collect();
    doc["role_assignments"] = (0..users)
        .map(|i| json!({"user": format!("u{i}"), "role": role(i), "tenant": "default"}))
        .collect();
    doc["resource_instances"] = (0..records)
        .map(|i| json!({"key": format!("r{i}"), "resource": "record", "tenant": "default",
                        "attributes": {"department": dept(i * 7), "owner": format!("u{}", i % users)}}))
        .collect();
    let doc: DataDocument = serde_json::from_value(doc).expect("doc");
    Snapshot::build(&doc).expect("builds")
}

fn evaluation(c: &mut Criterion) {
    let snap = todo_snapshot();
    let authzen_body = json!({
        "subject": {"type": "user", "id": MORTY},
        "action": {"name": "can_delete_todo"},
        "resource": {"type": "todo", "id": "t1", "properties": {"ownerID": "morty@the-citadel.com"}},
    })
    .to_string();
    let permit_body = json!({
        "user": {"key": MORTY},
        "action": "can_delete_todo",
        "resource": {"type": "todo", "key": "t1", "tenant": "default",
                     "attributes": {"ownerID": "morty@the-citadel.com"}},
    })
    .to_string();
    let mut g = c.benchmark_group("evaluation_abac_allow");
    g.bench_function("baseline_permit_allowed_decode_check", |b| {
        b.iter(|| {
            let q: AllowedQuery = serde_json::from_str(black_box(&permit_body)).expect("query");
            black_box(decide::check(&snap, &q).allow)
        })
    });
    g.bench_function("authzen_evaluation_handle", |b| {
        b.iter(|| {
            let r = authzen::handle(
                Op::Evaluation,
                &snap,
                black_box(authzen_body.as_bytes()),
                &Limits::default(),
            );
            black_box(r.expect("200").to_json())
        })
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let snap = big_search_snapshot(10_000, 2_000);
    let subject = json!({"subject": {"type": "user"}, "action": {"name": "edit"},
                         "resource": {"type": "record", "id": "r7"}})
    .to_string();
    let resource = json!({"subject": {"type": "user", "id": "u10"}, "action": {"name": "view"},
                          "resource": {"type": "record"}})
    .to_string();
    // What a PEP does today without search: one /allowed/bulk request with a
    // query per candidate user, decoded and checked.
    let bulk: Vec<serde_json::Value> = snap
        .user_keys()
        .map(|u| {
            json!({"user": {"key": u}, "action": "edit",
                        "resource": {"type": "record", "key": "r7", "tenant": "default"}})
        })
        .collect();
    let bulk = serde_json::to_string(&bulk).expect("json");
    let mut g = c.benchmark_group("search_10k_users_2k_records");
    g.sample_size(20);
    g.bench_function("baseline_bulk_10k_decode_check", |b| {
        b.iter(|| {
            let qs: Vec<AllowedQuery> = serde_json::from_str(black_box(&bulk)).expect("bulk");
            black_box(qs.iter().filter(|q| decide::check(&snap, q).allow).count())
        })
    });
    g.bench_function("subject_search_10k_candidates", |b| {
        b.iter(|| {
            authzen::handle(
                Op::SearchSubject,
                &snap,
                black_box(subject.as_bytes()),
                &Limits::default(),
            )
            .expect("200")
        })
    });
    g.bench_function("resource_search_2k_candidates", |b| {
        b.iter(|| {
            authzen::handle(
                Op::SearchResource,
                &snap,
                black_box(resource.as_bytes()),
                &Limits::default(),
            )
            .expect("200")
        })
    });
    g.finish();
}

criterion_group!(benches, evaluation, search);
criterion_main!(benches);
