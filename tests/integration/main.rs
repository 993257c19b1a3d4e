//! The one integration test binary: each area is a module; `support` starts
//! the real server on port 0.

mod support;

mod authzen;
