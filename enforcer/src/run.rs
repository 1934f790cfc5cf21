//! `enforcer run -- CMD`: confine one command in a child cgroup with the registry enforced; the
//! command runs in its own namespaces without the privileges to undo that (see `confine`), and
//! the programs are pinned so a killed agent leaves it confined until it is killed (see
//! `supervisor`).

use std::{
    collections::HashMap, ffi::OsString, os::fd::AsRawFd as _, path::Path, process::ExitStatus, sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use enforcer_common::Event;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin,
    agent::{Agent, AgentConfig},
    cgroup::{self, ChildCgroup},
    cli::{ReportFormat, RunArgs},
    confine::{self, InitMessage, Plan},
    dataplane::{Dataplane, LoadOptions},
    events::{self, DenyPrinter},
    exit, load, preflight,
    serve::Servers,
    supervisor, watch,
};

/// Run the command; returns the exit status enforcer should exit with.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    // Catch the signals before anything is created, so a Ctrl-C during start-up still runs the
    // cleanup (it is forwarded to the command once it exists, or ends the start-up).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut config = AgentConfig { quiet: args.quiet, ..AgentConfig::from_args(&args.policy) };
    // Each name the DNS forwarder refuses gets one deny line, like a denied connect.
    config.dns.print_refusals = !args.quiet;
    let cfg = load::load_config(&config)?;
    let quiet = args.quiet;
    let warn = |w: &str| {
        if !quiet {
            events::print_line(&format!("warning: {w}"));
        }
    };
    cfg.warnings.iter().for_each(|w| warn(w));
    crate::cli::allow_cidr_warnings(&args.policy).iter().for_each(|w| warn(w));
    let plan = Plan::resolve(args.user.as_deref(), args.as_root, args.privileged, Plan::sudo_env())
        .map_err(|e| exit::CodedError { code: exit::ENFORCER_FAILED, message: e.to_string() })?;
    if plan == Plan::Privileged {
        warn(
            "--privileged: the command runs unconfined, with enforcer's identity and capabilities in enforcer's namespaces; as root it can leave its cgroup, add nft rules or kill enforcer, so the enforcement is only advisory",
        );
    }
    tracing::debug!(how = %plan.describe(), "starting the command");
    // Runs whose agent was killed: their commands are still confined (pinned); end them now.
    supervisor::clean_stale().iter().for_each(|m| warn(m));

    let mount = cgroup::cgroup2_mount()?;
    let parent = match &args.cgroup_parent {
        Some(p) => cgroup::resolve(&mount, p)?,
        None => mount.join(cgroup::self_cgroup()?.strip_prefix("/").unwrap_or(Path::new(""))),
    };
    let command_name = Path::new(&args.command[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "command".into());
    // The record (and the supervisor watching it) exist before anything they clean up does.
    let record = supervisor::RunRecord::for_this_run(&parent, &command_name);
    let run_lock = supervisor::RunLock::create(record).context("recording the run")?;
    run_lock.spawn_supervisor()?;
    let pin_dir = run_lock.record.pin_dir.clone();
    preflight::ensure_bpffs(&pin_dir).context("`enforcer run` pins its programs so they outlive a killed agent")?;
    let cg_name = run_lock.record.cgroup.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let child = ChildCgroup::create(&parent, &cg_name).context("creating the command's cgroup")?;

    let (dp, notes) = Dataplane::load(&LoadOptions { pin_dir: Some(pin_dir), ebpf_log: args.policy.ebpf_log })
        .context("loading the BPF programs")?;
    notes.iter().for_each(|n| if n.contains("backstop") { warn(n) } else { tracing::debug!("{n}") });
    let mut started = Agent::start(config, dp, cfg, 0).await?;
    let agent = started.agent.clone();
    agent.desired().warnings.iter().for_each(|w| warn(w));
    let mut servers = Servers::start_for(&mut started);
    let (steering, proxying) = (servers.steering, servers.proxying);
    agent
        .with_dataplane(|dp| {
            dp.attach_hooks(
                child.path(),
                crate::dataplane::Hooks {
                    dns_restore: steering || proxying,
                    sock_ops: !args.policy.no_conn_accounting || proxying,
                    accounting: !args.policy.no_conn_accounting,
                    backstop: true,
                },
            )
        })
        .with_context(|| format!("attaching to {}", child.path().display()))?;
    for iface in &args.policy.interfaces {
        agent
            .with_dataplane(|dp| dp.attach_tc(iface))
            .with_context(|| format!("attaching the traffic counters to {iface}"))?;
    }
    agent.set_names(crate::workloads::Workloads::for_run(child.path(), &command_name));
    servers.background("upkeep", agent.upkeep());
    let _watch = spawn_reloader(&agent, &mut servers, &args.policy.registry, args.policy.no_watch, quiet)?;
    if let Some(addr) = args.admin.or(args.ui.then_some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))) {
        let source: Arc<dyn admin::AdminSource> = Arc::new(agent.clone());
        let local = servers.admin("admin listener", addr, source).await?;
        if args.ui {
            events::print_line(&format!("UI at http://{local}/ui"));
        }
    }
    let mut events = agent.with_dataplane(|dp| dp.take_events()).context("opening the event ring buffer")?;

    // Every resolver path of CMD ends in port-53 queries the kernel steers to the forwarder: the
    // resolver view of dns::isolate, mounted in CMD's mount namespace (the confined init's, or one
    // of its own under --privileged). Kept until CMD is gone (it owns the generated files).
    let isolation = crate::dns::isolate::for_run(steering && agent.dns_isolation(), std::process::id())?;
    let (mut cmd, mut init) = match &plan {
        Plan::Privileged => (spawn_in_cgroup(&args.command, &child, isolation.clone())?, None),
        Plan::Confined { identity } => {
            let view = isolation.as_ref().map(|i| i.mounts()).unwrap_or_default();
            let (c, link) = confine::spawn(&args.command, &child.procs_file(), identity.as_ref(), view)?;
            (c, Some(link))
        }
    };
    // The command's process (its init when confined): where signals are forwarded.
    let pid = cmd.id().map(|p| p as i32);

    let mut printer = DenyPrinter::default();
    let json_events = args.policy.event_format == ReportFormat::Json;
    let mut drops_seen = 0u64;
    // Confined, the command has its own PID namespace: events name processes as it sees them.
    let mut ns_pids: HashMap<u32, u32> = HashMap::new();
    let confined = init.is_some();
    let mut show = |mut evs: Vec<Event>, printer: &mut DenyPrinter| {
        let desired = agent.desired();
        for ev in &mut evs {
            if confined {
                ev.pid = *ns_pids.entry(ev.pid).or_insert_with(|| confine::pid_in_namespace(ev.pid).unwrap_or(ev.pid));
                ev.tid = *ns_pids.entry(ev.tid).or_insert_with(|| confine::pid_in_namespace(ev.tid).unwrap_or(ev.tid));
            }
            agent.hub().publish(ev, &desired, &command_name);
            if quiet {
                continue;
            }
            if json_events {
                events::print_json(ev, &desired, &command_name);
            } else if let Some(line) = printer.first_time(ev, &desired) {
                events::print_line(&line);
            }
        }
        let drops = agent.with_dataplane(|dp| dp.event_drops());
        if drops > drops_seen {
            agent.hub().publish_drops(drops - drops_seen);
            drops_seen = drops;
        }
    };
    let mut failed: Option<(i32, String)> = None;
    let status: ExitStatus = loop {
        tokio::select! {
            st = cmd.wait() => break st.context("waiting for the command")?,
            m = next_message(&mut init) => match m {
                InitMessage::Running => {}
                InitMessage::Failed { code, message } => failed = Some((code, message)),
                InitMessage::Stopped(sig) => init.as_ref().expect("messages come from init").stopped(sig),
            },
            batch = events.next_batch() => show(batch.context("reading events")?, &mut printer),
            _ = sigint.recv() => forward(pid, libc::SIGINT),
            _ = sigterm.recv() => forward(pid, libc::SIGTERM),
            _ = sighup.recv() => forward(pid, libc::SIGHUP),
            _ = sigquit.recv() => forward(pid, libc::SIGQUIT),
        }
    };
    if let Some(link) = &mut init {
        link.restore_tty();
        // init reports a failed start before it exits: read what is left of the pipe.
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), link.message()).await {
            if let InitMessage::Failed { code, message } = m {
                failed = Some((code, message));
            }
        }
    }
    // Background children the command left behind would escape enforcement once we detach.
    child.kill_all();
    if let Some((code, message)) = failed {
        return Err(exit::CodedError { code, message }.into());
    }
    show(events.drain(), &mut printer);
    servers.drain(Duration::from_secs(2)).await;

    let code = exit::from_status(status);
    let (flows, drops) = agent.with_dataplane(|dp| (dp.flows(), dp.event_drops()));
    let mut summary = events::summarize(&flows, &agent.desired(), agent.mode().to_string(), code);
    summary.events_dropped = drops;
    if let Some(path) = &args.report_file {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !quiet {
        match args.report {
            ReportFormat::Text => events::print_line(&events::format_summary(&summary)),
            ReportFormat::Json => eprintln!("{}", serde_json::to_string(&summary)?),
        }
    }
    drop(isolation);
    drop(started);
    drop(agent); // the last handle to the dataplane closes its link descriptors
    drop(child); // removes the cgroup
    drop(run_lock); // removes the pins (the programs detach) and the record; the supervisor exits
    Ok(code)
}

/// The next message from the confined command's init; pending for ever without one.
async fn next_message(init: &mut Option<confine::InitLink>) -> InitMessage {
    match init {
        Some(link) if link.status_open() => match link.message().await {
            Some(m) => m,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

/// Reload the registry when its files change (debounced), logging what happened. The returned
/// watch must be kept alive.
pub fn spawn_reloader(
    agent: &Agent,
    servers: &mut Servers,
    paths: &[std::path::PathBuf],
    disabled: bool,
    quiet: bool,
) -> anyhow::Result<Option<watch::RegistryWatch>> {
    if disabled || paths.is_empty() {
        return Ok(None);
    }
    let (w, mut rx) = watch::watch(paths).context("watching the registry paths")?;
    let agent = agent.clone();
    servers.background("registry watcher", async move {
        while rx.recv().await.is_some() {
            // Let a burst of writes (an editor's save, a `cp` of a directory) settle.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match agent.reload().await {
                Ok((cfg, s)) => {
                    if !quiet {
                        tracing::info!(mode = %cfg.mode, entries = s.total, added = s.upserts, removed = s.removals, "registry changed; reloaded");
                    }
                }
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    });
    Ok(Some(w))
}

fn forward(pid: Option<i32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Spawn `argv` exactly as given, moved into `cg` before it execs (so its very first connect is
/// judged).
fn spawn_in_cgroup(
    argv: &[OsString],
    cg: &ChildCgroup,
    isolation: Option<Arc<crate::dns::isolate::Isolation>>,
) -> anyhow::Result<tokio::process::Child> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.procs_file())
        .with_context(|| format!("opening {}", cg.procs_file().display()))?;
    let fd = procs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: only async-signal-safe calls (write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            // The resolver view (dns::isolate): a mount namespace, while CMD still has the
            // capabilities for it.
            if let Some(iso) = &isolation {
                iso.enter()?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => exit::NOT_FOUND,
            std::io::ErrorKind::PermissionDenied => exit::NOT_EXECUTABLE,
            _ => exit::ENFORCER_FAILED,
        };
        anyhow::Error::new(exit::CodedError { code, message: format!("{}: {e}", argv[0].to_string_lossy()) })
    })?;
    drop(procs);
    Ok(child)
}
