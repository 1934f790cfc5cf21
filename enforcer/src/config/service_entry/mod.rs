//! `ServiceEntry`: Istio's `ValidateServiceEntry` (istio/istio pkg/config/validation) and the CRD
//! schema's rules (istio/api), one function per field group, into [`ServiceEntry`].

use std::collections::HashSet;

mod endpoints;

use super::field::Field;
use super::loader::{Ctx, FileLoader, Meta};
use super::model::*;
use super::validate;
use super::yaml::{Node, Yaml};

const SPEC_FIELDS: [&str; 9] = [
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workloadSelector",
    "exportTo",
    "subjectAltNames",
];
const PORT_FIELDS: [&str; 4] = ["number", "protocol", "name", "targetPort"];
pub(super) const ENDPOINT_FIELDS: [&str; 7] =
    ["address", "ports", "labels", "network", "locality", "weight", "serviceAccount"];
const RESOLUTIONS: [&str; 5] = ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"];
const LOCATIONS: [&str; 2] = ["MESH_EXTERNAL", "MESH_INTERNAL"];
/// The CRD's `maxItems` for `addresses` and `hosts`/`ports`, and for `endpoints`.
const CRD_MAX_ITEMS: usize = 256;
pub(super) const CRD_MAX_ENDPOINTS: usize = 4096;

/// `spec.resolution`, with DYNAMIC_DNS kept apart for its own rules.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Res {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

impl Res {
    fn name(self) -> &'static str {
        match self {
            Res::None => "NONE",
            Res::Static => "STATIC",
            Res::Dns => "DNS",
            Res::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Res::DynamicDns => "DYNAMIC_DNS",
        }
    }

    fn model(self) -> Resolution {
        match self {
            Res::None => Resolution::None,
            Res::Static => Resolution::Static,
            Res::Dns | Res::DynamicDns => Resolution::Dns,
            Res::DnsRoundRobin => Resolution::DnsRoundRobin,
        }
    }
}

/// A host as written, with what it became.
struct HostItem {
    raw: String,
    line: usize,
    /// `None` for a partial wildcard (accepted with a warning; matches nothing here).
    host: Option<Host>,
}

/// A port as written (the protocol string kept for Istio's exact-spelling checks).
pub(super) struct PortItem {
    pub(super) port: Port,
    pub(super) protocol_raw: String,
}

pub(super) const SPEC: Field<'static> = Field::ROOT;

/// Collect into a vector of exactly the needed capacity (not the source's, as in-place collection
/// would keep, nor Vec's minimum of 4).
fn compact<T>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = it.collect();
    v.shrink_to_fit();
    v
}

impl FileLoader<'_> {
    pub(in crate::config) fn service_entry(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let errors_before = self.errors.len();
        let meta = self.metadata(ctx, node);
        let spec_f = SPEC.key("spec");
        let Some(spec) = node.get("spec").filter(|s| !s.is_null()) else {
            self.error(ctx, node.line, &spec_f, "missing spec", "add spec with hosts and ports");
            return;
        };
        if !self.is_map(ctx, spec, &spec_f) {
            return;
        }
        self.known_fields(ctx, spec, &spec_f, &SPEC_FIELDS);

        let selector = self.workload_selector(
            ctx,
            spec,
            "labels",
            "ServiceEntry",
            "service entry: workload selector specified without labels, will be applied to all services in namespace",
        );
        let res = self.se_resolution(ctx, spec);
        let location = self.se_location(ctx, spec);
        let hosts = self.se_hosts(ctx, spec, res);
        let addresses = self.se_addresses(ctx, spec, res);
        let auto_allocate = res != Res::None
            && addresses.is_empty()
            && !meta
                .labels
                .get("networking.istio.io/enable-autoallocate-ip")
                .is_some_and(|v| v.eq_ignore_ascii_case("false"));
        let ports = self.se_ports(ctx, spec, addresses.is_empty() && !auto_allocate);
        let endpoints = self.se_endpoints(ctx, spec, res, &ports, selector.is_some());
        self.se_resolution_rules(
            ctx,
            spec,
            res,
            location,
            &meta,
            &hosts,
            &addresses,
            &ports,
            &endpoints,
            selector.is_some(),
        );
        let export_to = self.export_to(ctx, spec, true, false);
        self.se_notes(ctx, spec, res, location, &export_to);

        if self.errors.len() > errors_before {
            return;
        }
        let Some(name) = meta.name else { return };
        let source = self.src(ctx, node.line);
        // Exact capacities: a 100k-entry registry keeps these for its lifetime.
        self.registry.services.push(ServiceEntry {
            name,
            namespace: meta.namespace,
            hosts: compact(hosts.into_iter().filter_map(|h| h.host)),
            addresses: compact(addresses.into_iter().map(|(n, _, _)| n)),
            ports: compact(ports.into_iter().map(|p| p.port)),
            endpoints: compact(endpoints.into_iter().filter_map(|(e, _)| e)),
            resolution: res.model(),
            location,
            export_to,
            workload_selector: selector,
            source,
        });
    }

    /// `spec.resolution` (default NONE).
    fn se_resolution(&mut self, ctx: &Ctx, spec: &Node<'_>) -> Res {
        let sf = SPEC.key("spec");
        let Some(r) = spec.get("resolution").filter(|r| !r.is_null()) else { return Res::None };
        match self.enum_of(ctx, r, &sf.key("resolution"), "resolution type", &RESOLUTIONS) {
            Some("STATIC") => Res::Static,
            Some("DNS") => Res::Dns,
            Some("DNS_ROUND_ROBIN") => Res::DnsRoundRobin,
            Some("DYNAMIC_DNS") => Res::DynamicDns,
            _ => Res::None,
        }
    }

    /// `spec.location` (default MESH_EXTERNAL).
    fn se_location(&mut self, ctx: &Ctx, spec: &Node<'_>) -> Location {
        let sf = SPEC.key("spec");
        let Some(l) = spec.get("location").filter(|l| !l.is_null()) else { return Location::MeshExternal };
        match self.enum_of(ctx, l, &sf.key("location"), "location", &LOCATIONS) {
            Some("MESH_INTERNAL") => Location::MeshInternal,
            _ => Location::MeshExternal,
        }
    }

    /// `spec.hosts`: at least one; each a DNS name with an optional leading wildcard label, never
    /// `*` alone; partial wildcards (`*x.com`) are a warning (except with DYNAMIC_DNS).
    fn se_hosts(&mut self, ctx: &Ctx, spec: &Node<'_>, res: Res) -> Vec<HostItem> {
        let sf = SPEC.key("spec");
        let hf = sf.key("hosts");
        let mut out = Vec::with_capacity(1);
        let Some(h) = spec.get("hosts").filter(|h| !h.is_null()) else {
            self.error(
                ctx,
                spec.line,
                &hf,
                "service entry must have at least one host",
                "add spec.hosts with at least one DNS name, e.g. hosts: [api.example.com]",
            );
            return out;
        };
        let items = self.string_list(ctx, h, &hf);
        out.reserve_exact(items.len());
        if items.is_empty() && matches!(h.value, Yaml::Seq(_)) {
            self.error(
                ctx,
                h.line,
                &hf,
                "service entry must have at least one host",
                "add at least one DNS name to spec.hosts",
            );
        }
        if items.len() > CRD_MAX_ITEMS {
            self.warn(
                ctx,
                h.line,
                &hf,
                format!(
                    "{} hosts; Istio's CRD allows at most {CRD_MAX_ITEMS}, so Kubernetes would reject this object",
                    items.len()
                ),
                "split the hosts over several ServiceEntries",
            );
        }
        for (i, (raw, line)) in items.into_iter().enumerate() {
            let f = hf.idx(i);
            if raw == "*" {
                self.error(
                    ctx,
                    line,
                    &f,
                    "invalid host *: hostname cannot be wildcard",
                    "list the DNS names you need, or use a wildcard like *.example.com",
                );
                continue;
            }
            if let Err(msg) = validate::wildcard_domain(&raw) {
                let why = if raw.contains('*') {
                    format!("{msg}; `*` is only allowed as the whole first label (`*.`)")
                } else {
                    format!("not a valid DNS name ({msg})")
                };
                self.error(
                    ctx,
                    line,
                    &f,
                    format!("invalid host {raw}: {why}"),
                    "use a DNS name of letters, digits and '-' labels, optionally with a leading `*.` label, e.g. api.example.com or *.example.com",
                );
                continue;
            }
            let lower = super::host::normalize(&raw).into_owned();
            let host = if let Some(suffix) = lower.strip_prefix("*.") {
                Some(Host::Wildcard(suffix.to_string()))
            } else if validate::is_partial_wildcard(&raw) {
                if res != Res::DynamicDns {
                    self.warn(
                        ctx,
                        line,
                        &f,
                        format!("partial wildcard {raw:?} not allowed (Istio warns); enforcer matches wildcards only on label boundaries, so this host matches nothing"),
                        "use a whole-label wildcard like *.example.com, or list exact DNS names",
                    );
                }
                None
            } else {
                Some(Host::Exact(lower))
            };
            out.push(HostItem { raw: raw.into_owned(), line, host });
        }
        out
    }

    /// `spec.addresses`: IPs or CIDR blocks; CIDRs only with NONE/STATIC.
    fn se_addresses(&mut self, ctx: &Ctx, spec: &Node<'_>, res: Res) -> Vec<(ipnet::IpNet, bool, usize)> {
        let sf = SPEC.key("spec");
        let af = sf.key("addresses");
        let mut out = Vec::new();
        let Some(a) = spec.get("addresses") else { return out };
        let items = self.seq_of(ctx, a, &af);
        out.reserve(items.len());
        let mut cidr_line = None;
        for (i, item) in items.iter().enumerate() {
            let f = af.idx(i);
            let Some(s) = self.str_of(ctx, item, &f) else { continue };
            let s = s.trim();
            match validate::ip_subnet(s) {
                Ok(net) => {
                    let cidr = s.contains('/');
                    if cidr {
                        cidr_line.get_or_insert(item.line);
                    }
                    out.push((net, cidr, item.line));
                }
                Err(msg) => self.error(
                    ctx,
                    item.line,
                    &f,
                    format!("invalid address {s:?}: {msg}"),
                    "use an IP address (10.0.0.1, 2001:db8::1) or a CIDR block (10.0.0.0/24)",
                ),
            }
        }
        if let Some(line) = cidr_line
            && !matches!(res, Res::None | Res::Static)
        {
            self.error(
                ctx,
                line,
                &af,
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
                "set resolution: STATIC or NONE, or list single IP addresses",
            );
        }
        if items.len() > CRD_MAX_ITEMS {
            self.warn(
                ctx,
                a.line,
                &af,
                format!(
                    "{} addresses; Istio's CRD allows at most {CRD_MAX_ITEMS}, so Kubernetes would reject this object (enforcer accepts it)",
                    items.len()
                ),
                "split the addresses over several ServiceEntries (or use CIDR blocks) if this file is also applied to a cluster",
            );
        }
        out
    }

    /// `spec.ports`: number (1..65535, unique), name (DNS-1123 label, unique), protocol (Istio's
    /// list, any case), targetPort. `tcp_needs_address`: no addresses and no IP auto-allocation,
    /// so Istio warns about TCP ports.
    fn se_ports(&mut self, ctx: &Ctx, spec: &Node<'_>, tcp_needs_address: bool) -> Vec<PortItem> {
        let sf = SPEC.key("spec");
        let pf = sf.key("ports");
        let mut out: Vec<PortItem> = Vec::new();
        let Some(p) = spec.get("ports") else { return out };
        let items = self.seq_of(ctx, p, &pf);
        out.reserve_exact(items.len());
        let mut names: HashSet<String> = HashSet::new();
        let mut numbers: HashSet<u16> = HashSet::new();
        for (_, f, item) in self.map_items(ctx, items, &pf, "service entry port may not be null", &PORT_FIELDS) {
            let nf = f.key("number");
            let number = match item.get("number") {
                Some(n) => self.port_of(ctx, n, &nf),
                None => {
                    self.error(ctx, item.line, &nf, "port number is required", "add number: <1-65535>");
                    None
                }
            };
            let namef = f.key("name");
            let name_line = item.get("name").map_or(item.line, |n| n.line);
            let name = match item.get("name") {
                Some(n) => self.str_of(ctx, n, &namef),
                None => {
                    self.error(ctx, item.line, &namef, "port name is required", "add name: <name>, e.g. name: https");
                    None
                }
            };
            if let Some(nm) = &name {
                if !validate::is_dns1123_label(nm) {
                    self.error(
                        ctx,
                        name_line,
                        &namef,
                        if nm.is_empty() {
                            "port name is required".to_string()
                        } else {
                            format!("invalid port name: {nm}")
                        },
                        "use a DNS-1123 label: letters, digits and '-', e.g. name: https",
                    );
                } else if !names.insert(nm.to_string()) {
                    self.error(
                        ctx,
                        name_line,
                        &namef,
                        format!("service entry port name {nm:?} already defined"),
                        "give every port a unique name",
                    );
                }
            }
            if let Some(num) = number
                && !numbers.insert(num)
            {
                let line = item.get("number").map_or(item.line, |n| n.line);
                self.error(
                    ctx,
                    line,
                    &nf,
                    format!("service entry port {num} already defined"),
                    "remove the duplicate port or use a different number",
                );
            }
            let protof = f.key("protocol");
            let (protocol, protocol_raw) = match item.get("protocol").filter(|p| !p.is_null()) {
                None => (Some(Protocol::Tcp), String::new()),
                Some(pn) => match self.str_of(ctx, pn, &protof) {
                    None => (None, String::new()),
                    Some(s) if s.is_empty() => (Some(Protocol::Tcp), String::new()),
                    Some(s) => match Protocol::parse(&s) {
                        Some(p) => (Some(p), s.into_owned()),
                        None => {
                            self.error(
                                ctx,
                                pn.line,
                                &protof,
                                format!("unsupported protocol: {s}"),
                                format!("use one of {}", Protocol::ACCEPTED),
                            );
                            (None, String::new())
                        }
                    },
                },
            };
            if tcp_needs_address && (protocol_raw.is_empty() || protocol_raw == "TCP") {
                self.warn(
                    ctx,
                    item.line,
                    &f,
                    "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
                    "add spec.addresses, or declare the port's protocol (e.g. TLS, HTTP)",
                );
            }
            let target_port = match item.get("targetPort").filter(|t| !t.is_null()) {
                Some(t) => self.port_of(ctx, t, &f.key("targetPort")).map(Some),
                None => Some(None),
            };
            if let (Some(number), Some(name), Some(protocol), Some(target_port)) = (number, name, protocol, target_port)
            {
                out.push(PortItem {
                    port: Port { number, protocol, name: name.into_owned(), target_port },
                    protocol_raw,
                });
            }
        }
        if items.len() > CRD_MAX_ITEMS {
            self.warn(
                ctx,
                p.line,
                &pf,
                format!("{} ports; Istio's CRD allows at most {CRD_MAX_ITEMS}", items.len()),
                "split the ports over several ServiceEntries",
            );
        }
        out
    }

    /// The rules that tie resolution to hosts, addresses, endpoints and ports.
    #[allow(clippy::too_many_arguments)]
    fn se_resolution_rules(
        &mut self,
        ctx: &Ctx,
        spec: &Node<'_>,
        res: Res,
        location: Location,
        meta: &Meta,
        hosts: &[HostItem],
        addresses: &[(ipnet::IpNet, bool, usize)],
        ports: &[PortItem],
        endpoints: &[(Option<Endpoint>, usize)],
        has_selector: bool,
    ) {
        let sf = SPEC.key("spec");
        let hosts_line = spec.get("hosts").map_or(spec.line, |n| n.line);
        let endpoints_line = spec.key_line("endpoints");
        match res {
            Res::None => {
                if !endpoints.is_empty() {
                    self.error(
                        ctx,
                        endpoints_line,
                        &sf.key("endpoints"),
                        "no endpoints should be provided for resolution type none",
                        "set resolution: STATIC (IP endpoints) or DNS (hostname endpoints), or remove spec.endpoints",
                    );
                }
                if has_selector {
                    self.warn(
                        ctx,
                        spec.key_line("workloadSelector"),
                        &sf.key("workloadSelector"),
                        "workloadSelector should not be set when resolution mode is NONE",
                        "set resolution: STATIC, or remove spec.workloadSelector",
                    );
                }
            }
            Res::Static => {}
            Res::Dns | Res::DnsRoundRobin => {
                if endpoints.is_empty()
                    && let Some(h) = hosts.iter().find(|h| validate::fqdn(&h.raw).is_err())
                {
                    self.error(
                        ctx,
                        h.line,
                        &sf.key("hosts"),
                        format!(
                            "hosts must be FQDN if no endpoints are provided for resolution mode {}; {} is a wildcard",
                            res.name(),
                            h.raw
                        ),
                        "set resolution: NONE (or DYNAMIC_DNS) for wildcard hosts, or list endpoints",
                    );
                }
                if res == Res::DnsRoundRobin && endpoints.len() > 1 {
                    self.error(
                        ctx,
                        endpoints_line,
                        &sf.key("endpoints"),
                        "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
                        "list one endpoint, or use resolution: DNS for several",
                    );
                }
                if !addresses.is_empty() && hosts.len() > 1 {
                    let tcp = ports
                        .iter()
                        .any(|p| !p.port.protocol.is_http() && !p.port.protocol.is_udp() && !p.protocol_raw.is_empty());
                    if tcp {
                        self.warn(
                            ctx,
                            hosts_line,
                            &sf.key("hosts"),
                            "service entry can not have more than one host specified simultaneously with address and tcp port",
                            "split into one ServiceEntry per host",
                        );
                    }
                }
            }
            Res::DynamicDns => {
                if let Some(h) = hosts.iter().find(|h| !h.raw.starts_with('*')) {
                    self.error(
                        ctx,
                        h.line,
                        &sf.key("hosts"),
                        format!("host must be wildcarded for resolution mode DYNAMIC_DNS; {} is not", h.raw),
                        "use wildcard hosts like *.example.com with DYNAMIC_DNS, or resolution: DNS for exact names",
                    );
                }
                if !addresses.is_empty() {
                    self.error(
                        ctx,
                        addresses[0].2,
                        &sf.key("addresses"),
                        "addresses cannot be set for resolution type DYNAMIC_DNS",
                        "remove spec.addresses (DYNAMIC_DNS routes by host name)",
                    );
                }
                if !endpoints.is_empty() {
                    self.error(
                        ctx,
                        endpoints_line,
                        &sf.key("endpoints"),
                        "endpoints cannot be set for resolution type DYNAMIC_DNS",
                        "remove spec.endpoints (the destination is resolved from the host)",
                    );
                }
                for (i, p) in ports.iter().enumerate() {
                    if !matches!(p.port.protocol, Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2) {
                        let pf = sf.key("ports");
                        let pi = pf.idx(i);
                        self.error(
                            ctx,
                            spec.get("ports").map_or(spec.line, |n| n.line),
                            &pi.key("protocol"),
                            "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS",
                            "set the port's protocol to HTTP, TLS, GRPC or HTTP2",
                        );
                    }
                }
                let waypoint = meta
                    .labels
                    .get("istio.io/use-waypoint")
                    .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
                if location == Location::MeshInternal && waypoint {
                    self.error(
                        ctx,
                        spec.key_line("location"),
                        &sf.key("location"),
                        "location MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported when using waypoints",
                        "use location: MESH_EXTERNAL, or remove the istio.io/use-waypoint label",
                    );
                }
            }
        }
        // Multiple hosts and plain TCP cannot be told apart unless the hosts are ignored (NONE).
        if res != Res::None
            && hosts.len() > 1
            && ports
                .iter()
                .any(|p| p.protocol_raw.is_empty() || (!p.port.protocol.is_http() && !p.port.protocol.is_tls()))
        {
            self.error(
                ctx,
                hosts_line,
                &sf.key("hosts"),
                "multiple hosts provided with non-HTTP, non-TLS ports",
                "split into one ServiceEntry per host, or set resolution: NONE",
            );
        }
    }

    /// What enforcer does not act on (valid Istio).
    fn se_notes(&mut self, ctx: &Ctx, spec: &Node<'_>, res: Res, location: Location, export_to: &[String]) {
        let sf = SPEC.key("spec");
        if !export_to.is_empty() {
            self.note_if_set(ctx, spec, "exportTo", "exportTo is applied in Kubernetes mode only; from files the entry applies to every workload the enforcer guards", "remove spec.exportTo, or run a separate enforcer per namespace");
        }
        self.note_if_set(ctx, spec, "workloadSelector", "workloadSelector describes mesh workloads; enforcer ignores the selector (from files) or the whole entry (in Kubernetes mode)", "list endpoints explicitly, or remove spec.workloadSelector");
        self.note_if_set(
            ctx,
            spec,
            "subjectAltNames",
            "subjectAltNames is not checked by enforcer; ignored",
            "remove spec.subjectAltNames, or set DestinationRule tls.subjectAltNames",
        );
        if spec.get("ports").is_none() {
            self.note(
                ctx,
                spec.line,
                &sf.key("ports"),
                "no ports declared (Istio accepts this); enforcer has no port to allow for these hosts",
                "declare the ports you need, e.g. ports: [{number: 443, name: https, protocol: TLS}]",
            );
        }
        let rline = spec.key_line("resolution");
        match res {
            Res::DnsRoundRobin => self.note(
                ctx,
                rline,
                &sf.key("resolution"),
                "DNS_ROUND_ROBIN is treated like DNS: every resolved address is allowed",
                "use resolution: DNS to make this explicit",
            ),
            Res::DynamicDns => self.note(
                ctx,
                rline,
                &sf.key("resolution"),
                "DYNAMIC_DNS is treated like DNS: addresses of names under the wildcard are allowed as the DNS forwarder learns them",
                "nothing to do; enforcer learns the addresses from DNS answers",
            ),
            _ => {}
        }
        if location == Location::MeshInternal {
            self.note(
                ctx,
                spec.key_line("location"),
                &sf.key("location"),
                "MESH_INTERNAL is treated like MESH_EXTERNAL for egress",
                "use location: MESH_EXTERNAL for external destinations",
            );
        }
        for (i, item) in spec
            .get("endpoints")
            .map(|e| match &e.value {
                Yaml::Seq(items) => items.as_slice(),
                _ => &[],
            })
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            for e in item.entries() {
                if ["labels", "network", "locality", "weight", "serviceAccount"].contains(&&*e.key) {
                    let ef = sf.key("endpoints");
                    let ei = ef.idx(i);
                    self.note(
                        ctx,
                        e.line,
                        &ei.key(&e.key),
                        format!("endpoint {} is not used by enforcer; ignored", e.key),
                        "nothing to do (it matters to Istio, not to egress enforcement)",
                    );
                }
            }
        }
    }
}
