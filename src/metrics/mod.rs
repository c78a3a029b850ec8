//! Prometheus metrics of the daemon: one registry of families behind cheap atomic updates,
//! encoded in the Prometheus text format (0.0.4) that `promtool check metrics` reads.
//!
//! The process has one [`Metrics`] ([`global`]): the cloud client records its calls into it
//! without knowing about the daemon, the daemon records requests, waits, failures, reconcile
//! findings and state saves, and refreshes the pool gauges after each batch. The daemon serves
//! the text over HTTP (`daemon::metrics_server`); [`http`] has the request handling and the
//! client `terway metrics` uses.
//!
//! Families that upstream Terway has keep its names, labels and unit (milliseconds), so its
//! dashboards work; the others follow Prometheus conventions (seconds, `_total` counters).

pub mod http;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why an allocation failed, as `terway_allocation_failures_total` counts it.
pub mod reason {
    /// Every candidate vSwitch is out of addresses (`InvalidVSwitchId.IpNotEnough`).
    pub const VSWITCH_EXHAUSTED: &str = "vswitch_exhausted";
    /// The cloud refuses more ENIs or addresses (`EniPerInstanceLimitExceeded`,
    /// `QuotaExceeded.*`).
    pub const QUOTA: &str = "quota";
    /// The node is full: every address of the pod CIDR or of the instance type is in use.
    pub const CAPACITY: &str = "capacity";
    /// The cloud answered with an error retrying cannot fix (permission, a wrong id…).
    pub const CLOUD_ERROR: &str = "cloud_error";
    /// The pod waited the full minute while the pool grew.
    pub const TIMEOUT: &str = "timeout";
    pub const OTHER: &str = "other";
    pub const ALL: [&str; 6] = [
        VSWITCH_EXHAUSTED,
        QUOTA,
        CAPACITY,
        CLOUD_ERROR,
        TIMEOUT,
        OTHER,
    ];
}

/// How a pod's wait for an address ended (`terway_pod_wait_seconds`).
pub mod outcome {
    pub const SERVED: &str = "served";
    pub const FAILED: &str = "failed";
    pub const EXPIRED: &str = "expired";
    /// Deleted while waiting, or replaced by a retried ADD of the same attachment.
    pub const CANCELLED: &str = "cancelled";
    pub const ALL: [&str; 4] = [SERVED, FAILED, EXPIRED, CANCELLED];
}

/// What a reconcile against the cloud found (`terway_reconcile_findings_total`).
pub mod finding {
    /// An address (or ENI) a pod holds that the cloud no longer has.
    pub const LOST: &str = "lost";
    /// An address (or ENI) the cloud has that the daemon did not know: now idle.
    pub const ADOPTED: &str = "adopted";
    /// An idle address (or ENI) the cloud no longer has: dropped.
    pub const REMOVED_IDLE: &str = "removed_idle";
    /// An ENI created for this node but never attached (a crash between the two): deleted.
    pub const LEAKED_ENI: &str = "leaked_eni";
    pub const ALL: [&str; 4] = [LOST, ADOPTED, REMOVED_IDLE, LEAKED_ENI];
}

/// The pool as the gauges show it, from an address source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub in_use: u64,
    pub idle: u64,
    pub capacity: u64,
    pub min_idle: u32,
    pub max_idle: u32,
    /// The ENIs of an ENI mode (`None` in VPC mode).
    pub enis: Option<Vec<EniSnapshot>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniSnapshot {
    pub id: String,
    pub mac: String,
    /// Addresses on the ENI (in ENIOnly: its primary IP).
    pub addresses: u32,
    /// Those held by pods.
    pub in_use: u32,
}

/// Distinct values a free-form label (cloud error codes, metadata paths) may take; later ones
/// are counted as `other`, so a misbehaving endpoint cannot grow the registry without bound.
const MAX_FREE_LABELS: usize = 100;

pub struct Metrics {
    registry: Registry,
    pub rpc_latency: HistogramVec,
    pub openapi_latency: HistogramVec,
    pub openapi_calls: IntCounterVec,
    pub openapi_errors: IntCounterVec,
    pub openapi_throttles: IntCounterVec,
    pub metadata_latency: HistogramVec,
    pub info: IntGaugeVec,
    pub pool_total: IntGauge,
    pub pool_idle: IntGauge,
    pub pool_capacity: IntGauge,
    pub pool_min_idle: IntGauge,
    pub pool_max_idle: IntGauge,
    pub eni_count: IntGauge,
    pub eni_ips: IntGaugeVec,
    pub eni_ips_in_use: IntGaugeVec,
    pub pods_waiting: IntGauge,
    pub pod_wait: HistogramVec,
    pub allocation_failures: IntCounterVec,
    pub reconcile_findings: IntCounterVec,
    pub state_save: Histogram,
    /// The ENIs the per-ENI gauges have series for (removed when the ENI goes).
    eni_series: Mutex<BTreeSet<(String, String)>>,
    free_labels: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// 1 ms to 65.5 s, doubling: RPCs (an ADD may wait up to a minute), OpenAPI and metadata calls.
fn ms_buckets() -> Vec<f64> {
    exponential_buckets(1.0, 2.0, 17).expect("valid buckets")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered (tests make their own; the process uses
    /// [`global`]).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let histogram_vec = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram");
            reg(Box::new(h.clone()));
            h
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            reg(Box::new(g.clone()));
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            reg(Box::new(g.clone()));
            g
        };
        let m = Metrics {
            rpc_latency: histogram_vec(
                "terway_rpc_latency",
                "terway rpc latency in ms, from the request read to the reply ready, by request \
                 (rpc_api), whether it failed (error) and how (result: ok or the error kind)",
                ms_buckets(),
                &["rpc_api", "error", "result"],
            ),
            openapi_latency: histogram_vec(
                "aliyun_openapi_latency",
                "aliyun openapi latency in ms, per HTTP exchange (retries count each), by action",
                ms_buckets(),
                &["api", "error"],
            ),
            openapi_calls: counter_vec(
                "aliyun_openapi_calls_total",
                "OpenAPI requests sent, retries included, by action",
                &["api"],
            ),
            openapi_errors: counter_vec(
                "aliyun_openapi_errors_total",
                "OpenAPI requests answered with an error (or lost on the wire: code Transport), \
                 by action and error code",
                &["api", "code"],
            ),
            openapi_throttles: counter_vec(
                "aliyun_openapi_throttles_total",
                "OpenAPI requests refused with Throttling*, by action",
                &["api"],
            ),
            metadata_latency: histogram_vec(
                "aliyun_metadata_latency",
                "aliyun metadata latency in ms, per HTTP exchange, by path (MACs and role names \
                 replaced by placeholders)",
                ms_buckets(),
                &["url", "error"],
            ),
            info: gauge_vec(
                "terway_daemon_info",
                "the running daemon: 1, with its version and mode",
                &["version", "mode"],
            ),
            pool_total: gauge(
                "terway_resource_pool_total_count",
                "terway total resources amount in the pool: addresses (ENIs in ENIOnly) in use \
                 or idle",
            ),
            pool_idle: gauge(
                "terway_resource_pool_idle_count",
                "terway amount of idle resources in the pool",
            ),
            pool_capacity: gauge(
                "terway_resource_pool_capacity",
                "addresses (ENIs in ENIOnly) the node can have for pods",
            ),
            pool_min_idle: gauge(
                "terway_resource_pool_min_idle",
                "the pool's low watermark (min_pool_size; not used in VPC mode)",
            ),
            pool_max_idle: gauge(
                "terway_resource_pool_max_idle",
                "the pool's high watermark (max_pool_size; not used in VPC mode)",
            ),
            eni_count: gauge(
                "terway_eniip_factory_eni_count",
                "ENIs the daemon holds for pods (ENI modes)",
            ),
            eni_ips: gauge_vec(
                "terway_eniip_factory_ip_count",
                "addresses on each ENI the daemon holds, its primary IP included (ENI modes)",
                &["eni", "mac"],
            ),
            eni_ips_in_use: gauge_vec(
                "terway_eni_ips_in_use",
                "addresses of each ENI held by pods (ENI modes)",
                &["eni", "mac"],
            ),
            pods_waiting: gauge(
                "terway_pods_waiting",
                "ADDs parked until the pool has an address for them",
            ),
            pod_wait: histogram_vec(
                "terway_pod_wait_seconds",
                "how long a parked ADD waited, by how the wait ended (served, failed, expired, \
                 cancelled)",
                exponential_buckets(0.01, 2.0, 14).expect("valid buckets"),
                &["outcome"],
            ),
            allocation_failures: counter_vec(
                "terway_allocation_failures_total",
                "ADDs that got no address, by reason (vswitch_exhausted, quota, capacity, \
                 cloud_error, timeout, other)",
                &["reason"],
            ),
            reconcile_findings: counter_vec(
                "terway_reconcile_findings_total",
                "what reconciles with the cloud found: lost (held by a pod, gone from the \
                 cloud), adopted, removed_idle, leaked_eni (deleted)",
                &["finding"],
            ),
            state_save: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "terway_state_save_seconds",
                        "time to write the state file (temp file, fsync, rename, directory fsync)",
                    )
                    .buckets(exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
                )
                .expect("valid histogram");
                reg(Box::new(h.clone()));
                h
            },
            eni_series: Mutex::new(BTreeSet::new()),
            free_labels: Mutex::new(BTreeSet::new()),
            registry,
        };
        // Series with known labels exist from the start: rate() works from the first failure.
        for r in reason::ALL {
            m.allocation_failures.with_label_values(&[r]);
        }
        for f in finding::ALL {
            m.reconcile_findings.with_label_values(&[f]);
        }
        for o in outcome::ALL {
            m.pod_wait.with_label_values(&[o]);
        }
        m
    }

    /// Every family in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Writing to a Vec fails only on a malformed family, which `new` rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("encode metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A request answered (`op`: the request's op name).
    pub fn rpc(&self, op: &str, failed: Option<crate::Kind>, took: Duration) {
        let result = failed.map_or_else(|| "ok".to_string(), |k| format!("{k:?}"));
        self.rpc_latency
            .with_label_values(&[op, if failed.is_some() { "true" } else { "false" }, &result])
            .observe(ms(took));
    }

    /// One OpenAPI exchange of `action`; `code` is the error code when it failed, `throttled`
    /// whether that code is a throttling one.
    pub fn openapi(&self, action: &str, code: Option<&str>, throttled: bool, took: Duration) {
        let error = if code.is_some() { "true" } else { "false" };
        self.openapi_latency
            .with_label_values(&[action, error])
            .observe(ms(took));
        self.openapi_calls.with_label_values(&[action]).inc();
        if let Some(code) = code {
            let code = self.free_label(code);
            self.openapi_errors
                .with_label_values(&[action, &code])
                .inc();
            if throttled {
                self.openapi_throttles.with_label_values(&[action]).inc();
            }
        }
    }

    /// One metadata exchange of `path` (relative to `latest/`).
    pub fn metadata(&self, path: &str, failed: bool, took: Duration) {
        let url = self.free_label(&metadata_url(path));
        self.metadata_latency
            .with_label_values(&[url.as_str(), if failed { "true" } else { "false" }])
            .observe(ms(took));
    }

    /// `value` as a label value, or `other` once [`MAX_FREE_LABELS`] distinct ones were seen.
    fn free_label(&self, value: &str) -> String {
        let clean: String = value
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(80)
            .collect();
        let mut seen = self.free_labels.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&clean) {
            return clean;
        }
        if seen.len() >= MAX_FREE_LABELS {
            return "other".into();
        }
        seen.insert(clean.clone());
        clean
    }

    pub fn set_info(&self, mode: &str) {
        self.info.with_label_values(&[crate::VERSION, mode]).set(1);
    }

    /// The pool gauges from a source's snapshot; per-ENI series of ENIs that are gone are removed.
    pub fn set_pool(&self, p: &PoolSnapshot) {
        let g = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g(&self.pool_total, p.in_use + p.idle);
        g(&self.pool_idle, p.idle);
        g(&self.pool_capacity, p.capacity);
        g(&self.pool_min_idle, u64::from(p.min_idle));
        g(&self.pool_max_idle, u64::from(p.max_idle));
        let Some(enis) = &p.enis else {
            return;
        };
        g(&self.eni_count, enis.len() as u64);
        let mut series = self.eni_series.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeSet<(String, String)> =
            enis.iter().map(|e| (e.id.clone(), e.mac.clone())).collect();
        for (id, mac) in series.difference(&now) {
            let _ = self.eni_ips.remove_label_values(&[id, mac]);
            let _ = self.eni_ips_in_use.remove_label_values(&[id, mac]);
        }
        for e in enis {
            let labels = [e.id.as_str(), e.mac.as_str()];
            self.eni_ips
                .with_label_values(&labels)
                .set(i64::from(e.addresses));
            self.eni_ips_in_use
                .with_label_values(&labels)
                .set(i64::from(e.in_use));
        }
        *series = now;
    }

    /// A parked ADD left the queue after `waited`, ended as `outcome`.
    pub fn waited(&self, outcome: &str, waited: Duration) {
        self.pod_wait
            .with_label_values(&[outcome])
            .observe(waited.as_secs_f64());
    }

    pub fn failed_allocation(&self, reason: &str) {
        self.allocation_failures.with_label_values(&[reason]).inc();
    }

    pub fn findings(&self, finding: &str, n: usize) {
        if n > 0 {
            self.reconcile_findings
                .with_label_values(&[finding])
                .inc_by(n as u64);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The metadata path as a label: per-ENI paths name the MAC, credential paths the role; both
/// become placeholders so the label set stays small.
pub fn metadata_url(path: &str) -> String {
    let path = path.trim_matches('/');
    let mut out: Vec<&str> = Vec::new();
    let mut after_credentials = false;
    for seg in path.split('/') {
        let is_mac = seg.len() == 17
            && seg
                .split(':')
                .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
        if is_mac {
            out.push("<mac>");
        } else if after_credentials {
            out.push("<role>");
        } else {
            out.push(seg);
        }
        after_credentials = seg == "security-credentials";
    }
    out.join("/")
}

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// The process's registry: what the daemon serves and the cloud client records into.
pub fn global() -> &'static Arc<Metrics> {
    GLOBAL.get_or_init(|| Arc::new(Metrics::new()))
}

#[cfg(test)]
mod tests;
