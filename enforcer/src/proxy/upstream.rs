//! Upstream connections: hyper-util's pooled client over a connector that dials the original
//! destination's address (SO_MARK set, so the hooks leave it alone) and, when the route
//! originates TLS, runs the rustls handshake — both within the connect timeout. One client, so
//! one keep-alive pool, per upstream address + TLS settings + protocol.

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
struct PoolKey {
    addr: SocketAddr,
    /// (SNI, settings, the CA file's mtime: a rewritten file gets a fresh config and pool).
    tls: Option<(String, TlsOrigination, Option<SystemTime>)>,
    timeout: Duration,
    proto: Proto,
}

/// Upstream clients (each with its keep-alive pool).
#[derive(Default)]
pub(crate) struct Pools {
    map: Mutex<HashMap<PoolKey, UpClient>>,
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
    ) -> Result<UpClient, String> {
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
        let connector = Connector { target: Arc::new(Target { addr, tls, timeout: key.timeout, mark }) };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).set_host(true);
        if proto == Proto::H2c {
            b.http2_only(true);
        }
        let client: UpClient = b.build(connector);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_POOLS {
            map.clear();
        }
        Ok(map.entry(key).or_insert(client).clone())
    }
}
