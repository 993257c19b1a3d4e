//! One control-plane request at a time: budget it through the limiter, send
//! it with the per-request timeout, classify the answer, and retry what is
//! worth retrying (network errors, timeouts, 5xx, 429, unreadable bodies)
//! with jittered exponential back-off until the sync deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;

use super::calls::{excerpt, Call};
use super::limiter::{Class, Limiter, MAX_RETRY_AFTER};
use super::metrics::SyncMetrics;
use super::{backoff, SyncConfig, SyncState};

/// The kind of API key, from its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Organization,
    Project,
    Environment,
}

impl KeyKind {
    pub fn with_article(self) -> &'static str {
        match self {
            KeyKind::Organization => "an organization",
            KeyKind::Project => "a project",
            KeyKind::Environment => "an environment",
        }
    }
}

/// `APIKeyScopeRead` (docs/contract.md, Key scope).
#[derive(Debug, Clone, Deserialize)]
pub struct ScopeRead {
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub environment_id: Option<String>,
}

/// An environment key's scope: the path segments of every list endpoint.
#[derive(Debug, Clone)]
pub struct Scope {
    pub organization_id: String,
    pub project_id: String,
    pub environment_id: String,
    kind: KeyKind,
}

impl Scope {
    fn from_read(read: ScopeRead) -> Scope {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let organization_id = read.organization_id.unwrap_or_default();
        match (nonempty(read.project_id), nonempty(read.environment_id)) {
            (Some(p), Some(e)) => Scope {
                organization_id,
                project_id: p,
                environment_id: e,
                kind: KeyKind::Environment,
            },
            (Some(p), None) => Scope {
                organization_id,
                project_id: p,
                environment_id: String::new(),
                kind: KeyKind::Project,
            },
            _ => Scope {
                organization_id,
                project_id: String::new(),
                environment_id: String::new(),
                kind: KeyKind::Organization,
            },
        }
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

/// Why one request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("cannot reach the control plane: {0}")]
    Network(String),
    #[error("no answer within the request timeout of {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("rate limited (429); retry after {0:?}")]
    RateLimited(Duration),
    #[error("unreadable response body: {0}")]
    Malformed(String),
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
}

/// The largest page body read: a page holds at most 100 objects.
pub const MAX_PAGE_BYTES: u64 = 32 << 20;
/// The most of an error body read (its first 200 characters are kept).
const MAX_ERROR_BYTES: u64 = 4 << 10;

impl RequestError {
    pub fn cause(&self) -> &'static str {
        match self {
            RequestError::Network(_) => "network",
            RequestError::Timeout(_) => "timeout",
            RequestError::Status { status, .. } if *status >= 500 => "http_5xx",
            RequestError::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            RequestError::Status { .. } => "http_4xx",
            RequestError::RateLimited(_) => "rate_limited",
            RequestError::Malformed(_) | RequestError::TooLarge { .. } => "malformed",
        }
    }

    /// Whether trying the same request again could succeed.
    fn retryable(&self) -> bool {
        match self {
            RequestError::Status { status, .. } => *status >= 500 || *status == 408,
            // The same request would only be read as far again.
            RequestError::TooLarge { .. } => false,
            _ => true,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `Bearer <key>`, marked sensitive so no debug output shows it.
    auth: http::HeaderValue,
    limiter: Arc<Limiter>,
    metrics: Arc<SyncMetrics>,
    state: Arc<SyncState>,
    backoff_min: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
    sent: AtomicU64,
    /// Body bytes received in the current sync, against `max_sync_bytes`.
    received: AtomicU64,
    max_sync_bytes: u64,
    last_failure: std::sync::Mutex<Option<RequestError>>,
}

impl Client {
    pub fn new(
        config: &SyncConfig,
        state: Arc<SyncState>,
        metrics: Arc<SyncMetrics>,
    ) -> reqwest::Result<Self> {
        // A key that is no valid header value cannot authenticate: it is
        // sent as given and refused by the control plane (401: exit 64).
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose()))
            .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            // The key goes in a header; a redirect must not carry it to
            // another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("pdp/", env!("CARGO_PKG_VERSION"), " (sync)"))
            .build()?;
        Ok(Self {
            http,
            base: config.control_plane.trim_end_matches('/').to_owned(),
            auth,
            limiter: Arc::new(Limiter::new(
                config.overall_per_min,
                config.facts_per_min,
                config.schema_per_min,
                config.limit_window,
            )),
            metrics,
            state,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            request_timeout: config.request_timeout,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            max_sync_bytes: config.max_sync_bytes,
            last_failure: Default::default(),
        })
    }

    /// The budget this client spends, shared with the facts proxy.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    /// Requests sent since start (a sync reports its own by difference).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The last request failure since the previous call (for a sync cut
    /// off by its deadline, which otherwise would not know why).
    pub fn take_last_failure(&self) -> Option<RequestError> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// `GET /v2/api-key/scope`, one attempt (the caller owns the retry policy,
    /// which differs at start-up: it never gives up).
    pub async fn scope(&self) -> Result<Scope, RequestError> {
        let body = self.get_once("/v2/api-key/scope", &[]).await?;
        let read: ScopeRead =
            serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
        // Every key has an organization (the field is required): a body
        // without one is no scope at all, not an organization key.
        if read.organization_id.as_deref().is_none_or(str::is_empty) {
            return Err(RequestError::Malformed(
                "the key's scope names no organization_id".into(),
            ));
        }
        Ok(Scope::from_read(read))
    }

    /// GET and parse, retrying what is retryable until `deadline`. A non-
    /// retryable failure (4xx) is returned at once: the caller decides.
    pub async fn get_json<T>(
        &self,
        path: &str,
        query: &[(&str, String)],
        deadline: Instant,
    ) -> Result<T, Failure>
    where
        T: for<'de> Deserialize<'de>,
    {
        let mut failures = 0u32;
        loop {
            let attempt = match self.get_once(path, query).await {
                Ok(body) => serde_json::from_slice::<T>(&body)
                    .map_err(|e| RequestError::Malformed(e.to_string())),
                Err(e) => Err(e),
            };
            if let Err(e) = &attempt {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            }
            let error = match attempt {
                Ok(v) => {
                    self.state.set_retrying(None);
                    return Ok(v);
                }
                Err(e) if !e.retryable() => return Err(Failure::Final(e)),
                Err(e) => e,
            };
            failures += 1;
            // A 429 has closed the gate for its class already; the retry
            // waits for the longer of that and the back-off, so a 429 with
            // `Retry-After: 0` (or a date in the past) still backs off, and
            // a gate that opens past the deadline ends the attempt now.
            let backoff = backoff(self.backoff_min, self.backoff_max, failures);
            let wait = match &error {
                RequestError::RateLimited(after) => backoff.max(*after),
                _ => backoff,
            };
            if Instant::now() + wait >= deadline {
                return Err(Failure::Exhausted(error));
            }
            tracing::warn!(path, error = %error, retry_in = ?wait, "control-plane request failed");
            self.state
                .set_retrying(Some(format!("{path}: {error} (attempt {failures})")));
            tokio::time::sleep(wait).await;
        }
    }

    /// One request: wait for budget, send, classify.
    async fn get_once(&self, path: &str, query: &[(&str, String)]) -> Result<Bytes, RequestError> {
        let class = Class::of_path(path);
        let waited = self.limiter.acquire(class).await;
        self.metrics
            .limiter_wait
            .with_label_values(&[class.label()])
            .inc_by(waited.as_secs_f64());
        // With connectivity switched off, no call is made until it is on
        // again; the sync deadline still bounds the sync.
        self.state.calls.until_connected().await;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (result, request_id) = self.send(path, query).await;
        let status_label = match &result {
            Ok(_) => "200".to_owned(),
            Err(RequestError::Status { status, .. }) => status.to_string(),
            Err(RequestError::RateLimited(_)) => "429".to_owned(),
            Err(e) => e.cause().to_owned(),
        };
        let mut call = Call::new("sync", "GET", with_query(path, query), class.label());
        call.status = status_label.clone();
        call.request_id = request_id;
        call.error = result.as_ref().err().map(|e| excerpt(&e.to_string()));
        self.state.calls.record(call.took(started.elapsed()));
        self.metrics
            .requests
            .with_label_values(&[class.label(), &status_label])
            .inc();
        if let Err(RequestError::RateLimited(after)) = &result {
            self.limiter.retry_after(class, *after);
            self.metrics
                .rate_limited
                .with_label_values(&[class.label()])
                .inc();
        }
        result
    }

    /// Reads a body of at most `limit` bytes, and at most what is left of
    /// the sync's whole budget, without ever holding more: a broken proxy
    /// or a hostile control plane streaming without end fails the request,
    /// not the process. An error body past its limit is cut, not refused.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        limit: u64,
        refuse_over: bool,
    ) -> Result<Bytes, RequestError> {
        let too_large = |what, limit| RequestError::TooLarge { what, limit };
        if refuse_over && response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large("a page", limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(e))? {
            let total = self
                .received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed)
                + chunk.len() as u64;
            if total > self.max_sync_bytes {
                return Err(too_large("the whole environment", self.max_sync_bytes));
            }
            if (body.len() + chunk.len()) as u64 > limit {
                if refuse_over {
                    return Err(too_large("a page", limit));
                }
                body.extend_from_slice(&chunk[..(limit as usize).saturating_sub(body.len())]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// Starts a sync's budget of bytes received.
    pub fn begin_sync(&self) {
        self.received.store(0, Ordering::Relaxed);
    }

    fn classify(&self, e: reqwest::Error) -> RequestError {
        classify_with(e, self.request_timeout)
    }

    /// One GET; the answer, and the control plane's request id if it sent
    /// one.
    async fn send(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> (Result<Bytes, RequestError>, Option<String>) {
        let url = format!("{}{}", self.base, path);
        let response = match self
            .http
            .get(&url)
            .query(query)
            .header(http::header::AUTHORIZATION, &self.auth)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (Err(self.classify(e)), None),
        };
        let request_id = request_id(response.headers());
        (self.answer(response).await, request_id)
    }

    async fn answer(&self, response: reqwest::Response) -> Result<Bytes, RequestError> {
        let status = response.status();
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            let after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                // No usable header: wait a conservative second, then the
                // limiter and back-off take over.
                .unwrap_or(Duration::from_secs(1));
            return Err(RequestError::RateLimited(after));
        }
        let limit = if status.is_success() {
            MAX_PAGE_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let body = self
            .read_capped(response, limit, status.is_success())
            .await?;
        if !status.is_success() {
            let mut text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            text.retain(|c| !c.is_control());
            return Err(RequestError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    }
}

/// The control plane's id for a request, from `X-Request-Id`.
pub fn request_id(headers: &http::HeaderMap) -> Option<String> {
    let id = headers.get("x-request-id")?.to_str().ok()?;
    Some(excerpt(id))
}

/// `path?query` as sent, for the call log.
fn with_query(path: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", pairs.join("&"))
}

/// How `get_json` gave up.
#[derive(Debug)]
pub enum Failure {
    /// A failure retrying cannot fix (4xx other than 408/429).
    Final(RequestError),
    /// Retryable, but the sync deadline came first.
    Exhausted(RequestError),
}

fn classify_with(e: reqwest::Error, timeout: Duration) -> RequestError {
    if e.is_timeout() {
        RequestError::Timeout(timeout)
    } else if e.is_decode() || e.is_body() {
        RequestError::Malformed(e.to_string())
    } else {
        // Connection refused, reset, DNS, TLS: the chain says which.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        RequestError::Network(msg)
    }
}

/// `Retry-After` is delay-seconds or an HTTP date (RFC 9110 §10.2.3).
/// A date in the past means "now"; a delay over [`MAX_RETRY_AFTER`] is
/// read as that.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = value.parse::<f64>() {
        // Some servers send fractional seconds; accept them rather than
        // fall back to a guess. Past `Duration`'s range is no number of
        // seconds at all.
        Duration::try_from_secs_f64(secs).ok()?
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        // However long a server asks for, a class closes for ten minutes at most.
        for absurd in ["18446744073709551615", "1e19", "99999999999"] {
            assert_eq!(
                parse_retry_after(absurd, now),
                Some(MAX_RETRY_AFTER),
                "{absurd}"
            );
        }
        assert_eq!(parse_retry_after("1e400", now), None);
    }

    #[test]
    fn scope_kind_follows_the_ids() {
        let read = |p: Option<&str>, e: Option<&str>| ScopeRead {
            organization_id: Some("o".into()),
            project_id: p.map(Into::into),
            environment_id: e.map(Into::into),
        };
        assert_eq!(
            Scope::from_read(read(Some("p"), Some("e"))).kind(),
            KeyKind::Environment
        );
        assert_eq!(
            Scope::from_read(read(Some("p"), None)).kind(),
            KeyKind::Project
        );
        assert_eq!(
            Scope::from_read(read(None, None)).kind(),
            KeyKind::Organization
        );
        assert_eq!(
            Scope::from_read(read(Some(""), Some(""))).kind(),
            KeyKind::Organization
        );
    }
}
