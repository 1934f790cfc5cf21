//! THE table of the kernel maps: name, type, key and value size, capacity, and whether the daemon
//! pins it. Pin paths, the shape check of pinned maps on restart, `unpin`, `enforcer_map_entries`
//! and README's map list all come from here; a kernel-free test in the agent parses the embedded
//! eBPF object (aya-obj) and asserts that its maps equal this table, so a map added to
//! `enforcer-ebpf/src/maps.rs` and not here (or the reverse) fails the build's tests.

use core::mem::size_of;

use crate::*;

/// Kernel map types used (`bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    LruPerCpuHash,
    Array,
    PerCpuArray,
    LpmTrie,
    RingBuf,
    SkStorage,
}

impl MapKind {
    /// The kernel's `bpf_map_type` number.
    pub const fn bpf_map_type(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::PerCpuArray => 6,
            MapKind::LruHash => 9,
            MapKind::LruPerCpuHash => 10,
            MapKind::LpmTrie => 11,
            MapKind::SkStorage => 24,
            MapKind::RingBuf => 27,
        }
    }
}

/// One map of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object and its pin file name (at most 15 bytes).
    pub name: &'static str,
    pub kind: MapKind,
    /// Key size in bytes as the kernel sees it (LPM tries include the 4-byte prefix length).
    pub key_size: u32,
    pub value_size: u32,
    /// Capacity (bytes for the ring buffer).
    pub max_entries: u32,
    /// Pinned under the daemon's pin dir (kept across restarts) or private to the process.
    pub pinned: bool,
}

const fn sz<T>() -> u32 {
    size_of::<T>() as u32
}

const fn spec(name: &'static str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec {
    MapSpec { name, kind, key_size, value_size, max_entries, pinned: true }
}

/// Version of the pin layout (names, shapes and meaning of what is pinned), stored in the pinned
/// `PIN_LAYOUT` map. A daemon finding another version (or none beside other pins) rebuilds the
/// pinned state deliberately and says so.
/// 3: `ALLOW_EXACT`, `AllowValue::expires_ns`, `SOCK_STATE` (replaces `SOCKS`), `ProxyDest::cookie`,
///    `TrafficKey::proto`, the backstop.
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// Every map of `enforcer-ebpf`, in declaration order.
pub const MAPS: &[MapSpec] = &[
    spec(map_names::ALLOW, MapKind::LpmTrie, 4 + sz::<AllowKey>(), sz::<AllowValue>(), ALLOW_MAX_ENTRIES),
    spec(map_names::ALLOW_EXACT, MapKind::Hash, sz::<AllowKey>(), sz::<AllowValue>(), ALLOW_EXACT_MAX_ENTRIES),
    spec(map_names::DESTS, MapKind::LpmTrie, 4 + sz::<DestKey>(), sz::<DestValue>(), DESTS_MAX_ENTRIES),
    spec(map_names::MODES, MapKind::Array, 4, 4, MAX_POLICIES),
    spec(map_names::WORKLOADS, MapKind::Hash, 8, sz::<WorkloadValue>(), WORKLOADS_MAX_ENTRIES),
    spec(map_names::EVENTS, MapKind::RingBuf, 0, 0, EVENTS_RING_BYTES),
    spec(map_names::EVENT_DROPS, MapKind::PerCpuArray, 4, 8, 1),
    spec(map_names::FLOWS, MapKind::LruPerCpuHash, sz::<FlowKey>(), 8, FLOWS_MAX_ENTRIES),
    spec(map_names::SETTINGS, MapKind::Array, 4, sz::<Settings>(), 1),
    spec(map_names::DNS_ORIG, MapKind::LruHash, 8, sz::<OrigDest>(), DNS_ORIG_MAX_ENTRIES),
    spec(map_names::TRAFFIC, MapKind::LruPerCpuHash, sz::<TrafficKey>(), sz::<TrafficValue>(), TRAFFIC_MAX_ENTRIES),
    spec(map_names::FLOW_OWNER, MapKind::LruHash, sz::<FlowOwnerKey>(), 8, FLOW_OWNER_MAX_ENTRIES),
    spec(map_names::CONNS, MapKind::LruPerCpuHash, sz::<ConnKey>(), sz::<ConnCounters>(), CONNS_MAX_ENTRIES),
    spec(map_names::PROXY_ORIG, MapKind::LruHash, 8, sz::<ProxyDest>(), PROXY_MAX_ENTRIES),
    spec(map_names::PROXY_PEERS, MapKind::LruHash, sz::<OrigDest>(), sz::<ProxyDest>(), PROXY_MAX_ENTRIES),
    spec(map_names::PIN_LAYOUT, MapKind::Array, 4, 4, 1),
    // Socket-local storage: key is a socket fd (int), no capacity (one value per socket, freed
    // with it). A BTF map (`.maps`): the kernel needs BTF for local storage.
    spec(map_names::SOCK_STATE, MapKind::SkStorage, 4, sz::<SockState>(), 0),
];

/// Program types used (`bpf_prog_type`), with the cgroup attach point where there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (18).
    CgroupSockAddr,
    /// `BPF_PROG_TYPE_SOCK_OPS` (13).
    SockOps,
    /// `BPF_PROG_TYPE_CGROUP_SKB` (8).
    CgroupSkb,
    /// `BPF_PROG_TYPE_SCHED_CLS` (3).
    SchedClassifier,
}

impl ProgKind {
    /// The kernel's `bpf_prog_type` number.
    pub const fn bpf_prog_type(self) -> u32 {
        match self {
            ProgKind::SchedClassifier => 3,
            ProgKind::CgroupSkb => 8,
            ProgKind::SockOps => 13,
            ProgKind::CgroupSockAddr => 18,
        }
    }
}

/// One program of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgSpec {
    /// Function name in `enforcer-ebpf` = program name = link pin name suffix.
    pub name: &'static str,
    pub kind: ProgKind,
}

const fn prog(name: &'static str, kind: ProgKind) -> ProgSpec {
    ProgSpec { name, kind }
}

/// Every program of `enforcer-ebpf`.
pub const PROGRAMS: &[ProgSpec] = &[
    prog(prog_names::CONNECT4, ProgKind::CgroupSockAddr),
    prog(prog_names::CONNECT6, ProgKind::CgroupSockAddr),
    prog(prog_names::SENDMSG4, ProgKind::CgroupSockAddr),
    prog(prog_names::SENDMSG6, ProgKind::CgroupSockAddr),
    prog(prog_names::RECVMSG4, ProgKind::CgroupSockAddr),
    prog(prog_names::RECVMSG6, ProgKind::CgroupSockAddr),
    prog(prog_names::GETPEERNAME4, ProgKind::CgroupSockAddr),
    prog(prog_names::GETPEERNAME6, ProgKind::CgroupSockAddr),
    prog(prog_names::SOCK_OPS, ProgKind::SockOps),
    prog(prog_names::BACKSTOP, ProgKind::CgroupSkb),
    prog(prog_names::BACKSTOP_COMPAT, ProgKind::CgroupSkb),
    prog(prog_names::TC_EGRESS, ProgKind::SchedClassifier),
    prog(prog_names::TC_INGRESS, ProgKind::SchedClassifier),
];

/// The spec of the map called `name`.
pub fn map_spec(name: &str) -> Option<&'static MapSpec> {
    let mut i = 0;
    while i < MAPS.len() {
        if str_eq(MAPS[i].name, name) {
            return Some(&MAPS[i]);
        }
        i += 1;
    }
    None
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
