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
/// the workload's name, the destination service, the status code and the response flags.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct IstioHttpLabels {
    pub workload: String,
    pub service: ServiceLabels,
    pub code: u16,
    pub flags: String,
}

impl IstioHttpLabels {
    pub fn new(workload: &str, service: &ServiceLabels, code: u16, flags: &str) -> Self {
        Self { workload: workload.into(), service: service.clone(), code, flags: flags.into() }
    }

    /// Istio's full label set (the same as the agent's TCP series carry).
    fn full(&self, source: &Source) -> RequestLabels {
        let dst = Destination {
            service: self.service.destination_service.clone(),
            service_name: self.service.destination_service_name.clone(),
            service_namespace: self.service.destination_service_namespace.clone(),
        };
        RequestLabels::new(source, &dst, self.code, &self.flags)
    }
}

/// The source labels of a workload name (the agent's workload metadata).
pub type SourceFn = dyn Fn(&str) -> Source + Send + Sync;

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
        reg.sub_registry_with_prefix("enforcer").register(
            "sni_decisions",
            "TLS connections checked by SNI, by decision",
            self.sni.clone(),
        );
    }

    /// One finished request.
    pub(crate) fn record(&self, labels: &IstioHttpLabels, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        let source = match self.source.get() {
            Some(f) => f(&labels.workload),
            None => Source::named(&labels.workload, None),
        };
        let labels = labels.full(&source);
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(duration_ms);
        self.request_bytes.get_or_create(&labels).observe(req_bytes as f64);
        self.response_bytes.get_or_create(&labels).observe(resp_bytes as f64);
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
