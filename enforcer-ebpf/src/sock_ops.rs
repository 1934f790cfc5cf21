//! TCP connection accounting and proxy filings (cgroup sock_ops). A connection counts as opened
//! when it reaches ESTABLISHED and as closed when it reaches CLOSE, with the payload bytes it
//! carried, per (cgroup, service); connect4/6 left the (cgroup, service) pair in the socket's
//! storage, in task context.
//!
//! The kernel calls sock_ops ~6 times per connection (timeout/rwnd init, ECN, connect,
//! established, ...); every callback this program does not need returns before any lookup, and
//! the state callback is enabled only on sockets that need it.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::SockOpsContext,
};
use enforcer_common::{
    ConnCounters, ConnKey, FAMILY_V4, FAMILY_V6, OrigDest, SETTINGS_F_PROXY, SOCK_F_ACCOUNT, SOCK_F_ESTABLISHED,
    SOCK_F_PROXIED, SockState, ip6_bytes, v4_from_mapped,
};

use crate::{
    maps::{CONNS, PROXY_ORIG, PROXY_PEERS, SOCK_STATE},
    sock_addr::settings,
};

const AF_INET6: u32 = 10;

/// `TCP_CLOSE` in the kernel's TCP state machine.
const TCP_CLOSE: u32 = 7;

#[inline(always)]
pub fn handle(ctx: &SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return 1;
    }
    if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) != TCP_CLOSE {
        return 1;
    }
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB && settings().flags & SETTINGS_F_PROXY == 0 {
        // Only proxy filings are made at connect.
        return 1;
    }
    // SAFETY: the context is a valid bpf_sock_ops; `sk` may be null (not a full socket).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    // SAFETY: a socket pointer from the context; the map is the BTF sk_storage map.
    let st = unsafe {
        bpf_sk_storage_get(core::ptr::from_ref(&SOCK_STATE).cast_mut().cast(), sk.cast(), core::ptr::null_mut(), 0)
    }
    .cast::<SockState>();
    if st.is_null() {
        return 1;
    }
    // SAFETY: a value pointer from the storage, valid during this program run.
    let s = unsafe { &mut *st };
    if s.flags & (SOCK_F_ACCOUNT | SOCK_F_PROXIED) == 0 {
        return 1;
    }
    let key = ConnKey { cgroup_id: s.cgroup_id, service_id: s.service_id, _pad: 0 };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        if s.flags & SOCK_F_PROXIED != 0 {
            file_proxy_peer(ctx);
            // See the close, to withdraw the filing.
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if s.flags & SOCK_F_ACCOUNT != 0 {
            // Ask for state callbacks on this socket so its close is seen.
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            s.flags |= SOCK_F_ESTABLISHED;
            bump(&key, 1, 0, 0, 0);
        }
    } else {
        if s.flags & SOCK_F_ESTABLISHED != 0 {
            // SAFETY: the context is a valid bpf_sock_ops; reads of these fields are allowed.
            let (sent, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
            s.flags &= !SOCK_F_ESTABLISHED;
            bump(&key, 0, 1, sent, received);
        }
        if s.flags & SOCK_F_PROXIED != 0 {
            s.flags &= !SOCK_F_PROXIED;
            withdraw_proxy_peer(ctx);
        }
    }
    1
}

/// The client's local address, as the proxy sees it on accept.
#[inline(always)]
fn local_key(ctx: &SockOpsContext) -> OrigDest {
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
    key
}

/// A connection steered to the L7 proxy now has its local port: file the original destination
/// under the client's address, bound to this socket's cookie.
#[inline(always)]
fn file_proxy_peer(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup of a value owned by the map.
    let Some(orig) = (unsafe { PROXY_ORIG.get(cookie) }) else { return };
    let mut orig = *orig;
    orig.cookie = cookie;
    let _ = PROXY_PEERS.insert(local_key(ctx), orig, 0);
}

/// The client socket closed: its filing goes (if it is still its own) with its `PROXY_ORIG`.
#[inline(always)]
fn withdraw_proxy_peer(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = local_key(ctx);
    // SAFETY: read-only lookup of a value owned by the map.
    if unsafe { PROXY_PEERS.get(key) }.is_some_and(|v| v.cookie == cookie) {
        let _ = PROXY_PEERS.remove(key);
    }
    let _ = PROXY_ORIG.remove(cookie);
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
            let _ = CONNS.insert(key, v, 0);
        }
    }
}
