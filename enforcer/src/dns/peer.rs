//! Who asked: the cgroup of the socket a query came from, so DNS events name the workload as
//! connect-deny events do.
//!
//! The forwarder sees the client's address and port (its socket's local end) and its own
//! listening address (the client socket's remote end after steering). One sock_diag request
//! (`NETLINK_SOCK_DIAG`, an exact lookup, not a dump) for that socket returns its cgroup id
//! (`INET_DIAG_CGROUP_ID`, kernel >= 5.8). It is made while the client waits for the answer, so
//! the socket still exists; it is made only for the queries that produce an event.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// `INET_DIAG_CGROUP_ID` (include/uapi/linux/inet_diag.h): not named by the crate.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The client end of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client socket's address (the query's source).
    pub addr: SocketAddr,
    /// The forwarder's address the query reached.
    pub server: SocketAddr,
    pub tcp: bool,
}

/// The cgroup id of `c`'s socket (None: gone, another network namespace, or no sock_diag).
pub fn cgroup_of(c: &Client) -> Option<u64> {
    let (client, server) = (unmap(c.addr), unmap(c.server));
    if client.is_ipv4() != server.is_ipv4() {
        return None;
    }
    // TCP looks a socket up by (local, remote) = (src, dst); UDP's exact lookup takes the
    // packet's view, (src, dst) = (remote, local).
    let (src, dst) = if c.tcp { (client, server) } else { (server, client) };
    let sock = Socket::new(NETLINK_SOCK_DIAG).ok()?;
    sock.connect(&NlAddr::new(0, 0)).ok()?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST;
    let mut id = if src.is_ipv4() { SocketId::new_v4() } else { SocketId::new_v6() };
    id.source_address = src.ip();
    id.source_port = src.port();
    id.destination_address = dst.ip();
    id.destination_port = dst.port();
    id.cookie = [0xff; 8]; // INET_DIAG_NOCOOKIE
    let req = InetRequest {
        family: if src.is_ipv4() { AF_INET } else { AF_INET6 },
        protocol: if c.tcp { IPPROTO_TCP } else { IPPROTO_UDP },
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: id,
    };
    let mut msg = NetlinkMessage::new(hdr, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).ok()?;
    let mut rx = vec![0u8; 8192];
    let n = sock.recv(&mut &mut rx[..], 0).ok()?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[..n]).ok()?;
    let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) = reply.payload else { return None };
    resp.nlas.iter().find_map(|nla| match nla {
        Nla::Other(a) if a.kind() == INET_DIAG_CGROUP_ID && a.value_len() == 8 => {
            let mut v = [0u8; 8];
            a.emit_value(&mut v);
            Some(u64::from_ne_bytes(v))
        }
        _ => None,
    })
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack socket's view).
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cgroup_id() -> Option<u64> {
        let rel = crate::cgroup::self_cgroup().ok()?;
        let mount = crate::cgroup::cgroup2_mount().ok()?;
        crate::cgroup::cgroup_id(&mount.join(rel.strip_prefix("/").unwrap_or(&rel))).ok()
    }

    #[test]
    fn a_udp_and_a_tcp_client_socket_are_found_with_their_cgroup() {
        let Some(want) = own_cgroup_id() else {
            eprintln!("SKIP: no cgroup2 here");
            return;
        };
        // UDP: connected (glibc) and unconnected (musl) clients.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let s_addr = server.local_addr().unwrap();
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(s_addr).unwrap();
        let unconnected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for c in [&connected, &unconnected] {
            let client = Client { addr: c.local_addr().unwrap(), server: s_addr, tcp: false };
            assert_eq!(cgroup_of(&client), Some(want), "{client:?}");
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let client = Client { addr: t.local_addr().unwrap(), server: l.local_addr().unwrap(), tcp: true };
        assert_eq!(cgroup_of(&client), Some(want), "{client:?}");
        let gone = Client { addr: "127.0.0.1:9".parse().unwrap(), server: s_addr, tcp: false };
        assert_eq!(cgroup_of(&gone), None);
    }
}
