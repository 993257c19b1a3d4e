//! The task that ships the queue: at a random delay between the minimum and
//! the maximum (sooner when the queue fills), it takes every queued event,
//! encodes them off the async workers, and posts gzipped chunks to the
//! control plane's ingress or writes JSON lines.
//!
//! Uploads are the control plane's calls like the sync's: they go through
//! the connectivity switch and the call log, draw on the overall request
//! budget, and are capped at what the sync leaves of it. A failed upload
//! keeps its chunk and backs off (a `Retry-After` is honoured); a chunk the
//! ingress refuses as malformed is dropped and counted. While chunks wait,
//! the queue keeps filling up to its bound, then drops at the door.

use std::collections::VecDeque;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::encode::{Chunk, Chunker, Encoder};
use super::{DecisionLog, Drop, Event};
use crate::config::ApiKey;
use crate::sync::{
    backoff, excerpt, parse_retry_after, request_id, Call, Class, Limiter, SyncState,
};

/// The ingress, under the control plane's URL.
pub const INGRESS_PATH: &str = "/v1/decision_logs/ingress";
/// The longest wait after failures (or a `Retry-After`).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long the last flush may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Where the task ships events.
pub enum Sink {
    ControlPlane(Box<Uploader>),
    /// JSON lines to standard output or a rotated file; the writer moves
    /// to a blocking thread for each flush.
    Lines(Option<Box<dyn Write + Send>>),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open the decision-log file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("decision logs to the control plane need a PDP that syncs from it (PDP_API_KEY, no PDP_DATA_FILE)")]
    NoControlPlane,
}

impl Sink {
    pub fn stdout() -> Sink {
        Sink::Lines(Some(Box::new(std::io::BufWriter::new(std::io::stdout()))))
    }

    /// Lines in `path`, rotated at `max_bytes` with `keep` older files.
    pub fn file(path: &std::path::Path, max_bytes: usize, keep: usize) -> Result<Sink, SinkError> {
        use file_rotate::{
            compression::Compression, suffix::AppendCount, ContentLimit, FileRotate,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SinkError::File {
                path: path.to_owned(),
                source,
            })?;
        }
        // Opened here so that a path that cannot be written fails at start.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::File {
                path: path.to_owned(),
                source,
            })?;
        let rotate = FileRotate::new(
            path,
            AppendCount::new(keep),
            ContentLimit::BytesSurpassed(max_bytes),
            Compression::None,
            None,
        );
        Ok(Sink::Lines(Some(Box::new(std::io::BufWriter::new(rotate)))))
    }
}

/// Posts chunks to the control plane's ingress.
pub struct Uploader {
    http: reqwest::Client,
    url: String,
    key: ApiKey,
    state: Arc<SyncState>,
    limiter: Arc<Limiter>,
    /// What the sync leaves of the overall budget; `None`: unlimited.
    own: Option<DefaultDirectRateLimiter>,
    backlog: VecDeque<Chunk>,
    failures: u32,
    not_before: Option<Instant>,
}

impl Uploader {
    /// `per_minute`: uploads allowed a minute (0: no cap of their own).
    pub fn new(
        control_plane: &str,
        key: ApiKey,
        timeout: Duration,
        state: Arc<SyncState>,
        limiter: Arc<Limiter>,
        per_minute: u32,
    ) -> Result<Uploader, SinkError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!(
                "pdp/",
                env!("CARGO_PKG_VERSION"),
                " (decision logs)"
            ))
            .build()?;
        let own = NonZeroU32::new(per_minute).map(|n| RateLimiter::direct(Quota::per_minute(n)));
        Ok(Uploader {
            http,
            url: format!("{}{INGRESS_PATH}", control_plane.trim_end_matches('/')),
            key,
            state,
            limiter,
            own,
            backlog: VecDeque::new(),
            failures: 0,
            not_before: None,
        })
    }

    /// Whether uploads may be tried now.
    fn may_send(&self) -> bool {
        self.state.calls.connected() && self.not_before.is_none_or(|t| Instant::now() >= t)
    }

    /// Uploads the backlog in order, stopping at the first failure.
    async fn drain(&mut self, log: &DecisionLog) {
        while let Some(chunk) = self.backlog.front().cloned() {
            if let Some(own) = &self.own {
                own.until_ready().await;
            }
            self.limiter.acquire(Class::Other).await;
            match self.post(log, &chunk).await {
                Outcome::Accepted => {
                    self.backlog.pop_front();
                    log.release_chunk(chunk.events, chunk.gz.len());
                    log.shipped(chunk.events);
                    self.failures = 0;
                    self.not_before = None;
                }
                Outcome::Refused => {
                    self.backlog.pop_front();
                    log.release_chunk(chunk.events, chunk.gz.len());
                    log.dropped(Drop::Rejected, chunk.events);
                    log.metrics.upload_failures.inc();
                    self.back_off(None);
                    return;
                }
                Outcome::Retry(after) => {
                    log.metrics.upload_failures.inc();
                    self.back_off(after);
                    return;
                }
            }
        }
    }

    fn back_off(&mut self, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(
            Duration::from_secs(1),
            Duration::from_secs(60),
            self.failures,
        )
        .max(retry_after.unwrap_or_default())
        .min(MAX_BACKOFF);
        self.not_before = Some(Instant::now() + wait);
    }

    async fn post(&self, log: &DecisionLog, chunk: &Chunk) -> Outcome {
        let mut call = Call::new("decision_logs", "POST", INGRESS_PATH.to_owned(), "other");
        let started = Instant::now();
        let sent = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(chunk.gz.clone())
            .send()
            .await;
        let outcome = match sent {
            Err(e) => {
                call.status = if e.is_timeout() { "timeout" } else { "network" }.into();
                call.error = Some(call.status.clone());
                Outcome::Retry(None)
            }
            Ok(resp) => {
                let status = resp.status();
                call.status = status.as_str().to_owned();
                call.request_id = request_id(resp.headers());
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                if !status.is_success() {
                    // The start of the error body, read within a bound.
                    let mut body = Vec::new();
                    let mut resp = resp;
                    while let Ok(Some(part)) = resp.chunk().await {
                        body.extend_from_slice(&part);
                        if body.len() > 4096 {
                            break;
                        }
                    }
                    call.error = Some(excerpt(&String::from_utf8_lossy(&body)));
                }
                match status.as_u16() {
                    200..=299 => Outcome::Accepted,
                    408 | 429 => Outcome::Retry(retry_after),
                    400..=499 => Outcome::Refused,
                    _ => Outcome::Retry(retry_after),
                }
            }
        };
        let label = if call.status.starts_with(|c: char| c.is_ascii_digit()) {
            call.status.as_str()
        } else {
            "error"
        };
        log.metrics.uploads.with_label_values(&[label]).inc();
        log_status(&call);
        self.state.calls.record(call.took(started.elapsed()));
        outcome
    }
}

fn log_status(call: &Call) {
    if call.failed() {
        warn!(status = %call.status, request_id = ?call.request_id, error = ?call.error,
              "decision logs: the ingress did not take a chunk");
    }
}

enum Outcome {
    Accepted,
    /// Dropped: the ingress will not take it however often it is sent.
    Refused,
    /// Kept and sent again after a back-off (at least this long).
    Retry(Option<Duration>),
}

/// Ships `log` to `sink` until `stop`, then flushes once more, for at most
/// [`FINAL_FLUSH`].
pub async fn run(log: Arc<DecisionLog>, mut sink: Sink, mut stop: watch::Receiver<bool>) {
    let encoder = Arc::new(Encoder::new(&log.instance, log.settings.masks.clone()));
    let mut chunker = Chunker::new(log.settings.chunk_bytes);
    let delay = || {
        let (min, max) = (log.settings.min_delay, log.settings.max_delay);
        if max > min {
            min + (max - min).mul_f64(rand::random::<f64>())
        } else {
            min
        }
    };
    let mut next = Instant::now() + delay();
    loop {
        // Wakes each second to keep the gauges current.
        let tick = next.min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep_until(tick.into()) => {}
            () = log.wake.notified() => next = Instant::now(),
            _ = stop.changed() => break,
        }
        log.observe();
        if Instant::now() < next {
            continue;
        }
        flush(&log, &mut sink, &encoder, &mut chunker).await;
        log.observe();
        next = Instant::now() + delay();
    }
    // The last events: one try, bounded, whatever the back-off said.
    if let Sink::ControlPlane(up) = &mut sink {
        up.not_before = None;
    }
    let last = flush(&log, &mut sink, &encoder, &mut chunker);
    if tokio::time::timeout(FINAL_FLUSH, last).await.is_err() {
        warn!("decision logs: the last flush did not finish in time");
    }
    let left = log.take().len()
        + match &sink {
            Sink::ControlPlane(up) => up.backlog.iter().map(|c| c.events).sum(),
            Sink::Lines(_) => 0,
        };
    if left > 0 {
        log.dropped(Drop::Shutdown, left);
        warn!(
            events = left,
            "decision logs: events not shipped at shutdown"
        );
    }
    log.observe();
}

async fn flush(log: &DecisionLog, sink: &mut Sink, encoder: &Arc<Encoder>, chunker: &mut Chunker) {
    match sink {
        Sink::ControlPlane(up) => {
            if !up.may_send() {
                return;
            }
            up.drain(log).await;
            // New chunks only once the old ones are gone: while the ingress
            // fails, the queue fills to its bound and no encoding is spent.
            if !up.backlog.is_empty() {
                return;
            }
            let events = log.take();
            if events.is_empty() {
                return;
            }
            let limit = log.settings.chunk_bytes;
            let (chunks, too_large) = encode_chunks(events, encoder, chunker, limit).await;
            if too_large > 0 {
                log.dropped(Drop::TooLarge, too_large);
                warn!(
                    events = too_large,
                    "decision logs: events over the chunk limit dropped"
                );
            }
            for c in chunks {
                log.hold_chunk(c.events, c.gz.len());
                up.backlog.push_back(c);
            }
            up.drain(log).await;
        }
        Sink::Lines(slot) => {
            let events = log.take();
            let Some(mut writer) = slot.take().filter(|_| !events.is_empty()) else {
                return;
            };
            let n = events.len();
            let encoder = encoder.clone();
            let done = tokio::task::spawn_blocking(move || {
                let written = write_lines(&mut *writer, &encoder, &events);
                (writer, written)
            })
            .await;
            match done {
                Ok((writer, written)) => {
                    *slot = Some(writer);
                    match written {
                        Ok(()) => log.shipped(n),
                        Err(e) => {
                            log.metrics.upload_failures.inc();
                            log.dropped(Drop::WriteFailed, n);
                            warn!(error = %e, events = n, "decision logs: cannot write events");
                        }
                    }
                }
                Err(e) => {
                    log.dropped(Drop::WriteFailed, n);
                    warn!(error = %e, "decision logs: the writer failed; no more events are written");
                }
            }
        }
    }
}

async fn encode_chunks(
    events: Vec<Event>,
    encoder: &Arc<Encoder>,
    chunker: &mut Chunker,
    limit: usize,
) -> (Vec<Chunk>, usize) {
    let encoder = encoder.clone();
    let mut mover = std::mem::replace(chunker, Chunker::new(limit));
    let packed = tokio::task::spawn_blocking(move || {
        let encoded = events.iter().map(|e| encoder.event(e)).collect();
        let packed = mover.pack(encoded);
        (mover, packed)
    })
    .await;
    match packed {
        Ok((mover, packed)) => {
            *chunker = mover;
            debug!(chunks = packed.0.len(), "decision logs: encoded");
            packed
        }
        Err(e) => {
            warn!(error = %e, "decision logs: encoding failed");
            (Vec::new(), 0)
        }
    }
}

fn write_lines(out: &mut dyn Write, encoder: &Encoder, events: &[Event]) -> std::io::Result<()> {
    for e in events {
        out.write_all(&encoder.event(e))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
