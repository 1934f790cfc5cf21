//! Keys and values of the policy maps: what may be reached, by whom, and in which mode.

use crate::{PolicyId, ServiceId};

/// Address family values used in keys (`AF_INET`, `AF_INET6`).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers used in keys. Keys carry the packet's real L4 protocol: TCP and UDP are
/// judged with their port; UDP-Lite, SCTP and DCCP too (their ports sit where UDP's do); any other
/// protocol (ICMP, raw IP, ...) is judged with `ANY_PORT`, so only a registry entry for that
/// protocol (or `SETTINGS_F_ICMP` for echo to a registered address) lets it out.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_DCCP: u8 = 33;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;
/// `TrafficKey::proto` for anything that is neither TCP nor UDP.
pub const PROTO_OTHER: u8 = 0;

/// Whether packets of `proto` carry 16-bit source and destination ports at the start of their L4
/// header (so the destination port is judged).
#[inline(always)]
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_UDPLITE | PROTO_SCTP | PROTO_DCCP)
}

/// `AllowKey::port` value meaning "any port" (from `--allow-cidr 10.0.0.0/8` without a port).
pub const ANY_PORT: u16 = 0;

/// Capacity of `ALLOW` (LPM trie): CIDR entries, `ANY_PORT` entries, and exact entries that did
/// not fit `ALLOW_EXACT`. At ~64 bytes per trie node that is ~16 MiB of kernel memory when full;
/// entries are allocated on insert (`BPF_F_NO_PREALLOC`, required for LPM tries).
pub const ALLOW_MAX_ENTRIES: u32 = 262_144;
/// Capacity of `ALLOW_EXACT` (hash, `BPF_F_NO_PREALLOC`): single addresses (/32, /128) on one
/// port, the common case, found with one hash lookup. The agent's ALLOW capacity is the sum of
/// both maps.
pub const ALLOW_EXACT_MAX_ENTRIES: u32 = 262_144;
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
/// which Prometheus sees as a counter reset) and `FLOW_OWNER` (LRU hash).
pub const TRAFFIC_MAX_ENTRIES: u32 = 65_536;
pub const CONNS_MAX_ENTRIES: u32 = 65_536;
pub const FLOW_OWNER_MAX_ENTRIES: u32 = 262_144;

/// `TrafficKey::direction`: which way the packets went, seen from the workload.
/// `DIR_EGRESS`: from the workload to the destination, i.e. the *request* bytes, which Istio counts
/// as `istio_tcp_received_bytes_total` (bytes the destination received during the request).
pub const DIR_EGRESS: u8 = 0;
/// `DIR_INGRESS`: from the destination back to the workload, the *response* bytes, which Istio
/// counts as `istio_tcp_sent_bytes_total` (istio.io standard metrics; istio/istio#32399).
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
/// `Settings::flags`: the `ALLOW` trie holds entries (CIDRs, `ANY_PORT`, overflow). Off: the
/// programs judge with the one `ALLOW_EXACT` hash lookup. Kept by the dataplane, not the agent.
pub const SETTINGS_F_TRIE: u16 = 1 << 3;
/// `Settings::flags`: ICMP / ICMPv6 to an address of the registry (`DESTS`) is allowed under
/// REGISTRY_ONLY (off: only an ALLOW entry for the ICMP protocol lets it out).
pub const SETTINGS_F_ICMP: u16 = 1 << 4;
/// `Settings::flags`: TCP connection accounting (`CONNS`) is on. Kept by the dataplane.
pub const SETTINGS_F_ACCOUNTING: u16 = 1 << 5;
/// `Settings::flags`: the cgroup_skb backstop is attached, so a UDP connect() to a denied
/// destination can be judged at its first send; without it, connect() itself is refused.
pub const SETTINGS_F_BACKSTOP: u16 = 1 << 6;
/// The `Settings::flags` bits the dataplane owns (merged into whatever the agent writes).
pub const SETTINGS_DATAPLANE_FLAGS: u16 = SETTINGS_F_TRIE | SETTINGS_F_ACCOUNTING | SETTINGS_F_BACKSTOP;

/// `AllowValue::flags`: the entry allows the host's DNS resolver (port 53), not a registry service.
pub const ALLOW_F_DNS: u32 = 1 << 0;
/// `AllowValue::flags`: steer the connection to the local L7 proxy (reserved for the proxy).
pub const ALLOW_F_PROXY: u32 = 1 << 1;
/// `AllowValue::flags`: added by `--allow`/`--allow-cidr` on the command line.
pub const ALLOW_F_CLI: u32 = 1 << 2;
/// `AllowValue::flags`: learned from a DNS answer; `expires_ns` is its end of life.
pub const ALLOW_F_LEARNED: u32 = 1 << 3;

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

/// Value of `ALLOW` and `ALLOW_EXACT` (and `DESTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowValue {
    /// Registry service that owns the entry (index into the agent's service table, `ServiceId::NONE`
    /// for command-line and DNS entries). Used by events and per-destination counters.
    pub service_id: ServiceId,
    /// `ALLOW_F_*` bits.
    pub flags: u32,
    /// End of life of a learned entry on `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns()`), 0: never
    /// (a registry entry). The kernel refuses an expired entry by itself, and a restarted daemon
    /// reads the expiry back, so learned entries survive restarts without outliving their TTL.
    pub expires_ns: u64,
}

impl AllowValue {
    /// A registry entry (never expires).
    pub const fn new(service_id: ServiceId, flags: u32) -> Self {
        Self { service_id, flags, expires_ns: 0 }
    }

    /// Whether the entry still allows at boot-clock time `now_ns`.
    #[inline(always)]
    pub const fn live_at(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || self.expires_ns > now_ns
    }
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
    /// `DNS_FALLBACK_*`: what a steered port-53 call does while the forwarder is not running
    /// (its heartbeat in `DNS_ALIVE` is older than `DNS_HEARTBEAT_TIMEOUT_NS`).
    pub dns_fallback: u8,
    pub _pad: u8,
    /// Bumped by the dataplane after every `WORKLOADS` write: `POLICY_CACHE` entries of another
    /// generation are stale (the caller's cgroup ancestors are walked again). Kept by the
    /// dataplane, not the agent.
    pub workloads_gen: u32,
    pub _pad2: u32,
}

/// `Settings::dns_fallback`: REGISTRY_ONLY policies refuse port-53 calls at once (EPERM and a deny
/// event, `REASON_DNS_FORWARDER_DOWN`); ALLOW_ANY and AUDIT policies go to the resolver they
/// asked, judged like any destination.
pub const DNS_FALLBACK_AUTO: u8 = 0;
/// `Settings::dns_fallback`: every policy goes to the resolver it asked, judged like any
/// destination (REGISTRY_ONLY: allowed only if the resolver is in the policy's ALLOW entries).
pub const DNS_FALLBACK_DIRECT: u8 = 1;
/// `Settings::dns_fallback`: every steered policy refuses port-53 calls (EPERM + deny event).
pub const DNS_FALLBACK_REFUSE: u8 = 2;
/// How old (boot-clock ns) the forwarder's heartbeat in `DNS_ALIVE` may be for the kernel to
/// steer to it; the agent writes it every `DNS_HEARTBEAT_INTERVAL_MS`.
pub const DNS_HEARTBEAT_TIMEOUT_NS: u64 = 3_000_000_000;
pub const DNS_HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// `POLICY_FLAGS` (per policy id, next to `MODES`): port-53 calls of this policy's cgroups are
/// steered to the DNS forwarder (while `SETTINGS_F_DNS_STEER` is on and the forwarder is alive).
pub const POLICY_F_DNS_STEER: u32 = 1 << 0;
/// `POLICY_FLAGS`: the policy's cgroups are not governed (Kubernetes' node default): their
/// connect/sendmsg calls pass at once, with no lookup, flow count, event or accounting.
pub const POLICY_F_UNGOVERNED: u32 = 1 << 1;

/// Capacity of `POLICY_CACHE` (LRU hash: the caller's own cgroup id -> its policy).
pub const POLICY_CACHE_MAX_ENTRIES: u32 = 16_384;

/// Value of `POLICY_CACHE` (key: the caller's own cgroup id): the policy its ancestor walk found,
/// valid while `Settings::workloads_gen` equals `gen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyCacheValue {
    pub policy_id: PolicyId,
    pub gen_: u32,
}

/// Value of `PROXY_ORIG` (key: socket cookie) and `PROXY_PEERS` (key: the client's local
/// address as `OrigDest`): where a connection steered to the L7 proxy meant to go.
///
/// A `PROXY_PEERS` filing is bound to the client socket that made it (`cookie`): the kernel files
/// it when that socket sends its SYN, deletes it when that socket closes (only if the filing is
/// still its own), and the agent deletes it when it reads it (once per accept), so a later
/// connection from the same address and port is never served as this one.
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
    /// Socket cookie of the client socket.
    pub cookie: u64,
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
    /// `DIR_EGRESS` (request bytes) / `DIR_INGRESS` (response bytes).
    pub direction: u8,
    pub family: u8,
    /// `PROTO_TCP`, `PROTO_UDP` or `PROTO_OTHER` (ICMP, UDP-Lite, SCTP, ...), so TCP metrics stay
    /// TCP-only.
    pub proto: u8,
    pub _pad: u8,
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

/// `SockState::flags`: the TCP connection was counted as opened in `CONNS`.
pub const SOCK_F_ESTABLISHED: u8 = 1 << 0;
/// `SockState::flags`: count this TCP connection in `CONNS` (accounting was on at connect).
pub const SOCK_F_ACCOUNT: u8 = 1 << 1;
/// `SockState::flags`: the connection was steered to the L7 proxy (`PROXY_ORIG` holds where it
/// meant to go; sock_ops files it in `PROXY_PEERS`).
pub const SOCK_F_PROXIED: u8 = 1 << 2;
/// `SockState::flags`: the denial of `addr` was reported (event + flow) already.
pub const SOCK_F_REPORTED: u8 = 1 << 3;

/// Value of `SOCK_STATE` (socket-local storage, freed with the socket): what connect/sendmsg
/// judged for this socket, so the backstop only compares each packet's destination with it, and
/// the sock_ops accounting knows the connection's workload and service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockState {
    /// cgroup of the process that connected.
    pub cgroup_id: u64,
    /// The judged destination: where the socket's packets go (after any steering rewrite).
    pub addr: [u8; 16],
    /// Host byte order; `ANY_PORT` for protocols without ports.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// `VERDICT_*` for `addr`: allowed, denied (a UDP connect refused at its first send), audit.
    pub verdict: u8,
    /// `REASON_*` when not allowed.
    pub reason: u8,
    /// `SOCK_F_*`.
    pub flags: u8,
    /// `HOOK_*` that judged it.
    pub hook: u8,
    pub policy_id: PolicyId,
    pub service_id: ServiceId,
    /// `Mode` (raw) in force when judged.
    pub mode: u32,
    /// Process (tgid) that connected, for events raised later by the backstop.
    pub pid: u32,
    /// `comm` of the thread that connected.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TrafficKey {}
    unsafe impl aya::Pod for super::TrafficValue {}
    unsafe impl aya::Pod for super::FlowOwnerKey {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnCounters {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::OrigDest {}
    unsafe impl aya::Pod for super::ProxyDest {}
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: plain #[repr(C)] data with no padding (see the layout tests) and no invalid bit patterns.
    unsafe impl aya::Pod for super::AllowKey {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::WorkloadValue {}
    unsafe impl aya::Pod for super::PolicyCacheValue {}
}
