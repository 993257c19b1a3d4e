//! What this PDP asked of the control plane lately, and whether it may ask
//! at all: the last [`CallLog::CAPACITY`] calls (the sync's and the facts
//! proxy's) with the control plane's request id, so that a failure can be
//! found in Permit's API log; and Permit's connectivity switch, which stops
//! every call while the last good snapshot keeps serving.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;

/// One call to the control plane.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Call {
    pub at_unix_ms: u64,
    /// `sync` or `facts_proxy`.
    pub by: &'static str,
    pub method: String,
    /// The path and query, as sent.
    pub path: String,
    /// The rate-limit class: `facts`, `schema` or `other`.
    pub class: &'static str,
    /// The HTTP status, or the error kind when there was none (`network`,
    /// `timeout`).
    pub status: String,
    pub latency_ms: f64,
    /// The control plane's `X-Request-Id`, when it sent one.
    pub request_id: Option<String>,
    /// The start of an error answer's body, or the transport error.
    pub error: Option<String>,
}

impl Call {
    pub fn new(by: &'static str, method: &str, path: String, class: &'static str) -> Call {
        Call {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            by,
            method: method.to_owned(),
            path,
            class,
            status: String::new(),
            latency_ms: 0.0,
            request_id: None,
            error: None,
        }
    }

    /// Whether the call failed (no answer, or not a 2xx).
    pub fn failed(&self) -> bool {
        !self.status.starts_with('2')
    }

    pub fn took(mut self, latency: Duration) -> Call {
        self.latency_ms = latency.as_secs_f64() * 1e3;
        self
    }
}

/// The longest error excerpt kept.
const EXCERPT: usize = 200;

/// `text` cut to an excerpt, control characters dropped.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(EXCERPT).collect();
    out.retain(|c| !c.is_control());
    out
}

/// The control-plane calls, newest last, and the connectivity switch.
#[derive(Debug)]
pub struct CallLog {
    calls: Mutex<VecDeque<Call>>,
    last_failure: Mutex<Option<Call>>,
    enabled: AtomicBool,
    /// Woken when connectivity is enabled again.
    pub enabled_again: Notify,
}

impl Default for CallLog {
    fn default() -> Self {
        CallLog {
            calls: Mutex::default(),
            last_failure: Mutex::default(),
            enabled: AtomicBool::new(true),
            enabled_again: Notify::new(),
        }
    }
}

impl CallLog {
    pub const CAPACITY: usize = 200;

    pub fn record(&self, call: Call) {
        if call.failed() {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(call.clone());
        }
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.len() == Self::CAPACITY {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    /// The calls kept, oldest first.
    pub fn recent(&self) -> Vec<Call> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.iter().cloned().collect()
    }

    /// The last call that failed, even if it has left the ring.
    pub fn last_failure(&self) -> Option<Call> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether calls to the control plane are allowed.
    pub fn connected(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Allows or stops calls to the control plane; returns the new state.
    pub fn set_connected(&self, on: bool) -> bool {
        let was = self.enabled.swap(on, Ordering::Relaxed);
        if on && !was {
            self.enabled_again.notify_waiters();
        }
        on
    }

    /// Returns once calls are allowed.
    pub async fn until_connected(&self) {
        loop {
            let again = self.enabled_again.notified();
            if self.connected() {
                return;
            }
            again.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: &str) -> Call {
        let mut c = Call::new("sync", "GET", "/v2/x".into(), "facts");
        c.status = status.into();
        c
    }

    #[test]
    fn the_ring_keeps_the_latest_and_the_last_failure_outlives_it() {
        let log = CallLog::default();
        log.record(call("503"));
        for _ in 0..CallLog::CAPACITY {
            log.record(call("200"));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), CallLog::CAPACITY);
        assert!(recent.iter().all(|c| c.status == "200"));
        assert_eq!(log.last_failure().map(|c| c.status), Some("503".into()));
        assert_eq!(excerpt("a\nb"), "ab");
    }

    #[tokio::test]
    async fn waiting_for_connectivity_returns_when_it_is_enabled() {
        let log = std::sync::Arc::new(CallLog::default());
        log.until_connected().await;
        log.set_connected(false);
        let waiter = tokio::spawn({
            let log = log.clone();
            async move { log.until_connected().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        log.set_connected(true);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
