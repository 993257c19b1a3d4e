//! Decision logs (docs/decision-logs.md): every decision the PDP makes, as
//! an event of OPA's decision-log protocol, shipped the way Permit's PDP
//! ships them, so that it appears in Permit's audit log and can be replayed
//! from there; or written to standard output or a rotated file.
//!
//! The decision path only stamps the event (an id, the time, the request's
//! bytes and the answer's) and pushes it into a bounded queue; it never
//! waits and never encodes. The [`sink`] task takes the queue whole at an
//! interval, encodes the events ([`encode`]) and ships them. When the queue
//! is full (in events, or in bytes counted with the chunks still waiting to
//! be uploaded), an event is dropped and counted, so a stalled ingress
//! costs the decision path a lock and a comparison, and memory stays
//! within the bound.

mod encode;
mod sink;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use uuid::Uuid;

use crate::metrics::Endpoint;
pub use encode::{Mask, MaskError};
pub use sink::{run, Sink, SinkError, Uploader};

/// The response header that carries a decision's id.
pub const DECISION_ID_HEADER: HeaderName = HeaderName::from_static("x-decision-id");

/// Where the events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Posted to `{PDP_CONTROL_PLANE}/v1/decision_logs/ingress`.
    ControlPlane,
    /// One JSON event per line on standard output.
    Stdout,
    /// One JSON event per line in `path`, rotated at `max_bytes` with
    /// `keep` older files (`path.1` the newest of them).
    File {
        path: std::path::PathBuf,
        max_bytes: usize,
        keep: usize,
    },
}

/// How the log is bounded and shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events held (queued and awaiting upload) at most.
    pub buffer_events: usize,
    /// Bytes held at most: queued events' request and answer bytes, plus
    /// the encoded chunks not yet uploaded.
    pub buffer_bytes: usize,
    /// Events are shipped after a random delay in this range, as OPA's
    /// `min_delay_seconds` and `max_delay_seconds` (1 and 10 at Permit's
    /// PDP), or sooner once [`Settings::flush_events`] are queued.
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub flush_events: usize,
    /// JSON pointers into `input` whose values are replaced before an
    /// event leaves the process.
    pub masks: Vec<Mask>,
    /// A gzipped chunk is at most this long (OPA's
    /// `upload_size_limit_bytes`, 65,536 at Permit's PDP).
    pub chunk_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            buffer_events: 100_000,
            buffer_bytes: 32 << 20,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            flush_events: 10_000,
            masks: Vec::new(),
            chunk_bytes: 64 << 10,
        }
    }
}

/// One decision, as stamped on the decision path.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Uuid,
    pub path: &'static str,
    /// The request body as received.
    pub input: Bytes,
    /// The answer's body.
    pub result: Bytes,
    pub at: SystemTime,
    pub took: Duration,
    /// `input` is a whole event a follower encoded (and masked), shipped
    /// as it is.
    pub forwarded: bool,
}

impl Event {
    /// What the event holds while it is queued: its bytes and a share for
    /// the struct and the queue's slot.
    fn cost(&self) -> usize {
        cost(self.input.len(), self.result.len())
    }
}

const EVENT_OVERHEAD: usize = 128;
/// The most a follower's upload may hold uncompressed (its chunks are
/// 64 KiB gzipped).
const MAX_INGEST_BYTES: usize = 16 << 20;

fn cost(input: usize, result: usize) -> usize {
    input + result + EVENT_OVERHEAD
}

/// The OPA path each endpoint's decisions are logged under. `permit/root`
/// is the one Permit's audit log reads and replays; the others are the
/// names of the Permit policy rules that answer the same endpoints, and
/// `authzen/...` for the AuthZEN API.
pub fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Allowed => "permit/root",
        Endpoint::Bulk => "permit/bulk",
        Endpoint::AllTenants => "permit/any_tenant",
        Endpoint::UserPermissions => "permit/user_permissions",
        Endpoint::AuthorizedUsers => "permit/authorized_users/authorized_users",
        Endpoint::UserTenants => "permit/user_tenants",
        Endpoint::AuthzenEvaluation => "authzen/evaluation",
        Endpoint::AuthzenEvaluations => "authzen/evaluations",
        Endpoint::AuthzenSearch => "authzen/search",
    }
}

/// Why an event was not shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The queue was at its bound in events or bytes.
    BufferFull,
    /// One event alone, gzipped, is over the chunk limit.
    TooLarge,
    /// The ingress refused the chunk (a 4xx other than 408 and 429).
    Rejected,
    /// The file or standard output could not be written.
    WriteFailed,
    /// Still queued when the process stopped and the last flush failed.
    Shutdown,
}

impl Drop {
    const ALL: [Drop; 5] = [
        Drop::BufferFull,
        Drop::TooLarge,
        Drop::Rejected,
        Drop::WriteFailed,
        Drop::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            Drop::BufferFull => "buffer_full",
            Drop::TooLarge => "too_large",
            Drop::Rejected => "rejected",
            Drop::WriteFailed => "write_failed",
            Drop::Shutdown => "shutdown",
        }
    }
}

struct LogMetrics {
    events: IntCounter,
    shipped: IntCounter,
    dropped: Vec<IntCounter>,
    uploads: IntCounterVec,
    upload_failures: IntCounter,
    queue_events: IntGauge,
    queue_bytes: IntGauge,
}

impl LogMetrics {
    fn register(registry: &Registry) -> prometheus::Result<LogMetrics> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "pdp_decision_log_dropped_total",
                "Decision-log events dropped, by reason: buffer_full, too_large, rejected, write_failed, shutdown",
            ),
            &["reason"],
        )?;
        let uploads = IntCounterVec::new(
            Opts::new(
                "pdp_decision_log_uploads_total",
                "Chunks posted to the control plane's decision-log ingress, by its status (or `error`)",
            ),
            &["status"],
        )?;
        let m = LogMetrics {
            events: IntCounter::new(
                "pdp_decision_log_events_total",
                "Decisions stamped for the decision log",
            )?,
            shipped: IntCounter::new(
                "pdp_decision_log_shipped_total",
                "Decision-log events accepted by the ingress or written out",
            )?,
            dropped: Drop::ALL
                .iter()
                .map(|d| dropped.with_label_values(&[d.label()]))
                .collect(),
            uploads: uploads.clone(),
            upload_failures: IntCounter::new(
                "pdp_decision_log_upload_failures_total",
                "Failed decision-log uploads or writes (each is retried after a back-off, or its events dropped)",
            )?,
            queue_events: IntGauge::new(
                "pdp_decision_log_queue_events",
                "Decision-log events held: queued, or in chunks awaiting upload",
            )?,
            queue_bytes: IntGauge::new(
                "pdp_decision_log_queue_bytes",
                "Bytes the decision log holds: queued events and chunks awaiting upload",
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.shipped.clone()))?;
        registry.register(Box::new(dropped))?;
        registry.register(Box::new(uploads))?;
        registry.register(Box::new(m.upload_failures.clone()))?;
        registry.register(Box::new(m.queue_events.clone()))?;
        registry.register(Box::new(m.queue_bytes.clone()))?;
        Ok(m)
    }
}

/// The queue between the decision path and the sink.
pub struct DecisionLog {
    settings: Settings,
    queue: Mutex<Vec<Event>>,
    /// Bytes held, queued or encoded ([`Settings::buffer_bytes`]).
    held_bytes: AtomicUsize,
    /// Events held in chunks awaiting upload.
    held_in_chunks: AtomicUsize,
    wake: tokio::sync::Notify,
    /// This process, in every event's `labels.id`.
    pub instance: Uuid,
    metrics: LogMetrics,
}

impl DecisionLog {
    pub fn new(settings: Settings, registry: &Registry) -> prometheus::Result<DecisionLog> {
        Ok(DecisionLog {
            settings,
            queue: Mutex::new(Vec::new()),
            held_bytes: AtomicUsize::new(0),
            held_in_chunks: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            instance: uuid::Builder::from_random_bytes(rand::random()).into_uuid(),
            metrics: LogMetrics::register(registry)?,
        })
    }

    /// Stamps one decision; returns its id for the response header. Never
    /// blocks on the sink: a full queue drops the event and counts it.
    pub fn record(
        &self,
        endpoint: Endpoint,
        input: &[u8],
        result: &Bytes,
        took: Duration,
    ) -> HeaderValue {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let header =
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
                .expect("a UUID is a header value");
        self.metrics.events.inc();
        let cost = cost(input.len(), result.len());
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let held = queue.len() + self.held_in_chunks.load(Ordering::Relaxed);
            if held >= self.settings.buffer_events
                || self.held_bytes.load(Ordering::Relaxed) + cost > self.settings.buffer_bytes
            {
                None
            } else {
                queue.push(Event {
                    id,
                    path: path_of(endpoint),
                    // A copy: the body may be a slice of the connection's
                    // read buffer, which the queue must not keep alive.
                    input: Bytes::copy_from_slice(input),
                    result: result.clone(),
                    at: SystemTime::now(),
                    took,
                    forwarded: false,
                });
                self.held_bytes.fetch_add(cost, Ordering::Relaxed);
                Some(queue.len())
            }
        };
        match queued {
            None => self.dropped(Drop::BufferFull, 1),
            Some(n) if n == self.settings.flush_events => self.wake.notify_one(),
            Some(_) => {}
        }
        header
    }

    /// Queues the events of a follower's upload (a gzipped or plain JSON
    /// array, as this PDP's own uploads are) to ship with this PDP's own;
    /// returns how many were queued. Past the bound the rest are dropped
    /// and counted, as decisions' events are.
    pub fn ingest(&self, body: &[u8], gzipped: bool) -> Result<usize, String> {
        use std::io::Read;
        let mut plain = Vec::new();
        let read = if gzipped {
            flate2::read::GzDecoder::new(body)
                .take(MAX_INGEST_BYTES as u64 + 1)
                .read_to_end(&mut plain)
        } else {
            plain.extend_from_slice(body);
            Ok(plain.len())
        };
        read.map_err(|e| format!("the body is not gzip: {e}"))?;
        if plain.len() > MAX_INGEST_BYTES {
            return Err(format!("more than {MAX_INGEST_BYTES} bytes uncompressed"));
        }
        let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&plain)
            .map_err(|e| format!("not a JSON array of events: {e}"))?;
        // Copied out before the queue is locked: decisions queue theirs
        // under that lock, and must not wait on a follower's batch.
        let at = SystemTime::now();
        let events: Vec<Event> = events
            .into_iter()
            .map(|e| Event {
                id: Uuid::nil(),
                path: "",
                input: Bytes::copy_from_slice(e.get().as_bytes()),
                result: Bytes::new(),
                at,
                took: Duration::ZERO,
                forwarded: true,
            })
            .collect();
        self.metrics.events.inc_by(events.len() as u64);
        let mut queued = 0;
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            let cost = e.cost();
            let held = queue.len() + self.held_in_chunks.load(Ordering::Relaxed);
            if held >= self.settings.buffer_events
                || self.held_bytes.load(Ordering::Relaxed) + cost > self.settings.buffer_bytes
            {
                self.dropped(Drop::BufferFull, 1);
                continue;
            }
            queue.push(e);
            self.held_bytes.fetch_add(cost, Ordering::Relaxed);
            queued += 1;
        }
        Ok(queued)
    }

    /// Everything queued, oldest first; the queue starts again empty.
    fn take(&self) -> Vec<Event> {
        let events = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let cost: usize = events.iter().map(Event::cost).sum();
        self.held_bytes.fetch_sub(cost, Ordering::Relaxed);
        events
    }

    /// A chunk of `events` events and `bytes` bytes is held for upload.
    fn hold_chunk(&self, events: usize, bytes: usize) {
        self.held_in_chunks.fetch_add(events, Ordering::Relaxed);
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A held chunk is let go (uploaded or dropped).
    fn release_chunk(&self, events: usize, bytes: usize) {
        self.held_in_chunks.fetch_sub(events, Ordering::Relaxed);
        self.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn dropped(&self, why: Drop, n: usize) {
        self.metrics.dropped[why as usize].inc_by(n as u64);
    }

    fn shipped(&self, n: usize) {
        self.metrics.shipped.inc_by(n as u64);
    }

    /// What the authenticated `/health` shows of the log.
    pub fn status(&self) -> serde_json::Value {
        let queued = self.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        let dropped: serde_json::Map<String, serde_json::Value> = Drop::ALL
            .iter()
            .map(|d| {
                let n = self.metrics.dropped[*d as usize].get();
                (d.label().to_owned(), n.into())
            })
            .collect();
        serde_json::json!({
            "instance": self.instance.to_string(),
            "events": self.metrics.events.get(),
            "shipped": self.metrics.shipped.get(),
            "dropped": dropped,
            "held_events": queued + self.held_in_chunks.load(Ordering::Relaxed),
            "held_bytes": self.held_bytes.load(Ordering::Relaxed),
            "upload_failures": self.metrics.upload_failures.get(),
        })
    }

    /// Refreshes the queue gauges.
    fn observe(&self) {
        let queued = self.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        let held = queued + self.held_in_chunks.load(Ordering::Relaxed);
        self.metrics.queue_events.set(held as i64);
        self.metrics
            .queue_bytes
            .set(self.held_bytes.load(Ordering::Relaxed) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(settings: Settings) -> DecisionLog {
        DecisionLog::new(settings, &Registry::new()).unwrap()
    }

    #[test]
    fn record_stamps_an_id_and_drops_past_the_bound() {
        let log = log(Settings {
            buffer_events: 3,
            ..Settings::default()
        });
        let answer = Bytes::from_static(b"{\"allow\":true}");
        let mut ids = Vec::new();
        for _ in 0..5 {
            let h = log.record(
                Endpoint::Allowed,
                b"{\"user\":\"u\"}",
                &answer,
                Duration::ZERO,
            );
            ids.push(Uuid::parse_str(h.to_str().unwrap()).unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 5);
        assert!(ids.iter().all(|id| id.get_version_num() == 4));
        assert_eq!(log.metrics.dropped[Drop::BufferFull as usize].get(), 2);
        let events = log.take();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].path, "permit/root");
        assert_eq!(log.held_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_byte_bound_counts_chunks_awaiting_upload() {
        let log = log(Settings {
            buffer_bytes: 1000,
            ..Settings::default()
        });
        log.hold_chunk(10, 900);
        let answer = Bytes::from_static(b"{}");
        log.record(Endpoint::Bulk, &[b' '; 100], &answer, Duration::ZERO);
        assert_eq!(log.metrics.dropped[Drop::BufferFull as usize].get(), 1);
        log.release_chunk(10, 900);
        log.record(Endpoint::Bulk, &[b' '; 100], &answer, Duration::ZERO);
        assert_eq!(log.take().len(), 1);
    }
}
