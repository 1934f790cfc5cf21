//! `enforcer run -- CMD`: confine one command in a child cgroup with the registry enforced.

use std::{ffi::OsString, os::fd::AsRawFd as _, path::Path, process::ExitStatus, sync::Arc, time::Duration};

use anyhow::Context as _;
use enforcer_common::Event;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin,
    agent::{Agent, AgentConfig},
    cgroup::{self, ChildCgroup},
    cli::{ReportFormat, RunArgs},
    dataplane::{Dataplane, LoadOptions},
    events::{self, DenyPrinter},
    exit, load, preflight,
    serve::Servers,
    watch,
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
    let mut config = AgentConfig::from_args(&args.policy);
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

    let mount = cgroup::cgroup2_mount()?;
    let parent = match &args.cgroup_parent {
        Some(p) => cgroup::resolve(&mount, p)?,
        None => mount.join(cgroup::self_cgroup()?.strip_prefix("/").unwrap_or(Path::new(""))),
    };
    let child = ChildCgroup::create(&parent, &format!("enforcer-run-{}", std::process::id()))
        .context("creating the command's cgroup")?;

    let (dp, _) = Dataplane::load(&LoadOptions { pin_dir: None, ebpf_log: args.policy.ebpf_log })
        .context("loading the BPF programs")?;
    let mut started = Agent::start(config, dp, cfg, 0).await?;
    let agent = started.agent.clone();
    agent.desired().warnings.iter().for_each(|w| warn(w));
    let mut servers = Servers::start_for(&mut started);
    let (steering, proxying) = (servers.steering, servers.proxying);
    agent
        .with_dataplane(|dp| dp.attach(child.path(), steering || proxying, !args.policy.no_conn_accounting || proxying))
        .with_context(|| format!("attaching to {}", child.path().display()))?;
    for iface in &args.policy.interfaces {
        agent
            .with_dataplane(|dp| dp.attach_tc(iface))
            .with_context(|| format!("attaching the traffic counters to {iface}"))?;
    }
    let command_name = Path::new(&args.command[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "command".into());
    agent.set_names(crate::workloads::Workloads::for_run(child.path(), &command_name));
    let upkeep = agent.spawn_upkeep();
    let _watch = spawn_reloader(&agent, &args.policy.registry, args.policy.no_watch, quiet)?;
    if let Some(addr) = args.admin {
        let source: Arc<dyn admin::AdminSource> = Arc::new(agent.clone());
        servers.admin(addr, source).await?;
    }
    let mut events = agent.with_dataplane(|dp| dp.take_events()).context("opening the event ring buffer")?;

    // Every resolver path of CMD ends in port-53 queries the kernel steers to the forwarder.
    let isolation = crate::dns::isolate::for_run(steering && agent.dns_isolation(), std::process::id())?;
    let mut cmd = spawn_in_cgroup(&args.command, &child, isolation.clone())?;
    let pid = cmd.id().map(|p| p as i32);

    let mut printer = DenyPrinter::default();
    let json_events = args.policy.event_format == ReportFormat::Json;
    let mut drops_seen = 0u64;
    let mut show = |evs: Vec<Event>, printer: &mut DenyPrinter| {
        let desired = agent.desired();
        for ev in &evs {
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
    let status: ExitStatus = loop {
        tokio::select! {
            st = cmd.wait() => break st.context("waiting for the command")?,
            batch = events.next_batch() => show(batch.context("reading events")?, &mut printer),
            _ = sigint.recv() => forward(pid, libc::SIGINT),
            _ = sigterm.recv() => forward(pid, libc::SIGTERM),
            _ = sighup.recv() => forward(pid, libc::SIGHUP),
            _ = sigquit.recv() => forward(pid, libc::SIGQUIT),
        }
    };
    // Background children the command left behind would escape enforcement once we detach.
    child.kill_all();
    show(events.drain(), &mut printer);
    upkeep.abort();
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
    drop(started);
    drop(agent); // the last handle to the dataplane detaches the programs
    drop(child); // removes the cgroup
    Ok(code)
}

/// Reload the registry when its files change (debounced), logging what happened. The returned
/// watch must be kept alive.
pub fn spawn_reloader(
    agent: &Agent,
    paths: &[std::path::PathBuf],
    disabled: bool,
    quiet: bool,
) -> anyhow::Result<Option<watch::RegistryWatch>> {
    if disabled || paths.is_empty() {
        return Ok(None);
    }
    let (w, mut rx) = watch::watch(paths).context("watching the registry paths")?;
    let agent = agent.clone();
    tokio::spawn(async move {
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
