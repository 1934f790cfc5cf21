//! How many kernel map entries a registry needs, counted statically (for `enforcer check`).
//!
//! The count follows what `policy::compile` writes for the node-default policy: for every
//! ServiceEntry port (TCP, or UDP), one ALLOW entry per (destination, port) with the ports
//! {number, targetPort, the endpoint's own port for that port name}, the destinations being
//! `addresses`, IP-literal hosts and IP endpoints (STATIC, or DNS with IP endpoints). Identical
//! entries are counted once. Names resolved by DNS (DNS hosts and hostname endpoints, NONE
//! entries without addresses, wildcard hosts learned at run time) cannot be known statically:
//! they are counted apart, each adding at least one address x its ports when it resolves.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{EndpointAddress, Host, Registry, Resolution};

pub use enforcer_common::{ALLOW_MAX_ENTRIES, DESTS_MAX_ENTRIES};

/// Entries a registry needs before any name is resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Distinct ALLOW map entries (destination x port x protocol).
    pub allow_entries: usize,
    /// Distinct DESTS map entries (destinations).
    pub dest_entries: usize,
    /// Names whose addresses come from DNS when enforcing (each adds entries then).
    pub dns_names: usize,
    /// Wildcard hosts, whose addresses are learned from DNS answers at run time.
    pub wildcard_hosts: usize,
}

impl Capacity {
    /// Does the static part already exceed a kernel map?
    pub fn exceeds(&self) -> bool {
        self.allow_entries > ALLOW_MAX_ENTRIES as usize || self.dest_entries > DESTS_MAX_ENTRIES as usize
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d/N`, N >= 96) as IPv4, host bits cleared (as the kernel keys).
fn normalize(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && n.prefix_len() >= 96
        && let Ok(v4net) = IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96)
    {
        return v4net.trunc();
    }
    net.trunc()
}

/// Count what `reg` needs.
pub fn count(reg: &Registry) -> Capacity {
    let mut allow: HashSet<(IpNet, u16, bool)> = HashSet::new();
    let mut dests: HashSet<IpNet> = HashSet::new();
    let mut names: HashSet<&str> = HashSet::new();
    let mut wildcards = 0usize;
    for se in &reg.services {
        let mut targets: Vec<(IpNet, Option<&std::collections::BTreeMap<String, u16>>)> = Vec::new();
        targets.extend(se.addresses.iter().map(|n| (*n, None)));
        let mut exact_names = Vec::new();
        for h in &se.hosts {
            match h {
                Host::Exact(name) => match name.parse::<IpAddr>() {
                    Ok(ip) => targets.push((IpNet::from(ip), None)),
                    Err(_) => exact_names.push(name.as_str()),
                },
                Host::Wildcard(_) => wildcards += 1,
            }
        }
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
                    names.extend(exact_names.iter().copied());
                }
                for ep in &se.endpoints {
                    match &ep.address {
                        EndpointAddress::Ip(ip) => targets.push((IpNet::from(*ip), Some(&ep.ports))),
                        EndpointAddress::Hostname(h) => {
                            names.insert(h.as_str());
                        }
                        EndpointAddress::Unix(_) => {}
                    }
                }
            }
            Resolution::None => {
                if se.addresses.is_empty() {
                    names.extend(exact_names.iter().copied());
                }
            }
        }
        for (net, ep_ports) in targets {
            let net = normalize(net);
            dests.insert(net);
            for p in &se.ports {
                let udp = p.protocol.is_udp();
                allow.insert((net, p.number, udp));
                if let Some(t) = p.target_port {
                    allow.insert((net, t, udp));
                }
                if let Some(e) = ep_ports.and_then(|m| m.get(&p.name)) {
                    allow.insert((net, *e, udp));
                }
            }
        }
    }
    Capacity {
        allow_entries: allow.len(),
        dest_entries: dests.len(),
        dns_names: names.len(),
        wildcard_hosts: wildcards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn reg(yaml: &str) -> Registry {
        super::super::load_str(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn counts_addresses_ports_and_target_ports() {
        let r = reg(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  addresses: [10.0.0.1, 10.0.0.2, 10.0.0.0/24, '::ffff:10.0.0.1']\n  ports:\n  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}\n  - {number: 53, name: dns, protocol: UDP}\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.3\n    ports: {http: 9090}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec:\n  hosts: [b.example.com, '*.wild.example.com']\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: NONE\n",
        );
        let c = count(&r);
        // a: 3 distinct nets from addresses (the mapped one equals 10.0.0.1) x {80, 8080, 53/udp}
        // = 9, + endpoint 10.0.0.3 x {80, 8080, 9090, 53/udp} = 4.
        assert_eq!(c.allow_entries, 13, "{c:?}");
        assert_eq!(c.dest_entries, 4);
        // b: a NONE entry without addresses: its exact host is resolved.
        assert_eq!(c.dns_names, 1);
        assert_eq!(c.wildcard_hosts, 1);
        assert!(!c.exceeds());
    }

    #[test]
    fn exceeds_the_allow_map() {
        let c = Capacity { allow_entries: ALLOW_MAX_ENTRIES as usize + 1, ..Default::default() };
        assert!(c.exceeds());
    }
}
