//! The running agent shared by `run` and `daemon`: config -> resolver -> policy -> dataplane, kept
//! in sync as DNS answers change (refresher), as workloads resolve names (DNS forwarder), as
//! learned entries expire (sweeper) and as registry files change (watcher / SIGHUP).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{PolicyId, SETTINGS_F_DNS_STEER, ServiceId, Settings};

use crate::{
    cli::{PolicyArgs, UnknownNamesArg},
    config::Mode,
    dataplane::{ApplyStats, Dataplane},
    dns,
    load::{self, LoadedConfig},
    policy::{self, AllowEntry, Desired, DestEntry, HostIndex, normalize},
    resolver::{HickoryLookup, RefreshConfig, Refresher},
    workload::WorkloadPolicy,
};

/// `SO_MARK` on the forwarder's upstream sockets; the hooks never steer sockets carrying it.
pub const AGENT_MARK: u32 = 0x0e4f_0001;

/// What the agent enforces right now.
pub struct View {
    pub cfg: LoadedConfig,
    /// All policies merged (default + workloads); service ids are disjoint per policy.
    pub desired: Arc<Desired>,
    /// The default policy's names.
    pub index: HostIndex,
    /// Per-workload policies (policy ids 1..).
    pub workloads: Vec<PolicyState>,
}

/// One per-workload policy as applied.
pub struct PolicyState {
    pub id: PolicyId,
    pub policy: WorkloadPolicy,
    pub index: HostIndex,
}

impl View {
    /// The ServiceEntry behind a service id, in whichever policy it belongs to.
    pub fn service_entry(&self, id: ServiceId) -> Option<&crate::config::ServiceEntry> {
        let policy = policy::policy_of_service(id);
        let local = (id.get() & 0xffff).checked_sub(1)? as usize;
        if policy.is_default() {
            self.cfg.registry.services.get(local)
        } else {
            self.workloads.iter().find(|w| w.id == policy)?.policy.registry.services.get(local)
        }
    }

    /// The policy name that owns a service id ("" for the default policy).
    pub fn policy_name(&self, id: ServiceId) -> &str {
        let policy = policy::policy_of_service(id);
        self.workloads.iter().find(|w| w.id == policy).map(|w| w.policy.name.as_str()).unwrap_or("")
    }
}

/// Compile the default policy and every workload policy and merge them.
fn compile_all(
    cfg: &LoadedConfig,
    workloads: &[WorkloadPolicy],
    snapshot: &std::collections::BTreeMap<String, crate::resolver::ResolvedName>,
) -> (Desired, HostIndex, Vec<PolicyState>) {
    let mut desired = load::compile(cfg, snapshot);
    let index = HostIndex::build(&cfg.registry, &cfg.cli, &desired);
    let mut states = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let id = PolicyId::new(i as u32 + 1).expect("checked against MAX_POLICIES");
        let d = load::compile_policy(cfg, &w.registry, id, snapshot);
        let index = HostIndex::build(&w.registry, &cfg.cli, &d);
        desired.merge(d);
        states.push(PolicyState { id, policy: w.clone(), index });
    }
    (desired, index, states)
}

/// Every name the default and workload policies need resolved.
fn all_names(cfg: &LoadedConfig, workloads: &[WorkloadPolicy]) -> BTreeSet<String> {
    let mut names = policy::names_to_resolve(&cfg.registry, &cfg.cli);
    for w in workloads {
        names.extend(policy::names_to_resolve(&w.registry, &cfg.cli));
    }
    names
}

#[derive(Default, Debug)]
pub struct AgentStats {
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

#[derive(Clone)]
pub struct Agent {
    pub dp: Arc<Mutex<Dataplane>>,
    pub view: Arc<RwLock<View>>,
    pub refresher: Refresher,
    pub stats: Arc<AgentStats>,
    pub dns_stats: Option<Arc<dns::Stats>>,
    /// Address -> the name it was learned for (for the registry view).
    pub learned_names: Arc<Mutex<std::collections::HashMap<IpAddr, String>>>,
    /// Recent denied/audited connections for `/debug/events` and followers.
    pub hub: Arc<crate::events::EventHub>,
    /// cgroup id -> workload name (set once the cgroup is known).
    pub workloads: Arc<Mutex<Option<crate::workloads::Workloads>>>,
    /// The SETTINGS map's content (DNS forwarder, proxy, per-workload lookup).
    pub settings: Arc<Mutex<Settings>>,
    /// Per-workload policies as given (patterns not yet expanded), and the cgroup map applied.
    workload_specs: Arc<Mutex<Vec<WorkloadPolicy>>>,
    /// The L7 proxy's metric families (when the proxy runs).
    pub proxy_metrics: Option<crate::proxy::ProxyMetrics>,
    /// /readyz: false until the first full sync (Kubernetes).
    ready: Arc<Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>>,
    workload_cgroups: Arc<Mutex<std::collections::BTreeMap<u64, PolicyId>>>,
    args: Arc<PolicyArgs>,
}

impl Agent {
    /// Validate the config, resolve its names, fill the maps and start the DNS forwarder (unless
    /// steering is off). The returned forwarder must be run by the caller.
    /// `default_dns_port` applies when `--dns-port` is not given (0: any free port).
    pub async fn start(
        args: &PolicyArgs,
        dp: Dataplane,
        cfg: LoadedConfig,
        default_dns_port: u16,
    ) -> anyhow::Result<(Agent, Option<dns::Forwarder>, Option<crate::proxy::Proxy>)> {
        let lookup =
            HickoryLookup::new(&args.dns.upstreams, args.dns.dns_timeout).context("setting up the DNS resolver")?;
        let refresher = Refresher::new(
            RefreshConfig {
                floor: args.dns.dns_ttl_floor,
                ceiling: args.dns.dns_ttl_ceiling,
                change_grace: args.dns.dns_grace,
                failure_grace: args.dns.dns_failure_grace,
                ..RefreshConfig::default()
            },
            Arc::new(lookup),
        );
        refresher.set_names(&policy::names_to_resolve(&cfg.registry, &cfg.cli)).await;
        let desired = load::compile(&cfg, &refresher.snapshot());
        let index = HostIndex::build(&cfg.registry, &cfg.cli, &desired);
        let dp = Arc::new(Mutex::new(dp));
        apply_ordered(&mut dp.lock().expect("dataplane lock"), &desired, cfg.mode)?;
        let view = Arc::new(RwLock::new(View { cfg, desired: Arc::new(desired), index, workloads: Vec::new() }));
        let mut agent = Agent {
            dp,
            view,
            refresher,
            stats: Arc::default(),
            dns_stats: None,
            learned_names: Arc::default(),
            hub: Arc::new(crate::events::EventHub::new(1000)),
            workloads: Arc::default(),
            settings: Arc::default(),
            workload_specs: Arc::default(),
            workload_cgroups: Arc::default(),
            proxy_metrics: None,
            ready: Arc::default(),
            args: Arc::new(args.clone()),
        };

        let forwarder = if args.dns.no_dns_steer {
            None
        } else {
            match agent.start_forwarder(args.dns.dns_port.unwrap_or(default_dns_port)).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("DNS forwarder unavailable, workloads' DNS is not steered: {e:#}");
                    None
                }
            }
        };
        let proxy = match agent.start_proxy().await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("L7 proxy unavailable, DestinationRule TLS origination and --sni-check are off: {e:#}");
                None
            }
        };
        if forwarder.is_none() {
            let v = agent.view.read().expect("view lock");
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
        Ok((agent, forwarder, proxy))
    }

    /// Start the L7 proxy on 127.0.0.1 and point the kernel's proxy steering at it.
    async fn start_proxy(&mut self) -> anyhow::Result<crate::proxy::Proxy> {
        let policy = Arc::new(AgentProxy {
            view: self.view.clone(),
            dp: self.dp.clone(),
            hub: self.hub.clone(),
            workloads: self.workloads.clone(),
            by_client: Default::default(),
            by_original: Default::default(),
        });
        let p = crate::proxy::Proxy::bind(
            crate::proxy::ProxyConfig {
                listen: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
                upstream_mark: Some(AGENT_MARK),
            },
            policy,
        )
        .await
        .context("binding the L7 proxy")?;
        let port = p.local_addr().port();
        self.update_settings(|s| {
            s.local_v4 = [127, 0, 0, 1];
            s.proxy_port = port;
            s.agent_mark = AGENT_MARK;
            s.flags |= enforcer_common::SETTINGS_F_PROXY;
        })?;
        self.proxy_metrics = Some(p.metrics());
        tracing::debug!(addr = %p.local_addr(), "L7 proxy listening");
        Ok(p)
    }

    async fn start_forwarder(&mut self, port: u16) -> anyhow::Result<dns::Forwarder> {
        let upstreams: Vec<SocketAddr> = if self.args.dns.upstreams.is_empty() {
            self.view.read().expect("view lock").cfg.dns_servers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
        } else {
            self.args.dns.upstreams.clone()
        };
        anyhow::ensure!(!upstreams.is_empty(), "no upstream resolver (none in /etc/resolv.conf; pass --dns-upstream)");
        let cfg = dns::Config {
            listen: vec![
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port),
            ],
            upstreams,
            timeout: self.args.dns.dns_timeout,
            unknown_names: match self.args.dns.unknown_names {
                UnknownNamesArg::Answer => dns::UnknownNames::AnswerNoAllow,
                UnknownNamesArg::Nxdomain => dns::UnknownNames::Nxdomain,
                UnknownNamesArg::Refused => dns::UnknownNames::Refused,
            },
            min_ttl: self.args.dns.dns_ttl_floor,
            grace: self.args.dns.dns_grace,
            max_ttl: self.args.dns.dns_ttl_ceiling,
            upstream_mark: Some(AGENT_MARK),
        };
        let policy = Arc::new(AgentDns {
            view: self.view.clone(),
            dp: self.dp.clone(),
            names: self.learned_names.clone(),
            hub: self.hub.clone(),
        });
        let fwd = dns::Forwarder::bind(cfg, policy).await.context("binding the DNS forwarder")?;
        let mut settings = Settings::default();
        for a in fwd.local_addrs() {
            settings.dns_port = a.port();
            match a.ip() {
                IpAddr::V4(v4) => settings.local_v4 = v4.octets(),
                IpAddr::V6(v6) => settings.local_v6 = v6.octets(),
            }
        }
        anyhow::ensure!(settings.local_v4 != [0; 4], "the forwarder has no IPv4 listener");
        self.update_settings(|s| {
            s.local_v4 = settings.local_v4;
            s.local_v6 = settings.local_v6;
            s.dns_port = settings.dns_port;
            s.agent_mark = AGENT_MARK;
            s.flags |= SETTINGS_F_DNS_STEER;
        })?;
        self.dns_stats = Some(fwd.stats());
        tracing::debug!(addrs = ?fwd.local_addrs(), "DNS forwarder listening; port-53 traffic is steered to it");
        Ok(fwd)
    }

    /// What `/readyz` reports (e.g. the Kubernetes controller's first sync).
    pub fn set_ready_flag(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        *self.ready.lock().expect("ready lock") = Some(flag);
    }

    /// Stop steering DNS to this agent's forwarder (it is going away). Enforcement stays; names
    /// are no longer learned until a forwarder is back.
    pub fn stop_steering(&self) -> anyhow::Result<()> {
        self.update_settings(|s| s.flags &= !(SETTINGS_F_DNS_STEER | enforcer_common::SETTINGS_F_PROXY))
    }

    /// Change the SETTINGS map entry.
    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> anyhow::Result<()> {
        let mut s = self.settings.lock().expect("settings lock");
        f(&mut s);
        self.dp.lock().expect("dataplane lock").set_settings(&s)?;
        Ok(())
    }

    /// Replace the per-workload policies (from `--workloads` or Kubernetes): resolve their
    /// names, fill their entries and modes, then map their cgroups to them.
    pub async fn set_workload_policies(&self, policies: Vec<WorkloadPolicy>) -> anyhow::Result<ApplyStats> {
        anyhow::ensure!(
            policies.len() < enforcer_common::MAX_POLICIES as usize,
            "{} workload policies exceed the {} the kernel map holds",
            policies.len(),
            enforcer_common::MAX_POLICIES - 1
        );
        *self.workload_specs.lock().expect("specs lock") = policies.clone();
        let cfg = self.view.read().expect("view lock").cfg.clone();
        self.refresher.set_names(&all_names(&cfg, &policies)).await;
        let stats = self.recompute()?;
        self.sync_workload_cgroups()?;
        Ok(stats)
    }

    /// Map the workload policies' cgroups (globs expanded now) to their policy ids in the kernel.
    /// Called after each change and every second (new cgroups: restarted services, new pods).
    pub fn sync_workload_cgroups(&self) -> anyhow::Result<()> {
        let specs = self.workload_specs.lock().expect("specs lock").clone();
        let mut want = std::collections::BTreeMap::new();
        let mut names = Vec::new();
        for (i, w) in specs.iter().enumerate() {
            for dir in crate::workload::expand_cgroups(&w.cgroups) {
                if let Ok(id) = crate::cgroup::cgroup_id(&dir) {
                    want.insert(id, PolicyId::new(i as u32 + 1).expect("checked against MAX_POLICIES"));
                    names.push((dir, w.name.clone()));
                }
            }
        }
        let mut cur = self.workload_cgroups.lock().expect("cgroups lock");
        if *cur == want {
            return Ok(());
        }
        self.dp.lock().expect("dataplane lock").set_workloads(&want)?;
        let on = !want.is_empty();
        *cur = want;
        drop(cur);
        if let Some(w) = self.workloads.lock().expect("workloads lock").as_mut() {
            w.set_overrides(names);
        }
        self.update_settings(|s| {
            if on {
                s.flags |= enforcer_common::SETTINGS_F_WORKLOADS;
            } else {
                s.flags &= !enforcer_common::SETTINGS_F_WORKLOADS;
            }
        })
    }

    pub fn desired(&self) -> Arc<Desired> {
        self.view.read().expect("view lock").desired.clone()
    }

    pub fn mode(&self) -> Mode {
        self.view.read().expect("view lock").cfg.mode
    }

    /// Recompute from the current config and the resolver's current answers, and apply the diff.
    pub fn recompute(&self) -> anyhow::Result<ApplyStats> {
        let cfg = self.view.read().expect("view lock").cfg.clone();
        let specs = self.workload_specs.lock().expect("specs lock").clone();
        let (desired, index, states) = compile_all(&cfg, &specs, &self.refresher.snapshot());
        let stats = {
            let mut dp = self.dp.lock().expect("dataplane lock");
            let s = dp.apply(&desired)?;
            for st in &states {
                dp.set_mode(st.id, load::kernel_mode(st.policy.mode))?;
            }
            s
        };
        let mut v = self.view.write().expect("view lock");
        v.desired = Arc::new(desired);
        v.index = index;
        v.workloads = states;
        Ok(stats)
    }

    /// Reload the registry files and flags: validated fully first; on error nothing changes.
    pub async fn reload(&self) -> anyhow::Result<(LoadedConfig, ApplyStats)> {
        let cfg = match load::load_config(&self.args) {
            Ok(c) => c,
            Err(e) => {
                self.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.context("reload rejected, the last good registry stays enforced"));
            }
        };
        let specs = self.workload_specs.lock().expect("specs lock").clone();
        self.refresher.set_names(&all_names(&cfg, &specs)).await;
        let (desired, index, states) = compile_all(&cfg, &specs, &self.refresher.snapshot());
        let stats = {
            let mut dp = self.dp.lock().expect("dataplane lock");
            apply_ordered(&mut dp, &desired, cfg.mode).inspect_err(|_| {
                self.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
            })?
        };
        {
            let mut v = self.view.write().expect("view lock");
            v.cfg = cfg.clone();
            v.desired = Arc::new(desired);
            v.index = index;
            v.workloads = states;
        }
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        Ok((cfg, stats))
    }

    /// Background upkeep until the returned handle is dropped/aborted: re-apply when resolved
    /// addresses change, expire learned entries every second.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move {
            let mut changes = agent.refresher.subscribe();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() { return; }
                        // Debounce a burst of refreshes into one apply.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        changes.borrow_and_update();
                        match agent.recompute() {
                            Ok(s) if s.upserts + s.removals > 0 => tracing::info!(added = s.upserts, removed = s.removals, "resolved addresses changed; maps updated"),
                            Ok(_) => {}
                            Err(e) => tracing::error!("applying resolved addresses failed: {e:#}"),
                        }
                    }
                    _ = tick.tick() => {
                        if let Err(e) = agent.sync_workload_cgroups() {
                            tracing::error!("mapping workload cgroups failed: {e:#}");
                        }
                        let r = agent.dp.lock().expect("dataplane lock").sweep(Instant::now());
                        match r {
                            Ok(n) if n > 0 => tracing::debug!(expired = n, "learned DNS entries expired"),
                            Ok(_) => {}
                            Err(e) => tracing::error!("expiring learned entries failed: {e:#}"),
                        }
                    }
                }
            }
        })
    }
}

/// One switch that stops the agent's servers (DNS forwarder, proxy, admin listener).
pub struct Shutdown {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { tx: tokio::sync::watch::channel(false).0 }
    }
}

impl Shutdown {
    /// A future that completes once `trigger` is called.
    pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

/// Run the forwarder and proxy `Agent::start` returned until `shutdown`; returns whether each
/// runs (DNS steering, proxy steering), which decides the hooks to attach.
pub fn spawn_servers(
    forwarder: Option<dns::Forwarder>,
    proxy: Option<crate::proxy::Proxy>,
    shutdown: &Shutdown,
) -> (bool, bool) {
    let (steering, proxying) = (forwarder.is_some(), proxy.is_some());
    if let Some(f) = forwarder {
        tokio::spawn(f.run(shutdown.signal()));
    }
    if let Some(p) = proxy {
        tokio::spawn(p.run(shutdown.signal()));
    }
    (steering, proxying)
}

/// Order the steps so no destination allowed before and after is ever briefly denied: a more
/// permissive mode goes in before the entries change, a stricter one after.
pub fn apply_ordered(dp: &mut Dataplane, desired: &Desired, mode: Mode) -> anyhow::Result<ApplyStats> {
    let kmode = load::kernel_mode(mode);
    if mode != Mode::RegistryOnly {
        dp.set_mode(PolicyId::DEFAULT, kmode)?;
        Ok(dp.apply(desired)?)
    } else {
        let s = dp.apply(desired)?;
        dp.set_mode(PolicyId::DEFAULT, kmode)?;
        Ok(s)
    }
}

/// The forwarder's view of the registry, writing learned addresses through the dataplane.
struct AgentDns {
    view: Arc<RwLock<View>>,
    dp: Arc<Mutex<Dataplane>>,
    names: Arc<Mutex<std::collections::HashMap<IpAddr, String>>>,
    hub: Arc<crate::events::EventHub>,
}

impl dns::DnsPolicy for AgentDns {
    fn observe(&self, name: &str, addrs: &[IpAddr]) {
        self.hub.observe_name(name, addrs);
    }

    fn match_name(&self, qname: &str) -> Option<ServiceId> {
        let v = self.view.read().ok()?;
        v.index.match_name(qname).or_else(|| v.workloads.iter().find_map(|w| w.index.match_name(qname)))
    }

    fn explicitly_listed(&self, ip: IpAddr) -> bool {
        self.view
            .read()
            .map(|v| v.index.explicitly_listed(ip) || v.workloads.iter().any(|w| w.index.explicitly_listed(ip)))
            .unwrap_or(false)
    }

    fn enforcing(&self) -> bool {
        self.view.read().map(|v| v.cfg.mode == Mode::RegistryOnly).unwrap_or(true)
    }

    fn learn(&self, _service_id: ServiceId, name: &str, addrs: &[IpAddr], ttl: Duration) -> Result<(), String> {
        // Every policy whose registry has this name learns it (under its own policy id).
        let (desired, matches) = {
            let v = self.view.read().map_err(|e| e.to_string())?;
            let mut m: Vec<(PolicyId, ServiceId)> =
                v.index.match_name(name).map(|s| (PolicyId::DEFAULT, s)).into_iter().collect();
            m.extend(v.workloads.iter().filter_map(|w| w.index.match_name(name).map(|s| (w.id, s))));
            (v.desired.clone(), m)
        };
        let mut allow = Vec::new();
        let mut dests = Vec::new();
        for (policy_id, service_id) in matches {
            let info = desired.service(service_id).ok_or_else(|| format!("unknown service {service_id}"))?;
            learn_entries(policy_id, service_id, info, addrs, &mut allow, &mut dests);
        }
        tracing::debug!(name, addrs = ?addrs, ttl = ?ttl, "learned from DNS");
        self.hub.observe_name(name, addrs);
        if let Ok(mut names) = self.names.lock() {
            if names.len() > 100_000 {
                names.clear();
            }
            for a in addrs {
                names.insert(*a, name.to_string());
            }
        }
        self.dp.lock().map_err(|e| e.to_string())?.learn(allow, dests, Instant::now() + ttl).map_err(|e| e.to_string())
    }
}

/// The allow/dests entries for `addrs` learned for a service of a policy.
fn learn_entries(
    policy_id: PolicyId,
    service_id: ServiceId,
    info: &crate::policy::ServiceInfo,
    addrs: &[IpAddr],
    allow: &mut Vec<(AllowEntry, enforcer_common::AllowValue)>,
    dests: &mut Vec<(DestEntry, enforcer_common::AllowValue)>,
) {
    let value = enforcer_common::AllowValue::new(service_id, 0);
    for a in addrs {
        let net = normalize(ipnet::IpNet::from(*a));
        dests.push((DestEntry { net }, value));
        for (port, proto) in &info.ports {
            let v = if info.proxied_ports.contains(port) {
                enforcer_common::AllowValue { flags: enforcer_common::ALLOW_F_PROXY, ..value }
            } else {
                value
            };
            allow.push((AllowEntry { policy_id, net, port: *port, proto: *proto }, v));
        }
    }
}

/// Names the current config needs resolved (for views).
pub fn tracked_names(cfg: &LoadedConfig) -> BTreeSet<String> {
    policy::names_to_resolve(&cfg.registry, &cfg.cli)
}

/// Service id used in metrics for connections refused into BlackHoleCluster.
const BLACKHOLE: ServiceId = match ServiceId::new(u32::MAX) {
    Some(id) => id,
    None => ServiceId::NONE,
};

impl Agent {
    /// The workload name of a cgroup id.
    pub fn workload(&self, cgroup_id: u64) -> String {
        match self.workloads.lock().expect("workloads lock").as_mut() {
            Some(w) => w.name(cgroup_id),
            None => crate::workloads::UNKNOWN.into(),
        }
    }

    fn fill_istio(
        &self,
        s: &mut crate::metrics::Snapshot,
        desired: &Desired,
        flows: &[(enforcer_common::FlowKey, u64)],
        conns: &[(enforcer_common::ConnKey, enforcer_common::ConnCounters)],
        traffic: &[(enforcer_common::TrafficKey, enforcer_common::TrafficValue)],
    ) {
        use std::collections::BTreeMap;

        use enforcer_common::{DIR_EGRESS, HOOK_CONNECT4, HOOK_CONNECT6, PROTO_TCP, VERDICT_ALLOWED, VERDICT_DENIED};

        use crate::metrics::{IstioTcpLabels, TcpSeries};
        let mut tcp: BTreeMap<(String, ServiceId, &'static str), TcpSeries> = BTreeMap::new();
        let mut denied: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (k, n) in flows {
            if k.verdict == VERDICT_ALLOWED {
                continue;
            }
            let wl = self.workload(k.cgroup_id);
            *denied.entry((wl.clone(), if k.verdict == VERDICT_DENIED { "denied" } else { "audit" })).or_default() += n;
            if k.verdict == VERDICT_DENIED
                && k.proto == PROTO_TCP
                && (k.hook == HOOK_CONNECT4 || k.hook == HOOK_CONNECT6)
            {
                let e = tcp.entry((wl, BLACKHOLE, "UH")).or_default();
                e.opened += n;
                e.closed += n;
            }
        }
        for (k, c) in conns {
            let e = tcp.entry((self.workload(k.cgroup_id), k.service_id, "-")).or_default();
            e.opened += c.opened;
            e.closed += c.closed;
        }
        for (k, t) in traffic {
            let e = tcp.entry((self.workload(k.cgroup_id), k.service_id, "-")).or_default();
            if k.direction == DIR_EGRESS {
                e.sent_bytes += t.bytes;
            } else {
                e.received_bytes += t.bytes;
            }
        }
        s.denied = denied.into_iter().map(|((wl, v), n)| (wl, v.to_string(), n)).collect();
        s.tcp = tcp
            .into_iter()
            .map(|((wl, id, flags), series)| {
                let svc = service_labels(desired, id);
                (IstioTcpLabels::new(&wl, (&svc.0, &svc.1, &svc.2), flags), series)
            })
            .collect();
    }
}

/// (destination_service, destination_service_name, destination_service_namespace).
fn service_labels(desired: &Desired, id: ServiceId) -> (String, String, String) {
    if id == BLACKHOLE {
        return ("BlackHoleCluster".into(), "BlackHoleCluster".into(), String::new());
    }
    match desired.service(id) {
        None => ("PassthroughCluster".into(), "PassthroughCluster".into(), String::new()),
        Some(info) => {
            let host = info.hosts.first().cloned().unwrap_or_else(|| info.name.clone());
            match info.name.split_once('/') {
                Some((ns, name)) if info.kind == crate::policy::ServiceKind::ServiceEntry => {
                    (host, name.to_string(), ns.to_string())
                }
                _ => (host, info.name.clone(), String::new()),
            }
        }
    }
}

impl crate::admin::AdminSource for Agent {
    fn registryz(&self) -> crate::admin::Registryz {
        crate::registryz::build(self)
    }

    fn metrics(&self) -> String {
        use crate::metrics::{DnsSnapshot, Snapshot, load};
        let v = self.view.read().expect("view lock");
        let dp = self.dp.lock().expect("dataplane lock");
        let s = Snapshot {
            registry_services: v.desired.services.len() as u64,
            registry_hosts: v.index.hosts() as u64,
            registry_addresses: dp.allow_entries().len() as u64,
            maps: vec![
                (
                    enforcer_common::map_names::ALLOW,
                    dp.allow_entries().len() as u64,
                    u64::from(enforcer_common::ALLOW_MAX_ENTRIES),
                ),
                (
                    enforcer_common::map_names::DESTS,
                    dp.dest_entries() as u64,
                    u64::from(enforcer_common::DESTS_MAX_ENTRIES),
                ),
            ],
            reloads: load(&self.stats.reloads),
            reload_errors: load(&self.stats.reload_errors),
            events_dropped: dp.event_drops(),
            denied: Vec::new(),
            tcp: Vec::new(),
            resolver_lookups: load(&self.refresher.stats().lookups),
            resolver_failures: load(&self.refresher.stats().failures),
            dns: self.dns_stats.as_ref().map(|d| DnsSnapshot {
                queries_udp: load(&d.queries_udp),
                queries_tcp: load(&d.queries_tcp),
                answered: load(&d.answered),
                learned_addrs: load(&d.learned_addrs),
                blocked: load(&d.blocked),
                servfail: load(&d.servfail),
                upstream_timeouts: load(&d.upstream_timeouts),
                rebinding_dropped: load(&d.rebinding_dropped),
                learn_failures: load(&d.learn_failures),
            }),
        };
        let mut s = s;
        let flows = dp.flows();
        let conns = dp.conns();
        let traffic = dp.traffic();
        drop(dp);
        self.fill_istio(&mut s, &v.desired, &flows, &conns, &traffic);
        crate::metrics::render(&s, self.proxy_metrics.as_ref())
    }

    fn events(&self) -> (Vec<String>, Option<tokio::sync::broadcast::Receiver<String>>) {
        let (recent, rx) = self.hub.snapshot();
        (recent, Some(rx))
    }

    fn ready(&self) -> bool {
        match self.ready.lock().expect("ready lock").as_ref() {
            Some(r) => r.load(Ordering::Relaxed),
            None => true,
        }
    }
}

/// The L7 proxy's view: original destinations from the kernel, routes from the registry and its
/// DestinationRules, events into the hub.
struct AgentProxy {
    view: Arc<RwLock<View>>,
    dp: Arc<Mutex<Dataplane>>,
    hub: Arc<crate::events::EventHub>,
    workloads: Arc<Mutex<Option<crate::workloads::Workloads>>>,
    /// client address -> (service id, cgroup id), and original -> service id, from the last
    /// `original_dst` (the proxy calls route()/workload() right after it for the same connection).
    by_client: Mutex<std::collections::HashMap<SocketAddr, (ServiceId, u64)>>,
    by_original: Mutex<std::collections::HashMap<SocketAddr, ServiceId>>,
}

impl crate::proxy::ProxyPolicy for AgentProxy {
    fn original_dst(&self, client: SocketAddr) -> Option<SocketAddr> {
        let (orig, service, cgroup) = self.dp.lock().ok()?.take_proxy_original(client)?;
        if let Ok(mut m) = self.by_client.lock() {
            if m.len() > 65_536 {
                m.clear();
            }
            m.insert(client, (service, cgroup));
        }
        if let Ok(mut m) = self.by_original.lock() {
            if m.len() > 65_536 {
                m.clear();
            }
            m.insert(orig, service);
        }
        Some(orig)
    }

    fn route(&self, original: SocketAddr) -> Option<crate::proxy::Route> {
        let service_id = *self.by_original.lock().ok()?.get(&original)?;
        let v = self.view.read().ok()?;
        let se = v.service_entry(service_id)?;
        let port = se.ports.iter().find(|p| p.number == original.port())?;
        let labels = proxy_labels(&v.desired, service_id);
        let host = se.hosts.iter().find(|h| !h.is_wildcard()).map(|h| h.to_string());
        let registry = if policy::policy_of_service(service_id) == PolicyId::DEFAULT {
            &v.cfg.registry
        } else {
            &v.workloads.iter().find(|w| w.id == policy::policy_of_service(service_id))?.policy.registry
        };
        match policy::tls_for(registry, se, port.number) {
            Some((dr, tls)) if tls.mode == crate::config::TlsMode::Simple && !port.protocol.is_tls() => {
                Some(crate::proxy::Route::Originate {
                    service: labels,
                    host: host.unwrap_or_else(|| original.ip().to_string()),
                    upstream_port: port.target_port.unwrap_or(port.number),
                    tls: crate::proxy::TlsOrigination {
                        sni: tls.sni.clone(),
                        ca_certificates: tls.ca_certificates.clone(),
                        insecure_skip_verify: tls.insecure_skip_verify,
                        subject_alt_names: tls.subject_alt_names.clone(),
                    },
                    connect_timeout: dr.connect_timeout.unwrap_or(Duration::from_secs(10)),
                })
            }
            _ => {
                // SNI check: every registry host (of this policy) that declares this port as TLS.
                let allowed = registry
                    .services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.ports.iter().any(|p| p.number == port.number && p.protocol.is_tls()))
                    .flat_map(|(i, s)| {
                        let id =
                            ServiceId::new(policy::service_base(policy::policy_of_service(service_id)) + i as u32 + 1)
                                .expect("non-zero");
                        let labels = proxy_labels(&v.desired, id);
                        s.hosts.iter().map(move |h| (h.to_string(), labels.clone()))
                    })
                    .collect();
                Some(crate::proxy::Route::SniCheck { port: port.number, allowed })
            }
        }
    }

    fn workload(&self, client: SocketAddr) -> String {
        let cg = self.by_client.lock().ok().and_then(|m| m.get(&client).map(|(_, c)| *c)).unwrap_or(0);
        match self.workloads.lock().ok().as_deref_mut().and_then(|w| w.as_mut()) {
            Some(w) => w.name(cg),
            None => crate::workloads::UNKNOWN.into(),
        }
    }

    fn event(&self, e: crate::proxy::ProxyEvent) {
        let workload = self.workload(e.client);
        self.hub.publish_proxy(&e, &workload);
    }
}

fn proxy_labels(desired: &Desired, id: ServiceId) -> crate::proxy::ServiceLabels {
    let (a, b, c) = service_labels(desired, id);
    crate::proxy::ServiceLabels {
        destination_service: a,
        destination_service_name: b,
        destination_service_namespace: c,
    }
}
