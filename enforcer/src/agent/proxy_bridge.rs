//! What the L7 proxy sees of the agent: original destinations from the kernel, routes from the
//! registry and its DestinationRules, workload names, and events into the hub.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use enforcer_common::{SETTINGS_F_PROXY, ServiceId};

use super::{AGENT_MARK, Agent, admin::service_labels};
use crate::{config::TlsMode, policy, proxy};

/// Bind the proxy on the local address (127.0.0.1 by default) and point the kernel's proxy
/// steering at it.
pub(super) async fn start_proxy(agent: &Agent) -> anyhow::Result<proxy::Proxy> {
    let policy =
        Arc::new(AgentProxy { agent: agent.clone(), by_client: Mutex::default(), by_original: Mutex::default() });
    let p = proxy::Proxy::bind(
        proxy::ProxyConfig {
            listen: SocketAddr::new(IpAddr::V4(agent.inner.config.local_v4), 0),
            upstream_mark: Some(AGENT_MARK),
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
    let _ = agent.inner.proxy_metrics.set(p.metrics());
    tracing::debug!(addr = %p.local_addr(), "L7 proxy listening");
    Ok(p)
}

struct AgentProxy {
    agent: Agent,
    /// client address -> (service id, cgroup id), and original -> service id, from the last
    /// `original_dst` (the proxy calls route()/workload() right after it for the same connection).
    by_client: Mutex<HashMap<SocketAddr, (ServiceId, u64)>>,
    by_original: Mutex<HashMap<SocketAddr, ServiceId>>,
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, V>>, k: K, v: V) {
    if let Ok(mut m) = m.lock() {
        if m.len() > 65_536 {
            m.clear();
        }
        m.insert(k, v);
    }
}

impl proxy::ProxyPolicy for AgentProxy {
    fn original_dst(&self, client: SocketAddr) -> Option<SocketAddr> {
        let (orig, service, cgroup) = self.agent.with_dataplane(|dp| dp.proxy_original(client))?;
        bounded_insert(&self.by_client, client, (service, cgroup));
        bounded_insert(&self.by_original, orig, service);
        Some(orig)
    }

    fn route(&self, original: SocketAddr) -> Option<proxy::Route> {
        let service_id = *self.by_original.lock().ok()?.get(&original)?;
        let v = self.agent.view();
        let (pv, se) = v.service_entry(service_id)?;
        let port = se.ports.iter().find(|p| p.number == original.port())?;
        let labels = proxy_labels(&v.desired, service_id);
        let host = se.hosts.iter().find(|h| !h.is_wildcard()).map(|h| h.to_string());
        let registry = v.registry(pv);
        match policy::tls_for(registry, se, port.number) {
            Some((dr, tls)) if tls.mode == TlsMode::Simple && !port.protocol.is_tls() => {
                Some(proxy::Route::Originate {
                    service: labels,
                    host: host.unwrap_or_else(|| original.ip().to_string()),
                    upstream_port: port.target_port.unwrap_or(port.number),
                    tls: proxy::TlsOrigination {
                        sni: tls.sni.clone(),
                        ca_certificates: tls.ca_certificates.clone(),
                        insecure_skip_verify: tls.insecure_skip_verify,
                        subject_alt_names: tls.subject_alt_names.clone(),
                    },
                    connect_timeout: dr.connect_timeout.unwrap_or(Duration::from_secs(10)),
                })
            }
            _ => {
                // SNI check: every host of this policy's registry that declares this port as TLS.
                let allowed = v
                    .desired
                    .services
                    .iter()
                    .filter(|i| i.policy == pv.id)
                    .filter_map(|i| Some((i.id, registry.services.get(i.se_index?)?)))
                    .filter(|(_, s)| s.ports.iter().any(|p| p.number == port.number && p.protocol.is_tls()))
                    .flat_map(|(id, s)| {
                        let labels = proxy_labels(&v.desired, id);
                        s.hosts.iter().map(move |h| (h.to_string(), labels.clone()))
                    })
                    .collect();
                Some(proxy::Route::SniCheck { port: port.number, allowed })
            }
        }
    }

    fn workload(&self, client: SocketAddr) -> String {
        let cg = self.by_client.lock().ok().and_then(|m| m.get(&client).map(|(_, c)| *c)).unwrap_or(0);
        self.agent.workload(cg)
    }

    fn event(&self, e: proxy::ProxyEvent) {
        let workload = self.workload(e.client);
        self.agent.hub().publish_proxy(&e, &workload);
    }
}

fn proxy_labels(desired: &policy::Desired, id: ServiceId) -> proxy::ServiceLabels {
    let (a, b, c) = service_labels(desired, id);
    proxy::ServiceLabels { destination_service: a, destination_service_name: b, destination_service_namespace: c }
}
