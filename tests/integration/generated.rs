//! The engine on generated environments (`pdp_devkit::gen`): answers for
//! whole query mixes, single and in bulk, against the labels the mixes
//! carry.

use pdp::decide::{check, check_bulk, AllowedQuery, Decision};
use pdp::snapshot::Snapshot;
use pdp_devkit::gen::{generate, GenSpec, QueryMix};
use serde_json::json;

#[test]
fn bulk_checks_answer_as_single_checks() {
    let spec = GenSpec::small();
    let doc = generate(&spec);
    let snap = Snapshot::build(&doc).unwrap();
    let mut mix = QueryMix::new(&doc, spec.seed);
    // The load mix (a new user each check), then runs of one user and
    // action on many files (the SDK's `filter_objects`).
    let generated: Vec<_> = mix
        .mixed(1_000)
        .into_iter()
        .chain(mix.filter(5, 100).concat())
        .collect();
    let mut bodies: Vec<String> = generated.iter().map(|q| q.to_json().to_string()).collect();
    let expected: Vec<bool> = generated.iter().map(|q| q.expect_allow).collect();
    // Names the snapshot does not have, between known ones.
    bodies.insert(
        3,
        json!({"user": "nobody", "action": "read", "resource": {"type": "document", "key": "nothing", "tenant": "tenant-1"}}).to_string(),
    );
    bodies.insert(7, json!({"user": "user-1", "action": "read", "resource": {"type": "nothing", "tenant": "tenant-1"}}).to_string());
    let text = format!("[{}]", bodies.join(","));
    let qs: Vec<AllowedQuery> = serde_json::from_str(&text).unwrap();
    let single: Vec<Decision> = qs.iter().map(|q| check(&snap, q)).collect();
    assert_eq!(check_bulk(&snap, &qs), single);
    // Less the two inserted above, the oracle's answers.
    let mut answers: Vec<bool> = single.iter().map(|d| d.allow).collect();
    answers.remove(7);
    answers.remove(3);
    assert_eq!(answers, expected);
    let allowed = single.iter().filter(|d| d.allow).count();
    assert!(allowed > 0 && allowed < single.len(), "{allowed} allowed");
}

/// The generator labels with the reference evaluator, so this holds the
/// engine to the spec on a realistic document, deep ReBAC included.
#[test]
fn the_engine_agrees_with_the_labels_of_generated_queries() {
    let doc = generate(&GenSpec::small());
    let snap = Snapshot::build(&doc).expect("generated documents are valid");
    let mut mix = QueryMix::new(&doc, 3);
    let mut queries = mix.mixed(2_000);
    queries.extend(mix.rebac(3, 300));
    let mut wrong = Vec::new();
    for q in &queries {
        let body = q.to_json().to_string();
        let parsed: AllowedQuery = serde_json::from_str(&body).unwrap();
        if check(&snap, &parsed).allow != q.expect_allow {
            wrong.push(body);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} disagree, e.g. {:?}",
        wrong.len(),
        queries.len(),
        &wrong[..wrong.len().min(5)]
    );
}
