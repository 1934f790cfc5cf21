//! The registry model -> the map entries that should be in the kernel. Pure: no I/O, no aya, so the
//! translation and the diffs are unit-tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use enforcer_common::{
    ALLOW_F_CLI, ALLOW_F_DNS, ALLOW_F_PROXY, ANY_PORT, AllowKey, AllowValue, DestKey, FAMILY_V4, FAMILY_V6, PROTO_TCP,
    PROTO_UDP, PolicyId, ServiceId,
};
use ipnet::IpNet;

use crate::config::{
    EndpointAddress, Host, HostPattern, Registry, Resolution, ServiceEntry,
    host::{self, HostMap},
};

/// A destination rule as written by the user on the command line (`--allow`, `--allow-cidr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliAllow {
    pub target: CliTarget,
    /// `None`: any port.
    pub port: Option<u16>,
    /// What the user typed, for messages.
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliTarget {
    Host(String),
    Net(IpNet),
}

impl CliAllow {
    /// `host[:port]`, `1.2.3.4[:port]`, `[2001:db8::1]:443` or a bare IPv6 address. A host name
    /// must be made of RFC 1123 labels; anything with several `:` must be an IPv6 address.
    pub fn parse_host(s: &str) -> Result<Self, String> {
        let (host, port) = split_port(s)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self { target: CliTarget::Net(IpNet::from(ip)), port, text: s.to_string() });
        }
        if host.contains('/') {
            return Err(format!("`{s}` is not HOST[:PORT]; for a CIDR use --allow-cidr"));
        }
        if host.contains(':') {
            return Err(format!(
                "`{s}` is not HOST[:PORT]: it has several `:` but is not an IPv6 address; one port per --allow, and an IPv6 address with a port is written [ADDR]:PORT (e.g. [2001:db8::1]:443)"
            ));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Err(why) = check_host_name(&name) {
            return Err(format!("`{s}` is not HOST[:PORT]: {why}"));
        }
        Ok(Self { target: CliTarget::Host(name), port, text: s.to_string() })
    }

    /// `10.0.0.0/8[:port]`, `[2001:db8::/32]:443` or a bare IPv6 CIDR.
    pub fn parse_cidr(s: &str) -> Result<Self, String> {
        let (net, port) = split_port(s)?;
        let net: IpNet = net
            .parse()
            .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("`{s}` is not CIDR[:PORT] (e.g. 10.0.0.0/8:443 or [2001:db8::/32]:443)"))?;
        Ok(Self { target: CliTarget::Net(net.trunc()), port, text: s.to_string() })
    }
}

/// A DNS host name of RFC 1123 labels: letters, digits and `-` (not first or last), 1-63 characters
/// each, at most 253 in all; the last label is not all digits (that would be a mistyped IPv4
/// address).
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the host is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("the host name is {} characters long; at most 253 are allowed", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the host name has an empty label (`..` or a leading `.`)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label `{label}` is {} characters long; at most 63 are allowed", label.len()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            let hint = if c == '*' { " (wildcard hosts need a ServiceEntry)" } else { "" };
            return Err(format!(
                "`{c}` is not allowed in a host name; labels are letters, digits and `-` (RFC 1123){hint}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label `{label}` starts or ends with `-`"));
        }
    }
    if name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("it is not an IPv4 address (four numbers 0-255) and a host name cannot end in a number".into());
    }
    Ok(())
}

fn split_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: port `{p}` is not a number from 1 to 65535"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(|| format!("`{s}`: missing `]`"))?;
        return match after {
            "" => Ok((inner, None)),
            a => Ok((
                inner,
                Some(parse_port(a.strip_prefix(':').ok_or_else(|| format!("`{s}`: expected `:PORT` after `]`"))?)?),
            )),
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (h, p) = s.split_once(':').expect("one colon");
            Ok((h, Some(parse_port(p)?)))
        }
        // A bare IPv6 address or CIDR: no port.
        _ => Ok((s, None)),
    }
}

/// What a service id stands for, for events, the summary and (later) metrics labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: ServiceId,
    /// "namespace/name" for ServiceEntries, the flag text for command-line allows.
    pub name: String,
    pub hosts: Vec<String>,
    pub kind: ServiceKind,
    /// (port, protocol) pairs a learned address of this service is allowed on.
    pub ports: Vec<(u16, u8)>,
    /// Ports whose connections the kernel steers to the L7 proxy (DestinationRule tls.mode
    /// SIMPLE on an HTTP port, or SNI checking on a TLS port).
    pub proxied_ports: Vec<u16>,
    /// The policy whose registry defines it (shared services, e.g. command-line allows, name the
    /// first) and, for ServiceEntries, its index in that registry.
    pub policy: PolicyId,
    pub se_index: Option<usize>,
    /// How an address of this service becomes allow entries (see [`entries_for`]).
    pub port_rules: Vec<PortRule>,
}

/// One declared port of a service: the port number, its targetPort, the protocol, whether the
/// service port is steered to the L7 proxy, and the name (for endpoint port maps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub name: String,
    pub number: u16,
    pub target: Option<u16>,
    pub proto: u8,
    pub proxied: bool,
    /// The targetPort is steered to the proxy's SNI check too (`--sni-check-target-ports`).
    pub target_proxied: bool,
}

/// THE translation of (service, address, policy) into allow entries, used by the static compile
/// and by DNS learning alike: the service port (flagged for the proxy where the rule says so),
/// its targetPort (never steered: the proxy itself connects there) and an endpoint's own port for
/// that port name.
pub fn entries_for(
    policy_id: PolicyId,
    service_id: ServiceId,
    rules: &[PortRule],
    net: IpNet,
    endpoint_ports: Option<&BTreeMap<String, u16>>,
    mut out: impl FnMut(AllowEntry, AllowValue),
) {
    let net = normalize(net);
    let value = AllowValue::new(service_id, 0);
    for r in rules {
        let mut ports = vec![(r.number, r.proxied)];
        ports.extend(r.target.map(|t| (t, r.target_proxied)));
        if let Some(epp) = endpoint_ports.and_then(|m| m.get(&r.name)) {
            ports.push((*epp, false));
        }
        for (port, proxied) in ports {
            let v = if proxied { AllowValue { flags: value.flags | ALLOW_F_PROXY, ..value } } else { value };
            out(AllowEntry { policy_id, net, port, proto: r.proto }, v);
        }
    }
}

/// Stable service ids, allocated by name: the same key (policy scope + `namespace/name`, or a
/// command-line allow's text) gets the same id across reloads, recomputes *and restarts* (the id
/// is a hash of the key, probed past collisions), so counters, events and learned entries a
/// previous daemon left in the pinned maps keep meaning the same service. An id a removed service
/// had is not handed to another key while the allocator lives.
#[derive(Debug, Default)]
pub struct ServiceIds {
    by_key: HashMap<String, ServiceId>,
    taken: HashMap<ServiceId, String>,
    used: BTreeSet<String>,
}

/// FNV-1a, 32 bits: stable across builds and Rust versions (unlike std's hasher).
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl ServiceIds {
    /// The id of `key`, allocating one the first time.
    pub fn id(&mut self, key: &str) -> ServiceId {
        if !self.used.contains(key) {
            self.used.insert(key.to_string());
        }
        if let Some(id) = self.by_key.get(key) {
            return *id;
        }
        let mut raw = fnv1a(key);
        loop {
            // 0 is ServiceId::NONE; u32::MAX is kept for BlackHoleCluster in metrics.
            if raw != 0 && raw != u32::MAX {
                let id = ServiceId::new(raw).expect("non-zero");
                if self.taken.get(&id).is_none_or(|k| k == key) {
                    self.taken.insert(id, key.to_string());
                    self.by_key.insert(key.to_string(), id);
                    return id;
                }
            }
            raw = raw.wrapping_add(1);
        }
    }

    /// Forget the keys not asked for since the last call (their services left the registry; any
    /// kernel entry still carrying their id is removed by the same apply).
    pub fn end_generation(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.by_key.retain(|k, _| used.contains(k));
        // Ids of removed keys stay taken (never reused by another key in this process).
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    ServiceEntry,
    CommandLine,
    HostDns,
}

/// One allow entry: a prefix (v4-mapped IPv6 normalised to IPv4), a port and a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowEntry {
    pub policy_id: PolicyId,
    pub net: IpNet,
    pub port: u16,
    pub proto: u8,
}

impl AllowEntry {
    pub fn key(&self) -> (u32, AllowKey) {
        let (family, addr, bits) = net_bytes(&self.net);
        (
            AllowKey::prefix_len(bits),
            AllowKey { policy_id: self.policy_id, port: self.port, proto: self.proto, family, addr },
        )
    }

    pub fn from_key(prefix_len: u32, k: &AllowKey) -> Option<Self> {
        let net = net_from_bytes(k.family, &k.addr, prefix_len.checked_sub(AllowKey::FIXED_PREFIX_BITS)?)?;
        Some(Self { policy_id: k.policy_id, net, port: k.port, proto: k.proto })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = match self.net {
            IpNet::V4(n) if n.prefix_len() == 32 => n.addr().to_string(),
            IpNet::V6(n) if n.prefix_len() == 128 => format!("[{}]", n.addr()),
            IpNet::V6(n) => format!("[{n}]"),
            n => n.to_string(),
        };
        let port = if self.port == ANY_PORT { "*".to_string() } else { self.port.to_string() };
        write!(f, "{net}:{port}/{}", proto_name(self.proto))
    }
}

/// A `DESTS` entry: which service owns a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestEntry {
    pub net: IpNet,
}

impl DestEntry {
    pub fn key(&self) -> (u32, DestKey) {
        let (family, addr, bits) = net_bytes(&self.net);
        (DestKey::prefix_len(bits), DestKey { family: family as u32, addr })
    }

    pub fn from_key(prefix_len: u32, k: &DestKey) -> Option<Self> {
        let net = net_from_bytes(k.family as u8, &k.addr, prefix_len.checked_sub(DestKey::FIXED_PREFIX_BITS)?)?;
        Some(Self { net })
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "?",
    }
}

/// Normalise: IPv4-mapped IPv6 prefixes (::ffff:0:0/96 and longer) become IPv4, host bits cleared.
pub fn normalize(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && n.prefix_len() >= 96
    {
        return IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).expect("valid prefix").trunc();
    }
    net.trunc()
}

fn net_bytes(net: &IpNet) -> (u8, [u8; 16], u32) {
    let mut addr = [0u8; 16];
    match net {
        IpNet::V4(n) => {
            addr[..4].copy_from_slice(&n.network().octets());
            (FAMILY_V4, addr, u32::from(n.prefix_len()))
        }
        IpNet::V6(n) => {
            addr.copy_from_slice(&n.network().octets());
            (FAMILY_V6, addr, u32::from(n.prefix_len()))
        }
    }
}

fn net_from_bytes(family: u8, addr: &[u8; 16], bits: u32) -> Option<IpNet> {
    let bits = u8::try_from(bits).ok()?;
    match family {
        FAMILY_V4 => {
            let a = std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            IpNet::new(IpAddr::V4(a), bits).ok()
        }
        FAMILY_V6 => IpNet::new(IpAddr::V6(std::net::Ipv6Addr::from(*addr)), bits).ok(),
        _ => None,
    }
}

/// Address of an event / flow as an `IpAddr`.
pub fn addr_from_bytes(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(std::net::Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// Everything that should be in the maps for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub allow: BTreeMap<AllowEntry, AllowValue>,
    pub dests: BTreeMap<DestEntry, AllowValue>,
    pub services: Vec<ServiceInfo>,
    /// Things the user should know (unresolvable hosts, wildcard hosts with no addresses, ...).
    pub warnings: Vec<String>,
}

impl Desired {
    /// The service with this id (ids are ascending in `services`).
    pub fn service(&self, id: ServiceId) -> Option<&ServiceInfo> {
        self.services.binary_search_by_key(&id, |s| s.id).ok().map(|i| &self.services[i])
    }

    /// Add another policy's entries (their keys carry their own policy id; a service both list,
    /// such as a command-line allow, is kept once).
    pub fn merge(&mut self, other: Desired) {
        self.allow.extend(other.allow);
        for (k, v) in other.dests {
            self.dests.entry(k).or_insert(v);
        }
        self.services.extend(other.services);
        self.services.sort_by_key(|s| s.id);
        self.services.dedup_by_key(|s| s.id);
        self.warnings.extend(other.warnings);
    }
}

/// What the compiler needs besides the registry.
pub struct Inputs<'a> {
    pub registry: &'a Registry,
    /// Addresses of every name `names_to_resolve` returned (missing: resolution failed).
    pub resolved: &'a HashMap<String, Vec<IpAddr>>,
    pub cli: &'a [CliAllow],
    /// The host's DNS resolvers (port 53 is allowed to them, TCP and UDP).
    pub dns_servers: &'a [IpAddr],
    pub policy_id: PolicyId,
    /// Steer TLS/HTTPS ports through the proxy's SNI check.
    pub sni_check: bool,
    /// Steer the targetPorts that carry TLS (of TLS/HTTPS ports, or of ports whose
    /// DestinationRule originates TLS) through the SNI check too.
    pub sni_check_target_ports: bool,
    /// The scope service keys are allocated in ("" for the default policy, the workload's name
    /// for a workload with its own registry).
    pub scope: &'a str,
}

/// Istio's default `rootNamespace`: its DestinationRules apply mesh-wide (the third choice).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The namespace of a workload policy, when its name (or its service-key scope, the name and a
/// NUL) says: Kubernetes policies are named `namespace/pod`. Registry files: none.
pub fn workload_namespace(policy_name: &str) -> Option<&str> {
    policy_name.trim_end_matches('\0').split_once('/').map(|(ns, _)| ns).filter(|ns| !ns.is_empty())
}

/// THE DestinationRule of a ServiceEntry for a client in `client_ns`: what the kernel's steering
/// ([`tls_for`], ALLOW_F_PROXY) and the proxy's upstream (agent/proxy_bridge.rs) both use, so
/// they cannot disagree. Istio's precedence: a rule in the client's namespace, else in the
/// service's namespace, else in the root namespace; without a client namespace (registry files)
/// a rule in any other namespace comes last. Within one namespace the rule whose `host` covers a
/// host of the entry most specifically (the one host matcher: exact, then the longest wildcard;
/// ties: the first listed). `exportTo` and `workloadSelector` were applied when a Kubernetes
/// pod's registry was built (kube/policy.rs keeps only the rules visible to and selecting the
/// pod); registry files carry neither workload labels nor namespaces (those fields are warned
/// about as unused).
pub fn destination_rule<'a>(
    registry: &'a Registry,
    se: &ServiceEntry,
    client_ns: Option<&str>,
) -> Option<&'a crate::config::DestinationRule> {
    let rank = |dr: &crate::config::DestinationRule| -> Option<u8> {
        if Some(dr.namespace.as_str()) == client_ns {
            Some(0)
        } else if dr.namespace == se.namespace {
            Some(1)
        } else if dr.namespace == ROOT_NAMESPACE {
            Some(2)
        } else if client_ns.is_none() {
            Some(3)
        } else {
            None
        }
    };
    (0..=3u8).find_map(|tier| {
        se.hosts.iter().find_map(|h| {
            let host = crate::config::host::HostPattern::parse(&h.to_string());
            let candidates =
                registry.destination_rules.iter().filter(|dr| rank(dr) == Some(tier)).map(|dr| (dr.host_pattern(), dr));
            crate::config::host::most_specific(&host, candidates)
        })
    })
}

/// The TLS settings [`destination_rule`] gives `port` of a ServiceEntry (port-level first), if
/// any, for a client in `client_ns`.
pub fn tls_for<'a>(
    registry: &'a Registry,
    se: &ServiceEntry,
    port: u16,
    client_ns: Option<&str>,
) -> Option<(&'a crate::config::DestinationRule, &'a crate::config::TlsSettings)> {
    let dr = destination_rule(registry, se, client_ns)?;
    dr.port_tls.get(&port).or(dr.tls.as_ref()).map(|t| (dr, t))
}

/// Does `port` of `se` originate TLS (`tls.mode: SIMPLE`) for a client in `client_ns`?
pub fn originates_tls(registry: &Registry, se: &ServiceEntry, port: u16, client_ns: Option<&str>) -> bool {
    tls_for(registry, se, port, client_ns).is_some_and(|(_, t)| t.mode == crate::config::TlsMode::Simple)
}

/// Is this port's traffic steered to the L7 proxy?
fn proxied(inp: &Inputs<'_>, se: &ServiceEntry, p: &crate::config::Port) -> bool {
    if p.protocol.is_udp() {
        return false;
    }
    let simple = originates_tls(inp.registry, se, p.number, workload_namespace(inp.scope));
    (simple && !p.protocol.is_tls()) || (inp.sni_check && p.protocol.is_tls())
}

/// Is this port's targetPort steered to the proxy's SNI check? Only where it carries TLS.
fn target_proxied(inp: &Inputs<'_>, se: &ServiceEntry, p: &crate::config::Port) -> bool {
    if !inp.sni_check_target_ports || p.target_port.is_none() || p.protocol.is_udp() {
        return false;
    }
    p.protocol.is_tls() || originates_tls(inp.registry, se, p.number, workload_namespace(inp.scope))
}

/// Names the registry and the command line need resolved before `compile`.
pub fn names_to_resolve(registry: &Registry, cli: &[CliAllow]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for se in &registry.services {
        match se.resolution {
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if se.endpoints.is_empty() {
                    names.extend(exact_hosts(se));
                } else {
                    names.extend(se.endpoints.iter().filter_map(|e| match &e.address {
                        EndpointAddress::Hostname(h) => Some(h.to_ascii_lowercase()),
                        _ => None,
                    }));
                }
            }
            Resolution::None if se.addresses.is_empty() => names.extend(exact_hosts(se)),
            _ => {}
        }
    }
    for c in cli {
        if let CliTarget::Host(h) = &c.target {
            names.insert(h.clone());
        }
    }
    names
}

fn exact_hosts(se: &ServiceEntry) -> impl Iterator<Item = String> + '_ {
    se.hosts.iter().filter_map(|h| match h {
        Host::Exact(name) if name.parse::<IpAddr>().is_err() => Some(name.to_ascii_lowercase()),
        _ => None,
    })
}

/// Translate the registry into map entries, with stable service ids from `ids`, and the
/// name index the DNS forwarder matches against.
///
/// Per ServiceEntry port (TCP unless the protocol is UDP), the allowed (address, port) pairs are:
/// `addresses` x {number, targetPort}; STATIC endpoints x {number, targetPort, endpoint port};
/// DNS: the hosts' (or hostname endpoints') resolved addresses x the same ports; NONE without
/// `addresses`: the exact hosts' resolved addresses. Wildcard hosts get their addresses from the
/// DNS forwarder at run time (through [`entries_for`] too), not from here.
pub fn compile(inp: &Inputs<'_>, ids: &mut ServiceIds) -> (Desired, HostIndex) {
    let mut d = Desired::default();
    let mut ix = HostIndex::default();
    for (se_index, se) in inp.registry.services.iter().enumerate() {
        let id = ids.id(&format!("{}se:{}/{}", inp.scope, se.namespace, se.name));
        let port_rules: Vec<PortRule> = se
            .ports
            .iter()
            .map(|p| PortRule {
                name: p.name.clone(),
                number: p.number,
                target: p.target_port,
                proto: if p.protocol.is_udp() { PROTO_UDP } else { PROTO_TCP },
                proxied: proxied(inp, se, p),
                target_proxied: target_proxied(inp, se, p),
            })
            .collect();
        d.services.push(ServiceInfo {
            id,
            name: format!("{}/{}", se.namespace, se.name),
            hosts: se.hosts.iter().map(|h| h.to_string()).collect(),
            kind: ServiceKind::ServiceEntry,
            ports: port_rules
                .iter()
                .flat_map(|r| std::iter::once((r.number, r.proto)).chain(r.target.map(|t| (t, r.proto))))
                .collect(),
            proxied_ports: port_rules.iter().filter(|r| r.proxied).map(|r| r.number).collect(),
            policy: inp.policy_id,
            se_index: Some(se_index),
            port_rules: port_rules.clone(),
        });
        ix.add_service(se, id);
        let value = AllowValue::new(id, 0);

        // (net, extra ports from the endpoint's port map)
        let mut targets: Vec<(IpNet, Option<&std::collections::BTreeMap<String, u16>>)> = Vec::new();
        targets.extend(se.addresses.iter().map(|n| (*n, None)));
        for h in &se.hosts {
            if let Host::Exact(name) = h
                && let Ok(ip) = name.parse::<IpAddr>()
            {
                targets.push((IpNet::from(ip), None));
            }
        }
        let mut resolve = |name: &str, ports, targets: &mut Vec<_>| match inp.resolved.get(name) {
            Some(ips) if !ips.is_empty() => targets.extend(ips.iter().map(|ip| (IpNet::from(*ip), ports))),
            _ => d.warnings.push(format!(
                "{}/{}: host {name} did not resolve; connections to it are denied until it does",
                se.namespace, se.name
            )),
        };
        match se.resolution {
            Resolution::Static => {
                for ep in &se.endpoints {
                    if let EndpointAddress::Ip(ip) = ep.address {
                        targets.push((IpNet::from(ip), Some(&ep.ports)));
                    }
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if se.endpoints.is_empty() {
                    for name in exact_hosts(se) {
                        resolve(&name, None, &mut targets);
                    }
                } else {
                    for ep in &se.endpoints {
                        match &ep.address {
                            EndpointAddress::Ip(ip) => targets.push((IpNet::from(*ip), Some(&ep.ports))),
                            EndpointAddress::Hostname(h) => {
                                resolve(&h.to_ascii_lowercase(), Some(&ep.ports), &mut targets)
                            }
                            EndpointAddress::Unix(_) => {}
                        }
                    }
                }
            }
            Resolution::None => {
                if se.addresses.is_empty() {
                    for name in exact_hosts(se) {
                        resolve(&name, None, &mut targets);
                    }
                }
            }
        }
        for (net, ep_ports) in targets {
            d.dests.entry(DestEntry { net: normalize(net) }).or_insert(value);
            entries_for(inp.policy_id, id, &port_rules, net, ep_ports, |e, v| merge_entry(&mut d.allow, e, v));
        }
    }

    for c in inp.cli {
        let flag = match c.target {
            CliTarget::Net(n) if n.prefix_len() < n.max_prefix_len() => "--allow-cidr",
            _ => "--allow",
        };
        let name = format!("{flag} {}", c.text);
        let id = ids.id(&format!("cli:{name}"));
        let port = c.port.unwrap_or(ANY_PORT);
        let port_rules: Vec<PortRule> = [PROTO_TCP, PROTO_UDP]
            .into_iter()
            .map(|proto| PortRule {
                name: String::new(),
                number: port,
                target: None,
                proto,
                proxied: false,
                target_proxied: false,
            })
            .collect();
        d.services.push(ServiceInfo {
            id,
            name,
            hosts: match &c.target {
                CliTarget::Host(h) => vec![h.clone()],
                CliTarget::Net(n) => vec![n.to_string()],
            },
            kind: ServiceKind::CommandLine,
            ports: [PROTO_TCP, PROTO_UDP].into_iter().map(|p| (port, p)).collect(),
            proxied_ports: vec![],
            policy: inp.policy_id,
            se_index: None,
            port_rules: port_rules.clone(),
        });
        let nets: Vec<IpNet> = match &c.target {
            CliTarget::Net(n) => {
                ix.explicit.push(normalize(*n));
                vec![*n]
            }
            CliTarget::Host(h) => {
                ix.add_exact(h, id);
                match inp.resolved.get(h) {
                    Some(ips) if !ips.is_empty() => ips.iter().map(|ip| IpNet::from(*ip)).collect(),
                    _ => {
                        d.warnings.push(format!("{}: host {h} did not resolve; nothing allowed for it", c.text));
                        vec![]
                    }
                }
            }
        };
        for net in nets {
            d.dests.entry(DestEntry { net: normalize(net) }).or_insert(AllowValue::new(id, ALLOW_F_CLI));
            entries_for(inp.policy_id, id, &port_rules, net, None, |e, v| {
                merge_entry(&mut d.allow, e, AllowValue { flags: v.flags | ALLOW_F_CLI, ..v })
            });
        }
    }

    if !inp.dns_servers.is_empty() {
        let id = ids.id("host-dns");
        d.services.push(ServiceInfo {
            id,
            name: "host DNS resolvers".into(),
            hosts: inp.dns_servers.iter().map(|s| s.to_string()).collect(),
            kind: ServiceKind::HostDns,
            ports: vec![(53, PROTO_TCP), (53, PROTO_UDP)],
            proxied_ports: vec![],
            policy: inp.policy_id,
            se_index: None,
            port_rules: vec![],
        });
        let value = AllowValue::new(id, ALLOW_F_DNS);
        for ip in inp.dns_servers {
            let net = normalize(IpNet::from(*ip));
            for proto in [PROTO_TCP, PROTO_UDP] {
                d.allow.entry(AllowEntry { policy_id: inp.policy_id, net, port: 53, proto }).or_insert(value);
            }
        }
    }
    d.services.sort_by_key(|s| s.id);
    (d, ix)
}

/// Two services allowing the same (address, port, protocol): the first keeps the attribution,
/// but flags merge (a proxy/SNI steering flag is never lost to an unflagged twin, whatever the
/// order of the ServiceEntries or ports).
fn merge_entry(allow: &mut BTreeMap<AllowEntry, AllowValue>, e: AllowEntry, v: AllowValue) {
    allow.entry(e).and_modify(|cur| cur.flags |= v.flags).or_insert(v);
}

/// Changes that turn one map content into another: apply `upserts` before `removals`, so a
/// destination allowed before and after is never briefly missing.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
}

impl<K, V> Diff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Diff<K, V> {
    Diff {
        upserts: new.iter().filter(|(k, v)| old.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        removals: old.keys().filter(|k| !new.contains_key(k)).copied().collect(),
    }
}

/// Registry names -> service, for the DNS forwarder: the registry's hosts in a
/// [`HostMap`](crate::config::host::HostMap) (exact names, `*.suffix` on label boundaries, the most
/// specific wins), plus the addresses the registry lists explicitly (exempt from the
/// DNS-rebinding filter).
#[derive(Debug, Default, Clone)]
pub struct HostIndex {
    hosts: HostMap<ServiceId>,
    explicit: Vec<IpNet>,
}

impl HostIndex {
    /// Index one ServiceEntry's hosts and explicit addresses under `id` (the first service
    /// listing a host keeps it).
    pub fn add_service(&mut self, se: &ServiceEntry, id: ServiceId) {
        for h in &se.hosts {
            self.hosts.insert(h.pattern(), id);
        }
        self.explicit.extend(se.addresses.iter().map(|n| normalize(*n)));
        for ep in &se.endpoints {
            if let EndpointAddress::Ip(ip) = ep.address {
                self.explicit.push(normalize(IpNet::from(ip)));
            }
        }
    }

    /// Index an `--allow` host name (exact, already normalized by [`CliAllow::parse_host`]).
    fn add_exact(&mut self, name: &str, id: ServiceId) {
        self.hosts.insert(HostPattern::Exact(host::normalize(name).into_owned()), id);
    }

    pub fn match_name(&self, qname: &str) -> Option<ServiceId> {
        self.hosts.get(qname).copied()
    }

    /// `qname` is an exact host (or an `--allow` host), not only covered by a wildcard.
    pub fn is_exact_host(&self, qname: &str) -> bool {
        self.hosts.get_exact(qname).is_some()
    }

    pub fn explicitly_listed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.explicit.iter().any(|n| n.contains(&ip))
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }
}

/// The host's DNS resolvers, from resolv.conf's `nameserver` lines.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver").then(|| f.next()?.split('%').next()?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(yaml: &str) -> Registry {
        crate::config::load_str(yaml, std::path::Path::new("test.yaml")).expect("valid registry")
    }

    fn compile_full(
        reg: &Registry,
        resolved: &[(&str, &[&str])],
        cli: &[CliAllow],
        ids: &mut ServiceIds,
        sni_check: bool,
    ) -> (Desired, HostIndex) {
        let resolved: HashMap<String, Vec<IpAddr>> =
            resolved.iter().map(|(n, ips)| (n.to_string(), ips.iter().map(|i| i.parse().unwrap()).collect())).collect();
        compile(
            &Inputs {
                registry: reg,
                resolved: &resolved,
                cli,
                dns_servers: &[],
                policy_id: PolicyId::DEFAULT,
                sni_check,
                sni_check_target_ports: false,
                scope: "",
            },
            ids,
        )
    }

    fn compile_with(reg: &Registry, resolved: &[(&str, &[&str])], cli: &[CliAllow]) -> Desired {
        compile_full(reg, resolved, cli, &mut ServiceIds::default(), false).0
    }

    fn entries(d: &Desired) -> Vec<String> {
        d.allow.keys().map(|e| e.to_string()).collect()
    }

    #[test]
    fn static_endpoints_allow_service_target_and_endpoint_ports() {
        let r = reg(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 443}
  resolution: STATIC
  endpoints:
  - address: 10.0.0.5
  - address: 10.0.0.6
    ports: {http: 8080}
"#);
        let d = compile_with(&r, &[], &[]);
        assert_eq!(
            entries(&d),
            vec!["10.0.0.5:80/tcp", "10.0.0.5:443/tcp", "10.0.0.6:80/tcp", "10.0.0.6:443/tcp", "10.0.0.6:8080/tcp"]
        );
        assert_eq!(d.services[0].name, "default/api");
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn addresses_cidrs_and_udp() {
        let r = reg(r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: dns, namespace: infra}
spec:
  hosts: [ntp.example.com]
  addresses: [192.0.2.0/24, "2001:db8::/64", "::ffff:198.51.100.7"]
  ports:
  - {number: 123, name: ntp, protocol: UDP}
  resolution: NONE
"#);
        let d = compile_with(&r, &[], &[]);
        assert_eq!(entries(&d), vec!["192.0.2.0/24:123/udp", "198.51.100.7:123/udp", "[2001:db8::/64]:123/udp"]);
        assert_eq!(d.dests.len(), 3);
    }

    #[test]
    fn dns_resolution_uses_resolved_addresses_and_warns_on_failure() {
        let r = reg(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
"#);
        let names = names_to_resolve(&r, &[]);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["a.example.com", "b.example.com"]);
        let d = compile_with(&r, &[("a.example.com", &["203.0.113.1", "2001:db8::1"])], &[]);
        assert_eq!(entries(&d), vec!["203.0.113.1:443/tcp", "[2001:db8::1]:443/tcp"]);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("b.example.com"), "{}", d.warnings[0]);
    }

    #[test]
    fn cli_allows() {
        let r = Registry::default();
        let cli = vec![
            CliAllow::parse_host("203.0.113.9:8443").unwrap(),
            CliAllow::parse_cidr("10.1.0.0/16").unwrap(),
            CliAllow::parse_cidr("[2001:db8::/32]:443").unwrap(),
            CliAllow::parse_host("api.test").unwrap(),
        ];
        let d = compile_with(&r, &[("api.test", &["198.51.100.1"])], &cli);
        assert_eq!(
            entries(&d),
            vec![
                "10.1.0.0/16:*/tcp",
                "10.1.0.0/16:*/udp",
                "198.51.100.1:*/tcp",
                "198.51.100.1:*/udp",
                "203.0.113.9:8443/tcp",
                "203.0.113.9:8443/udp",
                "[2001:db8::/32]:443/tcp",
                "[2001:db8::/32]:443/udp",
            ]
        );
        assert!(d.allow.values().all(|v| v.flags == ALLOW_F_CLI));
    }

    #[test]
    fn cli_parse_errors_say_what_is_wrong() {
        assert!(CliAllow::parse_host("1.2.3.4:99999").unwrap_err().contains("port"));
        assert!(CliAllow::parse_host("10.0.0.0/8").unwrap_err().contains("--allow-cidr"));
        assert!(CliAllow::parse_cidr("nonsense:80").is_err());
        assert_eq!(CliAllow::parse_host("2001:db8::1").unwrap().port, None);
        assert_eq!(CliAllow::parse_host("[2001:db8::1]:80").unwrap().port, Some(80));
    }

    #[test]
    fn cli_hosts_must_be_names_or_addresses() {
        let err = |s: &str| CliAllow::parse_host(s).unwrap_err();
        assert!(err("198.18.11.3:80:90").contains("one port per --allow"), "{}", err("198.18.11.3:80:90"));
        assert!(err("2001:db8::zz").contains("not an IPv6 address"), "{}", err("2001:db8::zz"));
        assert!(err("bad_name!").contains("RFC 1123"), "{}", err("bad_name!"));
        assert!(err("*.example.com").contains("ServiceEntry"), "{}", err("*.example.com"));
        assert!(err("300.1.1.1").contains("IPv4"), "{}", err("300.1.1.1"));
        assert!(err("-a.example").contains("`-`"));
        assert!(err("a..example").contains("empty label"));
        assert!(err(&format!("{}.example", "a".repeat(64))).contains("63"));
        assert!(err("api.example.com:0").contains("port"));
        assert!(err("api.example.com:65536").contains("port"));
        assert!(err(":443").contains("empty"));
        let ok = CliAllow::parse_host("API.Example.com.:443").unwrap();
        assert_eq!((ok.target, ok.port), (CliTarget::Host("api.example.com".into()), Some(443)));
        assert_eq!(CliAllow::parse_host("xn--bcher-kva.example").unwrap().port, None);
        assert_eq!(CliAllow::parse_host("localhost:65535").unwrap().port, Some(65535));
        assert_eq!(CliAllow::parse_host("1.2.3.4").unwrap().target, CliTarget::Net("1.2.3.4/32".parse().unwrap()));
    }

    #[test]
    fn cli_cidrs_are_truncated_to_the_network() {
        let c = CliAllow::parse_cidr("198.18.11.7/24").unwrap();
        assert_eq!(c.target, CliTarget::Net("198.18.11.0/24".parse().unwrap()));
        assert_eq!(c.text, "198.18.11.7/24", "the text keeps what was written, for the warning");
        let c = CliAllow::parse_cidr("[2001:db8::7/64]:443").unwrap();
        assert_eq!((c.target, c.port), (CliTarget::Net("2001:db8::/64".parse().unwrap()), Some(443)));
        assert!(CliAllow::parse_cidr("198.18.11.7/33").is_err());
        assert!(CliAllow::parse_cidr("198.18.11.0/24:0").unwrap_err().contains("port"));
    }

    #[test]
    fn keys_round_trip() {
        for s in ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/48", "::1/128"] {
            let e = AllowEntry {
                policy_id: PolicyId::new(3).unwrap(),
                net: s.parse().unwrap(),
                port: 443,
                proto: PROTO_TCP,
            };
            let (plen, k) = e.key();
            assert_eq!(AllowEntry::from_key(plen, &k), Some(e));
            let de = DestEntry { net: s.parse().unwrap() };
            let (plen, k) = de.key();
            assert_eq!(DestEntry::from_key(plen, &k), Some(de));
        }
    }

    #[test]
    fn diff_orders_adds_before_removes() {
        let a: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into();
        let b: BTreeMap<u32, u32> = [(2, 2), (3, 30), (4, 4)].into();
        let d = diff(&a, &b);
        assert_eq!(d.upserts, vec![(3, 30), (4, 4)]);
        assert_eq!(d.removals, vec![1]);
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn host_index_matches_on_label_boundaries() {
        let r = reg(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: w}
spec:
  hosts: ["*.svc.test", api.example.com]
  addresses: [10.9.0.0/16]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: NONE
"#);
        let (d, ix) = compile_full(&r, &[], &[], &mut ServiceIds::default(), false);
        let w = Some(d.services[0].id);
        assert_eq!(ix.match_name("a.svc.test"), w);
        assert_eq!(ix.match_name("x.y.svc.test."), w);
        assert_eq!(ix.match_name("SVC.TEST"), None, "the bare domain is not matched by *.svc.test");
        assert_eq!(ix.match_name("evilsvc.test"), None);
        assert_eq!(ix.match_name("api.example.com"), w);
        assert_eq!(ix.match_name("x.api.example.com"), None);
        assert!(ix.explicitly_listed("10.9.3.4".parse().unwrap()));
        assert!(ix.explicitly_listed("::ffff:10.9.3.4".parse().unwrap()));
        assert!(!ix.explicitly_listed("10.8.0.1".parse().unwrap()));
        assert_eq!(d.services[0].ports, vec![(443, PROTO_TCP)]);
    }

    #[test]
    fn destination_rule_simple_marks_the_service_port_for_the_proxy() {
        let r = reg(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: STATIC
  endpoints: [{address: 198.51.100.10}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cnn}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE}
"#);
        let d = compile_with(&r, &[], &[]);
        let flags = |port: u16| d.allow.iter().find(|(e, _)| e.port == port).map(|(_, v)| v.flags).unwrap();
        assert_eq!(flags(80) & ALLOW_F_PROXY, ALLOW_F_PROXY, "port 80 goes through the proxy");
        assert_eq!(flags(443) & ALLOW_F_PROXY, 0, "the proxy's own upstream port is not steered");
        assert_eq!(d.services[0].proxied_ports, vec![80]);
    }

    const SHARED_PORT_LAYOUT: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: STATIC
  endpoints: [{address: 198.51.100.10}]
"#;

    #[test]
    fn sni_check_flag_survives_an_unflagged_target_port_in_either_order() {
        // Istio's sample layout: port 80 with targetPort 443 and port 443 TLS on one ServiceEntry.
        let swapped = SHARED_PORT_LAYOUT.replace(
            "  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}\n  - {number: 443, name: https-port, protocol: HTTPS}",
            "  - {number: 443, name: https-port, protocol: HTTPS}\n  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}",
        );
        assert_ne!(swapped, SHARED_PORT_LAYOUT);
        for yaml in [SHARED_PORT_LAYOUT, swapped.as_str()] {
            let (d, _) = compile_full(&reg(yaml), &[], &[], &mut ServiceIds::default(), true);
            let v443 = d.allow.iter().find(|(e, _)| e.port == 443).map(|(_, v)| v.flags).unwrap();
            assert_eq!(v443 & ALLOW_F_PROXY, ALLOW_F_PROXY, "443 is SNI-checked whatever the order");
        }
    }

    #[test]
    fn service_ids_are_stable_by_name_across_reorders_and_removals() {
        let two = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec: {hosts: [a.test], addresses: [192.0.2.1], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec: {hosts: [b.test], addresses: [192.0.2.2], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}
"#;
        let mut ids = ServiceIds::default();
        let (d1, _) = compile_full(&reg(two), &[], &[], &mut ids, false);
        ids.end_generation();
        let id_of = |d: &Desired, n: &str| d.services.iter().find(|s| s.name == n).map(|s| s.id);
        // b alone, then a new one inserted before it: b keeps its id, the newcomer gets a fresh one.
        let (parts_a, parts_b) = two.split_once("---").unwrap();
        let (d2, _) = compile_full(&reg(parts_b), &[], &[], &mut ids, false);
        ids.end_generation();
        assert_eq!(id_of(&d2, "default/b"), id_of(&d1, "default/b"));
        let c = parts_a.replace("name: a}", "name: c}").replace("a.test", "c.test");
        let (d3, _) = compile_full(&reg(&format!("{c}---{parts_b}")), &[], &[], &mut ids, false);
        assert_eq!(id_of(&d3, "default/b"), id_of(&d1, "default/b"));
        assert_ne!(id_of(&d3, "default/c"), id_of(&d1, "default/a"), "a removed id is not handed to another service");
    }

    #[test]
    fn service_ids_are_the_same_in_a_new_process() {
        // A restarted daemon must give the learned entries it adopts the same meaning.
        let r = reg(SHARED_PORT_LAYOUT);
        let (a, _) = compile_full(&r, &[], &[], &mut ServiceIds::default(), false);
        let (b, _) = compile_full(&r, &[], &[], &mut ServiceIds::default(), false);
        assert_eq!(
            a.services.iter().map(|s| s.id).collect::<Vec<_>>(),
            b.services.iter().map(|s| s.id).collect::<Vec<_>>()
        );
        let mut ids = ServiceIds::default();
        let x = ids.id("se:default/x");
        ids.end_generation();
        ids.end_generation();
        assert_eq!(ids.id("se:default/x"), x, "a key that comes back gets its id back");
    }

    #[test]
    fn resolv_conf() {
        let t = "# c\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch x\nnameserver ::1\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap(), "::1".parse().unwrap()]
        );
    }
}
