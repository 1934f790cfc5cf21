//! `enforcer suggest`: turn observed denied/audited connections into draft ServiceEntry YAML, so a
//! team can run in AUDIT, look at what its workloads really call, and commit a registry.

use std::collections::{BTreeMap, BTreeSet};

use crate::events::EventJson;

/// One drafted entry: a destination name (or address) and the ports/protocols seen.
#[derive(Debug, Default, PartialEq, Eq)]
struct Draft {
    addresses: BTreeSet<String>,
    ports: BTreeSet<(u16, String)>,
    workloads: BTreeSet<String>,
    count: u64,
}

/// Build the YAML. Destinations with a DNS name seen for them become `resolution: DNS` entries
/// on that host; bare addresses become `resolution: STATIC` entries with that endpoint (hosts must
/// be names in Istio, so they get a placeholder host to rename).
pub fn draft(events: &[EventJson], namespace: &str) -> String {
    let mut by_host: BTreeMap<String, Draft> = BTreeMap::new();
    let mut by_addr: BTreeMap<String, Draft> = BTreeMap::new();
    for e in events {
        if e.verdict != "denied" && e.verdict != "audit" {
            continue;
        }
        // A refused DNS name: the host is drafted; its ports come from connections, if any.
        if e.hook == "dns" {
            if let Some(h) = &e.host {
                let d = by_host.entry(h.clone()).or_default();
                if let Some(w) = &e.workload {
                    d.workloads.insert(w.clone());
                }
                d.count += 1;
            }
            continue;
        }
        // Traffic to a registered service on an unlisted port still needs its port added.
        let d = match &e.host {
            Some(h) => by_host.entry(h.clone()).or_default(),
            None => by_addr.entry(e.address.clone()).or_default(),
        };
        d.addresses.insert(e.address.clone());
        d.ports.insert((e.port, e.protocol.clone()));
        if let Some(w) = &e.workload {
            d.workloads.insert(w.clone());
        }
        d.count += 1;
    }
    let mut out = String::from(
        "# Drafted by `enforcer suggest` from observed connections. Review before use: check each\n# host, narrow ports, and prefer resolution: DNS over pinned addresses where the host has a name.\n",
    );
    for (host, d) in &by_host {
        out.push_str(&entry(&sanitize(host), std::slice::from_ref(host), d, namespace, "DNS", false));
    }
    for (addr, d) in &by_addr {
        let placeholder = format!("{}.unknown.invalid", addr.replace([':', '.'], "-"));
        out.push_str(&entry(&sanitize(&placeholder), std::slice::from_ref(&placeholder), d, namespace, "STATIC", true));
    }
    if by_host.is_empty() && by_addr.is_empty() {
        out.push_str("# No denied or audited connections seen yet.\n");
    }
    out
}

fn entry(name: &str, hosts: &[String], d: &Draft, namespace: &str, resolution: &str, endpoints: bool) -> String {
    let mut s = String::from("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n");
    s.push_str(&format!(
        "metadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    enforcer.dev/observed: \"{} connection(s) from {}\"\n",
        d.count,
        d.workloads.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    s.push_str("spec:\n  hosts:\n");
    for h in hosts {
        s.push_str(&format!("  - {h}\n"));
    }
    s.push_str("  location: MESH_EXTERNAL\n  ports:\n");
    if d.ports.is_empty() {
        // Only DNS lookups of the name were seen (they were refused, so nothing connected).
        s.push_str("  - number: 443 # only DNS lookups were seen: set the port(s) it uses\n    name: tcp-443\n    protocol: TCP\n");
    }
    for (port, proto) in &d.ports {
        let p = if proto == "udp" { "UDP" } else { "TCP" };
        s.push_str(&format!("  - number: {port}\n    name: {}-{port}\n    protocol: {p}\n", p.to_ascii_lowercase()));
    }
    s.push_str(&format!("  resolution: {resolution}\n"));
    if endpoints {
        s.push_str("  endpoints:\n");
        for a in &d.addresses {
            s.push_str(&format!("  - address: \"{a}\"\n"));
        }
    }
    s
}

/// A DNS-1123 name for metadata.name.
fn sanitize(host: &str) -> String {
    let mut n: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect();
    n = n.trim_matches('-').to_string();
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(verdict: &str, address: &str, port: u16, proto: &str, host: Option<&str>) -> EventJson {
        EventJson {
            verdict: verdict.into(),
            address: address.into(),
            port,
            protocol: proto.into(),
            host: host.map(str::to_string),
            workload: Some("curl".into()),
            ..Default::default()
        }
    }

    #[test]
    fn drafts_valid_service_entries() {
        let evs = vec![
            ev("audit", "203.0.113.7", 443, "tcp", Some("api.example.com")),
            ev("audit", "203.0.113.8", 443, "tcp", Some("api.example.com")),
            ev("denied", "198.51.100.9", 123, "udp", None),
            ev("dropped", "", 0, "", None),
        ];
        let yaml = draft(&evs, "egress");
        // The draft must load unchanged as a registry.
        let reg = crate::config::load_str(&yaml, std::path::Path::new("suggest.yaml"))
            .expect("drafted YAML is a valid registry");
        assert_eq!(reg.services.len(), 2);
        let api = &reg.services[0];
        assert_eq!(api.name, "api-example-com");
        assert_eq!(api.namespace, "egress");
        assert_eq!(api.ports.len(), 1);
        assert_eq!(api.ports[0].number, 443);
        let ntp = &reg.services[1];
        assert_eq!(ntp.ports[0].number, 123);
        assert!(ntp.ports[0].protocol.is_udp());
        assert_eq!(ntp.endpoints.len(), 1);
    }

    #[test]
    fn refused_dns_names_are_drafted_without_a_port_zero() {
        let mut dns = ev("denied", "", 0, "dns", Some("api.example.com"));
        dns.hook = "dns".into();
        let mut other = ev("denied", "", 0, "dns", Some("cdn.example.net"));
        other.hook = "dns".into();
        let evs = vec![dns, other, ev("denied", "203.0.113.7", 8443, "tcp", Some("api.example.com"))];
        let yaml = draft(&evs, "egress");
        let reg = crate::config::load_str(&yaml, std::path::Path::new("suggest.yaml")).expect("valid registry");
        assert_eq!(reg.services.len(), 2, "{yaml}");
        let api = reg.services.iter().find(|s| s.name == "api-example-com").unwrap();
        assert_eq!(api.ports.iter().map(|p| p.number).collect::<Vec<_>>(), [8443], "{yaml}");
        let cdn = reg.services.iter().find(|s| s.name == "cdn-example-net").unwrap();
        assert_eq!(cdn.ports[0].number, 443, "a placeholder port, said so in a comment: {yaml}");
        assert!(!yaml.contains("number: 0"), "{yaml}");
    }

    #[test]
    fn nothing_seen() {
        assert!(draft(&[], "default").contains("No denied or audited connections"));
    }
}
