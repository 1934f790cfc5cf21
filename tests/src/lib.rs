//! Shared guards and helpers for the enforcer integration tests.
//!
//! Everything that touches the kernel is wrapped in an RAII guard that cleans up on every path,
//! panics included:
//! - [`Netns`]: a network namespace with a veth pair, a private /24 (198.18.0.0/15) and /64
//!   (fd00::/8) per test, allocated under a cross-process lock so parallel tests (and parallel
//!   test binaries) never collide;
//! - [`Server`]: a real listener process (python3) inside a netns, killed on drop;
//! - [`Cgroup`]: a child cgroup of this process's own cgroup, emptied (cgroup.kill) and removed on
//!   drop;
//! - [`PinDir`] / [`Daemon`]: an `enforcer daemon` process and its bpffs pin directory; dropping
//!   stops the daemon (SIGTERM) and runs `enforcer unpin`;
//! - [`TempDir`].
//!
//! The tests need root, cgroup v2 and bpffs. Without them they FAIL with a message saying what is
//! missing (they never pass vacuously).
//!
//! One module per concern, all re-exported here (tests `use enforcer_tests::*`):
//! - `env`: unique names, the enforcer binary, [`preflight`], cgroup2 and python3 lookup;
//! - `process`: [`Outcome`], [`output_with_timeout`], [`LineFollower`], [`Frozen`];
//! - `enforcer`: [`enforcer`] / [`enforcer_run`] to completion, what the agent's log announces;
//! - `client`: the Python client ([`CLIENT_PY`]) and its results ([`ClientRun`], [`ConnResult`]);
//! - `files`, `registry`: [`TempDir`], ServiceEntry YAML, `--report-file` rows;
//! - `netns`, `cgroup`, `servers`: [`Netns`], [`Cgroup`], [`Server`] and the Python servers;
//! - `daemon`: [`PinDir`], [`Daemon`]; `workload`: [`Workload`] (a long-running `enforcer run`);
//! - `dns`: [`Dnsmasq`] and a DNS client; `tls`: [`Pki`]; `http`, `metrics`: the admin API;
//! - `prometheus`: a real [`Prometheus`] scraping the agent, and known traffic (traffic.py).
//! - `proxy`: the L7 proxy's client script under `enforcer run` ([`ProxyRun`]) and its YAML.
//! - `kube_api`: [`FakeApi`], a fake Kubernetes API server; `kube`: [`KubeNode`] (kubelet-shaped
//!   cgroups, pods in a test netns) and [`KubeDaemon`].
//! - `resolvers`: [`ResolverHost`] (a private mount namespace with nscd / unbound from Debian's
//!   packages), musl and Go clients, raw DNS messages and a recording upstream ([`CaptureDns`]).
//!
//! The Python programs the tests run live in `tests/helpers/*.py` (embedded with `include_str!`,
//! passed to `python3 -c`, so the test binaries are self-contained); `cargo xtask lint` runs
//! pyflakes over them.

mod cgroup;
mod client;
mod daemon;
mod dns;
mod enforcer;
mod env;
mod files;
mod http;
mod kube;
mod kube_api;
mod kube_pods;
mod metrics;
mod netns;
mod process;
mod prometheus;
mod proxy;
mod registry;
mod resolvers;
mod servers;
mod tls;
mod workload;

pub use cgroup::*;
pub use client::*;
pub use daemon::*;
pub use dns::*;
pub use enforcer::*;
pub use env::*;
pub use files::*;
pub use http::*;
pub use kube::*;
pub use kube_api::*;
pub use metrics::*;
pub use netns::*;
pub use process::*;
pub use prometheus::*;
pub use proxy::*;
pub use registry::*;
pub use resolvers::*;
pub use servers::*;
pub use tls::*;
pub use workload::*;
