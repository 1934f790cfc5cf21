//! Plain HTTP in: hyper's server on the redirected connection (HTTP/1.1; also h2c on ports
//! declared HTTP2/GRPC), every request routed by its Host ([`HttpRoutes::select`]) to its
//! service's upstream through hyper-util's pooled client ([`super::upstream`]), or to the
//! fallback. Bodies stream both ways; byte counts and durations are recorded when the response
//! body ends. `Upgrade` (WebSocket, ...) and allowed CONNECT requests become a tunnel once the
//! upstream agrees (101 / 2xx): both sides' upgraded connections are spliced.

use std::{
    convert::Infallible,
    error::Error as StdError,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, upgrade::OnUpgrade};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::watch};
use tracing::{debug, warn};

use super::{
    ConnInfo, Fallback, HttpRoutes, ProxyEventKind, ServiceLabels, Shared, Upstream,
    metrics::{RequestSeries, SeriesCache},
    route::{host_port, normalize_host},
    tls,
    upstream::{Affinity, AffinityError, ConnectError, Proto, UpstreamHandle},
};

const RESET_BEFORE_HEADERS: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";
/// Passthrough (ALLOW_ANY) connects within this.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn StdError + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

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
    series: RequestSeries,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
}

impl Recording {
    fn finish(self, resp_bytes: u64, flags: &'static str, grpc_status: Option<u32>) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.series.record(flags, grpc_status, ms, self.req_bytes.load(Ordering::Relaxed), resp_bytes);
    }
}

/// A `grpc-status` header's value.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// Is this a gRPC request (`content-type: application/grpc[+proto|;...]`)?
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc")))
}

/// The upstream's response body on its way to the client, counted; records the request at its
/// end (with the gRPC status of its headers or trailers). Dropped before its end: the client
/// went away (flag "DC").
struct RecordingBody {
    inner: Incoming,
    bytes: u64,
    grpc_status: Option<u32>,
    rec: Option<Recording>,
}

impl RecordingBody {
    fn finish(&mut self, flags: &'static str) {
        if let Some(rec) = self.rec.take() {
            rec.finish(self.bytes, flags, self.grpc_status);
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
                } else if let Some(t) = frame.trailers_ref()
                    && let Some(status) = grpc_status(t)
                {
                    this.grpc_status = Some(status);
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
// Headers

/// Does a Connection header name `token`?
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    lists(&headers.get_all(header::CONNECTION), token)
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: X`). `h2c` is
/// not one: the upstream connection is not the client's to switch (it is dropped, as Envoy does).
fn upgrade_requested(headers: &HeaderMap) -> bool {
    match headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()) {
        Some(p) => !p.trim().eq_ignore_ascii_case("h2c") && connection_has(headers, "upgrade"),
        None => false,
    }
}

/// Does one of the Connection header values list `token` (case-insensitively)?
fn lists(connection: &http::header::GetAll<'_, HeaderValue>, token: &str) -> bool {
    connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Headers that belong to one hop (RFC 9110 7.6.1), plus those the Connection header names.
/// `keep_upgrade`: an upgrade is being forwarded, so `Upgrade` and `Connection: upgrade` stay.
/// `TE` crosses only as "trailers" (gRPC needs it on HTTP/2); `Expect` is dropped because hyper
/// answers 100-continue itself when the body is first read.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (a message has a handful) against the Connection tokens parsed
    // once; nothing is allocated unless more than FEW headers go.
    let listed = ConnectionTokens::of(headers);
    let te_ok = || headers.get(header::TE).is_none_or(|v| v == "trailers");
    let mut doomed: [Option<HeaderName>; FEW] = Default::default();
    let (mut n, mut more) = (0, Vec::new());
    for name in headers.keys() {
        let drop = match *name {
            header::CONNECTION
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::PROXY_AUTHORIZATION
            | header::PROXY_AUTHENTICATE
            | header::EXPECT => true,
            // (Named by "Connection: upgrade" too; kept when the upgrade is forwarded.)
            header::UPGRADE => !keep_upgrade,
            header::TE => !te_ok() || listed.names(name),
            _ => name == "keep-alive" || name == "proxy-connection" || listed.names(name),
        };
        if drop {
            match doomed.get_mut(n) {
                Some(slot) => *slot = Some(name.clone()),
                None => more.push(name.clone()),
            }
            n += 1;
        }
    }
    for name in doomed.iter().flatten().chain(&more) {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// How many Connection tokens (and doomed names) are kept inline; a message with more is
/// handled all the same, through the slow path.
const FEW: usize = 8;

/// The comma-separated tokens of a message's Connection header(s), trimmed, parsed once: the
/// first [`FEW`] inline, the rest looked up in the header itself.
struct ConnectionTokens<'a> {
    few: [&'a str; FEW],
    n: usize,
    /// More than FEW tokens: `names` also searches the header values.
    overflow: Option<http::header::GetAll<'a, HeaderValue>>,
}

impl<'a> ConnectionTokens<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let all = headers.get_all(header::CONNECTION);
        let (mut few, mut n, mut overflow) = ([""; FEW], 0, None);
        let tokens = all.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim);
        for t in tokens.filter(|t| !t.is_empty()) {
            if n == FEW {
                overflow = Some(all);
                break;
            }
            few[n] = t;
            n += 1;
        }
        ConnectionTokens { few, n, overflow }
    }

    /// Do the tokens name this header (case-insensitively)?
    fn names(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        self.few[..self.n].iter().any(|t| t.eq_ignore_ascii_case(name))
            || self.overflow.as_ref().is_some_and(|all| lists(all, name))
    }
}

// ---------------------------------------------------------------------------------------------
// Downstream

/// A routing decision for one request.
#[derive(Clone, Copy)]
enum Target {
    VHost(usize),
    Passthrough,
}

struct ConnCtx {
    shared: Arc<Shared>,
    conn: ConnInfo,
    routes: Arc<HttpRoutes>,
    labels: Vec<Arc<ServiceLabels>>,
    /// Upstream clients, made on first use: per virtual host (then passthrough), per [`Proto`].
    clients: Vec<[OnceLock<Result<UpstreamHandle, String>>; 3]>,
    /// The upstream connection this client connection keeps between its HTTP/1 requests.
    affinity: Affinity,
    passthrough: Upstream,
    series: Arc<SeriesCache>,
    /// The original destination's address, as a Host to match.
    original_ip: String,
}

impl ConnCtx {
    fn upstream(&self, t: Target) -> &Upstream {
        match t {
            Target::VHost(i) => &self.routes.vhosts[i].upstream,
            Target::Passthrough => &self.passthrough,
        }
    }

    fn labels(&self, t: Target) -> Arc<ServiceLabels> {
        match t {
            Target::VHost(i) => self.labels[i].clone(),
            Target::Passthrough => ServiceLabels::passthrough(),
        }
    }

    fn client(&self, t: Target, proto: Proto) -> &Result<UpstreamHandle, String> {
        let i = match t {
            Target::VHost(i) => i,
            Target::Passthrough => self.routes.vhosts.len(),
        };
        let slot = match proto {
            Proto::Auto => 0,
            Proto::Http1 => 1,
            Proto::H2c => 2,
        };
        self.clients[i][slot].get_or_init(|| {
            let c = self.shared.pools.client(self.conn.original.ip(), self.upstream(t), proto, self.shared.mark);
            if let Err(e) = &c {
                warn!(client = %self.conn.client, original = %self.conn.original, error = %e,
                    "proxy: cannot originate TLS for this destination");
            }
            c
        })
    }

    fn series(&self, service: &Arc<ServiceLabels>, code: u16, grpc: bool) -> RequestSeries {
        RequestSeries::new(&self.series, service, code, grpc)
    }

    fn event(&self, kind: ProxyEventKind, detail: String) {
        self.shared.event(&self.conn, kind, detail);
    }

    /// An Envoy-style local reply, recorded at once.
    fn local_reply(
        &self,
        grpc: bool,
        service: &Arc<ServiceLabels>,
        start: Instant,
        status: StatusCode,
        flags: &'static str,
        body: String,
    ) -> Response<RespBody> {
        let len = body.len() as u64;
        Recording { series: self.series(service, status.as_u16(), grpc), start, req_bytes: Arc::default() }
            .finish(len, flags, None);
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        self.affinity.release(&self.shared.pools);
    }
}

/// Serves one redirected plain-HTTP connection until it closes (or shutdown is asked).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    conn: ConnInfo,
    routes: Arc<HttpRoutes>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = conn.client;
    let idle_timeout = shared.client_idle_timeout;
    let passthrough = Upstream {
        port: conn.original.port(),
        tls: None,
        host: conn.original.ip().to_string(),
        connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT,
    };
    let ctx = Arc::new(ConnCtx {
        series: SeriesCache::new(shared.metrics.clone(), conn.workload.clone()),
        original_ip: conn.original.ip().to_string(),
        labels: routes.vhosts.iter().map(|v| Arc::new(v.service.clone())).collect(),
        clients: (0..=routes.vhosts.len()).map(|_| Default::default()).collect(),
        affinity: Affinity::default(),
        shared,
        conn,
        routes: routes.clone(),
        passthrough,
    });
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy_request(ctx, req).await) }
    });
    // HTTP/1 and h2c (prior knowledge) are told apart by the preface; h2c is served only on
    // ports declared HTTP2/GRPC (elsewhere its requests get 505).
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's header-read timer runs from when the connection waits for a request's head until
    // the head is read: an idle timeout between keep-alive requests and a slow-headers one.
    if let Some(idle) = idle_timeout {
        builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    }
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            debug!(%peer, error = %e, "proxy: client connection ended with an error");
        },
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The authority a request names: its URI's (absolute form, HTTP/2 `:authority`), else Host.
/// Both share the request's bytes, so keeping one costs no copy.
#[derive(Clone)]
enum Named {
    Uri(http::uri::Authority),
    Host(HeaderValue),
}

impl Named {
    fn of(req: &Request<Incoming>) -> Option<Named> {
        let named = match req.uri().authority() {
            Some(a) => Named::Uri(a.clone()),
            None => Named::Host(req.headers().get(header::HOST)?.clone()),
        };
        (!named.as_str().is_empty()).then_some(named)
    }

    fn as_str(&self) -> &str {
        match self {
            Named::Uri(a) => a.as_str(),
            // Not visible ASCII: no name to route by (matches nothing).
            Named::Host(v) => v.to_str().unwrap_or(""),
        }
    }

    fn header_value(&self) -> Option<HeaderValue> {
        match self {
            Named::Uri(a) => HeaderValue::from_str(a.as_str()).ok(),
            Named::Host(v) => Some(v.clone()),
        }
    }
}

async fn proxy_request(ctx: Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<RespBody> {
    let start = Instant::now();
    let is_connect = req.method() == Method::CONNECT;
    let grpc = is_grpc(req.headers());
    // One request at a time on the client's connection: it may keep an upstream connection.
    let sequential = req.version() <= Version::HTTP_11;
    let original_ip = &ctx.original_ip;
    let authority = Named::of(&req);
    let shown = || authority.as_ref().map(|a| a.as_str().to_owned());

    // Route: CONNECT only where the port is declared for it (to the address's own service);
    // everything else by Host.
    let target = if is_connect {
        if !ctx.routes.allow_connect {
            ctx.event(ProxyEventKind::ConnectRefused, shown().unwrap_or_default());
            let labels = ctx.routes.select(original_ip).map(|i| ctx.labels[i].clone());
            let labels = labels.unwrap_or_else(ServiceLabels::blackhole);
            let mut resp = ctx.local_reply(
                grpc,
                &labels,
                start,
                StatusCode::METHOD_NOT_ALLOWED,
                "-",
                format!(
                    "CONNECT is not allowed to {}: the port is not declared HTTP_PROXY in the registry\n",
                    ctx.conn.original
                ),
            );
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        match ctx.routes.select(original_ip) {
            Some(i) => Target::VHost(i),
            None => Target::Passthrough,
        }
    } else {
        // Istio's virtual host domains are a service's names bare and with the port the
        // connection is for: a Host naming another port matches none of them.
        let port = ctx.conn.original.port();
        let other_port = authority.as_ref().and_then(|a| host_port(a.as_str())).is_some_and(|p| p != Some(port));
        let selected = match &authority {
            _ if other_port => None,
            Some(a) => ctx.routes.select(&normalize_host(a.as_str())),
            None => ctx.routes.select(original_ip),
        };
        match selected {
            Some(i) => Target::VHost(i),
            None if ctx.routes.fallback == Fallback::Passthrough => Target::Passthrough,
            None => {
                let shown = shown();
                debug!(client = %ctx.conn.client, original = %ctx.conn.original, host = ?shown,
                    "proxy: Host not in the registry for this address; 502 (BlackHoleCluster)");
                let why = if other_port { format!(" (it names a port other than {port})") } else { String::new() };
                ctx.event(
                    ProxyEventKind::HostDenied { host: shown.clone() },
                    format!(
                        "Host {} is not a registry host of {}{why}",
                        shown.as_deref().unwrap_or("(none)"),
                        ctx.conn.original
                    ),
                );
                // Istio's REGISTRY_ONLY catch-all virtual host (`block_all`) answers 502.
                return ctx.local_reply(
                    grpc,
                    &ServiceLabels::blackhole(),
                    start,
                    StatusCode::BAD_GATEWAY,
                    "NR",
                    format!(
                        "no route: Host {} is not in the registry for {}{why}\n",
                        shown.as_deref().unwrap_or("(none)"),
                        ctx.conn.original
                    ),
                );
            }
        }
    };
    let labels = ctx.labels(target);
    if req.version() == Version::HTTP_2 && !ctx.routes.http2 {
        ctx.shared.metrics.refusal("http2_not_declared");
        let body = format!(
            "HTTP/2 is not accepted on port {}: its ServiceEntry port is not declared HTTP2 or GRPC (use HTTP/1.1)\n",
            ctx.conn.original.port()
        );
        return ctx.local_reply(grpc, &labels, start, StatusCode::HTTP_VERSION_NOT_SUPPORTED, "-", body);
    }
    let upstream = ctx.upstream(target);
    let tunnel = is_connect || upgrade_requested(req.headers());
    let proto = if tunnel {
        Proto::Http1
    } else if req.version() == Version::HTTP_2 && upstream.tls.is_none() {
        Proto::H2c
    } else {
        Proto::Auto
    };
    let handle = match ctx.client(target, proto) {
        Ok(c) => c,
        Err(e) => {
            let detail = format!("TLS error: {e}");
            ctx.event(ProxyEventKind::TlsVerifyFailed, detail.clone());
            let body = format!("{RESET_BEFORE_HEADERS}connection failure, transport failure reason: {detail}");
            return ctx.local_reply(grpc, &labels, start, StatusCode::SERVICE_UNAVAILABLE, "UF", body);
        }
    };

    let downstream_upgrade: Option<OnUpgrade> = tunnel.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let up_addr = SocketAddr::new(ctx.conn.original.ip(), upstream.port);
    // A plain HTTP/1 request from an HTTP/1 client goes over the client connection's own
    // upstream connection (see `upstream::Affinity`), written as is: origin form with its Host.
    let affinity = proto == Proto::Auto && sequential && !handle.speaks_h2();
    let scheme = if upstream.tls.is_some() { "https" } else { "http" };
    let uri_authority = || authority.as_ref().map_or_else(|| up_addr.to_string(), |a| a.as_str().to_owned());
    let uri = if affinity {
        // An absolute form's authority is the Host; no Host at all: the service's host.
        let absolute = parts.uri.authority().is_some();
        let host = match &authority {
            Some(a) if absolute => a.header_value(),
            Some(_) => None,
            None => HeaderValue::from_str(&upstream.host).ok(),
        };
        if let Some(v) = host {
            parts.headers.insert(header::HOST, v);
        }
        Ok(match parts.uri.path_and_query() {
            Some(pq) if absolute => Uri::from(pq.clone()),
            None if absolute => Uri::from_static("/"),
            _ => std::mem::take(&mut parts.uri),
        })
    } else if is_connect {
        Uri::builder().authority(uri_authority()).build()
    } else {
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Uri::builder().scheme(scheme).authority(uri_authority()).path_and_query(path).build()
    };
    let uri = match uri {
        Ok(u) => u,
        Err(e) => {
            let body = format!("bad request target: {e}\n");
            return ctx.local_reply(grpc, &labels, start, StatusCode::BAD_REQUEST, "-", body);
        }
    };
    if !affinity {
        // Through hyper-util's client the Host travels as the URI's authority: it writes it as
        // `Host` on HTTP/1.1 and as `:authority` on HTTP/2 (whichever the upstream negotiated;
        // nginx refuses both at once).
        if authority.is_some() {
            parts.headers.remove(header::HOST);
        } else if let Ok(v) = HeaderValue::from_str(&upstream.host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers, tunnel && !is_connect);
    parts.version = Version::HTTP_11;
    parts.extensions = Default::default();
    parts.uri = uri;
    let req_bytes = Arc::new(AtomicU64::new(0));
    let up_req = Request::from_parts(parts, CountingBody { inner: body, count: req_bytes.clone() });

    let sent = if affinity {
        ctx.affinity.request(&ctx.shared.pools, handle, up_req).await.map_err(UpstreamError::Own)
    } else {
        handle.client.request(up_req).await.map_err(UpstreamError::Pooled)
    };
    match sent {
        Ok(mut resp) => {
            let switched =
                resp.status() == StatusCode::SWITCHING_PROTOCOLS || (is_connect && resp.status().is_success());
            if let (Some(down), true) = (downstream_upgrade, switched) {
                let up = hyper::upgrade::on(&mut resp);
                spawn_tunnel(ctx.conn.clone(), down, up);
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, switched && !is_connect);
            let rec = Recording { series: ctx.series(&labels, parts.status.as_u16(), grpc), start, req_bytes };
            // A trailers-only gRPC response carries its status in the headers.
            let grpc_status = if grpc { grpc_status(&parts.headers) } else { None };
            let body = RecordingBody { inner: body, bytes: 0, grpc_status, rec: Some(rec) };
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => upstream_failure(&ctx, grpc, &labels, up_addr, start, &e),
    }
}

/// Splices the client's upgraded connection with the upstream's, once both are handed over.
fn spawn_tunnel(conn: ConnInfo, down: OnUpgrade, up: OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(client = %conn.client, original = %conn.original, error = %e, "proxy: upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((a, b)) => {
                debug!(client = %conn.client, original = %conn.original, up = a, down = b, "proxy: tunnel closed")
            }
            Err(e) => debug!(client = %conn.client, original = %conn.original, error = %e, "proxy: tunnel failed"),
        }
    });
}

/// A failed upstream request: through the pooled client, or the connection's own.
enum UpstreamError {
    Pooled(hyper_util::client::legacy::Error),
    Own(AffinityError),
}

impl UpstreamError {
    fn error(&self) -> &(dyn StdError + 'static) {
        match self {
            UpstreamError::Pooled(e) => e,
            UpstreamError::Own(AffinityError::Connect(c)) => c,
            UpstreamError::Own(e) => e,
        }
    }

    /// It failed while connecting (Envoy's UF), not after (UC).
    fn connecting(&self) -> bool {
        match self {
            UpstreamError::Pooled(e) => e.is_connect(),
            UpstreamError::Own(e) => e.connecting(),
        }
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
    grpc: bool,
    labels: &Arc<ServiceLabels>,
    upstream: SocketAddr,
    start: Instant,
    err: &UpstreamError,
) -> Response<RespBody> {
    let e = err.error();
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
        None if err.connecting() => {
            (Some(ProxyEventKind::UpstreamConnectFailed), "connection failure".to_owned(), "UF")
        }
        None => (None, "connection termination".to_owned(), "UC"),
    };
    let detail = match find_connect_error(e) {
        Some(c) => c.to_string(),
        None => error_chain(e),
    };
    warn!(client = %ctx.conn.client, original = %ctx.conn.original, %upstream,
        error = %detail, flags, "proxy: upstream request failed");
    if let Some(kind) = kind {
        ctx.event(kind, detail);
    }
    let body = format!("{RESET_BEFORE_HEADERS}{reason}");
    ctx.local_reply(grpc, labels, start, StatusCode::SERVICE_UNAVAILABLE, flags, body)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("host", "api.test"),
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("proxy-authorization", "Basic eA=="),
            ("expect", "100-continue"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-kept"]);

        let mut h = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-type", "te"], "TE: trailers crosses");
        let mut h = headers(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "a TE the Connection header names is dropped: {h:?}");

        let mut h = headers(&[("content-length", "3")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-length"], "nothing to drop");
    }

    /// More Connection tokens, and more headers to drop, than are kept inline.
    #[test]
    fn many_connection_tokens_and_many_dropped_headers_take_the_slow_path_alike() {
        let listed: Vec<String> = (0..12).map(|i| format!("X-H{i}")).collect();
        let mut pairs: Vec<(String, String)> = vec![("connection".into(), listed.join(" ,"))];
        pairs.extend((0..12).map(|i| (format!("x-h{i}"), "1".to_string())));
        pairs.extend([("x-kept", "3"), ("keep-alive", "5"), ("te", "gzip")].map(|(k, v)| (k.into(), v.into())));
        let mut h = HeaderMap::new();
        for (k, v) in &pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-kept"], "{h:?}");

        // Empty tokens (",, ,") name nothing.
        let mut h = headers(&[("connection", ",, ,"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn a_forwarded_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "k"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
