//! The only module that touches aya: load the programs, attach them to a cgroup, pin them, and
//! apply map diffs. Events and flow counters come back up through here.
//!
//! - `enforcer_common::{MAPS, PROGRAMS}` is the one table of what the object holds; the shape check
//!   of pinned maps, unpin and the map-entry counts walk it, and a test checks the embedded object
//!   against it (`object_tests`).
//! - `paths` names every bpffs path.
//! - Restarts and upgrades: pinned maps whose shape and layout version match are kept (learned
//!   entries and their kernel-side expiry included); the others are rebuilt with a note. Pinned
//!   links are never dropped to be re-made: their program is swapped for this build's with
//!   `BPF_LINK_UPDATE` (`sys`), so the new code runs and enforcement never lapses; pinned hooks this
//!   configuration does not want are detached.

mod contract;
mod events;
pub mod paths;
mod sys;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, MapData, MapInfo, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier, SockOps, TcAttachType,
        links::{FdLink, LinkError},
    },
};
pub use contract::{BootNs, MapContents, Maps, MemoryMaps};
use enforcer_common::{
    ALLOW_EXACT_MAX_ENTRIES, ALLOW_F_LEARNED, ALLOW_F_PROXY, ALLOW_MAX_ENTRIES, ANY_PORT, AllowKey, AllowValue,
    ConnCounters, ConnKey, DestKey, FAMILY_V4, FAMILY_V6, FlowKey, FlowOwnerKey, MAPS, MapKind, Mode, OrigDest,
    PIN_LAYOUT_VERSION, PROGRAMS, PolicyId, ProgKind, ProxyDest, SETTINGS_DATAPLANE_FLAGS, SETTINGS_F_ACCOUNTING,
    SETTINGS_F_TRIE, ServiceId, Settings, TrafficKey, TrafficValue, WorkloadValue, map_names, prog_names,
};
pub use events::EventStream;
use paths::PinDir;

use crate::policy::{AllowEntry, DestEntry};

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
    /// A pinned link from an earlier daemon already runs this build's program.
    Adopted,
    /// A pinned link from an earlier daemon now runs this build's program (swapped atomically
    /// with `BPF_LINK_UPDATE`: enforcement never lapsed).
    Replaced {
        old_program: u32,
        new_program: u32,
    },
    /// A pinned hook this configuration does not want was detached.
    Detached,
}

/// Which hooks to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// recvmsg/getpeername: show steered sockets the resolver or destination they asked for.
    pub dns_restore: bool,
    /// sock_ops: TCP connection accounting and proxy filings.
    pub sock_ops: bool,
    /// TCP connection accounting (`CONNS`); needs `sock_ops`.
    pub accounting: bool,
    /// The per-packet cgroup_skb egress backstop.
    pub backstop: bool,
}

pub struct Dataplane {
    ebpf: Ebpf,
    allow: LpmTrie<MapData, AllowKey, AllowValue>,
    allow_exact: aya::maps::HashMap<MapData, AllowKey, AllowValue>,
    dests: LpmTrie<MapData, DestKey, AllowValue>,
    modes: Array<MapData, u32>,
    flows: PerCpuHashMap<MapData, FlowKey, u64>,
    events: Option<RingBuf<MapData>>,
    event_drops: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    traffic: PerCpuHashMap<MapData, TrafficKey, TrafficValue>,
    conns: PerCpuHashMap<MapData, ConnKey, ConnCounters>,
    proxy_peers: aya::maps::HashMap<MapData, OrigDest, ProxyDest>,
    proxy_orig: aya::maps::HashMap<MapData, u64, ProxyDest>,
    dns_orig: aya::maps::HashMap<MapData, u64, OrigDest>,
    flow_owner: aya::maps::HashMap<MapData, FlowOwnerKey, u64>,
    workloads: aya::maps::HashMap<MapData, u64, WorkloadValue>,
    policy_flags: Array<MapData, u32>,
    /// `DNS_ALIVE`, until the agent takes it for the forwarder's heartbeat.
    heartbeat: Option<Heartbeat>,
    /// What WORKLOADS holds: cgroup id -> policy id.
    workloads_in_map: BTreeMap<u64, PolicyId>,
    /// ALLOW entries that live in the trie (CIDRs, ANY_PORT, exact entries that overflowed the
    /// hash); its emptiness drives `SETTINGS_F_TRIE`.
    in_trie: BTreeSet<AllowEntry>,
    /// Entries in ALLOW_EXACT.
    in_exact: usize,
    /// Entries in DESTS.
    in_dests: usize,
    /// The settings as the agent last wrote them, and the flag bits the dataplane owns.
    agent_settings: Settings,
    own_flags: u16,
    /// `Settings::workloads_gen`: bumped after every WORKLOADS write (and at load), so the
    /// kernel's `POLICY_CACHE` never answers from before a change.
    workloads_gen: u32,
    /// TC attachments made by this process (interface, direction), for explicit detach.
    tc_links: Vec<(String, &'static str)>,
    pins: Option<PinDir>,
    /// The cgroup_skb backstop variant this kernel took (`backstop`, else `backstop_compat`), if
    /// any (see `load`).
    backstop: Option<&'static str>,
    /// Whether an ALLOW entry steering to the proxy was written (or found at load).
    proxy_entries: bool,
    /// The cgroup sock_ops is to be attached to once a proxy entry is written (no accounting).
    sock_ops_pending: Option<fs::File>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

/// The DNS forwarder's heartbeat (`DNS_ALIVE`): the kernel steers port-53 calls to the forwarder
/// only while the last beat is at most `DNS_HEARTBEAT_TIMEOUT_NS` old, so a killed agent's
/// workloads get the `--dns-fallback` behaviour within that time, not a dead forwarder.
pub struct Heartbeat {
    map: Array<MapData, u64>,
}

impl Heartbeat {
    /// The forwarder is serving now.
    pub fn beat(&mut self) -> Result<()> {
        self.map.set(0, BootNs::now().0, 0).map_err(map_err(map_names::DNS_ALIVE, "beat"))
    }

    /// The forwarder stops: the fallback applies at once.
    pub fn stop(&mut self) -> Result<()> {
        self.map.set(0, 0, 0).map_err(map_err(map_names::DNS_ALIVE, "stop"))
    }
}

/// Whether an entry is kept in ALLOW_EXACT (a single address on one port) rather than the trie.
fn exact(e: &AllowEntry) -> bool {
    e.port != ANY_PORT && e.net.prefix_len() == e.net.max_prefix_len()
}

impl Dataplane {
    /// Load the programs into the kernel (not yet attached) and open their maps. With a pin dir,
    /// maps pinned there by an earlier daemon are reused if their shape and the pin layout version
    /// still match; otherwise those pins are removed and rebuilt, and the caller is told (notes).
    pub fn load(opts: &LoadOptions) -> Result<(Self, Vec<String>)> {
        let mut notes = Vec::new();
        let mut loader = EbpfLoader::new();
        // aya-log level: 0 = off (quiet by default), 4 = debug.
        let level: u8 = if opts.ebpf_log { 4 } else { 0 };
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        let pins = opts.pin_dir.as_ref().map(PinDir::new);
        if let Some(p) = &pins {
            fs::create_dir_all(p.path()).map_err(|source| DataplaneError::Io {
                what: "creating pin dir",
                path: p.path().to_owned(),
                source,
            })?;
            notes.extend(check_pinned_maps(p)?);
            for m in MAPS.iter().filter(|m| m.pinned) {
                loader.map_pin_path(m.name, p.map(m.name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;

        let logger = if opts.ebpf_log { start_ebpf_logger(&mut ebpf) } else { None };

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name));
        macro_rules! open {
            ($ty:ident, $name:expr) => {
                $ty::try_from(take($name)?).map_err(map_err($name, "open"))?
            };
        }
        use aya::maps::HashMap as Hash;
        let allow: LpmTrie<MapData, AllowKey, AllowValue> = open!(LpmTrie, map_names::ALLOW);
        let allow_exact: Hash<MapData, AllowKey, AllowValue> = open!(Hash, map_names::ALLOW_EXACT);
        let dests = open!(LpmTrie, map_names::DESTS);
        let modes = open!(Array, map_names::MODES);
        let flows = open!(PerCpuHashMap, map_names::FLOWS);
        let events = open!(RingBuf, map_names::EVENTS);
        let event_drops = open!(PerCpuArray, map_names::EVENT_DROPS);
        let settings: Array<MapData, Settings> = open!(Array, map_names::SETTINGS);
        let traffic = open!(PerCpuHashMap, map_names::TRAFFIC);
        let conns = open!(PerCpuHashMap, map_names::CONNS);
        let proxy_peers = open!(Hash, map_names::PROXY_PEERS);
        let proxy_orig = open!(Hash, map_names::PROXY_ORIG);
        let dns_orig = open!(Hash, map_names::DNS_ORIG);
        let flow_owner = open!(Hash, map_names::FLOW_OWNER);
        let workloads: Hash<MapData, u64, WorkloadValue> = open!(Hash, map_names::WORKLOADS);
        let policy_flags: Array<MapData, u32> = open!(Array, map_names::POLICY_FLAGS);
        let heartbeat = Heartbeat { map: open!(Array, map_names::DNS_ALIVE) };
        let mut layout: Array<MapData, u32> = open!(Array, map_names::PIN_LAYOUT);
        if pins.is_some() {
            layout.set(0, PIN_LAYOUT_VERSION, 0).map_err(map_err(map_names::PIN_LAYOUT, "write the version"))?;
        }
        let workloads_in_map = workloads.iter().filter_map(|r| r.ok()).map(|(k, v)| (k, v.policy_id)).collect();

        let mut backstop = None;
        for p in PROGRAMS {
            let name = p.name;
            if p.kind == ProgKind::CgroupSkb && backstop.is_some() {
                // `backstop` loaded: its compat twin is not needed.
                continue;
            }
            let r = match p.kind {
                ProgKind::CgroupSockAddr => program::<CgroupSockAddr>(&mut ebpf, name)?.load(),
                ProgKind::SockOps => program::<SockOps>(&mut ebpf, name)?.load(),
                ProgKind::CgroupSkb => program::<CgroupSkb>(&mut ebpf, name)?.load(),
                ProgKind::SchedClassifier => program::<SchedClassifier>(&mut ebpf, name)?.load(),
            };
            match (p.kind, verified(name, r)) {
                (ProgKind::CgroupSkb, Ok(())) => {
                    if name == prog_names::BACKSTOP_COMPAT {
                        tracing::info!(
                            "this kernel's cgroup_skb programs may not read the current task: the backstop's events name the process recorded at connect()/sendmsg() (none for raw and ping sockets)"
                        );
                    }
                    backstop = Some(name);
                }
                (_, Ok(())) => {}
                // Both variants refused: the connect/sendmsg hooks still judge every connection.
                // Said loudly, never silently.
                (ProgKind::CgroupSkb, Err(e)) if name == prog_names::BACKSTOP_COMPAT => {
                    notes.push(format!(
                        "the per-packet backstop does not load on this kernel, so packets are judged only at connect()/sendmsg() (routing headers, NAT, raw and ping sockets are not caught): {e}"
                    ));
                }
                (ProgKind::CgroupSkb, Err(e)) => {
                    tracing::debug!(error = %e, "backstop refused; trying {}", prog_names::BACKSTOP_COMPAT);
                }
                (_, Err(e)) => return Err(e),
            }
        }

        // Start from what the maps hold (non-empty when adopting pinned maps), so the first apply
        // is a diff against reality; learned entries come back with their expiry.
        let agent_settings = settings.get(&0, 0).map_err(map_err(map_names::SETTINGS, "read"))?;
        let mut dp = Self {
            ebpf,
            allow,
            allow_exact,
            dests,
            modes,
            flows,
            events: Some(events),
            event_drops,
            settings,
            traffic,
            conns,
            proxy_peers,
            proxy_orig,
            dns_orig,
            flow_owner,
            workloads,
            policy_flags,
            heartbeat: Some(heartbeat),
            workloads_in_map,
            in_trie: BTreeSet::new(),
            in_exact: 0,
            in_dests: 0,
            agent_settings: Settings { flags: agent_settings.flags & !SETTINGS_DATAPLANE_FLAGS, ..agent_settings },
            own_flags: agent_settings.flags & SETTINGS_DATAPLANE_FLAGS,
            // What a previous daemon cached is stale for this one.
            workloads_gen: agent_settings.workloads_gen.wrapping_add(1),
            tc_links: Vec::new(),
            pins,
            backstop,
            proxy_entries: false,
            sock_ops_pending: None,
            _logger: logger,
        };
        let contents = dp.read()?;
        dp.in_trie = dp.read_trie_entries()?;
        dp.in_exact = contents.allow.len() + contents.learned.len() - dp.in_trie.len();
        dp.in_dests = contents.dests.len();
        dp.proxy_entries = contents
            .allow
            .values()
            .chain(contents.learned.values().map(|(v, _)| v))
            .any(|v| v.flags & ALLOW_F_PROXY != 0);
        // Keep SETTINGS_F_TRIE true to the trie (a previous daemon may have died between writes).
        dp.own_flags = (dp.own_flags & !SETTINGS_F_TRIE) | if dp.in_trie.is_empty() { 0 } else { SETTINGS_F_TRIE };
        dp.write_settings()?;
        if !contents.learned.is_empty() {
            notes.push(format!(
                "kept {} learned (DNS) entries from the pinned maps, each until its TTL",
                contents.learned.len()
            ));
        }
        Ok((dp, notes))
    }

    /// Attach every hook to `cgroup` with bpf_link (programs of parent cgroups keep running and all
    /// must allow). With a pin dir, links are pinned; an existing pinned link gets this build's
    /// program. With `dns_restore`, the recvmsg/getpeername hooks are attached too (DNS steering);
    /// `sock_ops`: connection accounting (and proxy filings). The backstop is always attached.
    /// Prefer [`Dataplane::attach_hooks`], which tells accounting and proxy filings apart.
    pub fn attach(
        &mut self,
        cgroup: &Path,
        dns_restore: bool,
        sock_ops: bool,
    ) -> Result<Vec<(&'static str, AttachOutcome)>> {
        self.attach_hooks(cgroup, Hooks { dns_restore, sock_ops, accounting: sock_ops, backstop: true })
    }

    /// Attach the hooks `want` asks for, replace the programs of pinned links with this build's, and
    /// detach pinned hooks it does not ask for. sock_ops runs ~6 times per TCP connection, so
    /// without accounting it is attached only once an ALLOW entry steers to the L7 proxy (whose
    /// filings it makes).
    pub fn attach_hooks(&mut self, cgroup: &Path, want: Hooks) -> Result<Vec<(&'static str, AttachOutcome)>> {
        let cg = fs::File::open(cgroup).map_err(|source| DataplaneError::Io {
            what: "opening cgroup",
            path: cgroup.to_owned(),
            source,
        })?;
        let accounting = want.sock_ops && want.accounting;
        self.own_flags = (self.own_flags & !SETTINGS_F_ACCOUNTING) | if accounting { SETTINGS_F_ACCOUNTING } else { 0 };
        self.write_settings()?;
        let sock_ops_now = accounting || (want.sock_ops && self.proxy_entries);
        let mut out = Vec::new();
        for p in PROGRAMS {
            let wanted = match p.kind {
                ProgKind::SchedClassifier => continue,
                ProgKind::CgroupSockAddr => prog_names::ALL.contains(&p.name) || want.dns_restore,
                ProgKind::SockOps => sock_ops_now,
                ProgKind::CgroupSkb => want.backstop && self.backstop == Some(p.name),
            };
            let link_path = self.pins.as_ref().map(|d| d.link(p.name));
            if !wanted {
                if let Some(lp) = link_path.filter(|lp| lp.exists()) {
                    fs::remove_file(&lp).map_err(|source| DataplaneError::Io {
                        what: "unpinning",
                        path: lp,
                        source,
                    })?;
                    out.push((p.name, AttachOutcome::Detached));
                }
                continue;
            }
            out.push((p.name, self.attach_one(p.name, p.kind, &cg)?));
        }
        self.sock_ops_pending = match (want.sock_ops && !sock_ops_now, cg.try_clone()) {
            (true, Ok(f)) => Some(f),
            _ => None,
        };
        Ok(out)
    }

    /// Attach (or, for a pinned link, swap in) one cgroup program.
    fn attach_one(&mut self, name: &'static str, kind: ProgKind, cg: &fs::File) -> Result<AttachOutcome> {
        let link_path = self.pins.as_ref().map(|d| d.link(name));
        if let Some(o) = self.replace_pinned(name, link_path.as_deref())? {
            return Ok(o);
        }
        let attach_err = |source| DataplaneError::Program { name, action: "attach", source };
        let take_err = |source| DataplaneError::Program { name, action: "take link", source };
        // On kernels >= 5.7 aya attaches with bpf_link, which always allows several programs per
        // cgroup and in ancestors (all must allow) and rejects any flag: `Single` means "no
        // flags" there. Older kernels are refused by preflight (ring buffer needs 5.8).
        // Without a pin dir (`run`) the link stays in its program's link list and lives as long
        // as this process; with one, it is taken and pinned.
        let pin = link_path.is_some();
        let fd: Option<std::result::Result<FdLink, LinkError>> = match kind {
            ProgKind::CgroupSockAddr => {
                let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
                let id = prog.attach(cg, CgroupAttachMode::Single).map_err(attach_err)?;
                if pin { Some(prog.take_link(id).map_err(take_err)?.try_into()) } else { None }
            }
            ProgKind::SockOps => {
                let prog = program::<SockOps>(&mut self.ebpf, name)?;
                let id = prog.attach(cg, CgroupAttachMode::Single).map_err(attach_err)?;
                if pin { Some(prog.take_link(id).map_err(take_err)?.try_into()) } else { None }
            }
            ProgKind::CgroupSkb => {
                let prog = program::<CgroupSkb>(&mut self.ebpf, name)?;
                let id = prog.attach(cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single).map_err(attach_err)?;
                let fd = if pin { Some(prog.take_link(id).map_err(take_err)?.try_into()) } else { None };
                self.own_flags |= enforcer_common::SETTINGS_F_BACKSTOP;
                self.write_settings()?;
                fd
            }
            ProgKind::SchedClassifier => {
                return Err(DataplaneError::Link {
                    path: PathBuf::from(name),
                    message: "a TC program is attached with attach_tc".into(),
                });
            }
        };
        if let (Some(fd), Some(lp)) = (fd, link_path) {
            pin_link(fd, &lp)?;
        }
        Ok(AttachOutcome::Attached)
    }

    /// A first ALLOW entry steering to the proxy: sock_ops (deferred without accounting) is
    /// attached before the entry goes in, so its connections are filed.
    fn proxy_entry_coming(&mut self) -> Result<()> {
        self.proxy_entries = true;
        if let Some(cg) = self.sock_ops_pending.take() {
            let o = self.attach_one(prog_names::SOCK_OPS, ProgKind::SockOps, &cg)?;
            tracing::debug!(outcome = ?o, "sock_ops attached for the proxy's filings");
        }
        Ok(())
    }

    /// If a link is pinned at `path`, make it run this build's program `name`.
    fn replace_pinned(&mut self, name: &'static str, path: Option<&Path>) -> Result<Option<AttachOutcome>> {
        let Some(path) = path.filter(|p| p.exists()) else { return Ok(None) };
        let link_err = |message: String| DataplaneError::Link { path: path.to_owned(), message };
        let link = sys::obj_get(path).map_err(|e| link_err(format!("BPF_OBJ_GET: {e}")))?;
        let (_, old_program) = sys::link_ids(link.as_fd()).map_err(|e| link_err(format!("link info: {e}")))?;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::Link { path: PathBuf::from(name), message: "program missing from object".into() })?;
        let new_program = prog.info().map_err(|source| DataplaneError::Program { name, action: "info", source })?.id();
        if old_program == new_program {
            return Ok(Some(AttachOutcome::Adopted));
        }
        let fd = prog.fd().map_err(|source| DataplaneError::Program { name, action: "fd", source })?;
        sys::link_update(link.as_fd(), fd).map_err(|e| link_err(format!("BPF_LINK_UPDATE: {e}")))?;
        tracing::info!(program = name, old_program, new_program, "pinned link now runs this build's program");
        Ok(Some(AttachOutcome::Replaced { old_program, new_program }))
    }

    /// Count traffic on `iface` (egress and ingress). With tcx (Linux >= 6.6) the links are pinned
    /// when there is a pin dir (their program replaced on restart); with netlink clsact they are
    /// not pinnable and are removed by `detach_tc` / when the process exits.
    pub fn attach_tc(&mut self, iface: &str) -> Result<Vec<(&'static str, AttachOutcome)>> {
        // Needed for the netlink path only; EEXIST (already there) is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let mut out = Vec::new();
        for (name, kind) in
            [(prog_names::TC_EGRESS, TcAttachType::Egress), (prog_names::TC_INGRESS, TcAttachType::Ingress)]
        {
            let link_path = self.pins.as_ref().map(|d| d.tc_link(name, iface));
            if let Some(o) = self.replace_pinned(name, link_path.as_deref())? {
                out.push((name, o));
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

    /// Ids of this build's loaded programs, by name (what the attached links run after `attach`).
    pub fn program_ids(&self) -> BTreeMap<&'static str, u32> {
        PROGRAMS.iter().filter_map(|p| Some((p.name, self.ebpf.program(p.name)?.info().ok()?.id()))).collect()
    }

    /// Make WORKLOADS hold exactly `want` (cgroup id -> policy id): inserts first, then removals.
    pub fn set_workloads(&mut self, want: &BTreeMap<u64, PolicyId>) -> Result<()> {
        let d = crate::policy::diff(&self.workloads_in_map, want);
        for (cg, policy_id) in &d.upserts {
            Maps::set_workload(self, *cg, *policy_id)?;
        }
        for cg in &d.removals {
            Maps::remove_workload(self, *cg)?;
        }
        Ok(())
    }

    /// Where a connection the kernel steered to the L7 proxy meant to go, by the client's address
    /// as the proxy sees it on accept: (original destination, service id, client cgroup id). The
    /// filing is deleted as it is read: the proxy reads once per accepted connection, and a later
    /// connection from the same address can only be served by its own filing.
    pub fn take_proxy_original(
        &mut self,
        client: std::net::SocketAddr,
    ) -> Option<(std::net::SocketAddr, ServiceId, u64)> {
        let key = client_key(client);
        let d = self.proxy_peers.get(&key, 0).ok()?;
        // Removing fails only if the client's close already withdrew it: the answer stands.
        let _ = self.proxy_peers.remove(&key);
        let ip = crate::policy::addr_from_bytes(d.family, &d.addr);
        Some((std::net::SocketAddr::new(ip, d.port), d.service_id, d.cgroup_id))
    }

    /// As `take_proxy_original`, for callers holding a shared reference (the filing is still
    /// withdrawn when the client socket closes). Prefer `take_proxy_original`.
    pub fn proxy_original(&self, client: std::net::SocketAddr) -> Option<(std::net::SocketAddr, ServiceId, u64)> {
        let d = self.proxy_peers.get(&client_key(client), 0).ok()?;
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

    /// Entries per map of [`MAPS`] that has a count (hashes, tries; not arrays, the ring buffer
    /// or socket storage), for `enforcer_map_entries`.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        MAPS.iter()
            .filter_map(|m| {
                let n = match m.name {
                    map_names::ALLOW => self.in_trie.len(),
                    map_names::ALLOW_EXACT => self.in_exact,
                    map_names::DESTS => self.in_dests,
                    map_names::WORKLOADS => self.workloads_in_map.len(),
                    // FLOWS, TRAFFIC and CONNS are counted from the scrape's own read of them;
                    // the kernel-filled LRU maps by `KernelOnlyMaps`, without the dataplane.
                    _ => return None,
                };
                Some((m.name, n))
            })
            .collect()
    }

    /// New handles (own file descriptors) on the maps only the kernel fills (`POLICY_CACHE`,
    /// `PROXY_PEERS`, `PROXY_ORIG`, `DNS_ORIG`, `FLOW_OWNER`), so their keys can be counted without holding
    /// whatever lock guards this dataplane (a full `FLOW_OWNER` walk takes ~1 s here).
    pub fn kernel_only_maps(&self) -> Result<KernelOnlyMaps> {
        use aya::maps::IterableMap as _;
        fn reopen<K: aya::Pod, V: aya::Pod>(
            name: &'static str,
            m: &MapData,
        ) -> Result<aya::maps::HashMap<MapData, K, V>> {
            let id = m.info().map_err(map_err(name, "read the id"))?.id();
            let md = MapData::from_id(id).map_err(map_err(name, "reopen"))?;
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(md)).map_err(map_err(name, "reopen"))
        }
        let policy_cache = match self.ebpf.map(map_names::POLICY_CACHE) {
            Some(aya::maps::Map::LruHashMap(md)) => reopen(map_names::POLICY_CACHE, md)?,
            _ => {
                return Err(DataplaneError::Map {
                    map: map_names::POLICY_CACHE,
                    action: "find in the object".into(),
                    source: aya::maps::MapError::InvalidName { name: map_names::POLICY_CACHE.into() },
                });
            }
        };
        Ok(KernelOnlyMaps {
            policy_cache,
            proxy_peers: reopen(map_names::PROXY_PEERS, self.proxy_peers.map())?,
            proxy_orig: reopen(map_names::PROXY_ORIG, self.proxy_orig.map())?,
            dns_orig: reopen(map_names::DNS_ORIG, self.dns_orig.map())?,
            flow_owner: reopen(map_names::FLOW_OWNER, self.flow_owner.map())?,
        })
    }

    pub fn set_mode(&mut self, policy_id: PolicyId, mode: Mode) -> Result<()> {
        Maps::set_mode(self, policy_id, mode)
    }

    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        Maps::set_settings(self, settings)
    }

    pub fn mode(&self, policy_id: PolicyId) -> Result<u32> {
        self.modes.get(&policy_id.get(), 0).map_err(map_err(map_names::MODES, "get"))
    }

    /// The forwarder's heartbeat (`DNS_ALIVE`), to be written without this dataplane's lock
    /// (once; `None` afterwards).
    pub fn take_heartbeat(&mut self) -> Option<Heartbeat> {
        self.heartbeat.take()
    }

    fn write_settings(&mut self) -> Result<()> {
        let s = Settings {
            flags: self.agent_settings.flags | self.own_flags,
            workloads_gen: self.workloads_gen,
            ..self.agent_settings
        };
        self.settings.set(0, s, 0).map_err(map_err(map_names::SETTINGS, "set"))
    }

    fn bump_workloads_gen(&mut self) -> Result<()> {
        self.workloads_gen = self.workloads_gen.wrapping_add(1);
        self.write_settings()
    }

    /// What the ALLOW maps hold now (exact and trie, registry and learned), read back.
    pub fn read_allow(&self) -> Result<BTreeMap<AllowEntry, AllowValue>> {
        let c = self.read()?;
        Ok(c.allow.into_iter().chain(c.learned.into_iter().map(|(e, (v, _))| (e, v))).collect())
    }

    fn read_trie_entries(&self) -> Result<BTreeSet<AllowEntry>> {
        let mut out = BTreeSet::new();
        for r in self.allow.iter() {
            let (k, _) = r.map_err(map_err(map_names::ALLOW, "iterate"))?;
            if let Some(e) = AllowEntry::from_key(k.prefix_len(), &k.data()) {
                out.insert(e);
            }
        }
        Ok(out)
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
        self.pins.as_ref().map(PinDir::path)
    }
}

fn client_key(client: std::net::SocketAddr) -> OrigDest {
    let mut key = OrigDest { addr: [0; 16], port: client.port(), family: FAMILY_V4, _pad: [0; 5] };
    match client.ip() {
        std::net::IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => key.addr[..4].copy_from_slice(&v4.octets()),
            None => {
                key.family = FAMILY_V6;
                key.addr = a.octets();
            }
        },
    }
    key
}

/// The ALLOW value as the kernel stores it: the expiry of a learned entry inside.
fn kernel_value(v: AllowValue, expires: Option<BootNs>) -> AllowValue {
    match expires {
        None => AllowValue { flags: v.flags & !ALLOW_F_LEARNED, expires_ns: 0, ..v },
        Some(t) => AllowValue { flags: v.flags | ALLOW_F_LEARNED, expires_ns: t.0.max(1), ..v },
    }
}

/// The ALLOW value as the agent knows it (expiry apart), and its expiry if learned.
fn agent_value(v: AllowValue) -> (AllowValue, Option<BootNs>) {
    let learned = v.flags & ALLOW_F_LEARNED != 0 || v.expires_ns != 0;
    let plain = AllowValue { flags: v.flags & !ALLOW_F_LEARNED, expires_ns: 0, ..v };
    (plain, learned.then_some(BootNs(v.expires_ns)))
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

fn exists(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

fn is_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)))
}

impl Maps for Dataplane {
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, expires: Option<BootNs>) -> Result<()> {
        if v.flags & ALLOW_F_PROXY != 0 && !self.proxy_entries {
            self.proxy_entry_coming()?;
        }
        let (plen, k) = e.key();
        let v = kernel_value(v, expires);
        if exact(e) && !self.in_trie.contains(e) {
            // One syscall for a new entry (BPF_NOEXIST), a second only to update an existing one.
            let r = match self.allow_exact.insert(k, v, BPF_NOEXIST) {
                Ok(()) => {
                    self.in_exact += 1;
                    Ok(())
                }
                Err(err) if exists(&err) => self.allow_exact.insert(k, v, 0),
                Err(err) => Err(err),
            };
            match r {
                Ok(()) => return Ok(()),
                // The hash is full: the trie takes single addresses too.
                Err(err) if is_full(&err) => {}
                Err(err) => return Err(map_err(map_names::ALLOW_EXACT, format!("insert {e}"))(err)),
            }
        }
        if self.in_trie.is_empty() {
            // The programs look into the trie only once they are told it holds entries.
            self.own_flags |= SETTINGS_F_TRIE;
            self.write_settings()?;
        }
        self.allow.insert(&Key::new(plen, k), v, 0).map_err(map_err(map_names::ALLOW, format!("insert {e}")))?;
        self.in_trie.insert(*e);
        Ok(())
    }

    fn remove_allow(&mut self, e: &AllowEntry) -> Result<()> {
        let (plen, k) = e.key();
        if self.in_trie.remove(e) {
            match self.allow.remove(&Key::new(plen, k)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(map_err(map_names::ALLOW, format!("remove {e}"))(err)),
            }
            if self.in_trie.is_empty() {
                self.own_flags &= !SETTINGS_F_TRIE;
                self.write_settings()?;
            }
        } else if exact(e) {
            match self.allow_exact.remove(&k) {
                Ok(()) => self.in_exact = self.in_exact.saturating_sub(1),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(map_err(map_names::ALLOW_EXACT, format!("remove {e}"))(err)),
            }
        }
        Ok(())
    }

    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<()> {
        let (plen, k) = e.key();
        let key = Key::new(plen, k);
        let v = AllowValue { expires_ns: 0, ..v };
        match self.dests.insert(&key, v, BPF_NOEXIST) {
            Ok(()) => self.in_dests += 1,
            Err(err) if exists(&err) => {
                self.dests.insert(&key, v, 0).map_err(map_err(map_names::DESTS, format!("insert {}", e.net)))?
            }
            Err(err) => return Err(map_err(map_names::DESTS, format!("insert {}", e.net))(err)),
        }
        Ok(())
    }

    fn remove_dest(&mut self, e: &DestEntry) -> Result<()> {
        let (plen, k) = e.key();
        match self.dests.remove(&Key::new(plen, k)) {
            Ok(()) => self.in_dests = self.in_dests.saturating_sub(1),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(err) => return Err(map_err(map_names::DESTS, format!("remove {}", e.net))(err)),
        }
        Ok(())
    }

    fn set_mode(&mut self, policy: PolicyId, mode: Mode) -> Result<()> {
        self.modes.set(policy.get(), mode.raw(), 0).map_err(map_err(map_names::MODES, format!("set {policy}")))
    }

    fn set_workload(&mut self, cgroup: u64, policy: PolicyId) -> Result<()> {
        self.workloads
            .insert(cgroup, WorkloadValue { policy_id: policy, flags: 0 }, 0)
            .map_err(map_err(map_names::WORKLOADS, format!("insert cgroup {cgroup}")))?;
        self.workloads_in_map.insert(cgroup, policy);
        self.bump_workloads_gen()
    }

    fn remove_workload(&mut self, cgroup: u64) -> Result<()> {
        match self.workloads.remove(&cgroup) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::WORKLOADS, format!("remove cgroup {cgroup}"))(e)),
        }
        self.workloads_in_map.remove(&cgroup);
        self.bump_workloads_gen()
    }

    fn set_policy_flags(&mut self, policy: PolicyId, flags: u32) -> Result<()> {
        self.policy_flags.set(policy.get(), flags, 0).map_err(map_err(map_names::POLICY_FLAGS, format!("set {policy}")))
    }

    fn set_settings(&mut self, s: &Settings) -> Result<()> {
        self.agent_settings = Settings { flags: s.flags & !SETTINGS_DATAPLANE_FLAGS, ..*s };
        self.write_settings()
    }

    fn read(&self) -> Result<MapContents> {
        let mut c = MapContents::default();
        let mut put = |e: AllowEntry, v: AllowValue| match agent_value(v) {
            (v, None) => {
                c.allow.insert(e, v);
            }
            (v, Some(t)) => {
                c.learned.insert(e, (v, t));
            }
        };
        for r in self.allow_exact.iter() {
            let (k, v) = r.map_err(map_err(map_names::ALLOW_EXACT, "iterate"))?;
            if let Some(e) =
                AllowEntry::from_key(AllowKey::prefix_len(if k.family == FAMILY_V4 { 32 } else { 128 }), &k)
            {
                put(e, v);
            }
        }
        for r in self.allow.iter() {
            let (k, v) = r.map_err(map_err(map_names::ALLOW, "iterate"))?;
            if let Some(e) = AllowEntry::from_key(k.prefix_len(), &k.data()) {
                put(e, v);
            }
        }
        for r in self.dests.iter() {
            let (k, v) = r.map_err(map_err(map_names::DESTS, "iterate"))?;
            if let Some(e) = DestEntry::from_key(k.prefix_len(), &k.data()) {
                c.dests.insert(e, AllowValue { expires_ns: 0, ..v });
            }
        }
        c.workloads = self.workloads_in_map.clone();
        for i in 0..enforcer_common::MAX_POLICIES {
            let f = self.policy_flags.get(&i, 0).map_err(map_err(map_names::POLICY_FLAGS, "read"))?;
            if let (true, Some(p)) = (f != 0, PolicyId::new(i)) {
                c.policy_flags.insert(p, f);
            }
        }
        for i in 0..enforcer_common::MAX_POLICIES {
            let raw = self.modes.get(&i, 0).map_err(map_err(map_names::MODES, "read"))?;
            if let (Ok(m), Some(p)) = (Mode::try_from(raw), PolicyId::new(i))
                && m != Mode::Unset
            {
                c.modes.insert(p, m);
            }
        }
        Ok(c)
    }

    fn allow_capacity(&self) -> usize {
        (ALLOW_MAX_ENTRIES + ALLOW_EXACT_MAX_ENTRIES) as usize
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub removals: usize,
    pub total: usize,
}

/// The pin layout version recorded in the pin dir, if any.
fn pinned_layout(dir: &PinDir) -> Option<u32> {
    let path = dir.map(map_names::PIN_LAYOUT);
    let data = MapData::from_pin(&path).ok()?;
    let arr: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    arr.get(&0, 0).ok()
}

/// Compare pinned maps with what this build expects. A different (or missing) pin layout version
/// rebuilds every map; otherwise each map whose type, key/value size or capacity differ is rebuilt
/// alone. Links are left pinned: `attach` gives them this build's programs, so enforcement never
/// lapses (the old programs keep the old maps alive until then).
fn check_pinned_maps(dir: &PinDir) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let any_map = MAPS.iter().any(|m| m.pinned && dir.map(m.name).exists());
    let layout = pinned_layout(dir);
    let rebuild_all = any_map && layout != Some(PIN_LAYOUT_VERSION);
    if rebuild_all {
        notes.push(format!(
            "pinned maps in {} have pin layout {}, this build uses {PIN_LAYOUT_VERSION}: rebuilding every map \
             (the pinned links are kept and get this build's programs)",
            dir.path().display(),
            layout.map_or_else(|| "1 or 2 (unversioned)".to_string(), |v| v.to_string()),
        ));
    }
    for m in MAPS.iter().filter(|m| m.pinned) {
        let path = dir.map(m.name);
        if !path.exists() {
            continue;
        }
        let stale = if rebuild_all {
            true
        } else {
            match MapInfo::from_pin(&path) {
                Ok(info)
                    if info.key_size() == m.key_size
                        && info.value_size() == m.value_size
                        && info.max_entries() == m.max_entries
                        && map_type_of(&info) == Some(m.kind.bpf_map_type()) =>
                {
                    false
                }
                Ok(info) => {
                    notes.push(format!(
                        "pinned map {} has key/value/max {}/{}/{}, this build needs {}/{}/{}: rebuilding it",
                        path.display(),
                        info.key_size(),
                        info.value_size(),
                        info.max_entries(),
                        m.key_size,
                        m.value_size,
                        m.max_entries
                    ));
                    true
                }
                Err(e) => {
                    notes.push(format!("pinned map {} unreadable ({e}): rebuilding it", path.display()));
                    true
                }
            }
        };
        if stale {
            fs::remove_file(&path).map_err(|source| DataplaneError::Io { what: "unpinning", path, source })?;
        }
    }
    Ok(notes)
}

fn map_type_of(info: &MapInfo) -> Option<u32> {
    use aya::maps::MapType as T;
    let kind = match info.map_type().ok()? {
        T::Hash => MapKind::Hash,
        T::LruHash => MapKind::LruHash,
        T::LruPerCpuHash => MapKind::LruPerCpuHash,
        T::Array => MapKind::Array,
        T::PerCpuArray => MapKind::PerCpuArray,
        T::LpmTrie => MapKind::LpmTrie,
        T::RingBuf => MapKind::RingBuf,
        T::SkStorage => MapKind::SkStorage,
        _ => return None,
    };
    Some(kind.bpf_map_type())
}

/// Remove every pin enforcer made under `dir` (maps and links). Dropping the last reference to a
/// link detaches its program.
pub fn unpin_all(dir: &Path) -> Result<Vec<PathBuf>> {
    let pins = PinDir::new(dir);
    let mut removed = Vec::new();
    let mut paths: Vec<PathBuf> = MAPS.iter().map(|m| pins.map(m.name)).collect();
    paths.extend(PROGRAMS.iter().map(|p| pins.link(p.name)));
    // TC links are pinned per interface.
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if PinDir::is_tc_link(&e.file_name().to_string_lossy()) {
                paths.push(e.path());
            }
        }
    }
    for p in paths {
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

/// See [`Dataplane::kernel_only_maps`].
pub struct KernelOnlyMaps {
    policy_cache: aya::maps::HashMap<MapData, u64, enforcer_common::PolicyCacheValue>,
    proxy_peers: aya::maps::HashMap<MapData, OrigDest, ProxyDest>,
    proxy_orig: aya::maps::HashMap<MapData, u64, ProxyDest>,
    dns_orig: aya::maps::HashMap<MapData, u64, OrigDest>,
    flow_owner: aya::maps::HashMap<MapData, FlowOwnerKey, u64>,
}

impl KernelOnlyMaps {
    /// Their entries now (one `get_next_key` per entry: ~4 µs each here).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            (map_names::POLICY_CACHE, self.policy_cache.keys().count()),
            (map_names::PROXY_PEERS, self.proxy_peers.keys().count()),
            (map_names::PROXY_ORIG, self.proxy_orig.keys().count()),
            (map_names::DNS_ORIG, self.dns_orig.keys().count()),
            (map_names::FLOW_OWNER, self.flow_owner.keys().count()),
        ]
    }
}

#[cfg(test)]
mod object_tests {
    //! The embedded eBPF object against the table in enforcer-common (cilium's alignchecker
    //! idea): a map or program added on one side only fails here, without a kernel.
    use std::collections::BTreeMap;

    use aya_obj::{Object, ProgramSection};
    use enforcer_common::{MAPS, PROGRAMS, ProgKind};

    fn object() -> Object {
        Object::parse(super::EBPF_OBJECT).expect("the embedded eBPF object parses")
    }

    #[test]
    fn maps_equal_the_table() {
        let obj = object();
        let in_obj: BTreeMap<&str, (u32, u32, u32, u32)> = obj
            .maps
            .iter()
            .filter(|(name, _)| !name.starts_with('.') && !name.starts_with("AYA_LOG"))
            .map(|(name, m)| (name.as_str(), (m.map_type(), m.key_size(), m.value_size(), m.max_entries())))
            .collect();
        let in_table: BTreeMap<&str, (u32, u32, u32, u32)> =
            MAPS.iter().map(|m| (m.name, (m.kind.bpf_map_type(), m.key_size, m.value_size, m.max_entries))).collect();
        assert_eq!(in_obj, in_table, "enforcer-ebpf/src/maps.rs and enforcer_common::MAPS differ");
    }

    #[test]
    fn programs_equal_the_table() {
        let obj = object();
        let in_obj: BTreeMap<&str, ProgKind> = obj
            .programs
            .iter()
            .map(|(name, p)| {
                let kind = match &p.section {
                    ProgramSection::CgroupSockAddr { .. } => ProgKind::CgroupSockAddr,
                    ProgramSection::SockOps => ProgKind::SockOps,
                    ProgramSection::CgroupSkb { .. } => ProgKind::CgroupSkb,
                    ProgramSection::SchedClassifier => ProgKind::SchedClassifier,
                    other => panic!("program {name}: unexpected section {other:?}"),
                };
                (name.as_str(), kind)
            })
            .collect();
        let in_table: BTreeMap<&str, ProgKind> = PROGRAMS.iter().map(|p| (p.name, p.kind)).collect();
        assert_eq!(in_obj, in_table, "enforcer-ebpf/src/main.rs and enforcer_common::PROGRAMS differ");
    }

    #[test]
    fn entry_placement_and_values() {
        use enforcer_common::{ALLOW_F_LEARNED, AllowValue, ServiceId};

        use crate::policy::AllowEntry;
        let e = |net: &str, port| AllowEntry {
            policy_id: enforcer_common::PolicyId::DEFAULT,
            net: net.parse().unwrap(),
            port,
            proto: 6,
        };
        assert!(super::exact(&e("10.0.0.1/32", 80)));
        assert!(super::exact(&e("2001:db8::1/128", 80)));
        assert!(!super::exact(&e("10.0.0.0/24", 80)));
        assert!(!super::exact(&e("10.0.0.1/32", 0)));
        let v = AllowValue::new(ServiceId::new(3).unwrap(), 1);
        let k = super::kernel_value(v, Some(super::BootNs(77)));
        assert_eq!((k.expires_ns, k.flags & ALLOW_F_LEARNED != 0), (77, true));
        assert_eq!(super::agent_value(k), (v, Some(super::BootNs(77))));
        assert_eq!(super::agent_value(super::kernel_value(v, None)), (v, None));
    }
}
