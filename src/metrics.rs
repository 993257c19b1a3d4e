//! Prometheus metrics of the HTTP edge, the decisions and the snapshot.
//!
//! Each struct registers its series once in the registry it is given; the
//! hot path holds pre-resolved label children, so counting a decision is an
//! atomic add, never a label lookup. The sync task registers its own series
//! in the same registry.

use std::time::{Duration, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::http::Route;
use crate::store::Store;

/// Endpoints that make decisions, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Allowed,
    Bulk,
    AllTenants,
    UserPermissions,
    AuthorizedUsers,
    UserTenants,
    AuthzenEvaluation,
    AuthzenEvaluations,
    AuthzenSearch,
}

impl Endpoint {
    const ALL: [Endpoint; 9] = [
        Endpoint::Allowed,
        Endpoint::Bulk,
        Endpoint::AllTenants,
        Endpoint::UserPermissions,
        Endpoint::AuthorizedUsers,
        Endpoint::UserTenants,
        Endpoint::AuthzenEvaluation,
        Endpoint::AuthzenEvaluations,
        Endpoint::AuthzenSearch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Allowed => "allowed",
            Endpoint::Bulk => "allowed_bulk",
            Endpoint::AllTenants => "allowed_all_tenants",
            Endpoint::UserPermissions => "user_permissions",
            Endpoint::AuthorizedUsers => "authorized_users",
            Endpoint::UserTenants => "user_tenants",
            Endpoint::AuthzenEvaluation => "authzen_evaluation",
            Endpoint::AuthzenEvaluations => "authzen_evaluations",
            Endpoint::AuthzenSearch => "authzen_search",
        }
    }
}

struct EndpointSeries {
    allow: IntCounter,
    deny: IntCounter,
    latency: Histogram,
}

/// Statuses counted under their own label; the rest are `other`.
const STATUSES: [u16; 13] = [
    200, 202, 400, 401, 403, 404, 405, 413, 415, 422, 500, 503, 0,
];

pub struct Metrics {
    registry: Registry,
    endpoints: Vec<EndpointSeries>,
    /// `http[route][status index]`, resolved once.
    http: Vec<Vec<IntCounter>>,
    snapshot_objects: IntGaugeVec,
    snapshot_loaded_at: Gauge,
    snapshot_confirmed_age: Gauge,
    snapshot_swaps: IntGauge,
    pending_writes: IntGauge,
}

impl Metrics {
    /// Registers every series in `registry`; the HTTP series get one child
    /// per route of the route table, and one for requests that matched none.
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        // process_resident_memory_bytes, process_cpu_seconds_total, open
        // file descriptors: what a dashboard sizes a sidecar by.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "pdp_decisions_total",
                "Decisions made, by endpoint and outcome.",
            ),
            &["endpoint", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "pdp_decision_duration_seconds",
                "Time to decide one request (after decoding, before encoding), by endpoint.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2, 0.1,
            ]),
            &["endpoint"],
        )?;
        let http = IntCounterVec::new(
            Opts::new(
                "pdp_http_requests_total",
                "HTTP requests, by route and status.",
            ),
            &["route", "status"],
        )?;
        let snapshot_objects = IntGaugeVec::new(
            Opts::new(
                "pdp_snapshot_objects",
                "Objects in the serving snapshot, by kind.",
            ),
            &["kind"],
        )?;
        let snapshot_confirmed_age = Gauge::new(
            "pdp_snapshot_age_seconds",
            "Seconds since the serving snapshot was swapped in or confirmed current by a sync.",
        )?;
        let snapshot_loaded_at = Gauge::new(
            "pdp_snapshot_loaded_timestamp_seconds",
            "Unix time at which the serving snapshot was swapped in.",
        )?;
        let snapshot_swaps =
            IntGauge::new("pdp_snapshot_swaps", "Snapshots swapped in since start.")?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(http.clone()))?;
        registry.register(Box::new(snapshot_objects.clone()))?;
        registry.register(Box::new(snapshot_confirmed_age.clone()))?;
        registry.register(Box::new(snapshot_loaded_at.clone()))?;
        registry.register(Box::new(snapshot_swaps.clone()))?;
        let pending_writes = IntGauge::new(
            "pdp_snapshot_pending_writes",
            "Writes served through the facts proxy and not yet in a full sync's snapshot.",
        )?;
        registry.register(Box::new(pending_writes.clone()))?;
        let endpoints = Endpoint::ALL
            .iter()
            .map(|e| EndpointSeries {
                allow: decisions.with_label_values(&[e.label(), "allow"]),
                deny: decisions.with_label_values(&[e.label(), "deny"]),
                latency: latency.with_label_values(&[e.label()]),
            })
            .collect();
        let http = Route::labels()
            .iter()
            .map(|route| {
                STATUSES
                    .iter()
                    .map(|&s| http.with_label_values(&[route, status_label(s)]))
                    .collect()
            })
            .collect();
        Ok(Metrics {
            registry,
            endpoints,
            http,
            snapshot_objects,
            snapshot_loaded_at,
            snapshot_confirmed_age,
            snapshot_swaps,
            pending_writes,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn series(&self, e: Endpoint) -> &EndpointSeries {
        &self.endpoints[e as usize]
    }

    pub fn decisions(&self, e: Endpoint, allowed: u64, denied: u64, took: Duration) {
        let s = self.series(e);
        s.allow.inc_by(allowed);
        s.deny.inc_by(denied);
        s.latency.observe(took.as_secs_f64());
    }

    /// Counts a response to a request for `route` (`None`: no route matched).
    pub fn http(&self, route: Option<Route>, status: u16) {
        let route = route.map_or(Route::ALL.len(), Route::index);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len() - 1);
        if let Some(counter) = self.http.get(route).and_then(|r| r.get(s)) {
            counter.inc();
        }
    }

    /// Brings the snapshot gauges up to date with the store.
    fn observe(&self, store: &Store) {
        let Some(loaded) = store.load() else {
            return;
        };
        let counts = loaded.snapshot.counts();
        let set = |kind: &str, n: usize| {
            self.snapshot_objects
                .with_label_values(&[kind])
                .set(n as i64);
        };
        set("users", counts.users);
        set("tenants", counts.tenants);
        set("roles", counts.roles);
        set("resource_types", counts.resource_types);
        set("resource_instances", counts.resource_instances);
        set("tenant_role_assignments", counts.tenant_role_assignments);
        set(
            "instance_role_assignments",
            counts.instance_role_assignments,
        );
        set("relationship_tuples", counts.relationship_tuples);
        set("condition_sets", counts.condition_sets);
        set("condition_set_rules", counts.condition_set_rules);
        set("dropped_facts", counts.dropped_facts);
        let loaded_at = loaded
            .meta
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.snapshot_loaded_at.set(loaded_at.as_secs_f64());
        self.snapshot_confirmed_age
            .set(store.freshness_age().as_secs_f64());
        self.snapshot_swaps.set(store.swaps() as i64);
        self.pending_writes
            .set(loaded.snapshot.applied_writes() as i64);
    }

    /// The text exposition format.
    pub fn render(&self, store: &Store) -> Vec<u8> {
        self.observe(store);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family that fails
        // to encode is dropped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        422 => "422",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}
