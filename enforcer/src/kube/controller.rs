//! The node controller: watches the cluster, recomputes the per-pod policies and hands them to
//! the agent.
//!
//! Watched (each a kube-runtime `watcher` feeding a reflector store; list + watch, watches
//! resumed from the last resourceVersion after a disconnect, a full re-list after `410 Gone`,
//! retries with the default exponential backoff 0.8 s .. 30 s):
//!
//! | what | API |
//! | --- | --- |
//! | ServiceEntry, DestinationRule, Sidecar | `networking.istio.io/v1` (Istio >= 1.22), else `v1beta1` (Istio 1.x before that), chosen per kind by discovery, all namespaces |
//! | the mesh config | ConfigMap `istio` in `istio-system` (field selector `metadata.name=istio`) |
//! | pods on this node | `/api/v1/pods` with field selector `spec.nodeName=<node>` |
//!
//! Any change schedules a recompute (debounced: 200 ms after the last change, at most 1 s after
//! the first). The first recompute runs as soon as every watch has completed its initial list;
//! its policies are applied (even if empty: that replaces what an earlier daemon left) and then
//! `ready` is set. Pods whose cgroup directory does not exist yet are re-checked every second.
//! Policies are applied only when they differ from the last applied set.
//!
//! See the module documentation of [`super`] for the enforcement window.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ResourceExt as _};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;
use tokio::time::Instant;

use super::cgroup::find_pod_cgroup;
use super::policy::{self, ClusterState, Options, PodInfo};
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

/// Settings of [`run_with`]; [`ControllerConfig::new`] gives the defaults [`run`] uses.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This node's name (`spec.nodeName` of its pods; the downward API's `spec.nodeName`).
    pub node_name: String,
    /// The cgroup2 mount (`/sys/fs/cgroup`) or the kubepods directory.
    pub cgroup_root: PathBuf,
    /// Default mode and excluded namespaces.
    pub options: Options,
    /// The namespace of the mesh ConfigMap (`istio-system`).
    pub istio_namespace: String,
    /// The mesh ConfigMap's name (`istio`; `istio-<revision>` for revisioned installs).
    pub mesh_config_map: String,
    pub debounce: Duration,
    pub debounce_max: Duration,
    /// How often pods without a cgroup yet are re-checked.
    pub cgroup_recheck: Duration,
    /// How often discovery is retried while the Istio API is not served.
    pub discovery_retry: Duration,
}

impl ControllerConfig {
    pub fn new(node_name: impl Into<String>, cgroup_root: impl Into<PathBuf>) -> ControllerConfig {
        ControllerConfig {
            node_name: node_name.into(),
            cgroup_root: cgroup_root.into(),
            options: Options::default(),
            istio_namespace: "istio-system".into(),
            mesh_config_map: "istio".into(),
            debounce: Duration::from_millis(200),
            debounce_max: Duration::from_secs(1),
            cgroup_recheck: Duration::from_secs(1),
            discovery_retry: Duration::from_secs(10),
        }
    }
}

/// Run the controller for `node_name` until the task is dropped. Sets `ready` after the first
/// full sync has been applied to `sink`. Defaults of [`ControllerConfig::new`]: mode `ALLOW_ANY`
/// when neither Sidecar nor mesh config sets one (Istio's default), pods of `kube-system`,
/// `kube-public`, `kube-node-lease` and of `$POD_NAMESPACE` (the daemon's own) left to the node
/// default. Use [`run_with`] to change them (e.g. the daemon's `--mode`).
pub async fn run(
    client: kube::Client,
    node_name: String,
    cgroup_root: PathBuf,
    sink: Arc<dyn PolicySink>,
    ready: Arc<AtomicBool>,
) -> Result<(), KubeError> {
    let mut cfg = ControllerConfig::new(node_name, cgroup_root);
    // The daemon's own namespace (downward API `POD_NAMESPACE`): its pods are not workloads.
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        cfg.options.excluded_namespaces.insert(ns);
    }
    run_with(client, cfg, sink, ready).await
}

/// Where a watch event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    ServiceEntry = 0,
    DestinationRule = 1,
    Sidecar = 2,
    MeshConfig = 3,
    Pod = 4,
}
const SOURCES: usize = 5;

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
async fn discover(client: &kube::Client) -> Result<Vec<ApiResource>, String> {
    let mut found: Vec<Option<ApiResource>> = vec![None; ISTIO_KINDS.len()];
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
        Ok(found.into_iter().flatten().collect())
    } else {
        Err(format!(
            "Istio API not found for {} ({}); expected the CRDs serviceentries, destinationrules and sidecars.{ISTIO_GROUP} serving v1 (Istio >= 1.22) or v1beta1: install Istio's CRDs (istioctl install, or the istio/base Helm chart)",
            missing.join(", "),
            errors.join("; ")
        ))
    }
}

/// [`run`] with explicit settings.
pub async fn run_with(
    client: kube::Client,
    cfg: ControllerConfig,
    sink: Arc<dyn PolicySink>,
    ready: Arc<AtomicBool>,
) -> Result<(), KubeError> {
    let resources = loop {
        match discover(&client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("{e}; retrying in {:?}", cfg.discovery_retry);
                tokio::time::sleep(cfg.discovery_retry).await;
            }
        }
    };
    for ar in &resources {
        tracing::info!(kind = %ar.kind, api_version = %ar.api_version, "watching Istio resource");
    }

    let mut streams: Vec<BoxStream<'static, Signal>> = Vec::new();
    let mut istio_stores: Vec<(ApiResource, Store<DynamicObject>)> = Vec::new();
    for (ar, source) in resources.iter().zip([Source::ServiceEntry, Source::DestinationRule, Source::Sidecar]) {
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        istio_stores.push((ar.clone(), writer.as_reader()));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let stream = watcher(api, watcher::Config::default())
            .modify(|o| o.managed_fields_mut().clear())
            .default_backoff()
            .reflect(writer);
        streams.push(signals(source, stream));
    }
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.istio_namespace);
    streams.push(signals(
        Source::MeshConfig,
        watcher(cm_api, watcher::Config::default().fields(&format!("metadata.name={}", cfg.mesh_config_map)))
            .default_backoff()
            .reflect(cm_writer),
    ));
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pod_api: Api<Pod> = Api::all(client.clone());
    streams.push(signals(
        Source::Pod,
        watcher(pod_api, watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name)))
            .modify(|p| {
                p.managed_fields_mut().clear();
                if let Some(spec) = p.spec.as_mut() {
                    spec.containers.iter_mut().for_each(|c| c.env = None);
                }
            })
            .default_backoff()
            .reflect(pod_writer),
    ));
    let mut events = futures::stream::select_all(streams);

    let mut synced = [false; SOURCES];
    let mut first_sync_done = false;
    let mut change: Option<(Instant, Instant)> = None; // (first, last) unprocessed change
    let mut last_applied: Option<Vec<WorkloadPolicy>> = None;
    let mut pending: Vec<String> = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut recheck = tokio::time::interval(cfg.cgroup_recheck);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let recompute = |last_applied: &mut Option<Vec<WorkloadPolicy>>,
                     pending: &mut Vec<String>,
                     reported: &mut BTreeSet<String>| {
        let state = snapshot(&istio_stores, &cm_store, &pod_store);
        let root = cfg.cgroup_root.clone();
        let computed = policy::compute(&state, &cfg.options, &|p: &PodInfo| find_pod_cgroup(&root, &p.uid, p.qos));
        let now: BTreeSet<String> = computed.diagnostics.iter().cloned().collect();
        for d in now.difference(reported) {
            tracing::warn!("{d}");
        }
        *reported = now;
        for p in computed.pending.iter().filter(|p| !pending.contains(p)) {
            tracing::debug!(pod = %p, "pod has no cgroup directory yet; re-checking every {:?}", cfg.cgroup_recheck);
        }
        *pending = computed.pending;
        if last_applied.as_ref() != Some(&computed.policies) {
            tracing::info!(
                policies = computed.policies.len(),
                pending = pending.len(),
                excluded = computed.excluded.len(),
                "applying workload policies"
            );
            sink.apply(computed.policies.clone());
            *last_applied = Some(computed.policies);
        }
    };

    loop {
        let deadline = change.map(|(first, last)| (last + cfg.debounce).min(first + cfg.debounce_max));
        tokio::select! {
            item = events.next() => match item {
                None => return Err(KubeError::WatchesEnded),
                Some((source, Ok(init_done))) => {
                    if init_done && !synced[source as usize] {
                        tracing::debug!(?source, "initial list complete");
                        synced[source as usize] = true;
                    }
                    let now = Instant::now();
                    change = Some((change.map_or(now, |(first, _)| first), now));
                    if !first_sync_done && synced.iter().all(|s| *s) {
                        recompute(&mut last_applied, &mut pending, &mut reported);
                        change = None;
                        first_sync_done = true;
                        ready.store(true, Ordering::SeqCst);
                        tracing::info!("initial sync complete; ready");
                    }
                }
                Some((source, Err(e))) => {
                    tracing::warn!(?source, "watch failed: {e}; retrying with backoff");
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if first_sync_done && deadline.is_some() => {
                change = None;
                recompute(&mut last_applied, &mut pending, &mut reported);
            }
            _ = recheck.tick(), if first_sync_done && !pending.is_empty() => {
                recompute(&mut last_applied, &mut pending, &mut reported);
            }
        }
    }
}

/// The stores' contents as the input of [`policy::compute`].
fn snapshot(istio: &[(ApiResource, Store<DynamicObject>)], cm: &Store<ConfigMap>, pods: &Store<Pod>) -> ClusterState {
    let mut state = ClusterState::default();
    for (ar, store) in istio {
        let mut objs: Vec<Value> = store
            .state()
            .iter()
            .filter_map(|o| {
                let mut v = serde_json::to_value(&**o).ok()?;
                // List items may come without apiVersion/kind: the registry loader needs them.
                v["apiVersion"] = Value::String(ar.api_version.clone());
                v["kind"] = Value::String(ar.kind.clone());
                Some(v)
            })
            .collect();
        objs.sort_by_key(|v| policy::object_name(&ar.kind, v));
        match ar.kind.as_str() {
            "ServiceEntry" => state.service_entries = objs,
            "DestinationRule" => state.destination_rules = objs,
            _ => state.sidecars = objs,
        }
    }
    state.mesh_config_map = cm.state().first().and_then(|c| serde_json::to_value(&**c).ok());
    state.pods = pods.state().iter().filter_map(|p| PodInfo::from_pod(p)).collect();
    state
}

#[cfg(test)]
mod tests;
