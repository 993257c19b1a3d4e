//! The facts proxy (docs/read-your-writes.md): `/facts/{path}` and
//! `/v2/facts/{proj}/{env}/{path}` forwarded to the control plane's
//! `/v2/facts/{proj}/{env}/{path}` under the key's own scope, and a write
//! the control plane confirms served by this PDP before its answer is
//! returned, so "assign the role, then check" holds at once.
//!
//! The request goes at once (it is the application's), and is charged to
//! the sync's budget so that the sync leaves room for it; bulk calls are
//! also counted in the published bulk class. A 429 passes through with its
//! `Retry-After` and holds the sync back as one of its own would. The PDP
//! does not send `X-Permit-Consistent-Update`: that header tells Permit's
//! backend the caller republishes the change to the environment's other
//! PDPs, which this one does not.

mod writes;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tracing::{debug, warn};

use crate::http::ApiError;
use crate::store::Store;
use crate::sync::{excerpt, request_id, Call, Class, Limiter, SyncState};
pub use writes::{interpret, Interpreted};

/// The version of the snapshot that serves a confirmed write, on the
/// facts proxy's answer: a follower that sent the write through its hub
/// waits until its long poll has brought it that far (docs/fleet.md).
pub const VERSION_HEADER: &str = "x-pdp-version";

/// The longest `X-Wait-Timeout` honoured.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The largest answer passed back (a page of a list is far smaller).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// What a write does when it is not served within its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPolicy {
    /// Return the control plane's answer anyway.
    Ignore,
    /// Answer 424.
    Fail,
}

/// The wait headers of a request, checked before anything is forwarded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    pub timeout: Duration,
    pub policy: TimeoutPolicy,
}

impl Wait {
    pub fn from_headers(headers: &http::HeaderMap, default: Duration) -> Result<Wait, ApiError> {
        // An empty value is no value: the Node SDK's `waitForSync(null)`
        // sends `X-Wait-Timeout:` empty.
        let text = |name: &'static str| -> Result<Option<&str>, ApiError> {
            let Some(v) = headers.get(name) else {
                return Ok(None);
            };
            let v = v.to_str().map(str::trim).map_err(|_| ApiError::BadHeader {
                header: name,
                detail: "is not text".into(),
            })?;
            Ok((!v.is_empty()).then_some(v))
        };
        let timeout = match text("x-wait-timeout")? {
            None => default,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| *d <= MAX_WAIT)
                .ok_or_else(|| ApiError::BadHeader {
                    header: "X-Wait-Timeout",
                    detail: format!(
                        "must be a number of seconds from 0 to {}, got {v:?}",
                        MAX_WAIT.as_secs()
                    ),
                })?,
        };
        let policy = match text("x-timeout-policy")? {
            None => TimeoutPolicy::Ignore,
            Some(v) if v.eq_ignore_ascii_case("ignore") => TimeoutPolicy::Ignore,
            Some(v) if v.eq_ignore_ascii_case("fail") => TimeoutPolicy::Fail,
            Some(v) => {
                return Err(ApiError::BadHeader {
                    header: "X-Timeout-Policy",
                    detail: format!("must be `ignore` or `fail`, got {v:?}"),
                })
            }
        };
        Ok(Wait { timeout, policy })
    }
}

/// The path after `/v2/facts/{proj}/{env}/`, from either form the PDP
/// serves; `None` when there is none.
pub fn facts_path(path: &str) -> Option<&str> {
    let rest = match path.strip_prefix("/facts/") {
        Some(rest) => rest,
        None => {
            let rest = path.strip_prefix("/v2/facts/")?;
            let mut parts = rest.splitn(3, '/');
            let (_project, _env, rest) = (parts.next()?, parts.next()?, parts.next()?);
            rest
        }
    };
    (!rest.is_empty()).then_some(rest)
}

struct FactsMetrics {
    requests: IntCounterVec,
    writes: IntCounterVec,
    wait: Histogram,
    timeouts: IntCounter,
}

impl FactsMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = FactsMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "pdp_facts_proxy_requests_total",
                    "Requests forwarded by the facts proxy, by kind and the control plane's status (or `error`)",
                ),
                &["class", "status"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "pdp_facts_writes_total",
                    "Confirmed fact writes by outcome: applied, followed (a follower's, served once its hub's delta brought it), not_applicable (schema this snapshot lacks), unreadable",
                ),
                &["outcome"],
            )?,
            wait: Histogram::with_opts(
                HistogramOpts::new(
                    "pdp_facts_wait_seconds",
                    "Time a confirmed write waited to be served locally",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )?,
            timeouts: IntCounter::new(
                "pdp_facts_wait_timeouts_total",
                "Confirmed writes not served within their X-Wait-Timeout",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        registry.register(Box::new(m.wait.clone()))?;
        registry.register(Box::new(m.timeouts.clone()))?;
        Ok(m)
    }
}

pub struct FactsProxy {
    http: reqwest::Client,
    base: String,
    store: Arc<Store>,
    state: Arc<SyncState>,
    limiter: Arc<Limiter>,
    /// The published bulk class: 100 requests per 10 minutes. Counted; a
    /// bulk call past it is sent all the same (it is the application's),
    /// with a warning.
    bulk: DefaultDirectRateLimiter,
    default_wait: Duration,
    metrics: FactsMetrics,
    via_hub: bool,
}

/// How a [`FactsProxy`] reaches the control plane.
pub struct ProxyConfig {
    pub control_plane: String,
    /// `control_plane` is a hub PDP (this one follows it): requests go to
    /// its `/facts/...`, and it forwards them under its key's scope.
    pub via_hub: bool,
    pub request_timeout: Duration,
    pub default_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

impl FactsProxy {
    pub fn new(
        config: ProxyConfig,
        store: Arc<Store>,
        state: Arc<SyncState>,
        limiter: Arc<Limiter>,
        registry: &Registry,
    ) -> Result<Self, ProxyError> {
        let http = reqwest::Client::builder()
            // The key goes in a header; a redirect must not carry it away.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("pdp/", env!("CARGO_PKG_VERSION"), " (facts proxy)"))
            .build()?;
        let bulk = Quota::with_period(Duration::from_secs(6))
            .expect("a nonzero period")
            .allow_burst(NonZeroU32::new(100).expect("nonzero"));
        Ok(FactsProxy {
            http,
            base: config.control_plane.trim_end_matches('/').to_owned(),
            via_hub: config.via_hub,
            store,
            state,
            limiter,
            bulk: RateLimiter::direct(bulk),
            default_wait: config.default_wait,
            metrics: FactsMetrics::register(registry)?,
        })
    }

    /// Forwards one request (already authenticated; `body` read) and, for
    /// a confirmed write, serves it before answering.
    pub async fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let wait = Wait::from_headers(headers, self.default_wait)?;
        let rest =
            facts_path(uri.path()).ok_or_else(|| ApiError::NotFound(uri.path().to_owned()))?;
        // The SDKs percent-encode keys in the path (`document%3Ad1`); the
        // path goes upstream as it came, and is read decoded.
        let decoded: Vec<String> = rest
            .split('/')
            .map(|seg| percent_decode_str(seg).decode_utf8_lossy().into_owned())
            .collect();
        let path: Vec<&str> = decoded.iter().map(String::as_str).collect();
        // `..` would climb out of the environment's facts once the URL is
        // normalized: nothing but facts is forwarded.
        if path.iter().any(|seg| matches!(*seg, "." | "..")) {
            return Err(ApiError::NotFound(uri.path().to_owned()));
        }
        let class = writes::class(&path);
        let mut url = if self.via_hub {
            format!("{}/facts/{rest}", self.base)
        } else {
            let (project, environment) = self.state.scope().ok_or_else(|| {
                ApiError::NotReady(
                    "the facts proxy forwards under the API key's scope, which the sync has not resolved yet"
                        .into(),
                )
            })?;
            format!("{}/v2/facts/{project}/{environment}/{rest}", self.base)
        };
        let mut query = uri.query().unwrap_or("").to_owned();
        // Delete of an assignment: have the control plane say what it removed.
        let unassign = method == Method::DELETE
            && matches!(
                path.as_slice(),
                ["role_assignments"] | ["users", _, "roles"]
            );
        if unassign && !query.split('&').any(|kv| kv.starts_with("return_deleted=")) {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("return_deleted=true");
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }

        if !self.state.calls.connected() {
            return Err(ApiError::NotReady(
                "control-plane connectivity is switched off (POST /control-plane/connectivity/enable); nothing was sent"
                    .into(),
            ));
        }
        self.limiter.charge(Class::Facts);
        if (class == "bulk" || path.last() == Some(&"bulk")) && self.bulk.check().is_err() {
            warn!(
                path = rest,
                "facts proxy: over the published bulk limit (100 per 10 minutes); sent anyway, the control plane may answer 429"
            );
        }
        let mut request = self.http.request(method.clone(), &url).body(body.clone());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                request = request.header(name, v.clone());
            }
        }
        // A hub waits for the write as the caller asked this PDP to.
        if self.via_hub {
            for name in ["x-wait-timeout", "x-timeout-policy"] {
                if let Some(v) = headers.get(name) {
                    request = request.header(name, v.clone());
                }
            }
        }
        let started = Instant::now();
        let mut call = Call::new(
            "facts_proxy",
            method.as_str(),
            url[self.base.len()..].to_owned(),
            Class::Facts.label(),
        );
        let upstream = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .requests
                    .with_label_values(&[class, "error"])
                    .inc();
                warn!(error = %e, path = rest, "facts proxy: the control plane did not answer");
                call.status = if e.is_timeout() { "timeout" } else { "network" }.into();
                call.error = Some(without_url(&e));
                self.state.calls.record(call.took(started.elapsed()));
                return Err(ApiError::Upstream(without_url(&e)));
            }
        };
        let status = upstream.status();
        // A hub says which of its versions serves the write.
        let hub_version = upstream
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = upstream.headers().get(header::RETRY_AFTER).cloned();
        call.request_id = request_id(upstream.headers());
        let answer = read_limited(upstream).await;
        call.status = match &answer {
            Ok(_) => status.as_str().to_owned(),
            Err(_) => "malformed".to_owned(),
        };
        if !status.is_success() {
            call.error = answer
                .as_ref()
                .ok()
                .map(|b| excerpt(&String::from_utf8_lossy(b)));
        }
        self.state.calls.record(call.took(started.elapsed()));
        let answer = answer.inspect_err(|_| {
            self.metrics
                .requests
                .with_label_values(&[class, "error"])
                .inc();
        })?;
        self.metrics
            .requests
            .with_label_values(&[class, status.as_str()])
            .inc();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let after = retry_after
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::sync::parse_retry_after(v, SystemTime::now()))
                .unwrap_or(Duration::from_secs(1));
            self.limiter.retry_after(Class::Facts, after);
        }

        let mut served_at = None;
        if status.is_success() {
            match interpret(method, &path, &body, &answer) {
                // Through a hub that served it: the long poll brings it,
                // in the order the hub applied it among other writes.
                Interpreted::Writes(w) if self.via_hub => match hub_version.as_deref() {
                    Some(version) => {
                        self.follow(version, w.len(), wait).await?;
                        // A hub that follows one in turn passes its own on.
                        served_at = self.store.current_version();
                    }
                    // The hub did not serve it within the wait (and said
                    // so with a 424 if asked to): the long poll brings it
                    // when it does. Applied here too, it could land out of
                    // the hub's order.
                    None => self.metrics.timeouts.inc(),
                },
                Interpreted::Writes(w) => {
                    if self.serve(w, wait).await? {
                        served_at = self.store.current_version();
                    }
                }
                Interpreted::Forward => {}
                Interpreted::Unreadable(why) => {
                    self.metrics.writes.with_label_values(&["unreadable"]).inc();
                    warn!(path = rest, %why, "facts proxy: a confirmed write this PDP cannot read waits for the next sync");
                }
            }
        }

        let mut resp = Response::new(Full::new(answer));
        *resp.status_mut() = status;
        if let Some(v) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        if let Some(v) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(v) = served_at.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert(VERSION_HEADER, v);
        }
        Ok(resp)
    }

    /// Waits, as `wait` says, for this follower's long poll to bring it to
    /// `version` of its hub, which serves `n` writes just confirmed.
    async fn follow(&self, version: &str, n: usize, wait: Wait) -> Result<(), ApiError> {
        let started = Instant::now();
        let reached = !wait.timeout.is_zero() && self.store.follow_to(version, wait.timeout).await;
        self.metrics.wait.observe(started.elapsed().as_secs_f64());
        if reached {
            self.metrics
                .writes
                .with_label_values(&["followed"])
                .inc_by(n as u64);
            return Ok(());
        }
        self.not_served(wait)
    }

    /// Writes not served within `wait`: counted, and answered as its
    /// policy says.
    fn not_served(&self, wait: Wait) -> Result<(), ApiError> {
        self.metrics.timeouts.inc();
        match wait.policy {
            TimeoutPolicy::Ignore => Ok(()),
            TimeoutPolicy::Fail => Err(ApiError::UpdateTimeout),
        }
    }

    /// Applies confirmed writes, waiting for them as `wait` says; whether
    /// they were served within it. The apply runs on a blocking thread and
    /// finishes even when the wait is over.
    async fn serve(
        &self,
        batch: Vec<crate::snapshot::Write>,
        wait: Wait,
    ) -> Result<bool, ApiError> {
        let store = self.store.clone();
        let started = Instant::now();
        let task = tokio::task::spawn_blocking(move || store.apply(batch));
        let served = if wait.timeout.is_zero() {
            None
        } else {
            tokio::time::timeout(wait.timeout, task)
                .await
                .ok()
                .and_then(Result::ok)
        };
        self.metrics.wait.observe(started.elapsed().as_secs_f64());
        match served {
            Some(applied) => {
                let writes = &self.metrics.writes;
                writes
                    .with_label_values(&["applied"])
                    .inc_by(applied.applied as u64);
                for (_, why) in &applied.refused {
                    writes.with_label_values(&["not_applicable"]).inc();
                    warn!(%why, "facts proxy: a confirmed write names schema this snapshot lacks; the next sync brings it");
                }
                debug!(applied = applied.applied, "facts proxy: writes served");
                Ok(true)
            }
            None => self.not_served(wait).map(|()| false),
        }
    }
}

/// A transport error without the URL (it names the project and environment).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("the control plane did not answer: {kind}")
}

async fn read_limited(mut upstream: reqwest::Response) -> Result<Bytes, ApiError> {
    let mut body = Vec::new();
    loop {
        match upstream.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ApiError::Upstream(format!(
                        "the control plane's answer is over {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) => return Err(ApiError::Upstream(without_url(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn both_path_forms_name_the_same_facts() {
        assert_eq!(facts_path("/facts/users"), Some("users"));
        assert_eq!(facts_path("/facts/users/u1/roles"), Some("users/u1/roles"));
        assert_eq!(
            facts_path("/v2/facts/p/e/role_assignments"),
            Some("role_assignments")
        );
        assert_eq!(facts_path("/v2/facts/p/e/"), None);
        assert_eq!(facts_path("/v2/facts/p"), None);
        assert_eq!(facts_path("/facts/"), None);
    }

    #[test]
    fn wait_headers_are_checked() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let default = Duration::from_secs(10);
        for none in [
            &[][..],
            &[("x-wait-timeout", ""), ("x-timeout-policy", " ")],
        ] {
            let w = Wait::from_headers(&headers(none), default).unwrap();
            assert_eq!((w.timeout, w.policy), (default, TimeoutPolicy::Ignore));
        }
        let w = Wait::from_headers(
            &headers(&[("x-wait-timeout", "5.0"), ("x-timeout-policy", "FAIL")]),
            default,
        )
        .unwrap();
        assert_eq!(
            (w.timeout, w.policy),
            (Duration::from_secs(5), TimeoutPolicy::Fail)
        );
        for bad in [
            &[("x-wait-timeout", "-1")][..],
            &[("x-wait-timeout", "soon")],
            &[("x-wait-timeout", "NaN")],
            &[("x-wait-timeout", "1e9")],
            &[("x-timeout-policy", "retry")],
        ] {
            let e = Wait::from_headers(&headers(bad), default).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
