//! cgroup id -> workload name, for the `source_workload` metric label and events: the command under
//! `enforcer run`, the cgroup path (relative to the cgroup2 mount) under `enforcer daemon`, the
//! workload policy's name for its cgroups. Ids of cgroups outside the enforced tree are "unknown",
//! which keeps label cardinality bounded.
//!
//! A workload's Istio source labels ([`Source`]): a workload policy named `namespace/name` (the
//! Kubernetes controller's `namespace/workload`, or a `--workloads` entry written that way) is workload
//! `name` in namespace `namespace`; any other name is the workload, namespace `unknown`. Metadata
//! given with [`Workloads::set_overrides`] (Kubernetes: app, version, canonical service, ...)
//! replaces that.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::metrics::Source;
pub use crate::metrics::UNKNOWN;

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
    /// Source labels by workload name, for names that carry more than a name.
    identities: HashMap<String, Source>,
}

/// The source labels a workload policy's name stands for (see the module docs).
pub fn policy_source(name: &str) -> Source {
    match name.split_once('/') {
        Some((ns, wl)) if !ns.is_empty() && !wl.is_empty() && !wl.contains('/') => Source::named(wl, Some(ns)),
        _ => Source::named(name, None),
    }
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
            identities: HashMap::new(),
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
            identities: HashMap::new(),
        };
        w.scan();
        w
    }

    /// Under `daemon --kubernetes`: only the cgroups of governed pods (named by their policies'
    /// workload identities) are workloads; everything else under the kubelet tree — ungoverned
    /// pods, unknown pod directories — is `unknown`, never its cgroup path (a label value per pod
    /// would grow without bound with pod churn).
    pub fn for_kubernetes(cgroup: &Path) -> Self {
        Self {
            root: cgroup.to_owned(),
            root_name: UNKNOWN.into(),
            relative_to: None,
            names: HashMap::new(),
            last_scan: None,
            overrides: Vec::new(),
            identities: HashMap::new(),
        }
    }

    /// Name the cgroups of workload policies after the policy, or their own workload (rescans).
    /// `identities`: the full source labels of some of those names (Kubernetes: the owner's
    /// name, the pod's namespace, its `app`/`version` and canonical-service labels); the other
    /// names get [`policy_source`]'s. Replaces the previous set.
    pub fn set_overrides(&mut self, overrides: Vec<(PathBuf, String)>, identities: HashMap<String, Source>) {
        self.identities = overrides.iter().map(|(_, n)| (n.clone(), policy_source(n))).collect();
        self.identities.extend(identities);
        self.overrides = overrides;
        self.names.clear();
        self.scan();
    }

    /// The overrides and identities of a set of workload policies: a cgroup with a workload
    /// identity (Kubernetes) is named `namespace/workload` and carries its full labels; any
    /// other is named after its policy.
    pub fn overrides_of(
        specs: &[crate::workload::WorkloadPolicy],
    ) -> (Vec<(PathBuf, String)>, HashMap<String, Source>) {
        let mut names = Vec::new();
        let mut identities = HashMap::new();
        for w in specs {
            for dir in crate::workload::expand_cgroups(&w.cgroups) {
                match w.workloads.get(&dir) {
                    Some(id) => {
                        identities.insert(id.key(), id.source());
                        names.push((dir, id.key()));
                    }
                    None => names.push((dir, w.name.clone())),
                }
            }
        }
        (names, identities)
    }

    /// The source labels of a cgroup's traffic.
    pub fn source(&mut self, id: u64) -> Source {
        let name = self.name(id);
        self.source_of(&name)
    }

    /// The source labels of the workload called `name` (`unknown`: the unknown source).
    pub fn source_of(&self, name: &str) -> Source {
        match self.identities.get(name) {
            Some(s) => s.clone(),
            None => Source::named(name, None),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_become_source_labels() {
        let s = policy_source("shop/web-7d9f");
        assert_eq!((s.workload.as_str(), s.namespace.as_str()), ("web-7d9f", "shop"));
        assert_eq!((s.canonical_service.as_str(), s.canonical_revision.as_str()), ("web-7d9f", "latest"));
        assert_eq!((s.app.as_str(), s.principal.as_str(), s.cluster.as_str()), ("unknown", "unknown", "unknown"));
        let s = policy_source("nginx");
        assert_eq!((s.workload.as_str(), s.namespace.as_str()), ("nginx", "unknown"));
        assert_eq!(policy_source("system.slice/a/b").workload, "system.slice/a/b");
        assert_eq!(policy_source("unknown"), Source::unknown());
    }

    #[test]
    fn kubernetes_identities_name_cgroups_and_carry_their_labels() {
        use crate::workload::{WorkloadName, WorkloadPolicy};
        let dir = std::env::temp_dir().join(format!("enf-wl-id-{}", std::process::id()));
        let (a, b) = (dir.join("pod-a"), dir.join("pod-b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let mut id = WorkloadName::new("web", "shop");
        id.app = Some("shopfront".into());
        id.canonical_service = "shopfront".into();
        let policy = WorkloadPolicy {
            name: "kube:shop".into(),
            registry: Default::default(),
            mode: crate::config::Mode::RegistryOnly,
            cgroups: vec![a.clone(), b.clone()],
            workloads: [(a.clone(), id)].into_iter().collect(),
        };
        let (names, ids) = Workloads::overrides_of(&[policy]);
        assert_eq!(names, vec![(a.clone(), "shop/web".to_string()), (b.clone(), "kube:shop".to_string())]);
        let mut w = Workloads::for_daemon(&dir, &std::env::temp_dir());
        w.set_overrides(names, ids);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let s = w.source(ino(&a));
        assert_eq!((s.workload.as_str(), s.namespace.as_str()), ("web", "shop"));
        assert_eq!(
            (s.app.as_str(), s.canonical_service.as_str(), s.version.as_str()),
            ("shopfront", "shopfront", "unknown")
        );
        assert_eq!(s.canonical_revision, "latest");
        assert_eq!(w.source(ino(&b)).workload, "kube:shop");
        // Under Kubernetes a cgroup of no policy is unknown, not its path.
        let mut k = Workloads::for_kubernetes(&dir);
        std::fs::create_dir_all(dir.join("pod-c")).unwrap();
        k.set_overrides(vec![(a.clone(), "shop/web".into())], HashMap::new());
        assert_eq!(k.source(ino(&dir.join("pod-c"))), Source::unknown());
        assert_eq!(k.source(ino(&a)).workload, "web");
        // A later set replaces the identities.
        w.set_overrides(vec![(a.clone(), "shop/web".into())], HashMap::new());
        assert_eq!(w.source(ino(&a)).app, "unknown");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
