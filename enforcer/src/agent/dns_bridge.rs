//! What the DNS forwarder sees of the agent: which names the registry has, and a way to put an
//! answer's addresses into the kernel *before* the answer is released.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{AllowValue, DNS_HEARTBEAT_INTERVAL_MS, SETTINGS_F_DNS_STEER, ServiceId};

use super::{AGENT_MARK, Agent};
use crate::{
    config::Mode,
    dns,
    policy::{AllowEntry, DestEntry, entries_for, normalize},
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
        search: cfg_dns.search.clone(),
        forward_ecs: cfg_dns.forward_ecs,
        min_ttl: cfg_dns.ttl_floor,
        grace: cfg_dns.grace,
        max_ttl: cfg_dns.ttl_ceiling,
        upstream_mark: Some(AGENT_MARK),
    };
    let queue = agent.maps().learn_queue();
    let policy = AgentDns { agent: agent.clone(), reported: Mutex::default(), queue };
    let fwd = dns::Forwarder::bind(cfg, Arc::new(policy)).await.context("binding the DNS forwarder")?;
    let (mut v4, mut v6, mut dns_port) = ([0u8; 4], [0u8; 16], 0);
    for a in fwd.local_addrs() {
        dns_port = a.port();
        match a.ip() {
            IpAddr::V4(ip) => v4 = ip.octets(),
            IpAddr::V6(ip) => v6 = ip.octets(),
        }
    }
    anyhow::ensure!(v4 != [0; 4], "the forwarder has no IPv4 listener");
    // The heartbeat first: the kernel steers only while it is fresh.
    start_heartbeat(agent)?;
    let fallback = cfg_dns.fallback;
    agent.update_settings(|s| {
        s.local_v4 = v4;
        s.local_v6 = v6;
        s.dns_port = dns_port;
        s.agent_mark = AGENT_MARK;
        s.dns_fallback = fallback;
        s.flags |= SETTINGS_F_DNS_STEER;
    })?;
    let stats = fwd.stats();
    agent.register_metrics(|reg| stats.register(reg));
    tracing::debug!(addrs = ?fwd.local_addrs(), "DNS forwarder listening; port-53 traffic is steered to it");
    Ok(fwd)
}

/// Beat `DNS_ALIVE` now and then every `DNS_HEARTBEAT_INTERVAL_MS` from a task of the runtime
/// the forwarder serves on, until [`Agent::forwarder_stopping`] / [`Agent::stop_steering`] take
/// the heartbeat away (or the process dies: the kernel then sees the beat go stale).
fn start_heartbeat(agent: &Agent) -> anyhow::Result<()> {
    let Some(mut hb) = agent.with_dataplane(|dp| dp.take_heartbeat()) else {
        // Already beating (a second forwarder start is not expected).
        return Ok(());
    };
    hb.beat().context("writing the DNS forwarder's heartbeat")?;
    *agent.inner.heartbeat.lock().expect("heartbeat lock") = Some(hb);
    let slot = Arc::downgrade(&agent.inner.heartbeat);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(DNS_HEARTBEAT_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(slot) = slot.upgrade() else { return };
            let mut g = slot.lock().expect("heartbeat lock");
            match g.as_mut() {
                Some(hb) => {
                    if let Err(e) = hb.beat() {
                        tracing::warn!("DNS forwarder heartbeat: {e}");
                    }
                }
                None => return,
            }
        }
    });
    Ok(())
}

/// ALLOW and DESTS entries learned from one answer.
type Learned = (Vec<(AllowEntry, AllowValue)>, Vec<(DestEntry, AllowValue)>);

/// Distinct names reported per run; beyond this, refusals are still answered and counted, and
/// logged at info, but no longer printed or published.
const MAX_REPORTED: usize = 10_000;

/// The forwarder's view of the registry, writing learned addresses through the maps.
struct AgentDns {
    agent: Agent,
    /// (workload, name, action) already reported: each refused name is reported once per run
    /// and workload.
    reported: Mutex<HashSet<(String, String, dns::Action)>>,
    /// Where a learn goes while an apply holds the maps (served between the apply's writes).
    queue: Arc<super::state::LearnQueue>,
}

/// How long a learner retries for the maps (held by something other than an apply: a sweep, a
/// counter read) before it waits for the lock.
const LEARN_SPIN: Duration = Duration::from_millis(20);

impl AgentDns {
    /// The ALLOW and DESTS entries for `addrs` of every policy whose registry has `name`.
    fn entries(&self, name: &str, addrs: &[IpAddr]) -> Result<Learned, String> {
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
        Ok((allow, dests))
    }

    fn learned(&self, name: &str, addrs: &[IpAddr], until: Instant) {
        tracing::debug!(name, addrs = ?addrs, until = ?until.saturating_duration_since(Instant::now()), "learned from DNS");
        self.agent.hub().observe_name(name, addrs);
        self.agent.remember_names(name, addrs);
    }
}

impl dns::DnsPolicy for AgentDns {
    fn observe(&self, name: &str, addrs: &[IpAddr]) {
        self.agent.hub().observe_name(name, addrs);
    }

    fn match_name(&self, qname: &str) -> Option<dns::NameMatch> {
        let view = self.agent.view();
        let service = view.policies.iter().find_map(|p| p.index.match_name(qname))?;
        let exact = view.policies.iter().any(|p| p.index.is_exact_host(qname));
        Some(dns::NameMatch { service, exact })
    }

    fn explicitly_listed(&self, ip: IpAddr) -> bool {
        self.agent.view().policies.iter().any(|p| p.index.explicitly_listed(ip))
    }

    fn mode(&self) -> dns::PolicyMode {
        match self.agent.view().cfg.mode {
            Mode::RegistryOnly => dns::PolicyMode::Enforce,
            Mode::Audit => dns::PolicyMode::Audit,
            Mode::AllowAny => dns::PolicyMode::Open,
        }
    }

    fn learn(&self, _service_id: ServiceId, name: &str, addrs: &[IpAddr], life: Duration) -> Result<Instant, String> {
        // Every policy whose registry has this name learns it, under its own policy id, with the
        // same translation the static compile uses.
        let (allow, dests) = self.entries(name, addrs)?;
        let mut req = super::state::LearnRequest { allow, dests, life };
        let start = Instant::now();
        let until = loop {
            // The lifetime starts once the entries are written (whoever writes them).
            if let Some(mut maps) = self.agent.try_maps() {
                let until = Instant::now() + life;
                maps.learn(req.allow, req.dests, until).map_err(|e| e.to_string())?;
                break until;
            }
            // An apply holds the maps: it writes these between two of its own writes.
            match self.queue.submit(req) {
                Ok(r) => break r.map_err(|e| e.to_string())?,
                Err(back) => req = back,
            }
            if start.elapsed() > LEARN_SPIN {
                let mut maps = self.agent.maps();
                let until = Instant::now() + life;
                maps.learn(req.allow, req.dests, until).map_err(|e| e.to_string())?;
                break until;
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        self.learned(name, addrs, until);
        Ok(until)
    }

    fn try_learn(
        &self,
        _service_id: ServiceId,
        name: &str,
        addrs: &[IpAddr],
        life: Duration,
    ) -> Option<Result<Instant, String>> {
        // Inline unless a big apply holds the maps (then the blocking pool waits for it).
        let (allow, dests) = match self.entries(name, addrs) {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let mut maps = self.agent.try_maps()?;
        let until = Instant::now() + life;
        let r = maps.learn(allow, dests, until).map_err(|e| e.to_string());
        drop(maps);
        if r.is_ok() {
            self.learned(name, addrs, until);
        }
        Some(r.map(|()| until))
    }

    fn report(&self, r: &dns::Refusal) {
        if self.reported.lock().expect("reported lock").len() >= MAX_REPORTED {
            return;
        }
        // The asking socket's workload, as kernel events name theirs (one sock_diag lookup, made
        // while the client still waits for its answer).
        let workload = match r.client.as_ref().and_then(dns::peer::cgroup_of) {
            Some(cg) => self.agent.workload(cg),
            None => crate::workloads::UNKNOWN.to_string(),
        };
        {
            let mut seen = self.reported.lock().expect("reported lock");
            if seen.len() >= MAX_REPORTED || !seen.insert((workload.clone(), r.name.clone(), r.action)) {
                return;
            }
        }
        let cfg = &self.agent.inner.config.dns;
        if cfg.print_refusals {
            if cfg.print_json {
                crate::events::print_dns_json(r, &workload);
            } else {
                crate::events::print_line(&crate::events::format_dns_refusal(r, &workload));
            }
        }
        self.agent.hub().publish_dns(r, &workload);
    }
}

/// Learned entries that expire within this are checked for open connections each upkeep tick.
const ZOMBIE_HORIZON: std::time::Duration = std::time::Duration::from_secs(3);

/// Keep learned addresses alive while connections to them are open (Cilium's "zombies"): an
/// entry about to expire whose address, port and protocol has an open socket in this network
/// namespace lives on until `--dns-grace` (at least the horizon) after the last check that saw
/// it in use, so established flows and their reconnects within the grace are not cut. Called
/// by the upkeep every second; reads /proc/net only when some entry is about to expire.
pub(super) fn keep_zombies(agent: &Agent) -> usize {
    let now = Instant::now();
    let soon: Vec<AllowEntry> = {
        let maps = agent.maps();
        maps.allow().learned().iter().filter(|(_, (_, t))| *t <= now + ZOMBIE_HORIZON).map(|(k, _)| *k).collect()
    };
    if soon.is_empty() {
        return 0;
    }
    let open = dns::conns::open_remotes();
    let in_use = |k: &AllowEntry| {
        open.iter().any(|(ip, port, proto)| {
            k.proto == *proto && (k.port == enforcer_common::ANY_PORT || k.port == *port) && k.net.contains(ip)
        })
    };
    let keep: std::collections::BTreeSet<AllowEntry> = soon.into_iter().filter(|k| in_use(k)).collect();
    if keep.is_empty() {
        return 0;
    }
    let until = now + agent.inner.config.dns.grace.max(ZOMBIE_HORIZON) + std::time::Duration::from_secs(1);
    match agent.maps().extend_learned(|k| keep.contains(k), until) {
        Ok(()) => tracing::debug!(entries = keep.len(), "learned addresses kept alive: connections to them are open"),
        Err(e) => tracing::warn!("keeping learned addresses of open connections failed: {e:#}"),
    }
    keep.len()
}
