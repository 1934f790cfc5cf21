//! Command-line interface.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Mode;

#[derive(Parser, Debug)]
#[command(
    name = "enforcer",
    version,
    about = "eBPF egress enforcer: Istio ServiceEntry registries enforced at connect()/sendmsg()",
    after_help = "Exit status of `run`: the command's own status; 128+N if it was killed by signal N; \
                  125 if enforcer itself failed; 126 if the command could not be executed; 127 if it was not found."
)]
pub struct Cli {
    /// Log filter for the agent's own logs (e.g. info, debug, enforcer=trace). Also RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one command confined to the registry: connects elsewhere fail with EPERM.
    Run(RunArgs),
    /// Enforce on an existing cgroup (node-wide use), pinned so enforcement survives restarts.
    Daemon(DaemonArgs),
    /// Validate registry files like `istioctl analyze`: errors name file, line and field.
    Check(CheckArgs),
    /// Remove what a daemon pinned (detaches its programs from the cgroup).
    Unpin(UnpinArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// ServiceEntry YAML file or directory (repeatable). MeshConfig / `istio` ConfigMap /
    /// IstioOperator documents in these paths set the mode.
    #[arg(long = "registry", short = 'r', value_name = "PATH")]
    pub registry: Vec<PathBuf>,
    /// Outbound traffic policy; overrides any MeshConfig in the registry paths.
    /// Default: REGISTRY_ONLY.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Also allow HOST[:PORT] (a name is resolved once at start; no port means every port).
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    pub allow: Vec<String>,
    /// Also allow CIDR[:PORT], e.g. 10.0.0.0/8:443 or [2001:db8::/32]:443.
    #[arg(long = "allow-cidr", value_name = "CIDR[:PORT]")]
    pub allow_cidr: Vec<String>,
    /// Do not allow port 53 to the resolvers in /etc/resolv.conf.
    #[arg(long)]
    pub no_host_dns: bool,
    /// Forward the kernel programs' debug log (aya-log) to the agent log.
    #[arg(long)]
    pub ebpf_log: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Summary printed to stderr when the command exits.
    #[arg(long, value_enum, default_value = "text")]
    pub report: ReportFormat,
    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    pub report_file: Option<PathBuf>,
    /// Print no deny lines and no summary (exit status and --report-file still work).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Parent of the child cgroup the command runs in (default: enforcer's own cgroup).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<PathBuf>,
    /// The command and its arguments, passed through exactly.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// cgroup to enforce on (absolute, or relative to the cgroup2 mount); its descendants too.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// bpffs directory for pinned maps and links (default: /sys/fs/bpf/enforcer/cg<cgroup id>).
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Write the daemon's pid here once enforcement is in place.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Files or directories to validate.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Treat warnings as errors (exit 1).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct UnpinArgs {
    /// The daemon's pin directory.
    #[arg(long, value_name = "DIR", conflicts_with = "cgroup")]
    pub pin_dir: Option<PathBuf>,
    /// The cgroup the daemon enforced on (finds the default pin directory).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}
