//! Kubernetes: per-pod egress policies computed from the cluster's Istio configuration (ServiceEntry, DestinationRule, Sidecar, the `istio` mesh ConfigMap) the way Istio decides what a pod's sidecar would see, delivered to a [`crate::workload::PolicySink`] with each pod's cgroup directory.
//!
//! * [`cgroup`]: pod UID + QoS class -> the pod-level cgroup directory (systemd and cgroupfs
//!   kubelet drivers; containerd and CRI-O container scopes live below it and are covered by the
//!   kernel's ancestor walk).
//! * [`policy`]: pure: cluster state -> `Vec<WorkloadPolicy>` (exportTo, Sidecar egress hosts and
//!   workloadSelector, per-Sidecar `outboundTrafficPolicy`, mesh default mode).
//! * [`controller`]: watches (list + watch with resume/backoff, via kube-runtime reflectors), a
//!   debounced recompute, a one-second re-check for pods whose cgroup has not appeared yet, and
//!   the readiness flag.
//!
//! # Enforcement window
//! A pod's own policy is applied only after three things happened in order: the pod object
//! (bound to this node) was seen by the watch, its cgroup directory exists (the kubelet creates
//! it when it starts the pod sandbox), and the recompute ran (debounce ~200 ms, or the next
//! one-second re-check). Containers can start in between: until then processes in the pod are
//! judged by the daemon's default policy (policy id 0: `--mode` and `--registry` of the daemon,
//! which the daemon applies to the whole `--cgroup` tree it is attached to). Choose that default
//! deliberately: `REGISTRY_ONLY` with an empty registry is fail-closed (a container's first
//! connections may be refused during its first second), `ALLOW_ANY` is fail-open.

pub mod cgroup;
pub mod controller;
pub mod policy;

pub use controller::{ControllerConfig, KubeError, run, run_with};
