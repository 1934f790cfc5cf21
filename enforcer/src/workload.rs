//! Per-workload policies: which cgroups are judged by which registry and mode. Produced by the
//! local `--workloads` file or by the Kubernetes controller, applied by the agent (each gets its
//! own policy id in the kernel maps; cgroups with no policy get the node default).

use std::{collections::BTreeMap, path::PathBuf};

use futures::future::BoxFuture;

use crate::config::{Mode, Registry};
use crate::metrics::{Source, UNKNOWN};

/// Istio's identity of the workload behind a cgroup: `source_workload` (the owning Deployment,
/// StatefulSet, DaemonSet, CronJob, ... or the pod), `source_workload_namespace`, and the
/// pod's labels Istio reports (`source_app`, `source_version`, the canonical service and
/// revision).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadName {
    pub name: String,
    pub namespace: String,
    /// The `app` label (`source_app`), if set.
    pub app: Option<String>,
    /// The `version` label (`source_version`), if set.
    pub version: Option<String>,
    /// `source_canonical_service`: `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name.
    pub canonical_service: String,
    /// `source_canonical_revision`: `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub canonical_revision: String,
}

impl WorkloadName {
    /// A workload known by name and namespace only: Istio's fallbacks for the rest.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> WorkloadName {
        let name = name.into();
        WorkloadName {
            canonical_service: name.clone(),
            name,
            namespace: namespace.into(),
            app: None,
            version: None,
            canonical_revision: "latest".into(),
        }
    }

    /// The name its cgroups carry in events and the workload table: `namespace/name` (two
    /// workloads of one name in different namespaces stay apart).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its `source_*` metric labels.
    pub fn source(&self) -> Source {
        Source {
            workload: self.name.clone(),
            namespace: self.namespace.clone(),
            app: self.app.clone().unwrap_or_else(|| UNKNOWN.into()),
            version: self.version.clone().unwrap_or_else(|| UNKNOWN.into()),
            canonical_service: self.canonical_service.clone(),
            canonical_revision: self.canonical_revision.clone(),
            ..Source::unknown()
        }
    }
}

/// One policy: a registry and mode, and the cgroups it judges. Under Kubernetes one policy serves
/// every pod of a scope (a namespace and its Sidecar), named after the scope.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPolicy {
    /// The policy's name, which keeps its policy id stable for as long as it exists (e.g.
    /// "nginx" from a workloads file, or a scope such as "kube:team-a" under Kubernetes). Also the
    /// workload name in events and metrics for cgroups not listed in `workloads`.
    pub name: String,
    /// The ServiceEntries (and DestinationRules) this workload may use.
    pub registry: Registry,
    /// Its outbound traffic policy.
    pub mode: Mode,
    /// The cgroup directories (absolute paths under the cgroup2 mount) whose processes — and
    /// descendants — this policy judges.
    pub cgroups: Vec<PathBuf>,
    /// The workload identity of each cgroup directory in `cgroups` (Kubernetes: the pod's owner;
    /// empty for workloads files, whose cgroups are named after the policy). For the
    /// `source_workload` / `source_workload_namespace` labels and events.
    pub workloads: BTreeMap<PathBuf, WorkloadName>,
}

/// How much of the kernel's policy maps an apply used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapUse {
    /// ALLOW entries in the kernel after the apply, and the map's capacity.
    pub allow_entries: usize,
    pub allow_capacity: usize,
}

/// Where per-workload policies are delivered (the agent).
pub trait PolicySink: Send + Sync + 'static {
    /// Replace the whole set of workload policies (one ordered apply); resolves once the kernel
    /// holds them. `Err` (e.g. a full map) leaves the previous set in place.
    fn apply(&self, policies: Vec<WorkloadPolicy>) -> BoxFuture<'static, Result<MapUse, String>>;
    /// Map cgroup directories that appeared since the last apply to their policies (nothing is
    /// recompiled): the fast path when a pod's cgroup is created.
    fn sync_cgroups(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// The local form (`enforcer daemon --workloads FILE`): several services on one host, each with
/// its own registry and mode.
///
/// ```yaml
/// workloads:
/// - name: nginx
///   cgroups: ["system.slice/nginx.service"]     # globs, relative to the cgroup2 mount
///   registry: ["nginx/"]                          # files/dirs, relative to this file
///   mode: REGISTRY_ONLY                           # default: the daemon's mode
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadsFile {
    workloads: Vec<WorkloadEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadEntry {
    name: String,
    cgroups: Vec<String>,
    #[serde(default)]
    registry: Vec<PathBuf>,
    #[serde(default)]
    mode: Option<String>,
}

/// Read and validate a workloads file: every problem is reported with the file and workload name;
/// registries load through the same validation as `--registry`.
pub fn load_file(
    path: &std::path::Path,
    mount: &std::path::Path,
    default_mode: Mode,
) -> anyhow::Result<Vec<WorkloadPolicy>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: WorkloadsFile = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}; fix: see the workloads file format in README", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for w in file.workloads {
        if !names.insert(w.name.clone()) {
            errors.push(format!(
                "{}: workload {:?} is listed twice; fix: give each workload a unique name",
                path.display(),
                w.name
            ));
            continue;
        }
        if w.cgroups.is_empty() {
            errors.push(format!("{}: workload {:?} has no cgroups; fix: list its cgroup paths or globs, e.g. system.slice/nginx.service", path.display(), w.name));
            continue;
        }
        let mode = match &w.mode {
            Some(m) => match m.parse::<Mode>() {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("{}: workload {:?}: mode: {e}", path.display(), w.name));
                    continue;
                }
            },
            None => default_mode,
        };
        let paths: Vec<PathBuf> =
            w.registry.iter().map(|p| if p.is_absolute() { p.clone() } else { base.join(p) }).collect();
        let registry = if paths.is_empty() {
            Registry::default()
        } else {
            match crate::config::load_paths(&paths) {
                Ok(r) => r,
                Err(e) => {
                    let diags: Vec<String> = e.diagnostics().iter().map(|d| format!("  {d}")).collect();
                    errors.push(format!(
                        "{}: workload {:?}: invalid registry: {e}\n{}",
                        path.display(),
                        w.name,
                        diags.join("\n")
                    ));
                    continue;
                }
            }
        };
        let cgroups = w.cgroups.iter().map(|c| mount.join(c.trim_start_matches('/'))).collect();
        out.push(WorkloadPolicy { name: w.name, registry, mode, cgroups, workloads: BTreeMap::new() });
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    Ok(out)
}

/// Expand a policy's cgroup patterns (globs allowed) into the existing directories.
pub fn expand_cgroups(patterns: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let s = p.to_string_lossy();
        if s.contains(['*', '?', '[']) {
            if let Ok(paths) = glob::glob(&s) {
                out.extend(paths.filter_map(|r| r.ok()).filter(|p| p.is_dir()));
            }
        } else if p.is_dir() {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_file_loads_and_reports_every_problem() {
        let dir = std::env::temp_dir().join(format!("enf-wl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nginx")).unwrap();
        std::fs::write(
            dir.join("nginx/se.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  addresses: [192.0.2.1]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: STATIC\n  endpoints: [{address: 192.0.2.1}]\n",
        )
        .unwrap();
        let f = dir.join("workloads.yaml");
        std::fs::write(&f, "workloads:\n- name: nginx\n  cgroups: [\"system.slice/nginx.service\"]\n  registry: [nginx/]\n  mode: AUDIT\n").unwrap();
        let w = load_file(&f, std::path::Path::new("/sys/fs/cgroup"), Mode::RegistryOnly).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].mode, Mode::Audit);
        assert_eq!(w[0].registry.services.len(), 1);
        assert_eq!(w[0].cgroups, vec![PathBuf::from("/sys/fs/cgroup/system.slice/nginx.service")]);

        std::fs::write(&f, "workloads:\n- name: a\n  cgroups: []\n- name: b\n  cgroups: [x]\n  mode: SOMETIMES\n")
            .unwrap();
        let e = load_file(&f, std::path::Path::new("/sys/fs/cgroup"), Mode::RegistryOnly).unwrap_err().to_string();
        assert!(e.contains("\"a\" has no cgroups") && e.contains("\"b\": mode"), "{e}");
        std::fs::write(&f, "workloads:\n- name: a\n  cgroup: [x]\n").unwrap();
        let e = load_file(&f, std::path::Path::new("/sys/fs/cgroup"), Mode::RegistryOnly).unwrap_err().to_string();
        assert!(e.contains("workloads.yaml") && e.contains("cgroup"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn globs_expand_to_existing_dirs() {
        let dir = std::env::temp_dir().join(format!("enf-glob-{}", std::process::id()));
        for d in ["system.slice/batch-1.service", "system.slice/batch-2.service", "system.slice/web.service"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let got = expand_cgroups(&[dir.join("system.slice/batch-*.service"), dir.join("system.slice/missing.service")]);
        assert_eq!(got, vec![dir.join("system.slice/batch-1.service"), dir.join("system.slice/batch-2.service")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
