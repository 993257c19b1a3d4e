//! Helpers shared by the integration test modules.

pub mod engine;
