//! Prometheus series of the sync task. Registered once into the caller's
//! registry; the task and its client update them. Snapshot age is left to
//! the store's owner, which can compute it at scrape time; here is the
//! last-success timestamp it derives from.

use prometheus::{
    CounterVec, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
};

pub struct SyncMetrics {
    pub(super) attempts: IntCounter,
    pub(super) failures: IntCounterVec,
    pub(super) swaps: IntCounter,
    pub(super) duration: Histogram,
    pub(super) last_success: Gauge,
    pub(super) last_attempt: Gauge,
    pub(super) requests: IntCounterVec,
    pub(super) rate_limited: IntCounterVec,
    pub(super) limiter_wait: CounterVec,
    pub(super) backup_failures: IntCounter,
}

impl SyncMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            attempts: IntCounter::new("pdp_sync_attempts_total", "Full syncs started")?,
            failures: IntCounterVec::new(
                Opts::new("pdp_sync_failures_total", "Full syncs that failed, by cause"),
                &["cause"],
            )?,
            swaps: IntCounter::new(
                "pdp_sync_swaps_total",
                "Syncs that put a new snapshot in service (the rest found it unchanged)",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new("pdp_sync_duration_seconds", "Duration of full syncs, failed or not")
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]),
            )?,
            last_success: Gauge::new(
                "pdp_sync_last_success_timestamp_seconds",
                "Unix time of the last successful sync",
            )?,
            last_attempt: Gauge::new(
                "pdp_sync_last_attempt_timestamp_seconds",
                "Unix time the last sync started, successful or not",
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "pdp_control_plane_requests_total",
                    "Control-plane requests by rate-limit class and status (HTTP code or error kind)",
                ),
                &["class", "status"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new("pdp_control_plane_rate_limited_total", "429 answers received, by class"),
                &["class"],
            )?,
            limiter_wait: CounterVec::new(
                Opts::new(
                    "pdp_control_plane_limiter_wait_seconds_total",
                    "Time requests waited for the client-side budget or a Retry-After, by class",
                ),
                &["class"],
            )?,
            backup_failures: IntCounter::new(
                "pdp_backup_write_failures_total",
                "Offline backups that could not be written",
            )?,
        };
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.swaps.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.last_success.clone()))?;
        registry.register(Box::new(m.last_attempt.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
        registry.register(Box::new(m.limiter_wait.clone()))?;
        registry.register(Box::new(m.backup_failures.clone()))?;
        Ok(m)
    }

    /// Total seconds spent waiting on the limiter, all classes.
    pub fn limiter_wait_seconds(&self) -> f64 {
        ["facts", "schema", "other"]
            .iter()
            .map(|c| self.limiter_wait.with_label_values(&[c]).get())
            .sum()
    }
}
