//! The one integration test binary: each area is a module here.

mod sdk_fixture;
