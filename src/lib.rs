//! pdp: a Policy Decision Point sidecar.
#![forbid(unsafe_code)]

pub mod gen;
pub mod model;
