//! pdp: a Policy Decision Point sidecar.
#![forbid(unsafe_code)]

pub mod abac;
pub mod decide;
pub mod gen;
pub mod model;
pub mod snapshot;
pub mod store;
