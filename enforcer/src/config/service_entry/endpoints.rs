//! `spec.endpoints` of a ServiceEntry: validated per resolution like Istio (`validateWorkloadEntry`
//! for STATIC, IP-or-FQDN for DNS/DNS_ROUND_ROBIN).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::super::field::Field;
use super::super::loader::{Ctx, FileLoader};
use super::super::model::*;
use super::super::validate;
use super::super::yaml::Node;
use super::{CRD_MAX_ENDPOINTS, ENDPOINT_FIELDS, PortItem, Res, SPEC};

impl FileLoader<'_> {
    /// `spec.endpoints`, validated per resolution like Istio (`validateWorkloadEntry` for STATIC,
    /// IP-or-FQDN for DNS). Returns (endpoint, line); `None` for an endpoint with a network and no
    /// address (a warning in Istio; nothing to allow).
    pub(super) fn se_endpoints(
        &mut self,
        ctx: &Ctx,
        spec: &Node<'_>,
        res: Res,
        ports: &[PortItem],
        has_selector: bool,
    ) -> Vec<(Option<Endpoint>, usize)> {
        let sf = SPEC.key("spec");
        let ef = sf.key("endpoints");
        let mut out = Vec::new();
        let Some(e) = spec.get("endpoints") else { return out };
        let items = self.seq_of(ctx, e, &ef);
        out.reserve_exact(items.len());
        if has_selector && !items.is_empty() {
            self.error(
                ctx,
                e.line,
                &ef,
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
                "remove spec.workloadSelector or spec.endpoints",
            );
        }
        if items.len() > CRD_MAX_ENDPOINTS {
            self.warn(
                ctx,
                e.line,
                &ef,
                format!("{} endpoints; Istio's CRD allows at most {CRD_MAX_ENDPOINTS}", items.len()),
                "split the endpoints over several ServiceEntries if this file is also applied to a cluster",
            );
        }
        let port_names: HashSet<&str> = ports.iter().map(|p| p.port.name.as_str()).collect();
        let mut unix_reported = false;
        for (_, f, item) in self.map_items(ctx, items, &ef, "endpoint cannot be nil", &ENDPOINT_FIELDS) {
            if res == Res::None || res == Res::DynamicDns {
                // Reported once by se_resolution_rules; fields are not checked further.
                out.push((None, item.line));
                continue;
            }
            let af = f.key("address");
            let address = match item.get("address").filter(|a| !a.is_null()) {
                Some(a) => self.str_of(ctx, a, &af).map(|s| (s.into_owned(), a.line)),
                None => Some((String::new(), item.line)),
            };
            let Some((addr, addr_line)) = address else { continue };
            let network = item.get("network").and_then(Node::as_str).unwrap_or("");
            let parsed = self.endpoint_address(ctx, &af, &addr, addr_line, network, res);
            if let Some(EndpointAddress::Unix(_)) = &parsed
                && ports.len() != 1
                && !unix_reported
            {
                unix_reported = true;
                self.error(
                    ctx,
                    addr_line,
                    &sf.key("ports"),
                    "exactly 1 service port required for unix endpoints",
                    "declare exactly one port in spec.ports",
                );
            }
            let eports = self.endpoint_ports(
                ctx,
                item,
                &f,
                &port_names,
                matches!(parsed, Some(EndpointAddress::Unix(_))),
                &addr,
            );
            if let Some(l) = item.get("labels").filter(|l| !l.is_null()) {
                self.labels(ctx, l, &f.key("labels"));
            }
            if let Some(w) = item.get("weight").filter(|w| !w.is_null()) {
                self.ranged_int(ctx, w, &f.key("weight"), 0, u32::MAX as i128);
            }
            for k in ["network", "locality", "serviceAccount"] {
                if let Some(v) = item.get(k).filter(|v| !v.is_null()) {
                    let _ = self.str_of(ctx, v, &f.key(k));
                }
            }
            out.push((parsed.map(|address| Endpoint { address, ports: eports }), item.line));
        }
        out
    }

    /// One endpoint's address: a unix socket, an IP, or (DNS only) a DNS name. `None` when empty
    /// with a network (a warning) or invalid (an error).
    pub(super) fn endpoint_address(
        &mut self,
        ctx: &Ctx,
        af: &Field<'_>,
        addr: &str,
        line: usize,
        network: &str,
        res: Res,
    ) -> Option<EndpointAddress> {
        if addr.is_empty() {
            if res == Res::Static && !network.is_empty() {
                self.warn(
                    ctx,
                    line,
                    af,
                    format!("address is unset with network {network:?}"),
                    "enforcer allows nothing for an endpoint without an address; add address: <IP> if the workload is reachable",
                );
            } else {
                self.error(ctx, line, af, "endpoint address is required", "add address: <IP or hostname>");
            }
            return None;
        }
        if let Some(path) = addr.strip_prefix("unix://") {
            if res != Res::Static {
                self.error(
                    ctx,
                    line,
                    af,
                    format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                    "unix:// endpoints need resolution: STATIC",
                );
                return None;
            }
            if let Err(msg) = validate::unix_address(path) {
                self.error(ctx, line, af, msg, "use unix:///absolute/path/to/socket or unix://@abstract");
                return None;
            }
            return Some(EndpointAddress::Unix(path.to_string()));
        }
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return Some(EndpointAddress::Ip(ip));
        }
        if res == Res::Static {
            self.error(
                ctx,
                line,
                af,
                format!("endpoint address {addr:?} is not a valid IP address; STATIC endpoints must be IP addresses"),
                "use resolution: DNS for hostnames, or list IP endpoints",
            );
            return None;
        }
        if validate::fqdn(addr).is_err() {
            self.error(
                ctx,
                line,
                af,
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                "use an IP address or a DNS name like api.example.com",
            );
            return None;
        }
        Some(EndpointAddress::Hostname(super::super::host::normalize(addr).into_owned()))
    }

    /// `spec.endpoints[].ports`: names declared in spec.ports, valid port numbers; none for unix.
    pub(super) fn endpoint_ports(
        &mut self,
        ctx: &Ctx,
        item: &Node<'_>,
        f: &Field<'_>,
        port_names: &HashSet<&str>,
        unix: bool,
        addr: &str,
    ) -> BTreeMap<String, u16> {
        let mut eports = BTreeMap::new();
        let pf = f.key("ports");
        let Some(pm) = item.get("ports").filter(|p| !p.is_null()) else { return eports };
        if !self.is_map(ctx, pm, &pf) {
            return eports;
        }
        if unix {
            self.error(
                ctx,
                pm.line,
                &pf,
                format!("unix endpoint {addr} must not include ports"),
                format!("remove {pf}"),
            );
        }
        for e in pm.entries() {
            let epf = pf.key(&e.key);
            let v = self.port_of(ctx, &e.value, &epf);
            if !validate::is_dns1123_label(&e.key) {
                self.error(
                    ctx,
                    e.line,
                    &epf,
                    format!("invalid port name: {}", e.key),
                    "use a port name declared in spec.ports",
                );
            } else if !port_names.contains(&*e.key) {
                let mut declared: Vec<_> = port_names.iter().copied().collect();
                declared.sort();
                self.error(
                    ctx,
                    e.line,
                    &epf,
                    format!("endpoint port {} is not defined by the service entry", e.key),
                    if declared.is_empty() {
                        "declare a port with this name in spec.ports".to_string()
                    } else {
                        format!("use a port name declared in spec.ports ({})", declared.join(", "))
                    },
                );
            }
            if let Some(v) = v {
                eports.insert(e.key.to_string(), v);
            }
        }
        eports
    }
}
