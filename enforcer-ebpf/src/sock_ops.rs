//! TCP connection accounting: a connection counts as opened when it reaches ESTABLISHED and as
//! closed when it reaches CLOSE, with the payload bytes it carried, per (cgroup, service). The
//! (cgroup, service) pair was recorded by connect4/6 under the socket cookie, in task context.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::bpf_get_socket_cookie,
    programs::SockOpsContext,
};
use enforcer_common::{ConnCounters, ConnKey, FAMILY_V4, FAMILY_V6, OrigDest, ip6_bytes, v4_from_mapped};

use crate::maps::{CONNS, PROXY_ORIG, PROXY_PEERS, SOCKS};

const AF_INET6: u32 = 10;

/// `TCP_CLOSE` in the kernel's TCP state machine.
const TCP_CLOSE: u32 = 7;

#[inline(always)]
pub fn handle(ctx: &SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        file_proxy_peer(ctx);
        return 1;
    }
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return 1;
    }
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(info) = SOCKS.get_ptr_mut(&cookie) else { return 1 };
    // SAFETY: a value pointer from the map, valid during this program run.
    let (cgroup_id, service_id) = unsafe { ((*info).cgroup_id, (*info).service_id) };
    let key = ConnKey { cgroup_id, service_id, _pad: 0 };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // Ask for state callbacks on this socket so its close is seen.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        // SAFETY: as above.
        unsafe { (*info).established = 1 };
        bump(&key, 1, 0, 0, 0);
    } else if ctx.arg(1) == TCP_CLOSE {
        // SAFETY: the context is a valid bpf_sock_ops; reads of these fields are allowed.
        let (sent, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
        // SAFETY: as above.
        if unsafe { (*info).established } == 1 {
            bump(&key, 0, 1, sent, received);
        }
        let _ = SOCKS.remove(&cookie);
    }
    1
}

/// A connection steered to the L7 proxy now has its local port: file the original destination
/// under the client's address, which is what the proxy sees on accept.
#[inline(always)]
fn file_proxy_peer(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup of a value owned by the map.
    let Some(orig) = (unsafe { PROXY_ORIG.get(&cookie) }) else { return };
    let orig = *orig;
    let mut key = OrigDest { addr: [0; 16], port: ctx.local_port() as u16, family: FAMILY_V4, _pad: [0; 5] };
    if ctx.family() == AF_INET6 {
        // Four 32-bit reads: the verifier rejects wider loads of these context fields.
        // SAFETY: the context is a valid bpf_sock_ops.
        let w = unsafe {
            let p = (*ctx.ops).local_ip6.as_ptr();
            [
                core::ptr::read_volatile(p),
                core::ptr::read_volatile(p.add(1)),
                core::ptr::read_volatile(p.add(2)),
                core::ptr::read_volatile(p.add(3)),
            ]
        };
        let a = ip6_bytes(w);
        match v4_from_mapped(&a) {
            Some(v4) => key.addr[0..4].copy_from_slice(&v4),
            None => {
                key.family = FAMILY_V6;
                key.addr = a;
            }
        }
    } else {
        key.addr[0..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
    }
    let _ = PROXY_PEERS.insert(&key, &orig, 0);
}

#[inline(always)]
fn bump(key: &ConnKey, opened: u64, closed: u64, sent: u64, received: u64) {
    match CONNS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(c) => unsafe {
            (*c).opened += opened;
            (*c).closed += closed;
            (*c).payload_sent += sent;
            (*c).payload_received += received;
        },
        None => {
            let v = ConnCounters { opened, closed, payload_sent: sent, payload_received: received };
            let _ = CONNS.insert(key, &v, 0);
        }
    }
}
