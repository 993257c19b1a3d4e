//! The one integration test binary: each area is a module; `support` starts
//! the real server on port 0 and a fake control plane.

mod support;

mod binary;
mod http;
mod sync;
