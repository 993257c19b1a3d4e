//! The client-side request budget: a `governor` quota per request class
//! (every request also draws on the overall quota) and a `Retry-After` gate
//! per class, so a 429 is honoured exactly: nothing of that class is sent
//! before the time the control plane named.
//!
//! Quotas are sized so that no sliding window of `window` ever holds more
//! than the configured number of requests: a GCRA limiter with burst `b`
//! and rate `r` admits at most `b + r·window` per window, so the rate is
//! `(limit - b) / window`, with a small burst to absorb scheduling jitter.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The control plane's rate-limit classes (docs/contract.md, Rate limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/v2/facts/*`: 3,000/min published.
    Facts,
    /// `/v2/schema/*`: 1,000/min published.
    Schema,
    /// Everything else (the key scope): only the overall 5,000/min.
    Other,
}

impl Class {
    pub fn of_path(path: &str) -> Class {
        if path.starts_with("/v2/facts/") {
            Class::Facts
        } else if path.starts_with("/v2/schema/") {
            Class::Schema
        } else {
            Class::Other
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Facts => "facts",
            Class::Schema => "schema",
            Class::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub struct Limiter {
    overall: Option<DefaultDirectRateLimiter>,
    facts: Option<DefaultDirectRateLimiter>,
    schema: Option<DefaultDirectRateLimiter>,
    /// Per class: no request before this instant (from a 429's Retry-After).
    gates: [Mutex<Option<Instant>>; 3],
}

impl Limiter {
    /// Limits are requests per `window`; 0 means unlimited.
    pub fn new(overall: u32, facts: u32, schema: u32, window: Duration) -> Self {
        Self {
            overall: quota(overall, window).map(RateLimiter::direct),
            facts: quota(facts, window).map(RateLimiter::direct),
            schema: quota(schema, window).map(RateLimiter::direct),
            gates: Default::default(),
        }
    }

    /// Wait until a request of `class` may be sent; returns how long that took.
    pub async fn acquire(&self, class: Class) -> Duration {
        let started = Instant::now();
        if let Some(l) = &self.overall {
            l.until_ready().await;
        }
        let own = match class {
            Class::Facts => self.facts.as_ref(),
            Class::Schema => self.schema.as_ref(),
            Class::Other => None,
        };
        if let Some(l) = own {
            l.until_ready().await;
        }
        // The gate is checked last and re-checked after every sleep: a 429
        // seen by another request while this one waited must still hold it.
        while let Some(until) = self.gate(class) {
            let now = Instant::now();
            if until <= now {
                break;
            }
            tokio::time::sleep(until - now).await;
        }
        started.elapsed()
    }

    /// Close `class` until `now + retry_after` (never shortening a gate),
    /// for at most [`MAX_RETRY_AFTER`].
    /// Counts a request sent without waiting (the application's own,
    /// through the facts proxy): it takes budget the sync would otherwise
    /// spend, when there is any left.
    pub fn charge(&self, class: Class) {
        if let Some(l) = &self.overall {
            let _ = l.check();
        }
        let own = match class {
            Class::Facts => self.facts.as_ref(),
            Class::Schema => self.schema.as_ref(),
            Class::Other => None,
        };
        if let Some(l) = own {
            let _ = l.check();
        }
    }

    pub fn retry_after(&self, class: Class, retry_after: Duration) {
        let until = Instant::now() + retry_after.min(MAX_RETRY_AFTER);
        let mut gate = lock(&self.gates[class.index()]);
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
    }

    fn gate(&self, class: Class) -> Option<Instant> {
        *lock(&self.gates[class.index()])
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned gate still holds a valid Instant; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The longest a 429 closes a class. The published limits are per minute,
/// so no honest `Retry-After` asks for more; a larger one (or a corrupt
/// header) would otherwise hold syncs back for good, or overflow the clock.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// At most `limit` requests in any sliding `window`; `None` if unlimited.
fn quota(limit: u32, window: Duration) -> Option<Quota> {
    let limit = NonZeroU32::new(limit)?;
    let burst = (limit.get() / 20).max(1);
    let sustained = (limit.get() - burst).max(1);
    let period = window / sustained;
    let burst = NonZeroU32::new(burst)?;
    Quota::with_period(period.max(Duration::from_nanos(1))).map(|q| q.allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_path() {
        assert_eq!(Class::of_path("/v2/facts/p/e/users"), Class::Facts);
        assert_eq!(Class::of_path("/v2/schema/p/e/roles"), Class::Schema);
        assert_eq!(Class::of_path("/v2/api-key/scope"), Class::Other);
    }

    #[test]
    fn quota_never_exceeds_the_limit_per_window() {
        for limit in [1u32, 2, 10, 20, 99, 1_000, 3_000] {
            let q = quota(limit, Duration::from_secs(60)).unwrap();
            let per_window = q.burst_size().get() as f64
                + Duration::from_secs(60).as_secs_f64() / q.replenish_interval().as_secs_f64();
            assert!(per_window <= limit as f64 + 1.0, "{limit}: {per_window}");
        }
        assert!(quota(0, Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_gate_holds_requests_of_its_class_only() {
        let l = Limiter::new(0, 0, 0, Duration::from_secs(60));
        l.retry_after(Class::Facts, Duration::from_millis(200));
        let waited = l.acquire(Class::Schema).await;
        assert!(waited < Duration::from_millis(50));
        let waited = l.acquire(Class::Facts).await;
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
    }

    #[test]
    fn a_charged_request_takes_budget_the_sync_would_spend() {
        let l = Limiter::new(100, 40, 0, Duration::from_secs(60));
        let facts = l.facts.as_ref().expect("limited");
        let burst = quota(40, Duration::from_secs(60))
            .unwrap()
            .burst_size()
            .get();
        for _ in 0..burst {
            l.charge(Class::Facts);
        }
        assert!(facts.check().is_err(), "the facts budget is spent");
        assert!(
            l.overall.as_ref().unwrap().check().is_ok(),
            "overall has more"
        );
        // Charging past the budget sends anyway and takes nothing more.
        l.charge(Class::Facts);
        l.charge(Class::Schema);
    }

    #[test]
    fn a_gate_is_capped_however_long_it_is_asked_for() {
        let l = Limiter::new(0, 0, 0, Duration::from_secs(60));
        l.retry_after(Class::Facts, Duration::MAX);
        let until = l.gate(Class::Facts).expect("closed");
        assert!(until <= Instant::now() + MAX_RETRY_AFTER);
        assert!(until > Instant::now() + MAX_RETRY_AFTER - Duration::from_secs(5));
    }
}
