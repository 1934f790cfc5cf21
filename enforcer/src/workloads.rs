//! cgroup id -> workload name, for the `source_workload` metric label and events: the command under
//! `enforcer run`, the cgroup path (relative to the cgroup2 mount) under `enforcer daemon`. Ids of
//! cgroups outside the enforced tree are "unknown", which keeps label cardinality bounded.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const UNKNOWN: &str = "unknown";

pub struct Workloads {
    /// The enforced cgroup directory and the name of its own workload.
    root: PathBuf,
    root_name: String,
    /// Prefix for descendants' names (the cgroup path relative to the mount), or None to name
    /// descendants after the root (`run`).
    relative_to: Option<PathBuf>,
    names: HashMap<u64, String>,
    last_scan: Option<Instant>,
    /// Cgroup directories named by a workload policy: they and their descendants take its name.
    overrides: Vec<(PathBuf, String)>,
}

impl Workloads {
    /// Under `run`: the command's cgroup and everything below it is the command.
    pub fn for_run(cgroup: &Path, command: &str) -> Self {
        let mut w = Self {
            root: cgroup.to_owned(),
            root_name: command.to_string(),
            relative_to: None,
            names: HashMap::new(),
            last_scan: None,
            overrides: Vec::new(),
        };
        w.scan();
        w
    }

    /// Under `daemon`: each cgroup in the enforced tree is named by its path below the mount.
    pub fn for_daemon(cgroup: &Path, mount: &Path) -> Self {
        let root_name = cgroup
            .strip_prefix(mount)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| cgroup.display().to_string());
        let mut w = Self {
            root: cgroup.to_owned(),
            root_name,
            relative_to: Some(mount.to_owned()),
            names: HashMap::new(),
            last_scan: None,
            overrides: Vec::new(),
        };
        w.scan();
        w
    }

    /// Name the cgroups of workload policies after the policy (rescans).
    pub fn set_overrides(&mut self, overrides: Vec<(PathBuf, String)>) {
        self.overrides = overrides;
        self.names.clear();
        self.scan();
    }

    pub fn name(&mut self, id: u64) -> String {
        if id == 0 {
            return UNKNOWN.into();
        }
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        // A cgroup created since the last scan: look again, at most once a second.
        if self.last_scan.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            self.scan();
        }
        self.names.get(&id).cloned().unwrap_or_else(|| UNKNOWN.into())
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(md) = std::fs::metadata(&dir) else { continue };
            let name = match (
                self.overrides.iter().filter(|(d, _)| dir.starts_with(d)).max_by_key(|(d, _)| d.as_os_str().len()),
                &self.relative_to,
            ) {
                (Some((_, n)), _) => n.clone(),
                (None, None) => self.root_name.clone(),
                (None, Some(mount)) => {
                    dir.strip_prefix(mount).map(|p| p.display().to_string()).unwrap_or_else(|_| self.root_name.clone())
                }
            };
            self.names.insert(md.ino(), name);
            if depth >= 16 || self.names.len() > 50_000 {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
}
