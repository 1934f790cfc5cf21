//! The live graph of egress (`GET /debug/graph`, drawn by the `/ui` page): workloads -> the
//! services they call (registry services, PassthroughCluster, BlackHoleCluster), with cumulative
//! counters per edge. The page turns successive snapshots into rates.
//!
//! Built from the same kernel counters `/metrics` reads (FLOWS: every judged connect()/sendmsg();
//! CONNS: TCP connections opened/closed; TRAFFIC: bytes counted by TC), plus the L7 proxy's
//! `istio_requests_total`. Bytes follow Istio's direction: `request_bytes` is what the workload
//! sent to the destination (`istio_tcp_received_bytes_total`), `response_bytes` what came back
//! (`istio_tcp_sent_bytes_total`).
//!
//! [`build`] is pure (unit-tested here); the agent gathers its inputs (`agent/graph.rs`).

use std::collections::BTreeMap;

use enforcer_common::{
    ConnCounters, ConnKey, DIR_EGRESS, FlowKey, PROTO_UDP, ServiceId, TrafficKey, TrafficValue, VERDICT_ALLOWED,
    VERDICT_AUDIT, VERDICT_DENIED,
};
use serde::{Deserialize, Serialize};

/// Node id of refused connections.
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// Node id of traffic to no registry service (ALLOW_ANY, AUDIT).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// `GET /debug/graph`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Graph {
    /// Seconds since the Unix epoch when the counters were read.
    pub generated_at: f64,
    pub agent: AgentInfo,
    /// Where the byte counts come from: `tc` (L3 bytes, IP header included, counted by TC on the
    /// `--interface`s) or `tcp_payload` (TCP payload of closed connections, when no interface
    /// counts traffic).
    pub bytes_source: String,
    /// Bytes TC counted that belong to no local socket (neighbour discovery, forwarded packets):
    /// no workload sent them, so no edge carries them.
    pub unattributed_bytes: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// The agent's process id: a new one means the agent restarted.
    pub pid: u32,
    /// The default policy's outbound traffic mode (REGISTRY_ONLY, ALLOW_ANY, AUDIT).
    pub mode: String,
    pub mode_source: String,
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Workload,
    /// A registry service (ServiceEntry or command-line allow).
    Service,
    Passthrough,
    Blackhole,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Node {
    /// `workload:NAME`, `service:NAMESPACE/NAME/HOST`, `PassthroughCluster`, `BlackHoleCluster`.
    pub id: String,
    pub kind: NodeKind,
    /// What to print: the workload name, the service's first host, or the cluster name.
    pub label: String,
    /// Istio's destination_service_name / _namespace for services ("" otherwise).
    pub name: String,
    pub namespace: String,
}

/// How an edge is drawn.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeState {
    /// To a registry service, nothing refused.
    Allowed,
    /// To PassthroughCluster (no registry service; ALLOW_ANY).
    Passthrough,
    /// Let through, but a REGISTRY_ONLY policy would have refused some of it (AUDIT).
    Audit,
    /// To BlackHoleCluster: refused.
    Denied,
}

/// Cumulative counters of one workload -> service pair.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub state: Option<EdgeState>,
    /// TCP connections established (sock_ops) / closed.
    pub connections_opened: u64,
    pub connections_closed: u64,
    /// UDP connect()/sendmsg() calls let through.
    pub udp_calls: u64,
    /// connect()/sendmsg() calls refused (BlackHoleCluster).
    pub denied: u64,
    /// Calls a REGISTRY_ONLY policy would have refused, let through in AUDIT.
    pub audited: u64,
    /// Bytes from the workload to the destination (Istio: `istio_tcp_received_bytes_total`).
    pub request_bytes: u64,
    /// Bytes from the destination back to the workload (Istio: `istio_tcp_sent_bytes_total`).
    pub response_bytes: u64,
    /// HTTP requests through the L7 proxy, when it handled any.
    pub http: Option<HttpStats>,
}

impl Edge {
    /// Nothing counted (an allowed TCP connect() without connection accounting, say).
    fn is_empty(&self) -> bool {
        self.connections_opened == 0
            && self.connections_closed == 0
            && self.udp_calls == 0
            && self.denied == 0
            && self.audited == 0
            && self.request_bytes == 0
            && self.response_bytes == 0
            && self.http.is_none()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct HttpStats {
    pub requests: u64,
    /// 5xx responses and requests that got no response (code 0), as Istio's dashboards count
    /// errors (success rate = non-5xx).
    pub errors: u64,
    /// 4xx responses.
    pub client_errors: u64,
}

/// A registry service as Istio labels it: (destination_service, _name, _namespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    Service { host: String, name: String, namespace: String },
    Passthrough,
    Blackhole,
}

impl Destination {
    /// From the agent's metric labels (the same function names `/metrics` series).
    pub fn from_labels(host: &str, name: &str, namespace: &str) -> Self {
        match host {
            PASSTHROUGH => Destination::Passthrough,
            BLACKHOLE => Destination::Blackhole,
            _ => Destination::Service { host: host.into(), name: name.into(), namespace: namespace.into() },
        }
    }

    fn node(&self) -> Node {
        match self {
            Destination::Service { host, name, namespace } => Node {
                id: format!("service:{namespace}/{name}/{host}"),
                kind: NodeKind::Service,
                label: host.clone(),
                name: name.clone(),
                namespace: namespace.clone(),
            },
            Destination::Passthrough => Node {
                id: PASSTHROUGH.into(),
                kind: NodeKind::Passthrough,
                label: PASSTHROUGH.into(),
                name: String::new(),
                namespace: String::new(),
            },
            Destination::Blackhole => Node {
                id: BLACKHOLE.into(),
                kind: NodeKind::Blackhole,
                label: BLACKHOLE.into(),
                name: String::new(),
                namespace: String::new(),
            },
        }
    }
}

/// One `istio_requests_total` series, reduced to what the graph needs.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSample {
    pub workload: String,
    pub destination: Destination,
    pub response_code: u16,
    pub count: u64,
}

/// What [`build`] reads. The closures name cgroups and services the way `/metrics` does.
pub struct Input<'a> {
    pub agent: AgentInfo,
    pub generated_at: f64,
    pub flows: &'a [(FlowKey, u64)],
    pub conns: &'a [(ConnKey, ConnCounters)],
    pub traffic: &'a [(TrafficKey, TrafficValue)],
    pub http: &'a [HttpSample],
    pub workload: &'a dyn Fn(u64) -> String,
    pub destination: &'a dyn Fn(ServiceId) -> Destination,
}

/// The graph of `input`: one node per workload and destination that has counts, one edge per
/// (workload, destination) pair, sorted (workloads, then services by label).
pub fn build(input: &Input<'_>) -> Graph {
    let mut edges: BTreeMap<(String, Destination), Edge> = BTreeMap::new();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut wl = |cg: u64| names.entry(cg).or_insert_with(|| (input.workload)(cg)).clone();
    let mut dests: BTreeMap<ServiceId, Destination> = BTreeMap::new();
    let mut dest = |id: ServiceId| dests.entry(id).or_insert_with(|| (input.destination)(id)).clone();

    for (k, n) in input.flows {
        let w = wl(k.cgroup_id);
        match k.verdict {
            VERDICT_DENIED => edges.entry((w, Destination::Blackhole)).or_default().denied += n,
            VERDICT_AUDIT => edges.entry((w, dest(k.service_id))).or_default().audited += n,
            VERDICT_ALLOWED if k.proto == PROTO_UDP => edges.entry((w, dest(k.service_id))).or_default().udp_calls += n,
            _ => {}
        }
    }
    for (k, c) in input.conns {
        let e = edges.entry((wl(k.cgroup_id), dest(k.service_id))).or_default();
        e.connections_opened += c.opened;
        e.connections_closed += c.closed;
    }
    let mut unattributed = 0;
    let bytes_source = if input.traffic.is_empty() {
        for (k, c) in input.conns {
            let e = edges.entry((wl(k.cgroup_id), dest(k.service_id))).or_default();
            e.request_bytes += c.payload_sent;
            e.response_bytes += c.payload_received;
        }
        "tcp_payload"
    } else {
        for (k, t) in input.traffic {
            // No local socket, or not TCP/UDP (ICMP, neighbour discovery): counted, drawn nowhere.
            if k.cgroup_id == 0 || (k.proto != enforcer_common::PROTO_TCP && k.proto != enforcer_common::PROTO_UDP) {
                unattributed += t.bytes;
                continue;
            }
            let e = edges.entry((wl(k.cgroup_id), dest(k.service_id))).or_default();
            if k.direction == DIR_EGRESS {
                e.request_bytes += t.bytes;
            } else {
                e.response_bytes += t.bytes;
            }
        }
        "tc"
    };
    for s in input.http {
        let e = edges.entry((s.workload.clone(), s.destination.clone())).or_default();
        let h = e.http.get_or_insert_with(HttpStats::default);
        h.requests += s.count;
        match s.response_code {
            0 | 500..=599 => h.errors += s.count,
            400..=499 => h.client_errors += s.count,
            _ => {}
        }
    }

    let mut nodes: BTreeMap<(NodeKind, String, String), Node> = BTreeMap::new();
    let mut out = Vec::with_capacity(edges.len());
    for ((w, d), mut e) in edges {
        if e.is_empty() {
            continue;
        }
        let target = d.node();
        let source = Node {
            id: format!("workload:{w}"),
            kind: NodeKind::Workload,
            label: w.clone(),
            name: String::new(),
            namespace: String::new(),
        };
        e.source = source.id.clone();
        e.target = target.id.clone();
        e.state = Some(match d {
            Destination::Blackhole => EdgeState::Denied,
            _ if e.audited > 0 => EdgeState::Audit,
            Destination::Passthrough => EdgeState::Passthrough,
            Destination::Service { .. } => EdgeState::Allowed,
        });
        nodes.entry((source.kind, source.label.clone(), source.id.clone())).or_insert(source);
        nodes.entry((target.kind, target.label.clone(), target.id.clone())).or_insert(target);
        out.push(e);
    }
    Graph {
        generated_at: input.generated_at,
        agent: input.agent.clone(),
        bytes_source: bytes_source.into(),
        unattributed_bytes: unattributed,
        nodes: nodes.into_values().collect(),
        edges: out,
    }
}

/// `istio_requests_total` of the proxy as [`HttpSample`]s: the family is rendered as OpenMetrics
/// text and read back with a real parser (prometheus-client offers no iteration over a family's
/// series).
pub fn http_samples(metrics: &crate::proxy::ProxyMetrics) -> Vec<HttpSample> {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register("istio_requests", "Requests through the L7 proxy", metrics.requests.clone());
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &reg).is_err() {
        return Vec::new();
    }
    samples_from_text(&text)
}

/// The `istio_requests_total` samples of an OpenMetrics exposition.
pub fn samples_from_text(text: &str) -> Vec<HttpSample> {
    use openmetrics_parser::OpenMetricsValue;
    // (The parser rejects an exposition without families; no series, nothing to read.)
    if !text.contains("istio_requests_total") {
        return Vec::new();
    }
    let exp = match openmetrics_parser::openmetrics::parse_openmetrics(text) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("reading the proxy's request counters: {e:?}");
            return Vec::new();
        }
    };
    let Some(fam) = exp.families.get("istio_requests") else { return Vec::new() };
    let mut out = Vec::new();
    for s in fam.iter_samples() {
        let (Ok(ls), OpenMetricsValue::Counter(c)) = (s.get_labelset(), &s.value) else { continue };
        let label = |k: &str| ls.get_label_value(k).unwrap_or("").to_string();
        // The graph names workloads as the agent does (`namespace/name` for a namespaced one).
        let (w, ns) = (label("source_workload"), label("source_workload_namespace"));
        let workload = if ns.is_empty() || ns == "unknown" { w } else { format!("{ns}/{w}") };
        out.push(HttpSample {
            workload,
            destination: Destination::from_labels(
                &label("destination_service"),
                &label("destination_service_name"),
                &label("destination_service_namespace"),
            ),
            response_code: label("response_code").parse().unwrap_or(0),
            count: c.value.as_f64() as u64,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use enforcer_common::{DIR_INGRESS, FAMILY_V4, HOOK_CONNECT4, HOOK_SENDMSG4, PROTO_TCP, PolicyId};

    use super::*;

    fn sid(n: u32) -> ServiceId {
        ServiceId::new(n).unwrap()
    }

    fn flow(cg: u64, svc: ServiceId, proto: u8, verdict: u8, hook: u8) -> FlowKey {
        FlowKey {
            cgroup_id: cg,
            policy_id: PolicyId::DEFAULT,
            service_id: svc,
            addr: [0; 16],
            port: 443,
            proto,
            family: FAMILY_V4,
            verdict,
            hook,
            _pad: [0; 2],
        }
    }

    fn names(cg: u64) -> String {
        match cg {
            7 => "web".into(),
            _ => "unknown".into(),
        }
    }

    fn dests(id: ServiceId) -> Destination {
        if id == sid(1) {
            Destination::Service { host: "api.example.com".into(), name: "api".into(), namespace: "egress".into() }
        } else {
            Destination::Passthrough
        }
    }

    fn agent() -> AgentInfo {
        AgentInfo { pid: 1, mode: "REGISTRY_ONLY".into(), mode_source: "default".into(), version: "0".into() }
    }

    #[test]
    fn allowed_refused_and_passthrough_edges_with_istio_byte_direction() {
        let flows = vec![
            (flow(7, sid(1), PROTO_TCP, VERDICT_ALLOWED, HOOK_CONNECT4), 3),
            (flow(7, ServiceId::NONE, PROTO_TCP, VERDICT_DENIED, HOOK_CONNECT4), 2),
            (flow(7, sid(1), PROTO_UDP, VERDICT_DENIED, HOOK_SENDMSG4), 1),
            (flow(7, ServiceId::NONE, PROTO_UDP, VERDICT_ALLOWED, HOOK_SENDMSG4), 5),
        ];
        let conns = vec![(
            ConnKey { cgroup_id: 7, service_id: sid(1), _pad: 0 },
            ConnCounters { opened: 3, closed: 2, payload_sent: 10, payload_received: 20 },
        )];
        let tk = |dir| TrafficKey {
            cgroup_id: 7,
            service_id: sid(1),
            direction: dir,
            family: FAMILY_V4,
            proto: enforcer_common::PROTO_TCP,
            _pad: 0,
        };
        let traffic = vec![
            (tk(DIR_EGRESS), TrafficValue { packets: 4, bytes: 1500 }),
            (tk(DIR_INGRESS), TrafficValue { packets: 4, bytes: 9000 }),
            // No local socket (neighbour discovery): counted, drawn nowhere.
            (
                TrafficKey {
                    cgroup_id: 0,
                    service_id: ServiceId::NONE,
                    direction: DIR_EGRESS,
                    family: 10,
                    proto: 58,
                    _pad: 0,
                },
                TrafficValue { packets: 1, bytes: 72 },
            ),
        ];
        let http = vec![
            HttpSample { workload: "web".into(), destination: dests(sid(1)), response_code: 200, count: 8 },
            HttpSample { workload: "web".into(), destination: dests(sid(1)), response_code: 503, count: 2 },
            HttpSample { workload: "web".into(), destination: dests(sid(1)), response_code: 404, count: 1 },
        ];
        let g = build(&Input {
            agent: agent(),
            generated_at: 1.0,
            flows: &flows,
            conns: &conns,
            traffic: &traffic,
            http: &http,
            workload: &names,
            destination: &dests,
        });
        assert_eq!((g.bytes_source.as_str(), g.unattributed_bytes), ("tc", 72));
        let ids: Vec<(&str, NodeKind)> = g.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert_eq!(
            ids,
            vec![
                ("workload:web", NodeKind::Workload),
                ("service:egress/api/api.example.com", NodeKind::Service),
                (PASSTHROUGH, NodeKind::Passthrough),
                (BLACKHOLE, NodeKind::Blackhole),
            ]
        );
        let edge = |t: &str| g.edges.iter().find(|e| e.target == t).unwrap();
        let api = edge("service:egress/api/api.example.com");
        assert_eq!(api.state, Some(EdgeState::Allowed));
        assert_eq!((api.connections_opened, api.connections_closed), (3, 2));
        // Istio's direction: request = to the destination (egress), response = back (ingress).
        assert_eq!((api.request_bytes, api.response_bytes), (1500, 9000));
        assert_eq!(api.http, Some(HttpStats { requests: 11, errors: 2, client_errors: 1 }));
        let bh = edge(BLACKHOLE);
        assert_eq!((bh.state, bh.denied), (Some(EdgeState::Denied), 3));
        let pt = edge(PASSTHROUGH);
        assert_eq!((pt.state, pt.udp_calls), (Some(EdgeState::Passthrough), 5));
    }

    #[test]
    fn audit_marks_the_edge_and_payload_bytes_stand_in_without_tc() {
        let flows = vec![(flow(7, ServiceId::NONE, PROTO_TCP, VERDICT_AUDIT, HOOK_CONNECT4), 4)];
        let conns = vec![(
            ConnKey { cgroup_id: 7, service_id: ServiceId::NONE, _pad: 0 },
            ConnCounters { opened: 4, closed: 4, payload_sent: 100, payload_received: 2000 },
        )];
        let g = build(&Input {
            agent: agent(),
            generated_at: 1.0,
            flows: &flows,
            conns: &conns,
            traffic: &[],
            http: &[],
            workload: &names,
            destination: &dests,
        });
        assert_eq!(g.bytes_source, "tcp_payload");
        assert_eq!(g.edges.len(), 1);
        let e = &g.edges[0];
        assert_eq!((e.target.as_str(), e.state, e.audited), (PASSTHROUGH, Some(EdgeState::Audit), 4));
        assert_eq!((e.request_bytes, e.response_bytes), (100, 2000));
    }

    #[test]
    fn nothing_counted_is_an_empty_graph() {
        let flows = vec![(flow(7, sid(1), PROTO_TCP, VERDICT_ALLOWED, HOOK_CONNECT4), 1)];
        let g = build(&Input {
            agent: agent(),
            generated_at: 1.0,
            flows: &flows,
            conns: &[],
            traffic: &[],
            http: &[],
            workload: &names,
            destination: &dests,
        });
        // An allowed TCP connect() without established-connection accounting draws nothing.
        assert!(g.nodes.is_empty() && g.edges.is_empty(), "{g:?}");
    }

    #[test]
    fn proxy_request_counters_are_read_back() {
        assert!(http_samples(&crate::proxy::ProxyMetrics::new()).is_empty());
        let text = "# HELP istio_requests Requests through the L7 proxy.\n# TYPE istio_requests counter\n\
            istio_requests_total{reporter=\"source\",source_workload=\"web\",destination_service=\"api.example.com\",destination_service_name=\"api\",destination_service_namespace=\"egress\",response_code=\"200\"} 2\n\
            istio_requests_total{reporter=\"source\",source_workload=\"web\",destination_service=\"api.example.com\",destination_service_name=\"api\",destination_service_namespace=\"egress\",response_code=\"502\"} 1\n\
            # EOF\n";
        let mut s = samples_from_text(text);
        s.sort_by_key(|s| s.response_code);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].workload.as_str(), s[0].response_code, s[0].count), ("web", 200, 2));
        assert_eq!(s[1].destination, dests(sid(1)));
        assert_eq!((s[1].response_code, s[1].count), (502, 1));
    }
}
