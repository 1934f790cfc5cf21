//! What the admin API serves from the agent: metrics, the registry view, events, readiness.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use enforcer_common::{
    ConnCounters, ConnKey, DIR_EGRESS, FlowKey, HOOK_CONNECT4, HOOK_CONNECT6, PROTO_TCP, ServiceId, TrafficKey,
    TrafficValue, VERDICT_ALLOWED, VERDICT_DENIED,
};

use super::Agent;
use crate::{
    metrics::{DnsSnapshot, IstioTcpLabels, Snapshot, TcpSeries, load},
    policy::{Desired, ServiceKind},
};

/// Service id used in metrics for connections refused into BlackHoleCluster (never allocated:
/// `ServiceIds` skips it).
const BLACKHOLE: ServiceId = match ServiceId::new(u32::MAX) {
    Some(id) => id,
    None => ServiceId::NONE,
};

/// (destination_service, destination_service_name, destination_service_namespace).
pub(super) fn service_labels(desired: &Desired, id: ServiceId) -> (String, String, String) {
    if id == BLACKHOLE {
        return ("BlackHoleCluster".into(), "BlackHoleCluster".into(), String::new());
    }
    match desired.service(id) {
        None => ("PassthroughCluster".into(), "PassthroughCluster".into(), String::new()),
        Some(info) => {
            let host = info.hosts.first().cloned().unwrap_or_else(|| info.name.clone());
            match info.name.split_once('/') {
                Some((ns, name)) if info.kind == ServiceKind::ServiceEntry => (host, name.to_string(), ns.to_string()),
                _ => (host, info.name.clone(), String::new()),
            }
        }
    }
}

impl Agent {
    fn fill_istio(
        &self,
        s: &mut Snapshot,
        desired: &Desired,
        flows: &[(FlowKey, u64)],
        conns: &[(ConnKey, ConnCounters)],
        traffic: &[(TrafficKey, TrafficValue)],
    ) {
        let mut tcp: BTreeMap<(String, ServiceId, &'static str), TcpSeries> = BTreeMap::new();
        let mut denied: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (k, n) in flows {
            if k.verdict == VERDICT_ALLOWED {
                continue;
            }
            let wl = self.workload(k.cgroup_id);
            *denied.entry((wl.clone(), if k.verdict == VERDICT_DENIED { "denied" } else { "audit" })).or_default() += n;
            if k.verdict == VERDICT_DENIED
                && k.proto == PROTO_TCP
                && (k.hook == HOOK_CONNECT4 || k.hook == HOOK_CONNECT6)
            {
                let e = tcp.entry((wl, BLACKHOLE, "UH")).or_default();
                e.opened += n;
                e.closed += n;
            }
        }
        for (k, c) in conns {
            let e = tcp.entry((self.workload(k.cgroup_id), k.service_id, "-")).or_default();
            e.opened += c.opened;
            e.closed += c.closed;
        }
        for (k, t) in traffic {
            let e = tcp.entry((self.workload(k.cgroup_id), k.service_id, "-")).or_default();
            if k.direction == DIR_EGRESS {
                e.sent_bytes += t.bytes;
            } else {
                e.received_bytes += t.bytes;
            }
        }
        s.denied = denied.into_iter().map(|((wl, v), n)| (wl, v.to_string(), n)).collect();
        s.tcp = tcp
            .into_iter()
            .map(|((wl, id, flags), series)| {
                let svc = service_labels(desired, id);
                (IstioTcpLabels::new(&wl, (&svc.0, &svc.1, &svc.2), flags), series)
            })
            .collect();
    }
}

impl crate::admin::AdminSource for Agent {
    fn registryz(&self) -> crate::admin::Registryz {
        crate::registryz::build(self)
    }

    fn metrics(&self) -> String {
        let v = self.view();
        let (allow_n, dests_n, workloads_n, policies_n, flows, conns, traffic, drops) = {
            let m = self.maps();
            let dp = m.maps();
            (
                m.allow().len(),
                m.dests().len(),
                m.workloads().len(),
                v.policies.len(),
                dp.flows(),
                dp.conns(),
                dp.traffic(),
                dp.event_drops(),
            )
        };
        let refresher = self.refresher().stats();
        let mut s = Snapshot {
            registry_services: v.desired.services.len() as u64,
            registry_hosts: v.hosts() as u64,
            registry_addresses: allow_n as u64,
            maps: vec![
                (enforcer_common::map_names::ALLOW, allow_n as u64, u64::from(enforcer_common::ALLOW_MAX_ENTRIES)),
                (enforcer_common::map_names::DESTS, dests_n as u64, u64::from(enforcer_common::DESTS_MAX_ENTRIES)),
                (
                    enforcer_common::map_names::WORKLOADS,
                    workloads_n as u64,
                    u64::from(enforcer_common::WORKLOADS_MAX_ENTRIES),
                ),
                (enforcer_common::map_names::MODES, policies_n as u64, u64::from(enforcer_common::MAX_POLICIES)),
            ],
            reloads: load(&self.stats().reloads),
            reload_errors: load(&self.stats().reload_errors),
            events_dropped: drops,
            denied: Vec::new(),
            tcp: Vec::new(),
            resolver_lookups: load(&refresher.lookups),
            resolver_failures: load(&refresher.failures),
            dns: self.inner.dns_stats.get().map(|d| DnsSnapshot {
                queries_udp: load(&d.queries_udp),
                queries_tcp: load(&d.queries_tcp),
                answered: load(&d.answered),
                learned_addrs: load(&d.learned_addrs),
                blocked: load(&d.blocked),
                servfail: load(&d.servfail),
                upstream_timeouts: load(&d.upstream_timeouts),
                rebinding_dropped: load(&d.rebinding_dropped),
                learn_failures: load(&d.learn_failures),
                refused: [
                    crate::dns::BlockReason::NotInRegistry,
                    crate::dns::BlockReason::SearchExpansion,
                    crate::dns::BlockReason::MultiQuestion,
                    crate::dns::BlockReason::Opcode,
                    crate::dns::BlockReason::SearchMiss,
                ]
                .into_iter()
                .map(|r| (r.label(), load(d.refused(r))))
                .collect(),
                audit_would_refuse: load(&d.audit_would_refuse),
                stripped: load(&d.stripped),
            }),
        };
        self.fill_istio(&mut s, &v.desired, &flows, &conns, &traffic);
        crate::metrics::render(&s, self.inner.proxy_metrics.get())
    }

    fn events(&self) -> (Vec<String>, Option<tokio::sync::broadcast::Receiver<String>>) {
        let (recent, rx) = self.hub().snapshot();
        (recent, Some(rx))
    }

    fn ready(&self) -> bool {
        match self.inner.ready.lock().expect("ready lock").as_ref() {
            Some(r) => r.load(Ordering::Relaxed),
            None => true,
        }
    }
}
