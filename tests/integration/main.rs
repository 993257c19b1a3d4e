//! The one integration-test binary: each area of the PDP is a module here,
//! sharing the helpers under `support/`.

mod support;
mod sync;
