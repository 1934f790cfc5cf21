//! Upstream TCP sockets: SO_MARK (so the BPF hooks leave them alone) and connect timeouts.

use std::{
    io,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::net::{TcpSocket, TcpStream};
use tracing::warn;

static MARK_EPERM_LOGGED: AtomicBool = AtomicBool::new(false);

/// Connects to `addr` from a socket carrying `mark` (SO_MARK). EPERM on the mark is logged once
/// and ignored. No timeout here: callers wrap the whole connect (+ handshake).
pub(crate) async fn connect(addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(mark) = mark {
        set_mark(&sock, mark);
    }
    let stream = sock.connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(sock: &TcpSocket, mark: u32) {
    if let Err(e) = socket2::SockRef::from(sock).set_mark(mark) {
        if e.raw_os_error() == Some(libc::EPERM) {
            if !MARK_EPERM_LOGGED.swap(true, Ordering::Relaxed) {
                warn!(mark, "proxy: SO_MARK needs CAP_NET_ADMIN; upstream sockets go unmarked");
            }
        } else {
            warn!(mark, error = %e, "proxy: setting SO_MARK failed");
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_sock: &TcpSocket, mark: u32) {
    if !MARK_EPERM_LOGGED.swap(true, Ordering::Relaxed) {
        warn!(mark, "proxy: SO_MARK is Linux-only; upstream sockets go unmarked");
    }
}
