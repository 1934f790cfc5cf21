//! Checks that turn the errors users hit first into plain answers.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Oldest kernel with every hook used: cgroup sock_addr connect4/6 (4.17), sendmsg4/6 (4.18),
/// BPF ring buffer (5.8), bpf_link for cgroups (5.7), cgroup.kill (5.14, optional).
pub const MIN_KERNEL: (u32, u32) = (5, 8);

pub fn kernel_version() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Root or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN (for cgroup attach and bpffs).
pub fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, n)| n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "enforcer needs root (or {}) to load BPF programs and attach them to cgroups; run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
}

pub fn check_kernel() -> anyhow::Result<()> {
    if let Some((maj, min)) = kernel_version()
        && (maj, min) < MIN_KERNEL
    {
        bail!(
            "kernel {maj}.{min} is too old: enforcer needs {}.{} or newer (BPF ring buffer 5.8, cgroup connect4/6 hooks 4.17, sendmsg4/6 4.18)",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// Make sure `dir` is on a bpffs: if nothing is mounted at /sys/fs/bpf and `dir` is below it, mount
/// bpffs there (as systemd and Cilium do); otherwise say how to fix it.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    const DEFAULT: &str = "/sys/fs/bpf";
    if check_bpffs(dir).is_ok() {
        return Ok(());
    }
    if dir.starts_with(DEFAULT) && Path::new(DEFAULT).is_dir() {
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            tracing::info!("mounted bpffs at {DEFAULT}");
        } else {
            tracing::warn!("mounting bpffs at {DEFAULT} failed: {}", std::io::Error::last_os_error());
        }
    }
    check_bpffs(dir)
}

/// Is `dir` on a bpffs mount?
pub fn check_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let bpffs: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mnt = f.nth(1)?;
            (f.next()? == "bpf").then_some(mnt)
        })
        .collect();
    if !bpffs.iter().any(|m| dir.starts_with(m)) {
        bail!(
            "{} is not on a bpf filesystem (bpffs mounts: {}); mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --pin-dir under an existing bpffs",
            dir.display(),
            if bpffs.is_empty() { "none".to_string() } else { bpffs.join(", ") }
        );
    }
    Ok(())
}
