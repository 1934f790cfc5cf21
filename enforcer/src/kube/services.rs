//! Kubernetes Services and their EndpointSlices as registry entries: Istio's registry holds every
//! Service, so under `REGISTRY_ONLY` a pod may still call in-cluster services. Built directly in
//! the configuration model (typed Kubernetes objects need no YAML validation).
//!
//! A Service `name` in `ns` becomes host `name.ns.svc.<cluster domain>` with its ClusterIPs as
//! addresses (the cgroup hooks see the ClusterIP: kube-proxy/eBPF service translation happens
//! later) and its ports; the ready endpoint addresses of its EndpointSlices (headless services
//! have nothing else) are STATIC endpoints with the slices' port numbers (named targetPorts
//! resolved). `ExternalName` services resolve their external name (DNS).
//!
//! A ServiceEntry with a `workloadSelector` gets the selected workloads as its endpoints, as
//! Istio does: the running pods and the WorkloadEntries of the entry's namespace whose labels
//! include the selector's, with their IPs (and a WorkloadEntry's port map) ([`select_endpoints`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::adapter::ClusterSe;
use super::model::{KubeService, MeshPod, SliceInfo};
use crate::config::{Endpoint, EndpointAddress, Location, Port, Protocol, Resolution, ServiceEntry, SourceRef};

/// `name.ns.svc.<domain>`.
pub fn service_host(ns: &str, name: &str, domain: &str) -> String {
    format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase()
}

fn protocol(p: &str) -> Protocol {
    if p.eq_ignore_ascii_case("UDP") { Protocol::Udp } else { Protocol::Tcp }
}

/// Fill the endpoints of every ServiceEntry with a `workloadSelector` from `pods` (cluster-wide):
/// the pods of the entry's namespace whose labels include every selector label, each pod IP once,
/// sorted (so an unchanged selection compiles to an unchanged policy).
pub fn select_endpoints(services: &mut [ClusterSe], pods: &[MeshPod]) {
    for se in services.iter_mut().filter(|s| !s.from_kubernetes) {
        let Some(sel) = &se.workload_selector else { continue };
        let mut eps: Vec<(std::net::IpAddr, &BTreeMap<String, u16>)> = pods
            .iter()
            .filter(|p| p.namespace == se.namespace && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, &p.ports)))
            .collect();
        eps.sort();
        eps.dedup_by_key(|(ip, _)| *ip);
        se.entry.endpoints = eps
            .into_iter()
            .map(|(ip, ports)| Endpoint { address: EndpointAddress::Ip(ip), ports: ports.clone() })
            .collect();
    }
}

/// The registry entry of one Service with the slices that belong to it.
pub fn service_entry(svc: &KubeService, slices: &[&SliceInfo], domain: &str) -> ClusterSe {
    let ports: Vec<Port> = svc
        .ports
        .iter()
        .map(|p| Port {
            number: p.port,
            protocol: protocol(&p.protocol),
            name: if p.name.is_empty() { format!("port-{}", p.port) } else { p.name.clone() },
            target_port: p.target_port,
        })
        .collect();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for s in slices {
        // Slice ports are named like the service ports ("" for a single unnamed port).
        let map: BTreeMap<String, u16> = svc
            .ports
            .iter()
            .zip(&ports)
            .filter_map(|(sp, p)| Some((p.name.clone(), s.ports.get(&sp.name)?.0)))
            .collect();
        for a in &s.addresses {
            if !endpoints.iter().any(|e| e.address == EndpointAddress::Ip(*a)) {
                endpoints.push(Endpoint { address: EndpointAddress::Ip(*a), ports: map.clone() });
            }
        }
    }
    let (resolution, endpoints) = match &svc.external_name {
        Some(ext) => (
            Resolution::Dns,
            vec![Endpoint { address: EndpointAddress::Hostname(ext.to_ascii_lowercase()), ports: BTreeMap::new() }],
        ),
        None => (Resolution::Static, endpoints),
    };
    let entry = ServiceEntry {
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        hosts: vec![crate::config::Host::Exact(service_host(&svc.namespace, &svc.name, domain))],
        addresses: svc.cluster_ips.iter().map(|ip| ipnet::IpNet::from(*ip)).collect(),
        ports,
        endpoints,
        resolution,
        location: Location::MeshInternal,
        export_to: Vec::new(),
        workload_selector: None,
        source: SourceRef {
            file: PathBuf::from(format!("kubernetes:Service/{}/{}", svc.namespace, svc.name)),
            document: 1,
            line: 0,
        },
    };
    ClusterSe {
        namespace: svc.namespace.clone(),
        export_to: svc.export_to.clone(),
        workload_selector: None,
        created: svc.created.clone(),
        from_kubernetes: true,
        entry,
    }
}

/// Every Service with its slices.
pub fn service_entries(services: &[KubeService], slices: &[SliceInfo], domain: &str) -> Vec<ClusterSe> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceInfo>> = BTreeMap::new();
    for s in slices {
        by_service.entry((s.namespace.as_str(), s.service.as_str())).or_default().push(s);
    }
    services
        .iter()
        .filter(|s| !s.ports.is_empty())
        .map(|s| {
            let sl = by_service.get(&(s.namespace.as_str(), s.name.as_str())).cloned().unwrap_or_default();
            service_entry(s, &sl, domain)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::model::ServicePort;

    #[test]
    fn cluster_ip_and_headless_services() {
        let svc = KubeService {
            namespace: "team-a".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: "TCP".into(), target_port: None }],
            external_name: None,
            export_to: vec![],
            created: String::new(),
        };
        let slice = SliceInfo {
            namespace: "team-a".into(),
            service: "web".into(),
            addresses: vec!["10.244.1.5".parse().unwrap()],
            ports: [("http".to_string(), (8080, "TCP".to_string()))].into(),
        };
        let e = service_entries(std::slice::from_ref(&svc), std::slice::from_ref(&slice), "cluster.local");
        assert_eq!(e.len(), 1);
        let se = &e[0].entry;
        assert_eq!(se.hosts[0].to_string(), "web.team-a.svc.cluster.local");
        assert_eq!(se.addresses[0].to_string(), "10.96.0.20/32");
        assert_eq!(se.endpoints[0].ports.get("http"), Some(&8080));
        assert!(e[0].from_kubernetes);
        // Headless: endpoints only; UDP ports stay UDP.
        let mut h = svc.clone();
        h.cluster_ips.clear();
        h.ports[0].protocol = "UDP".into();
        let e = service_entries(&[h], &[slice], "cluster.local");
        assert!(e[0].entry.addresses.is_empty());
        assert!(e[0].entry.ports[0].protocol.is_udp());
        assert_eq!(e[0].entry.endpoints.len(), 1);
    }
}
