//! The running agent shared by `run` and `daemon`: config -> resolver -> policy -> dataplane,
//! kept in sync as DNS answers change (upkeep), as workloads resolve names (the DNS bridge), as
//! learned entries expire (upkeep) and as registry files change (reload).
//!
//! One file per concern: [`config`] (typed configuration, built once), [`state`] (the map
//! bookkeeping and THE apply path; the lock order is documented there), [`ids`] (stable policy
//! ids), [`dns_bridge`] / [`proxy_bridge`] (what the forwarder and the proxy see of the agent),
//! [`admin`] (metrics, registryz, events for the admin API), [`upkeep`] (the background loop).
//! `run` and `daemon` call methods; every field is private.

mod admin;
mod config;
mod dns_bridge;
mod graph;
mod ids;
mod proxy_bridge;
pub mod state;
mod upkeep;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
pub use config::{AgentConfig, DnsConfig};
use enforcer_common::{
    POLICY_F_DNS_STEER, POLICY_F_UNGOVERNED, PolicyId, SETTINGS_F_DNS_STEER, SETTINGS_F_PROXY, SETTINGS_F_WORKLOADS,
    ServiceId, Settings,
};
pub use state::ApplyStats;
use state::{MapState, Plan};

use crate::{
    config::{Mode, Registry, ServiceEntry},
    dataplane::Dataplane,
    dns,
    events::EventHub,
    load::{self, LoadedConfig},
    policy::{self, Desired, HostIndex, ServiceIds},
    resolver::{HickoryLookup, RefreshConfig, Refresher},
    workload::WorkloadPolicy,
    workloads::Workloads,
};

/// `SO_MARK` on the agent's own upstream sockets (forwarder, proxy); the hooks never steer them.
pub const AGENT_MARK: u32 = 0x0e4f_0001;

/// What the agent enforces right now: an immutable snapshot, swapped whole on every change, so
/// readers (the DNS forwarder, the proxy, the admin API) never wait for a reload.
pub struct View {
    pub cfg: LoadedConfig,
    /// Every policy's services and entries, merged.
    pub desired: Arc<Desired>,
    /// The default policy first, then the workload policies by name.
    pub policies: Vec<PolicyView>,
}

/// One policy as applied.
pub struct PolicyView {
    pub id: PolicyId,
    /// "" for the default policy.
    pub name: String,
    pub mode: Mode,
    /// `None`: the default policy, whose registry is `View::cfg.registry`.
    pub workload: Option<WorkloadPolicy>,
    pub index: HostIndex,
}

impl View {
    pub fn registry<'a>(&'a self, p: &'a PolicyView) -> &'a Registry {
        p.workload.as_ref().map(|w| &w.registry).unwrap_or(&self.cfg.registry)
    }

    pub fn policy(&self, id: PolicyId) -> Option<&PolicyView> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// The ServiceEntry behind a service id, with the policy whose registry holds it.
    pub fn service_entry(&self, id: ServiceId) -> Option<(&PolicyView, &ServiceEntry)> {
        let info = self.desired.service(id)?;
        let p = self.policy(info.policy)?;
        Some((p, self.registry(p).services.get(info.se_index?)?))
    }

    /// The name of the policy that owns a service ("" for the default policy).
    pub fn policy_name(&self, id: ServiceId) -> &str {
        self.desired.service(id).and_then(|i| self.policy(i.policy)).map(|p| p.name.as_str()).unwrap_or("")
    }

    /// Number of hosts indexed across policies.
    pub fn hosts(&self) -> usize {
        self.policies.iter().map(|p| p.index.hosts()).sum()
    }
}

#[derive(Default, Debug)]
pub struct AgentStats {
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

/// What only changes under the control lock: the configuration, the workload policies as
/// given, and the id allocators.
struct Control {
    cfg: LoadedConfig,
    specs: Vec<WorkloadPolicy>,
    policy_ids: ids::PolicyIds,
    service_ids: ServiceIds,
    /// The last applied plan (the cgroup sync re-applies it with new cgroups).
    plan: Plan,
    /// Until the workload policies are first given (`--workloads`, the Kubernetes controller's
    /// first sync), what a previous daemon left for them stays enforced as it is.
    adopted: Option<Adopted>,
}

/// The workload (non-default) part of the kernel maps found at start.
#[derive(Clone, Debug, Default)]
struct Adopted {
    modes: BTreeMap<PolicyId, enforcer_common::Mode>,
    /// Their `POLICY_F_*` as found.
    flags: BTreeMap<PolicyId, u32>,
    allow: BTreeMap<policy::AllowEntry, enforcer_common::AllowValue>,
    /// Every (policy, service) with an entry, learned ones included (kept until the first sync).
    services: BTreeSet<(PolicyId, ServiceId)>,
    workloads: BTreeMap<u64, PolicyId>,
}

struct Inner {
    config: AgentConfig,
    control: tokio::sync::Mutex<Control>,
    maps: Mutex<MapState<Dataplane>>,
    view: RwLock<Arc<View>>,
    refresher: Refresher,
    hub: Arc<EventHub>,
    stats: AgentStats,
    /// cgroup id -> workload name.
    names: Mutex<Option<Workloads>>,
    /// Address -> the name it was learned for (registry view, events).
    learned_names: Mutex<HashMap<IpAddr, String>>,
    /// The one metrics registry: each component registers into it when it starts.
    metrics: crate::metrics::Metrics,
    /// The L7 proxy's metric families (the live view reads its request counters).
    proxy_metrics: std::sync::OnceLock<crate::proxy::ProxyMetrics>,
    /// /readyz: false until the first full sync (Kubernetes).
    ready: Mutex<Option<Arc<AtomicBool>>>,
    /// The DNS forwarder's heartbeat (`DNS_ALIVE`), beaten every second by its own task under
    /// its own lock: a long apply holding the maps lock never makes the forwarder look dead.
    /// `None`: no forwarder, or it stopped.
    heartbeat: Arc<Mutex<Option<crate::dataplane::Heartbeat>>>,
}

/// A cheap handle on the running agent.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

/// The servers `Agent::start` made, for [`crate::serve::Servers`] to run and drain.
pub struct Started {
    pub agent: Agent,
    pub forwarder: Option<dns::Forwarder>,
    pub proxy: Option<crate::proxy::Proxy>,
}

impl Agent {
    /// Validate the config, resolve its names, fill the maps and bind the DNS forwarder (unless
    /// steering is off) and the L7 proxy. `default_dns_port` applies when the config gives none
    /// (0: any free port).
    pub async fn start(
        config: AgentConfig,
        dp: Dataplane,
        cfg: LoadedConfig,
        default_dns_port: u16,
    ) -> anyhow::Result<Started> {
        Self::start_with_workloads(config, dp, cfg, default_dns_port, Vec::new()).await
    }

    /// [`Agent::start`] with the first workload policies in the same first apply: what a
    /// previous daemon left in the maps goes straight to this state (no lapse to the default
    /// policy in between, e.g. on a restart under Kubernetes).
    pub async fn start_with_workloads(
        config: AgentConfig,
        dp: Dataplane,
        cfg: LoadedConfig,
        default_dns_port: u16,
        workloads: Vec<WorkloadPolicy>,
    ) -> anyhow::Result<Started> {
        let lookup =
            HickoryLookup::new(&config.dns.upstreams, config.dns.timeout).context("setting up the DNS resolver")?;
        let refresher = Refresher::new(
            RefreshConfig {
                floor: config.dns.ttl_floor,
                ceiling: config.dns.ttl_ceiling,
                change_grace: config.dns.grace,
                failure_grace: config.dns.failure_grace,
                ..RefreshConfig::default()
            },
            Arc::new(lookup),
        );
        let maps = MapState::adopt(dp).context("reading the kernel maps")?;
        let adopted = Adopted {
            modes: (0..enforcer_common::MAX_POLICIES)
                .filter_map(PolicyId::new)
                .filter(|p| !p.is_default())
                .filter_map(|p| Some((p, maps.mode(p)?)))
                .collect(),
            flags: (0..enforcer_common::MAX_POLICIES)
                .filter_map(PolicyId::new)
                .filter(|p| !p.is_default() && maps.policy_flags(*p) != 0)
                .map(|p| (p, maps.policy_flags(p)))
                .collect(),
            allow: maps
                .allow()
                .in_map()
                .filter(|(k, _)| !k.policy_id.is_default() && !maps.allow().learned().contains_key(k))
                .map(|(k, v)| (*k, *v))
                .collect(),
            services: maps.allow().in_map().map(|(k, v)| (k.policy_id, v.service_id)).collect(),
            workloads: maps.workloads().clone(),
        };
        let given = !workloads.is_empty();
        let mut control = Control {
            cfg,
            specs: workloads,
            policy_ids: Default::default(),
            service_ids: Default::default(),
            plan: Plan::default(),
            // Workload policies given at start replace what a previous daemon left; none given:
            // it stays until they are.
            adopted: (!given).then_some(adopted),
        };
        // Each workload keeps the policy id its cgroups already have in the kernel.
        for (cg, name) in workload_cgroups(&control.specs) {
            if let Some(id) = maps.workloads().get(&cg) {
                control.policy_ids.prefer(&name, *id);
            }
        }
        refresher.set_names(&all_names(&control.cfg, &control.specs)).await;
        let cgroups = workload_cgroups(&control.specs);
        let (plan, view) = compile_all(&mut control, &refresher.snapshot(), &cgroups, config.ungoverned_default)?;
        let inner = Arc::new(Inner {
            config,
            control: tokio::sync::Mutex::new(control),
            maps: Mutex::new(maps),
            view: RwLock::new(Arc::new(view)),
            refresher,
            hub: Arc::new(EventHub::new(1000)),
            stats: AgentStats::default(),
            names: Mutex::default(),
            learned_names: Mutex::default(),
            metrics: crate::metrics::Metrics::new(),
            proxy_metrics: std::sync::OnceLock::new(),
            ready: Mutex::default(),
            heartbeat: Arc::default(),
        });
        let agent = Agent { inner };
        agent.register_own_metrics();
        agent.hub().note_mode(&agent.mode().to_string());
        {
            let mut c = agent.inner.control.lock().await;
            agent.apply_plan(&mut c, plan)?;
        }

        let forwarder = if !agent.inner.config.dns.steer {
            None
        } else {
            let port = agent.inner.config.dns.port.unwrap_or(default_dns_port);
            match dns_bridge::start_forwarder(&agent, port).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("DNS forwarder unavailable, workloads' DNS is not steered: {e:#}");
                    None
                }
            }
        };
        let proxy = match proxy_bridge::start_proxy(&agent).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("L7 proxy unavailable, DestinationRule TLS origination and --sni-check are off: {e:#}");
                None
            }
        };
        if forwarder.is_none() {
            let v = agent.view();
            for se in &v.cfg.registry.services {
                for h in se.hosts.iter().filter(|h| h.is_wildcard()) {
                    if se.addresses.is_empty() && se.endpoints.is_empty() {
                        tracing::warn!(
                            "{}/{}: wildcard host {h} has no addresses; without DNS steering its addresses cannot be learned, so connections to it are denied",
                            se.namespace,
                            se.name
                        );
                    }
                }
            }
        }
        Ok(Started { agent, forwarder, proxy })
    }

    /// `run` gives the command its own resolver view (`dns::isolate`; off with
    /// `--no-dns-isolation`).
    pub fn dns_isolation(&self) -> bool {
        self.inner.config.dns.isolation
    }

    /// The current snapshot.
    pub fn view(&self) -> Arc<View> {
        self.inner.view.read().expect("view lock").clone()
    }

    pub fn desired(&self) -> Arc<Desired> {
        self.view().desired.clone()
    }

    pub fn mode(&self) -> Mode {
        self.view().cfg.mode
    }

    pub fn hub(&self) -> &Arc<EventHub> {
        &self.inner.hub
    }

    pub fn stats(&self) -> &AgentStats {
        &self.inner.stats
    }

    /// Run `f` on the dataplane (attach, counters, events) under the maps lock.
    pub fn with_dataplane<T>(&self, f: impl FnOnce(&mut Dataplane) -> T) -> T {
        f(self.inner.maps.lock().expect("maps lock").maps_mut())
    }

    /// ALLOW entries the kernel holds now (registry + learned).
    pub fn allow_entries(&self) -> usize {
        self.inner.maps.lock().expect("maps lock").allow().len()
    }

    /// Name the cgroups (`run`: the command; `daemon`: the cgroup tree and workloads).
    pub fn set_names(&self, w: Workloads) {
        *self.inner.names.lock().expect("names lock") = Some(w);
    }

    /// The workload name of a cgroup id.
    pub fn workload(&self, cgroup_id: u64) -> String {
        match self.inner.names.lock().expect("names lock").as_mut() {
            Some(w) => w.name(cgroup_id),
            None => crate::workloads::UNKNOWN.into(),
        }
    }

    /// What `/readyz` reports (e.g. the Kubernetes controller's first sync).
    pub fn set_ready_flag(&self, flag: Arc<AtomicBool>) {
        *self.inner.ready.lock().expect("ready lock") = Some(flag);
    }

    /// Stop steering DNS and connections to this agent's forwarder and proxy (they are going
    /// away). Enforcement stays; names are not learned until a forwarder is back.
    pub fn stop_steering(&self) -> anyhow::Result<()> {
        if let Some(mut hb) = self.inner.heartbeat.lock().expect("heartbeat lock").take() {
            hb.stop()?;
        }
        self.update_settings(|s| s.flags &= !(SETTINGS_F_DNS_STEER | SETTINGS_F_PROXY))
    }

    /// The forwarder goes away (the agent exits): its heartbeat stops, so the kernel applies
    /// `--dns-fallback` at once (as it does within the heartbeat timeout when the agent is
    /// killed), and connections are no longer steered to this agent's proxy. Enforcement stays.
    pub fn forwarder_stopping(&self) -> anyhow::Result<()> {
        if let Some(mut hb) = self.inner.heartbeat.lock().expect("heartbeat lock").take() {
            hb.stop()?;
        }
        self.update_settings(|s| s.flags &= !SETTINGS_F_PROXY)
    }

    fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> anyhow::Result<()> {
        Ok(self.inner.maps.lock().expect("maps lock").update_settings(f)?)
    }

    /// Replace the per-workload policies (from `--workloads` or Kubernetes): resolve their
    /// names, fill their entries and modes, then map their cgroups to them — one apply.
    pub async fn set_workload_policies(&self, policies: Vec<WorkloadPolicy>) -> anyhow::Result<ApplyStats> {
        let mut c = self.inner.control.lock().await;
        let names: BTreeSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        anyhow::ensure!(names.len() == policies.len(), "workload names must be unique");
        self.inner.refresher.set_names(&all_names(&c.cfg, &policies)).await;
        // Give each workload the policy id its cgroups already have in the kernel, if any.
        let kernel = self.maps().workloads().clone();
        let cgroups = workload_cgroups(&policies);
        for (cg, name) in &cgroups {
            if let Some(id) = kernel.get(cg) {
                c.policy_ids.prefer(name, *id);
            }
        }
        c.specs = policies;
        c.adopted = None;
        self.recompute_locked(&mut c)
    }

    /// Recompute from the current config and the resolver's current answers, and apply.
    pub async fn recompute(&self) -> anyhow::Result<ApplyStats> {
        let mut c = self.inner.control.lock().await;
        self.recompute_locked(&mut c)
    }

    fn recompute_locked(&self, c: &mut Control) -> anyhow::Result<ApplyStats> {
        // Compiling and writing a big registry takes a while: off the async workers, so the
        // forwarder, the proxy and the admin API keep answering meanwhile.
        blocking(|| {
            let cgroups = workload_cgroups(&c.specs);
            let (plan, view) =
                compile_all(c, &self.inner.refresher.snapshot(), &cgroups, self.inner.config.ungoverned_default)?;
            let stats = self.apply_plan(c, plan)?;
            self.publish(view);
            self.set_cgroup_names(&c.specs);
            Ok(stats)
        })
    }

    /// Reload the registry files and flags: validated fully first; on error nothing changes.
    /// Serialized with every other change (the upkeep cannot apply a stale view afterwards).
    pub async fn reload(&self) -> anyhow::Result<(LoadedConfig, ApplyStats)> {
        let cfg = match blocking(|| load::load_config(&self.inner.config)) {
            Ok(c) => c,
            Err(e) => {
                self.inner.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.context("reload rejected, the last good registry stays enforced"));
            }
        };
        let mut c = self.inner.control.lock().await;
        self.inner.refresher.set_names(&all_names(&cfg, &c.specs)).await;
        let previous = std::mem::replace(&mut c.cfg, cfg.clone());
        match self.recompute_locked(&mut c) {
            Ok(stats) => {
                self.inner.stats.reloads.fetch_add(1, Ordering::Relaxed);
                Ok((cfg, stats))
            }
            Err(e) => {
                c.cfg = previous;
                self.inner.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                Err(e.context("reload could not be applied; the last good registry stays enforced"))
            }
        }
    }

    /// Map the workload policies' cgroups (globs expanded now) to their policy ids. Called after
    /// each change and every second by the upkeep (restarted services, new pods).
    pub async fn sync_workload_cgroups(&self) -> anyhow::Result<()> {
        let mut c = self.inner.control.lock().await;
        let want = workload_cgroups(&c.specs);
        let mapped: BTreeMap<u64, PolicyId> =
            want.iter().filter_map(|(cg, name)| Some((*cg, c.policy_ids.get(name)?))).collect();
        if mapped == c.plan.workloads {
            return Ok(());
        }
        let mut plan = c.plan.clone();
        plan.workloads = mapped;
        self.apply_plan(&mut c, plan)?;
        self.set_cgroup_names(&c.specs);
        Ok(())
    }

    /// THE apply: every change goes through here (see [`state`]).
    fn apply_plan(&self, c: &mut Control, plan: Plan) -> anyhow::Result<ApplyStats> {
        let on = !plan.workloads.is_empty();
        let stats = {
            let mut maps = self.inner.maps.lock().expect("maps lock");
            // Per-workload lookup on before any cgroup points at a workload policy, off after.
            if on {
                maps.update_settings(|s| s.flags |= SETTINGS_F_WORKLOADS)?;
            }
            let stats = maps.apply(&plan)?;
            if !on {
                maps.update_settings(|s| s.flags &= !SETTINGS_F_WORKLOADS)?;
            }
            stats
        };
        c.policy_ids.released();
        c.service_ids.end_generation();
        c.plan = plan;
        Ok(stats)
    }

    fn publish(&self, view: View) {
        let mode = view.cfg.mode.to_string();
        *self.inner.view.write().expect("view lock") = Arc::new(view);
        self.inner.hub.note_mode(&mode);
    }

    fn set_cgroup_names(&self, specs: &[WorkloadPolicy]) {
        // A cgroup's own workload identity (Kubernetes: the pod's owner), else the policy.
        let (names, identities) = Workloads::overrides_of(specs);
        if let Some(w) = self.inner.names.lock().expect("names lock").as_mut() {
            w.set_overrides(names, identities);
        }
    }

    /// The background upkeep loop (never ends; run it with [`crate::serve::Servers::background`]).
    pub fn upkeep(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        upkeep::run(self.clone())
    }

    /// Resolver state for views.
    pub fn refresher(&self) -> &Refresher {
        &self.inner.refresher
    }

    /// Address -> the name it was learned for.
    pub fn learned_names(&self) -> HashMap<IpAddr, String> {
        self.inner.learned_names.lock().expect("learned names lock").clone()
    }

    /// Learned ALLOW entries with their expiry, and the DESTS count.
    pub fn learned_entries(&self) -> BTreeMap<policy::AllowEntry, (enforcer_common::AllowValue, std::time::Instant)> {
        self.inner.maps.lock().expect("maps lock").allow().learned().clone()
    }

    /// (ALLOW entries as the agent believes the kernel holds them, DESTS count).
    pub fn map_entries(&self) -> (Vec<(policy::AllowEntry, enforcer_common::AllowValue)>, usize) {
        let m = self.inner.maps.lock().expect("maps lock");
        (m.allow().in_map().map(|(k, v)| (*k, *v)).collect(), m.dests().len())
    }
}

/// Run CPU-heavy synchronous work from async code without stalling the runtime's other tasks
/// (`block_in_place` on the multi-threaded runtime; plain call elsewhere, e.g. in unit tests).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// cgroup id -> workload name, for every existing cgroup the specs' globs match now.
fn workload_cgroups(specs: &[WorkloadPolicy]) -> BTreeMap<u64, String> {
    let mut want = BTreeMap::new();
    for w in specs {
        for dir in crate::workload::expand_cgroups(&w.cgroups) {
            if let Ok(id) = crate::cgroup::cgroup_id(&dir) {
                want.insert(id, w.name.clone());
            }
        }
    }
    want
}

/// Compile the default policy and every workload policy into one plan and the view that goes
/// with it. Policy ids come from the allocator by name; service ids by (scope, namespace/name).
fn compile_all(
    c: &mut Control,
    snapshot: &BTreeMap<String, crate::resolver::ResolvedName>,
    cgroups: &BTreeMap<u64, String>,
    ungoverned_default: bool,
) -> anyhow::Result<(Plan, View)> {
    let ids = c.policy_ids.assign(c.specs.iter().map(|w| w.name.as_str()))?;
    let (mut desired, index) =
        load::compile_policy(&c.cfg, &c.cfg.registry, PolicyId::DEFAULT, "", snapshot, &mut c.service_ids);
    let mut plan = Plan::default();
    plan.services.extend(desired.services.iter().map(|s| (PolicyId::DEFAULT, s.id)));
    plan.modes.insert(PolicyId::DEFAULT, load::kernel_mode(c.cfg.mode));
    // Governed policies are DNS-steered (while steering is on and the forwarder alive); the
    // default one only when it governs (not Kubernetes' ungoverned pods).
    plan.flags.insert(PolicyId::DEFAULT, if ungoverned_default { POLICY_F_UNGOVERNED } else { POLICY_F_DNS_STEER });
    let mut policies =
        vec![PolicyView { id: PolicyId::DEFAULT, name: String::new(), mode: c.cfg.mode, workload: None, index }];
    for w in &c.specs {
        let id = ids[&w.name];
        let scope = format!("{}\u{0}", w.name);
        let (d, index) = load::compile_policy(&c.cfg, &w.registry, id, &scope, snapshot, &mut c.service_ids);
        plan.services.extend(d.services.iter().map(|s| (id, s.id)));
        desired.merge(d);
        plan.modes.insert(id, load::kernel_mode(w.mode));
        plan.flags.insert(id, POLICY_F_DNS_STEER);
        policies.push(PolicyView { id, name: w.name.clone(), mode: w.mode, workload: Some(w.clone()), index });
    }
    plan.allow = desired.allow.clone();
    plan.dests = desired.dests.clone();
    plan.workloads = cgroups.iter().filter_map(|(cg, name)| Some((*cg, *ids.get(name)?))).collect();
    if let Some(a) = &c.adopted {
        // Not told about workloads yet: keep what the previous daemon enforced for them.
        plan.modes.extend(a.modes.iter().map(|(p, m)| (*p, *m)));
        plan.flags.extend(a.modes.keys().map(|p| (*p, a.flags.get(p).copied().unwrap_or(POLICY_F_DNS_STEER))));
        plan.allow.extend(a.allow.iter().map(|(k, v)| (*k, *v)));
        plan.workloads.extend(a.workloads.iter().map(|(cg, p)| (*cg, *p)));
        plan.services.extend(a.services.iter().copied());
    }
    let view = View { cfg: c.cfg.clone(), desired: Arc::new(desired), policies };
    Ok((plan, view))
}

/// Every name the default and workload policies need resolved.
fn all_names(cfg: &LoadedConfig, workloads: &[WorkloadPolicy]) -> BTreeSet<String> {
    let mut names = policy::names_to_resolve(&cfg.registry, &cfg.cli);
    for w in workloads {
        names.extend(policy::names_to_resolve(&w.registry, &cfg.cli));
    }
    names
}

/// Names the current config needs resolved (for views).
pub fn tracked_names(cfg: &LoadedConfig) -> BTreeSet<String> {
    policy::names_to_resolve(&cfg.registry, &cfg.cli)
}

/// Shared with the bridges.
impl Agent {
    fn maps(&self) -> std::sync::MutexGuard<'_, MapState<Dataplane>> {
        self.inner.maps.lock().expect("maps lock")
    }

    /// The maps if nobody holds them (None: an apply or sweep does; wait with [`Agent::maps`]).
    fn try_maps(&self) -> Option<std::sync::MutexGuard<'_, MapState<Dataplane>>> {
        self.inner.maps.try_lock().ok()
    }

    fn remember_names(&self, name: &str, addrs: &[IpAddr]) {
        let mut names = self.inner.learned_names.lock().expect("learned names lock");
        if names.len() > 100_000 {
            names.clear();
        }
        for a in addrs {
            names.insert(*a, name.to_string());
        }
    }
}
