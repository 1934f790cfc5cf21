//! `enforcer run -- CMD`: confine one command in a child cgroup with the registry enforced.

use std::{
    ffi::OsString,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::ExitStatus,
};

use anyhow::Context as _;
use enforcer_common::DEFAULT_POLICY;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{self, ChildCgroup},
    cli::{ReportFormat, RunArgs},
    dataplane::{Dataplane, LoadOptions},
    events::{self, DenyPrinter},
    exit, load, preflight,
};

/// Run the command; returns the exit status enforcer should exit with.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    let loaded = load::load(&args.policy).await?;
    if !args.quiet {
        for w in &loaded.warnings {
            eprintln!("enforcer: warning: {w}");
        }
    }

    let mount = cgroup::cgroup2_mount()?;
    let parent = match &args.cgroup_parent {
        Some(p) => cgroup::resolve(&mount, p)?,
        None => mount.join(cgroup::self_cgroup()?.strip_prefix("/").unwrap_or(std::path::Path::new(""))),
    };
    let child = ChildCgroup::create(&parent, &format!("enforcer-run-{}", std::process::id()))
        .context("creating the command's cgroup")?;

    let (mut dp, _) = Dataplane::load(&LoadOptions { pin_dir: None, ebpf_log: args.policy.ebpf_log })
        .context("loading the BPF programs")?;
    dp.set_mode(DEFAULT_POLICY, load::kernel_mode(loaded.mode))?;
    let stats = dp.apply(&loaded.desired)?;
    dp.attach(child.path()).with_context(|| format!("attaching to {}", child.path().display()))?;
    tracing::debug!(entries = stats.total, mode = %loaded.mode, "enforcing");
    let mut events = dp.take_events().context("opening the event ring buffer")?;

    let mut cmd = spawn_in_cgroup(&args.command, &child)?;
    let pid = cmd.id().map(|p| p as i32);

    let mut printer = DenyPrinter::default();
    let show = |evs: Vec<enforcer_common::Event>, printer: &mut DenyPrinter| {
        if args.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        for ev in evs {
            if let Some(line) = printer.first_time(&ev, &loaded.desired) {
                let _ = writeln!(err, "enforcer: {line}");
            }
        }
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
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

    let code = exit::from_status(status);
    let mut summary = events::summarize(&dp.flows(), &loaded.desired, loaded.mode.to_string(), code);
    summary.events_dropped = dp.event_drops();
    if let Some(path) = &args.report_file {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.quiet {
        match args.report {
            ReportFormat::Text => eprintln!("enforcer: {}", events::format_summary(&summary)),
            ReportFormat::Json => eprintln!("{}", serde_json::to_string(&summary)?),
        }
    }
    drop(dp); // detaches the programs
    drop(child); // removes the cgroup
    Ok(code)
}

fn forward(pid: Option<i32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Spawn `argv` exactly as given, moved into `cg` before it execs (so its very first connect is
/// judged).
fn spawn_in_cgroup(argv: &[OsString], cg: &ChildCgroup) -> anyhow::Result<tokio::process::Child> {
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

