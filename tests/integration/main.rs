//! The one integration test binary: each area is a module; `support` starts
//! the real server on port 0 and holds the other shared helpers.

mod support;

mod authzen;
mod binary;
mod decision_logs;
mod facts;
mod fleet;
mod generated;
mod http;
mod props;
mod sdk_fixture;
mod semantics;
mod sync;
