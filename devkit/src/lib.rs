//! pdp-devkit: what developing `pdp` needs and the product does not. The
//! tests and benchmarks depend on it; the `pdp` binary never links it.
//!
//! - [`gen`]: deterministic generated environments and query mixes, for the
//!   benchmarks and the load test, labelled by [`reference`].
//! - [`reference`]: the reference evaluator, the spec's rules written out
//!   plainly, to judge the engine by.
pub mod gen;
pub mod reference;
