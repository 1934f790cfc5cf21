//! THE collector of the kernel maps' counters: read at scrape time, never copied into
//! prometheus-client metrics, so a scrape always shows the maps as they are. The agent turns map
//! keys into labelled series ([`KernelSnapshot`], `agent/admin.rs`); this file only encodes them.

use std::fmt::Debug;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::labels::IstioLabels;

/// Request/response totals of one series. Istio's direction: `request` is what the workload sent
/// to the destination (`istio_tcp_received_bytes_total`: bytes the destination received during
/// the request), `response` what came back (`istio_tcp_sent_bytes_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directions {
    pub request: u64,
    pub response: u64,
}

/// One `istio_tcp_*` series.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeries {
    pub opened: u64,
    pub closed: u64,
    /// L3 bytes counted by TC on the configured interfaces.
    pub bytes: Directions,
    /// TCP payload bytes of closed connections (sock_ops: bytes_acked / bytes_received).
    pub payload: Directions,
}

/// One `enforcer_udp_*` series: datagrams (packets) and L3 bytes counted by TC.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpSeries {
    pub datagrams: Directions,
    pub bytes: Directions,
}

/// `enforcer_flows_total` labels: every connect()/sendmsg() the hooks judged (`FLOWS`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowLabels {
    pub source_workload: String,
    pub destination_service: String,
    /// `tcp`, `udp` (or the protocol number).
    pub protocol: String,
    /// `allowed`, `denied` or `audit`.
    pub verdict: String,
}

/// `enforcer_denied_connections_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DeniedLabels {
    pub source_workload: String,
    /// `denied` or `audit`.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

/// One map of `enforcer_common::MAPS`: entries now (None for a map without a count: the ring
/// buffer, socket storage) and capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCount {
    pub name: &'static str,
    pub entries: Option<u64>,
    pub capacity: u64,
}

/// Everything the kernel counted, labelled, at one instant.
#[derive(Debug, Default, Clone)]
pub struct KernelSnapshot {
    pub tcp: Vec<(IstioLabels, TcpSeries)>,
    pub udp: Vec<(IstioLabels, UdpSeries)>,
    pub denied: Vec<(DeniedLabels, u64)>,
    pub flows: Vec<(FlowLabels, u64)>,
    pub maps: Vec<MapCount>,
}

/// Where the collector reads the kernel from (the agent; a fake in tests).
pub trait KernelSource: Send + Sync + 'static {
    /// None once the agent is gone (the collector then encodes nothing).
    fn snapshot(&self) -> Option<KernelSnapshot>;
}

/// The one collector for kernel-map counters.
pub struct KernelCollector(pub Box<dyn KernelSource>);

impl Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCollector")
    }
}

fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let series: Vec<(L, u64)> = series.collect();
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, &format!("{help}."), None, MetricType::Counter)?;
    for (labels, v) in &series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let series: Vec<(L, i64)> = series.collect();
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, &format!("{help}."), None, MetricType::Gauge)?;
    for (labels, v) in &series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.0.snapshot() else { return Ok(()) };
        let tcp = |f: fn(&TcpSeries) -> u64| s.tcp.iter().map(move |(l, v)| (l.clone(), f(v)));
        counters(
            &mut enc,
            "istio_tcp_connections_opened",
            "TCP connections opened: established (sock_ops), or refused by the connect hook (BlackHoleCluster, response_flags UH)",
            tcp(|v| v.opened),
        )?;
        counters(
            &mut enc,
            "istio_tcp_connections_closed",
            "TCP connections closed (refused ones close at once)",
            tcp(|v| v.closed),
        )?;
        counters(
            &mut enc,
            "istio_tcp_received_bytes",
            "Bytes the destination received during the request, i.e. sent by the workload (L3, counted by TC on the configured interfaces)",
            tcp(|v| v.bytes.request),
        )?;
        counters(
            &mut enc,
            "istio_tcp_sent_bytes",
            "Bytes the destination sent during the response, i.e. received by the workload (L3, counted by TC on the configured interfaces)",
            tcp(|v| v.bytes.response),
        )?;
        counters(
            &mut enc,
            "enforcer_tcp_payload_request_bytes",
            "TCP payload bytes the workload sent (acknowledged by the peer; plus the SYN/FIN sequence numbers, at most 2 per connection) over closed connections (sock_ops)",
            tcp(|v| v.payload.request),
        )?;
        counters(
            &mut enc,
            "enforcer_tcp_payload_response_bytes",
            "TCP payload bytes the workload received (plus the FIN sequence number) over closed connections (sock_ops)",
            tcp(|v| v.payload.response),
        )?;
        let udp = |f: fn(&UdpSeries) -> u64| s.udp.iter().map(move |(l, v)| (l.clone(), f(v)));
        counters(
            &mut enc,
            "enforcer_udp_received_datagrams",
            "UDP datagrams the destination received, i.e. sent by the workload (TC; Istio's TCP direction)",
            udp(|v| v.datagrams.request),
        )?;
        counters(
            &mut enc,
            "enforcer_udp_sent_datagrams",
            "UDP datagrams the destination sent back to the workload (TC)",
            udp(|v| v.datagrams.response),
        )?;
        counters(
            &mut enc,
            "enforcer_udp_received_bytes",
            "UDP bytes (L3) the destination received, i.e. sent by the workload (TC)",
            udp(|v| v.bytes.request),
        )?;
        counters(
            &mut enc,
            "enforcer_udp_sent_bytes",
            "UDP bytes (L3) the destination sent back to the workload (TC)",
            udp(|v| v.bytes.response),
        )?;
        counters(
            &mut enc,
            "enforcer_denied_connections",
            "connect()/sendmsg() calls refused (verdict=denied) or, in AUDIT, reported (verdict=audit)",
            s.denied.iter().cloned(),
        )?;
        counters(
            &mut enc,
            "enforcer_flows",
            "connect()/sendmsg() calls judged by the hooks, per destination service, protocol and verdict (FLOWS)",
            s.flows.iter().cloned(),
        )?;
        gauges(
            &mut enc,
            "enforcer_map_entries",
            "Entries in a BPF map (arrays: their size; MODES: policies in use; the ring buffer and socket storage have no count)",
            s.maps.iter().filter_map(|m| Some((MapLabel { map: m.name }, m.entries? as i64))),
        )?;
        gauges(
            &mut enc,
            "enforcer_map_capacity",
            "Capacity (max entries; bytes for the ring buffer) of a BPF map",
            s.maps.iter().map(|m| (MapLabel { map: m.name }, m.capacity as i64)),
        )?;
        Ok(())
    }
}
