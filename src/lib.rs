//! pdp: a Policy Decision Point sidecar.
#![forbid(unsafe_code)]

pub mod model;
pub mod authzen;
