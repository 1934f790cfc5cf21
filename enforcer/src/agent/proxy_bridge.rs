//! What the L7 proxy sees of the agent: the kernel's filing for an accepted connection, the
//! routes of its original destination (the services of the client's policy that the address
//! and port belong to, each with its DestinationRule), workload names, and events into the hub.
//!
//! The kernel files one service id per steered connection, but several ServiceEntries may
//! share an address (a CDN, DNS-learned addresses): the routes list every service of the policy
//! on that (address, port), and the proxy picks one per request by Host (per connection by
//! SNI), as Envoy picks a virtual host.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{PolicyId, SETTINGS_F_PROXY, ServiceId};

use super::{AGENT_MARK, Agent, View, admin::service_labels};
use crate::{
    cli::ReportFormat,
    config::{
        DestinationRule, EndpointAddress, Host, Mode, Port, Protocol, Registry, Resolution, ServiceEntry, TlsMode,
    },
    events, policy, proxy,
};

/// How long computed routes are reused for one (policy, original destination) of one view.
const ROUTES_TTL: Duration = Duration::from_secs(2);
/// Above this many cached destinations the cache is reset.
const MAX_CACHED_ROUTES: usize = 4096;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the proxy on the local address (127.0.0.1 by default) and point the kernel's proxy
/// steering at it.
pub(super) async fn start_proxy(agent: &Agent) -> anyhow::Result<proxy::Proxy> {
    let policy = Arc::new(AgentProxy { agent: agent.clone(), cache: Mutex::default() });
    let p = proxy::Proxy::bind(
        proxy::ProxyConfig {
            listen: SocketAddr::new(IpAddr::V4(agent.inner.config.local_v4), 0),
            upstream_mark: Some(AGENT_MARK),
            threads: agent.inner.config.proxy_threads,
            client_idle_timeout: agent.inner.config.proxy_idle_timeout,
        },
        policy,
    )
    .await
    .context("binding the L7 proxy")?;
    let port = p.local_addr().port();
    agent.update_settings(|s| {
        s.local_v4 = agent.inner.config.local_v4.octets();
        s.proxy_port = port;
        s.agent_mark = AGENT_MARK;
        s.flags |= SETTINGS_F_PROXY;
    })?;
    let metrics = p.metrics();
    let names = agent.clone();
    metrics.set_source(Box::new(move |workload| names.source_of(workload)));
    agent.register_metrics(|reg| metrics.register(reg));
    let _ = agent.inner.proxy_metrics.set(metrics);
    tracing::debug!(addr = %p.local_addr(), "L7 proxy listening");
    Ok(p)
}

/// The kernel's filing for a connection the proxy accepted: (original destination, the
/// service id the kernel matched, the client's cgroup). THE one place the proxy reads it (the
/// kernel side is moving to filings bound to the socket and deleted on read).
fn kernel_filing(agent: &Agent, client: SocketAddr) -> Option<(SocketAddr, ServiceId, u64)> {
    agent.with_dataplane(|dp| dp.take_proxy_original(client))
}

#[derive(Default)]
struct RouteCache {
    /// The view the entries were computed from (its address; the Arc is held so it stays unique).
    view: Option<Arc<View>>,
    entries: HashMap<(PolicyId, ServiceId, SocketAddr), (Instant, proxy::Routes)>,
}

struct AgentProxy {
    agent: Agent,
    cache: Mutex<RouteCache>,
}

impl AgentProxy {
    fn routes(&self, view: &Arc<View>, service: ServiceId, original: SocketAddr) -> Option<proxy::Routes> {
        let policy = view.desired.service(service)?.policy;
        let key = (policy, service, original);
        let now = Instant::now();
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if !c.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, view)) {
                c.view = Some(view.clone());
                c.entries.clear();
            }
            if let Some((at, r)) = c.entries.get(&key)
                && now.duration_since(*at) < ROUTES_TTL
            {
                return Some(r.clone());
            }
        }
        let routes = routes_for(&self.agent, view, service, original)?;
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.entries.len() >= MAX_CACHED_ROUTES {
            c.entries.clear();
        }
        c.entries.insert(key, (now, routes.clone()));
        Some(routes)
    }
}

impl proxy::ProxyPolicy for AgentProxy {
    fn accept(&self, client: SocketAddr) -> Option<proxy::Accepted> {
        let (original, service, cgroup) = kernel_filing(&self.agent, client)?;
        let view = self.agent.view();
        let routes = self.routes(&view, service, original)?;
        Some(proxy::Accepted { original, workload: self.agent.workload(cgroup).into(), routes })
    }

    fn event(&self, e: proxy::ProxyEvent) {
        let j = self.agent.hub().publish_proxy(&e);
        let cfg = &self.agent.inner.config;
        if cfg.quiet {
            return;
        }
        match cfg.event_format {
            ReportFormat::Text => events::print_line(&j.line),
            ReportFormat::Json => {
                if let Ok(s) = serde_json::to_string(&j) {
                    eprintln!("{s}");
                }
            }
        }
    }
}

fn proxy_labels(desired: &policy::Desired, id: ServiceId) -> proxy::ServiceLabels {
    let (a, b, c) = service_labels(desired, id);
    proxy::ServiceLabels { destination_service: a, destination_service_name: b, destination_service_namespace: c }
}

/// Does the service answer on `ip`, as far as the agent knows? Its static addresses, endpoint
/// and IP hosts, its hosts' resolved addresses, names learned from DNS answers for it; and,
/// as Istio's ORIGINAL_DST clusters, any address for `resolution: NONE` without addresses.
fn serves(se: &ServiceEntry, ip: IpAddr, resolved: &ResolvedIndex<'_>, learned: &HashMap<IpAddr, String>) -> bool {
    if se.resolution == Resolution::None && se.addresses.is_empty() {
        return true;
    }
    if se.addresses.iter().any(|n| n.contains(&ip)) {
        return true;
    }
    let endpoint_ip = se.endpoints.iter().any(|e| match &e.address {
        EndpointAddress::Ip(a) => *a == ip,
        EndpointAddress::Hostname(h) => resolved.has(h, ip),
        EndpointAddress::Unix(_) => false,
    });
    if endpoint_ip {
        return true;
    }
    let host_ip = se.hosts.iter().any(|h| match h {
        Host::Exact(name) => name.parse::<IpAddr>().ok() == Some(ip) || resolved.has(name, ip),
        Host::Wildcard(_) => false,
    });
    host_ip || learned.get(&ip).is_some_and(|name| se.matches_host(name))
}

/// The resolver's current answers, looked up by name.
struct ResolvedIndex<'a> {
    table: &'a std::collections::BTreeMap<String, crate::resolver::ResolvedName>,
}

impl ResolvedIndex<'_> {
    fn has(&self, name: &str, ip: IpAddr) -> bool {
        self.table.get(&name.to_ascii_lowercase()).is_some_and(|r| r.addrs.contains(&ip))
    }
}

/// Where traffic on `port` of this entry is TLS the client itself speaks: a TLS/HTTPS port, or
/// the targetPort of one (or of a port whose DestinationRule originates TLS), steered by
/// `--sni-check-target-ports`.
fn tls_port_for<'a>(se: &'a ServiceEntry, port: u16, registry: &Registry, client_ns: Option<&str>) -> Option<&'a Port> {
    se.ports.iter().find(|p| {
        (p.number == port && p.protocol.is_tls())
            || (p.target_port == Some(port)
                && (p.protocol.is_tls() || originates(registry, se, p, client_ns).is_some()))
    })
}

/// The DestinationRule and TLS settings when `p` originates TLS (SIMPLE on a non-TLS port).
fn originates<'a>(
    registry: &'a Registry,
    se: &ServiceEntry,
    p: &Port,
    client_ns: Option<&str>,
) -> Option<(&'a DestinationRule, &'a crate::config::TlsSettings)> {
    if p.protocol.is_tls() || p.protocol.is_udp() {
        return None;
    }
    let (dr, tls) = policy::tls_for(registry, se, p.number, client_ns)?;
    (tls.mode == TlsMode::Simple).then_some((dr, tls))
}

/// The routes for connections of `service`'s policy to `original`.
fn routes_for(agent: &Agent, view: &View, service: ServiceId, original: SocketAddr) -> Option<proxy::Routes> {
    let filed = view.desired.service(service)?;
    let pv = view.policy(filed.policy)?;
    let registry = view.registry(pv);
    let client_ns = policy::workload_namespace(&pv.name);
    let (ip, port) = (original.ip(), original.port());
    let table = agent.refresher().snapshot();
    let resolved = ResolvedIndex { table: &table };
    let learned = agent.learned_names();
    // Every ServiceEntry of the policy on this address (the filed one always).
    let candidates: Vec<(ServiceId, &ServiceEntry)> = view
        .desired
        .services
        .iter()
        .filter(|i| i.policy == pv.id)
        .filter_map(|i| Some((i.id, registry.services.get(i.se_index?)?)))
        .filter(|(id, se)| *id == service || serves(se, ip, &resolved, &learned))
        .collect();
    let fallback = match pv.mode {
        Mode::RegistryOnly => proxy::Fallback::BlackHole,
        Mode::AllowAny | Mode::Audit => proxy::Fallback::Passthrough,
    };
    let filed_se = candidates.iter().find(|(id, _)| *id == service).map(|(_, se)| *se)?;

    if tls_port_for(filed_se, port, registry, client_ns).is_some() {
        let allowed = candidates
            .iter()
            .filter(|(_, se)| tls_port_for(se, port, registry, client_ns).is_some())
            .flat_map(|(id, se)| {
                let labels = proxy_labels(&view.desired, *id);
                se.hosts.iter().map(move |h| (h.to_string(), labels.clone()))
            })
            .collect();
        return Some(proxy::Routes::Tls(Arc::new(proxy::SniRoutes { allowed, fallback })));
    }

    let filed_port = filed_se.ports.iter().find(|p| p.number == port)?;
    let mut vhosts = Vec::new();
    for (id, se) in &candidates {
        let Some(p) = se.ports.iter().find(|p| p.number == port && !p.protocol.is_udp()) else { continue };
        let mut domains: Vec<String> = se.hosts.iter().map(|h| h.to_string()).collect();
        // The address itself names the filed service (and any that lists it as an address).
        if *id == service || se.addresses.iter().any(|n| n.contains(&ip)) {
            domains.push(ip.to_string());
        }
        let host = se.hosts.iter().find(|h| !h.is_wildcard()).map(|h| h.to_string()).unwrap_or_else(|| ip.to_string());
        let upstream = match originates(registry, se, p, client_ns) {
            Some((dr, tls)) => proxy::Upstream {
                port: p.target_port.unwrap_or(p.number),
                tls: Some(proxy::TlsOrigination {
                    sni: tls.sni.clone(),
                    ca_certificates: tls.ca_certificates.clone(),
                    insecure_skip_verify: tls.insecure_skip_verify,
                    subject_alt_names: tls.subject_alt_names.clone(),
                }),
                host,
                connect_timeout: dr.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            },
            None => proxy::Upstream {
                port: p.number,
                tls: None,
                host,
                connect_timeout: policy::destination_rule(registry, se, client_ns)
                    .and_then(|dr| dr.connect_timeout)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            },
        };
        vhosts.push(proxy::VirtualHost { domains, service: proxy_labels(&view.desired, *id), upstream });
    }
    Some(proxy::Routes::Http(Arc::new(proxy::HttpRoutes {
        vhosts,
        fallback,
        allow_connect: matches!(&filed_port.protocol, Protocol::Unknown(p) if p == "HTTP_PROXY"),
        http2: matches!(filed_port.protocol, Protocol::Http2 | Protocol::Grpc),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(yaml: &str) -> Registry {
        crate::config::load_str(yaml, std::path::Path::new("t.yaml")).expect("valid registry")
    }

    const DRS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: svc}
spec:
  hosts: [api.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other, namespace: elsewhere}
spec: {host: api.test, trafficPolicy: {tls: {mode: SIMPLE, sni: other}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec: {host: api.test, trafficPolicy: {tls: {mode: SIMPLE, sni: root}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: service, namespace: svc}
spec: {host: api.test, trafficPolicy: {tls: {mode: SIMPLE, sni: service}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: client, namespace: app}
spec: {host: api.test, trafficPolicy: {tls: {mode: SIMPLE, sni: client}}}
";

    #[test]
    fn destination_rules_follow_istio_precedence() {
        let r = reg(DRS);
        let se = &r.services[0];
        let name = |ns| policy::destination_rule(&r, se, ns).map(|d| d.name.as_str());
        assert_eq!(name(Some("app")), Some("client"), "the client's namespace first");
        assert_eq!(name(Some("other-app")), Some("service"), "then the service's");
        assert_eq!(name(None), Some("service"));
        let mut r2 = r.clone();
        r2.destination_rules.retain(|d| d.name != "service" && d.name != "client");
        let dr = |r: &Registry, ns| policy::destination_rule(r, &r.services[0], ns).map(|d| d.name.clone());
        assert_eq!(dr(&r2, Some("x")).as_deref(), Some("root"), "then the root's");
        r2.destination_rules.retain(|d| d.name != "root");
        assert_eq!(dr(&r2, Some("x")), None, "another namespace's rule does not apply to a client");
        assert_eq!(dr(&r2, None).as_deref(), Some("other"), "registry files: it does");
    }

    #[test]
    fn workload_namespaces_come_from_kubernetes_names() {
        assert_eq!(policy::workload_namespace("shop/web-1"), Some("shop"));
        assert_eq!(policy::workload_namespace("shop/web-1\u{0}"), Some("shop"), "a service-key scope");
        assert_eq!(policy::workload_namespace("nginx"), None);
        assert_eq!(policy::workload_namespace(""), None);
    }

    /// Is port 80 steered to the proxy (the kernel's ALLOW_F_PROXY, from `policy::compile` for
    /// the policy `name`), and does the proxy originate TLS on it (its upstream choice)?
    fn steered_and_originated(r: &Registry, name: &str) -> (bool, bool) {
        let scope = if name.is_empty() { String::new() } else { format!("{name}\u{0}") };
        let (d, _) = policy::compile(
            &policy::Inputs {
                registry: r,
                resolved: &HashMap::new(),
                cli: &[],
                dns_servers: &[],
                policy_id: if name.is_empty() { PolicyId::DEFAULT } else { PolicyId::new(3).unwrap() },
                sni_check: false,
                sni_check_target_ports: false,
                scope: &scope,
            },
            &mut policy::ServiceIds::default(),
        );
        let steered = d
            .allow
            .iter()
            .find(|(e, _)| e.port == 80)
            .is_some_and(|(_, v)| v.flags & enforcer_common::ALLOW_F_PROXY != 0);
        let se = &r.services[0];
        let p = se.ports.iter().find(|p| p.number == 80).unwrap();
        let originated = originates(r, se, p, policy::workload_namespace(name)).is_some();
        (steered, originated)
    }

    const API_SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: svc}
spec:
  hosts: [api.test]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
";

    fn dr_doc(name: &str, ns: &str, host: &str, mode: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{host: \"{host}\", trafficPolicy: {{tls: {{mode: {mode}}}}}}}\n"
        )
    }

    /// Registries where `policy::tls_for` (first rule naming the host, any namespace, wildcards)
    /// and the proxy's choice (namespace precedence, exact hosts) used to disagree: the kernel
    /// steered connections the proxy then sent in plain text, or the proxy would have originated
    /// TLS on connections the kernel never steered. Both now ask `policy::destination_rule`.
    #[test]
    fn kernel_steering_and_proxy_upstream_use_the_same_destination_rule() {
        // A wildcard rule: tls_for matched it, the proxy's exact-host lookup did not.
        let r = reg(&format!("{API_SE}{}", dr_doc("wild", "svc", "*.test", "SIMPLE")));
        assert_eq!(steered_and_originated(&r, ""), (true, true));
        // The first-listed rule is in another namespace: tls_for took it (SIMPLE: steered), the
        // proxy the service's own (DISABLE: plain). The service's namespace wins for both.
        let r = reg(&format!(
            "{API_SE}{}{}",
            dr_doc("other", "elsewhere", "api.test", "SIMPLE"),
            dr_doc("own", "svc", "api.test", "DISABLE")
        ));
        assert_eq!(steered_and_originated(&r, ""), (false, false));
        // A Kubernetes workload in `app`: its namespace's rule (SIMPLE) wins over the service's
        // (DISABLE, listed first) for the steering too.
        let r = reg(&format!(
            "{API_SE}{}{}",
            dr_doc("own", "svc", "api.test", "DISABLE"),
            dr_doc("client", "app", "api.test", "SIMPLE")
        ));
        assert_eq!(steered_and_originated(&r, "app/web-1"), (true, true));
        assert_eq!(steered_and_originated(&r, ""), (false, false), "no client namespace: the service's rule");
        // A more specific rule in the same namespace beats a wildcard listed before it.
        let r = reg(&format!(
            "{API_SE}{}{}",
            dr_doc("wild", "svc", "*.test", "SIMPLE"),
            dr_doc("exact", "svc", "api.test", "DISABLE")
        ));
        assert_eq!(steered_and_originated(&r, ""), (false, false));
    }
}
