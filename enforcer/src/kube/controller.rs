//! The node controller: watches the cluster, computes the per-scope policies and hands them to
//! the agent; enrols pod cgroups as they appear.
//!
//! Watched (each a kube-runtime `watcher` feeding a reflector store; list + watch, resumed from
//! the last resourceVersion after a disconnect, a full re-list after `410 Gone`, retries with the
//! default exponential backoff 0.8 s .. 30 s):
//!
//! | what | API |
//! | --- | --- |
//! | ServiceEntry, DestinationRule, Sidecar (WorkloadEntry if served) | `networking.istio.io/v1` (Istio >= 1.22), else `v1beta1`, chosen per kind by discovery, all namespaces |
//! | the mesh config | ConfigMap `istio` (or `istio-<revision>`) in `istio-system`, by field selector |
//! | pods on this node | `/api/v1/pods?fieldSelector=spec.nodeName=<node>` |
//! | Namespaces, Services, EndpointSlices | all (governance labels; in-cluster destinations) |
//! | pods of every node | `/api/v1/pods`, only while a ServiceEntry has a `workloadSelector` (its endpoints are the selected pods); started when the first such entry appears |
//!
//! Lifecycle ([`Controller::start`], [`Controller::initial_sync`], [`Controller::run`]): the daemon
//! starts the watches, waits for every initial list (while the API server is unreachable this
//! waits — a restarted daemon leaves the previous daemon's pinned policies in place meanwhile),
//! starts the agent with the first computed set in one apply, then runs the loop: pod changes are
//! applied at once (20 ms), configuration changes debounced (200 ms, at most 1 s); a pod cgroup
//! directory that appears is mapped to its scope's policy by [`PolicySink::sync_cgroups`] without
//! recompiling (its path was in the policy before the kubelet created it); a pod directory whose
//! UID no pod on this node has is denied (the [`UNRESOLVED_POLICY`]) until the pod is known.
//! An apply the kernel maps cannot hold fails closed: the scopes that changed or are new are
//! denied (their cgroups go to the unresolved policy) and the error is logged; the full set is
//! retried on the next change and every 30 s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, ResourceExt as _};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::time::Instant;

use super::adapter;
use super::cgroup::KubeletRoot;
use super::enrol::{self, CgroupEvent};
use super::model::{KubeService, MeshPod, NamespaceInfo, PodInfo, SliceInfo};
use super::policy::{self, ClusterState, Computed, Options, UNRESOLVED_POLICY};
use super::services;
use crate::workload::{PolicySink, WorkloadPolicy};

/// The Istio API group and the versions tried, in order.
pub const ISTIO_GROUP: &str = "networking.istio.io";
pub const ISTIO_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// (kind, plural) of the Istio resources watched.
const ISTIO_KINDS: [(&str, &str); 3] =
    [("ServiceEntry", "serviceentries"), ("DestinationRule", "destinationrules"), ("Sidecar", "sidecars")];

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Only on a broken client (the watches themselves retry forever).
    #[error("the Kubernetes watch streams ended unexpectedly")]
    WatchesEnded,
}

/// What to do with a pod cgroup directory whose UID no pod on this node has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPods {
    /// Deny everything from it until the pod is known (fail closed).
    Deny,
    /// Leave it to the node default.
    Allow,
}

/// Settings of the controller; [`ControllerConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This node's name (`spec.nodeName` of its pods; the downward API's `spec.nodeName`).
    pub node_name: String,
    pub options: Options,
    /// The namespace of the mesh ConfigMap (`istio-system`).
    pub istio_namespace: String,
    /// The mesh ConfigMap's name (`istio`; `istio-<revision>` for revisioned installs).
    pub mesh_config_map: String,
    /// The cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    pub unknown_pods: UnknownPods,
    pub debounce: Duration,
    pub debounce_max: Duration,
    /// Pod changes are applied after this (a burst of pod events becomes one apply).
    pub pod_debounce: Duration,
    /// How often discovery is retried while the Istio API is not served.
    pub discovery_retry: Duration,
    /// How often the kubelet tree is rescanned (inotify events can be missed on overflow).
    pub rescan: Duration,
}

impl ControllerConfig {
    pub fn new(node_name: impl Into<String>, kubelet_root: KubeletRoot) -> ControllerConfig {
        ControllerConfig {
            node_name: node_name.into(),
            options: Options::new(kubelet_root),
            istio_namespace: "istio-system".into(),
            mesh_config_map: "istio".into(),
            cluster_domain: "cluster.local".into(),
            unknown_pods: UnknownPods::Deny,
            debounce: Duration::from_millis(200),
            debounce_max: Duration::from_secs(1),
            pod_debounce: Duration::from_millis(20),
            discovery_retry: Duration::from_secs(10),
            rescan: Duration::from_secs(5),
        }
    }
}

/// Where a watch event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    ServiceEntry = 0,
    DestinationRule = 1,
    Sidecar = 2,
    MeshConfig = 3,
    Pod = 4,
    Namespace = 5,
    Service = 6,
    EndpointSlice = 7,
    /// Pods of every node (ServiceEntry `workloadSelector` endpoints), started on demand.
    MeshPod = 8,
    WorkloadEntry = 9,
}
const SOURCES: usize = 10;

/// `Ok(true)`: an initial list completed; `Ok(false)`: some other change.
type Signal = (Source, Result<bool, String>);

fn signals<K, S>(source: Source, stream: S) -> BoxStream<'static, Signal>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    stream
        .map(move |ev| match ev {
            Ok(watcher::Event::InitDone) => (source, Ok(true)),
            Ok(_) => (source, Ok(false)),
            Err(e) => (source, Err(e.to_string())),
        })
        .boxed()
}

/// Find the served version of each Istio kind: `v1`, else `v1beta1`. `Err` names what is missing.
/// WorkloadEntry is optional (the endpoints ServiceEntry `workloadSelector`s select besides pods):
/// `None` when not served in the versions listed.
async fn discover(client: &kube::Client) -> Result<(Vec<ApiResource>, Option<ApiResource>), String> {
    let mut found: Vec<Option<ApiResource>> = vec![None; ISTIO_KINDS.len()];
    let mut workload_entry: Option<ApiResource> = None;
    let mut errors = Vec::new();
    for version in ISTIO_VERSIONS {
        let gv = format!("{ISTIO_GROUP}/{version}");
        match client.list_api_group_resources(&gv).await {
            Ok(list) => {
                for (i, (kind, plural)) in ISTIO_KINDS.iter().enumerate() {
                    if found[i].is_none() && list.resources.iter().any(|r| r.name == *plural) {
                        found[i] = Some(ApiResource {
                            group: ISTIO_GROUP.into(),
                            version: version.into(),
                            api_version: gv.clone(),
                            kind: (*kind).into(),
                            plural: (*plural).into(),
                        });
                    }
                }
                if workload_entry.is_none() && list.resources.iter().any(|r| r.name == "workloadentries") {
                    workload_entry = Some(ApiResource {
                        group: ISTIO_GROUP.into(),
                        version: version.into(),
                        api_version: gv.clone(),
                        kind: "WorkloadEntry".into(),
                        plural: "workloadentries".into(),
                    });
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => errors.push(format!("{gv} is not served")),
            Err(e) => errors.push(format!("{gv}: {e}")),
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let missing: Vec<&str> =
        ISTIO_KINDS.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|((k, _), _)| *k).collect();
    if missing.is_empty() {
        Ok((found.into_iter().flatten().collect(), workload_entry))
    } else {
        Err(format!(
            "Istio API not found for {} ({}); expected the CRDs serviceentries, destinationrules and sidecars.{ISTIO_GROUP} serving v1 (Istio >= 1.22) or v1beta1: install Istio's CRDs (istioctl install, or the istio/base Helm chart)",
            missing.join(", "),
            errors.join("; ")
        ))
    }
}

/// The watches, their stores and the loop's state.
pub struct Controller {
    cfg: ControllerConfig,
    events: futures::stream::SelectAll<BoxStream<'static, Signal>>,
    istio: Vec<(ApiResource, Store<DynamicObject>)>,
    mesh: Store<ConfigMap>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Every pod of the cluster, once a ServiceEntry with a `workloadSelector` needs them.
    mesh_pods: Option<Store<Pod>>,
    /// The endpoints each workloadSelector selected at the last computation.
    selection: Vec<(String, String, Vec<crate::config::Endpoint>)>,
    client: kube::Client,
    synced: [bool; SOURCES],
    /// Unknown pod directories (denied), with when they were seen.
    unresolved: BTreeMap<PathBuf, String>,
    last: Computed,
    reported: BTreeSet<String>,
    /// Counts configuration changes (every event but pods'): the scope cache's key.
    config_gen: u64,
    cache: policy::ScopeCache,
}

impl Controller {
    /// Discover the Istio API (retrying while it is not served) and start every watch.
    pub async fn start(client: kube::Client, cfg: ControllerConfig) -> Controller {
        let (resources, workload_entry) = loop {
            match discover(&client).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!("{e}; retrying in {:?}", cfg.discovery_retry);
                    tokio::time::sleep(cfg.discovery_retry).await;
                }
            }
        };
        let mut streams: Vec<BoxStream<'static, Signal>> = Vec::new();
        let mut istio = Vec::new();
        for (ar, source) in resources.iter().zip([Source::ServiceEntry, Source::DestinationRule, Source::Sidecar]) {
            tracing::info!(kind = %ar.kind, api_version = %ar.api_version, "watching Istio resource");
            let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
            istio.push((ar.clone(), writer.as_reader()));
            let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
            let stream = watcher(api, watcher::Config::default())
                .modify(|o| o.managed_fields_mut().clear())
                .default_backoff()
                .reflect(writer);
            streams.push(signals(source, stream));
        }
        let mut synced = [false; SOURCES];
        match workload_entry {
            Some(ar) => {
                tracing::info!(kind = %ar.kind, api_version = %ar.api_version, "watching Istio resource");
                let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
                istio.push((ar.clone(), writer.as_reader()));
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                let stream = watcher(api, watcher::Config::default())
                    .modify(|o| o.managed_fields_mut().clear())
                    .default_backoff()
                    .reflect(writer);
                streams.push(signals(Source::WorkloadEntry, stream));
            }
            None => {
                tracing::info!("WorkloadEntry is not served: ServiceEntry workloadSelectors select pods only");
                synced[Source::WorkloadEntry as usize] = true;
            }
        }
        let (mesh, w) = reflector::store::<ConfigMap>();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.istio_namespace);
        let sel = format!("metadata.name={}", cfg.mesh_config_map);
        streams.push(signals(
            Source::MeshConfig,
            watcher(api, watcher::Config::default().fields(&sel)).default_backoff().reflect(w),
        ));
        let (pods, w) = reflector::store::<Pod>();
        let api: Api<Pod> = Api::all(client.clone());
        let sel = format!("spec.nodeName={}", cfg.node_name);
        streams.push(signals(
            Source::Pod,
            watcher(api, watcher::Config::default().fields(&sel))
                .modify(|p| {
                    p.managed_fields_mut().clear();
                    if let Some(spec) = p.spec.as_mut() {
                        spec.containers.iter_mut().for_each(|c| c.env = None);
                    }
                })
                .default_backoff()
                .reflect(w),
        ));
        let (namespaces, w) = reflector::store::<Namespace>();
        streams.push(signals(
            Source::Namespace,
            watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
                .modify(|o| o.managed_fields_mut().clear())
                .default_backoff()
                .reflect(w),
        ));
        let (services, w) = reflector::store::<Service>();
        streams.push(signals(
            Source::Service,
            watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
                .modify(|o| o.managed_fields_mut().clear())
                .default_backoff()
                .reflect(w),
        ));
        let (slices, w) = reflector::store::<EndpointSlice>();
        streams.push(signals(
            Source::EndpointSlice,
            watcher(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default())
                .modify(|o| o.managed_fields_mut().clear())
                .default_backoff()
                .reflect(w),
        ));
        // Not watched until needed: nothing to wait for.
        synced[Source::MeshPod as usize] = true;
        Controller {
            cfg,
            events: futures::stream::select_all(streams),
            istio,
            mesh,
            pods,
            namespaces,
            services,
            slices,
            mesh_pods: None,
            selection: Vec::new(),
            client,
            synced,
            unresolved: BTreeMap::new(),
            last: Computed::default(),
            reported: BTreeSet::new(),
            config_gen: 0,
            cache: policy::ScopeCache::default(),
        }
    }

    /// Wait until every watch completed its initial list, then compute the first set (for
    /// [`crate::agent::Agent`]'s start). While the API server cannot be reached this waits.
    pub async fn initial_sync(&mut self) -> Result<Computed, KubeError> {
        let started = Instant::now();
        loop {
            self.wait_synced(started).await?;
            // ServiceEntries with a workloadSelector: their endpoints (the pods of every node)
            // are part of the first set too.
            if self.mesh_pods.is_none() && self.state().0.services.iter().any(|s| s.workload_selector.is_some()) {
                self.watch_mesh_pods();
                continue;
            }
            break;
        }
        // Pod directories that exist but belong to no pod here.
        let c = self.compute_now();
        Ok(c)
    }

    async fn wait_synced(&mut self, started: Instant) -> Result<(), KubeError> {
        while !self.synced.iter().all(|s| *s) {
            let next = tokio::time::timeout(Duration::from_secs(10), self.events.next()).await;
            match next {
                Ok(None) => return Err(KubeError::WatchesEnded),
                Ok(Some((source, Ok(true)))) => {
                    tracing::debug!(?source, "initial list complete");
                    self.synced[source as usize] = true;
                    self.config_gen += 1;
                }
                Ok(Some((_, Ok(false)))) => self.config_gen += 1,
                Ok(Some((source, Err(e)))) => tracing::warn!(?source, "watch failed: {e}; retrying with backoff"),
                Err(_) => {
                    let missing: Vec<String> =
                        (0..SOURCES).filter(|i| !self.synced[*i]).map(|i| format!("{:?}", source_of(i))).collect();
                    tracing::warn!(
                        waited = ?started.elapsed(),
                        missing = %missing.join(","),
                        "the Kubernetes watches have not synced yet; the pinned policies stay enforced meanwhile"
                    );
                }
            }
        }
        Ok(())
    }

    /// Start watching every pod of the cluster (once): the endpoints of ServiceEntries with a
    /// `workloadSelector`. Only labels, namespace and pod IPs are kept.
    fn watch_mesh_pods(&mut self) {
        if self.mesh_pods.is_some() {
            return;
        }
        tracing::info!("a ServiceEntry has a workloadSelector: watching the pods of every node for its endpoints");
        let (store, w) = reflector::store::<Pod>();
        let stream = watcher(Api::<Pod>::all(self.client.clone()), watcher::Config::default())
            .modify(|p| {
                p.managed_fields_mut().clear();
                p.metadata.annotations = None;
                p.metadata.owner_references = None;
                p.spec = None;
                if let Some(st) = p.status.as_mut() {
                    *st = k8s_openapi::api::core::v1::PodStatus {
                        phase: st.phase.take(),
                        pod_ip: st.pod_ip.take(),
                        pod_ips: st.pod_ips.take(),
                        ..Default::default()
                    };
                }
            })
            .default_backoff()
            .reflect(w);
        self.events.push(signals(Source::MeshPod, stream));
        self.mesh_pods = Some(store);
        self.synced[Source::MeshPod as usize] = false;
    }

    fn state(&self) -> (ClusterState, Vec<String>) {
        let mut d = Vec::new();
        let mut st = ClusterState::default();
        let mut endpoints: Vec<MeshPod> = Vec::new();
        for (ar, store) in &self.istio {
            for o in store.state() {
                match ar.kind.as_str() {
                    "WorkloadEntry" => endpoints.extend(adapter::workload_entry(&o, &mut d)),
                    "ServiceEntry" => st.services.extend(adapter::service_entries(&ar.api_version, &o, &mut d)),
                    "DestinationRule" => {
                        st.destination_rules.extend(adapter::destination_rules(&ar.api_version, &o, &mut d))
                    }
                    _ => st.sidecars.extend(adapter::sidecar(&o, &mut d)),
                }
            }
        }
        if let Some(cm) = self.mesh.state().first() {
            st.mesh = adapter::mesh_settings(cm, &mut d);
        }
        st.pods = self.pods.state().iter().filter_map(|p| PodInfo::from_pod(p)).collect();
        st.namespaces = self
            .namespaces
            .state()
            .iter()
            .filter_map(|n| NamespaceInfo::from_namespace(n))
            .map(|n| (n.name.clone(), n))
            .collect();
        let svcs: Vec<KubeService> =
            self.services.state().iter().filter_map(|s| KubeService::from_service(s)).collect();
        let slices: Vec<SliceInfo> = self.slices.state().iter().filter_map(|s| SliceInfo::from_slice(s)).collect();
        if let Some(store) = &self.mesh_pods {
            endpoints.extend(store.state().iter().filter_map(|p| MeshPod::from_pod(p)));
        }
        services::select_endpoints(&mut st.services, &endpoints);
        st.services.extend(services::service_entries(&svcs, &slices, &self.cfg.cluster_domain));
        (st, d)
    }

    /// Recompute from the stores (and the unresolved directories still unknown).
    fn compute_now(&mut self) -> Computed {
        let (mut st, mut diags) = self.state();
        if self.mesh_pods.is_none() && st.services.iter().any(|s| s.workload_selector.is_some()) {
            self.watch_mesh_pods();
            (st, diags) = self.state();
        }
        // Pods of other nodes come and go without touching the configuration, unless they change
        // what a workloadSelector selects.
        let selection: Vec<(String, String, Vec<crate::config::Endpoint>)> = st
            .services
            .iter()
            .filter(|s| s.workload_selector.is_some())
            .map(|s| (s.namespace.clone(), s.entry.name.clone(), s.entry.endpoints.clone()))
            .collect();
        if selection != self.selection {
            self.selection = selection;
            self.config_gen += 1;
        }
        let known: BTreeSet<String> = st.pods.iter().map(|p| p.uid.clone()).collect();
        // Directories present now whose UID is unknown.
        if self.cfg.unknown_pods == UnknownPods::Deny {
            for (uid, dir) in self.cfg.options.kubelet_root.scan() {
                if !known.contains(&uid) {
                    self.unresolved.entry(dir).or_insert(uid);
                }
            }
        }
        self.unresolved.retain(|dir, uid| !known.contains(uid) && dir.is_dir());
        let unresolved: Vec<PathBuf> = self.unresolved.keys().cloned().collect();
        let mut c = policy::compute_cached(&st, &self.cfg.options, &unresolved, &mut self.cache, self.config_gen);
        diags.append(&mut c.diagnostics);
        diags.sort();
        diags.dedup();
        let now: BTreeSet<String> = diags.iter().cloned().collect();
        for d in now.difference(&self.reported) {
            tracing::warn!("{d}");
        }
        for u in &unresolved {
            if !self.last.policies.iter().any(|p| p.name == UNRESOLVED_POLICY && p.cgroups.contains(u)) {
                tracing::warn!(
                    cgroup = %u.display(),
                    "pod cgroup of no pod known on this node: denied until the pod is known (fail closed)"
                );
            }
        }
        self.reported = now;
        c.diagnostics = diags;
        c
    }

    /// Run the loop until the task is dropped. `applied` is the set the agent started with;
    /// `ready` is set now (the first set is in the kernel).
    pub async fn run(
        mut self,
        sink: Arc<dyn PolicySink>,
        applied: Computed,
        ready: Arc<AtomicBool>,
    ) -> Result<(), KubeError> {
        self.last = applied;
        let mut last_ok: Vec<WorkloadPolicy> = self.last.policies.clone();
        ready.store(true, Ordering::SeqCst);
        tracing::info!(
            policies = self.last.policies.len(),
            pods = self.last.placements.len(),
            "initial sync complete; ready"
        );
        let (_watcher, mut cgroups) = match enrol::watch(&self.cfg.options.kubelet_root) {
            Ok((w, rx)) => (Some(w), rx),
            Err(e) => {
                tracing::error!(
                    root = %self.cfg.options.kubelet_root.dir.display(),
                    "cannot watch the kubelet's pod cgroups ({e}); new pods are enrolled by the periodic rescan only"
                );
                (None, tokio::sync::mpsc::unbounded_channel().1)
            }
        };
        let mut change: Option<(Instant, Instant)> = None;
        let mut pod_change: Option<Instant> = None;
        let mut degraded = false;
        let mut rescan = tokio::time::interval(self.cfg.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval_at(Instant::now() + RETRY, RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cfg_deadline =
                change.map(|(first, last)| (last + self.cfg.debounce).min(first + self.cfg.debounce_max));
            let deadline = match (cfg_deadline, pod_change) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut recompute = false;
            tokio::select! {
                item = self.events.next() => match item {
                    None => return Err(KubeError::WatchesEnded),
                    Some((Source::Pod, Ok(_))) => {
                        pod_change.get_or_insert_with(|| Instant::now() + self.cfg.pod_debounce);
                    }
                    // A pod somewhere in the cluster: a configuration change only if it changes
                    // a workloadSelector's endpoints (compute_now compares them).
                    Some((Source::MeshPod, Ok(_))) => {
                        let now = Instant::now();
                        change = Some((change.map_or(now, |(first, _)| first), now));
                    }
                    Some((_, Ok(_))) => {
                        self.config_gen += 1;
                        let now = Instant::now();
                        change = Some((change.map_or(now, |(first, _)| first), now));
                    }
                    Some((source, Err(e))) => tracing::warn!(?source, "watch failed: {e}; retrying with backoff"),
                },
                ev = cgroups.recv() => match ev {
                    Some(CgroupEvent::Created { uid, dir }) => {
                        if self.last.placements.iter().any(|p| p.uid == uid) {
                            // Its path is already in its scope's policy: map it now.
                            let t = Instant::now();
                            match sink.sync_cgroups().await {
                                Ok(()) => tracing::debug!(uid, cgroup = %dir.display(), took = ?t.elapsed(), "pod cgroup enrolled"),
                                Err(e) => tracing::error!(uid, "enrolling the pod cgroup failed: {e}"),
                            }
                        } else if !self.last.known_uids.contains(&uid) {
                            // Not known (yet): recompute at once (the pod may have just
                            // arrived); still unknown, it is denied.
                            recompute = true;
                        }
                    }
                    Some(CgroupEvent::Removed { .. }) => {}
                    None => {}
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    recompute = true;
                }
                _ = rescan.tick() => {
                    let unknown = self.cfg.options.kubelet_root.scan().into_iter()
                        .any(|(uid, dir)| !self.last.known_uids.contains(&uid) && !self.unresolved.contains_key(&dir));
                    if unknown || self.unresolved.keys().any(|d| !d.is_dir()) {
                        recompute = true;
                    } else if let Err(e) = sink.sync_cgroups().await {
                        tracing::error!("mapping pod cgroups failed: {e}");
                    }
                }
                _ = retry.tick(), if degraded => { recompute = true; }
            }
            if !recompute {
                continue;
            }
            change = None;
            pod_change = None;
            let computed = self.compute_now();
            if computed.policies == last_ok && !degraded {
                self.last = computed;
                continue;
            }
            match sink.apply(computed.policies.clone()).await {
                Ok(u) => {
                    tracing::info!(
                        policies = computed.policies.len(),
                        pods = computed.placements.len(),
                        excluded = computed.excluded.len(),
                        unresolved = self.unresolved.len(),
                        allow_entries = u.allow_entries,
                        allow_capacity = u.allow_capacity,
                        "workload policies applied"
                    );
                    if degraded {
                        tracing::info!("the full policy set fits again; no scope is denied any more");
                    }
                    degraded = false;
                    last_ok = computed.policies.clone();
                    self.last = computed;
                }
                Err(e) => {
                    let fallback = fail_closed(&computed.policies, &last_ok);
                    let denied: Vec<&str> = computed
                        .policies
                        .iter()
                        .filter(|p| !last_ok.iter().any(|o| o.name == p.name && same_rules(o, p)))
                        .map(|p| p.name.as_str())
                        .collect();
                    tracing::error!(
                        error = %e,
                        denied_scopes = %denied.join(", "),
                        "the workload policies do not fit the kernel maps; the scopes that changed are DENIED (fail closed) until they fit"
                    );
                    match sink.apply(fallback.clone()).await {
                        Ok(_) => {
                            last_ok = fallback;
                            self.last = computed;
                            degraded = true;
                        }
                        Err(e2) => tracing::error!("even the fail-closed set could not be applied: {e2}"),
                    }
                }
            }
        }
    }
}

/// How often a set that did not fit is tried again.
const RETRY: Duration = Duration::from_secs(30);

fn source_of(i: usize) -> Source {
    [
        Source::ServiceEntry,
        Source::DestinationRule,
        Source::Sidecar,
        Source::MeshConfig,
        Source::Pod,
        Source::Namespace,
        Source::Service,
        Source::EndpointSlice,
        Source::MeshPod,
        Source::WorkloadEntry,
    ][i]
}

fn same_rules(a: &WorkloadPolicy, b: &WorkloadPolicy) -> bool {
    a.registry == b.registry && a.mode == b.mode
}

/// The set to apply when `wanted` does not fit: every policy whose rules are unchanged from
/// `last_ok` (with its new cgroups), and every cgroup of a new or changed policy denied.
pub fn fail_closed(wanted: &[WorkloadPolicy], last_ok: &[WorkloadPolicy]) -> Vec<WorkloadPolicy> {
    let mut out = Vec::new();
    let mut denied = WorkloadPolicy {
        name: UNRESOLVED_POLICY.into(),
        registry: Default::default(),
        mode: crate::config::Mode::RegistryOnly,
        cgroups: vec![],
        workloads: BTreeMap::new(),
    };
    for p in wanted {
        if p.name == UNRESOLVED_POLICY {
            denied.cgroups.extend(p.cgroups.iter().cloned());
        } else if last_ok.iter().any(|o| o.name == p.name && same_rules(o, p)) {
            out.push(p.clone());
        } else {
            denied.cgroups.extend(p.cgroups.iter().cloned());
            denied.workloads.extend(p.workloads.clone());
        }
    }
    if !denied.cgroups.is_empty() {
        out.push(denied);
    }
    out
}

#[cfg(test)]
mod tests;
