//! Fail closed when `enforcer run` dies: its links and maps are pinned (so the command stays
//! confined), and whoever notices first kills the command with its cgroup and removes the pins.
//!
//! Each run keeps a record, `/run/enforcer/run/<pid>-<start>.json` (its pid, cgroup and pin
//! directory), written before anything is created and removed after everything is, and holds an
//! exclusive `flock` on it for as long as it lives: the kernel releases the lock when the process
//! dies, however it dies. So a record whose lock can be taken belongs to a dead run. Three places
//! look for them:
//! - the run's supervisor, a small process (this binary) started by the run in its own session,
//!   outside the command's namespaces and cgroup, blocked on the lock: it wakes the moment the run
//!   is gone, and cleans up if the record is still there (a normal exit removes it first);
//! - the next `enforcer run`, before it starts;
//! - `enforcer unpin --stale`.
//!
//! Cleaning is: kill the cgroup (`cgroup.kill`, or SIGKILL per pid) while the programs are still
//! attached, then remove the pins (the programs detach), the cgroup and the record.

use std::{
    fs::{self, File},
    io::Write as _,
    os::{linux::fs::MetadataExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{cgroup::ChildCgroup, dataplane};

/// argv[1] that makes this binary a run's supervisor.
pub const SUPERVISOR_ARG: &str = "__enforcer-run-supervisor";
/// Records of live (locked) and dead (unlocked) runs.
pub const RUN_STATE_DIR: &str = "/run/enforcer/run";
/// bpffs directory under which each run pins its links and maps (`run-<pid>-<start>`).
pub const RUN_PIN_ROOT: &str = "/sys/fs/bpf/enforcer";

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("record {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("removing the pins of {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: Box<dataplane::DataplaneError>,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SupervisorError + 'a {
    move |source| SupervisorError::Io { what, path: path.to_owned(), source }
}

/// What a run leaves behind if it dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's enforcer process.
    pub pid: u32,
    /// The command's cgroup (`.../enforcer-run-<pid>`).
    pub cgroup: PathBuf,
    /// Where its links and maps are pinned.
    pub pin_dir: PathBuf,
    /// The command's name, for messages.
    pub command: String,
}

impl RunRecord {
    /// The record for this process, with its cgroup under `parent`. `<pid>-<start time>` names it:
    /// unique even when a pid is reused.
    pub fn for_this_run(parent: &Path, command: &str) -> Self {
        let pid = std::process::id();
        let tag = format!("{pid}-{}", start_time(pid).unwrap_or(0));
        Self {
            pid,
            cgroup: parent.join(format!("enforcer-run-{pid}")),
            pin_dir: Path::new(RUN_PIN_ROOT).join(format!("run-{tag}")),
            command: command.to_string(),
        }
    }

    fn file_name(&self) -> String {
        let tag = self.pin_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{}.json", tag.trim_start_matches("run-"))
    }

    /// Refuse to act on a record that does not look like one a run wrote (a stray or edited file
    /// must not make `unpin --stale` kill some other cgroup or remove other pins).
    fn check(&self, path: &Path) -> Result<(), SupervisorError> {
        let bad = |message: String| SupervisorError::Record { path: path.to_owned(), message };
        let cg_name = self.cgroup.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !cg_name.starts_with("enforcer-run-") || !self.cgroup.is_absolute() {
            return Err(bad(format!("cgroup {} is not a run's cgroup (enforcer-run-*)", self.cgroup.display())));
        }
        let pin_name = self.pin_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if self.pin_dir.parent() != Some(Path::new(RUN_PIN_ROOT)) || !pin_name.starts_with("run-") {
            return Err(bad(format!("pin dir {} is not a run's ({RUN_PIN_ROOT}/run-*)", self.pin_dir.display())));
        }
        Ok(())
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last `)`.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// The live run's record, locked. Dropping it cleans up (kill, unpin, remove the cgroup) and
/// removes the record, in that order.
pub struct RunLock {
    path: PathBuf,
    lock: Option<Flock<File>>,
    pub record: RunRecord,
}

impl RunLock {
    /// Write and lock the record: to a temporary name, locked, then renamed into place, so a
    /// stale scan never sees an unlocked record of a live run.
    pub fn create(record: RunRecord) -> Result<Self, SupervisorError> {
        let dir = Path::new(RUN_STATE_DIR);
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let _ = fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let path = dir.join(record.file_name());
        let tmp = dir.join(format!(".{}.tmp", record.file_name()));
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(serde_json::to_string_pretty(&record).expect("record serializes").as_bytes())
            .map_err(io_err("writing", &tmp))?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, source)| SupervisorError::Lock { path: tmp.clone(), source })?;
        fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        Ok(Self { path, lock: Some(lock), record })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start the supervisor: a process in its own session (the terminal's signals and hangup do
    /// not reach it), outside the command's cgroup and namespaces, that cleans up if this process
    /// dies without doing it.
    pub fn spawn_supervisor(&self) -> Result<(), SupervisorError> {
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0("enforcer")
            .arg(SUPERVISOR_ARG)
            .arg(&self.path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        // Not waited for: it outlives this process when this process is killed.
        cmd.spawn().map(drop).map_err(io_err("starting the supervisor for", &self.path))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Err(e) = clean(&self.record) {
            tracing::warn!("cleaning up after the run: {e}");
        }
        let _ = fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// What cleaning a dead run did.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub killed: usize,
    pub pins: usize,
    pub cgroup_removed: bool,
}

/// Kill the run's cgroup while its programs are still attached, then remove its pins and the
/// cgroup. Idempotent.
pub fn clean(record: &RunRecord) -> Result<Cleaned, SupervisorError> {
    let mut out = Cleaned::default();
    let cgroup = record.cgroup.exists().then(|| ChildCgroup::adopt(record.cgroup.clone()));
    if let Some(cg) = &cgroup {
        out.killed = cg.pids().len();
        if !cg.kill_all() {
            // Fail closed: whatever is left stays confined by the pinned programs.
            std::mem::forget(cgroup);
            return Err(SupervisorError::Record {
                path: record.cgroup.clone(),
                message: format!(
                    "processes {:?} are still in the cgroup after SIGKILL; its programs stay pinned at {}",
                    ChildCgroup::adopt(record.cgroup.clone()).pids(),
                    record.pin_dir.display()
                ),
            });
        }
    }
    if record.pin_dir.exists() {
        out.pins = dataplane::unpin_all(&record.pin_dir)
            .map_err(|e| SupervisorError::Unpin { path: record.pin_dir.clone(), source: Box::new(e) })?
            .len();
    }
    if let Some(cg) = cgroup {
        drop(cg); // removes it
        out.cgroup_removed = !record.cgroup.exists();
    }
    Ok(out)
}

/// The record at `path` if `file` (locked) is still that file: a run that exits normally removes
/// its record before it unlocks it.
fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.st_ino() == b.st_ino() && a.st_dev() == b.st_dev() && a.st_nlink() > 0,
        _ => false,
    }
}

fn read_record(path: &Path) -> Result<RunRecord, SupervisorError> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    let r: RunRecord = serde_json::from_str(&text)
        .map_err(|e| SupervisorError::Record { path: path.to_owned(), message: e.to_string() })?;
    r.check(path)?;
    Ok(r)
}

fn describe(r: &RunRecord, c: &Cleaned) -> String {
    format!(
        "the agent of `enforcer run -- {}` (pid {}) is gone: killed {} process{} of its command, removed {} pin{} ({}){}",
        r.command,
        r.pid,
        c.killed,
        if c.killed == 1 { "" } else { "es" },
        c.pins,
        if c.pins == 1 { "" } else { "s" },
        r.pin_dir.display(),
        if c.cgroup_removed { format!(" and its cgroup {}", r.cgroup.display()) } else { String::new() }
    )
}

/// Clean up after every dead run; one message per run cleaned (or that could not be).
pub fn clean_stale() -> Vec<String> {
    let mut out = Vec::new();
    let records: Vec<PathBuf> = fs::read_dir(RUN_STATE_DIR)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default();
    for path in records {
        let Ok(f) = File::open(&path) else { continue };
        let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::Error::EWOULDBLOCK)) => continue, // alive
            Err((_, e)) => {
                out.push(format!("cannot lock {}: {e}", path.display()));
                continue;
            }
        };
        if !still_linked(&lock, &path) {
            continue; // cleaned meanwhile
        }
        match read_record(&path).and_then(|r| clean(&r).map(|c| (r, c))) {
            Ok((r, c)) => {
                let _ = fs::remove_file(&path);
                out.push(describe(&r, &c));
            }
            Err(e) => out.push(format!("{e}; left in place")),
        }
    }
    // Pin directories of runs without a record (the record was deleted by hand): not ours to judge.
    if let Ok(rd) = fs::read_dir(RUN_PIN_ROOT) {
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(tag) = name.strip_prefix("run-") else { continue };
            // Checked now, not from the listing above: a run starting meanwhile has its record by
            // the time its pin directory exists.
            if p.exists() && !Path::new(RUN_STATE_DIR).join(format!("{tag}.json")).exists() {
                out.push(format!(
                    "{} has no record in {RUN_STATE_DIR}; left in place (`enforcer unpin --pin-dir {}` removes it and detaches its programs)",
                    p.display(),
                    p.display()
                ));
            }
        }
    }
    out
}

/// `enforcer unpin --stale`.
pub fn unpin_stale() -> anyhow::Result<i32> {
    crate::preflight::check_privileges()?;
    let msgs = clean_stale();
    if msgs.is_empty() {
        eprintln!("enforcer: no stale runs");
    }
    for m in msgs {
        eprintln!("enforcer: {m}");
    }
    Ok(0)
}

/// If this process was started as a run's supervisor, be it; never returns then.
pub fn main_if_supervisor() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(SUPERVISOR_ARG)) {
        return;
    }
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("enforcer: {SUPERVISOR_ARG} is internal to `enforcer run`");
        std::process::exit(crate::exit::ENFORCER_FAILED);
    };
    std::process::exit(supervise(&path));
}

fn supervise(path: &Path) -> i32 {
    // Read while the run is alive: what it records now is what gets cleaned, whatever happens to
    // the file later.
    let (Ok(mut f), Ok(record)) = (File::open(path), read_record(path)) else { return 0 };
    // Blocks for as long as the run lives.
    let lock = loop {
        match Flock::lock(f, FlockArg::LockExclusive) {
            Ok(l) => break l,
            Err((back, nix::Error::EINTR)) => f = back,
            Err((_, e)) => {
                eprintln!("enforcer: supervisor: locking {}: {e}", path.display());
                return 1;
            }
        }
    };
    // A run that exits normally removes its cgroup and pins before it unlocks.
    if !record.cgroup.exists() && !record.pin_dir.exists() {
        return 0;
    }
    match clean(&record) {
        Ok(c) => {
            if still_linked(&lock, path) {
                let _ = fs::remove_file(path);
            }
            eprintln!("enforcer: {}", describe(&record, &c));
            0
        }
        Err(e) => {
            eprintln!("enforcer: supervisor: {e}; `enforcer unpin --stale` retries");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_their_run_and_are_checked() {
        let r = RunRecord::for_this_run(Path::new("/sys/fs/cgroup/x"), "make");
        assert_eq!(r.cgroup, Path::new(&format!("/sys/fs/cgroup/x/enforcer-run-{}", std::process::id())));
        let name = r.pin_dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("run-{}-", std::process::id())), "{name}");
        assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
        assert_eq!(r.file_name(), format!("{}.json", &name[4..]));
        r.check(Path::new("f")).unwrap();
        let mut bad = r.clone();
        bad.cgroup = PathBuf::from("/sys/fs/cgroup/system.slice");
        assert!(bad.check(Path::new("f")).is_err());
        let mut bad = r.clone();
        bad.pin_dir = PathBuf::from("/sys/fs/bpf/enforcer/cg123");
        assert!(bad.check(Path::new("f")).is_err());
    }
}
