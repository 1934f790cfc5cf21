//! enforcer: Istio's egress model (ServiceEntry registries, ALLOW_ANY / REGISTRY_ONLY) enforced
//! in the kernel by cgroup BPF programs, without sidecars. The binary is `main.rs`; the modules
//! are a library so integration tests and tools can use the pure parts (config, policy).

pub mod admin;
pub mod agent;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod config;
pub mod confine;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod events;
pub mod exit;
pub mod kube;
pub mod load;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod registryz;
pub mod resolver;
pub mod run;
pub mod serve;
pub mod suggest;
pub mod supervisor;
pub mod ui;
pub mod watch;
pub mod workload;
pub mod workloads;
