//! What the live view (`/debug/graph`, `/ui`) reads of the agent: the kernel counters `/metrics`
//! reads, the proxy's request counters, workload and service names. The model and its rules are
//! in [`crate::ui::graph`].

use super::{Agent, admin::service_labels};
use crate::ui::graph::{self, AgentInfo, Destination, Graph, Input};

impl Agent {
    /// The graph of workloads -> services with their counters, now.
    pub fn graph_snapshot(&self) -> Graph {
        let v = self.view();
        let (flows, conns, traffic) = {
            let m = self.maps();
            let dp = m.maps();
            (dp.flows(), dp.conns(), dp.traffic())
        };
        let mut http = self.inner.proxy_metrics.get().map(graph::http_samples).unwrap_or_default();
        // Requests carry Istio's labels (the host); name their service as the TCP edges do.
        for h in &mut http {
            if let Destination::Service { host, .. } = &h.destination
                && let Some(info) =
                    v.desired.services.iter().find(|i| {
                        i.kind == crate::policy::ServiceKind::ServiceEntry && i.hosts.iter().any(|x| x == host)
                    })
                && let Some((ns, name)) = info.name.split_once('/')
            {
                h.destination = Destination::from_labels(host, name, ns);
            }
        }
        let workload = |cg: u64| self.workload(cg);
        let destination = |id| {
            let (host, name, ns) = service_labels(&v.desired, id);
            // The live view names a registry service by its ServiceEntry (namespace/name).
            match v.desired.service(id).filter(|i| i.kind == crate::policy::ServiceKind::ServiceEntry) {
                Some(info) => match info.name.split_once('/') {
                    Some((se_ns, se_name)) => Destination::from_labels(&host, se_name, se_ns),
                    None => Destination::from_labels(&host, &name, &ns),
                },
                None => Destination::from_labels(&host, &name, &ns),
            }
        };
        graph::build(&Input {
            agent: AgentInfo {
                pid: std::process::id(),
                mode: v.cfg.mode.to_string(),
                mode_source: v.cfg.mode_source.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            generated_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            flows: &flows,
            conns: &conns,
            traffic: &traffic,
            http: &http,
            workload: &workload,
            destination: &destination,
        })
    }
}
