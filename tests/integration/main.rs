//! The one integration test binary: each area is a module beside this file,
//! shared helpers live under `support/`.

mod support;

mod props;
mod reference;
mod semantics;
