//! The proxy against real sockets on 127.0.0.1: an rcgen CA, a tokio-rustls + hyper upstream, and
//! a ProxyPolicy that maps every client to the test's original destination.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use ::http::{Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// A fresh CA and a server certificate for `names`, signed by it.
fn pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "enforcer test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), cert: leaf.der().clone(), key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()) }
}

fn temp_file(tag: &str, content: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "enforcer-proxy-test-{}-{}-{tag}.pem",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, content).unwrap();
    path
}

static ZEROS: [u8; 65536] = [0; 65536];

/// `remaining` bytes of zeros, streamed in 64 KiB frames, size unknown (chunked).
struct Zeros {
    remaining: u64,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn boxed<B>(b: B) -> TestBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// The test upstream's routes: /status/N, /bytes/N, /echo, /delay/MS (200 after MS
/// milliseconds). Every response says which upstream
/// connection served it (x-conn) and the Host it saw (x-seen-host).
async fn upstream_handler(conn: usize, req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    // HTTP/1: Host; HTTP/2: :authority.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let hop = req.headers().contains_key("x-hop");
    let version = format!("{:?}", req.version());
    let mut resp = if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        let mut r = Response::new(boxed(Full::new(Bytes::from(format!("status {code}")))));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(boxed(Zeros { remaining: n.parse().unwrap() }))
    } else if path == "/echo" {
        Response::new(boxed(req.into_body()))
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        Response::new(boxed(Full::new(Bytes::from("delayed"))))
    } else {
        let mut r = Response::new(boxed(Empty::new()));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    resp.headers_mut().insert("x-conn", conn.into());
    resp.headers_mut().insert("x-seen-host", host.parse().unwrap());
    resp.headers_mut().insert("x-saw-hop", if hop { "yes" } else { "no" }.parse().unwrap());
    resp.headers_mut().insert("x-version", version.parse().unwrap());
    Ok(resp)
}

struct TestUpstream {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepts: Arc<AtomicUsize>,
}

fn server_config(pki: &Pki) -> Arc<ServerConfig> {
    server_config_alpn(pki, &[b"http/1.1"])
}

fn server_config_alpn(pki: &Pki, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], PrivateKeyDer::Pkcs8(pki.key.clone_key()))
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS upstream that offers h2 and http/1.1 (ALPN) and serves both.
async fn start_h2_upstream(pki: &Pki) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let acceptor = TlsAcceptor::from(server_config_alpn(pki, &[b"h2", b"http/1.1"]));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let conn = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req| upstream_handler(conn, req));
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TestUpstream { addr, accepts }
}

/// A plain HTTP/1.1 upstream (h2c too when `h2c`) whose `/upgrade` answers 101 and then echoes
/// every byte back on the upgraded connection.
async fn start_plain_upstream(h2c: bool) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let conn = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| async move {
                    if req.uri().path() != "/upgrade" {
                        return upstream_handler(conn, req).await;
                    }
                    let proto = req.headers().get(header::UPGRADE).cloned();
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let mut r = Response::new(boxed(Empty::new()));
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut().insert(header::CONNECTION, "upgrade".parse().unwrap());
                    if let Some(p) = proto {
                        r.headers_mut().insert(header::UPGRADE, p);
                    }
                    Ok(r)
                });
                if h2c {
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    TestUpstream { addr, accepts }
}

async fn start_upstream(pki: &Pki) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let acceptor = TlsAcceptor::from(server_config(pki));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let conn = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req| upstream_handler(conn, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    TestUpstream { addr, accepts }
}

/// Accepts TCP connections and never says anything: TLS handshakes to it hang.
async fn start_silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

struct TestPolicy {
    original: Option<SocketAddr>,
    routes: Option<Routes>,
    events: Mutex<Vec<ProxyEvent>>,
}

impl ProxyPolicy for TestPolicy {
    fn accept(&self, _client: SocketAddr) -> Option<Accepted> {
        Some(Accepted { original: self.original?, workload: "test-app".into(), routes: self.routes.clone()? })
    }
    fn event(&self, e: ProxyEvent) {
        self.events.lock().unwrap().push(e);
    }
}

impl TestPolicy {
    fn events(&self) -> Vec<ProxyEvent> {
        self.events.lock().unwrap().clone()
    }
}

fn svc(host: &str) -> ServiceLabels {
    ServiceLabels {
        destination_service: host.into(),
        destination_service_name: host.into(),
        destination_service_namespace: "egress".into(),
    }
}

fn vhost(host: &str, port: u16, tls: Option<TlsOrigination>, connect_timeout: Duration) -> VirtualHost {
    VirtualHost {
        domains: vec![host.into(), "127.0.0.1".into()],
        service: svc(host),
        upstream: Upstream { port, tls, host: host.into(), connect_timeout },
    }
}

fn http_routes(vhosts: Vec<VirtualHost>, fallback: Fallback) -> Routes {
    Routes::Http(Arc::new(HttpRoutes { vhosts, fallback, allow_connect: false, http2: false }))
}

fn originate(upstream_port: u16, tls: TlsOrigination, connect_timeout: Duration) -> Routes {
    http_routes(vec![vhost("api.test", upstream_port, Some(tls), connect_timeout)], Fallback::BlackHole)
}

fn with_ca(pki: &Pki) -> TlsOrigination {
    TlsOrigination { ca_certificates: Some(temp_file("ca", &pki.ca_pem)), ..Default::default() }
}

struct Running {
    addr: SocketAddr,
    policy: Arc<TestPolicy>,
    metrics: ProxyMetrics,
    _stop: oneshot::Sender<()>,
}

/// Starts a proxy whose every client came for `original`, routed by `route`. For Originate the
/// original's port is arbitrary (80): the upstream is original.ip():upstream_port.
async fn start_proxy(original: Option<SocketAddr>, routes: Option<Routes>) -> Running {
    start_proxy_idle(original, routes, None).await
}

/// [`start_proxy`] with a client idle timeout.
async fn start_proxy_idle(original: Option<SocketAddr>, routes: Option<Routes>, idle: Option<Duration>) -> Running {
    init_tracing();
    let policy = Arc::new(TestPolicy { original, routes, events: Mutex::default() });
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_mark: Some(0x4e),
        threads: 1,
        client_idle_timeout: idle,
    };
    let proxy = Proxy::bind(cfg, policy.clone()).await.unwrap();
    let addr = proxy.local_addr();
    let metrics = proxy.metrics();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Running { addr, policy, metrics, _stop: tx }
}

fn port80() -> SocketAddr {
    "127.0.0.1:80".parse().unwrap()
}

type Sender = hyper::client::conn::http1::SendRequest<TestBody>;

async fn http_conn(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

struct Got {
    status: StatusCode,
    headers: ::http::HeaderMap,
    len: u64,
    body: Vec<u8>,
}

/// Sends a request and reads the whole response, keeping at most 4 KiB of its body.
async fn send(sender: &mut Sender, method: &str, path: &str, body: TestBody) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "api.test")
        .header("x-hop", "dropped")
        .header(header::CONNECTION, "keep-alive, x-hop")
        .body(body)
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut len = 0u64;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len() as u64;
            if kept.len() < 4096 {
                kept.extend_from_slice(&data[..data.len().min(4096 - kept.len())]);
            }
        }
    }
    Got { status: parts.status, headers: parts.headers, len, body: kept }
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    let mut s = http_conn(addr).await;
    send(&mut s, "GET", path, boxed(Empty::new())).await
}

fn scrape(m: &ProxyMetrics) -> String {
    let mut reg = Registry::default();
    m.register(&mut reg);
    let mut out = String::new();
    encode(&mut out, &reg).unwrap();
    out
}

/// Polls the metrics until `needle` shows (a response's metrics are recorded as its body ends,
/// which may be just after the client read it).
async fn wait_metric(m: &ProxyMetrics, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(m);
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the `name` series whose labels include every (key, value) of `labels`.
fn series_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_series(m: &ProxyMetrics, name: &str, labels: &[(&str, &str)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(m);
        if series_with(&text, name, labels).is_some() || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests_line(code: u16, flags: &str) -> String {
    format!(
        "istio_requests_total{{reporter=\"source\",source_workload=\"test-app\",\
source_canonical_service=\"test-app\",source_canonical_revision=\"latest\",source_workload_namespace=\"unknown\",\
source_principal=\"unknown\",source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\",\
destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",\
destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"api.test\",\
destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\",\
destination_service_name=\"api.test\",destination_service_namespace=\"egress\",destination_cluster=\"unknown\",\
request_protocol=\"http\",response_flags=\"{flags}\",connection_security_policy=\"unknown\",\
response_code=\"{code}\",grpc_response_status=\"\"}} 1"
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP in, TLS out

#[tokio::test]
async fn originates_tls_with_the_ca_file_and_counts_statuses() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;

    for code in [200u16, 404, 500] {
        let got = get(p.addr, &format!("/status/{code}")).await;
        assert_eq!(got.status.as_u16(), code);
        assert_eq!(got.body, format!("status {code}").as_bytes());
        assert_eq!(got.headers["x-seen-host"], "api.test", "Host kept as the client sent it");
        assert_eq!(got.headers["x-saw-hop"], "no", "headers named by Connection are hop-by-hop");
    }
    for code in [200u16, 404, 500] {
        let text = wait_metric(&p.metrics, &requests_line(code, "-")).await;
        assert!(text.contains(&requests_line(code, "-")), "{code} missing from:\n{text}");
    }
    let text = scrape(&p.metrics);
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
    assert!(text.contains("le=\"3600000.0\""), "{text}");
    assert!(text.contains("istio_response_bytes_sum{"), "{text}");
    assert!(text.contains("istio_request_bytes_count{"), "{text}");
    assert!(p.policy.events().is_empty(), "{:?}", p.policy.events());
}

/// One raw request to the proxy of `api.test` (TLS origination); the whole answer, lowercased,
/// once the proxy closes the connection.
async fn raw_request_to_api_test(request: &[u8]) -> String {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[tokio::test]
async fn missing_host_header_gets_the_route_host() {
    // HTTP/1.0 without Host.
    let out = raw_request_to_api_test(b"GET /status/200 HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("http/1.0 200"), "{out}");
    assert!(out.contains("x-seen-host: api.test"), "{out}");
}

#[tokio::test]
async fn an_absolute_form_request_goes_upstream_in_origin_form_with_its_authority_as_host() {
    // RFC 9112 3.2.2: the absolute form's authority is the Host (the header is ignored).
    let out = raw_request_to_api_test(
        b"GET http://api.test/status/201 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("http/1.1 201"), "the upstream's /status/201 answered: {out}");
    assert!(out.contains("x-seen-host: api.test"), "{out}");
}

#[tokio::test]
async fn wrong_ca_is_a_503_with_the_tls_error_and_an_event() {
    let pki_real = pki(&["api.test"]);
    let pki_other = pki(&["api.test"]);
    let up = start_upstream(&pki_real).await;
    let p =
        start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki_other), Duration::from_secs(5)))).await;

    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.starts_with(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, \
transport failure reason: TLS error: "
        ),
        "{body}"
    );
    assert!(body.contains("invalid peer certificate"), "{body}");
    let events = p.policy.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, ProxyEventKind::TlsVerifyFailed);
    assert_eq!(events[0].original, port80());
    let text = wait_metric(&p.metrics, &requests_line(503, "UF")).await;
    assert!(text.contains(&requests_line(503, "UF")), "{text}");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_unknown_ca() {
    let pki_real = pki(&["api.test"]);
    let pki_other = pki(&["api.test"]);
    let up = start_upstream(&pki_real).await;
    let tls = TlsOrigination { insecure_skip_verify: true, ..with_ca(&pki_other) };
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), tls, Duration::from_secs(5)))).await;
    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(p.policy.events().is_empty());
}

#[tokio::test]
async fn sni_and_subject_alt_names_are_verified() {
    let pki = pki(&["api.test", "alt.test"]);
    let up = start_upstream(&pki).await;

    // SNI other than the certificate's names: rejected.
    let tls = TlsOrigination { sni: Some("nope.test".into()), ..with_ca(&pki) };
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), tls, Duration::from_secs(5)))).await;
    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&got.body).contains("TLS error: invalid peer certificate"));
    assert_eq!(p.policy.events()[0].kind, ProxyEventKind::TlsVerifyFailed);

    // subjectAltNames name the certificate: accepted whatever the SNI.
    let tls = TlsOrigination {
        sni: Some("nope.test".into()),
        subject_alt_names: vec!["spiffe://x/y".into(), "alt.test".into()],
        ..with_ca(&pki)
    };
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), tls, Duration::from_secs(5)))).await;
    assert_eq!(get(p.addr, "/status/200").await.status, StatusCode::OK);

    // subjectAltNames the certificate does not have: rejected.
    let tls = TlsOrigination { subject_alt_names: vec!["other.test".into()], ..with_ca(&pki) };
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), tls, Duration::from_secs(5)))).await;
    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(p.policy.events()[0].kind, ProxyEventKind::TlsVerifyFailed);
}

#[tokio::test]
async fn missing_ca_file_is_a_503() {
    let tls = TlsOrigination { ca_certificates: Some("/nonexistent/ca.pem".into()), ..Default::default() };
    let p = start_proxy(Some(port80()), Some(originate(1, tls, Duration::from_secs(5)))).await;
    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&got.body);
    assert!(body.contains("TLS error: cannot read caCertificates /nonexistent/ca.pem"), "{body}");
}

#[tokio::test]
async fn upstream_down_is_a_fast_503_uf() {
    let down = closed_port().await;
    let p =
        start_proxy(Some(port80()), Some(originate(down.port(), TlsOrigination::default(), Duration::from_secs(5))))
            .await;
    let t = Instant::now();
    let got = get(p.addr, "/status/200").await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
    );
    assert_eq!(p.policy.events()[0].kind, ProxyEventKind::UpstreamConnectFailed);
    let text = wait_metric(&p.metrics, &requests_line(503, "UF")).await;
    assert!(text.contains(&requests_line(503, "UF")), "{text}");
}

#[tokio::test]
async fn hanging_handshake_times_out_as_a_503() {
    let silent = start_silent_upstream().await;
    let p = start_proxy(
        Some(port80()),
        Some(originate(silent.port(), TlsOrigination::default(), Duration::from_millis(500))),
    )
    .await;
    let t = Instant::now();
    let got = get(p.addr, "/status/200").await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
    );
    assert_eq!(p.policy.events()[0].kind, ProxyEventKind::UpstreamTimeout);
    let text = wait_metric(&p.metrics, &requests_line(503, "UF")).await;
    assert!(text.contains(&requests_line(503, "UF")), "{text}");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_shared() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut s = http_conn(p.addr).await;
    let a = send(&mut s, "GET", "/status/200", boxed(Empty::new())).await;
    let b = send(&mut s, "GET", "/status/404", boxed(Empty::new())).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 404));
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1, "one upstream TLS connection");
    assert_eq!(a.headers["x-conn"], b.headers["x-conn"]);
    // A client connection open meanwhile needs a connection of its own (HTTP/1 carries one
    // request at a time).
    let c = get(p.addr, "/status/200").await;
    assert_eq!(c.status.as_u16(), 200);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2);
    assert_ne!(a.headers["x-conn"], c.headers["x-conn"]);
    // Once the client connections are closed, the next one takes over an idle upstream
    // connection instead of a new TLS handshake.
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = get(p.addr, "/status/200").await;
    assert_eq!(d.status.as_u16(), 200);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2, "an idle upstream connection was reused");
    assert!(d.headers["x-conn"] == a.headers["x-conn"] || d.headers["x-conn"] == c.headers["x-conn"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: api.test\r\n\r\n\
GET /status/404 HTTP/1.1\r\nHost: api.test\r\n\r\n\
GET /status/202 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    let a = out.find("HTTP/1.1 201").expect(&out);
    let b = out.find("HTTP/1.1 404").expect(&out);
    let c = out.find("HTTP/1.1 202").expect(&out);
    assert!(a < b && b < c, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_100_mb_response() {
    const N: u64 = 100 * 1024 * 1024;
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let got = get(p.addr, &format!("/bytes/{N}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.len, N);
    let needle = format!(
        "{} {N}",
        requests_line(200, "-").replace("istio_requests_total", "istio_response_bytes_sum").trim_end_matches(" 1")
    );
    let text = wait_metric(&p.metrics, &needle).await;
    assert!(text.contains(&needle), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_20_mb_upload_through_echo() {
    const N: u64 = 20 * 1024 * 1024;
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut s = http_conn(p.addr).await;
    let got = send(&mut s, "POST", "/echo", boxed(Zeros { remaining: N })).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.len, N);
    let needle = format!(
        "{} {N}",
        requests_line(200, "-").replace("istio_requests_total", "istio_request_bytes_sum").trim_end_matches(" 1")
    );
    let text = wait_metric(&p.metrics, &needle).await;
    assert!(text.contains(&needle), "{text}");
}

#[tokio::test]
async fn unknown_original_destination_is_closed() {
    let p = start_proxy(None, None).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await.unwrap();
    assert!(n.is_err() || out.is_empty(), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// TLS in, checked by SNI

fn client_tls(pki: &Pki) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

fn sni_route(_port: u16) -> Routes {
    Routes::Tls(Arc::new(SniRoutes {
        allowed: vec![("api.test".into(), svc("api.test")), ("*.wild.test".into(), svc("*.wild.test"))],
        fallback: Fallback::BlackHole,
    }))
}

#[tokio::test]
async fn allowed_sni_is_spliced_through() {
    let pki = pki(&["api.test", "a.wild.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(up.addr), Some(sni_route(up.addr.port()))).await;

    for name in ["api.test", "a.wild.test"] {
        let tcp = TcpStream::connect(p.addr).await.unwrap();
        let tls = client_tls(&pki)
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .expect("handshake with the upstream through the proxy");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let got = send(&mut sender, "GET", "/status/200", boxed(Empty::new())).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    assert!(p.policy.events().is_empty(), "{:?}", p.policy.events());
    let text = scrape(&p.metrics);
    assert!(
        text.contains("enforcer_sni_decisions_total{destination_service=\"api.test\",decision=\"allowed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("enforcer_sni_decisions_total{destination_service=\"*.wild.test\",decision=\"allowed\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn other_sni_is_closed_with_an_event() {
    let pki = pki(&["api.test", "other.test", "wild.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(up.addr), Some(sni_route(up.addr.port()))).await;

    for name in ["other.test", "wild.test"] {
        let tcp = TcpStream::connect(p.addr).await.unwrap();
        let res = client_tls(&pki).connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await;
        let Err(err) = res else { panic!("the proxy must not let this handshake through") };
        assert!(
            err.to_string().contains("UnrecognisedName")
                || err.to_string().contains("unrecognised")
                || err.kind() == std::io::ErrorKind::UnexpectedEof,
            "{err}"
        );
    }
    assert_eq!(up.accepts.load(Ordering::SeqCst), 0, "nothing reached the upstream");
    let events = p.policy.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, ProxyEventKind::SniDenied { sni: Some("other.test".into()) });
    assert_eq!(events[1].kind, ProxyEventKind::SniDenied { sni: Some("wild.test".into()) });
    let text = scrape(&p.metrics);
    assert!(
        text.contains("enforcer_sni_decisions_total{destination_service=\"BlackHoleCluster\",decision=\"denied\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn mismatched_protocols_are_refused() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    // Plain HTTP to an SNI-checked port: 400.
    let p = start_proxy(Some(up.addr), Some(sni_route(up.addr.port()))).await;
    let got = get(p.addr, "/status/200").await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    // TLS to an originating port: closed.
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let res = client_tls(&pki).connect(ServerName::try_from("api.test").unwrap(), tcp).await;
    assert!(res.is_err());
    assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Routing by Host

#[tokio::test]
async fn requests_are_routed_by_host_each_with_its_own_tls() {
    // Two services on one address, each with its own certificate, CA and upstream port.
    let (pa, pb) = (pki(&["a.test"]), pki(&["b.test"]));
    let (ua, ub) = (start_upstream(&pa).await, start_upstream(&pb).await);
    let routes = http_routes(
        vec![
            vhost("a.test", ua.addr.port(), Some(with_ca(&pa)), Duration::from_secs(5)),
            VirtualHost {
                domains: vec!["*.b.test".into(), "b.test".into()],
                ..vhost("b.test", ub.addr.port(), Some(with_ca(&pb)), Duration::from_secs(5))
            },
        ],
        Fallback::BlackHole,
    );
    let p = start_proxy(Some(port80()), Some(routes)).await;
    let mut s = http_conn(p.addr).await;
    // Upstream connections are kept per service (its address and TLS settings), whatever the
    // Host: `x.b.test` goes over `b.test`'s connection, and the client connection's first
    // upstream connection waits idle for `a.test` again.
    for (host, upstream, n) in [("a.test", &ua, 1), ("B.test:80", &ub, 1), ("x.b.test", &ub, 1), ("a.test", &ua, 1)] {
        let req = Request::builder().uri("/status/200").header(header::HOST, host).body(boxed(Empty::new())).unwrap();
        s.ready().await.unwrap();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
        assert_eq!(resp.headers()["x-seen-host"], host, "{host}");
        let _ = resp.into_body().collect().await;
        assert_eq!(upstream.accepts.load(Ordering::SeqCst), n, "{host} went to its own upstream");
    }
    // A Host the address does not list: Istio's REGISTRY_ONLY catch-all answers 502.
    let req = Request::builder().uri("/").header(header::HOST, "other.test").body(boxed(Empty::new())).unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("other.test"), "{body:?}");
    let events = p.policy.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, ProxyEventKind::HostDenied { host: Some("other.test".into()) });
    let labels = [
        ("source_workload", "test-app"),
        ("destination_service", "BlackHoleCluster"),
        ("destination_service_name", "BlackHoleCluster"),
        ("response_code", "502"),
        ("response_flags", "NR"),
    ];
    let text = wait_series(&p.metrics, "istio_requests_total", &labels).await;
    assert_eq!(series_with(&text, "istio_requests_total", &labels), Some(1.0), "{text}");
    assert!(text.contains("enforcer_proxy_refusals_total{reason=\"host_not_in_registry\"} 1"), "{text}");
}

#[tokio::test]
async fn a_host_naming_another_port_gets_no_route() {
    // Istio's domains for port 80 are `api.test` and `api.test:80`: `api.test:9999` on a
    // connection to port 80 is not the service (REGISTRY_ONLY: 502 NR; ALLOW_ANY: passthrough).
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut s = http_conn(p.addr).await;
    for (host, code) in [("api.test:9999", 502), ("api.test:", 502), ("API.test:80", 200), ("api.test", 200)] {
        let req = Request::builder().uri("/status/200").header(header::HOST, host).body(boxed(Empty::new())).unwrap();
        s.ready().await.unwrap();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), code, "{host}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if code == 502 {
            assert!(String::from_utf8_lossy(&body).contains("a port other than 80"), "{host}: {body:?}");
        }
    }
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1, "only the matching Hosts went upstream");
    let events = p.policy.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].kind, ProxyEventKind::HostDenied { host: Some("api.test:9999".into()) });
    assert!(events[0].detail.contains("a port other than 80"), "{}", events[0].detail);

    // ALLOW_ANY: to the original destination, unchanged (the service saw only the first ones).
    passes_through("api.test:9999", &pki, &up, 1).await;
}

/// Under ALLOW_ANY with the one service `api.test` (at `up`), a request with Host `host` goes to
/// the original destination (a plain server), unchanged, and not to the service, which has had
/// `up_before` connections; returns the proxy.
async fn passes_through(host: &str, pki: &Pki, up: &TestUpstream, up_before: usize) -> Running {
    let plain = start_plain_upstream(false).await;
    let routes = http_routes(
        vec![vhost("api.test", up.addr.port(), Some(with_ca(pki)), Duration::from_secs(5))],
        Fallback::Passthrough,
    );
    let p = start_proxy(Some(plain.addr), Some(routes)).await;
    let mut s = http_conn(p.addr).await;
    let req = Request::builder().uri("/status/201").header(header::HOST, host).body(boxed(Empty::new())).unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.headers()["x-seen-host"], host);
    assert_eq!(plain.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(up.accepts.load(Ordering::SeqCst), up_before, "not to the service");
    p
}

#[tokio::test]
async fn allow_any_passes_other_hosts_through_unchanged() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    // The original destination is the plain server: passthrough goes there, as sent.
    let p = passes_through("unlisted.test", &pki, &up, 0).await;
    let labels = [
        ("destination_service", "PassthroughCluster"),
        ("destination_service_name", "PassthroughCluster"),
        ("response_code", "201"),
        ("response_flags", "-"),
    ];
    let text = wait_series(&p.metrics, "istio_requests_total", &labels).await;
    assert_eq!(series_with(&text, "istio_requests_total", &labels), Some(1.0), "{text}");
    assert!(p.policy.events().is_empty());
}

#[tokio::test]
async fn connect_is_refused_with_405_unless_declared() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("HTTP_PROXY"), "{out}");
    assert_eq!(up.accepts.load(Ordering::SeqCst), 0, "nothing went upstream");
    let events = p.policy.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, ProxyEventKind::ConnectRefused);
    assert_eq!(events[0].detail, "evil.test:443");
    let text = scrape(&p.metrics);
    assert!(text.contains("enforcer_proxy_refusals_total{reason=\"connect_not_allowed\"} 1"), "{text}");
}

#[tokio::test]
async fn connect_is_tunnelled_on_an_http_proxy_port() {
    // The "upstream proxy" answers CONNECT with 200 and then echoes (its /upgrade handler is
    // reached for any CONNECT since the path is empty: use a dedicated echo behind 200).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let svc = service_fn(|mut req: Request<Incoming>| async move {
            assert_eq!(req.method(), Method::CONNECT);
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 64];
                    if let Ok(n) = io.read(&mut buf).await {
                        let _ = io.write_all(&buf[..n]).await;
                    }
                }
            });
            Ok::<_, Infallible>(Response::new(boxed(Empty::new())))
        });
        let _ =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).with_upgrades().await;
    });
    let routes = Routes::Http(Arc::new(HttpRoutes {
        vhosts: vec![vhost("proxy.test", addr.port(), None, Duration::from_secs(5))],
        fallback: Fallback::BlackHole,
        allow_connect: true,
        http2: false,
    }));
    let p = start_proxy(Some(addr), Some(routes)).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"CONNECT far.test:443 HTTP/1.1\r\nHost: far.test:443\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"ping").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"ping");
}

#[tokio::test]
async fn upgrades_are_tunnelled_both_ways() {
    let up = start_plain_upstream(false).await;
    let routes = http_routes(vec![vhost("ws.test", up.addr.port(), None, Duration::from_secs(5))], Fallback::BlackHole);
    let p = start_proxy(Some(up.addr), Some(routes)).await;
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], &[0x81, 0x05, 1, 2, 3, 4, 5][..]] {
        tcp.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, msg);
    }
    let line = "response_code=\"101\"";
    let text = wait_metric(&p.metrics, line).await;
    assert!(text.contains(line), "{text}");
}

#[tokio::test]
async fn h2c_from_the_app_goes_out_as_http2_when_the_upstream_offers_it() {
    let pki = pki(&["api.test"]);
    let up = start_h2_upstream(&pki).await;
    let routes = Routes::Http(Arc::new(HttpRoutes {
        vhosts: vec![vhost("api.test", up.addr.port(), Some(with_ca(&pki)), Duration::from_secs(5))],
        fallback: Fallback::BlackHole,
        allow_connect: false,
        http2: true,
    }));
    let p = start_proxy(Some(port80()), Some(routes)).await;
    // h2c with prior knowledge to the proxy.
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::builder().uri("http://api.test/status/200").body(boxed(Empty::new())).unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), ::http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-version"], "HTTP/2.0", "ALPN h2 to the upstream");
        assert_eq!(resp.headers()["x-seen-host"], "api.test");
    }
    // HTTP/1.1 on the same port still works (and also goes out over h2).
    let got = get(p.addr, "/status/204").await;
    assert_eq!(got.status.as_u16(), 204);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1, "one multiplexed upstream connection");
}

#[tokio::test]
async fn h2c_on_an_http1_port_gets_a_clear_status() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri("http://api.test/status/200").body(boxed(Empty::new())).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("not declared HTTP2 or GRPC"), "{body:?}");
    assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn plaintext_on_a_tls_port_is_an_event_and_a_counter() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(up.addr), Some(sni_route(up.addr.port()))).await;
    assert_eq!(get(p.addr, "/").await.status, StatusCode::BAD_REQUEST);
    let events = p.policy.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, ProxyEventKind::PlaintextOnTlsPort);
    let text = scrape(&p.metrics);
    assert!(text.contains("enforcer_proxy_refusals_total{reason=\"plaintext_on_tls_port\"} 1"), "{text}");
}

/// Reads from `tcp` until `needle` has arrived; everything read.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n =
            tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("answer in time").unwrap();
        assert!(n > 0, "closed before {needle:?} arrived: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the proxy closes `tcp` within `within` (reading nothing more).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn idle_client_connections_are_closed_after_the_idle_timeout() {
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let idle = Duration::from_millis(600);
    let routes = originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5));
    let p = start_proxy_idle(Some(port80()), Some(routes), Some(idle)).await;

    // A request whose answer takes longer than the idle timeout is not cut: the clock runs only
    // while no request is in progress...
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"GET /delay/1500 HTTP/1.1\r\nHost: api.test\r\n\r\n").await.unwrap();
    assert!(read_until(&mut tcp, "delayed").await.starts_with("HTTP/1.1 200"));
    // ...and a keep-alive connection used again within it stays open...
    tokio::time::sleep(idle / 3).await;
    tcp.write_all(b"GET /status/204 HTTP/1.1\r\nHost: api.test\r\n\r\n").await.unwrap();
    assert!(read_until(&mut tcp, "\r\n\r\n").await.starts_with("HTTP/1.1 204"));
    // ...until it has been idle that long.
    assert!(closed_within(&mut tcp, idle * 5).await, "the idle connection was closed");

    // Headers that never finish count as idle too (a slow-headers client).
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"GET /status/200 HTTP/1.1\r\nHost: api.test\r\n").await.unwrap();
    assert!(closed_within(&mut slow, idle * 5).await, "the unfinished request's connection was closed");

    // Without the timeout an idle connection stays.
    let q = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut kept = TcpStream::connect(q.addr).await.unwrap();
    kept.write_all(b"GET /status/200 HTTP/1.1\r\nHost: api.test\r\n\r\n").await.unwrap();
    read_until(&mut kept, "status 200").await;
    assert!(!closed_within(&mut kept, idle * 3).await, "no timeout: the connection stays open");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    init_tracing();
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let policy = Arc::new(TestPolicy {
        original: Some(port80()),
        routes: Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5))),
        events: Mutex::default(),
    });
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_mark: None,
        threads: 1,
        client_idle_timeout: None,
    };
    let proxy = Proxy::bind(cfg, policy).await.unwrap();
    let addr = proxy.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let running = tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    // An idle keep-alive client connection stays open across the shutdown request...
    let mut s = http_conn(addr).await;
    assert_eq!(send(&mut s, "GET", "/status/200", boxed(Empty::new())).await.status, StatusCode::OK);
    tx.send(()).unwrap();
    // ...but does not hold `run` up.
    tokio::time::timeout(Duration::from_secs(2), running).await.expect("run returns promptly").unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

/// Not a check but a measurement: `cargo xtask bench proxy-instructions` runs it under
/// callgrind twice, with two request counts, and reads the proxy's instructions per request
/// from the difference. Requests go one after another over one keep-alive connection, TLS
/// originated to an in-process upstream; every answer is checked, so a broken proxy is not
/// measured.
#[tokio::test]
#[ignore = "a measurement, run by `cargo xtask bench proxy-instructions`"]
async fn requests_for_instruction_counts() {
    let n: u32 = std::env::var("ENFORCER_PROXY_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let pki = pki(&["api.test"]);
    let up = start_upstream(&pki).await;
    let p = start_proxy(Some(port80()), Some(originate(up.addr.port(), with_ca(&pki), Duration::from_secs(5)))).await;
    let mut s = http_conn(p.addr).await;
    for _ in 0..n {
        let got = send(&mut s, "GET", "/status/200", boxed(Empty::new())).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, b"status 200");
    }
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1, "one upstream connection for all the requests");
}
