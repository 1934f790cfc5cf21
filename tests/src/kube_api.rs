//! An in-process fake Kubernetes API server for the daemon's `--kubernetes` mode: hyper over TCP
//! on 127.0.0.1, speaking the real list and watch protocol with real Kubernetes JSON objects.
//!
//! - `GET <collection>` lists (`{kind: XList, metadata: {resourceVersion}, items}`), honouring
//!   `fieldSelector` (`a.b=c`, comma-separated) and ignoring `limit` (one page);
//! - `GET <collection>?watch=true&resourceVersion=N` streams newline-delimited watch events
//!   (`ADDED`/`MODIFIED`/`DELETED`) — every change after `N` from the collection's history, then
//!   live ones — with chunked transfer encoding, as the API server does;
//! - discovery of `networking.istio.io/v1` (an APIResourceList);
//! - [`FakeApi::set_down`] makes it refuse every request with 503 and end open watches (an API
//!   server that cannot be reached).
//!
//! Collections: pods, namespaces, services, endpointslices, configmaps (istio-system), and the
//! Istio kinds ServiceEntry, DestinationRule, Sidecar, WorkloadEntry. [`FakeApi::kubeconfig`] writes a kubeconfig pointing at it.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

struct Collection {
    list_kind: &'static str,
    api_version: &'static str,
    items: BTreeMap<String, Value>,
    /// (resourceVersion, event line) of every change.
    history: Vec<(u64, String)>,
    watchers: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    down: bool,
    collections: BTreeMap<String, Collection>,
    requests: BTreeMap<String, usize>,
}

/// The fake API server; stops with its runtime when dropped.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

const ISTIO: &str = "/apis/networking.istio.io/v1";

fn collection_path(kind: &str) -> &'static str {
    match kind {
        "Pod" => "/api/v1/pods",
        "Namespace" => "/api/v1/namespaces",
        "Service" => "/api/v1/services",
        "EndpointSlice" => "/apis/discovery.k8s.io/v1/endpointslices",
        "ConfigMap" => "/api/v1/namespaces/istio-system/configmaps",
        "ServiceEntry" => "/apis/networking.istio.io/v1/serviceentries",
        "DestinationRule" => "/apis/networking.istio.io/v1/destinationrules",
        "Sidecar" => "/apis/networking.istio.io/v1/sidecars",
        "WorkloadEntry" => "/apis/networking.istio.io/v1/workloadentries",
        k => panic!("the fake API server has no collection for {k}"),
    }
}

fn key_of(o: &Value) -> String {
    format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or(""))
}

fn field_selector_matches(o: &Value, sel: &str) -> bool {
    sel.split(',').filter(|t| !t.is_empty()).all(|t| {
        let Some((path, want)) = t.split_once('=') else { return true };
        o.pointer(&format!("/{}", path.replace('.', "/"))).and_then(Value::as_str) == Some(want)
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00"), 16).unwrap_or(0));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(code: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut st = State { rv: 100, ..Default::default() };
        for (kind, list_kind, av) in [
            ("Pod", "PodList", "v1"),
            ("Namespace", "NamespaceList", "v1"),
            ("Service", "ServiceList", "v1"),
            ("EndpointSlice", "EndpointSliceList", "discovery.k8s.io/v1"),
            ("ConfigMap", "ConfigMapList", "v1"),
            ("ServiceEntry", "ServiceEntryList", "networking.istio.io/v1"),
            ("DestinationRule", "DestinationRuleList", "networking.istio.io/v1"),
            ("Sidecar", "SidecarList", "networking.istio.io/v1"),
            ("WorkloadEntry", "WorkloadEntryList", "networking.istio.io/v1"),
        ] {
            st.collections.insert(
                collection_path(kind).to_string(),
                Collection { list_kind, api_version: av, items: BTreeMap::new(), history: vec![], watchers: vec![] },
            );
        }
        let state = Arc::new(Mutex::new(st));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let s2 = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let st = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(respond(&st, &req)) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeApi { state, addr, _rt: rt }
    }

    /// A kubeconfig for this server (no credentials: the fake authorizes everything).
    pub fn kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(path, text).unwrap();
    }

    /// Create or replace an object (kind as in Kubernetes: "Pod", "Service", ...).
    pub fn put(&self, kind: &str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        let col = st.collections.get_mut(collection_path(kind)).unwrap();
        let key = key_of(&obj);
        let ty = if col.items.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        col.items.insert(key, obj.clone());
        let line = format!("{}\n", json!({"type": ty, "object": obj}));
        col.history.push((rv, line.clone()));
        col.watchers.retain(|(sel, w)| !field_selector_matches(&obj, sel) || w.send(Bytes::from(line.clone())).is_ok());
    }

    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let col = st.collections.get_mut(collection_path(kind)).unwrap();
        let Some(mut obj) = col.items.remove(&format!("{ns}/{name}")) else { return };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let line = format!("{}\n", json!({"type": "DELETED", "object": obj}));
        col.history.push((rv, line.clone()));
        col.watchers.retain(|(sel, w)| !field_selector_matches(&obj, sel) || w.send(Bytes::from(line.clone())).is_ok());
    }

    /// Unreachable (503 to everything, open watches ended) or back.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state.lock().unwrap();
        st.down = down;
        if down {
            for c in st.collections.values_mut() {
                c.watchers.clear();
            }
        }
    }

    /// Requests served per path (lists and watches).
    pub fn requests(&self, path: &str) -> usize {
        *self.state.lock().unwrap().requests.get(path).unwrap_or(&0)
    }
}

fn respond(state: &Arc<Mutex<State>>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let mut st = state.lock().unwrap();
    *st.requests.entry(path.clone()).or_default() += 1;
    if st.down {
        return full(StatusCode::SERVICE_UNAVAILABLE, status(503, "ServiceUnavailable"));
    }
    if path == ISTIO {
        let res = |name: &str, kind: &str| {
            json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
                   "verbs": ["get", "list", "watch"]})
        };
        return full(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "networking.istio.io/v1",
                   "resources": [res("serviceentries", "ServiceEntry"), res("destinationrules", "DestinationRule"), res("sidecars", "Sidecar"), res("workloadentries", "WorkloadEntry")]}),
        );
    }
    let rv = st.rv;
    let Some(col) = st.collections.get_mut(&path) else {
        return full(StatusCode::NOT_FOUND, status(404, "NotFound"));
    };
    let sel = query.get("fieldSelector").cloned().unwrap_or_default();
    if query.get("watch").is_none_or(|w| w != "true" && w != "1") {
        let items: Vec<&Value> = col.items.values().filter(|o| field_selector_matches(o, &sel)).collect();
        return full(
            StatusCode::OK,
            json!({"kind": col.list_kind, "apiVersion": col.api_version, "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    for (v, line) in &col.history {
        let obj: Value = serde_json::from_str(line).unwrap_or_default();
        if *v > from && field_selector_matches(&obj["object"], &sel) {
            let _ = tx.send(Bytes::from(line.clone()));
        }
    }
    col.watchers.push((sel, tx));
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}
