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
    /// Log filter for the agent's own logs (e.g. info, debug, enforcer=trace); RUST_LOG also
    /// works. Default: warn for `run` (keep the command's terminal clean), info otherwise.
    #[arg(long, global = true)]
    pub log: Option<String>,
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
    /// Show the running agent's registry endpoints, like `istioctl proxy-config endpoint`.
    Registry(RegistryArgs),
    /// Show the running agent's denied/audited connections, like `hubble observe`.
    Events(EventsArgs),
    /// Draft ServiceEntry YAML for the destinations the agent saw denied or audited.
    Suggest(SuggestArgs),
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The agent's admin address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
    /// Keep printing new events as they happen.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print JSON objects (one per line) instead of human lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SuggestArgs {
    /// The agent's admin address (its recent events are used).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
    /// Read events from this NDJSON file instead (e.g. saved `enforcer events --json` output).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Namespace for the drafted ServiceEntries.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// The agent's admin address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
    /// Print the registryz JSON instead of the table.
    #[arg(long)]
    pub json: bool,
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
    /// Count packets and bytes per destination service on this interface (TC clsact/tcx egress
    /// and ingress; repeatable). Counting only: traffic is never changed.
    #[arg(long = "interface", short = 'i', value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Steer connections to TLS/HTTPS ports of registry services through the proxy, which reads
    /// the ClientHello SNI (no decryption) and lets through only SNIs the registry lists for that
    /// port (shared CDN addresses no longer let unlisted hosts through).
    #[arg(long)]
    pub sni_check: bool,
    /// Do not attach the TCP connection accounting (sock_ops): no istio_tcp_connections_* for
    /// allowed connections (for measuring its cost).
    #[arg(long)]
    pub no_conn_accounting: bool,
    /// How denied/audited connections are printed on stderr: human lines or JSON objects.
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub event_format: ReportFormat,
    #[command(flatten)]
    pub dns: DnsArgs,
    /// Do not watch the registry paths for changes (reload only on SIGHUP).
    #[arg(long)]
    pub no_watch: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DnsArgs {
    /// Upstream resolver for registry lookups and the DNS forwarder, IP[:PORT] (repeatable;
    /// default: the nameservers of /etc/resolv.conf).
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub upstreams: Vec<std::net::SocketAddr>,
    /// Do not steer the workload's port-53 traffic to the DNS forwarder (names are then only
    /// resolved by the agent; wildcard hosts cannot be learned).
    #[arg(long)]
    pub no_dns_steer: bool,
    /// Port of the DNS forwarder on 127.0.0.1 and ::1 (default: any free port for `run`, 15053
    /// for `daemon`, so a restarted daemon takes over the same address).
    #[arg(long, value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// Answer for names outside the registry (and `--allow` hosts) under REGISTRY_ONLY:
    /// `refused` (the default: the query never leaves the host), `nxdomain`, or `answer`
    /// (forward and answer, allow nothing: the name reaches the upstream). AUDIT and ALLOW_ANY
    /// always answer (AUDIT reports the names it would refuse).
    #[arg(long, value_enum, default_value = "refused", value_name = "HOW")]
    pub unknown_names: UnknownNamesArg,
    /// Also treat DOMAIN as a search domain of the workloads' resolvers (resolv.conf's `search`
    /// list is always used): expansions of refused names are refused too (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Forward EDNS CLIENT-SUBNET options of the workloads' queries (default: stripped, like
    /// every EDNS option but COOKIE and PADDING, under REGISTRY_ONLY).
    #[arg(long)]
    pub dns_forward_ecs: bool,
    /// `run`: leave the command the host's nsswitch.conf, nscd and systemd-resolved sockets (names
    /// resolved through nscd or nss-resolve are then not learned, and their connects fail).
    #[arg(long)]
    pub no_dns_isolation: bool,
    /// Shortest re-resolution interval / map lifetime for a DNS answer (TTL 0 gets this); at least
    /// 1s (shorter would re-resolve TTL-0 names in a loop).
    #[arg(long, default_value = "5s", value_parser = parse_ttl_floor, value_name = "DURATION")]
    pub dns_ttl_floor: std::time::Duration,
    /// Longest re-resolution interval / map lifetime for a DNS answer.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_ttl_ceiling: std::time::Duration,
    /// How long an address stays allowed after its answer's TTL (clients may still use it).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_grace: std::time::Duration,
    /// How long the last good addresses of a host stay allowed while its lookups fail.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_failure_grace: std::time::Duration,
    /// Timeout of one upstream DNS attempt.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub dns_timeout: std::time::Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnknownNamesArg {
    Answer,
    Nxdomain,
    Refused,
}

fn parse_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
        .or_else(|_| {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{s}` is not IP[:PORT] (e.g. 10.0.0.2 or 10.0.0.2:5353 or [2001:db8::53]:53)"))
}

/// `500ms`, `5s`, `10m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 5s, 10m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `--dns-ttl-floor`: a duration of at least [`crate::dns::MIN_TTL_FLOOR`].
fn parse_ttl_floor(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < crate::dns::MIN_TTL_FLOOR {
        return Err(format!(
            "`{s}` is below the minimum of {}s: a shorter floor re-resolves TTL-0 names in a loop and can expire a learned address before the workload connects; use 1s or more",
            crate::dns::MIN_TTL_FLOOR.as_secs()
        ));
    }
    Ok(d)
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
    /// Serve the admin HTTP API (/debug/registryz, /metrics) on this address while CMD runs.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
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
    /// Follow the Kubernetes cluster (in-cluster config or KUBECONFIG): ServiceEntry,
    /// DestinationRule and Sidecar objects, the `istio` mesh ConfigMap and the pods on this node
    /// (NODE_NAME), each pod enforced with the registry Istio would give its sidecar.
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name for `--kubernetes` (default: $NODE_NAME, else the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Per-workload policies: a YAML file mapping cgroup paths/globs (e.g. system.slice/nginx.service)
    /// to their own registries and modes (see README). Reloaded with the registry.
    #[arg(long, value_name = "FILE")]
    pub workloads: Option<PathBuf>,
    /// Admin HTTP listener (/debug/registryz, /metrics, /healthz, /readyz). Loopback by default.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), std::time::Duration::from_millis(500));
        assert_eq!(parse_duration("5").unwrap(), std::time::Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), std::time::Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn ttl_floor_has_a_minimum() {
        assert_eq!(parse_ttl_floor("1s").unwrap(), std::time::Duration::from_secs(1));
        let e = parse_ttl_floor("0s").unwrap_err();
        assert!(e.contains("below the minimum of 1s"), "{e}");
        assert!(parse_ttl_floor("500ms").is_err());
    }

    #[test]
    fn unknown_names_default_is_refused() {
        let cli = Cli::try_parse_from(["enforcer", "run", "--", "true"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.policy.dns.unknown_names, UnknownNamesArg::Refused);
        assert!(Cli::try_parse_from(["enforcer", "run", "--dns-ttl-floor", "0s", "--", "true"]).is_err());
    }

    #[test]
    fn upstreams() {
        assert_eq!(parse_upstream("10.0.0.2").unwrap().to_string(), "10.0.0.2:53");
        assert_eq!(parse_upstream("10.0.0.2:5353").unwrap().to_string(), "10.0.0.2:5353");
        assert_eq!(parse_upstream("2001:db8::53").unwrap().to_string(), "[2001:db8::53]:53");
        assert!(parse_upstream("dns.example").is_err());
    }
}
