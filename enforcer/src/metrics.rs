//! The agent's own metrics, rendered as OpenMetrics text with prometheus-client. Label values are
//! bounded (map names, transports): never a raw IP.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: String,
}

/// Istio's standard TCP labels. Filled: reporter (always "source"), source_workload,
/// destination_service (the registry host, or PassthroughCluster / BlackHoleCluster),
/// destination_service_name and _namespace (the ServiceEntry's), response_flags ("-", or "UH" for
/// connections refused into BlackHoleCluster). Constant: request_protocol="tcp",
/// connection_security_policy="unknown", destination_workload="unknown".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioTcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub destination_workload: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl IstioTcpLabels {
    pub fn new(source_workload: &str, service: (&str, &str, &str), response_flags: &str) -> Self {
        Self {
            reporter: "source".into(),
            source_workload: source_workload.into(),
            destination_workload: "unknown".into(),
            destination_service: service.0.into(),
            destination_service_name: service.1.into(),
            destination_service_namespace: service.2.into(),
            request_protocol: "tcp".into(),
            response_flags: response_flags.into(),
            connection_security_policy: "unknown".into(),
        }
    }
}

/// One series of the `istio_tcp_*` families.
#[derive(Debug, Default, Clone)]
pub struct TcpSeries {
    pub opened: u64,
    pub closed: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabel {
    source_workload: String,
    verdict: String,
}

/// A point-in-time view of everything counted, gathered by the caller.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub registry_services: u64,
    pub registry_hosts: u64,
    pub registry_addresses: u64,
    pub maps: Vec<(&'static str, u64, u64)>,
    pub reloads: u64,
    pub reload_errors: u64,
    pub events_dropped: u64,
    /// (source_workload, verdict "denied" | "audit") -> count.
    pub denied: Vec<(String, String, u64)>,
    pub tcp: Vec<(IstioTcpLabels, TcpSeries)>,
    pub resolver_lookups: u64,
    pub resolver_failures: u64,
    pub dns: Option<DnsSnapshot>,
}

#[derive(Default, Debug)]
pub struct DnsSnapshot {
    pub queries_udp: u64,
    pub queries_tcp: u64,
    pub answered: u64,
    pub learned_addrs: u64,
    pub blocked: u64,
    pub servfail: u64,
    pub upstream_timeouts: u64,
    pub rebinding_dropped: u64,
    pub learn_failures: u64,
    /// (reason label, count) of queries answered by the forwarder itself.
    pub refused: Vec<(&'static str, u64)>,
    pub audit_would_refuse: u64,
    pub stripped: u64,
}

pub fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

pub fn render(s: &Snapshot, proxy: Option<&crate::proxy::ProxyMetrics>) -> String {
    let mut reg = Registry::default();
    if let Some(p) = proxy {
        p.register(&mut reg);
    }
    gauge(
        &mut reg,
        "enforcer_registry_services",
        "ServiceEntries (and command-line allows) in the registry",
        s.registry_services,
    );
    gauge(&mut reg, "enforcer_registry_hosts", "Hosts (exact and wildcard) in the registry", s.registry_hosts);
    gauge(
        &mut reg,
        "enforcer_registry_addresses",
        "Entries in the ALLOW map (address/prefix x port x protocol)",
        s.registry_addresses,
    );
    let entries = Family::<MapLabel, Gauge>::default();
    let capacity = Family::<MapLabel, Gauge>::default();
    for (map, n, cap) in &s.maps {
        entries.get_or_create(&MapLabel { map: map.to_string() }).set(*n as i64);
        capacity.get_or_create(&MapLabel { map: map.to_string() }).set(*cap as i64);
    }
    reg.register("enforcer_map_entries", "Entries in a BPF map", entries);
    reg.register("enforcer_map_capacity", "Capacity (max entries) of a BPF map", capacity);
    counter(&mut reg, "enforcer_config_reloads", "Successful registry reloads", s.reloads);
    counter(
        &mut reg,
        "enforcer_config_reload_errors",
        "Rejected registry reloads (the last good registry stayed enforced)",
        s.reload_errors,
    );
    counter(&mut reg, "enforcer_events_dropped", "Deny events lost because the ring buffer was full", s.events_dropped);
    let denied = Family::<DeniedLabel, Counter>::default();
    for (wl, verdict, n) in &s.denied {
        denied.get_or_create(&DeniedLabel { source_workload: wl.clone(), verdict: verdict.clone() }).inc_by(*n);
    }
    reg.register(
        "enforcer_denied_connections",
        "connect()/sendmsg() calls refused (verdict=denied) or, in AUDIT, reported (verdict=audit)",
        denied,
    );
    let opened = Family::<IstioTcpLabels, Counter>::default();
    let closed = Family::<IstioTcpLabels, Counter>::default();
    let sent = Family::<IstioTcpLabels, Counter>::default();
    let received = Family::<IstioTcpLabels, Counter>::default();
    for (labels, v) in &s.tcp {
        opened.get_or_create(labels).inc_by(v.opened);
        closed.get_or_create(labels).inc_by(v.closed);
        sent.get_or_create(labels).inc_by(v.sent_bytes);
        received.get_or_create(labels).inc_by(v.received_bytes);
    }
    reg.register(
        "istio_tcp_connections_opened",
        "TCP connections opened (established; refused ones count under BlackHoleCluster)",
        opened,
    );
    reg.register("istio_tcp_connections_closed", "TCP connections closed", closed);
    reg.register(
        "istio_tcp_sent_bytes",
        "Bytes sent (L3: IP header + payload, counted by TC on the configured interfaces)",
        sent,
    );
    reg.register(
        "istio_tcp_received_bytes",
        "Bytes received (L3, counted by TC on the configured interfaces)",
        received,
    );
    counter(&mut reg, "enforcer_resolver_lookups", "Registry host lookups", s.resolver_lookups);
    counter(&mut reg, "enforcer_resolver_failures", "Failed registry host lookups", s.resolver_failures);
    if let Some(d) = &s.dns {
        let q = Family::<TransportLabel, Counter>::default();
        q.get_or_create(&TransportLabel { transport: "udp".into() }).inc_by(d.queries_udp);
        q.get_or_create(&TransportLabel { transport: "tcp".into() }).inc_by(d.queries_tcp);
        reg.register("enforcer_dns_queries", "Queries received by the DNS forwarder", q);
        counter(&mut reg, "enforcer_dns_answered", "Upstream answers released to clients", d.answered);
        counter(
            &mut reg,
            "enforcer_dns_learned_addresses",
            "Addresses put into the ALLOW map from DNS answers",
            d.learned_addrs,
        );
        counter(
            &mut reg,
            "enforcer_dns_blocked",
            "Queries for names outside the registry answered NXDOMAIN/REFUSED",
            d.blocked,
        );
        counter(
            &mut reg,
            "enforcer_dns_servfail",
            "SERVFAIL answers (upstream failure or map insert failure)",
            d.servfail,
        );
        counter(&mut reg, "enforcer_dns_upstream_timeouts", "Upstream attempts that timed out", d.upstream_timeouts);
        counter(
            &mut reg,
            "enforcer_dns_rebinding_dropped",
            "Answer addresses dropped by the DNS-rebinding filter",
            d.rebinding_dropped,
        );
        counter(
            &mut reg,
            "enforcer_dns_learn_failures",
            "Answers whose addresses could not be put into the map",
            d.learn_failures,
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        for (reason, n) in &d.refused {
            refused.get_or_create(&ReasonLabel { reason: (*reason).into() }).inc_by(*n);
        }
        reg.register(
            "enforcer_dns_refused",
            "Queries the DNS forwarder answered itself (REFUSED/NXDOMAIN), by reason",
            refused,
        );
        counter(
            &mut reg,
            "enforcer_dns_audit_would_refuse",
            "AUDIT: queries forwarded that REGISTRY_ONLY would have refused",
            d.audit_would_refuse,
        );
        counter(
            &mut reg,
            "enforcer_dns_stripped",
            "EDNS options and query records not forwarded upstream (REGISTRY_ONLY)",
            d.stripped,
        );
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
