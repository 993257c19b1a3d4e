//! Helpers shared by the integration tests.

pub mod fake_control_plane;
