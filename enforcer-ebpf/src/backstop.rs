//! The per-packet backstop (cgroup_skb egress, IPv4 and IPv6 in one program): every packet a
//! socket of the cgroup sends is judged by its *real* destination and L4 protocol, against the
//! same ALLOW maps as connect/sendmsg. It catches what the socket address does not show: IPv6
//! routing headers and IPv4 source routes, DNAT in the workload's own netns, raw and ping
//! sockets, ICMP, UDP-Lite, SCTP, any protocol; and it refuses, at its first datagram, a UDP
//! socket whose connect() went to a denied destination.
//!
//! Cheap on the common path: a TCP socket's packets after its SYN pass at once (its destination
//! cannot change), the SYN gets the full lookup (one hash lookup); a socket that has storage
//! (`SOCK_STATE`: accounted TCP, a UDP connect() that was not allowed, a socket the backstop
//! refused) is decided by one storage lookup and a compare when the destination is the recorded
//! one. Anything else (UDP datagrams, ICMP, raw) gets the full lookup; a refusal is cached on the
//! socket so it is reported once.
//!
//! A dropped packet (return 0) fails the sending syscall with EPERM where the kernel passes the
//! error up: UDP/UDP-Lite send*, ping and raw sockets. A TCP segment is retransmitted instead, so
//! a TCP connect redirected by NAT or a source route times out (its SYNs never leave).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    programs::SkBuffContext,
};
use enforcer_common::{
    ANY_PORT, FAMILY_V4, FAMILY_V6, HOOK_BACKSTOP4, HOOK_BACKSTOP6, Mode, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE,
    PolicyId, REASON_SOURCE_ROUTE, SOCK_F_REPORTED, ServiceId, Settings, SockState, VERDICT_ALLOWED, VERDICT_AUDIT,
    VERDICT_DENIED, has_ports,
};

use crate::{
    maps::SOCK_STATE,
    sock_addr::{
        Dest, cached_policy, count_flow, emit, explain, icmp_to_registered, is_local, lookup, mode_of, settings,
    },
};

/// cgroup_skb return values: 1 passes the packet, 0 drops it (EPERM to the sender where possible).
const PASS: i32 = 1;
const DROP: i32 = 0;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// IPv6 extension headers walked to find the L4 header (and routing headers).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// IPv4 options that route the packet via other addresses.
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;

/// What the backstop needs from a packet.
struct Packet {
    dest: Dest,
    /// A routing header / source-route option: delivered via addresses not judged here.
    source_route: bool,
    /// TCP with SYN and without ACK: the first packet of a connection.
    syn: bool,
}

/// `TASK`: whether this kernel lets cgroup_skb programs read the current task (pid and comm of the
/// sender; Linux 6.10 added pid_tgid, later kernels comm). Without it a refused packet's event
/// carries the pid and comm recorded on its socket at connect()/sendmsg(), or none.
#[inline(always)]
pub fn check<const TASK: bool>(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands cgroup_skb programs a valid __sk_buff.
    let l3 = u16::from_be(unsafe { (*skb).protocol } as u16);
    let (parsed, hook) = match l3 {
        ETH_P_IP => (parse_v4_direct(skb).map_or_else(|| parse_v4(ctx), Ok), HOOK_BACKSTOP4),
        ETH_P_IPV6 => (parse_v6_direct(skb).map_or_else(|| parse_v6(ctx), Ok), HOOK_BACKSTOP6),
        // Not IP (never seen from an inet socket).
        _ => return PASS,
    };
    let pkt = match parsed {
        Ok(p) => p,
        // Unreadable headers: judged as a packet of unknown protocol to an unknown address.
        Err(_) => Packet {
            dest: Dest { family: FAMILY_V4, addr: [0xff; 16], port: ANY_PORT, proto: 255 },
            source_route: true,
            syn: false,
        },
    };
    if !pkt.source_route && is_local(&pkt.dest) {
        return PASS;
    }
    if !pkt.source_route && is_agent(&pkt.dest) {
        // The agent's own listeners (DNS forwarder, L7 proxy) on a node-local address (Kubernetes
        // `--local-address`): where the connect/sendmsg hooks steer to.
        return PASS;
    }
    // SAFETY: as above; `sk` may be null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: helper valid for cgroup_skb programs on a non-null socket.
    let fsk = unsafe { bpf_sk_fullsock(sk) };
    if fsk.is_null() {
        // A request or time-wait socket: SYN-ACKs and the last ACKs of connections made *to* the
        // workload, whose peer is the one that connected.
        return PASS;
    }
    // SAFETY: a full socket.
    let (ty, sk_proto) = unsafe { ((*fsk).type_, (*fsk).protocol) };
    // The packet goes where the socket is connected: connect() judged exactly this destination
    // (NAT and source routes make them differ).
    let to_peer = !pkt.source_route && to_connected_peer(fsk, &pkt.dest);
    if pkt.dest.proto == PROTO_TCP
        && ty == SOCK_STREAM
        && sk_proto == u32::from(PROTO_TCP)
        && !pkt.source_route
        && (!pkt.syn || to_peer)
    {
        // A real TCP socket: its SYN to the connected peer was allowed by connect4/6 (a denied
        // connect() never sends one); past the SYN, the destination was judged with the SYN
        // (NAT applies to the whole connection), or the socket was accepted from a listener
        // (its peer connected to it), or it is older than the hooks.
        return PASS;
    }
    let st = storage(fsk, false);
    if !st.is_null() {
        // SAFETY: a value pointer from the storage, valid during this program run.
        let s = unsafe { &mut *st };
        if same_dest(s, &pkt.dest) && (s.reason == REASON_SOURCE_ROUTE) == pkt.source_route {
            if s.verdict == VERDICT_ALLOWED {
                return PASS;
            }
            if s.flags & SOCK_F_REPORTED == 0 {
                // The first send of a UDP socket whose connect() was not allowed: report it now.
                s.flags |= SOCK_F_REPORTED;
                let d = Dest { family: s.family, addr: s.addr, port: s.port, proto: s.proto };
                count_flow(hook, s.cgroup_id, s.policy_id, s.service_id, s.verdict, &d);
                let pid = u64::from(s.pid);
                emit(
                    hook,
                    s.cgroup_id,
                    pid << 32 | pid,
                    &s.comm,
                    s.policy_id,
                    s.service_id,
                    s.mode,
                    s.reason,
                    s.verdict,
                    &d,
                );
            }
            return if s.verdict == VERDICT_AUDIT { PASS } else { DROP };
        }
    } else if to_peer && ty == SOCK_DGRAM && (sk_proto == u32::from(PROTO_UDP) || sk_proto == u32::from(PROTO_UDPLITE))
    {
        // A UDP socket whose connect() was allowed (a refused one carries its verdict in storage).
        return PASS;
    }
    judge::<TASK>(skb, fsk, st, hook, &pkt)
}

/// The full judgment of a packet whose destination is not the one its socket was judged for.
#[inline(always)]
fn judge<const TASK: bool>(skb: *mut __sk_buff, fsk: *mut bpf_sock, st: *mut SockState, hook: u8, pkt: &Packet) -> i32 {
    let s = settings();
    // SAFETY: helper valid for cgroup_skb programs.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let policy_id = if st.is_null() {
        policy_of_skb(skb, s, cgroup_id)
    } else {
        // SAFETY: as in `check`.
        unsafe { (*st).policy_id }
    };
    let mode = mode_of(policy_id);
    if mode == Mode::AllowAny.raw() {
        return PASS;
    }
    let allowed = if pkt.source_route {
        None
    } else {
        match lookup(s.flags, policy_id, &pkt.dest) {
            Some(v) => Some(v.service_id),
            None => icmp_to_registered(s.flags, &pkt.dest),
        }
    };
    if allowed.is_some() {
        if !st.is_null() {
            // The socket was judged for another destination: this one is allowed too; remember
            // the latest, so its next packets take the fast path.
            // SAFETY: as in `check`.
            cache(unsafe { &mut *st }, &pkt.dest, VERDICT_ALLOWED, 0);
        }
        return PASS;
    }
    // Denied (or audited): remember it on the socket, so its next packets to this destination
    // are dropped (or passed) without another report.
    let st = if st.is_null() { storage(fsk, true) } else { st };
    let (reason, service_id) =
        if pkt.source_route { (REASON_SOURCE_ROUTE, ServiceId::NONE) } else { explain(s.flags, policy_id, &pkt.dest) };
    let verdict = if mode == Mode::Audit.raw() { VERDICT_AUDIT } else { VERDICT_DENIED };
    // Datagrams and first SYNs are sent in the sender's own syscall: the current task is the
    // sender (a socket recorded at connect() has its connecting task instead).
    let (mut pid, mut comm) = if TASK {
        ((bpf_get_current_pid_tgid() >> 32) as u32, bpf_get_current_comm().unwrap_or([0u8; 16]))
    } else {
        (0, [0u8; 16])
    };
    if !st.is_null() {
        // SAFETY: as in `check`.
        let c = unsafe { &mut *st };
        if c.pid != 0 {
            pid = c.pid;
            comm = c.comm;
        }
        if c.cgroup_id == 0 {
            c.cgroup_id = cgroup_id;
            c.policy_id = policy_id;
            c.mode = mode;
            c.hook = hook;
        }
        cache(c, &pkt.dest, verdict, reason);
        c.flags |= SOCK_F_REPORTED;
    }
    count_flow(hook, cgroup_id, policy_id, service_id, verdict, &pkt.dest);
    let pid = u64::from(pid);
    emit(hook, cgroup_id, pid << 32 | pid, &comm, policy_id, service_id, mode, reason, verdict, &pkt.dest);
    if verdict == VERDICT_AUDIT { PASS } else { DROP }
}

#[inline(always)]
fn cache(c: &mut SockState, d: &Dest, verdict: u8, reason: u8) {
    c.addr = d.addr;
    c.port = d.port;
    c.proto = d.proto;
    c.family = d.family;
    c.verdict = verdict;
    c.reason = reason;
    c.flags &= !SOCK_F_REPORTED;
}

/// Whether `d` is the peer the socket is connected to (its destination address and port).
#[inline(always)]
fn to_connected_peer(fsk: *mut bpf_sock, d: &Dest) -> bool {
    // SAFETY: a full socket; 2-byte and 4-byte loads of these fields are allowed.
    unsafe {
        if u16::from_be((*fsk).dst_port) != d.port {
            return false;
        }
        if d.family == FAMILY_V4 {
            return (*fsk).dst_ip4.to_ne_bytes() == [d.addr[0], d.addr[1], d.addr[2], d.addr[3]];
        }
        let p = (*fsk).dst_ip6.as_ptr();
        let w = [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ];
        enforcer_common::ip6_bytes(w) == d.addr
    }
}

#[inline(always)]
fn same_dest(s: &SockState, d: &Dest) -> bool {
    s.port == d.port && s.proto == d.proto && s.family == d.family && s.addr == d.addr
}

#[inline(always)]
fn storage(fsk: *mut bpf_sock, create: bool) -> *mut SockState {
    let flags = if create { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: a full socket pointer; the map is the BTF sk_storage map.
    unsafe {
        bpf_sk_storage_get(core::ptr::from_ref(&SOCK_STATE).cast_mut().cast(), fsk.cast(), core::ptr::null_mut(), flags)
    }
    .cast::<SockState>()
}

/// The policy of the packet's socket's cgroup: as `policy_of_caller`, from the skb's cgroup.
#[inline(always)]
fn policy_of_skb(skb: *mut __sk_buff, s: &Settings, cgroup_id: u64) -> PolicyId {
    // SAFETY: helper valid for cgroup_skb programs; 0 past the socket's own level.
    cached_policy(s, cgroup_id, |level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) })
}

#[inline(always)]
fn ports(ctx: &SkBuffContext, proto: u8, l4: usize, first_fragment: bool) -> Result<(u16, bool), i64> {
    if !has_ports(proto) || !first_fragment {
        return Ok((ANY_PORT, false));
    }
    let p: [u8; 4] = ctx.load(l4)?;
    let dport = u16::from_be_bytes([p[2], p[3]]);
    let syn = if proto == PROTO_TCP {
        let flags: u8 = ctx.load(l4 + 13)?;
        flags & 0x12 == 0x02
    } else {
        false
    };
    Ok((dport, syn))
}

/// The linear packet data as `[data, data_end)`: the headers of a locally built packet are there,
/// read without a helper call.
#[inline(always)]
fn linear(skb: *mut __sk_buff) -> (usize, usize) {
    // SAFETY: the kernel hands cgroup_skb programs a valid __sk_buff.
    unsafe { ((*skb).data as usize, (*skb).data_end as usize) }
}

/// IPv4 without options, read directly; `None`: take the helper path.
#[inline(always)]
fn parse_v4_direct(skb: *mut __sk_buff) -> Option<Packet> {
    let (data, end) = linear(skb);
    if data + 20 + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above against data_end.
    let h = unsafe { &*(data as *const [u8; 34]) };
    if h[0] != 0x45 {
        // Options (or not IPv4): the full parser.
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let proto = h[9];
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&h[16..20]);
    let (port, syn) = if has_ports(proto) && frag == 0 {
        (u16::from_be_bytes([h[22], h[23]]), proto == PROTO_TCP && h[33] & 0x12 == 0x02)
    } else {
        (ANY_PORT, false)
    };
    Some(Packet { dest: Dest { family: FAMILY_V4, addr, port, proto }, source_route: false, syn })
}

/// IPv6 with the L4 header right after the fixed header, read directly; `None`: the full parser
/// (extension headers, short linear part).
#[inline(always)]
fn parse_v6_direct(skb: *mut __sk_buff) -> Option<Packet> {
    let (data, end) = linear(skb);
    if data + 40 + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above against data_end.
    let h = unsafe { &*(data as *const [u8; 54]) };
    let proto = h[6];
    if !has_ports(proto) && proto != enforcer_common::PROTO_ICMPV6 {
        return None;
    }
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&h[24..40]);
    let (port, syn) = if has_ports(proto) {
        (u16::from_be_bytes([h[42], h[43]]), proto == PROTO_TCP && h[53] & 0x12 == 0x02)
    } else {
        (ANY_PORT, false)
    };
    Some(Packet { dest: Dest { family: FAMILY_V6, addr, port, proto }, source_route: false, syn })
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext) -> Result<Packet, i64> {
    let h: [u8; 20] = ctx.load(0)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(-1);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let proto = h[9];
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&h[16..20]);
    let source_route = ihl > 20 && v4_source_route(ctx, ihl - 20)?;
    let (port, syn) = ports(ctx, proto, ihl, frag == 0)?;
    Ok(Packet { dest: Dest { family: FAMILY_V4, addr, port, proto }, source_route, syn })
}

/// Whether the IPv4 options (`len` bytes after the fixed header) hold a loose or strict source
/// route. Read a byte at a time with the helper (packets with options are rare): no
/// variable-offset stack access for the verifier to refuse.
#[inline(always)]
fn v4_source_route(ctx: &SkBuffContext, len: usize) -> Result<bool, i64> {
    let len = len & 0x3f;
    let mut i = 0usize;
    let mut steps = 0;
    while steps < 40 && i < len && i < 40 {
        steps += 1;
        let t: u8 = ctx.load(20 + i)?;
        match t {
            0 => break,
            1 => i += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Ok(true),
            _ => {
                let l: u8 = ctx.load(20 + i + 1)?;
                if l < 2 {
                    // Malformed: the kernel never builds this; treat it as suspicious.
                    return Ok(true);
                }
                i += usize::from(l);
            }
        }
    }
    Ok(false)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Result<Packet, i64> {
    let h: [u8; 40] = ctx.load(0)?;
    let mut nh = h[6];
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&h[24..40]);
    let mut off = 40usize;
    let mut source_route = false;
    let mut first_fragment = true;
    // A bounded walk of the extension headers.
    let mut i = 0;
    while i < 6 {
        i += 1;
        match nh {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING => {
                if nh == NEXTHDR_ROUTING {
                    source_route = true;
                }
                let e: [u8; 2] = ctx.load(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let e: [u8; 4] = ctx.load(off)?;
                nh = e[0];
                first_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 == 0;
                off += 8;
            }
            NEXTHDR_AUTH => {
                let e: [u8; 2] = ctx.load(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            _ => break,
        }
    }
    let (port, syn) = ports(ctx, nh, off, first_fragment)?;
    Ok(Packet { dest: Dest { family: FAMILY_V6, addr, port, proto: nh }, source_route, syn })
}

/// The DNS forwarder's or the L7 proxy's address and port, as SETTINGS gives them.
#[inline(always)]
fn is_agent(dest: &Dest) -> bool {
    let s = settings();
    if dest.port == 0 || (dest.port != s.dns_port && dest.port != s.proxy_port) {
        return false;
    }
    if dest.family == FAMILY_V4 {
        s.local_v4 != [0; 4] && dest.addr[0..4] == s.local_v4
    } else {
        s.local_v6 != [0; 16] && dest.addr == s.local_v6
    }
}
