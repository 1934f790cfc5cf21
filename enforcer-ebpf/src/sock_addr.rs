//! The verdict shared by the connect4/connect6/sendmsg4/sendmsg6 hooks.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use enforcer_common::{
    ALLOW_F_PROXY, ANY_PORT, AllowKey, AllowValue, DestKey, Event, FAMILY_V4, FAMILY_V6, FlowKey, HOOK_CONNECT4,
    HOOK_CONNECT6, MAX_CGROUP_DEPTH, Mode, OrigDest, PROTO_TCP, PROTO_UDP, PolicyId, ProxyDest, REASON_NOT_IN_REGISTRY,
    REASON_PORT_NOT_LISTED, REASON_PROTOCOL, SETTINGS_F_DNS_STEER, SETTINGS_F_PROXY, SETTINGS_F_WORKLOADS, ServiceId,
    SockInfo, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED, ip6_bytes, ip6_mapped_words, ip6_words, v4_from_mapped,
};

use crate::maps::{ALLOW, DESTS, DNS_ORIG, EVENT_DROPS, EVENTS, FLOWS, MODES, PROXY_ORIG, SETTINGS, SOCKS, WORKLOADS};

/// Return values of cgroup sock_addr programs: 1 lets the call proceed, 0 fails it with EPERM.
pub const ALLOW_CALL: i32 = 1;
pub const DENY_CALL: i32 = 0;

/// A destination as the maps key it.
struct Dest {
    family: u8,
    addr: [u8; 16],
    port: u16,
    proto: u8,
}

/// Judge one connect()/sendmsg(). `v6` selects which address field of the context is valid.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        // ICMP/raw sockets are not judged (see README limits).
        return ALLOW_CALL;
    }
    let mut dest = Dest { family: FAMILY_V4, addr: [0u8; 16], port: u16::from_be(sa.user_port as u16), proto };
    if v6 {
        let a = ip6_bytes([sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]]);
        match v4_from_mapped(&a) {
            // ::ffff:a.b.c.d is judged as the IPv4 address it is.
            Some(v4) => dest.addr[0..4].copy_from_slice(&v4),
            None => {
                dest.family = FAMILY_V6;
                dest.addr = a;
            }
        }
    } else {
        dest.addr[0..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    // Port-53 traffic goes to the agent's DNS forwarder (whatever resolver it was aimed at, even a
    // loopback one), which puts registry answers into ALLOW before the app sees them.
    if dest.port == DNS_PORT && steer_dns(ctx, &dest, v6) {
        return ALLOW_CALL;
    }
    if is_local(&dest) {
        return ALLOW_CALL;
    }

    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let policy_id = policy_of_caller();
    let mode = match MODES.get(policy_id.get()) {
        Some(m) => *m,
        None => Mode::Unset.raw(),
    };
    // The lookup runs in every mode so ALLOW_ANY still attributes traffic to registry services.
    let allowed = match lookup(policy_id, &dest, dest.port, dest.proto) {
        Some(v) => Some((v.service_id, v.flags)),
        None => lookup(policy_id, &dest, ANY_PORT, dest.proto).map(|v| (v.service_id, v.flags)),
    };
    if let Some((service_id, flags)) = allowed {
        count_flow(hook, cgroup_id, policy_id, service_id, VERDICT_ALLOWED, &dest);
        remember_socket(ctx, hook, cgroup_id, service_id, &dest);
        if flags & ALLOW_F_PROXY != 0 && dest.proto == PROTO_TCP && (hook == HOOK_CONNECT4 || hook == HOOK_CONNECT6) {
            steer_proxy(ctx, &dest, v6, service_id, cgroup_id);
        }
        return ALLOW_CALL;
    }
    if mode == Mode::AllowAny.raw() {
        // Passthrough: counted with no service.
        count_flow(hook, cgroup_id, policy_id, ServiceId::NONE, VERDICT_ALLOWED, &dest);
        remember_socket(ctx, hook, cgroup_id, ServiceId::NONE, &dest);
        return ALLOW_CALL;
    }

    // Not allowed: explain why (only on this path, so allowed connections pay two lookups at most).
    let other_proto = if dest.proto == PROTO_TCP { PROTO_UDP } else { PROTO_TCP };
    let (reason, service_id) = if let Some(v) = lookup(policy_id, &dest, dest.port, other_proto) {
        (REASON_PROTOCOL, v.service_id)
    } else if let Some(v) = DESTS.get(Key::new(
        DestKey::prefix_len(if dest.family == FAMILY_V4 { 32 } else { 128 }),
        DestKey { family: dest.family as u32, addr: dest.addr },
    )) {
        (REASON_PORT_NOT_LISTED, v.service_id)
    } else {
        (REASON_NOT_IN_REGISTRY, ServiceId::NONE)
    };
    let audit = mode == Mode::Audit.raw();
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENIED };
    count_flow(hook, cgroup_id, policy_id, service_id, verdict, &dest);
    emit(hook, cgroup_id, policy_id, service_id, mode, reason, verdict, &dest);
    debug!(ctx, "{} port {} proto {} reason {}", if audit { "audit" } else { "deny" }, dest.port, dest.proto, reason);
    if audit {
        // It goes through, to no registry service: PassthroughCluster.
        remember_socket(ctx, hook, cgroup_id, ServiceId::NONE, &dest);
        ALLOW_CALL
    } else {
        DENY_CALL
    }
}

/// For TCP connects that go through: remember who and to what service, by socket cookie, so the
/// sock_ops program can count the connection when it is established and closed.
#[inline(always)]
fn remember_socket(ctx: &SockAddrContext, hook: u8, cgroup_id: u64, service_id: ServiceId, dest: &Dest) {
    if dest.proto != PROTO_TCP || (hook != HOOK_CONNECT4 && hook != HOOK_CONNECT6) {
        return;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let info = SockInfo { cgroup_id, service_id, established: 0 };
    // Losing this only loses the connection's accounting, never its verdict.
    let _ = SOCKS.insert(&cookie, &info, 0);
}

const DNS_PORT: u16 = 53;

/// The policy judging the caller: the deepest of its cgroup ancestors (itself included) that has
/// a `WORKLOADS` entry, else the default policy. The walk runs only when per-workload policies
/// exist (SETTINGS_F_WORKLOADS) and is bounded by MAX_CGROUP_DEPTH levels.
#[inline(always)]
fn policy_of_caller() -> PolicyId {
    let walk = match SETTINGS.get(0) {
        Some(s) => s.flags & SETTINGS_F_WORKLOADS != 0,
        None => false,
    };
    if !walk {
        return PolicyId::DEFAULT;
    }
    let mut policy_id = PolicyId::DEFAULT;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions; 0 past the caller's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: read-only lookup of a value owned by the map.
        if let Some(w) = unsafe { WORKLOADS.get(&id) } {
            policy_id = w.policy_id;
        }
        level += 1;
    }
    policy_id
}

/// Rewrite a port-53 destination to the forwarder and remember the original by socket cookie.
/// Returns false (judge normally) when steering is off, the socket is the forwarder's own (marked),
/// or the destination already is the forwarder.
#[inline(always)]
fn steer_dns(ctx: &SockAddrContext, dest: &Dest, v6: bool) -> bool {
    let Some(s) = SETTINGS.get(0) else { return false };
    if s.flags & SETTINGS_F_DNS_STEER == 0 {
        return false;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context whose `sk` is a full socket.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if !sk.is_null() && s.agent_mark != 0 && unsafe { (*sk).mark } == s.agent_mark {
        return false;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDest { addr: dest.addr, port: dest.port, family: dest.family, _pad: [0; 5] };
    if DNS_ORIG.insert(&cookie, &orig, 0).is_err() {
        return false;
    }
    // SAFETY: connect/sendmsg programs may write the user address and port.
    unsafe {
        if !v6 {
            (*sa).user_ip4 = u32::from_ne_bytes(s.local_v4);
        } else if dest.family == FAMILY_V4 {
            // An IPv4-mapped destination on an IPv6 socket: ::ffff:<forwarder v4>.
            (*sa).user_ip6 = ip6_mapped_words(s.local_v4);
        } else {
            (*sa).user_ip6 = ip6_words(&s.local_v6);
        }
        (*sa).user_port = u32::from(s.dns_port.to_be());
    }
    true
}

/// Rewrite a TCP connect to the L7 proxy (127.0.0.1:proxy_port) and remember the original by
/// socket cookie. No-op when the proxy is off or the socket is the agent's own (marked).
#[inline(always)]
fn steer_proxy(ctx: &SockAddrContext, dest: &Dest, v6: bool, service_id: ServiceId, cgroup_id: u64) {
    let Some(s) = SETTINGS.get(0) else { return };
    if s.flags & SETTINGS_F_PROXY == 0 || s.proxy_port == 0 {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context whose `sk` is a full socket.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if !sk.is_null() && s.agent_mark != 0 && unsafe { (*sk).mark } == s.agent_mark {
        return;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = ProxyDest { addr: dest.addr, port: dest.port, family: dest.family, _pad: 0, service_id, cgroup_id };
    if PROXY_ORIG.insert(&cookie, &orig, 0).is_err() {
        return;
    }
    // SAFETY: connect programs may write the user address and port.
    unsafe {
        if v6 {
            // ::ffff:127.0.0.1 — the proxy listens on IPv4 only.
            (*sa).user_ip6 = ip6_mapped_words(s.local_v4);
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes(s.local_v4);
        }
        (*sa).user_port = u32::from(s.proxy_port.to_be());
    }
}

/// getpeername on a socket steered to the proxy: the original destination. Returns true if it
/// rewrote.
#[inline(always)]
pub fn restore_proxy(ctx: &SockAddrContext, v6: bool) -> bool {
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { PROXY_ORIG.get(&cookie) }) else { return false };
    let (family, addr, port) = (orig.family, orig.addr, orig.port);
    let sa = ctx.sock_addr;
    // SAFETY: getpeername programs may write the user address and port.
    unsafe {
        if !v6 {
            if family != FAMILY_V4 {
                return false;
            }
            (*sa).user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        } else if family == FAMILY_V4 {
            (*sa).user_ip6 = ip6_mapped_words([addr[0], addr[1], addr[2], addr[3]]);
        } else {
            (*sa).user_ip6 = ip6_words(&addr);
        }
        (*sa).user_port = u32::from(port.to_be());
    }
    true
}

/// recvmsg/getpeername on a steered socket: show the app the resolver it asked, not the
/// forwarder. Always returns 1 (these hooks cannot refuse).
#[inline(always)]
pub fn restore_dns(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(s) = SETTINGS.get(0) else { return 1 };
    if s.flags & SETTINGS_F_DNS_STEER == 0 {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: valid context; reads of the user address are allowed in these hooks.
    let (port, is_forwarder) = unsafe {
        let port = u16::from_be((*sa).user_port as u16);
        let fwd = if v6 {
            let w = (*sa).user_ip6;
            w == ip6_words(&s.local_v6) || w == ip6_mapped_words(s.local_v4)
        } else {
            (*sa).user_ip4 == u32::from_ne_bytes(s.local_v4)
        };
        (port, fwd)
    };
    if port != s.dns_port || !is_forwarder {
        return 1;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { DNS_ORIG.get(&cookie) }) else { return 1 };
    let (family, addr, oport) = (orig.family, orig.addr, orig.port);
    // SAFETY: recvmsg/getpeername programs may write the user address and port.
    unsafe {
        if !v6 {
            if family == FAMILY_V4 {
                (*sa).user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
            }
        } else if family == FAMILY_V4 {
            (*sa).user_ip6 = ip6_mapped_words([addr[0], addr[1], addr[2], addr[3]]);
        } else {
            (*sa).user_ip6 = ip6_words(&addr);
        }
        (*sa).user_port = u32::from(oport.to_be());
    }
    1
}

/// Add one to the per-CPU count of this (cgroup, destination, verdict).
#[inline(always)]
fn count_flow(hook: u8, cgroup_id: u64, policy_id: PolicyId, service_id: ServiceId, verdict: u8, dest: &Dest) {
    let key = FlowKey {
        cgroup_id,
        policy_id,
        service_id,
        addr: dest.addr,
        port: dest.port,
        proto: dest.proto,
        family: dest.family,
        verdict,
        hook,
        _pad: [0; 2],
    };
    match FLOWS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(count) => unsafe { *count += 1 },
        None => {
            // A failed insert only loses a count (the LRU map evicts rather than fills up).
            let _ = FLOWS.insert(&key, &1, 0);
        }
    }
}

#[inline(always)]
fn lookup(policy_id: PolicyId, dest: &Dest, port: u16, proto: u8) -> Option<&'static AllowValue> {
    let bits = if dest.family == FAMILY_V4 { 32 } else { 128 };
    ALLOW.get(Key::new(
        AllowKey::prefix_len(bits),
        AllowKey { policy_id, port, proto, family: dest.family, addr: dest.addr },
    ))
}

/// Loopback and the unspecified address (which Linux connects to the local host) are always
/// allowed: they never leave the node.
#[inline(always)]
fn is_local(dest: &Dest) -> bool {
    if dest.family == FAMILY_V4 {
        dest.addr[0] == 127 || dest.addr[0..4] == [0, 0, 0, 0]
    } else {
        let mut rest_zero = true;
        for b in &dest.addr[0..15] {
            if *b != 0 {
                rest_zero = false;
            }
        }
        rest_zero && (dest.addr[15] == 1 || dest.addr[15] == 0)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    hook: u8,
    cgroup_id: u64,
    policy_id: PolicyId,
    service_id: ServiceId,
    mode: u32,
    reason: u8,
    verdict: u8,
    dest: &Dest,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(drops) = EVENT_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *drops += 1 };
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = Event::zeroed();
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = cgroup_id;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.policy_id = policy_id;
    ev.service_id = service_id;
    ev.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    ev.addr = dest.addr;
    ev.port = dest.port;
    ev.proto = dest.proto;
    ev.family = dest.family;
    ev.hook = hook;
    ev.reason = reason;
    ev.verdict = verdict;
    ev.mode = mode;
    entry.write(ev);
    entry.submit(0);
}
