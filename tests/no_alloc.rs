//! The decision path allocates nothing: decoding a `POST /allowed` body
//! (strings borrowed from it) and answering it from the snapshot, for every
//! kind of query in the generator's labelled mix (RBAC, ReBAC at depths 1
//! to 3, ABAC). Its own test binary, because it counts through a global
//! allocator; the count is per thread, so the harness cannot disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pdp::decide::{self, AllowedQuery};
use pdp::snapshot::Snapshot;
use pdp_devkit::gen::{generate, GenSpec, QueryMix};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

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
