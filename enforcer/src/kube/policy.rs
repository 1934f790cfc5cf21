//! Pure: cluster state -> one [`WorkloadPolicy`] per pod on this node, decided the way Istio
//! decides what a pod's sidecar would see.
//!
//! For a pod in namespace `ns`:
//! 1. **Visibility** (`exportTo`): a ServiceEntry (or DestinationRule) is visible when its
//!    `spec.exportTo` — or, when absent/empty, the mesh's `defaultServiceExportTo`
//!    (`defaultDestinationRuleExportTo`; default `["*"]`) — contains `*`, or `.` and the object is
//!    in `ns`, or `ns` itself. `~` exports to no namespace.
//! 2. **Sidecar scope**: the `Sidecar` in `ns` whose `workloadSelector.labels` match the pod's
//!    labels (several: the oldest wins, as in Istio), else the selector-less Sidecar of `ns`, else
//!    the selector-less Sidecar of the root namespace (`rootNamespace` of the mesh config,
//!    default `istio-system`). Its `egress[].hosts` (`namespace/host`, namespace `*`, `.` = the
//!    Sidecar's namespace, `~` = none, or a name; host `*`, `*.suffix` or exact) keep only the
//!    visible ServiceEntries from a matching namespace, and of those only the matching hosts:
//!    a wildcard entry selected by a narrower sidecar host (`*.wikipedia.org` by
//!    `en.wikipedia.org`) keeps only the narrower host, as Istio does. A Sidecar without `egress`
//!    keeps everything visible. Egress listener ports are not modelled (the hosts of all
//!    listeners are united).
//! 3. **Mode**: the Sidecar's `outboundTrafficPolicy.mode`, else the mesh ConfigMap's, else the
//!    caller's default (Istio's own default is `ALLOW_ANY`).
//! 4. ServiceEntries with `workloadSelector` describe mesh workloads (they select pods as
//!    endpoints of an internal service): they are not egress destinations and are ignored (debug
//!    log). DestinationRules are kept when visible, selecting the pod (or without selector) and
//!    naming a host of a kept ServiceEntry.
//!
//! Pods that get no policy (the node default applies): pods in the excluded namespaces
//! (`kube-system`, `kube-public`, `kube-node-lease` by default: Istio never injects there),
//! `hostNetwork` pods and pods with `sidecar.istio.io/inject: "false"` (label or annotation) —
//! Istio gives none of these a sidecar —, finished pods (`Succeeded`/`Failed`), and pods whose
//! cgroup directory does not exist yet (reported as pending, retried by the controller).
//!
//! ServiceEntries and DestinationRules are parsed by [`crate::config::load_str`] from their JSON
//! (file name `kubernetes:<Kind>/<ns>/<name>`), so validation and diagnostics are those of
//! registry files; an invalid object is skipped with a diagnostic naming it and never blocks the
//! others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::cgroup::QosClass;
use crate::config::{self, DestinationRule, Host, Mode, Registry, ServiceEntry};
use crate::workload::WorkloadPolicy;

/// The namespaces whose pods get no per-pod policy by default.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What the policy needs to know about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.qosClass`; `Burstable` when not reported yet (the cgroup search covers a wrong guess).
    pub qos: QosClass,
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`), empty if absent.
    pub phase: String,
}

impl PodInfo {
    /// From a Pod object; `None` without name or uid.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let md = &pod.metadata;
        let status = pod.status.as_ref();
        Some(PodInfo {
            namespace: md.namespace.clone().unwrap_or_else(|| "default".into()),
            name: md.name.clone()?,
            uid: md.uid.clone().filter(|u| !u.is_empty())?,
            labels: md.labels.clone().unwrap_or_default(),
            annotations: md.annotations.clone().unwrap_or_default(),
            qos: status.and_then(|s| s.qos_class.as_deref()).and_then(QosClass::parse).unwrap_or(QosClass::Burstable),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        })
    }

    /// `namespace/name`, the workload's name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the computation reads. Istio objects are kept as the JSON the API server sent.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub service_entries: Vec<Value>,
    pub destination_rules: Vec<Value>,
    pub sidecars: Vec<Value>,
    /// The `istio` ConfigMap of `istio-system` (with `data.mesh`), if it exists.
    pub mesh_config_map: Option<Value>,
    /// Pods on this node.
    pub pods: Vec<PodInfo>,
}

/// Settings that do not come from the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mode when neither the pod's Sidecar nor the mesh config sets one.
    pub default_mode: Mode,
    /// Pods in these namespaces get no policy.
    pub excluded_namespaces: BTreeSet<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_mode: Mode::AllowAny,
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The result of [`compute`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Computed {
    /// One per pod with a cgroup, sorted by name.
    pub policies: Vec<WorkloadPolicy>,
    /// `ns/name` of pods that should get a policy but whose cgroup was not found yet.
    pub pending: Vec<String>,
    /// `ns/name` of pods deliberately left to the node default, with the reason.
    pub excluded: Vec<(String, &'static str)>,
    /// Problems with objects (invalid ones are skipped), each naming the object; and the
    /// warnings of valid ones. Stable across recomputations of the same state.
    pub diagnostics: Vec<String>,
}

/// The mesh-wide settings read from the `istio` ConfigMap's `data.mesh`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshSettings {
    pub mode: Option<Mode>,
    pub default_service_export_to: Vec<String>,
    pub default_destination_rule_export_to: Vec<String>,
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            mode: None,
            default_service_export_to: vec!["*".into()],
            default_destination_rule_export_to: vec!["*".into()],
            root_namespace: "istio-system".into(),
        }
    }
}

impl MeshSettings {
    /// Read the ConfigMap (the mode through [`config::load_str`], like a registry file).
    pub fn from_config_map(cm: &Value, diagnostics: &mut Vec<String>) -> MeshSettings {
        let mut out = MeshSettings::default();
        let label = object_name("ConfigMap", cm);
        let text = serde_json::to_string_pretty(cm).unwrap_or_default();
        match config::load_str(&text, Path::new(&format!("kubernetes:{label}"))) {
            Ok(reg) => out.mode = reg.mode.map(|(m, _)| m),
            Err(e) => diagnostics.push(format!("{label}: mesh config ignored: {e}")),
        }
        let mesh = cm.pointer("/data/mesh").and_then(Value::as_str).unwrap_or("");
        if let Ok(Value::Object(mesh)) = serde_saphyr::from_str::<Value>(mesh) {
            let list = |k: &str| -> Option<Vec<String>> {
                let v = mesh.get(k)?.as_array()?;
                let v: Vec<String> = v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
                (!v.is_empty()).then_some(v)
            };
            if let Some(v) = list("defaultServiceExportTo") {
                out.default_service_export_to = v;
            }
            if let Some(v) = list("defaultDestinationRuleExportTo") {
                out.default_destination_rule_export_to = v;
            }
            if let Some(ns) = mesh.get("rootNamespace").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                out.root_namespace = ns.to_string();
            }
        }
        out
    }
}

/// `Kind ns/name` of an object.
pub fn object_name(kind: &str, obj: &Value) -> String {
    let md = obj.get("metadata");
    let s = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("");
    let ns = s("namespace");
    format!("{kind} {}/{}", if ns.is_empty() { "default" } else { ns }, s("name"))
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or("")
}

fn namespace_of(obj: &Value) -> String {
    match meta_str(obj, "namespace") {
        "" => "default".to_string(),
        ns => ns.to_string(),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn label_map(v: Option<&Value>) -> Option<BTreeMap<String, String>> {
    let m = v?.as_object()?;
    Some(m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Is an object with `export_to` (empty: `default`) in `obj_ns` visible to `pod_ns`?
pub fn exported_to(export_to: &[String], default: &[String], obj_ns: &str, pod_ns: &str) -> bool {
    let list = if export_to.is_empty() { default } else { export_to };
    list.iter().any(|e| e == "*" || (e == "." && obj_ns == pod_ns) || e == pod_ns)
}

struct ParsedSe {
    namespace: String,
    export_to: Vec<String>,
    entry: ServiceEntry,
}

struct ParsedDr {
    namespace: String,
    export_to: Vec<String>,
    selector: Option<BTreeMap<String, String>>,
    rule: DestinationRule,
}

/// A Sidecar egress host pattern's host part.
#[derive(Clone, Debug, PartialEq)]
enum HostPattern {
    Any,
    Exact(String),
    Wildcard(String),
}

impl HostPattern {
    fn parse(s: &str) -> HostPattern {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            HostPattern::Any
        } else if let Some(suffix) = s.strip_prefix("*.") {
            HostPattern::Wildcard(suffix.to_string())
        } else {
            HostPattern::Exact(s)
        }
    }

    /// The part of `host` this pattern selects: `host` itself, a narrower host, or nothing.
    fn select(&self, host: &Host) -> Option<Host> {
        match (self, host) {
            (HostPattern::Any, h) => Some(h.clone()),
            (HostPattern::Exact(p), Host::Exact(h)) => (p == h).then(|| host.clone()),
            (HostPattern::Wildcard(p), Host::Exact(h)) => Host::Wildcard(p.clone()).matches(h).then(|| host.clone()),
            (HostPattern::Exact(p), Host::Wildcard(_)) => host.matches(p).then(|| Host::Exact(p.clone())),
            (HostPattern::Wildcard(p), Host::Wildcard(h)) => {
                if p == h || h.ends_with(&format!(".{p}")) {
                    Some(host.clone())
                } else if p.ends_with(&format!(".{h}")) {
                    Some(Host::Wildcard(p.clone()))
                } else {
                    None
                }
            }
        }
    }
}

struct ParsedSidecar {
    namespace: String,
    name: String,
    created: String,
    selector: Option<BTreeMap<String, String>>,
    /// `None`: no egress section (everything visible).
    egress: Option<Vec<(String, HostPattern)>>,
    mode: Option<Mode>,
}

impl ParsedSidecar {
    fn parse(obj: &Value, diagnostics: &mut Vec<String>) -> Option<ParsedSidecar> {
        let label = object_name("Sidecar", obj);
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let namespace = namespace_of(obj);
        let mode = match spec.pointer("/outboundTrafficPolicy/mode").and_then(Value::as_str) {
            None => None,
            Some(m) => match m.parse::<Mode>() {
                Ok(m) => Some(m),
                Err(e) => {
                    diagnostics.push(format!("{label}: spec.outboundTrafficPolicy.mode: {e}; Sidecar ignored"));
                    return None;
                }
            },
        };
        let egress = match spec.get("egress").and_then(Value::as_array) {
            None => None,
            Some(listeners) if listeners.is_empty() => None,
            Some(listeners) => {
                let mut hosts = Vec::new();
                for (i, l) in listeners.iter().enumerate() {
                    for (j, h) in string_list(l.get("hosts")).iter().enumerate() {
                        match h.split_once('/') {
                            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                                let ns = if ns == "." { namespace.clone() } else { ns.to_string() };
                                hosts.push((ns, HostPattern::parse(host)));
                            }
                            _ => diagnostics.push(format!(
                                "{label}: spec.egress[{i}].hosts[{j}]: {h:?} is not namespace/host; entry ignored; fix: write e.g. \"./*\" or \"istio-system/{h}\""
                            )),
                        }
                    }
                }
                Some(hosts)
            }
        };
        Some(ParsedSidecar {
            name: meta_str(obj, "name").to_string(),
            created: meta_str(obj, "creationTimestamp").to_string(),
            selector: label_map(spec.pointer("/workloadSelector/labels")).filter(|m| !m.is_empty()),
            namespace,
            egress,
            mode,
        })
    }

    /// The hosts of `se` this Sidecar lets the workload see (empty: none).
    fn filter(&self, se: &ParsedSe) -> Vec<Host> {
        let Some(egress) = &self.egress else {
            return se.entry.hosts.clone();
        };
        let mut out: Vec<Host> = Vec::new();
        for (ns, pattern) in egress {
            if !(ns == "*" || *ns == se.namespace) {
                continue; // includes "~": no namespace
            }
            for h in &se.entry.hosts {
                if let Some(sel) = pattern.select(h)
                    && !out.contains(&sel)
                {
                    out.push(sel);
                }
            }
        }
        out
    }
}

/// Parse one ServiceEntry or DestinationRule through the registry loader.
fn load_object(kind: &str, obj: &Value, diagnostics: &mut Vec<String>) -> Option<Registry> {
    let label = object_name(kind, obj);
    let mut obj = obj.clone();
    // Handled here (the file loader would warn that it does not support them).
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("exportTo");
        spec.remove("workloadSelector");
    }
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("managedFields");
    }
    let text = serde_json::to_string_pretty(&obj).unwrap_or_default();
    let file = PathBuf::from(format!("kubernetes:{kind}/{}/{}", namespace_of(&obj), meta_str(&obj, "name")));
    match config::load_str(&text, &file) {
        Ok(reg) => {
            for w in &reg.warnings {
                diagnostics.push(format!("warning: {w}"));
            }
            Some(reg)
        }
        Err(e) => {
            diagnostics.push(format!("{label} skipped: {e}"));
            None
        }
    }
}

/// Compute the policies. `cgroup_of` finds a pod's cgroup directory (normally
/// [`super::cgroup::find_pod_cgroup`]); it is the only access to the outside world.
pub fn compute(state: &ClusterState, opts: &Options, cgroup_of: &dyn Fn(&PodInfo) -> Option<PathBuf>) -> Computed {
    let mut out = Computed::default();
    let diags = &mut out.diagnostics;

    let mesh = match &state.mesh_config_map {
        Some(cm) => MeshSettings::from_config_map(cm, diags),
        None => MeshSettings::default(),
    };

    let mut ses = Vec::new();
    for obj in &state.service_entries {
        if obj.pointer("/spec/workloadSelector").is_some() {
            tracing::debug!(
                object = %object_name("ServiceEntry", obj),
                "ServiceEntry with workloadSelector describes mesh workloads, not an egress destination; ignored"
            );
            continue;
        }
        let Some(reg) = load_object("ServiceEntry", obj, diags) else { continue };
        for entry in reg.services {
            ses.push(ParsedSe {
                namespace: namespace_of(obj),
                export_to: string_list(obj.pointer("/spec/exportTo")),
                entry,
            });
        }
    }
    let mut drs = Vec::new();
    for obj in &state.destination_rules {
        let Some(reg) = load_object("DestinationRule", obj, diags) else { continue };
        for rule in reg.destination_rules {
            drs.push(ParsedDr {
                namespace: namespace_of(obj),
                export_to: string_list(obj.pointer("/spec/exportTo")),
                selector: label_map(obj.pointer("/spec/workloadSelector/matchLabels")).filter(|m| !m.is_empty()),
                rule,
            });
        }
    }
    let mut sidecars: Vec<ParsedSidecar> =
        state.sidecars.iter().filter_map(|o| ParsedSidecar::parse(o, diags)).collect();
    // Istio: among several candidates the oldest wins (then by name).
    sidecars.sort_by(|a, b| (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name)));

    let mut pods: Vec<&PodInfo> = state.pods.iter().collect();
    pods.sort_by_key(|p| p.key());
    for pod in pods {
        let key = pod.key();
        if let Some(reason) = exclusion(pod, opts) {
            out.excluded.push((key, reason));
            continue;
        }
        let Some(cgroup) = cgroup_of(pod) else {
            out.pending.push(key);
            continue;
        };
        let sidecar = sidecars
            .iter()
            .find(|s| s.namespace == pod.namespace && s.selector.as_ref().is_some_and(|sel| selects(sel, &pod.labels)))
            .or_else(|| sidecars.iter().find(|s| s.namespace == pod.namespace && s.selector.is_none()))
            .or_else(|| sidecars.iter().find(|s| s.namespace == mesh.root_namespace && s.selector.is_none()));

        let mut registry = Registry::default();
        for se in &ses {
            if !exported_to(&se.export_to, &mesh.default_service_export_to, &se.namespace, &pod.namespace) {
                continue;
            }
            let hosts = match sidecar {
                Some(s) => s.filter(se),
                None => se.entry.hosts.clone(),
            };
            if hosts.is_empty() {
                continue;
            }
            let mut entry = se.entry.clone();
            entry.hosts = hosts;
            registry.services.push(entry);
        }
        for dr in &drs {
            let visible =
                exported_to(&dr.export_to, &mesh.default_destination_rule_export_to, &dr.namespace, &pod.namespace)
                    && dr.selector.as_ref().is_none_or(|sel| selects(sel, &pod.labels))
                    && registry.services.iter().any(|s| dr_host_matches(&dr.rule.host, &s.hosts));
            if visible {
                registry.destination_rules.push(dr.rule.clone());
            }
        }
        let mode = sidecar.and_then(|s| s.mode).or(mesh.mode).unwrap_or(opts.default_mode);
        out.policies.push(WorkloadPolicy { name: key, registry, mode, cgroups: vec![cgroup] });
    }
    out.diagnostics.sort();
    out.diagnostics.dedup();
    out
}

fn exclusion(pod: &PodInfo, opts: &Options) -> Option<&'static str> {
    if opts.excluded_namespaces.contains(&pod.namespace) {
        return Some("namespace excluded");
    }
    if pod.host_network {
        return Some("hostNetwork pod");
    }
    let inject = "sidecar.istio.io/inject";
    if [pod.labels.get(inject), pod.annotations.get(inject)].into_iter().flatten().any(|v| v == "false") {
        return Some("sidecar.istio.io/inject=false");
    }
    if pod.phase == "Succeeded" || pod.phase == "Failed" {
        return Some("pod finished");
    }
    None
}

/// Does a DestinationRule's `host` name one of `hosts` (exactly, or by wildcard either way)?
fn dr_host_matches(dr_host: &str, hosts: &[Host]) -> bool {
    let dr = HostPattern::parse(dr_host);
    hosts.iter().any(|h| dr.select(h).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(text).unwrap();
        v["items"].as_array().unwrap().clone()
    }

    fn fixture_state() -> ClusterState {
        let pods: k8s_openapi::List<Pod> =
            serde_json::from_str(include_str!("../../tests/fixtures/kube/pods.json")).unwrap();
        ClusterState {
            service_entries: items(include_str!("../../tests/fixtures/kube/serviceentries.json")),
            destination_rules: items(include_str!("../../tests/fixtures/kube/destinationrules.json")),
            sidecars: items(include_str!("../../tests/fixtures/kube/sidecars.json")),
            mesh_config_map: Some(
                serde_json::from_str(include_str!("../../tests/fixtures/kube/configmap-istio.json")).unwrap(),
            ),
            pods: pods.items.iter().filter_map(PodInfo::from_pod).collect(),
        }
    }

    fn cg(p: &PodInfo) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/sys/fs/cgroup/kubepods.slice/pod{}", p.uid)))
    }

    /// `SE ns/name -> hosts` of a policy, and its DR names.
    fn view(p: &WorkloadPolicy) -> (Vec<String>, Vec<String>) {
        let mut ses: Vec<String> = p
            .registry
            .services
            .iter()
            .map(|s| {
                let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
                format!("{}/{} {}", s.namespace, s.name, hosts.join(","))
            })
            .collect();
        ses.sort();
        let mut drs: Vec<String> =
            p.registry.destination_rules.iter().map(|d| format!("{}/{}", d.namespace, d.name)).collect();
        drs.sort();
        (ses, drs)
    }

    fn policy<'a>(c: &'a Computed, name: &str) -> &'a WorkloadPolicy {
        c.policies.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no policy {name}: {c:#?}"))
    }

    #[test]
    fn fixtures_give_istio_visibility_per_pod() {
        let c = compute(&fixture_state(), &Options::default(), &cg);
        let names: Vec<&str> = c.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "default/sleep-7b9f8c6d5-x2k4p",
                "team-a/productpage-v1-6f9d8c7b5-abcde",
                "team-a/ratings-v1-5d7f8b9c4-fghij",
                "team-b/reviews-v2-7c8d9e6f5-klmno"
            ]
        );

        // default: no Sidecar of its own -> the root namespace's (./* = istio-system, default/*).
        let sleep = policy(&c, "default/sleep-7b9f8c6d5-x2k4p");
        assert_eq!(
            view(sleep),
            (
                vec![
                    "default/external-svc-https api.dropboxapi.com,www.googleapis.com".to_string(),
                    "default/external-svc-mongocluster mymongodb.somedomain".to_string(),
                    "istio-system/external-svc-dns foo.bar.com".to_string(),
                ],
                vec!["default/dropbox-timeouts".to_string(), "istio-system/tls-foobar".to_string()]
            )
        );
        assert_eq!(sleep.mode, Mode::RegistryOnly, "mesh ConfigMap mode");
        assert_eq!(
            sleep.cgroups,
            vec![PathBuf::from("/sys/fs/cgroup/kubepods.slice/poda1a1a1a1-0000-4000-8000-000000000001")]
        );
        assert!(sleep.registry.warnings.is_empty() && sleep.registry.mode.is_none());

        // team-a: its namespace Sidecar (./*, istio-system/*).
        let pp = policy(&c, "team-a/productpage-v1-6f9d8c7b5-abcde");
        assert_eq!(
            view(pp),
            (
                vec![
                    "istio-system/external-svc-dns foo.bar.com".to_string(),
                    "team-a/external-svc-wikipedia *.wikipedia.org".to_string(),
                    "team-a/team-a-private api.team-a.example.com".to_string(),
                ],
                vec!["istio-system/tls-foobar".to_string(), "team-a/wikipedia-private".to_string()]
            )
        );
        assert_eq!(pp.mode, Mode::RegistryOnly);

        // ratings: the Sidecar selecting app=ratings narrows *.wikipedia.org to en.wikipedia.org
        // and overrides the mode.
        let ratings = policy(&c, "team-a/ratings-v1-5d7f8b9c4-fghij");
        assert_eq!(
            view(ratings),
            (
                vec!["team-a/external-svc-wikipedia en.wikipedia.org".to_string()],
                vec!["team-a/wikipedia-private".to_string()]
            )
        );
        assert_eq!(ratings.mode, Mode::AllowAny);

        // team-b: root Sidecar; mongocluster is exported to team-b by name; details-svc has a
        // workloadSelector (mesh workload): ignored.
        let reviews = policy(&c, "team-b/reviews-v2-7c8d9e6f5-klmno");
        assert_eq!(
            view(reviews).0,
            vec![
                "default/external-svc-https api.dropboxapi.com,www.googleapis.com".to_string(),
                "default/external-svc-mongocluster mymongodb.somedomain".to_string(),
                "istio-system/external-svc-dns foo.bar.com".to_string(),
            ]
        );

        // Left to the node default, with reasons.
        assert_eq!(
            c.excluded,
            vec![
                ("default/legacy-0".to_string(), "sidecar.istio.io/inject=false"),
                ("kube-system/coredns-668d6bf9bc-9wq2z".to_string(), "namespace excluded"),
                ("team-b/node-agent-q8r7s".to_string(), "hostNetwork pod"),
            ]
        );
        assert!(c.pending.is_empty());
    }

    #[test]
    fn invalid_object_is_skipped_with_a_diagnostic_naming_it() {
        let c = compute(&fixture_state(), &Options::default(), &cg);
        let bad: Vec<&String> = c.diagnostics.iter().filter(|d| d.contains("invalid-port")).collect();
        assert_eq!(bad.len(), 1, "{:#?}", c.diagnostics);
        assert!(bad[0].starts_with("ServiceEntry default/invalid-port skipped:"), "{}", bad[0]);
        assert!(
            bad[0].contains("kubernetes:ServiceEntry/default/invalid-port") && bad[0].contains("spec.ports[0].number"),
            "{}",
            bad[0]
        );
        // The others are unaffected (checked above) and no policy mentions it.
        assert!(c.policies.iter().all(|p| p.registry.services.iter().all(|s| s.name != "invalid-port")));
        // The exportTo/workloadSelector fields are handled here, not warned about.
        assert!(
            !c.diagnostics.iter().any(|d| d.contains("exportTo") || d.contains("workloadSelector")),
            "{:#?}",
            c.diagnostics
        );
    }

    #[test]
    fn pods_without_cgroup_are_pending() {
        let state = fixture_state();
        let c = compute(&state, &Options::default(), &|p: &PodInfo| (p.namespace == "team-a").then(|| cg(p)).flatten());
        assert_eq!(c.policies.len(), 2);
        assert_eq!(
            c.pending,
            vec!["default/sleep-7b9f8c6d5-x2k4p".to_string(), "team-b/reviews-v2-7c8d9e6f5-klmno".to_string()]
        );
    }

    fn se(ns: &str, name: &str, host: &str, export_to: Option<&[&str]>) -> Value {
        let mut v = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"hosts": [host], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                     "resolution": if host.starts_with("*.") { "NONE" } else { "DNS" }}
        });
        if let Some(e) = export_to {
            v["spec"]["exportTo"] = serde_json::json!(e);
        }
        v
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: BTreeMap::new(),
            qos: QosClass::Burstable,
            host_network: false,
            phase: "Running".into(),
        }
    }

    fn names(c: &Computed, pod: &str) -> Vec<String> {
        let mut v: Vec<String> =
            policy(c, pod).registry.services.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
        v.sort();
        v
    }

    #[test]
    fn export_to_variants_and_mesh_default() {
        let mut state = ClusterState {
            service_entries: vec![
                se("a", "absent", "absent.example.com", None),
                se("a", "star", "star.example.com", Some(&["*"])),
                se("a", "dot", "dot.example.com", Some(&["."])),
                se("a", "to-b", "tob.example.com", Some(&["b"])),
                se("a", "dot-and-c", "dotc.example.com", Some(&[".", "c"])),
                se("a", "none", "none.example.com", Some(&["~"])),
            ],
            pods: vec![pod("a", "p", &[]), pod("b", "p", &[]), pod("c", "p", &[])],
            ..Default::default()
        };
        let c = compute(&state, &Options::default(), &cg);
        assert_eq!(names(&c, "a/p"), ["a/absent", "a/dot", "a/dot-and-c", "a/star"]);
        assert_eq!(names(&c, "b/p"), ["a/absent", "a/star", "a/to-b"]);
        assert_eq!(names(&c, "c/p"), ["a/absent", "a/dot-and-c", "a/star"]);
        // No mesh config, no Sidecar: the caller's default mode (Istio's: ALLOW_ANY).
        assert_eq!(policy(&c, "a/p").mode, Mode::AllowAny);

        // Mesh defaultServiceExportTo: ["."] makes entries without exportTo namespace-private.
        state.mesh_config_map = Some(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "defaultServiceExportTo:\n- \".\"\noutboundTrafficPolicy:\n  mode: ALLOW_ANY\n"}
        }));
        let c = compute(&state, &Options { default_mode: Mode::RegistryOnly, ..Options::default() }, &cg);
        assert_eq!(names(&c, "a/p"), ["a/absent", "a/dot", "a/dot-and-c", "a/star"]);
        assert_eq!(names(&c, "b/p"), ["a/star", "a/to-b"]);
        assert_eq!(policy(&c, "b/p").mode, Mode::AllowAny, "mesh mode beats the caller's default");
    }

    fn sidecar(ns: &str, name: &str, created: &str, spec: Value) -> Value {
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": spec
        })
    }

    #[test]
    fn sidecar_selection_order_and_host_patterns() {
        let state = ClusterState {
            service_entries: vec![
                se("a", "wild", "*.example.com", None),
                se("a", "exact", "api.example.org", None),
                se("b", "other", "api.other.net", None),
                se("istio-system", "shared", "shared.example.net", None),
            ],
            sidecars: vec![
                // Two selecting app=web: the older one wins.
                sidecar(
                    "a",
                    "web-new",
                    "2025-02-01T00:00:00Z",
                    serde_json::json!({
                    "workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["*/*"]}]}),
                ),
                sidecar(
                    "a",
                    "web-old",
                    "2025-01-01T00:00:00Z",
                    serde_json::json!({
                    "workloadSelector": {"labels": {"app": "web"}},
                    "egress": [{"hosts": ["./*.foo.example.com"]}, {"port": {"number": 443, "protocol": "TLS", "name": "tls"}, "hosts": ["b/api.other.net"]}],
                    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
                ),
                // Namespace-wide for a.
                sidecar(
                    "a",
                    "default",
                    "2025-01-01T00:00:00Z",
                    serde_json::json!({
                    "egress": [{"hosts": ["./api.example.org", "~/*", "bad-host-without-namespace"]}]}),
                ),
                // Root: namespace-wide for every other namespace; one with selector is ignored.
                sidecar(
                    "istio-system",
                    "default",
                    "2025-01-01T00:00:00Z",
                    serde_json::json!({
                    "egress": [{"hosts": ["./*"]}]}),
                ),
                sidecar(
                    "istio-system",
                    "selective",
                    "2024-01-01T00:00:00Z",
                    serde_json::json!({
                    "workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["*/*"]}]}),
                ),
            ],
            pods: vec![
                pod("a", "web", &[("app", "web")]),
                pod("a", "db", &[("app", "db")]),
                pod("b", "web", &[("app", "web")]),
            ],
            ..Default::default()
        };
        let c = compute(&state, &Options::default(), &cg);
        assert!(!c.diagnostics.iter().any(|d| d.starts_with("ServiceEntry")), "{:#?}", c.diagnostics);
        let hosts = |p: &str| -> Vec<String> {
            let mut v: Vec<String> = policy(&c, p)
                .registry
                .services
                .iter()
                .flat_map(|s| s.hosts.iter().map(move |h| format!("{}/{}", s.name, h)))
                .collect();
            v.sort();
            v
        };
        assert_eq!(hosts("a/web"), ["other/api.other.net", "wild/*.foo.example.com"]);
        assert_eq!(policy(&c, "a/web").mode, Mode::RegistryOnly);
        assert_eq!(hosts("a/db"), ["exact/api.example.org"]);
        assert_eq!(hosts("b/web"), ["shared/shared.example.net"]);
        assert!(
            c.diagnostics.iter().any(|d| d.contains("Sidecar a/default") && d.contains("bad-host-without-namespace")),
            "{:#?}",
            c.diagnostics
        );
    }

    #[test]
    fn host_pattern_selection() {
        let w = |s: &str| Host::Wildcard(s.into());
        let e = |s: &str| Host::Exact(s.into());
        let p = HostPattern::parse;
        assert_eq!(p("*").select(&w("example.com")), Some(w("example.com")));
        assert_eq!(p("api.example.com").select(&e("api.example.com")), Some(e("api.example.com")));
        assert_eq!(p("API.example.com").select(&e("api.example.com")), Some(e("api.example.com")));
        assert_eq!(p("api.example.com").select(&e("www.example.com")), None);
        assert_eq!(p("*.example.com").select(&e("api.example.com")), Some(e("api.example.com")));
        assert_eq!(p("*.example.com").select(&e("example.com")), None);
        assert_eq!(p("*.example.com").select(&e("evilexample.com")), None);
        assert_eq!(p("en.wikipedia.org").select(&w("wikipedia.org")), Some(e("en.wikipedia.org")));
        assert_eq!(p("*.example.com").select(&w("a.example.com")), Some(w("a.example.com")));
        assert_eq!(p("*.a.example.com").select(&w("example.com")), Some(w("a.example.com")));
        assert_eq!(p("*.example.com").select(&w("example.org")), None);
    }

    #[test]
    fn invalid_sidecar_mode_ignores_that_sidecar() {
        let state = ClusterState {
            service_entries: vec![se("a", "x", "x.example.com", None)],
            sidecars: vec![sidecar(
                "a",
                "default",
                "2025-01-01T00:00:00Z",
                serde_json::json!({
                "egress": [{"hosts": ["istio-system/*"]}], "outboundTrafficPolicy": {"mode": "SOMETIMES"}}),
            )],
            pods: vec![pod("a", "p", &[])],
            ..Default::default()
        };
        let c = compute(&state, &Options::default(), &cg);
        assert_eq!(names(&c, "a/p"), ["a/x"]);
        assert!(c.diagnostics.iter().any(|d| d.contains("Sidecar a/default") && d.contains("SOMETIMES")));
    }

    #[test]
    fn mesh_settings_from_the_fixture_config_map() {
        let cm: Value = serde_json::from_str(include_str!("../../tests/fixtures/kube/configmap-istio.json")).unwrap();
        let mut d = Vec::new();
        let m = MeshSettings::from_config_map(&cm, &mut d);
        assert_eq!(m.mode, Some(Mode::RegistryOnly));
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(m.default_service_export_to, ["*"]);
        assert!(d.is_empty(), "{d:?}");
    }
}
