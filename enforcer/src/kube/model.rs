//! What the policy computation knows about the cluster: pods on this node, namespaces, Services
//! and EndpointSlices, already reduced from the API objects to the fields that matter. Istio's
//! own kinds are kept as the parsed configuration model (see [`super::adapter`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::cgroup::QosClass;
use crate::workload::WorkloadName;

/// A pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The UID its cgroup directory is named after: the pod's own, or for a static pod's mirror
    /// the `kubernetes.io/config.mirror` hash (the kubelet names the cgroup after the static pod).
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.qosClass`, if reported yet.
    pub qos: Option<QosClass>,
    pub host_network: bool,
    /// `status.phase`, empty if absent.
    pub phase: String,
    pub containers: Vec<String>,
    /// `spec.dnsPolicy` (`ClusterFirst` when absent, as the API server defaults it).
    pub dns_policy: String,
    /// `spec.dnsConfig.nameservers`.
    pub dns_nameservers: Vec<IpAddr>,
    /// Istio's workload name and namespace (`source_workload`, `source_workload_namespace`).
    pub workload: WorkloadName,
}

impl PodInfo {
    /// From a Pod object; `None` without name or uid.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let md = &pod.metadata;
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let namespace = md.namespace.clone().unwrap_or_else(|| "default".into());
        let name = md.name.clone()?;
        let annotations = md.annotations.clone().unwrap_or_default();
        let labels = md.labels.clone().unwrap_or_default();
        // A static pod's mirror: the kubelet names the cgroup after the static pod's UID, which
        // is the manifest's hash (`kubernetes.io/config.mirror` = `kubernetes.io/config.hash`),
        // not the mirror's own `metadata.uid`.
        let uid = ["kubernetes.io/config.mirror", "kubernetes.io/config.hash"]
            .iter()
            .filter_map(|k| annotations.get(*k))
            .find(|h| !h.is_empty())
            .cloned()
            .or_else(|| md.uid.clone())
            .filter(|u| !u.is_empty())?;
        let owner = md
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| (r.kind.as_str(), r.name.as_str()));
        let workload = workload_identity(
            workload_name(&name, md.generate_name.as_deref(), owner, &labels),
            namespace.clone(),
            &labels,
        );
        Some(PodInfo {
            uid: uid.to_ascii_lowercase(),
            qos: status.and_then(|s| s.qos_class.as_deref()).and_then(QosClass::parse),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            containers: spec.map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default(),
            dns_policy: spec.and_then(|s| s.dns_policy.clone()).unwrap_or_else(|| "ClusterFirst".into()),
            dns_nameservers: spec
                .and_then(|s| s.dns_config.as_ref())
                .and_then(|c| c.nameservers.as_ref())
                .map(|n| n.iter().filter_map(|s| s.parse().ok()).collect())
                .unwrap_or_default(),
            namespace,
            name,
            labels,
            annotations,
            workload,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Istio's workload name of a pod (istio/istio `pkg/kube` `GetWorkloadMetaFromPod`): the
/// `service.istio.io/workload-name` label if set; else, for a pod with a generated name, its
/// controller — a ReplicaSet whose name ends in `-<pod-template-hash>` is its Deployment, a Job
/// named `<name>-<8..10 digits>` its CronJob, any other controller (StatefulSet, DaemonSet, Job,
/// ...) by its own name —; else the pod's name.
pub fn workload_name(
    pod: &str,
    generate_name: Option<&str>,
    controller: Option<(&str, &str)>,
    labels: &BTreeMap<String, String>,
) -> String {
    if let Some(n) = labels.get("service.istio.io/workload-name").filter(|n| !n.is_empty()) {
        return n.clone();
    }
    let mut name = pod.to_string();
    if generate_name.is_some_and(|g| !g.is_empty())
        && let Some((kind, owner)) = controller
    {
        name = owner.to_string();
        let hash = labels.get("pod-template-hash").map(String::as_str).unwrap_or("");
        if kind == "ReplicaSet" && !hash.is_empty() && owner.ends_with(hash) {
            name = owner.strip_suffix(&format!("-{hash}")).unwrap_or(owner).to_string();
        } else if kind == "Job"
            && let Some((base, digits)) = owner.rsplit_once('-')
            && (8..=10).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !base.is_empty()
        {
            name = base.to_string();
        }
    }
    if name.is_empty() { pod.to_string() } else { name }
}

/// The label keys Istio reads a canonical service name from, in order (istio/istio
/// `pkg/kube/labels`: `nameLabels`).
pub const CANONICAL_NAME_LABELS: [&str; 3] = ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"];
/// ... and the canonical revision (`revisionLabels`; none set: `latest`).
pub const CANONICAL_REVISION_LABELS: [&str; 3] =
    ["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"];

/// Istio's metric identity of a pod of workload `name` in `namespace` with `labels`: the
/// canonical service and revision by Istio's label order (`CanonicalService`), `source_app` and
/// `source_version` from the `app` and `version` labels (`unknown` without them, as Istio's
/// stats report).
pub fn workload_identity(name: String, namespace: String, labels: &BTreeMap<String, String>) -> WorkloadName {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
    WorkloadName {
        canonical_service: first(&CANONICAL_NAME_LABELS).unwrap_or_else(|| name.clone()),
        canonical_revision: first(&CANONICAL_REVISION_LABELS).unwrap_or_else(|| "latest".into()),
        app: labels.get("app").cloned(),
        version: labels.get("version").cloned(),
        name,
        namespace,
    }
}

/// A pod anywhere in the cluster (or a WorkloadEntry), as a possible endpoint of a ServiceEntry
/// with a `workloadSelector`: only what the selection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (else `status.podIP`); a WorkloadEntry's `address`.
    pub ips: Vec<IpAddr>,
    /// A WorkloadEntry's `ports` (port name -> number); empty for pods (the entry's ports).
    pub ports: BTreeMap<String, u16>,
}

impl MeshPod {
    /// From a Pod; `None` for a pod with no IP yet, a finished or a deleting pod (Istio's
    /// endpoints are the running pods').
    pub fn from_pod(pod: &Pod) -> Option<MeshPod> {
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some()
        {
            return None;
        }
        let mut ips: Vec<IpAddr> =
            status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect::<Vec<IpAddr>>();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
        (!ips.is_empty()).then(|| MeshPod {
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports: BTreeMap::new(),
        })
    }
}

/// A namespace: its labels decide governance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> Option<NamespaceInfo> {
        Some(NamespaceInfo { name: ns.metadata.name.clone()?, labels: ns.metadata.labels.clone().unwrap_or_default() })
    }
}

/// One port of a Kubernetes Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// A numeric `targetPort` (named target ports are resolved by the EndpointSlices).
    pub target_port: Option<u16>,
}

/// A Kubernetes Service (Istio's registry holds every one of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeService {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` without `None` (empty for headless services).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.externalName` of an `ExternalName` service.
    pub external_name: Option<String>,
    /// The `networking.istio.io/exportTo` annotation, split on commas.
    pub export_to: Vec<String>,
    pub created: String,
}

impl KubeService {
    pub fn from_service(s: &Service) -> Option<KubeService> {
        let md = &s.metadata;
        let spec = s.spec.as_ref()?;
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = &spec.cluster_ip
        {
            ips.push(ip.clone());
        }
        Some(KubeService {
            namespace: md.namespace.clone().unwrap_or_else(|| "default".into()),
            name: md.name.clone()?,
            cluster_ips: ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: u16::try_from(p.port).ok()?,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        target_port: match &p.target_port {
                            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                                u16::try_from(*n).ok()
                            }
                            _ => None,
                        },
                    })
                })
                .collect(),
            external_name: (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.clone())
                .flatten(),
            export_to: md
                .annotations
                .as_ref()
                .and_then(|a| a.get("networking.istio.io/exportTo"))
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            created: md.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        })
    }
}

/// The ready endpoints of one EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    /// `kubernetes.io/service-name`.
    pub service: String,
    pub addresses: Vec<IpAddr>,
    /// Port name -> number.
    pub ports: BTreeMap<String, (u16, String)>,
}

impl SliceInfo {
    pub fn from_slice(s: &EndpointSlice) -> Option<SliceInfo> {
        let md = &s.metadata;
        let service = md.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
        Some(SliceInfo {
            namespace: md.namespace.clone().unwrap_or_else(|| "default".into()),
            service,
            addresses: s
                .endpoints
                .iter()
                .flatten()
                // `ready` absent means ready (API semantics); terminating endpoints still serve.
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
                .collect(),
            ports: s
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let n = u16::try_from(p.port?).ok()?;
                    Some((p.name.clone().unwrap_or_default(), (n, p.protocol.clone().unwrap_or_else(|| "TCP".into()))))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn workload_names_follow_istio() {
        let h = labels(&[("pod-template-hash", "7b9f8c6d5")]);
        assert_eq!(
            workload_name(
                "sleep-7b9f8c6d5-x2k4p",
                Some("sleep-7b9f8c6d5-"),
                Some(("ReplicaSet", "sleep-7b9f8c6d5")),
                &h
            ),
            "sleep"
        );
        assert_eq!(workload_name("db-0", Some("db-"), Some(("StatefulSet", "db")), &BTreeMap::new()), "db");
        assert_eq!(
            workload_name("backup-28391040-abcde", Some("backup-28391040-"), Some(("Job", "backup-28391040")), &h),
            "backup"
        );
        assert_eq!(workload_name("once-xyz", Some("once-"), Some(("Job", "once")), &BTreeMap::new()), "once");
        // No generated name: the pod itself; the label overrides everything.
        assert_eq!(workload_name("standalone", None, Some(("ReplicaSet", "x")), &BTreeMap::new()), "standalone");
        let o = labels(&[("service.istio.io/workload-name", "custom")]);
        assert_eq!(workload_name("p-1", Some("p-"), Some(("ReplicaSet", "p")), &o), "custom");
        // A static pod's owner is its Node: not a workload, the pod's own name.
        assert_eq!(workload_name("etcd-node-1", None, Some(("Node", "node-1")), &BTreeMap::new()), "etcd-node-1");
        // A ReplicaSet without the hash label keeps its own name.
        assert_eq!(workload_name("rs-abc", Some("rs-"), Some(("ReplicaSet", "rs")), &BTreeMap::new()), "rs");
    }

    #[test]
    fn canonical_service_and_revision_follow_istios_label_order() {
        let w = workload_identity("web".into(), "shop".into(), &BTreeMap::new());
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("web", "latest"));
        assert_eq!((w.app.as_deref(), w.version.as_deref()), (None, None));
        let s = w.source();
        assert_eq!((s.app.as_str(), s.version.as_str(), s.namespace.as_str()), ("unknown", "unknown", "shop"));
        let l = labels(&[("app", "shopfront"), ("version", "v2")]);
        let w = workload_identity("web".into(), "shop".into(), &l);
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("shopfront", "v2"));
        assert_eq!((w.app.as_deref(), w.version.as_deref()), (Some("shopfront"), Some("v2")));
        let l = labels(&[
            ("app", "a"),
            ("version", "v"),
            ("app.kubernetes.io/name", "k8s-name"),
            ("app.kubernetes.io/version", "1.2.3"),
        ]);
        let w = workload_identity("web".into(), "shop".into(), &l);
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("k8s-name", "1.2.3"));
        let mut l = l;
        l.insert("service.istio.io/canonical-name".into(), "canon".into());
        l.insert("service.istio.io/canonical-revision".into(), "r7".into());
        let w = workload_identity("web".into(), "shop".into(), &l);
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("canon", "r7"));
        assert_eq!((w.app.as_deref(), w.version.as_deref()), (Some("a"), Some("v")));
        assert_eq!(w.key(), "shop/web");
    }

    #[test]
    fn a_static_pods_mirror_is_known_by_the_static_pods_uid() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "probe-node-1", "namespace": "shop", "uid": "0b7c3a4e-1111-4222-8333-944445555666",
                         "annotations": {"kubernetes.io/config.hash": "6b1f0e8b2a7c4d9e8f00112233445566",
                                         "kubernetes.io/config.mirror": "6B1F0E8B2A7C4D9E8F00112233445566",
                                         "kubernetes.io/config.source": "file"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "n", "controller": true}]},
            "spec": {"containers": [{"name": "probe", "image": "busybox"}]}
        }))
        .unwrap();
        let p = PodInfo::from_pod(&pod).unwrap();
        assert_eq!(p.uid, "6b1f0e8b2a7c4d9e8f00112233445566");
        assert_eq!(p.workload.key(), "shop/probe-node-1");
    }
}
