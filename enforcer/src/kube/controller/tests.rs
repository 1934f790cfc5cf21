//! The controller against a fake API server behind `tower_test::mock::pair()`: real list and
//! watch HTTP exchanges (Kubernetes JSON lists, newline-delimited watch events), answered from an
//! in-memory cluster the tests change.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::config::Mode;

type Body = BoxBody<Bytes, std::io::Error>;

const NODE: &str = "node-1";

/// One resource collection of the fake API server.
struct Collection {
    list_kind: &'static str,
    api_version: String,
    items: BTreeMap<String, Value>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct Cluster {
    rv: u64,
    /// Watches asking for a resourceVersion below this get `410 Gone` (etcd compaction).
    compacted_below: u64,
    /// The Istio versions served.
    istio_versions: Vec<&'static str>,
    collections: BTreeMap<String, Collection>,
    /// (path, "list" | "watch") -> count.
    requests: BTreeMap<(String, &'static str), usize>,
    /// Paths whose next LIST fails with 500.
    fail_next_list: Vec<String>,
}

#[derive(Clone)]
struct FakeApi(Arc<Mutex<Cluster>>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn key_of(obj: &Value) -> String {
    format!("{}/{}", obj["metadata"]["namespace"].as_str().unwrap_or(""), obj["metadata"]["name"].as_str().unwrap())
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// Does `obj` match a field selector like `spec.nodeName=node-1` (comma-separated terms)?
fn field_selector_matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want) = term.split_once('=').unwrap();
        let ptr = format!("/{}", path.replace('.', "/"));
        obj.pointer(&ptr).and_then(Value::as_str) == Some(want)
    })
}

impl FakeApi {
    fn new(istio_versions: &[&'static str]) -> FakeApi {
        let mut c = Cluster { rv: 100, istio_versions: istio_versions.to_vec(), ..Default::default() };
        for v in istio_versions {
            for (plural, kind) in [
                ("serviceentries", "ServiceEntryList"),
                ("destinationrules", "DestinationRuleList"),
                ("sidecars", "SidecarList"),
            ] {
                c.collections.insert(
                    format!("/apis/networking.istio.io/{v}/{plural}"),
                    Collection {
                        list_kind: kind,
                        api_version: format!("networking.istio.io/{v}"),
                        items: BTreeMap::new(),
                        watchers: vec![],
                    },
                );
            }
        }
        c.collections.insert(
            "/api/v1/namespaces/istio-system/configmaps".into(),
            Collection {
                list_kind: "ConfigMapList",
                api_version: "v1".into(),
                items: BTreeMap::new(),
                watchers: vec![],
            },
        );
        for (path, kind, av) in [
            ("/api/v1/pods", "PodList", "v1"),
            ("/api/v1/namespaces", "NamespaceList", "v1"),
            ("/api/v1/services", "ServiceList", "v1"),
            ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList", "discovery.k8s.io/v1"),
        ] {
            c.collections.insert(
                path.into(),
                Collection { list_kind: kind, api_version: av.into(), items: BTreeMap::new(), watchers: vec![] },
            );
        }
        FakeApi(Arc::new(Mutex::new(c)))
    }

    fn path_for(&self, kind: &str) -> String {
        let c = self.0.lock().unwrap();
        let v = c.istio_versions.first().copied().unwrap_or("v1");
        match kind {
            "ServiceEntry" => format!("/apis/networking.istio.io/{v}/serviceentries"),
            "DestinationRule" => format!("/apis/networking.istio.io/{v}/destinationrules"),
            "Sidecar" => format!("/apis/networking.istio.io/{v}/sidecars"),
            "ConfigMap" => "/api/v1/namespaces/istio-system/configmaps".into(),
            "Pod" => "/api/v1/pods".into(),
            "Namespace" => "/api/v1/namespaces".into(),
            "Service" => "/api/v1/services".into(),
            "EndpointSlice" => "/apis/discovery.k8s.io/v1/endpointslices".into(),
            k => panic!("kind {k}"),
        }
    }

    /// Create or replace an object; watchers get ADDED/MODIFIED unless `silently` (as if the
    /// change happened while they were disconnected).
    fn put(&self, kind: &str, mut obj: Value, silently: bool) {
        let path = self.path_for(kind);
        let mut c = self.0.lock().unwrap();
        c.rv += 1;
        let rv = c.rv.to_string();
        obj["metadata"]["resourceVersion"] = json!(rv);
        let col = c.collections.get_mut(&path).unwrap();
        let key = key_of(&obj);
        let ty = if col.items.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        col.items.insert(key, obj.clone());
        if !silently {
            let line = Bytes::from(format!("{}\n", json!({"type": ty, "object": obj})));
            col.watchers.retain(|w| w.send(line.clone()).is_ok());
        }
    }

    fn delete(&self, kind: &str, ns: &str, name: &str, silently: bool) {
        let path = self.path_for(kind);
        let mut c = self.0.lock().unwrap();
        c.rv += 1;
        let rv = c.rv.to_string();
        let col = c.collections.get_mut(&path).unwrap();
        let mut obj = col.items.remove(&format!("{ns}/{name}")).expect("object to delete");
        obj["metadata"]["resourceVersion"] = json!(rv);
        if !silently {
            let line = Bytes::from(format!("{}\n", json!({"type": "DELETED", "object": obj})));
            col.watchers.retain(|w| w.send(line.clone()).is_ok());
        }
    }

    /// End every open watch (the API server closing the connections).
    fn close_watches(&self) {
        for col in self.0.lock().unwrap().collections.values_mut() {
            col.watchers.clear();
        }
    }

    /// Forget history: watches from an older resourceVersion get 410 Gone.
    fn compact(&self) {
        let mut c = self.0.lock().unwrap();
        c.compacted_below = c.rv + 1;
    }

    fn count(&self, kind: &str, what: &'static str) -> usize {
        let path = self.path_for(kind);
        *self.0.lock().unwrap().requests.get(&(path, what)).unwrap_or(&0)
    }

    fn respond(&self, req: &Request<kube::client::Body>) -> Response<Body> {
        assert_eq!(req.method(), hyper::Method::GET, "the controller only reads: {req:?}");
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let mut c = self.0.lock().unwrap();
        // Discovery of the Istio group versions.
        if let Some(v) = path.strip_prefix("/apis/networking.istio.io/")
            && !v.contains('/')
        {
            {
                if !c.istio_versions.contains(&v) {
                    return full(StatusCode::NOT_FOUND, status(404, "NotFound"));
                }
                let res = |name: &str, kind: &str| {
                    json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
                    "verbs": ["delete","deletecollection","get","list","patch","create","update","watch"]})
                };
                return full(
                    StatusCode::OK,
                    json!({
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("networking.istio.io/{v}"),
                        "resources": [res("serviceentries", "ServiceEntry"), res("destinationrules", "DestinationRule"), res("sidecars", "Sidecar")]
                    }),
                );
            }
        }
        let rv = c.rv;
        let compacted_below = c.compacted_below;
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        *c.requests.entry((path.clone(), if watch { "watch" } else { "list" })).or_default() += 1;
        if !watch && let Some(i) = c.fail_next_list.iter().position(|p| *p == path) {
            c.fail_next_list.remove(i);
            return full(StatusCode::INTERNAL_SERVER_ERROR, status(500, "InternalError"));
        }
        let Some(col) = c.collections.get_mut(&path) else {
            return full(StatusCode::NOT_FOUND, status(404, "NotFound"));
        };
        let selector = query.get("fieldSelector").cloned().unwrap_or_default();
        if !watch {
            let items: Vec<Value> =
                col.items.values().filter(|o| field_selector_matches(o, &selector)).cloned().collect();
            return full(
                StatusCode::OK,
                json!({
                    "kind": col.list_kind, "apiVersion": col.api_version,
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items
                }),
            );
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        if from < compacted_below {
            let line = json!({"type": "ERROR", "object": status(410, "Expired")});
            tx.send(Bytes::from(format!("{line}\n"))).unwrap();
            drop(tx);
        } else {
            // Field-selected watches only get matching objects (no such object changes here).
            col.watchers.push(tx);
        }
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }

    fn client(&self) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                send.send_response(api.respond(&req));
            }
        });
        kube::Client::new(svc, "default")
    }
}

/// The sink: every applied set, and whether `ready` was already set when it was applied.
struct RecordingSink {
    tx: tokio::sync::watch::Sender<Vec<Vec<WorkloadPolicy>>>,
    syncs: std::sync::atomic::AtomicUsize,
    /// Refuse this many applies (as a full kernel map would), recording nothing.
    refuse: std::sync::atomic::AtomicUsize,
}

impl PolicySink for RecordingSink {
    fn apply(
        &self,
        policies: Vec<WorkloadPolicy>,
    ) -> futures::future::BoxFuture<'static, Result<crate::workload::MapUse, String>> {
        if self.refuse.load(Ordering::SeqCst) > 0 {
            self.refuse.fetch_sub(1, Ordering::SeqCst);
            return Box::pin(async { Err("ALLOW: 300000 entries wanted, capacity 262144".to_string()) });
        }
        self.tx.send_modify(|v| v.push(policies));
        Box::pin(async { Ok(crate::workload::MapUse::default()) })
    }
    fn sync_cgroups(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "enforcer-kube-ctl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Create the pod's cgroup (systemd driver, with a containerd scope below it).
fn mk_pod_cgroup(root: &Path, pod: &Value) -> PathBuf {
    let uid = pod["metadata"]["uid"].as_str().unwrap().replace('-', "_");
    let dir = match pod["status"]["qosClass"].as_str().unwrap() {
        "Guaranteed" => root.join(format!("kubepods.slice/kubepods-pod{uid}.slice")),
        "Burstable" => root.join(format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice")),
        _ => root.join(format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice")),
    };
    fs::create_dir_all(dir.join("cri-containerd-0123456789abcdef.scope")).unwrap();
    dir
}

fn fixture_items(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text).unwrap()["items"].as_array().unwrap().clone()
}

struct Harness {
    api: FakeApi,
    cgroups: TempDir,
    rx: tokio::sync::watch::Receiver<Vec<Vec<WorkloadPolicy>>>,
    first: Arc<Mutex<Option<Vec<WorkloadPolicy>>>>,
    sink: Arc<RecordingSink>,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), KubeError>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fixtures in a fake cluster (with `istio_versions` served) and a running controller.
/// `with_cgroups`: create the cgroup directories of the fixture pods first.
fn start(istio_versions: &[&'static str], with_cgroups: bool, before: impl FnOnce(&FakeApi)) -> Harness {
    let api = FakeApi::new(istio_versions);
    let cgroups = TempDir::new("root");
    fs::create_dir_all(cgroups.0.join("kubepods.slice/kubepods-burstable.slice")).unwrap();
    fs::create_dir_all(cgroups.0.join("kubepods.slice/kubepods-besteffort.slice")).unwrap();
    let istio = if istio_versions.is_empty() {
        vec![]
    } else {
        vec![
            ("ServiceEntry", include_str!("../../../tests/fixtures/kube/serviceentries.json")),
            ("DestinationRule", include_str!("../../../tests/fixtures/kube/destinationrules.json")),
            ("Sidecar", include_str!("../../../tests/fixtures/kube/sidecars.json")),
        ]
    };
    for (kind, text) in istio {
        for obj in fixture_items(text) {
            api.put(kind, obj, true);
        }
    }
    for obj in fixture_items(include_str!("../../../tests/fixtures/kube/namespaces.json")) {
        api.put("Namespace", obj, true);
    }
    api.put(
        "ConfigMap",
        serde_json::from_str(include_str!("../../../tests/fixtures/kube/configmap-istio.json")).unwrap(),
        true,
    );
    // A ConfigMap the field selector must keep out.
    api.put(
        "ConfigMap",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system", "uid": "x"},
        "data": {"root-cert.pem": "-----BEGIN CERTIFICATE-----"}}),
        true,
    );
    for pod in fixture_items(include_str!("../../../tests/fixtures/kube/pods.json")) {
        if with_cgroups {
            mk_pod_cgroup(&cgroups.0, &pod);
        }
        api.put("Pod", pod, true);
    }
    // A pod on another node: the field selector keeps it out.
    api.put("Pod", json!({"metadata": {"name": "elsewhere", "namespace": "default", "uid": "b2b2b2b2-0000-4000-8000-000000000001", "labels": {"app": "sleep"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort"}}), true);
    before(&api);

    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let sink = Arc::new(RecordingSink { tx, syncs: Default::default(), refuse: Default::default() });
    let root = crate::kube::cgroup::KubeletRoot::at(cgroups.0.join("kubepods.slice"));
    let mut cfg = ControllerConfig::new(NODE, root);
    cfg.options.default_mode = Mode::AllowAny;
    cfg.rescan = Duration::from_millis(200);
    let first: Arc<Mutex<Option<Vec<WorkloadPolicy>>>> = Arc::default();
    let (client, s2, r2, f2) = (api.client(), sink.clone(), ready.clone(), first.clone());
    let task = tokio::spawn(async move {
        let mut ctl = Controller::start(client, cfg).await;
        let c = ctl.initial_sync().await?;
        *f2.lock().unwrap() = Some(c.policies.clone());
        s2.tx.send_modify(|v| v.push(c.policies.clone()));
        ctl.run(s2 as Arc<dyn PolicySink>, c, r2).await
    });
    Harness { api, cgroups, rx, first, sink, ready, task }
}

impl Harness {
    /// Wait (at most 15 s) until the latest applied set satisfies `pred`; returns it.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&[WorkloadPolicy]) -> bool) -> Vec<WorkloadPolicy> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(last) = self.rx.borrow_and_update().last()
                && pred(last)
            {
                return last.clone();
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "timed out waiting for {what}; last applied: {:#?}",
                    self.rx.borrow().last().map(|l| names(l))
                ),
            }
        }
    }

    fn applies(&self) -> usize {
        self.rx.borrow().len()
    }
}

fn names(ps: &[WorkloadPolicy]) -> Vec<&str> {
    ps.iter().map(|p| p.name.as_str()).collect()
}

fn hosts_of(ps: &[WorkloadPolicy], pod: &str) -> Vec<String> {
    let p = ps.iter().find(|p| p.name == pod).unwrap_or_else(|| panic!("no policy {pod}: {:?}", names(ps)));
    let mut v: Vec<String> = p
        .registry
        .services
        .iter()
        .filter(|s| s.namespace != "default" || !["kubernetes"].contains(&s.name.as_str()))
        .flat_map(|s| s.hosts.iter().map(|h| h.to_string()))
        .collect();
    v.sort();
    v
}

const SCOPES: [&str; 4] = ["kube:default", "kube:team-a", "kube:team-a sidecar=team-a/ratings", "kube:team-b"];

#[tokio::test]
async fn initial_sync_computes_the_scopes_before_anything_is_applied() {
    let mut h = start(&["v1", "v1beta1"], true, |_| {});
    let ps = h.wait_for("the initial policies", |p| !p.is_empty()).await;
    assert_eq!(names(&ps), SCOPES, "node-2's pod, kube-system, hostNetwork, sidecar and opted-out pods get none");
    assert_eq!(h.first.lock().unwrap().as_ref().map(|f| names(f).len()), Some(4), "the set the agent starts with");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.ready.load(Ordering::SeqCst));
    assert_eq!(h.applies(), 1, "nothing re-applied when nothing changed");
    let d = &ps[0];
    assert_eq!(
        hosts_of(&ps, "kube:default"),
        ["api.dropboxapi.com", "dns-resolvers.enforcer.local", "mymongodb.somedomain", "www.googleapis.com"]
    );
    assert_eq!(d.mode, Mode::RegistryOnly, "from the istio ConfigMap");
    assert!(d.cgroups.contains(&h.cgroups.0.join(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda1a1a1a1_0000_4000_8000_000000000001.slice"
    )));
    assert_eq!(ps[2].mode, Mode::AllowAny, "the ratings Sidecar's outboundTrafficPolicy");
    // v1 was preferred; v1beta1 never read.
    assert_eq!(h.api.count("ServiceEntry", "list"), 1);
    let v1beta1 = ("/apis/networking.istio.io/v1beta1/serviceentries".to_string(), "list");
    assert!(!h.api.0.lock().unwrap().requests.contains_key(&v1beta1));
    assert!(h.api.count("Service", "list") == 1 && h.api.count("EndpointSlice", "list") == 1);
}

#[tokio::test]
async fn modified_and_deleted_objects_reach_the_sink() {
    let mut h = start(&["v1"], true, |_| {});
    h.wait_for("the initial policies", |p| p.len() == 4).await;

    let mut se = fixture_items(include_str!("../../../tests/fixtures/kube/serviceentries.json"))[0].clone();
    se["spec"]["hosts"] = json!(["api.dropboxapi.com", "www.googleapis.com", "api.github.com"]);
    h.api.put("ServiceEntry", se, false);
    let ps = h
        .wait_for("api.github.com added", |p| hosts_of(p, "kube:default").contains(&"api.github.com".to_string()))
        .await;
    assert!(hosts_of(&ps, "kube:team-b").contains(&"api.github.com".to_string()));
    assert!(!hosts_of(&ps, "kube:team-a").contains(&"api.github.com".to_string()), "team-a's Sidecar hides default/*");

    // A Service appears in team-a: in-cluster destinations are part of the registry.
    h.api.put("Service", json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "team-a", "uid": "s1"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}), false);
    h.wait_for("web service", |p| hosts_of(p, "kube:team-a").contains(&"web.team-a.svc.cluster.local".to_string()))
        .await;

    // The mesh mode flips.
    let mut cm: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/kube/configmap-istio.json")).unwrap();
    cm["data"]["mesh"] = json!("outboundTrafficPolicy:\n  mode: ALLOW_ANY\nrootNamespace: istio-system\n");
    h.api.put("ConfigMap", cm, false);
    let ps = h.wait_for("mesh mode ALLOW_ANY", |p| p[0].mode == Mode::AllowAny).await;
    assert_eq!(ps[1].mode, Mode::RegistryOnly, "team-a's Sidecar still says REGISTRY_ONLY");

    // A pod deleted from the node: its scope goes with it.
    // Its cgroup directory is still there (the kubelet has not removed it yet): it belongs to no
    // pod any more, so it is denied; once it is gone, so is the deny entry.
    h.api.delete("Pod", "team-b", "reviews-v2-7c8d9e6f5-klmno", false);
    let ps = h.wait_for("reviews gone", |p| !names(p).contains(&"kube:team-b")).await;
    assert_eq!(names(&ps), [SCOPES[0], SCOPES[1], SCOPES[2], crate::kube::policy::UNRESOLVED_POLICY]);
    let dir = h.cgroups.0.join("kubepods.slice/kubepods-poda1a1a1a1_0000_4000_8000_000000000004.slice");
    assert_eq!(ps[3].cgroups, vec![dir.clone()]);
    fs::remove_dir_all(&dir).unwrap();
    let ps = h.wait_for("deny entry gone", |p| p.len() == 3).await;
    assert_eq!(names(&ps), &SCOPES[..3]);
    // A namespace opts out: its scopes go.
    h.api.put(
        "Namespace",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {}}}),
        false,
    );
    let ps = h.wait_for("team-a opted out", |p| p.len() == 1).await;
    assert_eq!(names(&ps), ["kube:default"]);
}

#[tokio::test]
async fn pod_cgroups_are_enrolled_and_unknown_ones_denied() {
    let mut h = start(&["v1"], false, |_| {});
    h.wait_for("initial sync", |p| p.len() == 4).await;
    // A known pod's directory appears: only a cgroup sync, no new policy set.
    let before = h.applies();
    let pod = fixture_items(include_str!("../../../tests/fixtures/kube/pods.json"))[0].clone();
    mk_pod_cgroup(&h.cgroups.0, &pod);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.sink.syncs.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no cgroup sync after the pod directory appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.applies(), before, "enrolment needs no recompute");
    // A directory of no known pod: denied.
    let stray = h.cgroups.0.join(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podd4d4d4d4_0000_4000_8000_000000000001.slice",
    );
    fs::create_dir_all(&stray).unwrap();
    let ps = h.wait_for("stray denied", |p| p.iter().any(|w| w.name == crate::kube::policy::UNRESOLVED_POLICY)).await;
    assert_eq!(ps.last().unwrap().cgroups, vec![stray.clone()]);
    // Its pod shows up: it leaves the deny list (and gets a scope: default is opted in).
    h.api.put(
        "Pod",
        json!({"metadata": {"name": "late-0", "namespace": "default", "uid": "d4d4d4d4-0000-4000-8000-000000000001"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"}}),
        false,
    );
    let ps =
        h.wait_for("late pod placed", |p| !p.iter().any(|w| w.name == crate::kube::policy::UNRESOLVED_POLICY)).await;
    assert!(ps.iter().find(|w| w.name == "kube:default").unwrap().cgroups.contains(&stray));
}

#[tokio::test]
async fn a_set_that_does_not_fit_denies_the_changed_scopes() {
    let mut h = start(&["v1"], true, |_| {});
    h.wait_for("initial", |p| p.len() == 4).await;
    // The next apply "overflows": the scope that changed (default gets a new entry) is denied,
    // the others keep their policies.
    h.sink.refuse.store(1, Ordering::SeqCst);
    let mut se = fixture_items(include_str!("../../../tests/fixtures/kube/serviceentries.json"))[0].clone();
    se["spec"]["hosts"] = json!(["api.dropboxapi.com", "www.googleapis.com", "api.github.com"]);
    h.api.put("ServiceEntry", se, false);
    let ps =
        h.wait_for("fail-closed set", |p| p.iter().any(|w| w.name == crate::kube::policy::UNRESOLVED_POLICY)).await;
    let denied = ps.iter().find(|w| w.name == crate::kube::policy::UNRESOLVED_POLICY).unwrap();
    assert!(
        denied.cgroups.iter().any(|c| c.to_string_lossy().contains("a1a1a1a1_0000_4000_8000_000000000001")),
        "default's pod is denied: {:?}",
        denied.cgroups
    );
    assert!(!names(&ps).contains(&"kube:default"), "{:?}", names(&ps));
    assert!(names(&ps).contains(&"kube:team-a"), "unchanged scopes keep their policy");
    // team-b's view changed too (it imports default/*): denied as well.
    assert!(!names(&ps).contains(&"kube:team-b"));
    // The retry (every 30 s, or the next change) applies the full set once it fits.
    h.api.put(
        "Namespace",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": {}}}),
        false,
    );
    let ps = h
        .wait_for("full set again", |p| {
            p.len() == 4 && !p.iter().any(|w| w.name == crate::kube::policy::UNRESOLVED_POLICY)
        })
        .await;
    assert!(hosts_of(&ps, "kube:default").contains(&"api.github.com".to_string()));
}

#[tokio::test]
async fn watches_resume_after_disconnects_and_relist_after_410() {
    let mut h = start(&["v1"], true, |_| {});
    h.wait_for("initial", |p| p.len() == 4).await;
    assert_eq!((h.api.count("ServiceEntry", "list"), h.api.count("ServiceEntry", "watch")), (1, 1));
    h.api.close_watches();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.api.count("ServiceEntry", "watch") < 2 || h.api.count("Pod", "watch") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "watches not resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.api.count("ServiceEntry", "list"), 1, "resumed without re-listing");
    h.api.close_watches();
    h.api.delete("ServiceEntry", "default", "external-svc-mongocluster", true);
    h.api.compact();
    let ps = h
        .wait_for("state after relist", |p| !hosts_of(p, "kube:default").contains(&"mymongodb.somedomain".to_string()))
        .await;
    assert_eq!(names(&ps), SCOPES);
    assert!(h.api.count("ServiceEntry", "list") >= 2, "re-listed after 410");
}

#[tokio::test]
async fn falls_back_to_v1beta1_when_v1_is_not_served() {
    let mut h = start(&["v1beta1"], true, |_| {});
    h.wait_for("policies", |p| p.len() == 4).await;
    let c = h.api.0.lock().unwrap();
    assert!(c.requests.contains_key(&("/apis/networking.istio.io/v1beta1/serviceentries".to_string(), "list")));
    assert!(!c.requests.keys().any(|(p, _)| p.starts_with("/apis/networking.istio.io/v1/")));
}

#[tokio::test]
async fn nothing_is_applied_while_istio_is_not_installed() {
    let h = start(&[], true, |_| {});
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.ready.load(Ordering::SeqCst));
    assert_eq!(h.applies(), 0);
    assert!(!h.task.is_finished(), "keeps retrying discovery");
}

#[test]
fn fail_closed_denies_only_what_changed() {
    let p = |name: &str, host: &str, cg: &str| WorkloadPolicy {
        name: name.into(),
        registry: crate::config::Registry {
            services: vec![],
            destination_rules: vec![],
            sidecars: vec![],
            mode: None,
            warnings: vec![crate::config::Diagnostic {
                source: crate::config::SourceRef { file: host.into(), document: 1, line: 1 },
                object: None,
                field: String::new(),
                message: String::new(),
                fix: None,
                severity: crate::config::Severity::Warning,
            }],
        },
        mode: Mode::RegistryOnly,
        cgroups: vec![PathBuf::from(cg)],
        workloads: BTreeMap::new(),
    };
    let last = vec![p("a", "x", "/a1"), p("b", "y", "/b1")];
    let wanted = vec![p("a", "x", "/a2"), p("b", "changed", "/b2"), p("c", "new", "/c1")];
    let f = fail_closed(&wanted, &last);
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].name.as_str(), f[0].cgroups.clone()), ("a", vec![PathBuf::from("/a2")]));
    assert_eq!(f[1].name, crate::kube::policy::UNRESOLVED_POLICY);
    assert_eq!(f[1].cgroups, vec![PathBuf::from("/b2"), PathBuf::from("/c1")]);
}

#[test]
fn field_selectors_and_decoding() {
    assert_eq!(percent_decode("spec.nodeName%3Dnode-1"), "spec.nodeName=node-1");
    let pod = json!({"spec": {"nodeName": "node-1"}, "metadata": {"name": "x"}});
    assert!(field_selector_matches(&pod, "spec.nodeName=node-1"));
    assert!(!field_selector_matches(&pod, "spec.nodeName=node-2"));
    assert!(field_selector_matches(&pod, "metadata.name=x,spec.nodeName=node-1"));
}
