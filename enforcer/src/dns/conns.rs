//! Open connections, for keeping learned addresses alive while they are in use (Cilium's
//! "zombies"): the remote ends of TCP connections the application holds and of connected UDP
//! sockets, read from `/proc/net/{tcp,tcp6,udp,udp6}` of the agent's network namespace.
//!
//! That covers `enforcer run` and host daemons (the workloads share the agent's namespace); a
//! workload in its own network namespace (a pod) is not seen here, and its learned addresses
//! live for TTL + `--dns-grace` only.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use enforcer_common::{PROTO_TCP, PROTO_UDP};

/// A remote end: address, port, protocol.
pub type Remote = (IpAddr, u16, u8);

/// TCP states in /proc/net/tcp (include/net/tcp_states.h) of a connection the application still
/// holds: ESTABLISHED, SYN_SENT, SYN_RECV and CLOSE_WAIT (the peer closed, the app has not).
/// FIN_WAIT*, CLOSING, LAST_ACK and TIME_WAIT are closed by the application (an orphan can sit in
/// FIN_WAIT2 for a minute), LISTEN and CLOSE have no peer.
const TCP_IN_USE: [u8; 4] = [0x01, 0x02, 0x03, 0x08];
/// A connected UDP socket shows as ESTABLISHED.
const UDP_ESTABLISHED: u8 = 0x01;

fn hex_v4(s: &str) -> Option<Ipv4Addr> {
    // The 32-bit address as printed by the kernel: the in-memory (network-order) word as a
    // host-endian hex number.
    let n = u32::from_str_radix(s, 16).ok()?;
    Some(Ipv4Addr::from(n.to_ne_bytes()))
}

fn hex_v6(s: &str) -> Option<Ipv6Addr> {
    if s.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for w in 0..4 {
        let n = u32::from_str_radix(&s[w * 8..w * 8 + 8], 16).ok()?;
        b[w * 4..w * 4 + 4].copy_from_slice(&n.to_ne_bytes());
    }
    Some(Ipv6Addr::from(b))
}

/// The remote ends in use in one /proc/net table (`tcp`: TCP states, else UDP).
pub fn parse_table(text: &str, tcp: bool) -> Vec<Remote> {
    let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(_local), Some(remote), Some(state)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(state) = u8::from_str_radix(state, 16) else { continue };
        let in_use = if tcp { TCP_IN_USE.contains(&state) } else { state == UDP_ESTABLISHED };
        if !in_use {
            continue;
        }
        let Some((addr, port)) = remote.split_once(':') else { continue };
        let Ok(port) = u16::from_str_radix(port, 16) else { continue };
        let ip = match addr.len() {
            8 => hex_v4(addr).map(IpAddr::V4),
            32 => hex_v6(addr).map(|a| a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a))),
            _ => None,
        };
        if let Some(ip) = ip
            && port != 0
        {
            out.push((ip, port, proto));
        }
    }
    out
}

/// Every remote end in use in this network namespace now.
pub fn open_remotes() -> HashSet<Remote> {
    let mut out = HashSet::new();
    for (path, tcp) in
        [("/proc/net/tcp", true), ("/proc/net/tcp6", true), ("/proc/net/udp", false), ("/proc/net/udp6", false)]
    {
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(parse_table(&text, tcp));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables_parse() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0200A8C0:D431 0B0012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0200A8C0:D432 0C0012C6:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n\
   3: 0200A8C0:D433 0D0012C6:1F90 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n\
   4: 0200A8C0:D434 0E0012C6:1F90 08 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n";
        assert_eq!(
            parse_table(tcp, true),
            vec![("198.18.0.11".parse().unwrap(), 8080, PROTO_TCP), ("198.18.0.14".parse().unwrap(), 8080, PROTO_TCP)],
            "ESTABLISHED and CLOSE_WAIT; not LISTEN, TIME_WAIT or FIN_WAIT2"
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:9C40 0000000000000000FFFF00000B0012C6:01BB 01 0 0 0\n\
   1: 00000000000000000000000001000000:9C41 B80D0120000000000000000001000000:01BB 02 0 0 0\n";
        assert_eq!(
            parse_table(tcp6, true),
            vec![("198.18.0.11".parse().unwrap(), 443, PROTO_TCP), ("2001:db8::1".parse().unwrap(), 443, PROTO_TCP)]
        );
        let udp = "  sl  local_address rem_address   st\n\
   0: 0100007F:A000 0B0012C6:0035 01 0 0\n\
   1: 00000000:0044 00000000:0000 07 0 0\n";
        assert_eq!(parse_table(udp, false), vec![("198.18.0.11".parse().unwrap(), 53, PROTO_UDP)]);
    }
}
