//! What the sync task reports about itself, for `/health`: cheap to read
//! (one short mutex hold, never across an await) and serializable as-is.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::calls::CallLog;
use super::{SyncError, SyncOutcome};

/// Shared between the sync task (writer) and the HTTP server (reader).
#[derive(Debug, Default)]
pub struct SyncState {
    status: Mutex<SyncStatus>,
    /// The key's project and environment, once resolved: the path of the
    /// facts proxy's requests.
    scope: OnceLock<(String, String)>,
    /// The environment served: the key's, or a follower's upstream's.
    environment: OnceLock<String>,
    /// The calls made to the control plane, and whether any may be made.
    pub calls: CallLog,
}

/// A point-in-time view. Times are unix seconds so the JSON is plain.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SyncStatus {
    /// `starting`, `resolving_key_scope`, `fetching`, `building`, `idle`,
    /// `disconnected`; a follower: `fetching`, `long_polling`, `idle`.
    pub phase: &'static str,
    pub last_attempt_unix: Option<u64>,
    pub last_success_unix: Option<u64>,
    /// `swapped`, `unchanged`, or `failed`.
    pub last_outcome: Option<&'static str>,
    /// The last failure's cause label and message; kept after a later
    /// success so an operator can still see what went wrong.
    pub last_error: Option<String>,
    pub last_error_cause: Option<&'static str>,
    pub consecutive_failures: u32,
    /// The request failure being retried right now, if any: a sync that
    /// retries for minutes shows why before it finally fails.
    pub retrying: Option<String>,
    pub requests_last_sync: u64,
    pub last_duration_ms: Option<u64>,
    pub syncs_succeeded: u64,
    pub syncs_failed: u64,
    /// Why the offline backup was not served at start, if it was refused.
    pub backup_refused: Option<String>,
}

impl SyncState {
    pub fn new() -> Self {
        let state = Self::default();
        state.set_phase("starting");
        state
    }

    pub(super) fn set_scope(&self, project: &str, environment: &str) {
        let _ = self.scope.set((project.to_owned(), environment.to_owned()));
        self.set_environment(environment);
    }

    pub(super) fn set_environment(&self, environment: &str) {
        let _ = self.environment.set(environment.to_owned());
    }

    /// The environment served, once known.
    pub fn environment(&self) -> Option<&str> {
        self.environment.get().map(String::as_str)
    }

    /// The key's `(project, environment)`, once the sync has resolved it.
    pub fn scope(&self) -> Option<(&str, &str)> {
        self.scope.get().map(|(p, e)| (p.as_str(), e.as_str()))
    }

    pub fn status(&self) -> SyncStatus {
        self.lock().clone()
    }

    /// When the data was last confirmed current with the control plane. An
    /// unchanged environment does not swap the snapshot, so staleness must
    /// be measured from this, not from when the snapshot was loaded.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.lock()
            .last_success_unix
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    /// Records that the backup found at start was refused, and why.
    pub fn backup_refused(&self, why: String) {
        self.lock().backup_refused = Some(why);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive_failures
    }

    pub(super) fn set_phase(&self, phase: &'static str) {
        self.lock().phase = phase;
    }

    pub(super) fn scope_failed(&self, error: &str) {
        let mut s = self.lock();
        s.last_attempt_unix = Some(now_unix());
        s.last_outcome = Some("failed");
        s.last_error = Some(format!("key scope: {error}"));
        s.last_error_cause = Some("key_scope");
        s.consecutive_failures += 1;
    }

    pub(super) fn set_retrying(&self, what: Option<String>) {
        let mut s = self.lock();
        if s.retrying.is_some() || what.is_some() {
            s.retrying = what;
        }
    }

    pub(super) fn attempt_started(&self) {
        let mut s = self.lock();
        s.phase = "fetching";
        s.last_attempt_unix = Some(now_unix());
    }

    pub(super) fn succeeded(&self, outcome: SyncOutcome, requests: u64, took: Duration) {
        let mut s = self.lock();
        s.phase = "idle";
        s.retrying = None;
        s.last_success_unix = Some(now_unix());
        s.last_outcome = Some(match outcome {
            SyncOutcome::Swapped => "swapped",
            SyncOutcome::Unchanged => "unchanged",
        });
        s.consecutive_failures = 0;
        s.requests_last_sync = requests;
        s.last_duration_ms = Some(took.as_millis() as u64);
        s.syncs_succeeded += 1;
    }

    pub(super) fn failed(&self, error: &SyncError, requests: u64, took: Duration) {
        let mut s = self.lock();
        s.phase = "idle";
        s.retrying = None;
        s.last_outcome = Some("failed");
        s.last_error = Some(error.to_string());
        s.last_error_cause = Some(error.cause());
        s.consecutive_failures += 1;
        s.requests_last_sync = requests;
        s.last_duration_ms = Some(took.as_millis() as u64);
        s.syncs_failed += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        // Every write leaves the status whole; a panic elsewhere must not
        // take /health down with it.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
