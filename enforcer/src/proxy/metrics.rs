//! The proxy's metric families: Istio's HTTP request metrics (reporter="source", Istio's full
//! label set, the same as the agent's `istio_tcp_*` series) and the SNI decisions. Registered once
//! into the agent's registry when the proxy starts. Label values are bounded: registry names and
//! workloads, never a raw IP or SNI.

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use std::sync::Mutex;

use super::ServiceLabels;
use crate::metrics::{Destination, RequestLabels, Source};

/// Istio's request duration buckets (ms).
pub(crate) const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes): 1, 10, ..., 1e9.
pub(crate) const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// What one finished request is counted under, before the agent's workload metadata is added:
/// the workload's name, the destination service, the status code, the response flags and, for a
/// gRPC request, its gRPC status.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct IstioHttpLabels {
    pub workload: String,
    pub service: ServiceLabels,
    pub code: u16,
    pub flags: String,
    /// `Some`: a gRPC request (`request_protocol="grpc"`) and its status.
    pub grpc: Option<u32>,
}

impl IstioHttpLabels {
    pub fn new(workload: &str, service: &ServiceLabels, code: u16, flags: &str, grpc: Option<u32>) -> Self {
        Self { workload: workload.into(), service: service.clone(), code, flags: flags.into(), grpc }
    }

    /// Istio's full label set (the same as the agent's TCP series carry).
    fn full(&self, source: &Source) -> RequestLabels {
        let dst = Destination {
            service: self.service.destination_service.clone(),
            service_name: self.service.destination_service_name.clone(),
            service_namespace: self.service.destination_service_namespace.clone(),
        };
        let mut labels = RequestLabels::new(source, &dst, self.code, &self.flags);
        if let Some(status) = self.grpc {
            // Envoy's grpc_response_status: the numeric status; request_protocol "grpc".
            labels.istio.request_protocol = "grpc".into();
            labels.grpc_response_status = status.to_string();
        }
        labels
    }
}

/// The source labels of a workload name (the agent's workload metadata).
pub type SourceFn = dyn Fn(&str) -> Source + Send + Sync;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SniLabels {
    pub destination_service: String,
    pub decision: String,
}

type HistFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}
fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// Clone handles to the live families (clones share the series).
#[derive(Clone)]
pub struct ProxyMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: HistFamily,
    pub(crate) request_bytes: HistFamily,
    pub(crate) response_bytes: HistFamily,
    pub(crate) sni: Family<SniLabels, Counter>,
    /// Set once by the agent; without it a workload is known by its name only.
    source: Arc<OnceLock<Box<SourceFn>>>,
    pub(crate) refusals: Family<RefusalLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            request_bytes: Family::new_with_constructor(size_histogram as fn() -> Histogram),
            response_bytes: Family::new_with_constructor(size_histogram as fn() -> Histogram),
            sni: Family::default(),
            source: Arc::default(),
            refusals: Family::default(),
        }
    }

    /// How a workload name becomes its source labels (the agent's workload metadata).
    pub fn set_source(&self, f: Box<SourceFn>) {
        let _ = self.source.set(f);
    }

    /// Registers the families into the agent's registry, once, when the proxy starts: Istio's
    /// request metrics under their own names, the SNI decisions under `enforcer_`.
    pub fn register(&self, reg: &mut Registry) {
        // Counters get "_total" appended by prometheus-client.
        reg.register("istio_requests", "Requests through the L7 proxy", self.requests.clone());
        reg.register(
            "istio_request_duration_milliseconds",
            "Request duration (ms), from the request's arrival to the end of the response",
            self.duration.clone(),
        );
        reg.register("istio_request_bytes", "Request body sizes (bytes)", self.request_bytes.clone());
        reg.register("istio_response_bytes", "Response body sizes (bytes)", self.response_bytes.clone());
        let enforcer = reg.sub_registry_with_prefix("enforcer");
        enforcer.register("sni_decisions", "TLS connections checked by SNI, by decision", self.sni.clone());
        enforcer.register(
            "proxy_refusals",
            "Connections and requests the L7 proxy refused, by reason (each also an event)",
            self.refusals.clone(),
        );
    }

    pub(crate) fn refusal(&self, reason: &str) {
        self.refusals.get_or_create(&RefusalLabels { reason: reason.into() }).inc();
    }

    pub(crate) fn sni_decision(&self, destination_service: &str, allowed: bool) {
        self.sni
            .get_or_create(&SniLabels {
                destination_service: destination_service.into(),
                decision: if allowed { "allowed" } else { "denied" }.into(),
            })
            .inc();
    }
}

/// The metric handles of one label set, taken from the families once (clones share the series).
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// (service Arc address, response code, flags, gRPC status) -> handles.
type SeriesEntry = (usize, u16, &'static str, Option<u32>, Arc<Handles>);

/// One connection's series, by (service, response code, flags): the label set is built and
/// hashed into the families once per connection and series, not once per request.
pub(crate) struct SeriesCache {
    metrics: ProxyMetrics,
    workload: Arc<str>,
    entries: Mutex<Vec<SeriesEntry>>,
}

impl SeriesCache {
    pub(crate) fn new(metrics: ProxyMetrics, workload: Arc<str>) -> Arc<Self> {
        Arc::new(Self { metrics, workload, entries: Mutex::default() })
    }

    fn handles(&self, service: &Arc<ServiceLabels>, code: u16, flags: &'static str, grpc: Option<u32>) -> Arc<Handles> {
        let key = Arc::as_ptr(service) as usize;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, _, _, h)) =
            entries.iter().find(|(k, c, f, g, _)| *k == key && *c == code && *f == flags && *g == grpc)
        {
            return h.clone();
        }
        let labels = IstioHttpLabels::new(&self.workload, service, code, flags, grpc);
        let m = &self.metrics;
        let source = match m.source.get() {
            Some(f) => f(&labels.workload),
            None => Source::named(&labels.workload, None),
        };
        let labels = labels.full(&source);
        let h = Arc::new(Handles {
            requests: m.requests.get_or_create(&labels).clone(),
            duration: m.duration.get_or_create(&labels).clone(),
            request_bytes: m.request_bytes.get_or_create(&labels).clone(),
            response_bytes: m.response_bytes.get_or_create(&labels).clone(),
        });
        // Bounded: a connection sees few codes; a pathological one resets its cache.
        if entries.len() >= 64 {
            entries.clear();
        }
        entries.push((key, code, flags, grpc, h.clone()));
        h
    }
}

/// Where one request is recorded once its response ends (the flags are known only then). The
/// service Arc is kept alive with it, so its address identifies it in the cache.
pub(crate) struct RequestSeries {
    cache: Arc<SeriesCache>,
    service: Arc<ServiceLabels>,
    code: u16,
    /// A gRPC request (`content-type: application/grpc...`).
    grpc: bool,
}

/// The gRPC status a response without `grpc-status` stands for (the HTTP-to-gRPC status
/// mapping of gRPC's doc/http-grpc-status-mapping.md; a 200 without one: UNKNOWN).
pub(crate) fn grpc_status_of_http(code: u16) -> u32 {
    match code {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

impl RequestSeries {
    pub(crate) fn new(cache: &Arc<SeriesCache>, service: &Arc<ServiceLabels>, code: u16, grpc: bool) -> Self {
        Self { cache: cache.clone(), service: service.clone(), code, grpc }
    }

    /// `grpc_status`: the response's `grpc-status` (headers or trailers), if it had one.
    pub(crate) fn record(
        &self,
        flags: &'static str,
        grpc_status: Option<u32>,
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let grpc = self.grpc.then(|| grpc_status.unwrap_or_else(|| grpc_status_of_http(self.code)));
        let h = self.cache.handles(&self.service, self.code, flags, grpc);
        h.requests.inc();
        h.duration.observe(duration_ms);
        h.request_bytes.observe(req_bytes as f64);
        h.response_bytes.observe(resp_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_get_their_status_and_protocol() {
        let svc = ServiceLabels::named("api.test");
        let src = Source::named("app", None);
        let http = IstioHttpLabels::new("app", &svc, 200, "-", None).full(&src);
        assert_eq!((http.istio.request_protocol.as_str(), http.grpc_response_status.as_str()), ("http", ""));
        let grpc = IstioHttpLabels::new("app", &svc, 200, "-", Some(5)).full(&src);
        assert_eq!((grpc.istio.request_protocol.as_str(), grpc.grpc_response_status.as_str()), ("grpc", "5"));
        assert_eq!(grpc_status_of_http(503), 14, "UNAVAILABLE");
        assert_eq!(grpc_status_of_http(404), 12, "UNIMPLEMENTED");
        assert_eq!(grpc_status_of_http(200), 2, "no grpc-status: UNKNOWN");
    }
}
