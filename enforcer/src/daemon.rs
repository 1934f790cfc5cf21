//! `enforcer daemon`: node-wide enforcement on an existing cgroup, pinned under bpffs so it
//! survives restarts; SIGHUP reloads the registry and mode as a diff.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use enforcer_common::DEFAULT_POLICY;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    cgroup,
    cli::{DaemonArgs, UnpinArgs},
    config::Mode,
    dataplane::{self, AttachOutcome, Dataplane, LoadOptions},
    events, load, policy::Desired, preflight,
};

/// Default pin directory for a cgroup: one per cgroup, so a restarted daemon finds its own pins.
pub fn default_pin_dir(cgroup_id: u64) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/enforcer/cg{cgroup_id}"))
}

pub async fn daemon(args: DaemonArgs) -> anyhow::Result<i32> {
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    let mount = cgroup::cgroup2_mount()?;
    let cg = cgroup::resolve(&mount, &args.cgroup)?;
    let pin_dir = match &args.pin_dir {
        Some(d) => d.clone(),
        None => default_pin_dir(cgroup::cgroup_id(&cg)?),
    };
    preflight::ensure_bpffs(&pin_dir)?;

    let loaded = match load::load(&args.policy).await {
        Ok(l) => l,
        Err(e) if pin_dir.join("ALLOW").exists() => {
            return Err(e.context(format!(
                "not starting; the enforcement pinned at {} by the previous daemon stays in place",
                pin_dir.display()
            )));
        }
        Err(e) => return Err(e),
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }

    let (mut dp, notes) = Dataplane::load(&LoadOptions { pin_dir: Some(pin_dir.clone()), ebpf_log: args.policy.ebpf_log })
        .context("loading the BPF programs")?;
    for n in notes {
        tracing::warn!("{n}");
    }
    let stats = apply(&mut dp, &loaded.desired, loaded.mode)?;
    let attached = dp.attach(&cg).with_context(|| format!("attaching to {}", cg.display()))?;
    let adopted = attached.iter().filter(|(_, o)| *o == AttachOutcome::Adopted).count();
    tracing::info!(
        cgroup = %cg.display(),
        pin_dir = %pin_dir.display(),
        mode = %loaded.mode,
        mode_source = %loaded.mode_source,
        entries = stats.total,
        added = stats.upserts,
        removed = stats.removals,
        "enforcing ({})",
        if adopted > 0 { "adopted the pinned programs" } else { "attached" }
    );
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).with_context(|| format!("writing {}", p.display()))?;
    }

    let (desired_tx, desired_rx) = watch::channel(Arc::new(loaded.desired));
    let mut stream = dp.take_events().context("opening the event ring buffer")?;
    tokio::spawn(async move {
        while let Ok(batch) = stream.next_batch().await {
            let desired = desired_rx.borrow().clone();
            for ev in batch {
                eprintln!("enforcer: {}", events::format_event(&ev, &desired));
            }
        }
    });

    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut reload_errors = 0u64;
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                match load::load(&args.policy).await {
                    Ok(l) => {
                        for w in &l.warnings {
                            tracing::warn!("{w}");
                        }
                        match apply(&mut dp, &l.desired, l.mode) {
                            Ok(s) => tracing::info!(mode = %l.mode, entries = s.total, added = s.upserts, removed = s.removals, "reloaded"),
                            Err(e) => {
                                reload_errors += 1;
                                tracing::error!("reload failed while applying ({reload_errors} so far): {e:#}");
                            }
                        }
                        let _ = desired_tx.send(Arc::new(l.desired));
                    }
                    Err(e) => {
                        reload_errors += 1;
                        tracing::error!("reload rejected, keeping the last good registry enforced ({reload_errors} failed reloads so far): {e:#}");
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!(
        pin_dir = %pin_dir.display(),
        "exiting; enforcement stays pinned (a restarted daemon adopts it; `enforcer unpin --pin-dir {}` removes it)",
        pin_dir.display()
    );
    Ok(0)
}

/// Order the steps so no destination allowed before and after is ever briefly denied: a more
/// permissive mode goes in before the entries change, a stricter one after.
fn apply(dp: &mut Dataplane, desired: &Desired, mode: Mode) -> anyhow::Result<dataplane::ApplyStats> {
    let kmode = load::kernel_mode(mode);
    if mode != Mode::RegistryOnly {
        dp.set_mode(DEFAULT_POLICY, kmode)?;
        Ok(dp.apply(desired)?)
    } else {
        let s = dp.apply(desired)?;
        dp.set_mode(DEFAULT_POLICY, kmode)?;
        Ok(s)
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
