//! Events the kernel programs send to the agent through the `EVENTS` ring buffer.

use crate::{PolicyId, ServiceId};

/// `Event::hook`: which program judged the connection.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
/// The cgroup_skb egress backstop judged an IPv4 / IPv6 packet (its real destination and
/// protocol: after NAT, source routes, from raw and ping sockets, or the first send of a UDP
/// socket connected to a denied destination).
pub const HOOK_BACKSTOP4: u8 = 5;
pub const HOOK_BACKSTOP6: u8 = 6;

/// `Event::reason`: why the destination is not allowed.
/// No registry entry for the address at all.
pub const REASON_NOT_IN_REGISTRY: u8 = 1;
/// The address belongs to a registry service, but not on this port.
pub const REASON_PORT_NOT_LISTED: u8 = 2;
/// The address and port are listed, but for the other protocol (TCP vs UDP).
pub const REASON_PROTOCOL: u8 = 3;
/// The packet carries a source route (an IPv6 routing header, an IPv4 LSRR/SSRR option): it would
/// be delivered via addresses no hook judged.
pub const REASON_SOURCE_ROUTE: u8 = 4;
/// A port-53 call of a steered policy while the DNS forwarder is not running (its heartbeat is
/// stale), refused by `Settings::dns_fallback`.
pub const REASON_DNS_FORWARDER_DOWN: u8 = 5;

/// `Event::verdict` / `FlowKey::verdict`.
/// The connection was allowed (flows only; never sent as an event).
pub const VERDICT_ALLOWED: u8 = 0;
/// The connection was refused with EPERM.
pub const VERDICT_DENIED: u8 = 1;
/// AUDIT mode: REGISTRY_ONLY would have refused it; it was allowed.
pub const VERDICT_AUDIT: u8 = 2;

/// One denied (or audited) connect()/sendmsg().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the hook.
    pub ts_ns: u64,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Policy that judged the connection.
    pub policy_id: PolicyId,
    /// Service owning the address when `reason` is PORT_NOT_LISTED or PROTOCOL, else `ServiceId::NONE`.
    pub service_id: ServiceId,
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; 16],
    /// Destination address in network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// The IP protocol number (`PROTO_TCP`, `PROTO_UDP`, `PROTO_UDPLITE`, `PROTO_ICMP`, ...).
    pub proto: u8,
    /// `FAMILY_V4` / `FAMILY_V6` (v4-mapped IPv6 is reported as V4).
    pub family: u8,
    /// `HOOK_*`.
    pub hook: u8,
    /// `REASON_*`.
    pub reason: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad0: u8,
    /// `Mode` in force (raw).
    pub mode: u32,
    pub _pad1: u32,
}

impl Event {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            cgroup_id: 0,
            pid: 0,
            tid: 0,
            policy_id: PolicyId::DEFAULT,
            service_id: ServiceId::NONE,
            comm: [0; 16],
            addr: [0; 16],
            port: 0,
            proto: 0,
            family: 0,
            hook: 0,
            reason: 0,
            verdict: 0,
            _pad0: 0,
            mode: 0,
            _pad1: 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for Event {}
