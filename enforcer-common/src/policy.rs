//! Keys and values of the policy maps: what may be reached, by whom, and in which mode.

use crate::{PolicyId, ServiceId};

/// Address family values used in keys (`AF_INET`, `AF_INET6`).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `AllowKey::port` value meaning "any port" (from `--allow-cidr 10.0.0.0/8` without a port).
pub const ANY_PORT: u16 = 0;

/// Capacity of `ALLOW` (LPM trie). At least 256k entries: one per (policy, address/CIDR, port,
/// protocol). At ~64 bytes per trie node that is ~16 MiB of kernel memory when full; entries are
/// allocated on insert (`BPF_F_NO_PREALLOC`, required for LPM tries).
pub const ALLOW_MAX_ENTRIES: u32 = 262_144;
/// Capacity of `DESTS` (LPM trie): one per registry address/CIDR, across policies.
pub const DESTS_MAX_ENTRIES: u32 = 262_144;
/// Capacity of `MODES` (array indexed by policy id) and so the number of policies.
pub const MAX_POLICIES: u32 = 1024;
/// Capacity of `WORKLOADS` (hash: cgroup id -> policy).
pub const WORKLOADS_MAX_ENTRIES: u32 = 65_536;
/// Size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page size):
/// 256 KiB holds ~3,000 events of 80 bytes between two reads.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Capacity of `FLOWS` (LRU per-CPU hash): recent (workload, destination, verdict) tuples with
/// their connect counts. The least recently used tuple is evicted when full.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;

/// Capacity of `DNS_ORIG` (LRU hash): sockets whose port-53 traffic was steered to the agent's
/// DNS forwarder, with the resolver they meant to reach.
pub const DNS_ORIG_MAX_ENTRIES: u32 = 65_536;

/// Capacity of `TRAFFIC`, `CONNS` (LRU per-CPU hashes: the least recently used key is evicted,
/// which Prometheus sees as a counter reset), `SOCKS` and `FLOW_OWNER` (LRU hashes).
pub const TRAFFIC_MAX_ENTRIES: u32 = 65_536;
pub const CONNS_MAX_ENTRIES: u32 = 65_536;
pub const SOCKS_MAX_ENTRIES: u32 = 262_144;
pub const FLOW_OWNER_MAX_ENTRIES: u32 = 262_144;

/// `TrafficKey::direction`.
pub const DIR_EGRESS: u8 = 0;
pub const DIR_INGRESS: u8 = 1;

/// `Settings::flags`: `WORKLOADS` has entries; walk the caller's cgroup ancestors to find its
/// policy (off: everything is judged by the default policy, at no cost).
pub const SETTINGS_F_WORKLOADS: u16 = 1 << 2;
/// How many cgroup levels below the root the policy lookup walks (deeper cgroups inherit the
/// policy of their deepest ancestor within these levels).
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// `Settings::flags`: steer connections whose ALLOW entry has `ALLOW_F_PROXY` to the L7 proxy.
pub const SETTINGS_F_PROXY: u16 = 1 << 1;
/// Capacity of `PROXY_ORIG` and `PROXY_PEERS` (LRU hashes).
pub const PROXY_MAX_ENTRIES: u32 = 65_536;

/// `Settings::flags`: steer port-53 traffic (UDP sendmsg/connect, TCP connect) to the forwarder.
pub const SETTINGS_F_DNS_STEER: u16 = 1 << 0;

/// `AllowValue::flags`: the entry allows the host's DNS resolver (port 53), not a registry service.
pub const ALLOW_F_DNS: u32 = 1 << 0;
/// `AllowValue::flags`: steer the connection to the local L7 proxy (reserved for the proxy).
pub const ALLOW_F_PROXY: u32 = 1 << 1;
/// `AllowValue::flags`: added by `--allow`/`--allow-cidr` on the command line.
pub const ALLOW_F_CLI: u32 = 1 << 2;

/// Data of the `ALLOW` LPM-trie key (the trie key is `{prefix_len: u32, data: AllowKey}`).
///
/// The fixed fields come first so that a prefix of `FIXED_PREFIX_BITS + n` matches them exactly
/// and the first `n` bits of the address: one trie serves single addresses and CIDRs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowKey {
    /// Policy the entry belongs to (`PolicyId::DEFAULT` for the node default).
    pub policy_id: PolicyId,
    /// Destination port in host byte order, or `ANY_PORT`.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`. IPv4-mapped IPv6 destinations are looked up as `FAMILY_V4`.
    pub family: u8,
    /// Address in network byte order; IPv4 uses the first 4 bytes, the rest is zero.
    pub addr: [u8; 16],
}

impl AllowKey {
    /// Bits of the key before the address: policy_id, port, proto, family.
    pub const FIXED_PREFIX_BITS: u32 = 64;

    /// The trie prefix length for an address prefix of `addr_bits` bits.
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        Self::FIXED_PREFIX_BITS + addr_bits
    }
}

/// Value of the `ALLOW` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowValue {
    /// Registry service that owns the entry (index into the agent's service table, `ServiceId::NONE`
    /// for command-line and DNS entries). Used by events and per-destination counters.
    pub service_id: ServiceId,
    /// `ALLOW_F_*` bits.
    pub flags: u32,
}

/// Data of the `DESTS` LPM-trie key: which service owns an address, whatever the port and policy.
/// Used to explain a denial ("port not listed") and, later, by the TC counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    /// `FAMILY_V4` or `FAMILY_V6`, widened to keep the address 4-byte aligned.
    pub family: u32,
    /// Address in network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

impl DestKey {
    pub const FIXED_PREFIX_BITS: u32 = 32;

    pub const fn prefix_len(addr_bits: u32) -> u32 {
        Self::FIXED_PREFIX_BITS + addr_bits
    }
}

/// Value of `DESTS`: the same shape as `AllowValue`.
pub type DestValue = AllowValue;

/// Value of `WORKLOADS` (key: cgroup id, u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadValue {
    /// Policy that judges connections made from this cgroup.
    pub policy_id: PolicyId,
    /// Reserved, zero.
    pub flags: u32,
}

/// An IPv6 address held as four 32-bit words as the kernel's contexts give it (each word in
/// network byte order as stored in memory) -> its 16 bytes.
#[inline(always)]
pub fn ip6_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&w[0].to_ne_bytes());
    a[4..8].copy_from_slice(&w[1].to_ne_bytes());
    a[8..12].copy_from_slice(&w[2].to_ne_bytes());
    a[12..16].copy_from_slice(&w[3].to_ne_bytes());
    a
}

/// The inverse of `ip6_bytes`: 16 address bytes -> four words to write into a context.
#[inline(always)]
pub fn ip6_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// `::ffff:a.b.c.d` as context words.
#[inline(always)]
pub fn ip6_mapped_words(v4: [u8; 4]) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(v4)]
}

/// If `addr` is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), the IPv4 address it carries.
#[inline(always)]
pub fn v4_from_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// Key of `FLOWS`: one judged destination as seen from one cgroup. Value: u64 connect count per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub policy_id: PolicyId,
    /// Service that owns the destination (`ServiceId::NONE` when it is in no registry entry).
    pub service_id: ServiceId,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// `VERDICT_*` (event.rs): allowed, denied or audited.
    pub verdict: u8,
    /// `HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 2],
}

/// The only entry of `SETTINGS`: agent-wide knobs the programs read on every call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// The agent's IPv6 listen address (network byte order) for the DNS forwarder, e.g. ::1.
    pub local_v6: [u8; 16],
    /// The agent's IPv4 listen address (network byte order) for the DNS forwarder and the L7
    /// proxy, e.g. 127.0.0.1.
    pub local_v4: [u8; 4],
    /// The forwarder's port (host byte order), the same on both addresses.
    pub dns_port: u16,
    /// `SETTINGS_F_*`.
    pub flags: u16,
    /// Sockets carrying this `SO_MARK` (the agent's own upstream sockets) are never steered.
    pub agent_mark: u32,
    /// The L7 proxy's port on `local_v4` (host byte order); 0: no proxy.
    pub proxy_port: u16,
    pub _pad: u16,
}

/// Value of `PROXY_ORIG` (key: socket cookie) and `PROXY_PEERS` (key: the client's local
/// address as `OrigDest`): where a connection steered to the L7 proxy meant to go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyDest {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    /// The registry service the destination belongs to.
    pub service_id: ServiceId,
    /// cgroup of the connecting process (the proxy's `source_workload`).
    pub cgroup_id: u64,
}

/// Value of `DNS_ORIG` (key: socket cookie): where a steered socket meant to send its DNS query, so
/// recvmsg/getpeername can show the app the resolver it asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDest {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Key of `TRAFFIC` (TC counters). Value: `TrafficValue` per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrafficKey {
    /// cgroup of the local socket: egress from the skb's socket, ingress from `FLOW_OWNER`; 0 when
    /// unknown (traffic of no local socket, or a flow never seen leaving).
    pub cgroup_id: u64,
    /// Registry service owning the remote address (`ServiceId::NONE`: PassthroughCluster).
    pub service_id: ServiceId,
    /// `DIR_EGRESS` / `DIR_INGRESS`.
    pub direction: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Packets and L3 bytes (IP header + payload; the Ethernet header is not counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of `FLOW_OWNER`: a flow as seen from this host (remote end + local port), so ingress packets
/// can be attributed to the cgroup whose socket sent the egress ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowOwnerKey {
    pub remote: [u8; 16],
    /// Host byte order.
    pub remote_port: u16,
    pub local_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Key of `CONNS` (TCP connection accounting). Value: `ConnCounters` per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub cgroup_id: u64,
    pub service_id: ServiceId,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnCounters {
    /// Connections that reached ESTABLISHED.
    pub opened: u64,
    /// Established connections that reached CLOSE.
    pub closed: u64,
    /// TCP payload bytes acknowledged by the peer over closed connections.
    pub payload_sent: u64,
    /// TCP payload bytes received over closed connections.
    pub payload_received: u64,
}

/// Value of `SOCKS` (key: socket cookie): who opened a TCP socket, to what service. Written by
/// connect4/6, read by the sock_ops program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockInfo {
    pub cgroup_id: u64,
    pub service_id: ServiceId,
    /// 1 once counted as opened.
    pub established: u32,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TrafficKey {}
    unsafe impl aya::Pod for super::TrafficValue {}
    unsafe impl aya::Pod for super::FlowOwnerKey {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnCounters {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::OrigDest {}
    unsafe impl aya::Pod for super::ProxyDest {}
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: plain #[repr(C)] data with no padding (see the layout tests) and no invalid bit patterns.
    unsafe impl aya::Pod for super::AllowKey {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::WorkloadValue {}
}
