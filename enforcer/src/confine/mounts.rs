//! The confined command's mount namespace (set up by its init, which has just unshared it and the
//! cgroup namespace): nothing outside the run's cgroup, no bpffs, a procfs of its own PID
//! namespace, the kernel's knobs read-only and the runs' records hidden. Changes stay in this namespace (`/` is made a
//! slave first); mounts the host makes later still propagate in.
//!
//! The resolver view (`dns::isolate`) is mounted by init right after [`confine`].

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("{action} {path}: {source}")]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// One line of /proc/self/mountinfo: where, what, and the per-mount flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub point: PathBuf,
    pub fstype: String,
    pub options: String,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split_whitespace();
            let point = l.nth(4)?;
            let options = l.next()?;
            let fstype = right.split_whitespace().next()?;
            Some(MountEntry {
                point: PathBuf::from(crate::cgroup::unescape_mount(point)),
                fstype: fstype.to_string(),
                options: options.to_string(),
            })
        })
        .collect()
}

/// The per-mount flags a bind remount must keep.
fn kept_flags(options: &str) -> MsFlags {
    let mut f = MsFlags::empty();
    for o in options.split(',') {
        f |= match o {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    f
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError::Mount { action, path: path.to_owned(), source }
}

/// `path` is (still) a mount point of its own, not shadowed or gone.
fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

fn remount_read_only(point: &Path, options: &str) -> Result<(), MountError> {
    if !exists(point) {
        return Ok(());
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | kept_flags(options);
    nix::mount::mount(None::<&str>, point, None::<&str>, flags, None::<&str>)
        .map_err(err("remounting read-only", point))
}

fn bind_read_only(path: &Path) -> Result<(), MountError> {
    if !exists(path) {
        return Ok(());
    }
    nix::mount::mount(Some(path), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err("binding", path))?;
    let flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(err("remounting read-only", path))
}

pub fn confine() -> Result<(), MountError> {
    let root = Path::new("/");
    nix::mount::mount(None::<&str>, root, None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(err("making mounts private to the namespace under", root))?;
    let table = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Mountinfo)?);

    // bpffs: pinned links and maps (this run's, a daemon's) could be opened by path and detached or
    // rewritten by a root command. Innermost first; only while the top mount there is bpffs.
    for m in table.iter().rev().filter(|m| m.fstype == "bpf") {
        while nix::sys::statfs::statfs(&m.point).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC) {
            nix::mount::umount2(&m.point, MntFlags::MNT_DETACH).map_err(err("unmounting bpffs at", &m.point))?;
        }
    }
    // /sys and everything mounted below it read-only: uevent_helper, tracing, cgroup v1 hierarchies,
    // securityfs, ...
    for m in table.iter().filter(|m| m.fstype != "bpf" && m.point.starts_with("/sys")) {
        remount_read_only(&m.point, &m.options)?;
    }
    // cgroup2 again, mounted from inside the cgroup namespace: its root is the run's cgroup, so no
    // cgroup.procs outside it has a path. Read-only: no sub-cgroups, limits or moves.
    for m in table.iter().filter(|m| m.fstype == "cgroup2") {
        // The kernel refuses a filesystem on a mount point that is the root of a mount of the same
        // filesystem (EBUSY): the host's view goes first.
        while nix::sys::statfs::statfs(&m.point)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        {
            nix::mount::umount2(&m.point, MntFlags::MNT_DETACH)
                .map_err(err("unmounting the host's cgroup2 at", &m.point))?;
        }
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("cgroup2"), &m.point, Some("cgroup2"), flags, None::<&str>)
            .map_err(err("mounting the command's cgroup2 at", &m.point))?;
    }
    // A procfs of the new PID namespace (host processes and their /proc/PID/root are not there), with
    // the kernel's knobs read-only (core_pattern, modprobe, binfmt_misc, sysrq).
    for m in table.iter().filter(|m| m.fstype == "proc") {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("proc"), &m.point, Some("proc"), flags, None::<&str>)
            .map_err(err("mounting the command's procfs at", &m.point))?;
        for sub in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
            bind_read_only(&m.point.join(sub))?;
        }
    }
    // The records of live runs (see `supervisor`): a root command must not forge or remove them.
    let records = Path::new(crate::supervisor::RUN_STATE_DIR).parent().unwrap_or(Path::new("/run/enforcer"));
    if records.is_dir() {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("tmpfs"), records, Some("tmpfs"), flags, Some("size=4k,mode=0755"))
            .map_err(err("hiding", records))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                 41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n\
                 50 23 0:40 / /mnt/with\\040space rw - bpf bpf rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[1].options, "rw,nosuid,nodev,noexec,relatime");
        assert_eq!(m[2].point, Path::new("/mnt/with space"));
        assert_eq!(
            kept_flags(&m[1].options),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
    }
}
