//! Per-workload policies: which cgroups are judged by which registry and mode. Produced by the
//! local `--workloads` file or by the Kubernetes controller, applied by the agent (each gets its
//! own policy id in the kernel maps; cgroups with no policy get the node default).

use std::path::PathBuf;

use crate::config::{Mode, Registry};

/// One workload's egress policy.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPolicy {
    /// The workload's name: the `source_workload` label and the name in events (e.g.
    /// "nginx", or "namespace/pod" under Kubernetes).
    pub name: String,
    /// The ServiceEntries (and DestinationRules) this workload may use.
    pub registry: Registry,
    /// Its outbound traffic policy.
    pub mode: Mode,
    /// The cgroup directories (absolute paths under the cgroup2 mount) whose processes — and
    /// descendants — this policy judges.
    pub cgroups: Vec<PathBuf>,
}

/// Where per-workload policies are delivered (the agent).
pub trait PolicySink: Send + Sync + 'static {
    /// Replace the whole set of workload policies. Called whenever the set changes.
    fn apply(&self, policies: Vec<WorkloadPolicy>);
}
