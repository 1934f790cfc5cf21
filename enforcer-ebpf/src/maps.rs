//! Every map of the kernel programs, in one place. Shapes are listed once more, as data, in
//! `enforcer_common::MAPS`; a unit test of the agent parses the built object and fails when the two
//! differ. None is declared pinned: the daemon pins each one by name under its bpffs directory
//! (`EbpfLoader::map_pin_path`), so a restarted daemon reuses them, while `enforcer run`'s maps
//! stay private to that run.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    ALLOW_EXACT_MAX_ENTRIES, ALLOW_MAX_ENTRIES, AllowKey, AllowValue, CONNS_MAX_ENTRIES, ConnCounters, ConnKey,
    DESTS_MAX_ENTRIES, DNS_ORIG_MAX_ENTRIES, DestKey, DestValue, EVENTS_RING_BYTES, FLOW_OWNER_MAX_ENTRIES,
    FLOWS_MAX_ENTRIES, FlowKey, FlowOwnerKey, MAX_POLICIES, OrigDest, POLICY_CACHE_MAX_ENTRIES, PROXY_MAX_ENTRIES,
    PolicyCacheValue, ProxyDest, Settings, SockState, TRAFFIC_MAX_ENTRIES, TrafficKey, TrafficValue,
    WORKLOADS_MAX_ENTRIES, WorkloadValue,
};

/// Allowed destinations that need a longest-prefix match: CIDRs, `ANY_PORT` entries, and exact
/// entries that did not fit `ALLOW_EXACT`: (policy, port, protocol, family, address/CIDR) ->
/// service. Looked up only while it holds entries (`SETTINGS_F_TRIE`). LPM trie,
/// `ALLOW_MAX_ENTRIES` (262,144) entries.
#[map]
pub static ALLOW: LpmTrie<AllowKey, AllowValue> = LpmTrie::with_max_entries(ALLOW_MAX_ENTRIES, 0);

/// Allowed single addresses on one port: (policy, port, protocol, family, address) -> service.
/// One hash lookup judges the common case. Hash (`BPF_F_NO_PREALLOC`: memory on insert),
/// `ALLOW_EXACT_MAX_ENTRIES` (262,144) entries.
#[map]
pub static ALLOW_EXACT: HashMap<AllowKey, AllowValue> =
    HashMap::with_max_entries(ALLOW_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Registry addresses/CIDRs -> owning service, whatever the port or policy. Read only on the deny
/// path, to say "port not listed" rather than "not in registry". LPM trie, `DESTS_MAX_ENTRIES`.
#[map]
pub static DESTS: LpmTrie<DestKey, DestValue> = LpmTrie::with_max_entries(DESTS_MAX_ENTRIES, 0);

/// Mode of each policy (`MODE_*`), indexed by policy id. `MAX_POLICIES` (1,024) entries.
#[map]
pub static MODES: Array<u32> = Array::with_max_entries(MAX_POLICIES, 0);

/// cgroup id -> policy. Cgroups with no entry are judged by `DEFAULT_POLICY`.
/// Hash, `WORKLOADS_MAX_ENTRIES` (65,536) entries.
#[map]
pub static WORKLOADS: HashMap<u64, WorkloadValue> = HashMap::with_max_entries(WORKLOADS_MAX_ENTRIES, 0);

/// Denied / audited connections for the agent. Ring buffer of `EVENTS_RING_BYTES` (256 KiB).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Events lost because `EVENTS` was full, per CPU (index 0). The kernel side never blocks.
#[map]
pub static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Connect/sendmsg counts per (cgroup, destination, verdict), for `enforcer run`'s summary and the
/// per-destination metrics. LRU per-CPU hash, `FLOWS_MAX_ENTRIES` (65,536) entries.
#[map]
pub static FLOWS: LruPerCpuHashMap<FlowKey, u64> = LruPerCpuHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

/// Agent-wide settings (DNS forwarder address, steering flag, the agent's socket mark). Array of 1.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Socket cookie -> the resolver a steered DNS socket meant to reach. LRU hash,
/// `DNS_ORIG_MAX_ENTRIES` (65,536) entries.
#[map]
pub static DNS_ORIG: LruHashMap<u64, OrigDest> = LruHashMap::with_max_entries(DNS_ORIG_MAX_ENTRIES, 0);

/// TC counters: (cgroup, service, direction) -> packets and L3 bytes per CPU. LRU per-CPU hash,
/// `TRAFFIC_MAX_ENTRIES` (65,536).
#[map]
pub static TRAFFIC: LruPerCpuHashMap<TrafficKey, TrafficValue> =
    LruPerCpuHashMap::with_max_entries(TRAFFIC_MAX_ENTRIES, 0);

/// Flows seen leaving (remote end + local port) -> cgroup of the sending socket, so TC ingress can
/// attribute replies. LRU hash, `FLOW_OWNER_MAX_ENTRIES` (262,144).
#[map]
pub static FLOW_OWNER: LruHashMap<FlowOwnerKey, u64> = LruHashMap::with_max_entries(FLOW_OWNER_MAX_ENTRIES, 0);

/// TCP connections opened/closed and payload bytes per (cgroup, service), per CPU. LRU per-CPU hash,
/// `CONNS_MAX_ENTRIES` (65,536).
#[map]
pub static CONNS: LruPerCpuHashMap<ConnKey, ConnCounters> = LruPerCpuHashMap::with_max_entries(CONNS_MAX_ENTRIES, 0);

/// What connect/sendmsg judged for a socket (destination, verdict, workload, service), kept in the
/// socket itself and freed with it: the backstop compares packets with it, sock_ops accounts with
/// it. Socket-local storage (a BTF map: the kernel requires BTF for it).
#[btf_map]
pub static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

/// The pin layout version (`enforcer_common::PIN_LAYOUT_VERSION`) the pinned maps were made for;
/// written by the daemon, never read by the programs. Array of 1.
#[map]
pub static PIN_LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

/// Socket cookie -> where a connection steered to the L7 proxy meant to go (for getpeername and
/// for sock_ops to file it under the client's address). LRU hash, `PROXY_MAX_ENTRIES` (65,536).
#[map]
pub static PROXY_ORIG: LruHashMap<u64, ProxyDest> = LruHashMap::with_max_entries(PROXY_MAX_ENTRIES, 0);

/// The proxied client's local address (as `OrigDest`: addr, port, family) -> original destination;
/// read by the proxy on accept. LRU hash, `PROXY_MAX_ENTRIES`.
#[map]
pub static PROXY_PEERS: LruHashMap<OrigDest, ProxyDest> = LruHashMap::with_max_entries(PROXY_MAX_ENTRIES, 0);

/// `POLICY_F_*` of each policy, indexed by policy id like `MODES`: DNS steering per policy, and
/// the ungoverned fast exit. `MAX_POLICIES` entries.
#[map]
pub static POLICY_FLAGS: Array<u32> = Array::with_max_entries(MAX_POLICIES, 0);

/// The caller's own cgroup id -> the policy the ancestor walk found for it, tagged with the
/// `Settings::workloads_gen` it was found under (another generation: walk again). One hash lookup
/// instead of one per cgroup level for every caller, governed or not. LRU hash,
/// `POLICY_CACHE_MAX_ENTRIES` (16,384).
#[map]
pub static POLICY_CACHE: LruHashMap<u64, PolicyCacheValue> = LruHashMap::with_max_entries(POLICY_CACHE_MAX_ENTRIES, 0);

/// The DNS forwarder's heartbeat: boot-clock ns of its last beat (0: stopped), written every
/// second by the agent; port-53 calls are steered only while it is fresh. Array of 1.
#[map]
pub static DNS_ALIVE: Array<u64> = Array::with_max_entries(1, 0);
