//! The decision path allocates nothing: decoding a `POST /allowed` body
//! (strings borrowed from it) and answering it from the snapshot, for every
//! kind of query in the generator's labelled mix (RBAC, ReBAC at depths 1
//! to 3, ABAC). Its own test binary, because it counts through a global
//! allocator; the count is per thread, so the harness cannot disturb it.

use std::alloc::System;

use pdp::decide::{self, AllowedQuery};
use pdp::snapshot::Snapshot;
use pdp_devkit::counting::{allocations, Counting};
use pdp_devkit::gen::{generate, GenSpec, QueryMix};

#[global_allocator]
static GLOBAL: Counting<System> = Counting::new(System);

#[test]
fn decoding_and_checking_allocate_nothing() {
    let spec = GenSpec::small();
    let doc = generate(&spec);
    let snap = Snapshot::build(&doc).expect("generated documents are valid");
    let queries = QueryMix::new(&doc, spec.seed).mixed(2_000);
    let bodies: Vec<(String, bool)> = queries
        .iter()
        .map(|q| (q.to_json().to_string(), q.expect_allow))
        .collect();
    let (mut allowed, mut with_key) = (0, 0);
    for (body, expect) in &bodies {
        let before = allocations();
        let q: AllowedQuery =
            serde_json::from_str(body).expect("the generator writes valid bodies");
        let d = decide::check(&snap, &q);
        let spent = allocations() - before;
        assert_eq!(spent, 0, "{spent} allocations deciding {body}");
        assert_eq!(d.allow, *expect, "{body}");
        allowed += d.allow as usize;
        with_key += q.resource.key.is_some() as usize;
    }
    // The mix really covered both answers and instance (ReBAC) queries.
    assert!(
        allowed > 0 && allowed < bodies.len(),
        "{allowed} of {}",
        bodies.len()
    );
    assert!(with_key > 0);
}
