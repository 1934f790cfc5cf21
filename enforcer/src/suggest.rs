//! `enforcer suggest`: turn observed denied/audited connections into draft ServiceEntry YAML, so a
//! team can run in AUDIT, look at what its workloads really call, and commit a registry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{admin::Registryz, events::EventJson};

/// Which events a draft is made from.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// This AUDIT period: the events after the stream's last `mode` record naming AUDIT (the
    /// default policy's mode; up to the next mode record, if the mode changed since); all events
    /// when the stream has no AUDIT mode record (older agents, a saved file, a period older than
    /// the agent's buffer, or AUDIT set per workload only).
    AuditPeriod,
    /// Events at or after this time (Unix seconds).
    Since(f64),
}

impl Window {
    /// `--since`: a duration back from `now` ("10m", "2h", "1h 30m", ISO 8601 "PT10M") or an
    /// RFC 3339 time ("2026-11-25T10:00:00Z").
    pub fn parse_since(s: &str, now: f64) -> Result<Self, String> {
        if let Ok(d) = s.parse::<jiff::SignedDuration>() {
            return Ok(Window::Since(now - d.as_secs_f64().abs()));
        }
        match s.parse::<jiff::Timestamp>() {
            Ok(t) => Ok(Window::Since(t.as_millisecond() as f64 / 1000.0)),
            Err(_) => Err(format!(
                "--since {s:?}: not a duration (e.g. 10m, 2h, 1h30m) or an RFC 3339 time (e.g. 2026-11-25T10:00:00Z)"
            )),
        }
    }

    /// The events inside the window (mode and drop records included, for the caller to skip).
    pub fn select<'a>(&self, events: &'a [EventJson]) -> &'a [EventJson] {
        match self {
            Window::Since(t) => {
                let start = events.iter().position(|e| e.time >= *t).unwrap_or(events.len());
                &events[start..]
            }
            Window::AuditPeriod => {
                let modes: Vec<usize> =
                    events.iter().enumerate().filter(|(_, e)| e.verdict == "mode").map(|(i, _)| i).collect();
                // The default policy never in AUDIT here: the audits are workload policies' (their
                // modes are their own), so every event counts.
                let Some(last_audit) =
                    modes.iter().rev().copied().find(|i| events[*i].mode.as_deref() == Some("AUDIT"))
                else {
                    return events;
                };
                let end = modes.iter().copied().find(|i| *i > last_audit).unwrap_or(events.len());
                &events[last_audit + 1..end]
            }
        }
    }
}

/// One drafted entry: a destination name (or address) and the ports/protocols seen.
#[derive(Debug, Default, PartialEq, Eq)]
struct Draft {
    addresses: BTreeSet<String>,
    ports: BTreeSet<(u16, String)>,
    workloads: BTreeSet<String>,
    count: u64,
}

/// A port (or protocol) missing from a registered ServiceEntry: the edit to make.
#[derive(Debug, Default, PartialEq, Eq)]
struct Edit {
    workloads: BTreeSet<String>,
    count: u64,
}

/// Build the YAML. A denial for an unlisted port (or protocol) of a registered service becomes
/// the edit to make ("add port 9999/TCP to ns/name"), as comments. Other destinations with a DNS
/// name seen for them become `resolution: DNS` entries on that host; bare addresses become
/// `resolution: STATIC` entries with that endpoint (hosts must be names in Istio, so they get a
/// placeholder host to rename). With the live registry, drafted addresses it already holds are
/// flagged.
pub fn draft(events: &[EventJson], namespace: &str, live: Option<&Registryz>) -> String {
    let mut by_host: BTreeMap<String, Draft> = BTreeMap::new();
    let mut by_addr: BTreeMap<String, Draft> = BTreeMap::new();
    let mut edits: BTreeMap<(String, u16, String), Edit> = BTreeMap::new();
    for e in events {
        if e.verdict != "denied" && e.verdict != "audit" {
            continue;
        }
        // A refused DNS name: the host is drafted; its ports come from connections, if any.
        // (Rebinding drops and learn failures are about names the registry already has.)
        if e.hook == "dns" {
            if let Some(h) = e.host.as_ref().filter(|_| e.reason != "rebinding" && e.reason != "learn_failed") {
                let d = by_host.entry(h.clone()).or_default();
                if let Some(w) = &e.workload {
                    d.workloads.insert(w.clone());
                }
                d.count += 1;
            }
            continue;
        }
        // Traffic to a registered service on an unlisted port still needs its port added.
        // Traffic to a registered service on an unlisted port (or protocol) needs its port added,
        // not a new entry.
        if let Some(svc) =
            e.service.as_ref().filter(|_| e.reason == "port_not_listed" || e.reason == "protocol_not_listed")
        {
            let ed = edits.entry((svc.clone(), e.port, e.protocol.clone())).or_default();
            ed.workloads.extend(e.workload.clone());
            ed.count += 1;
            continue;
        }
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
    for ((svc, port, proto), ed) in &edits {
        let p = if proto == "udp" { "UDP" } else { "TCP" };
        out.push_str(&format!(
            "# add port {port} to {svc} ({p}; {} connection(s) from {}):\n#   ports:\n#   - number: {port}\n#     name: {}-{port}\n#     protocol: {p}\n",
            ed.count,
            ed.workloads.iter().cloned().collect::<Vec<_>>().join(", "),
            p.to_ascii_lowercase()
        ));
    }
    match live {
        Some(reg) => {
            let addrs: BTreeSet<&String> =
                by_host.values().chain(by_addr.values()).flat_map(|d| &d.addresses).collect();
            for a in addrs {
                for (svc, ep) in overlaps(reg, a) {
                    out.push_str(&format!(
                        "# NOTE: {a} is already an address of {svc} in the live registry ({ep}): prefer adding the port there\n"
                    ));
                }
            }
        }
        None => out.push_str("# (the live registry was not checked for overlapping addresses)\n"),
    }
    for (host, d) in &by_host {
        out.push_str(&entry(&sanitize(host), std::slice::from_ref(host), d, namespace, "DNS", false));
    }
    for (addr, d) in &by_addr {
        let placeholder = format!("{}.unknown.invalid", addr.replace([':', '.'], "-"));
        out.push_str(&entry(&sanitize(&placeholder), std::slice::from_ref(&placeholder), d, namespace, "STATIC", true));
    }
    if by_host.is_empty() && by_addr.is_empty() && edits.is_empty() {
        out.push_str("# No denied or audited connections seen in this window.\n");
    }
    out
}

/// The live registry's services (and the endpoint) holding `addr`.
fn overlaps(reg: &Registryz, addr: &str) -> Vec<(String, String)> {
    let Ok(ip) = addr.parse::<IpAddr>() else { return Vec::new() };
    let mut out = Vec::new();
    for s in &reg.services {
        for ep in &s.endpoints {
            let holds = match ep.address.parse::<ipnet::IpNet>() {
                Ok(net) => net.contains(&ip),
                Err(_) => ep.address.parse::<IpAddr>().is_ok_and(|a| a == ip),
            };
            if holds {
                let ports: Vec<String> = ep.ports.iter().map(|p| format!("{p}/{}", ep.protocol)).collect();
                out.push((s.name.clone(), format!("{} ports {}", ep.address, ports.join(","))));
            }
        }
    }
    out.sort();
    out.dedup();
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
        let yaml = draft(&evs, "egress", None);
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
        let yaml = draft(&evs, "egress", None);
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
        assert!(draft(&[], "default", None).contains("No denied or audited connections"));
    }

    #[test]
    fn unlisted_port_of_a_registered_service_is_an_edit() {
        let mut e = ev("denied", "198.18.13.2", 9999, "tcp", None);
        e.reason = "port_not_listed".into();
        e.service = Some("shop/api".into());
        let yaml = draft(&[e.clone(), e], "default", None);
        assert!(yaml.contains("# add port 9999 to shop/api (TCP; 2 connection(s) from curl):"), "{yaml}");
        assert!(!yaml.contains("kind: ServiceEntry"), "no placeholder entry:\n{yaml}");
        assert!(!yaml.contains("unknown.invalid"), "{yaml}");
        crate::config::load_str(&yaml, std::path::Path::new("s.yaml")).expect("comments only: still loads");
    }

    #[test]
    fn window_defaults_to_this_audit_period() {
        let mode =
            |m: &str, t: f64| EventJson { verdict: "mode".into(), mode: Some(m.into()), time: t, ..Default::default() };
        let at = |t: f64| EventJson { time: t, ..ev("audit", "203.0.113.1", 443, "tcp", None) };
        let evs = vec![
            at(1.0),
            mode("AUDIT", 2.0),
            at(3.0),
            mode("REGISTRY_ONLY", 4.0),
            at(5.0),
            mode("AUDIT", 6.0),
            at(7.0),
            at(8.0),
        ];
        let w = Window::AuditPeriod.select(&evs);
        assert_eq!(w.iter().map(|e| e.time).collect::<Vec<_>>(), vec![7.0, 8.0]);
        // The mode changed since: the last AUDIT period.
        let w = Window::AuditPeriod.select(&evs[..5]);
        assert_eq!(w.iter().map(|e| e.time).collect::<Vec<_>>(), vec![3.0]);
        // No mode record: everything.
        assert_eq!(Window::AuditPeriod.select(&evs[..1]).len(), 1);
        // The default policy never in AUDIT (workload policies' audits): everything.
        assert_eq!(Window::AuditPeriod.select(&[mode("REGISTRY_ONLY", 1.0), at(2.0)]).len(), 2);
        assert_eq!(Window::Since(5.0).select(&evs).len(), 4);
        assert_eq!(Window::parse_since("10m", 1000.0), Ok(Window::Since(400.0)));
        assert_eq!(Window::parse_since("1970-01-01T00:01:40Z", 0.0), Ok(Window::Since(100.0)));
        assert!(Window::parse_since("yesterday", 0.0).is_err());
    }

    #[test]
    fn drafted_addresses_in_the_live_registry_are_flagged() {
        let reg: Registryz = serde_json::from_value(serde_json::json!({
            "mode": "AUDIT", "mode_source": "flag", "generated_at": "",
            "services": [{"id": 1, "name": "shop/api", "namespace": "shop", "hosts": ["api.shop"], "ports": [],
                "resolution": "STATIC", "location": "MESH_EXTERNAL", "source": "r.yaml:1",
                "endpoints": [{"address": "198.18.13.0/24", "host": null, "source": "static", "expires_in_secs": null,
                    "ports": [8080], "protocol": "tcp", "status": "HEALTHY"}]}],
            "map": {"allow_entries": 1, "allow_capacity": 10, "learned_entries": 0}
        }))
        .unwrap();
        let yaml = draft(&[ev("audit", "198.18.13.2", 9999, "tcp", None)], "default", Some(&reg));
        assert!(
            yaml.contains("# NOTE: 198.18.13.2 is already an address of shop/api in the live registry (198.18.13.0/24 ports 8080/tcp)"),
            "{yaml}"
        );
    }
}
