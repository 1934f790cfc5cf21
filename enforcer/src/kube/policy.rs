//! Pure: cluster state -> one [`WorkloadPolicy`] per *scope*, decided the way Istio decides what
//! a pod's sidecar would see (checked against istio/istio `pilot/pkg/model/sidecar.go` and
//! `push_context.go`). Pods that share a scope share one policy (one policy id, one copy of the
//! registry in the kernel), whatever their number.
//!
//! **Governance** ([`Governance`]): only opted-in pods get a policy — a pod or its namespace
//! labelled `istio.io/dataplane-mode=enforcer` (Istio ambient's label key; the pod label `none`
//! opts a pod out), or every pod with `govern_all`. Never (unless asked): the system namespaces,
//! the daemon's own namespace, `hostNetwork` pods, pods that already run an Istio sidecar
//! (`istio-proxy` container or `sidecar.istio.io/status` annotation) and finished pods.
//! Ungoverned pods get no WORKLOADS entry: the node default (ALLOW_ANY) judges them.
//!
//! **Scope** of a governed pod in namespace `N`:
//! 1. its Sidecar: one in `N` whose `workloadSelector` matches (the oldest), else `N`'s
//!    selector-less one, else the root namespace's selector-less one (`getSidecarScope`);
//! 2. visibility: ServiceEntries and Kubernetes Services whose `exportTo` (or the mesh default;
//!    Services: the `networking.istio.io/exportTo` annotation) includes `*`, `N`, or `.` in `N`;
//! 3. import: each egress host `ns/host` — `.` is `N`, the *workload's* namespace, also in a
//!    root-namespace Sidecar (`convertIstioListenerToWrapper`) — imports a visible service host
//!    that is a **subset** of `host` (`SubsetOf`: an exact egress host never imports a wildcard
//!    entry). A service is matched against the hosts of its own namespace first, then `*/`.
//!    A listener with a port keeps only that port of the service;
//! 4. one namespace per host: the same host imported from several namespaces keeps `N`'s, else
//!    a Kubernetes Service's, else the oldest; several ServiceEntries of that namespace for the
//!    host are merged (ports and addresses united);
//! 5. DestinationRules per host: `N`'s (with a matching `workloadSelector`, else one without),
//!    else the service namespace's exported ones, else the root namespace's exported ones, each
//!    the most specific host match, the oldest on ties;
//! 6. mode: the Sidecar's `outboundTrafficPolicy`, else the mesh config's, else the default.
//!
//! Always in every scope: the Kubernetes API (`default/kubernetes`) and the cluster DNS Service
//! (`kube-system/kube-dns`), and the pod's own resolvers (dnsPolicy `ClusterFirst`: the node-local
//! DNS cache addresses; `Default`: the node's resolvers; `None`: `dnsConfig.nameservers`, which
//! are added for every policy), port 53 UDP+TCP. Non-DNS UDP is judged unless
//! [`UdpPolicy::Allow`] (Istio itself does not capture UDP).
//!
//! ServiceEntries with a `workloadSelector` select mesh pods as endpoints: enforcer does not
//! watch pods of other nodes, so only such an entry's addresses are allowed (a warning says so).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use super::adapter::{ClusterDr, ClusterSe, MeshSettings, Sidecar};
use super::cgroup::KubeletRoot;
use super::model::{NamespaceInfo, PodInfo};
use crate::config::{Host, HostPattern, Location, Mode, Port, Protocol, Registry, Resolution, ServiceEntry, SourceRef};
use crate::workload::WorkloadPolicy;

/// The namespaces whose pods are never governed unless `allow_system_namespaces`.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The policy every cgroup of a governed pod goes to while it cannot be placed: denies all.
pub const UNRESOLVED_POLICY: &str = "kube:unresolved";

/// Which pods are governed.
#[derive(Clone, Debug)]
pub struct Governance {
    pub label_key: String,
    /// Opt-in value (namespace or pod label).
    pub label_value: String,
    /// Pod label value that opts a pod out of an opted-in namespace.
    pub opt_out_value: String,
    /// Govern every pod (the exclusions below still apply).
    pub govern_all: bool,
    pub allow_system_namespaces: bool,
    pub govern_host_network: bool,
    pub govern_sidecar_pods: bool,
    /// Never governed (the daemon's own namespace).
    pub excluded_namespaces: BTreeSet<String>,
}

impl Default for Governance {
    fn default() -> Self {
        Governance {
            label_key: "istio.io/dataplane-mode".into(),
            label_value: "enforcer".into(),
            opt_out_value: "none".into(),
            govern_all: false,
            allow_system_namespaces: false,
            govern_host_network: false,
            govern_sidecar_pods: false,
            excluded_namespaces: BTreeSet::new(),
        }
    }
}

impl Governance {
    /// `Ok(())` if `pod` is governed, else why not.
    pub fn decide(&self, pod: &PodInfo, ns: Option<&NamespaceInfo>) -> Result<(), &'static str> {
        if pod.phase == "Succeeded" || pod.phase == "Failed" {
            return Err("finished pod");
        }
        if self.excluded_namespaces.contains(&pod.namespace) {
            return Err("namespace excluded");
        }
        if !self.allow_system_namespaces && SYSTEM_NAMESPACES.contains(&pod.namespace.as_str()) {
            return Err("system namespace");
        }
        if pod.host_network && !self.govern_host_network {
            return Err("hostNetwork pod");
        }
        if !self.govern_sidecar_pods
            && (pod.containers.iter().any(|c| c == "istio-proxy")
                || pod.annotations.contains_key("sidecar.istio.io/status"))
        {
            return Err("runs an Istio sidecar");
        }
        match pod.labels.get(&self.label_key) {
            Some(v) if *v == self.opt_out_value => return Err("opted out (pod label)"),
            Some(v) if *v == self.label_value => return Ok(()),
            _ => {}
        }
        if ns.and_then(|n| n.labels.get(&self.label_key)) == Some(&self.label_value) || self.govern_all {
            Ok(())
        } else {
            Err("not opted in")
        }
    }
}

/// Non-DNS UDP in Kubernetes mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpPolicy {
    /// Judged like TCP: only registry UDP ports (and DNS to the pod's resolvers).
    Judge,
    /// Every UDP destination allowed (Istio's sidecars do not capture UDP).
    Allow,
}

/// Settings that do not come from the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mode when neither the pod's Sidecar nor the mesh config sets one (Istio: ALLOW_ANY).
    pub default_mode: Mode,
    pub governance: Governance,
    pub kubelet_root: KubeletRoot,
    /// `namespace/name` of Services every governed pod may reach.
    pub always_services: Vec<String>,
    /// Resolvers of `ClusterFirst` pods besides the cluster DNS Service (NodeLocal DNSCache).
    pub node_local_dns: Vec<IpAddr>,
    /// The node's resolvers (dnsPolicy `Default`).
    pub node_resolvers: Vec<IpAddr>,
    pub udp: UdpPolicy,
}

impl Options {
    pub fn new(kubelet_root: KubeletRoot) -> Options {
        Options {
            default_mode: Mode::AllowAny,
            governance: Governance::default(),
            kubelet_root,
            always_services: vec!["default/kubernetes".into(), "kube-system/kube-dns".into()],
            node_local_dns: vec!["169.254.20.10".parse().expect("address")],
            node_resolvers: vec![],
            udp: UdpPolicy::Judge,
        }
    }
}

/// Everything the computation reads.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// ServiceEntries and Kubernetes Services (see [`super::services`]).
    pub services: Vec<ClusterSe>,
    pub destination_rules: Vec<ClusterDr>,
    pub sidecars: Vec<Sidecar>,
    pub mesh: MeshSettings,
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Pods on this node.
    pub pods: Vec<PodInfo>,
}

/// A governed pod and where it went.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub pod: String,
    pub uid: String,
    pub scope: String,
}

/// The result of [`compute`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Computed {
    /// One per scope with at least one pod, sorted by name, then [`UNRESOLVED_POLICY`] if it has
    /// cgroups.
    pub policies: Vec<WorkloadPolicy>,
    pub placements: Vec<Placement>,
    /// `ns/name` of pods deliberately left alone, with the reason.
    pub excluded: Vec<(String, &'static str)>,
    /// UIDs of every pod on the node (governed or not), for resolving cgroup directories.
    pub known_uids: BTreeSet<String>,
    /// Problems with objects and semantics approximated, each naming the object.
    pub diagnostics: Vec<String>,
}

/// Is an object with `export_to` (empty: `default`) in `obj_ns` visible in `ns`?
pub fn exported_to(export_to: &[String], default: &[String], obj_ns: &str, ns: &str) -> bool {
    let list = if export_to.is_empty() { default } else { export_to };
    list.iter().any(|e| e == "*" || (e == "." && obj_ns == ns) || e == ns)
}

/// Istio's `host.Name.SubsetOf`: is every name `service` matches also matched by `import` (a
/// Sidecar egress host as written)? See [`crate::config::host`].
pub fn subset_of(service: &Host, import: &str) -> bool {
    service.is_subset_of(&HostPattern::parse(import))
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Sidecar of a pod (index into `sidecars`, sorted oldest first).
fn sidecar_for<'a>(sidecars: &'a [Sidecar], pod: &PodInfo, root: &str) -> Option<&'a Sidecar> {
    sidecars
        .iter()
        .find(|s| s.namespace == pod.namespace && s.selector.as_ref().is_some_and(|sel| selects(sel, &pod.labels)))
        .or_else(|| sidecars.iter().find(|s| s.namespace == pod.namespace && s.selector.is_none()))
        .or_else(|| sidecars.iter().find(|s| s.namespace == root && s.selector.is_none()))
}

/// The ports of `se` a listener with `port` keeps (`None`: all).
fn listener_ports(se: &ServiceEntry, port: Option<u16>) -> Option<BTreeSet<u16>> {
    let p = port?;
    Some(se.ports.iter().filter(|x| x.number == p).map(|x| x.number).collect())
}

/// What a Sidecar (or none: `*/*`) imports of the visible services, for workloads in `ns`:
/// (service index, host) -> ports kept (`None`: every port).
fn imports(
    sidecar: Option<&Sidecar>,
    visible: &[usize],
    services: &[ClusterSe],
    ns: &str,
) -> BTreeMap<(usize, Host), Option<BTreeSet<u16>>> {
    let mut out: BTreeMap<(usize, Host), Option<BTreeSet<u16>>> = BTreeMap::new();
    let mut add = |key: (usize, Host), ports: Option<BTreeSet<u16>>| match (out.get_mut(&key), ports) {
        (None, p) => {
            out.insert(key, p);
        }
        (Some(cur), None) => *cur = None,
        (Some(Some(cur)), Some(p)) => cur.extend(p),
        (Some(None), Some(_)) => {}
    };
    let Some(listeners) = sidecar.and_then(|s| s.egress.as_ref()) else {
        for &i in visible {
            for h in &services[i].entry.hosts {
                add((i, h.clone()), None);
            }
        }
        return out;
    };
    for l in listeners {
        let mut by_ns: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (n, h) in &l.hosts {
            let n = if n == "." { ns.to_string() } else { n.clone() };
            by_ns.entry(n).or_default().push(h);
        }
        for &i in visible {
            let se = &services[i];
            for h in &se.entry.hosts {
                let matched = by_ns.get(&se.namespace).is_some_and(|hs| hs.iter().any(|p| subset_of(h, p)))
                    || by_ns.get("*").is_some_and(|hs| hs.iter().any(|p| subset_of(h, p)));
                if !matched {
                    continue;
                }
                match listener_ports(&se.entry, l.port) {
                    Some(p) if p.is_empty() => {}
                    p => add((i, h.clone()), p),
                }
            }
        }
    }
    out
}

/// Istio's `MostSpecificHostMatch` over `drs`: a rule whose host equals `host`, else the most
/// specific wildcard rule covering it; the oldest on ties (`drs` are sorted oldest first).
fn most_specific<'a>(host: &Host, drs: impl Iterator<Item = &'a ClusterDr>) -> Vec<&'a ClusterDr> {
    let mut best: Option<(usize, Vec<&ClusterDr>)> = None;
    for d in drs {
        let h = d.rule.host.to_ascii_lowercase();
        let rank = if h == host.to_string() {
            usize::MAX
        } else if subset_of(host, &h) {
            h.len()
        } else {
            continue;
        };
        match &mut best {
            Some((r, v)) if *r == rank => v.push(d),
            Some((r, _)) if *r > rank => {}
            _ => best = Some((rank, vec![d])),
        }
    }
    best.map(|(_, v)| v).unwrap_or_default()
}

/// The DestinationRule of `host` (a service of `svc_ns`) for a pod in `ns` with `labels`.
fn destination_rule<'a>(
    drs: &'a [ClusterDr],
    host: &Host,
    svc_ns: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
    mesh: &MeshSettings,
) -> Option<&'a ClusterDr> {
    // 1. The pod's own namespace: every rule there (a root-namespace pod: the root's).
    let local = most_specific(host, drs.iter().filter(|d| d.namespace == ns));
    if !local.is_empty() {
        return local
            .iter()
            .find(|d| d.selector.as_ref().is_some_and(|s| selects(s, labels)))
            .or_else(|| local.iter().find(|d| d.selector.is_none()))
            .copied();
    }
    // 2./3. Rules exported from the service's namespace, then from the root namespace; rules
    // with a workloadSelector never apply outside their namespace.
    for owner in [svc_ns, mesh.root_namespace.as_str()] {
        let found = most_specific(
            host,
            drs.iter().filter(|d| {
                d.namespace == owner
                    && exported_to(&d.export_to, &mesh.default_destination_rule_export_to, &d.namespace, ns)
            }),
        );
        if !found.is_empty() {
            return found.into_iter().find(|d| d.selector.is_none());
        }
    }
    None
}

fn synthetic(name: &str, addresses: Vec<ipnet::IpNet>, ports: Vec<Port>) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        namespace: "enforcer".into(),
        hosts: vec![Host::Exact(format!("{name}.enforcer.local"))],
        addresses,
        ports,
        endpoints: vec![],
        resolution: Resolution::Static,
        location: Location::MeshExternal,
        export_to: Vec::new(),
        workload_selector: None,
        source: SourceRef { file: PathBuf::from(format!("kubernetes:enforcer/{name}")), document: 1, line: 0 },
    }
}

/// The resolvers a pod uses (its resolv.conf as the kubelet writes it).
fn resolvers(pod: &PodInfo, opts: &Options) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = pod.dns_nameservers.iter().copied().collect();
    match pod.dns_policy.as_str() {
        "None" => {}
        "Default" => out.extend(opts.node_resolvers.iter().copied()),
        // ClusterFirst (a hostNetwork pod with ClusterFirst gets the node's resolvers).
        "ClusterFirst" if pod.host_network => out.extend(opts.node_resolvers.iter().copied()),
        _ => out.extend(opts.node_local_dns.iter().copied()),
    }
    out
}

/// What makes two pods of one namespace need different policies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ScopeKey {
    namespace: String,
    /// `ns/name` of the Sidecar, "" for none.
    sidecar: String,
    resolvers: BTreeSet<IpAddr>,
    /// DestinationRules with a workloadSelector matching the pod.
    selected_drs: BTreeSet<String>,
}

impl ScopeKey {
    /// The policy name: stable while the scope is (its policy id follows the name).
    fn name(&self, default_resolvers: &BTreeSet<IpAddr>, root: &str) -> String {
        let mut n = format!("kube:{}", self.namespace);
        let ns_wide = self.sidecar.is_empty()
            || self.sidecar == format!("{}/{}", self.namespace, "default")
            || self.sidecar.starts_with(&format!("{root}/"));
        if !ns_wide {
            n.push_str(&format!(" sidecar={}", self.sidecar));
        }
        if self.resolvers != *default_resolvers {
            let r: Vec<String> = self.resolvers.iter().map(|a| a.to_string()).collect();
            n.push_str(&format!(" dns={}", r.join(",")));
        }
        if !self.selected_drs.is_empty() {
            n.push_str(&format!(" dr={}", self.selected_drs.iter().cloned().collect::<Vec<_>>().join(",")));
        }
        n
    }
}

/// Scope registries of an earlier [`compute_cached`], valid while the configuration (everything
/// but the pods) is unchanged: pod churn then only regroups cgroups, nothing is rebuilt.
#[derive(Debug, Default)]
pub struct ScopeCache {
    generation: Option<u64>,
    scopes: BTreeMap<ScopeKey, (Registry, Mode)>,
    diagnostics: Vec<String>,
}

/// Compute the policies. `unresolved` are cgroup directories of pods that must be denied until
/// they can be placed (the controller's enrolment watcher decides).
pub fn compute(state: &ClusterState, opts: &Options, unresolved: &[PathBuf]) -> Computed {
    compute_cached(state, opts, unresolved, &mut ScopeCache::default(), 0)
}

/// [`compute`], reusing the registries of `cache` when `generation` (the caller's count of
/// configuration changes: Istio objects, Services, EndpointSlices, Namespaces, mesh config)
/// is the one they were built for.
pub fn compute_cached(
    state: &ClusterState,
    opts: &Options,
    unresolved: &[PathBuf],
    cache: &mut ScopeCache,
    generation: u64,
) -> Computed {
    if cache.generation != Some(generation) {
        *cache = ScopeCache { generation: Some(generation), ..Default::default() };
    }
    let mut out = Computed::default();
    let mesh = &state.mesh;
    let mut drs: Vec<ClusterDr> = state.destination_rules.clone();
    drs.sort_by(|a, b| (&a.created, &a.namespace, &a.rule.name).cmp(&(&b.created, &b.namespace, &b.rule.name)));
    let mut sidecars: Vec<Sidecar> = state.sidecars.clone();
    sidecars.sort_by(|a, b| (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name)));
    let default_resolvers: BTreeSet<IpAddr> = opts.node_local_dns.iter().copied().collect();

    // Pods -> scopes.
    let mut scopes: BTreeMap<ScopeKey, Vec<&PodInfo>> = BTreeMap::new();
    let mut pods: Vec<&PodInfo> = state.pods.iter().collect();
    pods.sort_by_key(|p| p.key());
    for pod in pods {
        out.known_uids.insert(pod.uid.clone());
        if let Err(reason) = opts.governance.decide(pod, state.namespaces.get(&pod.namespace)) {
            out.excluded.push((pod.key(), reason));
            continue;
        }
        let sidecar = sidecar_for(&sidecars, pod, &mesh.root_namespace);
        let selected_drs = drs
            .iter()
            .filter(|d| d.namespace == pod.namespace && d.selector.as_ref().is_some_and(|s| selects(s, &pod.labels)))
            .map(|d| d.rule.name.clone())
            .collect();
        let key = ScopeKey {
            namespace: pod.namespace.clone(),
            sidecar: sidecar.map(|s| format!("{}/{}", s.namespace, s.name)).unwrap_or_default(),
            resolvers: resolvers(pod, opts),
            selected_drs,
        };
        scopes.entry(key).or_default().push(pod);
    }

    if scopes.keys().any(|k| !cache.scopes.contains_key(k)) {
        let built =
            build_scopes(state, opts, &drs, &sidecars, scopes.iter().filter(|(k, _)| !cache.scopes.contains_key(k)));
        cache.scopes.extend(built.0);
        cache.diagnostics = built.1;
    }
    out.diagnostics = cache.diagnostics.clone();
    for (key, pods) in &scopes {
        let (registry, mode) = cache.scopes[key].clone();
        let name = key.name(&default_resolvers, &mesh.root_namespace);
        let mut policy = WorkloadPolicy { name, registry, mode, cgroups: vec![], workloads: BTreeMap::new() };
        for p in pods {
            for dir in opts.kubelet_root.pod_dirs(&p.uid) {
                policy.workloads.insert(dir.clone(), p.workload.clone());
                policy.cgroups.push(dir);
            }
            out.placements.push(Placement { pod: p.key(), uid: p.uid.clone(), scope: policy.name.clone() });
        }
        out.policies.push(policy);
    }
    out.policies.sort_by(|a, b| a.name.cmp(&b.name));
    if !unresolved.is_empty() {
        out.policies.push(WorkloadPolicy {
            name: UNRESOLVED_POLICY.into(),
            registry: Registry::default(),
            mode: Mode::RegistryOnly,
            cgroups: unresolved.to_vec(),
            workloads: BTreeMap::new(),
        });
    }
    out.placements.sort_by(|a, b| a.pod.cmp(&b.pod));
    out.diagnostics.sort();
    out.diagnostics.dedup();
    out
}

/// The registry and mode of each scope in `wanted` (keyed like the pods' scopes), and the
/// diagnostics about the configuration.
#[allow(clippy::type_complexity)]
fn build_scopes<'a>(
    state: &ClusterState,
    opts: &Options,
    drs: &[ClusterDr],
    sidecars: &[Sidecar],
    wanted: impl Iterator<Item = (&'a ScopeKey, &'a Vec<&'a PodInfo>)>,
) -> (BTreeMap<ScopeKey, (Registry, Mode)>, Vec<String>) {
    let mut out: BTreeMap<ScopeKey, (Registry, Mode)> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    let mesh = &state.mesh;
    let mut services: Vec<ClusterSe> = state.services.clone();
    // Oldest first everywhere Istio says "the oldest wins"; Kubernetes Services before entries.
    services.sort_by(|a, b| {
        (!a.from_kubernetes, &a.created, &a.namespace, &a.entry.name).cmp(&(
            !b.from_kubernetes,
            &b.created,
            &b.namespace,
            &b.entry.name,
        ))
    });
    for se in services.iter().filter(|s| s.workload_selector.is_some()) {
        diagnostics.push(format!(
            "warning: ServiceEntry {}/{}: workloadSelector endpoints (the selected pods) are not resolved by enforcer (pods of other nodes are not watched); only its addresses are allowed",
            se.namespace, se.entry.name
        ));
    }
    let always: Vec<usize> = services
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.from_kubernetes && opts.always_services.contains(&format!("{}/{}", s.namespace, s.entry.name))
        })
        .map(|(i, _)| i)
        .collect();
    for (key, pods) in wanted {
        let ns = key.namespace.as_str();
        let first = pods[0];
        let sidecar = sidecar_for(sidecars, first, &mesh.root_namespace);
        let visible: Vec<usize> = (0..services.len())
            .filter(|&i| {
                exported_to(&services[i].export_to, &mesh.default_service_export_to, &services[i].namespace, ns)
            })
            .collect();
        let imported = imports(sidecar, &visible, &services, ns);
        // One namespace per host.
        let mut owner: BTreeMap<&Host, (usize, &str)> = BTreeMap::new();
        for (i, h) in imported.keys() {
            let cand = services[*i].namespace.as_str();
            match owner.get(h) {
                None => {
                    owner.insert(h, (*i, cand));
                }
                Some((_, cur)) if *cur != ns && cand == ns => {
                    owner.insert(h, (*i, cand));
                }
                _ => {}
            }
        }
        let mut registry = Registry::default();
        let mut per_se: BTreeMap<usize, (Vec<Host>, Option<BTreeSet<u16>>)> = BTreeMap::new();
        for ((i, h), ports) in &imported {
            if owner.get(h).map(|(_, n)| *n) != Some(services[*i].namespace.as_str()) {
                continue;
            }
            let e = per_se.entry(*i).or_insert((Vec::new(), Some(BTreeSet::new())));
            e.0.push(h.clone());
            e.1 = match (e.1.take(), ports) {
                (_, None) | (None, _) => None,
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
            };
        }
        for &i in &always {
            per_se.entry(i).or_insert((services[i].entry.hosts.clone(), None));
        }
        for (i, (hosts, ports)) in &per_se {
            let src = &services[*i];
            let mut entry = src.entry.clone();
            entry.hosts = hosts.clone();
            if let Some(keep) = ports {
                entry.ports.retain(|p| keep.contains(&p.number));
            }
            for h in hosts {
                if let Some(dr) = destination_rule(drs, h, &src.namespace, ns, &first.labels, mesh) {
                    let mut rule = dr.rule.clone();
                    // Named after the host it was chosen for: the lookup by host finds exactly it.
                    rule.host = h.to_string();
                    if !registry.destination_rules.iter().any(|d| d.host == rule.host) {
                        registry.destination_rules.push(rule);
                    }
                }
            }
            registry.services.push(entry);
        }
        if !key.resolvers.is_empty() {
            registry.services.push(synthetic(
                "dns-resolvers",
                key.resolvers.iter().map(|a| ipnet::IpNet::from(*a)).collect(),
                vec![
                    Port { number: 53, protocol: Protocol::Udp, name: "dns-udp".into(), target_port: None },
                    Port { number: 53, protocol: Protocol::Tcp, name: "dns-tcp".into(), target_port: None },
                ],
            ));
        }
        if opts.udp == UdpPolicy::Allow {
            registry.services.push(synthetic(
                "udp-any",
                vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")],
                vec![Port { number: 0, protocol: Protocol::Udp, name: "udp".into(), target_port: None }],
            ));
        }
        let mode = sidecar.and_then(|s| s.mode).or(mesh.mode).unwrap_or(opts.default_mode);
        out.insert(key.clone(), (registry, mode));
    }
    (out, diagnostics)
}

#[cfg(test)]
mod tests;
