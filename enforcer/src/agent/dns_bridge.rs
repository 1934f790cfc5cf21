//! What the DNS forwarder sees of the agent: which names the registry has, and a way to put an
//! answer's addresses into the kernel *before* the answer is released.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{AllowValue, SETTINGS_F_DNS_STEER, ServiceId};

use super::{AGENT_MARK, Agent};
use crate::{
    config::Mode,
    dns,
    policy::{DestEntry, entries_for, normalize},
};

/// Bind the forwarder on the local address (127.0.0.1/::1 by default):`port` and point the
/// kernel's DNS steering at it.
pub(super) async fn start_forwarder(agent: &Agent, port: u16) -> anyhow::Result<dns::Forwarder> {
    let cfg_dns = &agent.inner.config.dns;
    let upstreams: Vec<SocketAddr> = if cfg_dns.upstreams.is_empty() {
        agent.view().cfg.dns_servers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
    } else {
        cfg_dns.upstreams.clone()
    };
    anyhow::ensure!(!upstreams.is_empty(), "no upstream resolver (none in /etc/resolv.conf; pass --dns-upstream)");
    let cfg = dns::Config {
        listen: std::iter::once(SocketAddr::new(IpAddr::V4(agent.inner.config.local_v4), port))
            .chain(agent.inner.config.local_v6.map(|a| SocketAddr::new(IpAddr::V6(a), port)))
            .collect(),
        upstreams,
        timeout: cfg_dns.timeout,
        unknown_names: cfg_dns.unknown_names,
        min_ttl: cfg_dns.ttl_floor,
        grace: cfg_dns.grace,
        max_ttl: cfg_dns.ttl_ceiling,
        upstream_mark: Some(AGENT_MARK),
    };
    let fwd = dns::Forwarder::bind(cfg, Arc::new(AgentDns { agent: agent.clone() }))
        .await
        .context("binding the DNS forwarder")?;
    let (mut v4, mut v6, mut dns_port) = ([0u8; 4], [0u8; 16], 0);
    for a in fwd.local_addrs() {
        dns_port = a.port();
        match a.ip() {
            IpAddr::V4(ip) => v4 = ip.octets(),
            IpAddr::V6(ip) => v6 = ip.octets(),
        }
    }
    anyhow::ensure!(v4 != [0; 4], "the forwarder has no IPv4 listener");
    agent.update_settings(|s| {
        s.local_v4 = v4;
        s.local_v6 = v6;
        s.dns_port = dns_port;
        s.agent_mark = AGENT_MARK;
        s.flags |= SETTINGS_F_DNS_STEER;
    })?;
    let stats = fwd.stats();
    agent.register_metrics(|reg| stats.register(reg));
    tracing::debug!(addrs = ?fwd.local_addrs(), "DNS forwarder listening; port-53 traffic is steered to it");
    Ok(fwd)
}

/// The forwarder's view of the registry, writing learned addresses through the maps.
struct AgentDns {
    agent: Agent,
}

impl dns::DnsPolicy for AgentDns {
    fn observe(&self, name: &str, addrs: &[IpAddr]) {
        self.agent.hub().observe_name(name, addrs);
    }

    fn match_name(&self, qname: &str) -> Option<ServiceId> {
        self.agent.view().policies.iter().find_map(|p| p.index.match_name(qname))
    }

    fn explicitly_listed(&self, ip: IpAddr) -> bool {
        self.agent.view().policies.iter().any(|p| p.index.explicitly_listed(ip))
    }

    fn enforcing(&self) -> bool {
        self.agent.view().cfg.mode == Mode::RegistryOnly
    }

    fn learn(&self, _service_id: ServiceId, name: &str, addrs: &[IpAddr], ttl: Duration) -> Result<(), String> {
        // Every policy whose registry has this name learns it, under its own policy id, with the
        // same translation the static compile uses.
        let view = self.agent.view();
        let mut allow = Vec::new();
        let mut dests = Vec::new();
        for p in &view.policies {
            let Some(service_id) = p.index.match_name(name) else { continue };
            let info = view.desired.service(service_id).ok_or_else(|| format!("unknown {service_id}"))?;
            for a in addrs {
                let net = normalize(ipnet::IpNet::from(*a));
                dests.push((DestEntry { net }, AllowValue::new(service_id, 0)));
                entries_for(p.id, service_id, &info.port_rules, net, None, |e, v| allow.push((e, v)));
            }
        }
        tracing::debug!(name, addrs = ?addrs, ttl = ?ttl, "learned from DNS");
        self.agent.hub().observe_name(name, addrs);
        self.agent.remember_names(name, addrs);
        self.agent.maps().learn(allow, dests, Instant::now() + ttl).map_err(|e| e.to_string())
    }
}
