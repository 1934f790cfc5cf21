//! Admin API tests: real sockets on 127.0.0.1, port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use hyper::header;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{self, ClientError, format_endpoint_table, format_expiry};
use super::model::{EndpointView, MapStats, PortView, Registryz, ServiceView};
use super::server::{self, AdminSource};

fn port(number: u16, protocol: &str) -> PortView {
    PortView { number, protocol: protocol.into(), name: protocol.to_lowercase(), target_port: None }
}

fn ep(
    address: &str,
    host: Option<&str>,
    source: &str,
    expires: Option<u64>,
    ports: &[u16],
    status: &str,
) -> EndpointView {
    EndpointView {
        address: address.into(),
        host: host.map(Into::into),
        source: source.into(),
        expires_in_secs: expires,
        ports: ports.to_vec(),
        protocol: "tcp".into(),
        status: status.into(),
    }
}

fn svc(
    id: u32,
    name: &str,
    hosts: &[&str],
    ports: Vec<PortView>,
    resolution: &str,
    endpoints: Vec<EndpointView>,
) -> ServiceView {
    ServiceView {
        id,
        name: name.into(),
        namespace: name.split('/').next().unwrap().into(),
        hosts: hosts.iter().map(|h| (*h).into()).collect(),
        ports,
        resolution: resolution.into(),
        location: "MESH_EXTERNAL".into(),
        source: format!("registry.yaml:{}", id * 10),
        endpoints,
    }
}

fn sample() -> Registryz {
    Registryz {
        mode: "REGISTRY_ONLY".into(),
        mode_source: "registry.yaml:1".into(),
        generated_at: "2025-01-31T12:34:56Z".into(),
        services: vec![
            svc(
                4,
                "default/wild",
                &["*.example.org"],
                vec![port(443, "TLS")],
                "NONE",
                vec![ep("93.184.216.34", Some("www.example.org"), "learned", Some(250), &[443], "HEALTHY")],
            ),
            svc(
                1,
                "default/api",
                &["api.example.com"],
                vec![port(443, "HTTPS")],
                "STATIC",
                vec![
                    ep("2001:db8::1", None, "static", None, &[443], "HEALTHY"),
                    ep("10.0.0.5", None, "static", None, &[443], "HEALTHY"),
                ],
            ),
            svc(
                3,
                "default/github",
                &["github.com"],
                vec![port(443, "TLS")],
                "DNS",
                vec![
                    ep("140.82.112.4", Some("github.com"), "resolved", Some(0), &[443], "STALE"),
                    ep("140.82.112.3", Some("github.com"), "resolved", Some(29), &[443], "HEALTHY"),
                ],
            ),
            svc(
                2,
                "corp/intranet",
                &["corp.internal"],
                vec![port(8443, "TCP")],
                "CLI",
                vec![ep("10.0.0.0/8", None, "cli", None, &[], "HEALTHY")],
            ),
        ],
        map: MapStats { allow_entries: 6, allow_capacity: 65536, learned_entries: 1 },
    }
}

struct Fake {
    reg: Registryz,
    ready: AtomicBool,
}

impl AdminSource for Fake {
    fn registryz(&self) -> Registryz {
        self.reg.clone()
    }
    fn metrics(&self, format: crate::metrics::Format) -> String {
        let m = crate::metrics::Metrics::new();
        let c = crate::metrics::ValueCollector::new().gauge("allow_entries", "Entries", || 6).counter(
            "reloads",
            "Reloads",
            || 2,
        );
        m.register(|r| r.sub_registry_with_prefix("enforcer").register_collector(Box::new(c)));
        m.encode(format)
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

struct Running {
    addr: SocketAddr,
    fake: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returned after shutdown")
            .unwrap()
            .unwrap();
    }
}

async fn start(ready: bool) -> Running {
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake { reg: sample(), ready: AtomicBool::new(ready) });
    let (tx, rx) = oneshot::channel::<()>();
    let source: Arc<dyn AdminSource> = fake.clone();
    let task = tokio::spawn(server::serve("admin listener", listener, source, async move {
        let _ = rx.await;
    }));
    Running { addr, fake, stop: Some(tx), task }
}

#[tokio::test]
async fn serve_and_fetch_roundtrip() {
    let srv = start(true).await;
    let got = client::fetch_registryz(srv.addr).await.unwrap();
    assert_eq!(got, sample());

    let resp = client::request(srv.addr, "GET", "/debug/registryz").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers[header::CONTENT_TYPE], "application/json");
    let body = String::from_utf8(resp.body.to_vec()).unwrap();
    assert!(body.contains("\n  \"mode\": \"REGISTRY_ONLY\""), "pretty JSON: {body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn registryz_service_filter() {
    let srv = start(true).await;
    for q in ["default/api", "api.example.com", "api"] {
        let got = client::fetch_registryz_filtered(srv.addr, Some(q)).await.unwrap();
        let names: Vec<_> = got.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/api"], "query {q}");
        assert_eq!(got.map, sample().map);
    }
    // Raw, percent-encoded query.
    let resp = client::request(srv.addr, "GET", "/debug/registryz?x=1&service=corp%2Fintranet").await.unwrap();
    let got: Registryz = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(got.services.len(), 1);
    assert_eq!(got.services[0].name, "corp/intranet");
    let none = client::fetch_registryz_filtered(srv.addr, Some("nope.example")).await.unwrap();
    assert!(none.services.is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn health_ready_404_405() {
    let srv = start(false).await;
    let get = |p: &'static str| client::request(srv.addr, "GET", p);

    let r = get("/healthz").await.unwrap();
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));

    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    srv.fake.ready.store(true, Ordering::SeqCst);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let r = get("/nope").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    for route in ["/debug/registryz", "/metrics", "/healthz", "/readyz"] {
        assert!(text.contains(route), "404 text lists {route}: {text}");
    }

    for method in ["POST", "PUT", "DELETE"] {
        let r = client::request(srv.addr, method, "/debug/registryz").await.unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers[header::ALLOW], "GET, HEAD");
    }

    // HEAD: headers, no body.
    let r = client::request(srv.addr, "HEAD", "/healthz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());

    let r = client::request(srv.addr, "GET", "/debug/registryz/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "trailing slash tolerated");
    srv.shutdown().await;
}

#[tokio::test]
async fn metrics_content_negotiation() {
    let srv = start(true).await;
    // No Accept: the Prometheus text format 0.0.4.
    let r = client::request(srv.addr, "GET", "/metrics").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(r.headers[header::VARY], "Accept");
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(
        body,
        "# HELP enforcer_allow_entries Entries.\n# TYPE enforcer_allow_entries gauge\nenforcer_allow_entries 6\n# HELP enforcer_reloads_total Reloads.\n# TYPE enforcer_reloads_total counter\nenforcer_reloads_total 2\n"
    );
    // Asked for: OpenMetrics.
    let r = client::request_with_headers(
        srv.addr,
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")],
    )
    .await
    .unwrap();
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(body.contains("# TYPE enforcer_reloads counter\nenforcer_reloads_total 2\n"), "{body:?}");
    assert!(body.ends_with("# EOF\n"), "{body:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn connection_refused_message() {
    // Bind then drop to get a port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = client::fetch_registryz(addr).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("no enforcer agent answering on {addr} (is `enforcer daemon` running? pass --admin ADDR)")
    );
}

#[tokio::test]
async fn bind_in_use_is_clear() {
    let first = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = first.local_addr().unwrap();
    let err = server::bind(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()) && msg.contains("already in use"), "{msg}");
}

#[tokio::test]
async fn shutdown_with_idle_keepalive_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let srv = start(true).await;
    // A client that keeps its connection open after one request.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    srv.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "idle connection did not block shutdown");
    // The server closed the idle connection.
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);
}

#[test]
fn endpoint_table_format() {
    let expected = "\
ENDPOINT           STATUS   OUTLIER CHECK  SERVICE                        EXPIRES  SOURCE
10.0.0.5:443       HEALTHY  OK             outbound|443||api.example.com  never    static
[2001:db8::1]:443  HEALTHY  OK             outbound|443||api.example.com  never    static
10.0.0.0/8:8443    HEALTHY  OK             outbound|8443||corp.internal   never    cli
140.82.112.3:443   HEALTHY  OK             outbound|443||github.com       29s      resolved
140.82.112.4:443   STALE    OK             outbound|443||github.com       0s       resolved
93.184.216.34:443  HEALTHY  OK             outbound|443||www.example.org  4m10s    learned
";
    assert_eq!(format_endpoint_table(&sample()), expected);
}

#[test]
fn endpoint_table_multi_port_and_empty() {
    let mut r = sample();
    r.services = vec![svc(
        9,
        "default/multi",
        &["m.example.com"],
        vec![port(443, "TLS"), port(80, "HTTP")],
        "STATIC",
        vec![ep("2001:db8::/32", None, "static", Some(3723), &[], "HEALTHY")],
    )];
    let got = format_endpoint_table(&r);
    let lines: Vec<_> = got.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("[2001:db8::/32]:80  "));
    assert!(lines[2].starts_with("[2001:db8::/32]:443  "));
    assert!(lines[2].contains("  outbound|443||m.example.com  1h2m3s  "));

    r.services.clear();
    assert_eq!(format_endpoint_table(&r), "ENDPOINT  STATUS  OUTLIER CHECK  SERVICE  EXPIRES  SOURCE\n");
}

#[test]
fn expiry_format() {
    assert_eq!(format_expiry(None), "never");
    assert_eq!(format_expiry(Some(0)), "0s");
    assert_eq!(format_expiry(Some(29)), "29s");
    assert_eq!(format_expiry(Some(250)), "4m10s");
    assert_eq!(format_expiry(Some(3600)), "1h0m0s");
}
