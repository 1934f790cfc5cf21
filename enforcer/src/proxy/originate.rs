//! HTTP in, TLS out: hyper's HTTP/1.1 server on the redirected connection, and hyper-util's
//! pooled client over rustls to the upstream (one client, so one keep-alive pool, per
//! upstream address + SNI + TLS settings). Bodies stream both ways; byte counts and durations are
//! recorded when the response body ends.

use std::{
    collections::HashMap,
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::{debug, warn};

use super::{
    ProxyEvent, ProxyEventKind, ServiceLabels, Shared, TlsOrigination,
    metrics::{IstioHttpLabels, ProxyMetrics},
    net, tls,
};

/// How long an idle upstream keep-alive connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Above this many distinct upstream clients (stale policy generations), the map is reset.
const MAX_POOLS: usize = 1024;

const RESET_BEFORE_HEADERS: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

type BoxError = Box<dyn StdError + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;
type UpClient = Client<Connector, CountingBody>;

/// Route::Originate, unpacked.
pub(crate) struct OriginateRoute {
    pub service: ServiceLabels,
    pub host: String,
    pub upstream_port: u16,
    pub tls: TlsOrigination,
    pub connect_timeout: Duration,
}

// ---------------------------------------------------------------------------------------------
// Upstream connections

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connection failure: {0}")]
    Tcp(io::Error),
    #[error("connection timeout")]
    Timeout,
    #[error("TLS error: {0}")]
    Tls(rustls::Error),
    #[error("connection failure during the TLS handshake: {0}")]
    Handshake(io::Error),
}

struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    timeout: Duration,
    mark: Option<u32>,
}

/// hyper-util's connector: TCP (marked) + rustls handshake, both within the connect timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    target: Arc<Target>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let t = self.target.clone();
        Box::pin(async move {
            let attempt = async {
                let tcp = net::connect(t.addr, t.mark).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::TimedOut { ConnectError::Timeout } else { ConnectError::Tcp(e) }
                })?;
                let connector = TlsConnector::from(t.config.clone());
                let tls = connector.connect(t.server_name.clone(), tcp).await.map_err(|e| {
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(te) => ConnectError::Tls(te.clone()),
                        None => ConnectError::Handshake(e),
                    }
                })?;
                Ok(TokioIo::new(UpstreamStream(tls)))
            };
            match tokio::time::timeout(t.timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout),
            }
        })
    }
}

/// A TLS stream to the upstream, with the metadata hyper-util's pool wants.
pub(crate) struct UpstreamStream(TlsStream<TcpStream>);

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    sni: String,
    tls: TlsOrigination,
    timeout: Duration,
    /// The CA file's mtime: a rewritten file gets a fresh config (and pool).
    ca_mtime: Option<SystemTime>,
}

/// Upstream clients (each with its keep-alive pool), by upstream address + SNI + TLS settings.
#[derive(Default)]
pub(crate) struct Pools {
    map: Mutex<HashMap<PoolKey, UpClient>>,
}

impl Pools {
    fn client(
        &self,
        addr: SocketAddr,
        sni: &str,
        route: &OriginateRoute,
        mark: Option<u32>,
    ) -> Result<UpClient, String> {
        let ca_mtime = route
            .tls
            .ca_certificates
            .as_ref()
            .and_then(|p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let key =
            PoolKey { addr, sni: sni.to_owned(), tls: route.tls.clone(), timeout: route.connect_timeout, ca_mtime };
        if let Some(c) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let server_name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("invalid SNI {sni:?}: {e}"))?;
        let config = tls::client_config(&route.tls)?;
        let connector =
            Connector { target: Arc::new(Target { addr, server_name, config, timeout: route.connect_timeout, mark }) };
        let client: UpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_POOLS {
            map.clear();
        }
        Ok(map.entry(key).or_insert(client).clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// The request body, counted as it streams upstream.
pub(crate) struct CountingBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request's metrics, recorded once when its response ends (or is abandoned).
struct Recording {
    metrics: ProxyMetrics,
    workload: Arc<str>,
    service: Arc<ServiceLabels>,
    code: u16,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
}

impl Recording {
    fn finish(self, resp_bytes: u64, flags: &str) {
        let labels = IstioHttpLabels::new(&self.workload, &self.service, self.code, flags);
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.metrics.record(&labels, ms, self.req_bytes.load(Ordering::Relaxed), resp_bytes);
    }
}

/// The upstream's response body on its way to the client, counted; records the request at its
/// end. Dropped before its end: the client went away (flag "DC").
struct RecordingBody {
    inner: Incoming,
    bytes: u64,
    rec: Option<Recording>,
}

impl RecordingBody {
    fn finish(&mut self, flags: &str) {
        if let Some(rec) = self.rec.take() {
            rec.finish(self.bytes, flags);
        }
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish("-");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish("-");
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                debug!(error = %e, "proxy: upstream response body failed");
                // Envoy: upstream connection termination after the headers.
                this.finish("UC");
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        let flags = if self.inner.is_end_stream() { "-" } else { "DC" };
        self.finish(flags);
    }
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed_unsync()
}

// ---------------------------------------------------------------------------------------------
// Downstream

/// Headers that belong to one hop (RFC 9110 7.6.1), plus those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        // hyper answers 100-continue itself when the body is first read.
        header::EXPECT,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

struct ConnCtx {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    original: SocketAddr,
    upstream: SocketAddr,
    host: String,
    workload: Arc<str>,
    service: Arc<ServiceLabels>,
    client: Result<UpClient, String>,
}

impl ConnCtx {
    fn recording(&self, code: u16, start: Instant, req_bytes: Arc<AtomicU64>) -> Recording {
        Recording {
            metrics: self.shared.metrics.clone(),
            workload: self.workload.clone(),
            service: self.service.clone(),
            code,
            start,
            req_bytes,
        }
    }

    fn event(&self, kind: ProxyEventKind, detail: String) {
        self.shared.policy.event(ProxyEvent { client: self.client_addr, original: self.original, kind, detail });
    }

    /// An Envoy-style local reply, recorded at once.
    fn local_reply(
        &self,
        start: Instant,
        req_bytes: Arc<AtomicU64>,
        status: StatusCode,
        flags: &str,
        body: String,
    ) -> Response<RespBody> {
        let len = body.len() as u64;
        self.recording(status.as_u16(), start, req_bytes).finish(len, flags);
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

/// Serves one redirected plain-HTTP connection until it closes (or shutdown is asked).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    route: OriginateRoute,
    mut stop: watch::Receiver<bool>,
) {
    let upstream = SocketAddr::new(original.ip(), route.upstream_port);
    let sni = route.tls.sni.clone().unwrap_or_else(|| route.host.clone());
    let client = shared.pools.client(upstream, &sni, &route, shared.mark);
    if let Err(e) = &client {
        warn!(%peer, %original, error = %e, "proxy: cannot originate TLS for this destination");
    }
    let ctx = Arc::new(ConnCtx {
        workload: shared.policy.workload(peer).into(),
        shared,
        client_addr: peer,
        original,
        upstream,
        host: route.host,
        service: Arc::new(route.service),
        client,
    });
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy_request(ctx, req).await) }
    });
    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "proxy: client connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn proxy_request(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    let start = Instant::now();
    let req_bytes = Arc::new(AtomicU64::new(0));
    let client = match &ctx.client {
        Ok(c) => c.clone(),
        Err(e) => {
            let detail = format!("TLS error: {e}");
            ctx.event(ProxyEventKind::TlsVerifyFailed, detail.clone());
            let body = format!("{RESET_BEFORE_HEADERS}connection failure, transport failure reason: {detail}");
            return ctx.local_reply(start, req_bytes, StatusCode::SERVICE_UNAVAILABLE, "UF", body);
        }
    };

    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri: Uri = match format!("https://{}{}", ctx.upstream, path).parse() {
        Ok(u) => u,
        Err(e) => {
            let body = format!("bad request target: {e}\n");
            return ctx.local_reply(start, req_bytes, StatusCode::BAD_REQUEST, "-", body);
        }
    };
    if !parts.headers.contains_key(header::HOST) {
        let host = parts.uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| ctx.host.clone());
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.extensions = Default::default();
    let up_req = Request::from_parts(parts, CountingBody { inner: body, count: req_bytes.clone() });

    match client.request(up_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let rec = ctx.recording(parts.status.as_u16(), start, req_bytes);
            let body = RecordingBody { inner: body, bytes: 0, rec: Some(rec) };
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => upstream_failure(&ctx, start, req_bytes, &e),
    }
}

fn find_connect_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

fn upstream_failure(
    ctx: &ConnCtx,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
    e: &hyper_util::client::legacy::Error,
) -> Response<RespBody> {
    let (kind, reason, flags) = match find_connect_error(e) {
        Some(ConnectError::Timeout) => (Some(ProxyEventKind::UpstreamTimeout), "connection timeout".to_owned(), "UF"),
        Some(ConnectError::Tcp(_)) | Some(ConnectError::Handshake(_)) => {
            (Some(ProxyEventKind::UpstreamConnectFailed), "connection failure".to_owned(), "UF")
        }
        Some(ConnectError::Tls(te)) => {
            let kind = if tls::is_verify_error(te) {
                ProxyEventKind::TlsVerifyFailed
            } else {
                ProxyEventKind::UpstreamConnectFailed
            };
            let reason = format!("connection failure, transport failure reason: TLS error: {te}");
            (Some(kind), reason, "UF")
        }
        // Connected, then the upstream closed or reset before the response headers.
        None if e.is_connect() => (Some(ProxyEventKind::UpstreamConnectFailed), "connection failure".to_owned(), "UF"),
        None => (None, "connection termination".to_owned(), "UC"),
    };
    let detail = match find_connect_error(e) {
        Some(c) => c.to_string(),
        None => error_chain(e),
    };
    warn!(client = %ctx.client_addr, original = %ctx.original, upstream = %ctx.upstream,
        error = %detail, flags, "proxy: upstream request failed");
    if let Some(kind) = kind {
        ctx.event(kind, detail);
    }
    let body = format!("{RESET_BEFORE_HEADERS}{reason}");
    ctx.local_reply(start, req_bytes, StatusCode::SERVICE_UNAVAILABLE, flags, body)
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// Answers every request on the connection with 400 and closes it (plain HTTP where TLS was
/// expected).
pub(crate) async fn serve_bad_request(stream: TcpStream, message: &'static str) {
    let svc = service_fn(move |_req: Request<Incoming>| async move {
        let mut resp = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Ok::<_, Infallible>(resp)
    });
    let conn = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}
