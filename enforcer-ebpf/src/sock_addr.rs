//! The verdict of the connect4/connect6/sendmsg4/sendmsg6 hooks, and the lookups, explanations,
//! flow counts and events the backstop (`backstop.rs`) shares with them.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_sk_storage_get},
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use enforcer_common::{
    ALLOW_F_PROXY, ANY_PORT, AllowKey, AllowValue, DNS_FALLBACK_DIRECT, DNS_FALLBACK_REFUSE, DNS_HEARTBEAT_TIMEOUT_NS,
    DestKey, Event, FAMILY_V4, FAMILY_V6, FlowKey, HOOK_CONNECT4, HOOK_CONNECT6, MAX_CGROUP_DEPTH, Mode, OrigDest,
    POLICY_F_DNS_STEER, POLICY_F_UNGOVERNED, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE,
    PolicyCacheValue, PolicyId, ProxyDest, REASON_DNS_FORWARDER_DOWN, REASON_NOT_IN_REGISTRY, REASON_PORT_NOT_LISTED,
    REASON_PROTOCOL, SETTINGS_F_ACCOUNTING, SETTINGS_F_BACKSTOP, SETTINGS_F_DNS_STEER, SETTINGS_F_ICMP,
    SETTINGS_F_PROXY, SETTINGS_F_TRIE, SETTINGS_F_WORKLOADS, SOCK_F_ACCOUNT, SOCK_F_PROXIED, SOCK_F_REPORTED,
    ServiceId, Settings, SockState, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED, ip6_bytes, ip6_mapped_words,
    ip6_words, v4_from_mapped,
};

use crate::maps::{
    ALLOW, ALLOW_EXACT, DESTS, DNS_ALIVE, DNS_ORIG, EVENT_DROPS, EVENTS, FLOWS, MODES, POLICY_CACHE, POLICY_FLAGS,
    PROXY_ORIG, SETTINGS, SOCK_STATE, WORKLOADS,
};

/// Return values of cgroup sock_addr programs: 1 lets the call proceed, 0 fails it with EPERM.
pub const ALLOW_CALL: i32 = 1;
pub const DENY_CALL: i32 = 0;

/// A destination as the maps key it.
#[derive(Clone, Copy)]
pub struct Dest {
    pub family: u8,
    pub addr: [u8; 16],
    /// `ANY_PORT` for protocols without ports.
    pub port: u16,
    /// The real IP protocol number.
    pub proto: u8,
}

/// Settings every program reads once per call: a zeroed copy when the map slot is unreadable
/// (never: an array slot always exists), which judges everything by the default policy with no
/// steering.
#[inline(always)]
pub fn settings() -> &'static Settings {
    static ZERO: Settings = Settings {
        local_v6: [0; 16],
        local_v4: [0; 4],
        dns_port: 0,
        flags: 0,
        agent_mark: 0,
        proxy_port: 0,
        dns_fallback: 0,
        _pad: 0,
        workloads_gen: 0,
        _pad2: 0,
    };
    SETTINGS.get(0).unwrap_or(&ZERO)
}

/// The raw mode of `policy_id` (`Mode::Unset`, judged as REGISTRY_ONLY, when never written).
#[inline(always)]
pub fn mode_of(policy_id: PolicyId) -> u32 {
    match MODES.get(policy_id.get()) {
        Some(m) => *m,
        None => Mode::Unset.raw(),
    }
}

/// Judge one connect()/sendmsg(). `v6` selects which address field of the context is valid.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    let udp = proto == PROTO_UDP || proto == PROTO_UDPLITE;
    if proto != PROTO_TCP && !udp {
        // Ping sockets and anything else: their packets are judged one by one by the backstop.
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
    let s = settings();
    // The forwarder speaks UDP and TCP only: UDP-Lite to port 53 is judged like any destination.
    let dns = dest.port == DNS_PORT && proto != PROTO_UDPLITE;
    if !dns && is_local(&dest) {
        return ALLOW_CALL;
    }

    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let policy_id = policy_of_caller(s, cgroup_id);
    let pflags = policy_flags(policy_id);
    if pflags & POLICY_F_UNGOVERNED != 0 {
        // Not governed (Kubernetes' node default): untouched, at the cost of the policy lookup.
        return ALLOW_CALL;
    }
    let mode = mode_of(policy_id);
    if dns {
        // Port-53 traffic of a steered policy goes to the agent's DNS forwarder (whatever resolver
        // it was aimed at, even a loopback one), which puts registry answers into ALLOW before the
        // app sees them; while the forwarder is not running, `Settings::dns_fallback` decides.
        match steer_dns(ctx, s, pflags, mode, &dest, v6) {
            Steer::Steered => return ALLOW_CALL,
            Steer::Refuse => {
                count_flow(hook, cgroup_id, policy_id, ServiceId::NONE, VERDICT_DENIED, &dest);
                let comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
                emit(
                    hook,
                    cgroup_id,
                    bpf_get_current_pid_tgid(),
                    &comm,
                    policy_id,
                    ServiceId::NONE,
                    mode,
                    REASON_DNS_FORWARDER_DOWN,
                    VERDICT_DENIED,
                    &dest,
                );
                return DENY_CALL;
            }
            Steer::Direct => {}
        }
        if is_local(&dest) {
            return ALLOW_CALL;
        }
    }
    let connect = hook == HOOK_CONNECT4 || hook == HOOK_CONNECT6;
    // The lookup runs in every mode so ALLOW_ANY still attributes traffic to registry services.
    if let Some(v) = lookup(s.flags, policy_id, &dest) {
        count_flow(hook, cgroup_id, policy_id, v.service_id, VERDICT_ALLOWED, &dest);
        let mut flags = 0;
        if connect && proto == PROTO_TCP {
            if s.flags & SETTINGS_F_ACCOUNTING != 0 {
                flags |= SOCK_F_ACCOUNT;
            }
            if v.flags & ALLOW_F_PROXY != 0 && steer_proxy(ctx, s, &dest, v6, v.service_id, cgroup_id) {
                flags |= SOCK_F_PROXIED;
            }
        }
        // Socket storage costs an allocation (~300 ns here): only TCP connections that sock_ops
        // must account or file for the proxy get one. The backstop needs none for an allowed TCP
        // socket (it judges its SYN) nor for allowed UDP (it judges each datagram).
        if flags != 0 {
            let j = Judged { policy_id, service_id: v.service_id, mode, verdict: VERDICT_ALLOWED, reason: 0, flags };
            let _ = record(ctx, hook, cgroup_id, &j, &dest);
        }
        return ALLOW_CALL;
    }
    if mode == Mode::AllowAny.raw() {
        // Passthrough: counted with no service.
        count_flow(hook, cgroup_id, policy_id, ServiceId::NONE, VERDICT_ALLOWED, &dest);
        if connect && proto == PROTO_TCP && s.flags & SETTINGS_F_ACCOUNTING != 0 {
            let j = Judged {
                policy_id,
                service_id: ServiceId::NONE,
                mode,
                verdict: VERDICT_ALLOWED,
                reason: 0,
                flags: SOCK_F_ACCOUNT,
            };
            let _ = record(ctx, hook, cgroup_id, &j, &dest);
        }
        return ALLOW_CALL;
    }

    // Not allowed: explain why (only on this path, so allowed connections pay one lookup).
    let (reason, service_id) = explain(s.flags, policy_id, &dest);
    let audit = mode == Mode::Audit.raw();
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENIED };
    if udp && connect && s.flags & SETTINGS_F_BACKSTOP != 0 {
        // A UDP connect() sends nothing (glibc connects one to each address getaddrinfo returns,
        // to sort them, RFC 6724): no event, no flow. The verdict is kept on the socket and the
        // backstop reports it, and refuses with EPERM, at the first datagram actually sent.
        let j = Judged { policy_id, service_id, mode, verdict, reason, flags: 0 };
        if record(ctx, hook, cgroup_id, &j, &dest) {
            return ALLOW_CALL;
        }
        // No storage for the verdict (out of memory): refuse now rather than let it send.
    }
    count_flow(hook, cgroup_id, policy_id, service_id, verdict, &dest);
    let comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    emit(hook, cgroup_id, bpf_get_current_pid_tgid(), &comm, policy_id, service_id, mode, reason, verdict, &dest);
    debug!(ctx, "{} port {} proto {} reason {}", if audit { "audit" } else { "deny" }, dest.port, dest.proto, reason);
    if audit {
        // It goes through, to no registry service: PassthroughCluster.
        let flags = if connect && proto == PROTO_TCP && s.flags & SETTINGS_F_ACCOUNTING != 0 {
            SOCK_F_ACCOUNT | SOCK_F_REPORTED
        } else {
            SOCK_F_REPORTED
        };
        let j = Judged { policy_id, service_id: ServiceId::NONE, mode, verdict, reason, flags };
        let _ = record(ctx, hook, cgroup_id, &j, &dest);
        ALLOW_CALL
    } else {
        DENY_CALL
    }
}

/// What was decided for a destination.
pub struct Judged {
    pub policy_id: PolicyId,
    pub service_id: ServiceId,
    pub mode: u32,
    pub verdict: u8,
    pub reason: u8,
    /// `SOCK_F_*` to record.
    pub flags: u8,
}

/// Keep the verdict on the socket (`SOCK_STATE`), for the backstop and the sock_ops accounting.
#[inline(always)]
fn record(ctx: &SockAddrContext, hook: u8, cgroup_id: u64, j: &Judged, dest: &Dest) -> bool {
    // SAFETY: `sk` of a sock_addr context is a full socket.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: a valid socket pointer; the storage map is a BTF sk_storage map.
    let st = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SOCK_STATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if st.is_null() {
        // Out of memory: the backstop judges this socket's packets in full.
        return false;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a value pointer from the storage, valid during this program run. Written field by
    // field so the verifier sees plain stores.
    unsafe {
        (*st).cgroup_id = cgroup_id;
        (*st).addr = dest.addr;
        (*st).port = dest.port;
        (*st).proto = dest.proto;
        (*st).family = dest.family;
        (*st).verdict = j.verdict;
        (*st).reason = j.reason;
        // Accounting flags of an established connection survive a later sendmsg-less update.
        (*st).flags = j.flags;
        (*st).hook = hook;
        (*st).policy_id = j.policy_id;
        (*st).service_id = j.service_id;
        (*st).mode = j.mode;
        (*st).pid = pid;
        if j.verdict != VERDICT_ALLOWED {
            (*st).comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
        }
    }
    true
}

const DNS_PORT: u16 = 53;

/// The policy judging the caller: the deepest of its cgroup ancestors (itself included) that has
/// a `WORKLOADS` entry, else the default policy. Only when per-workload policies exist
/// (SETTINGS_F_WORKLOADS): first `POLICY_CACHE` (one lookup by the caller's own cgroup id, valid
/// for the current `Settings::workloads_gen`), else the walk, bounded by MAX_CGROUP_DEPTH levels,
/// whose answer is cached. The generation is read before the walk, and the dataplane bumps it
/// after every WORKLOADS write, so a walk that raced a write is cached as already stale.
#[inline(always)]
pub fn policy_of_caller(s: &Settings, cgroup_id: u64) -> PolicyId {
    // SAFETY: helper without preconditions; 0 past the caller's own level.
    cached_policy(s, cgroup_id, |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The policy of the cgroup `cgroup_id` (the caller's, or a packet's socket's): from
/// `POLICY_CACHE` while its generation is current, else the deepest ancestor (itself included,
/// `ancestor(level)`; 0 past its own level) with a `WORKLOADS` entry, cached. Only when
/// per-workload policies exist (SETTINGS_F_WORKLOADS); bounded by MAX_CGROUP_DEPTH levels.
#[inline(always)]
pub fn cached_policy(s: &Settings, cgroup_id: u64, ancestor: impl Fn(i32) -> u64) -> PolicyId {
    if s.flags & SETTINGS_F_WORKLOADS == 0 {
        return PolicyId::DEFAULT;
    }
    // SAFETY: a plain read of a field of the map value; volatile so it stays before the walk.
    let gen_ = unsafe { core::ptr::read_volatile(&s.workloads_gen) };
    // SAFETY: read-only lookup of a value owned by the map.
    if let Some(c) = unsafe { POLICY_CACHE.get(cgroup_id) }
        && c.gen_ == gen_
    {
        return c.policy_id;
    }
    let mut policy_id = PolicyId::DEFAULT;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        // SAFETY: read-only lookup of a value owned by the map.
        if let Some(w) = unsafe { WORKLOADS.get(id) } {
            policy_id = w.policy_id;
        }
        level += 1;
    }
    // A failed insert only costs the next call another walk.
    let _ = POLICY_CACHE.insert(cgroup_id, PolicyCacheValue { policy_id, gen_ }, 0);
    policy_id
}

/// `POLICY_F_*` of `policy_id` (0 when never written).
#[inline(always)]
pub fn policy_flags(policy_id: PolicyId) -> u32 {
    match POLICY_FLAGS.get(policy_id.get()) {
        Some(f) => *f,
        None => 0,
    }
}

/// Whether the DNS forwarder's heartbeat is fresh (the agent beats every second).
#[inline(always)]
fn forwarder_alive() -> bool {
    let beat = match DNS_ALIVE.get(0) {
        Some(b) => *b,
        None => 0,
    };
    // SAFETY: helper without preconditions.
    beat != 0 && unsafe { bpf_ktime_get_boot_ns() } <= beat.saturating_add(DNS_HEARTBEAT_TIMEOUT_NS)
}

/// Whether a learned entry is still alive (registry entries never expire). The clock is read
/// only for learned entries.
#[inline(always)]
fn live(v: &AllowValue) -> bool {
    // SAFETY: helper without preconditions.
    v.expires_ns == 0 || v.expires_ns > unsafe { bpf_ktime_get_boot_ns() }
}

/// The ALLOW entry for `dest` under `policy_id`: the exact hash first (one lookup: a single
/// address on this port), then, only while the trie holds entries, the longest prefix on this
/// port and on `ANY_PORT`. Expired learned entries do not count.
#[inline(always)]
pub fn lookup(settings_flags: u16, policy_id: PolicyId, dest: &Dest) -> Option<AllowValue> {
    let mut key = AllowKey { policy_id, port: dest.port, proto: dest.proto, family: dest.family, addr: dest.addr };
    if dest.port != ANY_PORT {
        // SAFETY: read-only lookup; the value is copied out at once.
        if let Some(v) = unsafe { ALLOW_EXACT.get(key) }
            && live(v)
        {
            return Some(*v);
        }
    }
    if settings_flags & SETTINGS_F_TRIE == 0 {
        return None;
    }
    let plen = AllowKey::prefix_len(if dest.family == FAMILY_V4 { 32 } else { 128 });
    if dest.port != ANY_PORT {
        if let Some(v) = ALLOW.get(Key::new(plen, key))
            && live(v)
        {
            return Some(*v);
        }
        key.port = ANY_PORT;
    }
    match ALLOW.get(Key::new(plen, key)) {
        Some(v) if live(v) => Some(*v),
        _ => None,
    }
}

/// The registry service owning `dest`'s address whatever the port and policy, if any.
#[inline(always)]
pub fn dest_owner(dest: &Dest) -> Option<ServiceId> {
    DESTS
        .get(Key::new(
            DestKey::prefix_len(if dest.family == FAMILY_V4 { 32 } else { 128 }),
            DestKey { family: dest.family as u32, addr: dest.addr },
        ))
        .map(|v| v.service_id)
}

/// ICMP echo to an address of the registry, allowed by `SETTINGS_F_ICMP`.
#[inline(always)]
pub fn icmp_to_registered(settings_flags: u16, dest: &Dest) -> Option<ServiceId> {
    if settings_flags & SETTINGS_F_ICMP == 0 || (dest.proto != PROTO_ICMP && dest.proto != PROTO_ICMPV6) {
        return None;
    }
    dest_owner(dest)
}

/// Why `dest` is not allowed, and the service owning its address if any.
#[inline(always)]
pub fn explain(settings_flags: u16, policy_id: PolicyId, dest: &Dest) -> (u8, ServiceId) {
    if dest.proto == PROTO_TCP || dest.proto == PROTO_UDP {
        let mut other = *dest;
        other.proto = if dest.proto == PROTO_TCP { PROTO_UDP } else { PROTO_TCP };
        if let Some(v) = lookup(settings_flags, policy_id, &other) {
            return (REASON_PROTOCOL, v.service_id);
        }
    }
    match dest_owner(dest) {
        Some(id) if dest.proto == PROTO_TCP || dest.proto == PROTO_UDP => (REASON_PORT_NOT_LISTED, id),
        Some(id) => (REASON_PROTOCOL, id),
        None => (REASON_NOT_IN_REGISTRY, ServiceId::NONE),
    }
}

/// What a port-53 call does.
enum Steer {
    /// Rewritten to the forwarder.
    Steered,
    /// Judged like any destination (steering off for this policy or socket, or the fallback).
    Direct,
    /// Refused: the forwarder is not running and the fallback says so.
    Refuse,
}

/// Rewrite a port-53 destination to the forwarder and remember the original by socket cookie.
/// Direct (judge normally) when steering is off globally or for the caller's policy, or the
/// socket is the forwarder's own (marked). While the forwarder's heartbeat is stale: the fallback
/// (`Settings::dns_fallback`; auto refuses for REGISTRY_ONLY, goes direct for ALLOW_ANY / AUDIT).
#[inline(always)]
fn steer_dns(ctx: &SockAddrContext, s: &Settings, pflags: u32, mode: u32, dest: &Dest, v6: bool) -> Steer {
    if s.flags & SETTINGS_F_DNS_STEER == 0 || pflags & POLICY_F_DNS_STEER == 0 {
        return Steer::Direct;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context whose `sk` is a full socket.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if !sk.is_null() && s.agent_mark != 0 && unsafe { (*sk).mark } == s.agent_mark {
        return Steer::Direct;
    }
    if !forwarder_alive() {
        let open = mode == Mode::AllowAny.raw() || mode == Mode::Audit.raw();
        return match s.dns_fallback {
            DNS_FALLBACK_DIRECT => Steer::Direct,
            DNS_FALLBACK_REFUSE => Steer::Refuse,
            _ if open => Steer::Direct,
            _ => Steer::Refuse,
        };
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDest { addr: dest.addr, port: dest.port, family: dest.family, _pad: [0; 5] };
    if DNS_ORIG.insert(cookie, orig, 0).is_err() {
        return Steer::Direct;
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
    Steer::Steered
}

/// Rewrite a TCP connect to the L7 proxy (127.0.0.1:proxy_port) and remember the original by
/// socket cookie. No-op (false) when the proxy is off or the socket is the agent's own (marked).
#[inline(always)]
fn steer_proxy(
    ctx: &SockAddrContext,
    s: &Settings,
    dest: &Dest,
    v6: bool,
    service_id: ServiceId,
    cgroup_id: u64,
) -> bool {
    if s.flags & SETTINGS_F_PROXY == 0 || s.proxy_port == 0 {
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
    let orig =
        ProxyDest { addr: dest.addr, port: dest.port, family: dest.family, _pad: 0, service_id, cgroup_id, cookie };
    if PROXY_ORIG.insert(cookie, orig, 0).is_err() {
        return false;
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
    true
}

/// getpeername on a socket steered to the proxy: the original destination. Returns true if it
/// rewrote.
#[inline(always)]
pub fn restore_proxy(ctx: &SockAddrContext, v6: bool) -> bool {
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { PROXY_ORIG.get(cookie) }) else { return false };
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
    let Some(orig) = (unsafe { DNS_ORIG.get(cookie) }) else { return 1 };
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
pub fn count_flow(hook: u8, cgroup_id: u64, policy_id: PolicyId, service_id: ServiceId, verdict: u8, dest: &Dest) {
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
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(count) => unsafe { *count += 1 },
        None => {
            // A failed insert only loses a count (the LRU map evicts rather than fills up).
            let _ = FLOWS.insert(key, 1, 0);
        }
    }
}

/// Loopback and the unspecified address (which Linux connects to the local host) are always
/// allowed: they never leave the node.
#[inline(always)]
pub fn is_local(dest: &Dest) -> bool {
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
pub fn emit(
    hook: u8,
    cgroup_id: u64,
    pid_tgid: u64,
    comm: &[u8; 16],
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
    let mut ev = Event::zeroed();
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = cgroup_id;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.policy_id = policy_id;
    ev.service_id = service_id;
    ev.comm = *comm;
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
