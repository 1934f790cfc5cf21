//! Upstream connections: a connector that dials the original destination's address (SO_MARK
//! set, so the hooks leave it alone) and, when the route originates TLS, runs the rustls
//! handshake — both within the connect timeout — per upstream address + TLS settings + protocol.
//!
//! Plain HTTP/1 requests (nearly all of them) go over the downstream connection's own upstream
//! connection ([`Affinity`]): an HTTP/1 connection carries one request at a time, so a client
//! connection keeps the upstream connection it last used (no pool lookup, no hand-over between
//! tasks per request) and gives it back to its worker's idle list ([`Pools::give_back`]) when
//! it closes, for the next client connection to the same upstream. HTTP/2 from the app (h2c),
//! upgrades and CONNECT go through hyper-util's pooled client instead.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use http::Uri;
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
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{TlsOrigination, Upstream, http::CountingBody, net, tls};

/// How long an idle upstream keep-alive connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Above this many distinct upstream clients (stale policy generations, passthrough targets),
/// the map is reset.
const MAX_POOLS: usize = 1024;

pub(crate) type UpClient = Client<Connector, CountingBody>;

/// Idle upstream connections kept per upstream key and worker (beyond this they are closed).
const MAX_IDLE_PER_KEY: usize = 256;

/// The HTTP version(s) spoken to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    /// TLS: ALPN offers h2 and http/1.1, the server picks. Plain: HTTP/1.1.
    Auto,
    /// HTTP/1.1 only (upgrades and CONNECT need it).
    Http1,
    /// HTTP/2 with prior knowledge on a plain connection (h2c from the app on an HTTP2/GRPC port).
    H2c,
}

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
    tls: Option<(ServerName<'static>, Arc<ClientConfig>)>,
    timeout: Duration,
    mark: Option<u32>,
    /// The upstream's ALPN chose h2 on the last TLS connection: its requests share the pooled
    /// client's multiplexed connection rather than one connection per client connection.
    h2: std::sync::atomic::AtomicBool,
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
                let Some((name, config)) = &t.tls else {
                    return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
                };
                let connector = TlsConnector::from(config.clone());
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(te) => ConnectError::Tls(te.clone()),
                        None => ConnectError::Handshake(e),
                    }
                })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                t.h2.store(h2, std::sync::atomic::Ordering::Relaxed);
                Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls))))
            };
            match tokio::time::timeout(t.timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout),
            }
        })
    }
}

/// A connection to the upstream, with the metadata hyper-util's pool wants (ALPN h2).
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2") => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    addr: SocketAddr,
    /// (SNI, settings, the CA file's mtime: a rewritten file gets a fresh config and pool).
    tls: Option<(String, TlsOrigination, Option<SystemTime>)>,
    timeout: Duration,
    proto: Proto,
}

/// One upstream (address + TLS settings + protocol): its pooled client and its connector.
#[derive(Clone)]
pub(crate) struct UpstreamHandle {
    pub client: UpClient,
    connector: Connector,
    key: Arc<PoolKey>,
}

impl UpstreamHandle {
    /// Its upstream is known to speak HTTP/2 (see [`Target::h2`]).
    pub(crate) fn speaks_h2(&self) -> bool {
        self.connector.target.h2.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Idle affinity connections of one upstream, with when each became idle (oldest first).
type IdleList = Vec<(Sender, std::time::Instant)>;

/// Upstream clients (each with its keep-alive pool), and the idle affinity connections.
#[derive(Default)]
pub(crate) struct Pools {
    map: Mutex<HashMap<PoolKey, UpstreamHandle>>,
    idle: Mutex<HashMap<Arc<PoolKey>, IdleList>>,
}

impl Pools {
    /// The client for `upstream` at `ip`. Err: the TLS configuration is unusable (e.g. the CA
    /// file is missing); the text is meant for the 503 body and the log.
    pub(crate) fn client(
        &self,
        ip: std::net::IpAddr,
        upstream: &Upstream,
        proto: Proto,
        mark: Option<u32>,
    ) -> Result<UpstreamHandle, String> {
        let addr = SocketAddr::new(ip, upstream.port);
        let tls = upstream.tls.as_ref().map(|t| {
            let sni = t.sni.clone().unwrap_or_else(|| upstream.host.clone());
            let mtime = t.ca_certificates.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            (sni, t.clone(), mtime)
        });
        // h2c is plain by definition; over TLS the server picks with ALPN.
        let proto = if tls.is_some() && proto == Proto::H2c { Proto::Auto } else { proto };
        let key = PoolKey { addr, tls, timeout: upstream.connect_timeout, proto };
        if let Some(c) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let tls = match &key.tls {
            None => None,
            Some((sni, settings, _)) => {
                let name = ServerName::try_from(sni.clone()).map_err(|e| format!("invalid SNI {sni:?}: {e}"))?;
                let alpn: &[&[u8]] = match proto {
                    Proto::Auto => &[b"h2", b"http/1.1"],
                    _ => &[b"http/1.1"],
                };
                Some((name, tls::client_config(settings, alpn)?))
            }
        };
        let connector =
            Connector { target: Arc::new(Target { addr, tls, timeout: key.timeout, mark, h2: Default::default() }) };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).set_host(true);
        if proto == Proto::H2c {
            b.http2_only(true);
        }
        let client: UpClient = b.build(connector.clone());
        let handle = UpstreamHandle { client, connector, key: Arc::new(key.clone()) };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_POOLS {
            map.clear();
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        Ok(map.entry(key).or_insert(handle).clone())
    }

    /// An idle affinity connection to `key`'s upstream, the most recently used first.
    /// Only one that is ready for a request now: one given back in the middle of a response
    /// (its client went away) stays until its connection has finished or closed.
    fn take_idle(&self, key: &Arc<PoolKey>) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        prune(list);
        let i = list.iter().rposition(|(s, _)| s.is_ready())?;
        Some(list.remove(i).0)
    }

    /// Keep a client connection's upstream connection for the next one (it closes when the
    /// list is full, or once it has been idle for the pool's idle timeout).
    pub(crate) fn give_back(&self, key: Arc<PoolKey>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        prune(list);
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((sender, std::time::Instant::now()));
        }
    }
}

/// Drop the idle connections the upstream closed (their tasks ended) or that have been idle for
/// the pool's idle timeout.
fn prune(list: &mut IdleList) {
    let fresh = std::time::Instant::now().checked_sub(POOL_IDLE_TIMEOUT);
    list.retain(|(s, since)| !s.is_closed() && fresh.is_none_or(|f| *since > f));
}

/// A client connection's own upstream connection (HTTP/1, or HTTP/2 when the upstream's ALPN
/// picks it).
pub(crate) enum Sender {
    H1(hyper::client::conn::http1::SendRequest<CountingBody>),
    H2(hyper::client::conn::http2::SendRequest<CountingBody>),
}

/// Why an affinity request failed: while connecting (Envoy's UF), or after (UC).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AffinityError {
    #[error(transparent)]
    Connect(ConnectError),
    #[error("handshake with the upstream failed: {0}")]
    Handshake(hyper::Error),
    #[error(transparent)]
    Request(hyper::Error),
}

impl AffinityError {
    pub(crate) fn connecting(&self) -> bool {
        !matches!(self, AffinityError::Request(_))
    }
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Dial `connector`'s upstream and speak what its ALPN chose.
    async fn dial(connector: &mut Connector) -> Result<Sender, AffinityError> {
        use tower_service::Service as _;
        let io = connector.call(Uri::default()).await.map_err(AffinityError::Connect)?;
        if io.inner().connected().is_negotiated_h2() {
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(AffinityError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "proxy: upstream HTTP/2 connection ended");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(AffinityError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "proxy: upstream connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Send `req` (origin form with a Host header, written as is on HTTP/1; on HTTP/2 the Host
    /// becomes the `:authority` of an https URI). Err(Some(req)): the connection could not
    /// take it (closed meanwhile), try another.
    async fn send(
        &mut self,
        mut req: http::Request<CountingBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, (hyper::Error, Option<http::Request<CountingBody>>)> {
        let sent = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => {
                // ALPN h2 is TLS: https.
                if let Some(host) = req.headers_mut().remove(http::header::HOST)
                    && let Ok(host) = host.to_str()
                {
                    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    if let Ok(u) = Uri::builder().scheme("https").authority(host).path_and_query(pq).build() {
                        *req.uri_mut() = u;
                    }
                }
                s.try_send_request(req).await
            }
        };
        sent.map_err(|mut e| {
            let m = e.take_message();
            (e.into_error(), m)
        })
    }
}

/// The upstream connection a client connection keeps between its requests.
#[derive(Default)]
pub(crate) struct Affinity {
    slot: Mutex<Option<(Arc<PoolKey>, Sender)>>,
}

impl Affinity {
    /// Send `req` to `up`'s upstream over this client connection's own connection: the one it
    /// kept (same upstream, still open), else an idle one of the worker, else a new one. A kept
    /// connection that turns out closed gets the request on a new one.
    pub(crate) async fn request(
        &self,
        pools: &Pools,
        up: &UpstreamHandle,
        req: http::Request<CountingBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, AffinityError> {
        let kept = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            match slot.take() {
                Some((k, s)) if k == up.key => Some(s),
                Some((k, s)) => {
                    pools.give_back(k, s);
                    None
                }
                None => None,
            }
        };
        let mut req = req;
        let mut reused = kept.or_else(|| pools.take_idle(&up.key));
        loop {
            let (mut sender, was_reused) = match reused.take() {
                Some(mut s) => match s.ready().await {
                    Ok(()) => (s, true),
                    // Closed by the upstream while idle: a new one.
                    Err(_) => continue,
                },
                None => (Sender::dial(&mut up.connector.clone()).await?, false),
            };
            match sender.send(req).await {
                Ok(resp) => {
                    *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((up.key.clone(), sender));
                    return Ok(resp);
                }
                // Not sent: the kept connection went away before it could take the request; once
                // more on a new one.
                Err((_, Some(back))) if was_reused => req = back,
                Err((e, _)) => return Err(AffinityError::Request(e)),
            }
        }
    }

    /// The client connection closed: its upstream connection goes to the worker's idle list.
    pub(crate) fn release(&self, pools: &Pools) {
        if let Some((k, s)) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pools.give_back(k, s);
        }
    }
}
