//! What the admin API serves from the agent: metrics, the registry view, events, readiness.
//!
//! Metrics: the agent registers its own (registry gauges, reloads, resolver) and the ONE kernel
//! collector when it starts; [`kernel_snapshot`] turns the kernel maps' keys into Istio-labelled
//! series at each scrape.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, OnceLock, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use enforcer_common::{
    ConnCounters, ConnKey, DIR_EGRESS, FlowKey, HOOK_CONNECT4, HOOK_CONNECT6, MAPS, MapKind, PROTO_TCP, PROTO_UDP,
    ServiceId, TrafficKey, TrafficValue, VERDICT_ALLOWED, VERDICT_DENIED, map_names,
};
use prometheus_client::registry::Registry;

use super::{Agent, Inner, View};
use crate::{
    metrics::{
        DeniedLabels, Destination, FlowLabels, Format, IstioLabels, KernelCollector, KernelSnapshot, KernelSource,
        MapCount, Source, TcpSeries, UdpSeries, ValueCollector, load,
    },
    policy::{Desired, ServiceKind, proto_name},
};

/// The destination labels of a service id: the registry host and the ServiceEntry's namespace;
/// `PassthroughCluster` for no service, or one without a host name (an address allowed on the
/// command line: never an IP in a label).
pub(super) fn destination(desired: &Desired, id: ServiceId) -> Destination {
    let Some(info) = desired.service(id) else { return Destination::passthrough() };
    let host = info.hosts.iter().find(|h| h.parse::<ipnet::IpNet>().is_err() && h.parse::<std::net::IpAddr>().is_err());
    match (host, info.kind) {
        (Some(h), ServiceKind::ServiceEntry) => Destination::service(h, info.name.split_once('/').map(|(ns, _)| ns)),
        (Some(h), ServiceKind::CommandLine) => Destination::service(h, None),
        _ => Destination::passthrough(),
    }
}

/// (destination_service, destination_service_name, destination_service_namespace), for the proxy.
pub(super) fn service_labels(desired: &Desired, id: ServiceId) -> (String, String, String) {
    let d = destination(desired, id);
    (d.service, d.service_name, d.service_namespace)
}

/// Services whose TCP connections are HTTP to the L7 proxy (a port whose DestinationRule
/// originates TLS): Envoy reports those in `istio_requests_*` only, so they are left out of
/// `istio_tcp_*` (app->proxy connections in CONNS, the proxy's own upstream bytes in TRAFFIC).
/// Per service, not per port: CONNS keys carry no port (a direct connection to another port of
/// such a service is left out too; exact with kernel support, see README).
fn http_services(v: &View) -> BTreeSet<ServiceId> {
    v.desired
        .services
        .iter()
        .filter(|info| {
            info.port_rules.iter().any(|r| {
                r.proxied
                    && v.service_entry(info.id)
                        .is_some_and(|(_, se)| se.ports.iter().any(|p| p.number == r.number && !p.protocol.is_tls()))
            })
        })
        .map(|info| info.id)
        .collect()
}

/// Services with a port steered to the proxy (HTTP origination or SNI check): traffic of the
/// agent's own cgroup to them is the proxy's upstream side, never a workload's.
fn proxied_services(desired: &Desired) -> BTreeSet<ServiceId> {
    desired.services.iter().filter(|s| s.port_rules.iter().any(|r| r.proxied)).map(|s| s.id).collect()
}

/// L4 class of a TRAFFIC entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// THE TCP/UDP split of TRAFFIC (TC counters): None for traffic reported nowhere (traffic of no
/// socket, cgroup 0: neighbour discovery, kernel replies; protocols other than TCP and UDP).
fn traffic_l4(k: &TrafficKey) -> Option<L4> {
    if k.cgroup_id == 0 {
        return None;
    }
    // The TC programs record the packet's L4 protocol: ICMP and other protocols are in no
    // istio_tcp_* or enforcer_udp_* series.
    match k.proto {
        PROTO_TCP => Some(L4::Tcp),
        PROTO_UDP => Some(L4::Udp),
        _ => None,
    }
}

/// The counters read from the maps, under the maps lock.
struct Read {
    flows: Vec<(FlowKey, u64)>,
    conns: Vec<(ConnKey, ConnCounters)>,
    traffic: Vec<(TrafficKey, TrafficValue)>,
    /// [`Dataplane::map_entries`](crate::dataplane::Dataplane::map_entries): the hashes and tries.
    entries: Vec<(&'static str, usize)>,
}

/// Every kernel counter, labelled. `own_cgroup`: the agent's cgroup (its proxy's upstream
/// sockets).
fn kernel_snapshot(agent: &Agent, own_cgroup: u64, kernel_only: &KernelOnlyCounts) -> KernelSnapshot {
    let v = agent.view();
    let mut r = {
        let m = agent.maps();
        let dp = m.maps();
        kernel_only.open_once(dp);
        Read { flows: dp.flows(), conns: dp.conns(), traffic: dp.traffic(), entries: dp.map_entries() }
    };
    // Counted outside the maps lock (DNS learning waits for it).
    r.entries.extend([
        (map_names::FLOWS, r.flows.len()),
        (map_names::CONNS, r.conns.len()),
        (map_names::TRAFFIC, r.traffic.len()),
    ]);
    r.entries.extend(kernel_only.counts());
    let desired = &v.desired;
    let http = http_services(&v);
    let proxied = proxied_services(desired);
    let mut sources: BTreeMap<u64, Source> = BTreeMap::new();
    let mut source = |cg: u64| sources.entry(cg).or_insert_with(|| agent.source(cg)).clone();

    let mut tcp: BTreeMap<(Source, Destination, &'static str), TcpSeries> = BTreeMap::new();
    let mut udp: BTreeMap<(Source, Destination), UdpSeries> = BTreeMap::new();
    let mut denied: BTreeMap<DeniedLabels, u64> = BTreeMap::new();
    let mut flows: BTreeMap<FlowLabels, u64> = BTreeMap::new();
    for (k, n) in &r.flows {
        let src = source(k.cgroup_id);
        let verdict = match k.verdict {
            VERDICT_ALLOWED => "allowed",
            VERDICT_DENIED => "denied",
            _ => "audit",
        };
        let dst = match (k.verdict, desired.service(k.service_id)) {
            (VERDICT_DENIED, _) => Destination::blackhole(),
            (VERDICT_ALLOWED, Some(_)) => destination(desired, k.service_id),
            _ => Destination::passthrough(),
        };
        *flows
            .entry(FlowLabels {
                source_workload: src.workload.clone(),
                destination_service: dst.service.clone(),
                protocol: proto_name(k.proto).to_string(),
                verdict: verdict.into(),
            })
            .or_default() += n;
        if k.verdict == VERDICT_ALLOWED {
            continue;
        }
        *denied.entry(DeniedLabels { source_workload: src.workload.clone(), verdict: verdict.into() }).or_default() +=
            n;
        if k.verdict == VERDICT_DENIED && k.proto == PROTO_TCP && (k.hook == HOOK_CONNECT4 || k.hook == HOOK_CONNECT6) {
            // Refused connects: Envoy's BlackHoleCluster opens and closes them (UH: no healthy
            // upstream).
            let e = tcp.entry((src, Destination::blackhole(), "UH")).or_default();
            e.opened += n;
            e.closed += n;
        }
    }
    for (k, c) in &r.conns {
        if http.contains(&k.service_id) || k.cgroup_id == own_cgroup {
            continue;
        }
        let e = tcp.entry((source(k.cgroup_id), destination(desired, k.service_id), "-")).or_default();
        e.opened += c.opened;
        e.closed += c.closed;
        e.payload.request += c.payload_sent;
        e.payload.response += c.payload_received;
    }
    for (k, t) in &r.traffic {
        if k.cgroup_id == own_cgroup && proxied.contains(&k.service_id) {
            continue;
        }
        let request = k.direction == DIR_EGRESS;
        match traffic_l4(k) {
            None => {}
            Some(L4::Tcp) => {
                if http.contains(&k.service_id) {
                    continue;
                }
                let e = tcp.entry((source(k.cgroup_id), destination(desired, k.service_id), "-")).or_default();
                if request { e.bytes.request += t.bytes } else { e.bytes.response += t.bytes }
            }
            Some(L4::Udp) => {
                let e = udp.entry((source(k.cgroup_id), destination(desired, k.service_id))).or_default();
                if request {
                    e.bytes.request += t.bytes;
                    e.datagrams.request += t.packets;
                } else {
                    e.bytes.response += t.bytes;
                    e.datagrams.response += t.packets;
                }
            }
        }
    }

    let maps = map_counts(&r.entries, v.policies.len());
    KernelSnapshot {
        tcp: tcp.into_iter().map(|((s, d, flags), v)| (IstioLabels::new(&s, &d, "tcp", flags), v)).collect(),
        udp: udp.into_iter().map(|((s, d), v)| (IstioLabels::new(&s, &d, "udp", "-"), v)).collect(),
        denied: denied.into_iter().collect(),
        flows: flows.into_iter().collect(),
        maps,
    }
}

/// Entries and capacity of every map of [`MAPS`], for `enforcer_map_entries` and
/// `enforcer_map_capacity`. `counted`: the dataplane's counts of its hashes and tries; an array
/// always holds `max_entries` values (MODES: the policies in use); a ring buffer (bytes, not
/// entries) and socket-local storage (one value per socket, not countable) have no count.
fn map_counts(counted: &[(&'static str, usize)], policies: usize) -> Vec<MapCount> {
    MAPS.iter()
        .map(|m| {
            let entries = match m.kind {
                MapKind::RingBuf | MapKind::SkStorage => None,
                _ if m.name == map_names::MODES || m.name == map_names::POLICY_FLAGS => Some(policies as u64),
                MapKind::Array | MapKind::PerCpuArray => Some(u64::from(m.max_entries)),
                MapKind::Hash | MapKind::LruHash | MapKind::LruPerCpuHash | MapKind::LpmTrie => {
                    counted.iter().find(|(name, _)| *name == m.name).map(|(_, n)| *n as u64)
                }
            };
            MapCount { name: m.name, entries, capacity: u64::from(m.max_entries) }
        })
        .collect()
}

/// Entry counts of the maps only the kernel fills, read through their own handles (never under
/// the maps lock) and at most every [`KERNEL_ONLY_EVERY`]: a full `FLOW_OWNER` takes ~1 s to walk.
#[derive(Default)]
struct KernelOnlyCounts {
    maps: OnceLock<Option<crate::dataplane::KernelOnlyMaps>>,
    last: Mutex<Option<(Instant, Counted)>>,
}

type Counted = Vec<(&'static str, usize)>;

const KERNEL_ONLY_EVERY: Duration = Duration::from_secs(30);

impl KernelOnlyCounts {
    fn open_once(&self, dp: &crate::dataplane::Dataplane) {
        self.maps.get_or_init(|| {
            dp.kernel_only_maps().inspect_err(|e| tracing::warn!(error = %e, "counting the kernel-only maps")).ok()
        });
    }

    fn counts(&self) -> Vec<(&'static str, usize)> {
        let Some(Some(maps)) = self.maps.get() else { return Vec::new() };
        let mut last = self.last.lock().expect("kernel-only counts lock");
        match &*last {
            Some((at, c)) if at.elapsed() < KERNEL_ONLY_EVERY => c.clone(),
            _ => {
                let c = maps.counts();
                *last = Some((Instant::now(), c.clone()));
                c
            }
        }
    }
}

/// The kernel collector's view of the agent (weak: the registry lives in the agent).
struct AgentKernel {
    agent: Weak<Inner>,
    own_cgroup: OnceLock<u64>,
    kernel_only: KernelOnlyCounts,
}

impl KernelSource for AgentKernel {
    fn snapshot(&self) -> Option<KernelSnapshot> {
        let agent = Agent { inner: self.agent.upgrade()? };
        let own = *self.own_cgroup.get_or_init(|| {
            crate::cgroup::cgroup2_mount()
                .and_then(|m| {
                    let rel = crate::cgroup::self_cgroup()?;
                    crate::cgroup::cgroup_id(&m.join(rel.strip_prefix("/").unwrap_or(&rel)))
                })
                .unwrap_or(0)
        });
        Some(kernel_snapshot(&agent, own, &self.kernel_only))
    }
}

impl Agent {
    /// Register the agent's own metrics and the kernel collector (once, at start).
    pub(super) fn register_own_metrics(&self) {
        let weak = Arc::downgrade(&self.inner);
        let view = |f: fn(&View) -> i64| {
            let w = weak.clone();
            move || w.upgrade().map(|i| f(&i.view.read().expect("view lock"))).unwrap_or(0)
        };
        let stat = |f: fn(&Inner) -> u64| {
            let w = weak.clone();
            move || w.upgrade().map(|i| f(&i)).unwrap_or(0)
        };
        let w = weak.clone();
        let agent = ValueCollector::new()
            .gauge(
                "registry_services",
                "ServiceEntries (and command-line allows) in the registry",
                view(|v| v.desired.services.len() as i64),
            )
            .gauge("registry_hosts", "Hosts (exact and wildcard) in the registry", view(|v| v.hosts() as i64))
            .gauge("registry_addresses", "Entries in the ALLOW map (address/prefix x port x protocol)", move || {
                w.upgrade().map(|i| i.maps.lock().expect("maps lock").allow().len() as i64).unwrap_or(0)
            })
            .counter("config_reloads", "Successful registry reloads", stat(|i| load(&i.stats.reloads)))
            .counter(
                "config_reload_errors",
                "Rejected registry reloads (the last good registry stayed enforced)",
                stat(|i| load(&i.stats.reload_errors)),
            )
            .counter("resolver_lookups", "Registry host lookups", stat(|i| load(&i.refresher.stats().lookups)))
            .counter(
                "resolver_failures",
                "Failed registry host lookups",
                stat(|i| load(&i.refresher.stats().failures)),
            );
        let kernel = KernelCollector(Box::new(AgentKernel {
            agent: weak,
            own_cgroup: OnceLock::new(),
            kernel_only: KernelOnlyCounts::default(),
        }));
        self.register_metrics(|reg| {
            reg.sub_registry_with_prefix("enforcer").register_collector(Box::new(agent));
            reg.register_collector(Box::new(kernel));
        });
        let hub = self.hub().clone();
        self.register_metrics(|reg| hub.register(reg));
    }

    /// Let a component register its metrics into the agent's registry (once, when it starts).
    pub fn register_metrics(&self, f: impl FnOnce(&mut Registry)) {
        self.inner.metrics.register(f);
    }

    /// The source labels of the workload called `name`.
    pub fn source_of(&self, name: &str) -> Source {
        match self.inner.names.lock().expect("names lock").as_ref() {
            Some(w) => w.source_of(name),
            None => Source::named(name, None),
        }
    }

    /// The source labels of a cgroup's traffic.
    pub fn source(&self, cgroup_id: u64) -> Source {
        match self.inner.names.lock().expect("names lock").as_mut() {
            Some(w) => w.source(cgroup_id),
            None => Source::unknown(),
        }
    }
}

impl crate::admin::AdminSource for Agent {
    fn registryz(&self) -> crate::admin::Registryz {
        crate::registryz::build(self)
    }

    fn metrics(&self, format: Format) -> String {
        self.inner.metrics.encode(format)
    }

    fn events(&self) -> (Vec<String>, Option<crate::events::Follower>) {
        let (recent, follower) = self.hub().snapshot();
        (recent, Some(follower))
    }

    fn graph(&self) -> Option<crate::ui::Graph> {
        Some(self.graph_snapshot())
    }

    fn ready(&self) -> bool {
        match self.inner.ready.lock().expect("ready lock").as_ref() {
            Some(r) => r.load(Ordering::Relaxed),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{DIR_INGRESS, PolicyId};

    use super::*;
    use crate::policy::{PortRule, ServiceInfo};

    fn svc(id: u32, name: &str, hosts: &[&str], kind: ServiceKind, protos: &[u8]) -> ServiceInfo {
        ServiceInfo {
            id: ServiceId::new(id).unwrap(),
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            kind,
            ports: vec![],
            proxied_ports: vec![],
            policy: PolicyId::DEFAULT,
            se_index: None,
            port_rules: protos
                .iter()
                .map(|p| PortRule {
                    name: String::new(),
                    number: 53,
                    target: None,
                    proto: *p,
                    proxied: false,
                    target_proxied: false,
                })
                .collect(),
        }
    }

    fn desired() -> Desired {
        Desired {
            services: vec![
                svc(1, "shop/api", &["api.shop.test"], ServiceKind::ServiceEntry, &[PROTO_TCP]),
                svc(2, "shop/ntp", &["ntp.shop.test"], ServiceKind::ServiceEntry, &[PROTO_UDP]),
                svc(3, "--allow 198.18.0.7:443", &["198.18.0.7/32"], ServiceKind::CommandLine, &[PROTO_TCP]),
                svc(4, "--allow example.com:443", &["example.com"], ServiceKind::CommandLine, &[PROTO_TCP]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn destinations_are_hosts_never_addresses() {
        let d = desired();
        let id = |n| ServiceId::new(n).unwrap();
        assert_eq!(destination(&d, id(1)), Destination::service("api.shop.test", Some("shop")));
        assert_eq!(destination(&d, id(1)).service_name, "api.shop.test", "Istio: a ServiceEntry's service is its host");
        assert_eq!(destination(&d, id(3)), Destination::passthrough(), "an address allow has no name");
        assert_eq!(destination(&d, id(4)), Destination::service("example.com", None));
        assert_eq!(destination(&d, id(4)).service_namespace, "unknown");
        assert_eq!(destination(&d, ServiceId::NONE), Destination::passthrough());
    }

    #[test]
    fn traffic_is_split_by_the_packets_l4_protocol() {
        let key = |cg: u64, proto: u8| TrafficKey {
            cgroup_id: cg,
            service_id: ServiceId::new(1).unwrap(),
            direction: DIR_INGRESS,
            family: 2,
            proto,
            _pad: 0,
        };
        assert_eq!(traffic_l4(&key(0, PROTO_TCP)), None, "no socket: neighbour discovery");
        assert_eq!(traffic_l4(&key(7, PROTO_TCP)), Some(L4::Tcp));
        assert_eq!(traffic_l4(&key(7, PROTO_UDP)), Some(L4::Udp));
        assert_eq!(traffic_l4(&key(7, 1)), None, "ICMP is in neither");
    }
}
