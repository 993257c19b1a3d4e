//! The transport: the accept loop, each connection's idle watchdog, and the
//! drain on shutdown. Requests it accepts go to [`App::serve_request`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::App;

/// Connections accepted past `max_connections` for the probes alone.
const PROBE_RESERVE: usize = 32;

/// Requests a connection has begun and finished, and the bodies it is
/// reading: its service bumps them, its [`idle_watchdog`] reads them. Over
/// HTTP/1 both run in the connection's task, so the atomics are
/// uncontended.
#[derive(Default)]
pub struct Progress {
    begun: AtomicU64,
    finished: AtomicU64,
    reading: AtomicU64,
}

impl Progress {
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.begun.load(Ordering::Relaxed),
            self.finished.load(Ordering::Relaxed),
            self.reading.load(Ordering::Relaxed),
        )
    }
}

/// A request body being read; no longer once dropped (read, refused, or
/// the request dropped).
pub(super) struct BodyRead<'a>(&'a Progress);

impl BodyRead<'_> {
    pub(super) fn begin(progress: &Progress) -> BodyRead<'_> {
        progress.reading.fetch_add(1, Ordering::Relaxed);
        BodyRead(progress)
    }
}

impl Drop for BodyRead<'_> {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request in flight; counted finished when dropped, so a request whose
/// future is dropped (client gone, HTTP/2 stream reset) is finished too.
struct InFlight(Arc<Progress>);

impl InFlight {
    fn begin(progress: Arc<Progress>) -> InFlight {
        progress.begun.fetch_add(1, Ordering::Relaxed);
        InFlight(progress)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Completes once the connection has made no progress for `limit` to 1.5 ×
/// `limit` while it had no request in flight, or while a request in flight
/// waited for its body: a client that connects and sends its request head
/// or body too slowly (or not at all), or a keep-alive connection left
/// idle. A request whose body has arrived is never cut off, however long
/// it takes to answer. It looks every half `limit`, so it costs one timer
/// tick per half period, not per request. A request counts as finished
/// once its answer is built: a client too slow to read an answer for
/// `limit` is cut off as well.
async fn idle_watchdog(progress: &Progress, limit: Duration) {
    let half = limit / 2;
    let mut last = progress.counts();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(half).await;
        let now = progress.counts();
        let (begun, finished, reading) = now;
        if now != last || (begun != finished && reading == 0) {
            last = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        // Two quiet looks: the last request ended at least one whole half
        // period before the first of them.
        if quiet == 2 {
            return;
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish within the grace period.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    // HTTP/1 gets no timer: hyper's own header read timeout allocates, arms
    // and drops a runtime timer for every request head (the timer wheel's
    // lock each way; its cost is in docs/performance.md). Each connection's
    // `idle_watchdog` enforces the limit with one timer tick per half period.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    // Connections past the cap, for probes only: one request each.
    let mut probe_builder = auto::Builder::new(TokioExecutor::new());
    probe_builder.http1().keep_alive(false);
    probe_builder.http2().timer(TokioTimer::new());
    let served = Arc::new(Semaphore::new(app.settings.max_connections));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    let graceful = GracefulShutdown::new();
    let idle_limit = app.settings.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // At the cap, a connection from the reserve answers the
                // probes alone, so a flood of idle clients cannot make the
                // kubelet restart the pod; past the reserve it is closed.
                let (permit, probes_only) = match served.clone().try_acquire_owned() {
                    Ok(p) => (p, false),
                    Err(_) => match reserve.clone().try_acquire_owned() {
                        Ok(p) => (p, true),
                        Err(_) => {
                            debug!(%peer, "connection refused: at the connection cap and its reserve");
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let progress = Arc::new(Progress::default());
                let service = service_fn({
                    let (app, progress) = (app.clone(), progress.clone());
                    move |req| {
                        let app = app.clone();
                        let in_flight = InFlight::begin(progress.clone());
                        async move {
                            let resp = app.serve_request(req, &in_flight.0, probes_only).await;
                            drop(in_flight);
                            Ok::<_, Infallible>(resp)
                        }
                    }
                });
                let which = if probes_only { &probe_builder } else { &builder };
                let conn = which.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        ended = conn => if let Err(e) = ended {
                            debug!(%peer, error = %e, "connection ended with an error");
                        },
                        () = idle_watchdog(&progress, idle_limit) => {
                            debug!(%peer, limit = ?idle_limit, "closing a connection that sent no complete request in time");
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let in_flight = graceful.count();
    info!(connections = in_flight, "draining");
    tokio::select! {
        _ = graceful.shutdown() => info!("drained"),
        _ = tokio::time::sleep(app.settings.shutdown_grace) => {
            warn!(grace = ?app.settings.shutdown_grace, "grace period over; closing remaining connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Awaits `watchdog` and checks that it fired 1 to 1.5 limits after the
    /// connection fell quiet, on the paused test clock.
    async fn closes_in_time(watchdog: impl Future<Output = ()>) {
        let quiet_since = tokio::time::Instant::now();
        watchdog.await;
        let idle = quiet_since.elapsed();
        assert!(
            idle >= LIMIT && idle <= LIMIT * 3 / 2,
            "closed after {idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_limit() {
        closes_in_time(idle_watchdog(&Progress::default(), LIMIT)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_off() {
        let progress = Arc::new(Progress::default());
        let in_flight = InFlight::begin(progress.clone());
        let watchdog = idle_watchdog(&progress, LIMIT);
        tokio::pin!(watchdog);
        // A slow request, over ten limits long, and the connection stays. It
        // ends between two of the watchdog's looks, so the order of timers
        // due at the same instant cannot matter.
        let slow = tokio::time::sleep(LIMIT * 10 + Duration::from_millis(1300));
        tokio::select! {
            () = &mut watchdog => panic!("closed with a request in flight"),
            () = slow => {}
        }
        // Once it is answered, the idle time counts from the answer.
        drop(in_flight);
        closes_in_time(watchdog).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_body_stops_coming_is_cut_off() {
        let progress = Arc::new(Progress::default());
        let _in_flight = InFlight::begin(progress.clone());
        let _reading = BodyRead::begin(&progress);
        closes_in_time(idle_watchdog(&progress, LIMIT)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_keep_alive_connection_stays_open() {
        let progress = Arc::new(Progress::default());
        let watchdog = idle_watchdog(&progress, LIMIT);
        tokio::pin!(watchdog);
        // A request every 0.9 limit for twenty limits.
        for _ in 0..22 {
            tokio::select! {
                () = &mut watchdog => panic!("closed a connection in use"),
                () = tokio::time::sleep(LIMIT * 9 / 10) => {}
            }
            drop(InFlight::begin(progress.clone()));
        }
        // Then it falls silent, and is closed.
        closes_in_time(watchdog).await;
    }
}
