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
        c.collections.insert(
            "/api/v1/pods".into(),
            Collection { list_kind: "PodList", api_version: "v1".into(), items: BTreeMap::new(), watchers: vec![] },
        );
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
    ready: Arc<AtomicBool>,
    ready_at_apply: Mutex<Vec<bool>>,
}

impl PolicySink for RecordingSink {
    fn apply(&self, policies: Vec<WorkloadPolicy>) {
        self.ready_at_apply.lock().unwrap().push(self.ready.load(Ordering::SeqCst));
        self.tx.send_modify(|v| v.push(policies));
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
    let sink = Arc::new(RecordingSink { tx, ready: ready.clone(), ready_at_apply: Mutex::new(vec![]) });
    let mut cfg = ControllerConfig::new(NODE, cgroups.0.clone());
    cfg.options.default_mode = Mode::AllowAny;
    cfg.cgroup_recheck = Duration::from_millis(200);
    let task = tokio::spawn(run_with(api.client(), cfg, sink.clone() as Arc<dyn PolicySink>, ready.clone()));
    Harness { api, cgroups, rx, sink, ready, task }
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
                _ => panic!("timed out waiting for {what}; last applied: {:#?}", self.rx.borrow().last()),
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
    let p = ps.iter().find(|p| p.name == pod).unwrap_or_else(|| panic!("no policy for {pod}"));
    let mut v: Vec<String> = p.registry.services.iter().flat_map(|s| s.hosts.iter().map(|h| h.to_string())).collect();
    v.sort();
    v
}

const ALL_FOUR: [&str; 4] = [
    "default/sleep-7b9f8c6d5-x2k4p",
    "team-a/productpage-v1-6f9d8c7b5-abcde",
    "team-a/ratings-v1-5d7f8b9c4-fghij",
    "team-b/reviews-v2-7c8d9e6f5-klmno",
];

#[tokio::test]
async fn initial_sync_applies_the_istio_view_and_then_sets_ready() {
    let mut h = start(&["v1", "v1beta1"], true, |_| {});
    let ps = h.wait_for("the initial policies", |p| !p.is_empty()).await;
    assert_eq!(names(&ps), ALL_FOUR, "node-2's pod, kube-system, hostNetwork and inject=false pods get none");
    assert!(h.ready.load(Ordering::SeqCst));
    assert!(!h.sink.ready_at_apply.lock().unwrap()[0], "ready is set only after the first apply");
    assert_eq!(h.applies(), 1, "one apply for the whole initial sync");

    let sleep = &ps[0];
    assert_eq!(
        hosts_of(&ps, &sleep.name),
        ["api.dropboxapi.com", "foo.bar.com", "mymongodb.somedomain", "www.googleapis.com"]
    );
    assert_eq!(sleep.mode, Mode::RegistryOnly, "from the istio ConfigMap");
    assert_eq!(
        sleep.cgroups,
        vec![h.cgroups.0.join(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda1a1a1a1_0000_4000_8000_000000000001.slice"
        )]
    );
    assert_eq!(hosts_of(&ps, "team-a/ratings-v1-5d7f8b9c4-fghij"), ["en.wikipedia.org"]);
    assert_eq!(ps[2].mode, Mode::AllowAny, "the ratings Sidecar's outboundTrafficPolicy");
    assert_eq!(
        ps[3].cgroups,
        vec![h.cgroups.0.join("kubepods.slice/kubepods-poda1a1a1a1_0000_4000_8000_000000000004.slice")],
        "Guaranteed pod directly under kubepods.slice"
    );
    // v1 was preferred; v1beta1 never read.
    assert_eq!(h.api.count("ServiceEntry", "list"), 1);
    let v1beta1 = ("/apis/networking.istio.io/v1beta1/serviceentries".to_string(), "list");
    assert!(!h.api.0.lock().unwrap().requests.contains_key(&v1beta1));
}

#[tokio::test]
async fn modified_and_deleted_objects_reach_the_sink() {
    let mut h = start(&["v1"], true, |_| {});
    h.wait_for("the initial policies", |p| p.len() == 4).await;

    let mut se = fixture_items(include_str!("../../../tests/fixtures/kube/serviceentries.json"))[0].clone();
    se["spec"]["hosts"] = json!(["api.dropboxapi.com", "www.googleapis.com", "api.github.com"]);
    h.api.put("ServiceEntry", se, false);
    let ps = h
        .wait_for("api.github.com added", |p| {
            hosts_of(p, "default/sleep-7b9f8c6d5-x2k4p").contains(&"api.github.com".to_string())
        })
        .await;
    assert!(hosts_of(&ps, "team-b/reviews-v2-7c8d9e6f5-klmno").contains(&"api.github.com".to_string()));
    assert!(
        !hosts_of(&ps, "team-a/productpage-v1-6f9d8c7b5-abcde").contains(&"api.github.com".to_string()),
        "team-a's Sidecar hides default/*"
    );

    // The mesh mode flips: every pod without its own Sidecar mode follows.
    let mut cm: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/kube/configmap-istio.json")).unwrap();
    cm["data"]["mesh"] = json!("outboundTrafficPolicy:\n  mode: ALLOW_ANY\nrootNamespace: istio-system\n");
    h.api.put("ConfigMap", cm, false);
    let ps = h.wait_for("mesh mode ALLOW_ANY", |p| p[0].mode == Mode::AllowAny).await;
    assert_eq!(ps[1].mode, Mode::RegistryOnly, "team-a's Sidecar still says REGISTRY_ONLY");

    h.api.delete("ServiceEntry", "istio-system", "external-svc-dns", false);
    h.wait_for("foo.bar.com gone", |p| {
        p.iter().all(|w| !w.registry.services.iter().any(|s| s.name == "external-svc-dns"))
    })
    .await;

    // A pod deleted from the node loses its policy.
    h.api.delete("Pod", "team-b", "reviews-v2-7c8d9e6f5-klmno", false);
    let ps = h.wait_for("reviews gone", |p| p.len() == 3).await;
    assert_eq!(names(&ps), &ALL_FOUR[..3]);
}

#[tokio::test]
async fn a_pod_is_applied_once_its_cgroup_appears() {
    let mut h = start(&["v1"], false, |_| {});
    let ps = h.wait_for("initial sync", |_| true).await;
    assert!(ps.is_empty(), "no cgroups yet: {ps:#?}");
    assert!(h.ready.load(Ordering::SeqCst), "ready even with every pod pending");

    // A new pod is scheduled; its cgroup appears a little later (the kubelet starts the sandbox).
    let pod = json!({"metadata": {"name": "httpbin-0", "namespace": "default", "uid": "c3c3c3c3-0000-4000-8000-000000000001", "labels": {"app": "httpbin"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "httpbin", "image": "kennethreitz/httpbin"}]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"}});
    h.api.put("Pod", pod.clone(), false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.rx.borrow().last().unwrap().is_empty(), "nothing applied without a cgroup");
    let dir = mk_pod_cgroup(&h.cgroups.0, &pod);
    let ps = h.wait_for("httpbin applied", |p| names(p) == ["default/httpbin-0"]).await;
    assert_eq!(ps[0].cgroups, vec![dir]);

    // The fixture pods' cgroups appear too (no watch event: found by the re-check).
    for pod in fixture_items(include_str!("../../../tests/fixtures/kube/pods.json")) {
        mk_pod_cgroup(&h.cgroups.0, &pod);
    }
    h.wait_for("all five", |p| p.len() == 5).await;
}

#[tokio::test]
async fn watches_resume_after_disconnects_and_relist_after_410() {
    let mut h = start(&["v1"], true, |_| {});
    h.wait_for("initial", |p| p.len() == 4).await;
    assert_eq!((h.api.count("ServiceEntry", "list"), h.api.count("ServiceEntry", "watch")), (1, 1));

    // The API server closes every watch: the watcher resumes from its resourceVersion (no
    // re-list), and later events still arrive.
    h.api.close_watches();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.api.count("ServiceEntry", "watch") < 2 || h.api.count("Pod", "watch") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "watches not resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.api.count("ServiceEntry", "list"), 1, "resumed without re-listing");
    let mut se = fixture_items(include_str!("../../../tests/fixtures/kube/serviceentries.json"))[0].clone();
    se["spec"]["hosts"] = json!(["api.dropboxapi.com"]);
    h.api.put("ServiceEntry", se, false);
    h.wait_for("after resume", |p| {
        hosts_of(p, "default/sleep-7b9f8c6d5-x2k4p") == ["api.dropboxapi.com", "foo.bar.com", "mymongodb.somedomain"]
    })
    .await;

    // Changes happen while the watches are down and history is compacted: resuming gets
    // 410 Gone, the watcher re-lists (after its backoff) and the state is right again.
    h.api.close_watches();
    h.api.delete("ServiceEntry", "default", "external-svc-mongocluster", true);
    h.api.put("ServiceEntry", json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "httpbin-ext", "namespace": "default", "uid": "new-1"},
        "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"}
    }), true);
    h.api.compact();
    let ps = h
        .wait_for("state after relist", |p| {
            hosts_of(p, "default/sleep-7b9f8c6d5-x2k4p") == ["api.dropboxapi.com", "foo.bar.com", "httpbin.org"]
        })
        .await;
    assert_eq!(names(&ps), ALL_FOUR);
    assert!(h.api.count("ServiceEntry", "list") >= 2, "re-listed after 410");
    assert!(h.ready.load(Ordering::SeqCst));
}

#[tokio::test]
async fn failed_initial_list_is_retried_and_ready_waits_for_it() {
    let mut h = start(&["v1"], true, |api| {
        let path = api.path_for("Sidecar");
        api.0.lock().unwrap().fail_next_list.push(path);
    });
    let ps = h.wait_for("policies after the retry", |p| p.len() == 4).await;
    assert_eq!(h.api.count("Sidecar", "list"), 2, "the failed list was retried");
    assert!(!h.sink.ready_at_apply.lock().unwrap()[0]);
    // The Sidecars were applied in the first set (no partial state before the full sync).
    assert_eq!(hosts_of(&ps, "team-a/ratings-v1-5d7f8b9c4-fghij"), ["en.wikipedia.org"]);
    assert_eq!(h.applies(), 1);
}

#[tokio::test]
async fn falls_back_to_v1beta1_when_v1_is_not_served() {
    let mut h = start(&["v1beta1"], true, |_| {});
    let ps = h.wait_for("policies", |p| p.len() == 4).await;
    assert_eq!(hosts_of(&ps, "team-a/ratings-v1-5d7f8b9c4-fghij"), ["en.wikipedia.org"]);
    let c = h.api.0.lock().unwrap();
    assert!(c.requests.contains_key(&("/apis/networking.istio.io/v1beta1/serviceentries".to_string(), "list")));
    assert!(!c.requests.keys().any(|(p, _)| p.starts_with("/apis/networking.istio.io/v1/")));
}

#[tokio::test]
async fn not_ready_while_istio_is_not_installed() {
    let h = start(&[], true, |_| {});
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.ready.load(Ordering::SeqCst));
    assert_eq!(h.applies(), 0);
    assert!(!h.task.is_finished(), "keeps retrying discovery");
}

#[test]
fn field_selectors_and_decoding() {
    assert_eq!(percent_decode("spec.nodeName%3Dnode-1"), "spec.nodeName=node-1");
    let pod = json!({"spec": {"nodeName": "node-1"}, "metadata": {"name": "x"}});
    assert!(field_selector_matches(&pod, "spec.nodeName=node-1"));
    assert!(!field_selector_matches(&pod, "spec.nodeName=node-2"));
    assert!(field_selector_matches(&pod, "metadata.name=x,spec.nodeName=node-1"));
}
