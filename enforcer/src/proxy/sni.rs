//! TLS in, checked by SNI: the ClientHello is read (not answered) with rustls' `Acceptor`, its
//! server_name matched against the registry's hosts for the port, and an allowed connection is
//! spliced to the original destination (the buffered ClientHello replayed first). Nothing is
//! decrypted.

use std::{sync::Arc, time::Duration};

use rustls::server::Acceptor;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::{debug, warn};

use super::{ConnInfo, Fallback, ProxyEventKind, ServiceLabels, Shared, SniRoutes, net};

/// The most ClientHello bytes buffered before giving up.
const MAX_HELLO: usize = 16 * 1024;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A fatal `unrecognized_name` alert record (TLS 1.2 record version, as TLS 1.3 allows in
/// plaintext before the ServerHello).
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// The service an SNI belongs to: an exact host first, else the longest wildcard (the one host
/// matcher, [`crate::config::host::best_match`]).
fn lookup<'a>(allowed: &'a [(String, ServiceLabels)], sni: &str) -> Option<&'a ServiceLabels> {
    crate::config::host::best_match(sni, allowed.iter().map(|(p, s)| (p.as_str(), s)))
}

#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("connection closed before a complete ClientHello")]
    Eof,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid ClientHello: {0}")]
    Tls(rustls::Error),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("no complete ClientHello within {HELLO_TIMEOUT:?}")]
    Timeout,
}

/// Reads until a whole ClientHello is buffered; returns the bytes read and its SNI.
async fn read_client_hello(stream: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), HelloError> {
    let read = async {
        let mut acceptor = Acceptor::default();
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        loop {
            let room = MAX_HELLO - buf.len();
            if room == 0 {
                return Err(HelloError::TooLarge);
            }
            let n = stream.read(&mut chunk[..room.min(4096)]).await?;
            if n == 0 {
                return Err(HelloError::Eof);
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut rd = &chunk[..n];
            while !rd.is_empty() {
                if acceptor.read_tls(&mut rd)? == 0 {
                    return Err(HelloError::TooLarge);
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted.client_hello().server_name().map(|s| s.to_ascii_lowercase());
                    return Ok((buf, sni));
                }
                Ok(None) => {}
                Err((e, _alert)) => return Err(HelloError::Tls(e)),
            }
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, read).await.unwrap_or(Err(HelloError::Timeout))
}

pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, conn: ConnInfo, routes: Arc<SniRoutes>) {
    let (peer, original) = (conn.client, conn.original);
    let event = |kind: ProxyEventKind, detail: String| shared.event(&conn, kind, detail);
    let (hello, sni) = match read_client_hello(&mut stream).await {
        Ok(h) => h,
        Err(e) => {
            debug!(%peer, %original, error = %e, "proxy: no usable ClientHello; closing");
            // Count it as denied: nothing gets through without an allowed SNI.
            shared.metrics.sni_decision("BlackHoleCluster", false);
            event(ProxyEventKind::SniDenied { sni: None }, e.to_string());
            return;
        }
    };
    let service = match sni.as_deref().and_then(|s| lookup(&routes.allowed, s)) {
        Some(s) => s.destination_service.clone(),
        // ALLOW_ANY: a name the registry does not list passes, as Istio's PassthroughCluster.
        None if routes.fallback == Fallback::Passthrough => "PassthroughCluster".to_owned(),
        None => {
            debug!(%peer, %original, sni = ?sni, "proxy: SNI not in the registry for this address and port; closing");
            shared.metrics.sni_decision("BlackHoleCluster", false);
            let detail = match &sni {
                Some(s) => format!("SNI {s} is not allowed on {original}"),
                None => format!("no SNI in the ClientHello to {original}"),
            };
            event(ProxyEventKind::SniDenied { sni }, detail);
            let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    shared.metrics.sni_decision(&service, true);
    debug!(%peer, %original, sni = ?sni, %service, "proxy: SNI allowed");

    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, net::connect(original, shared.mark)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%peer, %original, error = %e, "proxy: upstream connect failed");
            event(ProxyEventKind::UpstreamConnectFailed, e.to_string());
            return;
        }
        Err(_) => {
            warn!(%peer, %original, "proxy: upstream connect timed out");
            event(ProxyEventKind::UpstreamTimeout, format!("no connection within {CONNECT_TIMEOUT:?}"));
            return;
        }
    };
    if let Err(e) = upstream.write_all(&hello).await {
        debug!(%peer, %original, error = %e, "proxy: replaying the ClientHello failed");
        return;
    }
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((up, down)) => debug!(%peer, %original, up, down, "proxy: spliced connection closed"),
        Err(e) => debug!(%peer, %original, error = %e, "proxy: spliced connection failed"),
    }
}
