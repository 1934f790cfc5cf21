//! The L7 egress proxy. The kernel's connect hook redirects selected connections to this
//! listener; the proxy asks the agent where each connection was going and how that destination
//! is routed ([`ProxyPolicy::accept`]), then
//! - plain HTTP ([`Routes::Http`]): routes every request by its Host, like Envoy's virtual hosts
//!   on an outbound HTTP route: a registry host of the address gets its service's upstream
//!   (TLS originated per its DestinationRule `tls.mode: SIMPLE`, or plain), anything else goes
//!   to the [`Fallback`] (REGISTRY_ONLY: 502 from BlackHoleCluster, ALLOW_ANY: forwarded as
//!   PassthroughCluster). Istio's request metrics (`istio_requests_total`, ...) are recorded.
//!   WebSocket and other `Upgrade`s, and CONNECT on ports declared `HTTP_PROXY`, are tunnelled;
//!   h2c is accepted on ports declared HTTP2/GRPC; HTTP/2 is used upstream when the server
//!   offers it (ALPN);
//! - TLS ([`Routes::Tls`]): checks the ClientHello's SNI against the registry (no decryption)
//!   and splices the bytes through to the original destination.
//!
//! HTTP is hyper's (server and pooled client), TLS is rustls' (ring provider): nothing here parses
//! HTTP or TLS by hand.

mod http;
mod metrics;
mod net;
mod route;
mod sni;
mod tls;
mod upstream;

#[cfg(test)]
mod tests;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{debug, info, warn};

pub use metrics::ProxyMetrics;
pub use route::normalize_host;

/// How to originate TLS to the upstream (a DestinationRule's `trafficPolicy.tls`, mode SIMPLE).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsOrigination {
    /// `tls.sni`; None: the route's `host`.
    pub sni: Option<String>,
    /// `tls.caCertificates`: a PEM file of trust anchors; None: the system roots.
    pub ca_certificates: Option<PathBuf>,
    /// `tls.insecureSkipVerify`: accept any server certificate (a warning is logged once).
    pub insecure_skip_verify: bool,
    /// `tls.subjectAltNames`: when non-empty, the certificate must be valid for one of these
    /// names (Istio semantics: they replace the SNI host as the name checked; the chain is
    /// always verified). Entries that are not DNS names or IP addresses (e.g. spiffe:// URIs)
    /// are ignored with a warning.
    pub subject_alt_names: Vec<String>,
}

/// Where a routed request goes: the original destination's address, on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// ServiceEntry targetPort, else the port.
    pub port: u16,
    /// `Some`: originate TLS (DestinationRule SIMPLE); `None`: plain HTTP.
    pub tls: Option<TlsOrigination>,
    /// The SNI default (a registry host of the service).
    pub host: String,
    /// connectionPool.tcp.connectTimeout, default 10s (TCP connect + TLS handshake).
    pub connect_timeout: Duration,
}

/// One service on an HTTP port: the names it answers to, its labels and its upstream.
#[derive(Clone, Debug)]
pub struct VirtualHost {
    /// Exact names or `*.suffix` (the ServiceEntry's hosts), and literal addresses the service
    /// is known by (Istio adds a service's VIPs to its virtual host's domains).
    pub domains: Vec<String>,
    pub service: ServiceLabels,
    pub upstream: Upstream,
}

/// What a request or a TLS connection that names no registry host of its address gets, as
/// Istio's catch-all virtual host / filter chain for the outbound traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// REGISTRY_ONLY: HTTP gets 502 (Istio's `block_all` route), TLS is closed.
    BlackHole,
    /// ALLOW_ANY: forwarded unchanged to the original destination (PassthroughCluster).
    Passthrough,
}

/// Plain HTTP on a steered port: the services of the address, by Host.
#[derive(Clone, Debug)]
pub struct HttpRoutes {
    pub vhosts: Vec<VirtualHost>,
    pub fallback: Fallback,
    /// CONNECT is tunnelled (the port is declared `HTTP_PROXY`); else refused with 405.
    pub allow_connect: bool,
    /// The port is declared HTTP2 or GRPC: h2c (prior knowledge) is accepted besides HTTP/1.
    pub http2: bool,
}

/// TLS on a steered port, checked by SNI.
#[derive(Clone, Debug)]
pub struct SniRoutes {
    /// Exact host or "*.suffix", with the service it belongs to.
    pub allowed: Vec<(String, ServiceLabels)>,
    pub fallback: Fallback,
}

/// How the connections to one original destination are handled.
#[derive(Clone, Debug)]
pub enum Routes {
    Http(Arc<HttpRoutes>),
    Tls(Arc<SniRoutes>),
}

/// An accepted connection, as the agent knows it.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Where the client meant to go.
    pub original: SocketAddr,
    /// The `source_workload` label ("unknown" if not known).
    pub workload: Arc<str>,
    pub routes: Routes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

impl ServiceLabels {
    fn named(name: &str) -> Self {
        Self {
            destination_service: name.into(),
            destination_service_name: name.into(),
            destination_service_namespace: String::new(),
        }
    }

    /// Requests answered by the REGISTRY_ONLY catch-all.
    pub fn blackhole() -> Arc<ServiceLabels> {
        static L: OnceLock<Arc<ServiceLabels>> = OnceLock::new();
        L.get_or_init(|| Arc::new(Self::named("BlackHoleCluster"))).clone()
    }

    /// Requests forwarded by the ALLOW_ANY catch-all.
    pub fn passthrough() -> Arc<ServiceLabels> {
        static L: OnceLock<Arc<ServiceLabels>> = OnceLock::new();
        L.get_or_init(|| Arc::new(Self::named("PassthroughCluster"))).clone()
    }
}

pub trait ProxyPolicy: Send + Sync + 'static {
    /// An accepted connection, by the client's address: where it was going (the kernel
    /// records it when it redirects), who made it and how its destination is routed. Called
    /// once per connection. None: unknown -> the connection is closed (log, counter).
    fn accept(&self, client: SocketAddr) -> Option<Accepted>;
    /// A denial or failure worth an event (SNI not allowed, Host not in the registry, TLS
    /// verification failed, upstream unreachable, ...). Called synchronously; keep it cheap.
    fn event(&self, e: ProxyEvent);
}

#[derive(Clone, Debug)]
pub struct ProxyEvent {
    pub client: SocketAddr,
    pub original: SocketAddr,
    pub workload: Arc<str>,
    pub kind: ProxyEventKind,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyEventKind {
    SniDenied {
        sni: Option<String>,
    },
    /// REGISTRY_ONLY: a request whose Host is no registry host of the address (502).
    HostDenied {
        host: Option<String>,
    },
    /// CONNECT on a port not declared HTTP_PROXY (405).
    ConnectRefused,
    /// Plain bytes where TLS (checked by SNI) was expected (400).
    PlaintextOnTlsPort,
    /// TLS bytes where plain HTTP was expected (closed).
    TlsOnHttpPort,
    TlsVerifyFailed,
    UpstreamConnectFailed,
    UpstreamTimeout,
}

impl ProxyEventKind {
    /// (verdict, reason, what happened) for the event record and the `enforcer: ...` line.
    pub fn describe(&self, original: SocketAddr, detail: &str) -> (&'static str, &'static str, String) {
        let port = original.port();
        match self {
            Self::SniDenied { sni } => (
                "denied",
                "sni_not_in_registry",
                format!("TLS SNI {} not in registry for port {port}", sni.as_deref().unwrap_or("(none)")),
            ),
            Self::HostDenied { host } => (
                "denied",
                "host_not_in_registry",
                format!(
                    "HTTP Host {} not in registry for this address and port (502)",
                    host.as_deref().unwrap_or("(none)")
                ),
            ),
            Self::ConnectRefused => (
                "denied",
                "connect_not_allowed",
                format!("CONNECT {detail} refused (405): port {port} is not declared HTTP_PROXY"),
            ),
            Self::PlaintextOnTlsPort => {
                ("denied", "plaintext_on_tls_port", format!("plain bytes on TLS port {port} checked by SNI (400)"))
            }
            Self::TlsOnHttpPort => (
                "denied",
                "tls_on_http_port",
                format!("TLS on port {port}, whose DestinationRule originates TLS (send plain HTTP); closed"),
            ),
            Self::TlsVerifyFailed => {
                ("error", "tls_verify_failed", format!("upstream TLS verification failed: {detail}"))
            }
            Self::UpstreamConnectFailed => {
                ("error", "upstream_connect_failed", format!("upstream connect failed: {detail}"))
            }
            Self::UpstreamTimeout => ("error", "upstream_timeout", format!("upstream connect timed out: {detail}")),
        }
    }

    /// The `enforcer_proxy_refusals_total` reason for the refusals among these.
    fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::SniDenied { .. } => Some("sni_not_in_registry"),
            Self::HostDenied { .. } => Some("host_not_in_registry"),
            Self::ConnectRefused => Some("connect_not_allowed"),
            Self::PlaintextOnTlsPort => Some("plaintext_on_tls_port"),
            Self::TlsOnHttpPort => Some("tls_on_http_port"),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Usually 127.0.0.1:0.
    pub listen: SocketAddr,
    /// SO_MARK on upstream sockets (the BPF hooks never redirect marked sockets: no loops).
    /// EPERM is ignored (logged once).
    pub upstream_mark: Option<u32>,
    /// Worker threads, each with its own single-threaded runtime and upstream pools, so a
    /// request never hops threads (nginx's worker model). Worker 0 accepts and hands the
    /// connections out round-robin (an even split, where SO_REUSEPORT's is a hash). 0: one per
    /// CPU.
    pub threads: usize,
    /// How long an app's HTTP/1 connection may go without a request in progress (idle between
    /// keep-alive requests, or with its request headers unfinished) before it is closed.
    /// `None`: never.
    pub client_idle_timeout: Option<Duration>,
}

/// How long an accepted connection may stay silent before its first byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `run` waits for open connections after shutdown before aborting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by every connection.
pub(crate) struct Shared {
    pub policy: Arc<dyn ProxyPolicy>,
    pub metrics: ProxyMetrics,
    pub mark: Option<u32>,
    pub pools: upstream::Pools,
    /// [`ProxyConfig::client_idle_timeout`].
    pub client_idle_timeout: Option<Duration>,
}

impl Shared {
    /// Publish an event (and count it when it is a refusal).
    pub(crate) fn event(&self, conn: &ConnInfo, kind: ProxyEventKind, detail: String) {
        if let Some(reason) = kind.refusal() {
            self.metrics.refusal(reason);
        }
        self.policy.event(ProxyEvent {
            client: conn.client,
            original: conn.original,
            workload: conn.workload.clone(),
            kind,
            detail,
        });
    }
}

/// Who a connection is from and where it was going.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    pub original: SocketAddr,
    pub workload: Arc<str>,
}

pub struct Proxy {
    listener: std::net::TcpListener,
    threads: usize,
    local: SocketAddr,
    policy: Arc<dyn ProxyPolicy>,
    metrics: ProxyMetrics,
    mark: Option<u32>,
    client_idle_timeout: Option<Duration>,
}

/// The listening socket on `addr`.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

impl Proxy {
    pub async fn bind(cfg: ProxyConfig, policy: Arc<dyn ProxyPolicy>) -> std::io::Result<Proxy> {
        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let listener = listener(cfg.listen)?;
        let local = listener.local_addr()?;
        Ok(Proxy {
            listener,
            threads,
            local,
            policy,
            metrics: ProxyMetrics::new(),
            mark: cfg.upstream_mark,
            client_idle_timeout: cfg.client_idle_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Clone handles to the live metric families.
    pub fn metrics(&self) -> ProxyMetrics {
        self.metrics.clone()
    }

    /// Accepts until `shutdown` completes; then stops accepting, asks HTTP connections to finish
    /// their in-flight request, and aborts whatever is still open after a few seconds.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Proxy { listener, threads, local, policy, metrics, mark, client_idle_timeout } = self;
        info!(%local, workers = threads, "L7 proxy listening");
        let (stop_tx, stop_rx) = watch::channel(false);
        // Worker 0 accepts; workers 1.. get their connections through an inbox.
        let (outboxes, inboxes): (Vec<_>, Vec<_>) = (1..threads).map(|_| mpsc::unbounded_channel::<Handoff>()).unzip();
        let mut role = Some(Role::Acceptor { listener, outboxes });
        let mut inboxes = inboxes.into_iter();
        let mut done = Vec::new();
        for i in 0..threads {
            let Some(role) = role.take().or_else(|| inboxes.next().map(Role::Inbox)) else { break };
            let shared = Arc::new(Shared {
                policy: policy.clone(),
                metrics: metrics.clone(),
                mark,
                pools: upstream::Pools::default(),
                client_idle_timeout,
            });
            let stop = stop_rx.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            // 15 characters at most: the kernel's comm (ps, perf) keeps no more.
            let spawned = std::thread::Builder::new().name(format!("enforcer-px-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "proxy: cannot start a worker runtime");
                        return;
                    }
                };
                rt.block_on(worker(role, shared, stop));
                drop(tx);
            });
            match spawned {
                Ok(_) => done.push(rx),
                Err(e) => warn!(error = %e, "proxy: cannot start a worker thread"),
            }
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        for rx in done {
            let _ = rx.await;
        }
        info!("L7 proxy stopped");
    }
}

/// An accepted connection handed to another worker (it registers it with its own reactor).
type Handoff = (std::net::TcpStream, SocketAddr);

/// What a worker gets its connections from.
enum Role {
    /// The listening socket, and the other workers' inboxes: connection k goes to worker
    /// k mod N (0: this one).
    Acceptor {
        listener: std::net::TcpListener,
        outboxes: Vec<mpsc::UnboundedSender<Handoff>>,
    },
    Inbox(mpsc::UnboundedReceiver<Handoff>),
}

/// One worker: serves its connections on its own thread until shutdown.
async fn worker(role: Role, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    match role {
        Role::Acceptor { listener, outboxes } => {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "proxy: cannot register the listener");
                    return;
                }
            };
            let mut next = 0usize;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let k = next % (outboxes.len() + 1);
                            next = next.wrapping_add(1);
                            let local = match k.checked_sub(1).and_then(|j| outboxes.get(j)) {
                                Some(out) => match stream.into_std() {
                                    Ok(s) => out.send((s, peer)).err().and_then(|e| TcpStream::from_std(e.0.0).ok()),
                                    Err(e) => {
                                        debug!(%peer, error = %e, "proxy: cannot hand a connection over");
                                        None
                                    }
                                },
                                None => Some(stream),
                            };
                            if let Some(stream) = local {
                                tasks.spawn(handle_conn(shared.clone(), stream, peer, stop.clone()));
                            }
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "proxy accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
        Role::Inbox(mut inbox) => loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some((s, peer)) = inbox.recv() => match TcpStream::from_std(s) {
                    Ok(stream) => {
                        tasks.spawn(handle_conn(shared.clone(), stream, peer, stop.clone()));
                    }
                    Err(e) => warn!(%peer, error = %e, "proxy: cannot register a handed-over connection"),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        },
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        debug!(open = tasks.len(), "aborting proxy connections still open after shutdown");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

async fn handle_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // Ask the kernel at once: the filing belongs to this connection, whatever it sends later.
    let Some(accepted) = shared.policy.accept(peer) else {
        warn!(%peer, "proxy: no original destination recorded for this connection; closing");
        shared.metrics.refusal("no_original_destination");
        return;
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) => return, // closed before sending anything
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "proxy: reading the first byte failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "proxy: no data before the first-byte timeout");
            return;
        }
    }
    let is_tls = first[0] == 0x16;
    let conn = ConnInfo { client: peer, original: accepted.original, workload: accepted.workload };
    match (accepted.routes, is_tls) {
        (Routes::Http(routes), false) => http::serve(shared, stream, conn, routes, stop).await,
        (Routes::Tls(routes), true) => sni::serve(shared, stream, conn, routes).await,
        (Routes::Http(_), true) => {
            debug!(%peer, original = %conn.original, "proxy: TLS bytes on a plain HTTP port; closing");
            shared.event(&conn, ProxyEventKind::TlsOnHttpPort, String::new());
        }
        (Routes::Tls(_), false) => {
            debug!(%peer, original = %conn.original, "proxy: plain bytes on a TLS port checked by SNI; answering 400");
            shared.event(&conn, ProxyEventKind::PlaintextOnTlsPort, String::new());
            http::serve_bad_request(stream, "this port expects TLS\n").await;
        }
    }
}
