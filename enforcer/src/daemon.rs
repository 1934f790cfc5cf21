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
    let cg = cgroup::resolve(&mount, &args.cgroup)?;
    let pin_dir = match &args.pin_dir {
        Some(d) => d.clone(),
        None => default_pin_dir(cgroup::cgroup_id(&cg)?),
    };
    preflight::ensure_bpffs(&pin_dir)?;
    // Before anything is touched: one daemon per pin dir. A second one must not rewrite the
    // running daemon's SETTINGS, modes or entries.
    let _lock = lock_pin_dir(&pin_dir)?;

    let config = AgentConfig::from_args(&args.policy);
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
    let mut started = Agent::start(config, dp, cfg, DEFAULT_DNS_PORT).await?;
    let agent = started.agent.clone();
    agent.desired().warnings.iter().for_each(|w| tracing::warn!("{w}"));
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
    agent.set_names(crate::workloads::Workloads::for_daemon(&cg, &mount));
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
    let upkeep = agent.spawn_upkeep();
    let _watch = run::spawn_reloader(&agent, &args.policy.registry, args.policy.no_watch, false)?;
    let source: Arc<dyn admin::AdminSource> = Arc::new(agent.clone());
    servers.admin(args.admin, source).await?;
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
    if args.kubernetes {
        let node = match args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()) {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .context("no --node-name / NODE_NAME and no hostname")?,
        };
        let client = ::kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let sink: Arc<dyn crate::workload::PolicySink> =
            Arc::new(KubeSink { agent: agent.clone(), handle: tokio::runtime::Handle::current() });
        let ready = kube_ready.clone();
        let root = mount.clone();
        tracing::info!(node = %node, "following the Kubernetes cluster");
        tokio::spawn(async move {
            if let Err(e) = crate::kube::run(client, node, root, sink, ready).await {
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
    upkeep.abort();
    if steering {
        // The forwarder goes away with us: let workloads reach their resolvers directly until a
        // new daemon takes over (registry entries stay enforced; names are not learned meanwhile).
        if let Err(e) = agent.stop_steering() {
            tracing::warn!("could not turn DNS steering off: {e:#}");
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
struct KubeSink {
    agent: Agent,
    handle: tokio::runtime::Handle,
}

impl crate::workload::PolicySink for KubeSink {
    fn apply(&self, policies: Vec<crate::workload::WorkloadPolicy>) {
        let agent = self.agent.clone();
        let n = policies.len();
        self.handle.spawn(async move {
            match agent.set_workload_policies(policies).await {
                Ok(s) => tracing::info!(pods = n, added = s.upserts, removed = s.removals, "pod policies applied"),
                Err(e) => tracing::error!("applying pod policies failed: {e:#}"),
            }
        });
    }
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
