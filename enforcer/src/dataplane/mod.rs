//! The only module that touches aya: load the programs, attach them to a cgroup, pin them, and
//! apply map diffs. Events and flow counters come back up through here.

mod contract;
mod events;
mod maps_impl;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::LpmTrie},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, SockOps, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
    },
};
pub use contract::{BootNs, MapContents, Maps, MemoryMaps};
use enforcer_common::{
    ALLOW_MAX_ENTRIES, AllowKey, AllowValue, CONNS_MAX_ENTRIES, ConnCounters, ConnKey, DESTS_MAX_ENTRIES,
    DNS_ORIG_MAX_ENTRIES, DestKey, FLOW_OWNER_MAX_ENTRIES, FLOWS_MAX_ENTRIES, FlowKey, FlowOwnerKey, MAX_POLICIES,
    OrigDest, PROXY_MAX_ENTRIES, ProxyDest, SOCKS_MAX_ENTRIES, ServiceId, Settings, SockInfo, TRAFFIC_MAX_ENTRIES,
    TrafficKey, TrafficValue, WORKLOADS_MAX_ENTRIES, map_names, prog_names,
};
pub use events::EventStream;

use crate::policy::AllowEntry;

/// The compiled kernel programs, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the BPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("BPF program `{name}` failed to {action}: {source}")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning/adopting link {path}: {message}")]
    Link { path: PathBuf, message: String },
    #[error("map {map}: {action}: {source}")]
    Map {
        map: &'static str,
        action: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {wanted} entries exceed its capacity of {capacity}")]
    Capacity { map: &'static str, wanted: usize, capacity: u32 },
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str, action: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let action = action.into();
    move |source| DataplaneError::Map { map, action, source }
}

/// How to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// bpffs directory to pin maps and links in (daemon). `None`: everything dies with the process.
    pub pin_dir: Option<PathBuf>,
    /// Forward the kernel programs' aya-log diagnostics (debug level) to the agent's log.
    pub ebpf_log: bool,
}

/// What `Dataplane::attach` did per hook.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached,
    /// A pinned link from an earlier daemon was kept: enforcement never lapsed.
    Adopted,
}

pub struct Dataplane {
    ebpf: Ebpf,
    allow: LpmTrie<MapData, AllowKey, AllowValue>,
    dests: LpmTrie<MapData, DestKey, AllowValue>,
    modes: Array<MapData, u32>,
    flows: PerCpuHashMap<MapData, FlowKey, u64>,
    events: Option<RingBuf<MapData>>,
    event_drops: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    traffic: PerCpuHashMap<MapData, TrafficKey, TrafficValue>,
    conns: PerCpuHashMap<MapData, ConnKey, ConnCounters>,
    proxy_peers: aya::maps::HashMap<MapData, OrigDest, ProxyDest>,
    workloads: aya::maps::HashMap<MapData, u64, enforcer_common::WorkloadValue>,
    /// What WORKLOADS holds: cgroup id -> policy id.
    /// TC attachments made by this process (interface, direction), for explicit detach.
    tc_links: Vec<(String, &'static str)>,
    pin_dir: Option<PathBuf>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

/// (name, key size, value size, max entries) the pinned maps must have to be reused.
fn expected_maps() -> [(&'static str, u32, u32, u32); 15] {
    use core::mem::size_of;
    [
        (map_names::ALLOW, 4 + size_of::<AllowKey>() as u32, size_of::<AllowValue>() as u32, ALLOW_MAX_ENTRIES),
        (map_names::DESTS, 4 + size_of::<DestKey>() as u32, size_of::<AllowValue>() as u32, DESTS_MAX_ENTRIES),
        (map_names::MODES, 4, 4, MAX_POLICIES),
        (map_names::WORKLOADS, 8, 8, WORKLOADS_MAX_ENTRIES),
        (map_names::FLOWS, size_of::<FlowKey>() as u32, 8, FLOWS_MAX_ENTRIES),
        (map_names::EVENT_DROPS, 4, 8, 1),
        (map_names::EVENTS, 0, 0, enforcer_common::EVENTS_RING_BYTES),
        (map_names::SETTINGS, 4, size_of::<Settings>() as u32, 1),
        (map_names::DNS_ORIG, 8, size_of::<OrigDest>() as u32, DNS_ORIG_MAX_ENTRIES),
        (map_names::TRAFFIC, size_of::<TrafficKey>() as u32, size_of::<TrafficValue>() as u32, TRAFFIC_MAX_ENTRIES),
        (map_names::FLOW_OWNER, size_of::<FlowOwnerKey>() as u32, 8, FLOW_OWNER_MAX_ENTRIES),
        (map_names::CONNS, size_of::<ConnKey>() as u32, size_of::<ConnCounters>() as u32, CONNS_MAX_ENTRIES),
        (map_names::SOCKS, 8, size_of::<SockInfo>() as u32, SOCKS_MAX_ENTRIES),
        (map_names::PROXY_ORIG, 8, size_of::<ProxyDest>() as u32, PROXY_MAX_ENTRIES),
        (map_names::PROXY_PEERS, size_of::<OrigDest>() as u32, size_of::<ProxyDest>() as u32, PROXY_MAX_ENTRIES),
    ]
}

impl Dataplane {
    /// Load the programs into the kernel (not yet attached) and open their maps. With a pin dir,
    /// maps pinned there by an earlier daemon are reused if their shape still matches; otherwise
    /// the old pins are removed and rebuilt, and the caller is told.
    pub fn load(opts: &LoadOptions) -> Result<(Self, Vec<String>)> {
        let mut notes = Vec::new();
        let mut loader = EbpfLoader::new();
        // aya-log level: 0 = off (quiet by default), 4 = debug.
        let level: u8 = if opts.ebpf_log { 4 } else { 0 };
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        if let Some(dir) = &opts.pin_dir {
            fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                what: "creating pin dir",
                path: dir.clone(),
                source,
            })?;
            notes.extend(check_pinned_maps(dir)?);
            for name in enforcer_common::MAPS.iter().filter(|m| m.pinned).map(|m| m.name) {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;

        let logger = if opts.ebpf_log { start_ebpf_logger(&mut ebpf) } else { None };

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name));
        let allow = LpmTrie::try_from(take(map_names::ALLOW)?).map_err(map_err(map_names::ALLOW, "open"))?;
        let dests = LpmTrie::try_from(take(map_names::DESTS)?).map_err(map_err(map_names::DESTS, "open"))?;
        let modes = Array::try_from(take(map_names::MODES)?).map_err(map_err(map_names::MODES, "open"))?;
        let flows = PerCpuHashMap::try_from(take(map_names::FLOWS)?).map_err(map_err(map_names::FLOWS, "open"))?;
        let events = RingBuf::try_from(take(map_names::EVENTS)?).map_err(map_err(map_names::EVENTS, "open"))?;
        let event_drops =
            PerCpuArray::try_from(take(map_names::EVENT_DROPS)?).map_err(map_err(map_names::EVENT_DROPS, "open"))?;
        let settings = Array::try_from(take(map_names::SETTINGS)?).map_err(map_err(map_names::SETTINGS, "open"))?;
        let traffic =
            PerCpuHashMap::try_from(take(map_names::TRAFFIC)?).map_err(map_err(map_names::TRAFFIC, "open"))?;
        let conns = PerCpuHashMap::try_from(take(map_names::CONNS)?).map_err(map_err(map_names::CONNS, "open"))?;
        let proxy_peers = aya::maps::HashMap::try_from(take(map_names::PROXY_PEERS)?)
            .map_err(map_err(map_names::PROXY_PEERS, "open"))?;
        let workloads: aya::maps::HashMap<MapData, u64, enforcer_common::WorkloadValue> =
            aya::maps::HashMap::try_from(take(map_names::WORKLOADS)?).map_err(map_err(map_names::WORKLOADS, "open"))?;

        for name in prog_names::ALL.into_iter().chain(prog_names::DNS_RESTORE) {
            verified(name, program::<CgroupSockAddr>(&mut ebpf, name)?.load())?;
        }
        verified(prog_names::SOCK_OPS, program::<SockOps>(&mut ebpf, prog_names::SOCK_OPS)?.load())?;
        for name in [prog_names::TC_EGRESS, prog_names::TC_INGRESS] {
            verified(name, program::<SchedClassifier>(&mut ebpf, name)?.load())?;
        }

        let dp = Self {
            ebpf,
            allow,
            dests,
            modes,
            flows,
            events: Some(events),
            event_drops,
            settings,
            traffic,
            conns,
            proxy_peers,
            workloads,
            tc_links: Vec::new(),
            pin_dir: opts.pin_dir.clone(),
            _logger: logger,
        };
        Ok((dp, notes))
    }

    /// Attach every hook to `cgroup` with bpf_link (programs of parent cgroups keep running and all
    /// must allow). With a pin dir, links are pinned; an existing pinned link is adopted.
    /// With `dns_restore`, the recvmsg/getpeername hooks are attached too (DNS steering); with
    /// `accounting`, the sock_ops connection accounting.
    pub fn attach(
        &mut self,
        cgroup: &Path,
        dns_restore: bool,
        accounting: bool,
    ) -> Result<Vec<(&'static str, AttachOutcome)>> {
        let cg = fs::File::open(cgroup).map_err(|source| DataplaneError::Io {
            what: "opening cgroup",
            path: cgroup.to_owned(),
            source,
        })?;
        let mut out = Vec::new();
        let extra: &[&'static str] = if dns_restore { &prog_names::DNS_RESTORE } else { &[] };
        for name in prog_names::ALL.into_iter().chain(extra.iter().copied()) {
            let link_path = self.link_path(name);
            if adopt_pinned(link_path.as_ref())? {
                out.push((name, AttachOutcome::Adopted));
                continue;
            }
            let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            // On kernels >= 5.7 aya attaches with bpf_link, which always allows several programs per
            // cgroup and in ancestors (all must allow) and rejects any flag: `Single` means "no
            // flags" there. Older kernels are refused by preflight (ring buffer needs 5.8).
            let link_id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|source| DataplaneError::Program {
                name,
                action: "attach",
                source,
            })?;
            if let Some(p) = link_path {
                let link = prog.take_link(link_id).map_err(|source| DataplaneError::Program {
                    name,
                    action: "take link",
                    source,
                })?;
                pin_link(link.try_into(), &p)?;
            }
            out.push((name, AttachOutcome::Attached));
        }
        if accounting {
            out.push((prog_names::SOCK_OPS, self.attach_sock_ops(&cg)?));
        }
        Ok(out)
    }

    fn attach_sock_ops(&mut self, cg: &fs::File) -> Result<AttachOutcome> {
        let name = prog_names::SOCK_OPS;
        let link_path = self.link_path(name);
        if adopt_pinned(link_path.as_ref())? {
            return Ok(AttachOutcome::Adopted);
        }
        let prog = program::<SockOps>(&mut self.ebpf, name)?;
        let link_id = prog.attach(cg, CgroupAttachMode::Single).map_err(|source| DataplaneError::Program {
            name,
            action: "attach",
            source,
        })?;
        if let Some(p) = link_path {
            let link = prog.take_link(link_id).map_err(|source| DataplaneError::Program {
                name,
                action: "take link",
                source,
            })?;
            pin_link(link.try_into(), &p)?;
        }
        Ok(AttachOutcome::Attached)
    }

    /// Count traffic on `iface` (egress and ingress). With tcx (Linux >= 6.6) the links are pinned
    /// when there is a pin dir (adopted on restart); with netlink clsact they are not pinnable and
    /// are removed by `detach_tc` / when the process exits.
    pub fn attach_tc(&mut self, iface: &str) -> Result<Vec<(&'static str, AttachOutcome)>> {
        // Needed for the netlink path only; EEXIST (already there) is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let mut out = Vec::new();
        for (name, kind) in
            [(prog_names::TC_EGRESS, TcAttachType::Egress), (prog_names::TC_INGRESS, TcAttachType::Ingress)]
        {
            let link_path = self.link_path(&format!("{name}_{iface}"));
            if adopt_pinned(link_path.as_ref())? {
                out.push((name, AttachOutcome::Adopted));
                continue;
            }
            let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
            let link_id = prog.attach(iface, kind).map_err(|source| DataplaneError::Program {
                name,
                action: "attach to interface",
                source,
            })?;
            if let Some(p) = link_path {
                let link = prog.take_link(link_id).map_err(|source| DataplaneError::Program {
                    name,
                    action: "take link",
                    source,
                })?;
                match FdLink::try_from(link) {
                    Ok(fd) => pin_link(Ok(fd), &p)?,
                    // A netlink filter: cannot be pinned; it stays until detached or the qdisc goes.
                    Err(_) => tracing::warn!(
                        iface,
                        "TC counters attached with netlink (no tcx): they do not survive a daemon restart"
                    ),
                }
            }
            self.tc_links.push((iface.to_string(), name));
            out.push((name, AttachOutcome::Attached));
        }
        Ok(out)
    }

    /// Where the link of `name` is pinned (daemon), `<pin dir>/link_<name>`.
    fn link_path(&self, name: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join(format!("link_{name}")))
    }

    /// Where a connection the kernel steered to the L7 proxy meant to go, by the client's address
    /// as the proxy sees it on accept: (original destination, service id, client cgroup id).
    pub fn proxy_original(&self, client: std::net::SocketAddr) -> Option<(std::net::SocketAddr, ServiceId, u64)> {
        let mut key = OrigDest { addr: [0; 16], port: client.port(), family: enforcer_common::FAMILY_V4, _pad: [0; 5] };
        match client.ip() {
            std::net::IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => key.addr[..4].copy_from_slice(&v4.octets()),
                None => {
                    key.family = enforcer_common::FAMILY_V6;
                    key.addr = a.octets();
                }
            },
        }
        let d = self.proxy_peers.get(&key, 0).ok()?;
        let ip = crate::policy::addr_from_bytes(d.family, &d.addr);
        Some((std::net::SocketAddr::new(ip, d.port), d.service_id, d.cgroup_id))
    }

    /// TC packet/byte counters summed over CPUs.
    pub fn traffic(&self) -> Vec<(TrafficKey, TrafficValue)> {
        self.traffic
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| {
                let mut t = TrafficValue::default();
                for v in per_cpu.iter() {
                    t.packets += v.packets;
                    t.bytes += v.bytes;
                }
                (k, t)
            })
            .collect()
    }

    /// TCP connection counters summed over CPUs.
    pub fn conns(&self) -> Vec<(ConnKey, ConnCounters)> {
        self.conns
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| {
                let mut t = ConnCounters::default();
                for v in per_cpu.iter() {
                    t.opened += v.opened;
                    t.closed += v.closed;
                    t.payload_sent += v.payload_sent;
                    t.payload_received += v.payload_received;
                }
                (k, t)
            })
            .collect()
    }

    /// What the ALLOW map holds now, read back from the kernel.
    pub fn read_allow(&self) -> Result<BTreeMap<AllowEntry, AllowValue>> {
        read_trie(&self.allow, map_names::ALLOW, AllowEntry::from_key)
    }

    /// Flow counts summed over CPUs.
    pub fn flows(&self) -> Vec<(FlowKey, u64)> {
        self.flows.iter().filter_map(|r| r.ok()).map(|(k, per_cpu)| (k, per_cpu.iter().sum())).collect()
    }

    /// Events the kernel could not queue because the ring buffer was full, summed over CPUs.
    pub fn event_drops(&self) -> u64 {
        self.event_drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Take the event ring buffer (once).
    pub fn take_events(&mut self) -> Option<EventStream> {
        self.events.take().and_then(|rb| EventStream::new(rb).ok())
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }
}

/// An existing pinned link at `path` is kept as it is (adopted: its program keeps running, so
/// enforcement has no gap across a daemon restart). Returns whether there was one.
fn adopt_pinned(path: Option<&PathBuf>) -> Result<bool> {
    match path.filter(|p| p.exists()) {
        Some(p) => {
            PinnedLink::from_pin(p).map_err(|e| DataplaneError::Link { path: p.clone(), message: e.to_string() })?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Pin a link taken from a program (a cgroup or tcx link is an `FdLink`).
fn pin_link(fd: std::result::Result<FdLink, LinkError>, path: &Path) -> Result<()> {
    let link_err = |message: String| DataplaneError::Link { path: path.to_owned(), message };
    fd.map_err(|e| link_err(e.to_string()))?.pin(path).map(drop).map_err(|e| link_err(e.to_string()))
}

/// The program `name` of the object, as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Link { path: PathBuf::from(name), message: "program missing from object".into() })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, action: "open", source })
}

/// The result of loading a program, with the verifier's answer named.
fn verified(name: &'static str, r: std::result::Result<(), aya::programs::ProgramError>) -> Result<()> {
    r.map_err(|source| DataplaneError::Program { name, action: "load (verifier)", source })
}

fn read_trie<K: aya::Pod, E: Ord>(
    trie: &LpmTrie<MapData, K, AllowValue>,
    name: &'static str,
    from_key: impl Fn(u32, &K) -> Option<E>,
) -> Result<BTreeMap<E, AllowValue>> {
    let mut out = BTreeMap::new();
    for r in trie.iter() {
        let (k, v) = r.map_err(map_err(name, "iterate"))?;
        if let Some(e) = from_key(k.prefix_len(), &k.data()) {
            out.insert(e, v);
        }
    }
    Ok(out)
}

/// Compare pinned maps with what this build expects; remove incompatible pins (and the links,
/// whose programs use them) so they are rebuilt deliberately.
fn check_pinned_maps(dir: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut stale = false;
    for (name, key, value, max) in expected_maps() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match MapInfo::from_pin(&path) {
            Ok(info) if info.key_size() == key && info.value_size() == value && info.max_entries() == max => {}
            Ok(info) => {
                notes.push(format!(
                    "pinned map {} has key/value/max {}/{}/{}, this build needs {key}/{value}/{max}: rebuilding the pinned state",
                    path.display(),
                    info.key_size(),
                    info.value_size(),
                    info.max_entries()
                ));
                stale = true;
            }
            Err(e) => {
                notes.push(format!("pinned map {} unreadable ({e}): rebuilding the pinned state", path.display()));
                stale = true;
            }
        }
    }
    if stale {
        unpin_all(dir)?;
    }
    Ok(notes)
}

/// Remove every pin enforcer made under `dir` (maps and links). Dropping the last reference to a
/// link detaches its program.
pub fn unpin_all(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let names = enforcer_common::MAPS.iter().map(|m| m.name.to_string()).chain(
        prog_names::ALL
            .iter()
            .chain(&prog_names::DNS_RESTORE)
            .chain(&[prog_names::SOCK_OPS])
            .map(|p| format!("link_{p}")),
    );
    // TC links are pinned per interface: link_tc_egress_<iface>.
    let tc: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link_tc_"))
                .collect()
        })
        .unwrap_or_default();
    let names = names.chain(tc);
    for name in names {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p).map_err(|source| DataplaneError::Io { what: "unpinning", path: p.clone(), source })?;
            removed.push(p);
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

fn start_ebpf_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            let mut fd =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .ok()?;
            Some(tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else { return };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }))
        }
        Err(e) => {
            tracing::warn!("kernel-side logging unavailable: {e}");
            None
        }
    }
}
