//! `enforcer daemon`: node-wide enforcement on an existing cgroup, pinned under bpffs so it
//! survives restarts; SIGHUP reloads the registry and mode as a diff.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin,
    agent::{Agent, AgentConfig},
    cgroup,
    cli::{DaemonArgs, UnpinArgs},
    dataplane::{self, AttachOutcome, Dataplane, LoadOptions},
    events, load, preflight, run,
    serve::Servers,
};

/// The daemon's DNS forwarder port on 127.0.0.1/::1 unless `--dns-port` says otherwise.
pub const DEFAULT_DNS_PORT: u16 = 15053;

/// Default pin directory for a cgroup: one per cgroup, so a restarted daemon finds its own pins.
pub fn default_pin_dir(cgroup_id: u64) -> PathBuf {
    dataplane::paths::default_pin_dir(cgroup_id)
}

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<i32> {
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    // Catch the signals first: a SIGTERM or SIGHUP that arrives while starting (e.g. right after
    // the "enforcing" line) is handled by the loop below instead of killing the process.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mount = cgroup::cgroup2_mount()?;
    let kubelet_root = if args.kubernetes {
        let base = match &args.cgroup {
            Some(c) => cgroup::resolve(&mount, c)?,
            None => mount.clone(),
        };
        let root = crate::kube::cgroup::detect_root(&base).with_context(|| {
            format!(
                "no kubelet pod cgroup tree under {} (looked for {} and a kubepods directory up to three levels down); pass --cgroup with the kubelet's cgroup root",
                base.display(),
                crate::kube::cgroup::ROOT_CANDIDATES.join(", ")
            )
        })?;
        tracing::info!(root = %root.dir.display(), driver = ?root.driver, "kubelet pod cgroups");
        Some(root)
    } else {
        None
    };
    let cg = match (&kubelet_root, &args.cgroup) {
        (Some(r), _) => r.dir.clone(),
        (None, Some(c)) => cgroup::resolve(&mount, c)?,
        (None, None) => anyhow::bail!("--cgroup PATH is required (or --kubernetes)"),
    };
    let pin_dir = match &args.pin_dir {
        Some(d) => d.clone(),
        None => default_pin_dir(cgroup::cgroup_id(&cg)?),
    };
    preflight::ensure_bpffs(&pin_dir)?;
    // Before anything is touched: one daemon per pin dir. A second one must not rewrite the
    // running daemon's SETTINGS, modes or entries.
    let _lock = lock_pin_dir(&pin_dir)?;

    let mut config = AgentConfig::from_args(&args.policy);
    if args.kubernetes {
        // The node default judges every pod that is not governed: they must be untouched (no
        // judging, no steering: POLICY_F_UNGOVERNED).
        config.mode = Some(crate::config::Mode::AllowAny);
        config.ungoverned_default = true;
        if config.dns.steer && !args.kube.kube_dns_steer {
            tracing::info!(
                "Kubernetes mode: DNS steering is off (turn it on with --local-address and --kube-dns-steer; see README)"
            );
            config.dns.steer = false;
        } else if config.dns.steer {
            tracing::info!(
                "--kube-dns-steer: governed pods' port-53 traffic goes to the forwarder on {} (ungoverned pods reach their own resolvers directly)",
                config.local_v4
            );
        }
    }
    let cfg = match load::load_config(&config) {
        Ok(c) => c,
        Err(e) if pin_dir.join("ALLOW").exists() => {
            return Err(e.context(format!(
                "not starting; the enforcement pinned at {} by the previous daemon stays in place",
                pin_dir.display()
            )));
        }
        Err(e) => return Err(e),
    };
    cfg.warnings.iter().for_each(|w| tracing::warn!("{w}"));

    let (dp, notes) = Dataplane::load(&LoadOptions { pin_dir: Some(pin_dir.clone()), ebpf_log: args.policy.ebpf_log })
        .context("loading the BPF programs")?;
    for n in notes {
        tracing::warn!("{n}");
    }
    // Kubernetes: the first policy set is computed from a full sync before the agent writes
    // anything, and applied in the agent's first apply: a restarted daemon keeps the previous
    // one's pinned policies until then (also while the API server is unreachable).
    let mut kube = None;
    let mut initial = Vec::new();
    if let Some(root) = &kubelet_root {
        let ccfg = kube_config(&args, root.clone(), args.policy.mode)?;
        let client = kube_client(&args).await?;
        tracing::info!(node = %ccfg.node_name, "following the Kubernetes cluster");
        let sync = async {
            let mut ctl = crate::kube::Controller::start(client, ccfg).await;
            let first = ctl.initial_sync().await?;
            Ok::<_, crate::kube::KubeError>((ctl, first))
        };
        let (ctl, first) = tokio::select! {
            r = sync => r?,
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM before the first Kubernetes sync; the pinned enforcement stays");
                return Ok(0);
            }
            _ = sigint.recv() => return Ok(0),
        };
        initial = first.policies.clone();
        kube = Some((ctl, first));
    }
    let mut started = Agent::start_with_workloads(config, dp, cfg, DEFAULT_DNS_PORT, initial.clone()).await?;
    let agent = started.agent.clone();
    agent.desired().warnings.iter().for_each(|w| tracing::warn!("{w}"));
    if args.kubernetes && config_is_loopback(&args) {
        // Steering a pod's connection to the node's loopback lands in the pod's own loopback:
        // DestinationRule TLS origination and --sni-check need --local-address under Kubernetes.
        if started.proxy.take().is_some() {
            tracing::warn!(
                "Kubernetes mode without --local-address: the L7 proxy is off (DestinationRule TLS origination and --sni-check are not applied to pods)"
            );
        }
        started.agent.stop_steering()?;
    }
    let mut servers = Servers::start_for(&mut started);
    let (steering, proxying) = (servers.steering, servers.proxying);
    let attached = agent
        .with_dataplane(|dp| {
            dp.attach_hooks(
                &cg,
                crate::dataplane::Hooks {
                    dns_restore: steering || proxying,
                    sock_ops: !args.policy.no_conn_accounting || proxying,
                    accounting: !args.policy.no_conn_accounting,
                    backstop: true,
                },
            )
        })
        .with_context(|| format!("attaching to {}", cg.display()))?;
    let adopted =
        attached.iter().filter(|(_, o)| matches!(o, AttachOutcome::Adopted | AttachOutcome::Replaced { .. })).count();
    for iface in &args.policy.interfaces {
        agent
            .with_dataplane(|dp| dp.attach_tc(iface))
            .with_context(|| format!("attaching the traffic counters to {iface}"))?;
    }
    let mut names = if args.kubernetes {
        crate::workloads::Workloads::for_kubernetes(&cg)
    } else {
        crate::workloads::Workloads::for_daemon(&cg, &mount)
    };
    let (overrides, identities) = crate::workloads::Workloads::overrides_of(&initial);
    names.set_overrides(overrides, identities);
    agent.set_names(names);
    if args.workloads.is_none() && !args.kubernetes {
        // No workload policies in this configuration: what a previous daemon had goes now.
        agent.set_workload_policies(Vec::new()).await?;
    }
    if let Some(f) = &args.workloads {
        let policies = crate::workload::load_file(f, &mount, agent.mode())?;
        let n = policies.len();
        agent.set_workload_policies(policies).await?;
        tracing::info!(file = %f.display(), workloads = n, "per-workload policies applied");
    }
    servers.background("upkeep", agent.upkeep());
    let _watch = run::spawn_reloader(&agent, &mut servers, &args.policy.registry, args.policy.no_watch, false)?;
    let source: Arc<dyn admin::AdminSource> = Arc::new(agent.clone());
    servers.admin("admin listener", args.admin, source.clone()).await?;
    if let Some(addr) = args.metrics_addr {
        let public = servers.admin("public listener", addr, Arc::new(PublicAdmin(source))).await?;
        tracing::info!(addr = %public, "public metrics and health listener (no events, no destinations)");
    }
    {
        let v = agent.view();
        tracing::info!(
            cgroup = %cg.display(),
            pin_dir = %pin_dir.display(),
            admin = %args.admin,
            mode = %v.cfg.mode,
            mode_source = %v.cfg.mode_source,
            entries = agent.allow_entries(),
            dns_steering = steering,
            "enforcing ({})",
            if adopted > 0 { "adopted the pinned programs" } else { "attached" }
        );
    }
    let kube_ready = Arc::new(std::sync::atomic::AtomicBool::new(!args.kubernetes));
    if let Some((ctl, first)) = kube {
        let sink: Arc<dyn crate::workload::PolicySink> = Arc::new(KubeSink { agent: agent.clone() });
        let ready = kube_ready.clone();
        servers.background("Kubernetes controller", async move {
            if let Err(e) = ctl.run(sink, first, ready).await {
                tracing::error!("Kubernetes controller stopped: {e:#}");
            }
        });
    }
    agent.set_ready_flag(kube_ready);
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).with_context(|| format!("writing {}", p.display()))?;
    }

    let mut stream = agent.with_dataplane(|dp| dp.take_events()).context("opening the event ring buffer")?;
    let events_agent = agent.clone();
    let json_events = args.policy.event_format == crate::cli::ReportFormat::Json;
    tokio::spawn(async move {
        let mut drops_seen = events_agent.with_dataplane(|dp| dp.event_drops());
        while let Ok(batch) = stream.next_batch().await {
            let desired = events_agent.desired();
            for ev in batch {
                let workload = events_agent.workload(ev.cgroup_id);
                events_agent.hub().publish(&ev, &desired, &workload);
                if json_events {
                    events::print_json(&ev, &desired, &workload);
                } else {
                    events::print_line(&format!("{} ({workload})", events::format_event(&ev, &desired)));
                }
            }
            let drops = events_agent.with_dataplane(|dp| dp.event_drops());
            if drops > drops_seen {
                events_agent.hub().publish_drops(drops - drops_seen);
                events::print_line(&format!("{} events dropped: the ring buffer was full", drops - drops_seen));
                drops_seen = drops;
            }
        }
    });

    loop {
        tokio::select! {
            _ = sighup.recv() => match agent.reload().await {
                Ok((cfg, s)) => {
                    tracing::info!(mode = %cfg.mode, entries = s.total, added = s.upserts, removed = s.removals, "reloaded");
                    if let Some(f) = &args.workloads {
                        match crate::workload::load_file(f, &mount, cfg.mode) {
                            Ok(p) => {
                                if let Err(e) = agent.set_workload_policies(p).await {
                                    tracing::error!("applying {} failed: {e:#}", f.display());
                                }
                            }
                            Err(e) => {
                                agent.stats().reload_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::error!("workloads reload rejected, the last good policies stay enforced: {e:#}");
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(
                    "{e:#} ({} failed reloads so far)",
                    agent.stats().reload_errors.load(std::sync::atomic::Ordering::Relaxed)
                ),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if steering || proxying {
        // The forwarder goes away with us: its heartbeat stops, so steered workloads get
        // --dns-fallback at once (as within 3 s if we are killed) until a new daemon takes over;
        // registry entries stay enforced, names are not learned meanwhile.
        if let Err(e) = agent.forwarder_stopping() {
            tracing::warn!("could not stop the DNS forwarder's heartbeat: {e:#}");
        }
    }
    servers.drain(std::time::Duration::from_secs(3)).await;
    drop(started);
    tracing::info!(
        pin_dir = %pin_dir.display(),
        "exiting; enforcement stays pinned (a restarted daemon adopts it; `enforcer unpin --pin-dir {}` removes it)",
        pin_dir.display()
    );
    Ok(0)
}

/// Take the pin dir's exclusive lock (flock on the directory, released when the process exits,
/// however it exits).
fn lock_pin_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another enforcer daemon is running on {} (it holds the pin directory's lock); nothing was changed. \
             Stop it first, or give this one another --cgroup / --pin-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", dir.display())),
    }
}

/// Delivers the Kubernetes controller's per-pod policies to the agent.
/// What the public `--metrics-addr` listener shows: metrics and health, no destinations, no
/// events (those carry pids and addresses).
struct PublicAdmin(Arc<dyn admin::AdminSource>);

impl admin::AdminSource for PublicAdmin {
    fn registryz(&self) -> admin::Registryz {
        let mut r = self.0.registryz();
        r.services.clear();
        r
    }
    fn metrics(&self, format: crate::metrics::Format) -> String {
        self.0.metrics(format)
    }
    fn ready(&self) -> bool {
        self.0.ready()
    }
}

/// Delivers the Kubernetes controller's policies to the agent.
struct KubeSink {
    agent: Agent,
}

impl crate::workload::PolicySink for KubeSink {
    fn apply(
        &self,
        policies: Vec<crate::workload::WorkloadPolicy>,
    ) -> futures::future::BoxFuture<'static, Result<crate::workload::MapUse, String>> {
        let agent = self.agent.clone();
        Box::pin(async move {
            let s = agent.set_workload_policies(policies).await.map_err(|e| format!("{e:#}"))?;
            tracing::debug!(added = s.upserts, removed = s.removals, "workload policies written");
            Ok(crate::workload::MapUse {
                allow_entries: s.total,
                allow_capacity: enforcer_common::ALLOW_MAX_ENTRIES as usize,
            })
        })
    }

    fn sync_cgroups(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let agent = self.agent.clone();
        Box::pin(async move { agent.sync_workload_cgroups().await.map_err(|e| format!("{e:#}")) })
    }
}

/// Is the forwarder/proxy address loopback (unreachable from pods' network namespaces)?
fn config_is_loopback(args: &DaemonArgs) -> bool {
    args.policy.local_address.is_none_or(|a| a.is_loopback())
}

/// The controller's settings from the command line.
fn kube_config(
    args: &DaemonArgs,
    root: crate::kube::cgroup::KubeletRoot,
    mode: Option<crate::config::Mode>,
) -> anyhow::Result<crate::kube::ControllerConfig> {
    use crate::cli::{KubeUdpArg, KubeUnknownArg};
    use crate::kube::policy::UdpPolicy;
    let node = match args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()).filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .context("no --node-name / NODE_NAME and no hostname")?,
    };
    let k = &args.kube;
    let mut c = crate::kube::ControllerConfig::new(node, root);
    let (key, value) = k.kube_label.split_once('=').with_context(|| {
        format!("--kube-label {:?}: expected KEY=VALUE, e.g. istio.io/dataplane-mode=enforcer", k.kube_label)
    })?;
    let g = &mut c.options.governance;
    g.label_key = key.to_string();
    g.label_value = value.to_string();
    g.govern_all = k.kube_govern_all;
    g.allow_system_namespaces = k.kube_system_namespaces;
    g.govern_host_network = k.kube_host_network;
    g.govern_sidecar_pods = k.kube_sidecar_pods;
    // The daemon's own namespace (downward API `POD_NAMESPACE`): its pods are not workloads.
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        g.excluded_namespaces.insert(ns);
    }
    c.options.default_mode = mode.unwrap_or(crate::config::Mode::AllowAny);
    c.options.udp = match k.kube_udp {
        KubeUdpArg::Judge => UdpPolicy::Judge,
        KubeUdpArg::Allow => UdpPolicy::Allow,
    };
    if !k.kube_always_allow.is_empty() {
        c.options.always_services = k.kube_always_allow.clone();
    }
    if !k.kube_node_local_dns.is_empty() {
        c.options.node_local_dns = k.kube_node_local_dns.clone();
    }
    c.options.node_resolvers =
        crate::policy::parse_resolv_conf(&std::fs::read_to_string(&k.kube_node_resolv_conf).unwrap_or_default());
    c.unknown_pods = match k.kube_unknown_pods {
        KubeUnknownArg::Deny => crate::kube::UnknownPods::Deny,
        KubeUnknownArg::Allow => crate::kube::UnknownPods::Allow,
    };
    c.istio_namespace = k.kube_istio_namespace.clone();
    c.mesh_config_map = k.kube_mesh_config.clone();
    c.cluster_domain = k.cluster_domain.clone();
    Ok(c)
}

async fn kube_client(args: &DaemonArgs) -> anyhow::Result<::kube::Client> {
    let config = match &args.kube.kubeconfig {
        Some(path) => {
            let kc = ::kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            ::kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => ::kube::Config::infer()
            .await
            .context("finding the Kubernetes API (in-cluster service account, or KUBECONFIG / ~/.kube/config)")?,
    };
    ::kube::Client::try_from(config).context("building the Kubernetes client")
}

pub fn unpin(args: UnpinArgs) -> anyhow::Result<i32> {
    preflight::check_privileges()?;
    let dir = match (args.pin_dir, args.cgroup) {
        (Some(d), _) => d,
        (None, Some(c)) => {
            let mount = cgroup::cgroup2_mount()?;
            default_pin_dir(cgroup::cgroup_id(&cgroup::resolve(&mount, &c)?)?)
        }
        (None, None) => anyhow::bail!("say which pins to remove: --pin-dir DIR or --cgroup PATH"),
    };
    let removed = dataplane::unpin_all(&dir)?;
    if removed.is_empty() {
        eprintln!("enforcer: nothing pinned under {}", dir.display());
    } else {
        eprintln!("enforcer: removed {} pins under {}; the programs are detached", removed.len(), dir.display());
    }
    Ok(0)
}
