//! Kubernetes: per-scope egress policies computed from the cluster's Istio configuration
//! (ServiceEntry, DestinationRule, Sidecar, the `istio` mesh ConfigMap) and its Services, the way
//! Istio decides what a pod's sidecar would see, for the pods that opted in; delivered to a
//! [`crate::workload::PolicySink`] with the pods' cgroup directories.
//!
//! * [`model`]: the fields of Pods, Namespaces, Services and EndpointSlices that matter, and
//!   Istio's workload name of a pod (`source_workload`).
//! * [`adapter`]: the node adapter, Istio objects -> the configuration model.
//! * [`services`]: Kubernetes Services + EndpointSlices -> registry entries.
//! * [`policy`]: pure: governance, scopes, Istio's visibility rules -> `Vec<WorkloadPolicy>`.
//! * [`cgroup`]: the kubelet's cgroup tree (detected: systemd, kind, cgroupfs layouts), pod
//!   directories by UID.
//! * [`enrol`]: inotify on the kubelet's tree: pod directories as they are created.
//! * [`controller`]: the watches and the loop.
//!
//! # Enforcement window
//! A governed pod's cgroup paths (one per QoS class) are in its scope's policy as soon as the pod
//! is seen by the watch, before the kubelet creates the directory; when the directory appears
//! (inotify) it is mapped without a recompile (~1 ms). A pod directory of no known pod is denied
//! until the pod is known (`--kube-unknown-pods deny`, the default). Ungoverned pods are never
//! mapped: the node default (ALLOW_ANY) judges them.

pub mod adapter;
pub mod cgroup;
pub mod controller;
pub mod enrol;
pub mod model;
pub mod policy;
pub mod services;

pub use controller::{Controller, ControllerConfig, KubeError, UnknownPods};
