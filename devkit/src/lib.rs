//! pdp-devkit: what developing `pdp` needs and the product does not. The
//! tests and benchmarks depend on it; the `pdp` binary never links it.
//!
//! - [`fake_control_plane`]: a Permit control plane over HTTP that a test
//!   can feed, slow down or break.
//! - [`gen`]: deterministic generated environments and query mixes, for the
//!   benchmarks and the load test, labelled by [`reference`].
//! - [`counting`]: the counting allocator, for the allocation test and the
//!   memory benchmarks.
//! - [`reference`]: the reference evaluator, the spec's rules written out
//!   plainly, to judge the engine by.
pub mod counting;
pub mod fake_control_plane;
pub mod gen;
pub mod reference;
