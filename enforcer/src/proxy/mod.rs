//! The L7 egress proxy. The kernel's connect hook redirects selected connections to this
//! listener; the proxy looks up where each connection was going and then either
//! - originates TLS (HTTP in, HTTPS out: DestinationRule `tls.mode: SIMPLE`), recording Istio's
//!   request metrics (`istio_requests_total`, ...), or
//! - checks the TLS ClientHello's SNI against the registry (no decryption) and splices the bytes
//!   through to the original destination.
//!
//! HTTP is hyper's (server and pooled client), TLS is rustls' (ring provider): nothing here parses
//! HTTP or TLS by hand.

mod metrics;
mod net;
mod originate;
mod sni;
mod tls;

#[cfg(test)]
mod tests;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

pub use metrics::ProxyMetrics;
pub use sni::sni_matches;

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

/// What the proxy does for one original destination.
#[derive(Clone, Debug)]
pub enum Route {
    /// HTTP in, TLS out (DestinationRule tls.mode SIMPLE).
    Originate {
        service: ServiceLabels,
        /// SNI default + Host header fallback.
        host: String,
        /// ServiceEntry targetPort, else the port.
        upstream_port: u16,
        tls: TlsOrigination,
        /// connectionPool.tcp.connectTimeout, default 10s (TCP connect + TLS handshake).
        connect_timeout: Duration,
    },
    /// TLS in, checked by SNI, spliced through to the original destination.
    SniCheck {
        port: u16,
        /// Exact host or "*.suffix", with the service it belongs to.
        allowed: Vec<(String, ServiceLabels)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

pub trait ProxyPolicy: Send + Sync + 'static {
    /// The original destination of an accepted connection, by the client's address (the kernel
    /// records it when it redirects). None: unknown -> close the connection (log).
    fn original_dst(&self, client: SocketAddr) -> Option<SocketAddr>;
    fn route(&self, original: SocketAddr) -> Option<Route>;
    /// The workload (source_workload label) of a client connection; "unknown" if not known.
    fn workload(&self, client: SocketAddr) -> String;
    /// A denial or failure worth an event (SNI not allowed, TLS verification failed, upstream
    /// unreachable). Called synchronously; keep it cheap.
    fn event(&self, e: ProxyEvent);
}

#[derive(Clone, Debug)]
pub struct ProxyEvent {
    pub client: SocketAddr,
    pub original: SocketAddr,
    pub kind: ProxyEventKind,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyEventKind {
    SniDenied { sni: Option<String> },
    TlsVerifyFailed,
    UpstreamConnectFailed,
    UpstreamTimeout,
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Usually 127.0.0.1:0.
    pub listen: SocketAddr,
    /// SO_MARK on upstream sockets (the BPF hooks never redirect marked sockets: no loops).
    /// EPERM is ignored (logged once).
    pub upstream_mark: Option<u32>,
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
    pub pools: originate::Pools,
}

pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Proxy {
    pub async fn bind(cfg: ProxyConfig, policy: Arc<dyn ProxyPolicy>) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let shared = Arc::new(Shared {
            policy,
            metrics: ProxyMetrics::new(),
            mark: cfg.upstream_mark,
            pools: originate::Pools::default(),
        });
        Ok(Proxy { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Clone handles to the live metric families.
    pub fn metrics(&self) -> ProxyMetrics {
        self.shared.metrics.clone()
    }

    /// Accepts until `shutdown` completes; then stops accepting, asks HTTP connections to finish
    /// their in-flight request, and aborts whatever is still open after a few seconds.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Proxy { listener, shared } = self;
        let local = listener.local_addr().ok();
        info!(?local, "L7 proxy listening");
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        let stop = stop_rx.clone();
                        tasks.spawn(handle_conn(shared, stream, peer, stop));
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
        drop(listener);
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            debug!(open = tasks.len(), "aborting proxy connections still open after shutdown");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        info!("L7 proxy stopped");
    }
}

async fn handle_conn(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
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
    let Some(original) = shared.policy.original_dst(peer) else {
        warn!(%peer, "proxy: no original destination recorded for this connection; closing");
        return;
    };
    let Some(route) = shared.policy.route(original) else {
        warn!(%peer, %original, "proxy: no route for the original destination; closing");
        return;
    };
    match (route, is_tls) {
        (Route::Originate { service, host, upstream_port, tls, connect_timeout }, false) => {
            let route = originate::OriginateRoute { service, host, upstream_port, tls, connect_timeout };
            originate::serve(shared, stream, peer, original, route, stop).await;
        }
        (Route::SniCheck { allowed, .. }, true) => {
            sni::serve(shared, stream, peer, original, allowed).await;
        }
        (Route::Originate { .. }, true) => {
            warn!(%peer, %original,
                "proxy: TLS bytes on a port whose DestinationRule originates TLS (send plain HTTP); closing");
        }
        (Route::SniCheck { .. }, false) => {
            warn!(%peer, %original, "proxy: plain bytes on a TLS port checked by SNI; answering 400");
            originate::serve_bad_request(stream, "this port expects TLS\n").await;
        }
    }
}
