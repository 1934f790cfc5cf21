//! cgroup v2: find the mount, create and remove the child cgroup `enforcer run` confines a command in.

use std::{
    fs,
    io::{self, BufRead as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted in this mount namespace (checked /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup` (enforcer needs cgroup v2). Under `ip netns exec`, which remounts /sys, use `nsenter --net=/run/netns/NAME` instead"
    )]
    NoCgroup2,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory in the cgroup2 filesystem mounted at {1}")]
    NotCgroup2(PathBuf, PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { what, path: path.to_owned(), source }
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo (e.g. /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let f = fs::File::open("/proc/self/mountinfo").map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        // "36 35 98:0 / /mnt1 rw,noatime master:1 - cgroup2 none rw"
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mnt) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(unescape_mount(mnt)));
        }
    }
    Err(CgroupError::NoCgroup2)
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space, ...).
pub(crate) fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The calling process's cgroup v2 path relative to the mount ("/user.slice/..." or "/").
pub fn self_cgroup() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim();
    Ok(PathBuf::from(rel))
}

/// The cgroup id the kernel uses (`bpf_get_current_cgroup_id`): the inode number of the directory.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    Ok(fs::metadata(path).map_err(io_err("stat", path))?.ino())
}

/// Resolve a user-given cgroup: absolute inside the mount, or relative to it.
pub fn resolve(mount: &Path, given: &Path) -> Result<PathBuf, CgroupError> {
    let p =
        if given.starts_with(mount) { given.to_owned() } else { mount.join(given.strip_prefix("/").unwrap_or(given)) };
    if !p.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup2(p, mount.to_owned()));
    }
    Ok(p)
}

/// A child cgroup created for one `enforcer run`. Dropping it kills what is left inside and removes
/// the directory.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    /// Create `parent/name`.
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err("creating cgroup", &path))?;
        Ok(Self { path })
    }

    /// Take charge of an existing cgroup (one a killed `enforcer run` left behind): dropping it
    /// kills what is inside and removes it.
    pub fn adopt(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids still inside.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kill every process left in the cgroup (background children of the command), with
    /// `cgroup.kill` (Linux 5.14+) or SIGKILL per pid (repeated, so a process forked meanwhile
    /// is caught too), and wait (up to 2 s) until it is empty. Returns whether it is.
    pub fn kill_all(&self) -> bool {
        if self.pids().is_empty() {
            return true;
        }
        let cgroup_kill = fs::write(self.path.join("cgroup.kill"), "1").is_ok();
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            if !cgroup_kill {
                for pid in pids {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.pids().is_empty()
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::warn!(path = %self.path.display(), "could not remove cgroup");
    }
}
