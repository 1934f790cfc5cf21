//! The registry debug view (`GET /debug/registryz`): every service with its hosts, ports,
//! resolution and the endpoints the kernel map holds for it now, with where each came from
//! (static, resolved, learned from DNS, command line) and when it expires.

use enforcer_common::ServiceId;
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Instant, SystemTime},
};

use enforcer_common::ALLOW_MAX_ENTRIES;

use crate::{
    admin::{EndpointView, MapStats, PortView, Registryz, ServiceView, rfc3339_utc},
    agent::Agent,
    policy::{ServiceKind, proto_name},
};

pub fn build(agent: &Agent) -> Registryz {
    let v = agent.view();
    let snapshot = agent.refresher().snapshot();
    let learned_names = agent.learned_names();
    let (in_map, _dests) = agent.map_entries();
    let learned_entries = agent.learned_entries();
    let tnow = tokio::time::Instant::now();
    let now = Instant::now();

    // Resolved addresses -> (name, seconds left, stale).
    let mut resolved: HashMap<IpAddr, (String, Option<u64>, bool)> = HashMap::new();
    for (name, r) in &snapshot {
        for (ip, until) in r.usable(tnow) {
            let exp = until.or(r.expires).map(|t| t.saturating_duration_since(tnow).as_secs());
            resolved.entry(ip).or_insert((name.clone(), exp, r.stale(tnow) || until.is_some()));
        }
    }

    // (service, net, proto) -> endpoint under construction.
    let mut eps: BTreeMap<(ServiceId, String, u8), EndpointView> = BTreeMap::new();
    for (e, val) in &in_map {
        let learned = learned_entries.get(e).filter(|_| !v.desired.allow.contains_key(e));
        let single = (e.net.prefix_len() == e.net.max_prefix_len()).then(|| e.net.addr());
        let kind = v.desired.service(val.service_id).map(|s| s.kind);
        let (source, host, expires, stale) = if let Some((_, exp)) = learned {
            let host = single.and_then(|ip| learned_names.get(&ip).cloned());
            ("learned", host, Some(exp.saturating_duration_since(now).as_secs()), false)
        } else {
            match (kind, single.and_then(|ip| resolved.get(&ip))) {
                (Some(ServiceKind::CommandLine), _) => ("cli", None, None, false),
                (Some(ServiceKind::ServiceEntry), Some((name, exp, stale)))
                    if !v.policies.iter().any(|p| p.index.explicitly_listed(e.net.addr())) =>
                {
                    ("resolved", Some(name.clone()), *exp, *stale)
                }
                _ => ("static", None, None, false),
            }
        };
        let address = match single {
            Some(ip) => ip.to_string(),
            None => e.net.to_string(),
        };
        let ep = eps.entry((val.service_id, address.clone(), e.proto)).or_insert_with(|| EndpointView {
            address,
            host,
            source: source.to_string(),
            expires_in_secs: expires,
            ports: vec![],
            protocol: proto_name(e.proto).to_string(),
            status: if stale { "STALE" } else { "HEALTHY" }.to_string(),
        });
        if !ep.ports.contains(&e.port) {
            ep.ports.push(e.port);
        }
    }

    let mut services = Vec::new();
    for info in &v.desired.services {
        let se = (info.kind == ServiceKind::ServiceEntry).then(|| v.service_entry(info.id).map(|(_, se)| se)).flatten();
        let endpoints: Vec<EndpointView> = eps
            .range((info.id, String::new(), 0)..=(info.id, "\u{10ffff}".to_string(), u8::MAX))
            .map(|(_, ep)| ep.clone())
            .collect();
        services.push(ServiceView {
            id: info.id.get(),
            name: info.name.clone(),
            namespace: se.map(|s| s.namespace.clone()).unwrap_or_default(),
            hosts: info.hosts.clone(),
            ports: match se {
                Some(se) => se
                    .ports
                    .iter()
                    .map(|p| PortView {
                        number: p.number,
                        protocol: p.protocol.to_string(),
                        name: p.name.clone(),
                        target_port: p.target_port,
                    })
                    .collect(),
                None => info
                    .ports
                    .iter()
                    .filter(|(_, proto)| *proto == enforcer_common::PROTO_TCP)
                    .map(|(port, _)| PortView {
                        number: *port,
                        protocol: "TCP".into(),
                        name: String::new(),
                        target_port: None,
                    })
                    .collect(),
            },
            resolution: match (se, info.kind) {
                (Some(se), _) => se.resolution.to_string(),
                (None, ServiceKind::CommandLine) => "CLI".into(),
                (None, _) => "HOST_DNS".into(),
            },
            location: se
                .map(|s| format!("{:?}", s.location))
                .map(|l| if l == "MeshInternal" { "MESH_INTERNAL".into() } else { "MESH_EXTERNAL".to_string() })
                .unwrap_or_default(),
            source: se.map(|s| s.source.to_string()).unwrap_or_else(|| "command line".into()),
            endpoints,
        });
    }

    Registryz {
        mode: v.cfg.mode.to_string(),
        mode_source: v.cfg.mode_source.clone(),
        generated_at: rfc3339_utc(SystemTime::now()),
        services,
        map: MapStats {
            allow_entries: in_map.len() as u64,
            allow_capacity: u64::from(ALLOW_MAX_ENTRIES),
            learned_entries: learned_entries.len() as u64,
        },
    }
}
