//! The agent's metrics: ONE prometheus-client registry, built once. Each component registers its
//! own metrics into it when it starts (linkerd2-proxy style: a sub-registry with the component's
//! prefix, e.g. `enforcer_dns_*` by the DNS forwarder, `istio_requests_*` by the L7 proxy), and the
//! kernel maps' counters come from one collector read at scrape time ([`kernel`]). `/metrics`
//! encodes it in the format the client asked for ([`exposition`]).
//!
//! Label values are bounded (registry hosts, workload names, fixed words): never a raw IP.

pub mod exposition;
pub mod kernel;
pub mod labels;

use std::{
    fmt::Debug,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub use exposition::Format;
pub use kernel::{
    DeniedLabels, Directions, FlowLabels, KernelCollector, KernelSnapshot, KernelSource, MapCount, TcpSeries, UdpSeries,
};
pub use labels::{Destination, IstioLabels, RequestLabels, Source, UNKNOWN};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The registry every component registers into.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Let a component register its metrics (once, when it starts).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().expect("metrics registry lock"));
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &self.registry.lock().expect("metrics registry lock"))
            .expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => om,
            Format::Text => exposition::openmetrics_to_text(&om),
        }
    }
}

pub fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

type Read = Box<dyn Fn() -> Vec<(Vec<(&'static str, String)>, i64)> + Send + Sync>;

/// Counters and gauges read from a component's own state (atomics, sizes) at scrape time, for
/// components that keep plain atomics rather than prometheus-client metrics.
#[derive(Default)]
pub struct ValueCollector {
    items: Vec<(&'static str, &'static str, MetricType, Read)>,
}

impl Debug for ValueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.items.iter().map(|i| i.0)).finish()
    }
}

impl ValueCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter (`name` without `_total`).
    pub fn counter(self, name: &'static str, help: &'static str, f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.counters(name, help, move || vec![(Vec::new(), f())])
    }

    /// A counter family: (labels, value) per series.
    pub fn counters(
        mut self,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> Vec<(Vec<(&'static str, String)>, u64)> + Send + Sync + 'static,
    ) -> Self {
        let read: Read = Box::new(move || f().into_iter().map(|(l, v)| (l, v as i64)).collect());
        self.items.push((name, help, MetricType::Counter, read));
        self
    }

    pub fn gauge(
        mut self,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.items.push((name, help, MetricType::Gauge, Box::new(move || vec![(Vec::new(), f())])));
        self
    }
}

impl Collector for ValueCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, ty, read) in &self.items {
            let series = read();
            let mut m = enc.encode_descriptor(name, &format!("{help}."), None, *ty)?;
            let encode = |m: prometheus_client::encoding::MetricEncoder, v: i64| match ty {
                MetricType::Counter => ConstCounter::new(v as u64).encode(m),
                _ => ConstGauge::new(v).encode(m),
            };
            match series.as_slice() {
                // No labels: `name 1`, not `name{} 1`.
                [(labels, v)] if labels.is_empty() => encode(m, *v)?,
                _ => {
                    for (labels, v) in &series {
                        encode(m.encode_family(labels)?, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}
