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
                  125 if enforcer itself failed or the command line is wrong (usage errors); 126 if the command could not be executed; 127 if it was not found."
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
    /// Only events from this far back ("10m", "2h") or since this RFC 3339 time. Default: this
    /// AUDIT period (since the mode last became AUDIT).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
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
    /// With --sni-check (implied): also steer the targetPorts that carry TLS (of TLS/HTTPS
    /// ports, or of HTTP ports whose DestinationRule originates TLS) through the SNI check.
    /// Without it a targetPort stays directly reachable with any SNI, as the proxy's own
    /// upstream port.
    #[arg(long)]
    pub sni_check_target_ports: bool,
    /// The L7 proxy's worker threads, each serving its own connections on its own runtime
    /// with its own upstream pools (connections handed out round-robin). 0: one per CPU.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub proxy_threads: usize,
    /// How long an app's HTTP/1 connection to the L7 proxy may stay open with no request in
    /// progress (between keep-alive requests, or while a request's headers trickle in) before
    /// the proxy closes it: Envoy's downstream idle_timeout (1h). 0: never.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub proxy_idle_timeout: std::time::Duration,
    /// Do not attach the TCP connection accounting (sock_ops): no istio_tcp_connections_* for
    /// allowed connections (for measuring its cost).
    #[arg(long)]
    pub no_conn_accounting: bool,
    /// How denied/audited connections are printed on stderr: human lines or JSON objects.
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub event_format: ReportFormat,
    /// The address the DNS forwarder and the L7 proxy listen on and the connect hooks steer to
    /// (default 127.0.0.1). Under Kubernetes: a node-local address every pod's network
    /// namespace reaches, e.g. 169.254.20.11 on a dummy interface of the node (NodeLocal
    /// DNSCache's way); the address must be local already.
    #[arg(long, value_name = "IPV4")]
    pub local_address: Option<std::net::Ipv4Addr>,
    /// The DNS forwarder's IPv6 address (default ::1 with the default --local-address, else
    /// none: IPv6 resolvers are then not steered).
    #[arg(long, value_name = "IPV6")]
    pub local_address_v6: Option<std::net::Ipv6Addr>,
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
    /// What steered port-53 calls do while the DNS forwarder is not running (the agent was
    /// killed or stopped; the kernel sees its heartbeat go stale within 3 s): `auto` (the
    /// default: REGISTRY_ONLY workloads are refused at once with EPERM and a deny event "DNS
    /// forwarder not running", ALLOW_ANY and AUDIT ones reach the resolver they asked),
    /// `direct` (every workload reaches the resolver it asked, judged like any destination) or
    /// `refuse` (every steered workload is refused).
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub dns_fallback: DnsFallbackArg,
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
pub enum DnsFallbackArg {
    Auto,
    Direct,
    Refuse,
}

impl DnsFallbackArg {
    /// `Settings::dns_fallback`.
    pub fn kernel(self) -> u8 {
        match self {
            Self::Auto => enforcer_common::DNS_FALLBACK_AUTO,
            Self::Direct => enforcer_common::DNS_FALLBACK_DIRECT,
            Self::Refuse => enforcer_common::DNS_FALLBACK_REFUSE,
        }
    }
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

/// Warnings for `--allow-cidr` values with host bits set (`198.18.11.7/24` allows 198.18.11.0/24),
/// as `ip route` warns. Values that do not parse are left to the policy loader, which rejects them.
pub fn allow_cidr_warnings(args: &PolicyArgs) -> Vec<String> {
    args.allow_cidr
        .iter()
        .filter_map(|text| {
            let allow = crate::policy::CliAllow::parse_cidr(text).ok()?;
            let crate::policy::CliTarget::Net(net) = allow.target else { return None };
            // The address as written, before the truncation: `[2001:db8::7/64]:443` -> 2001:db8::7.
            let written: std::net::IpAddr = text.trim_start_matches('[').split('/').next()?.parse().ok()?;
            (written != net.network()).then(|| {
                format!(
                    "--allow-cidr {text}: host bits are set; it allows the whole network {net} (write {net} to silence this warning)"
                )
            })
        })
        .collect()
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
    /// Serve the live view (who calls what, how much, what was refused, with the fixes) and print
    /// its URL: on the --admin address, else on a free loopback port.
    #[arg(long)]
    pub ui: bool,
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
    /// Run the command as USER (a name or a numeric uid; its groups, HOME, USER and LOGNAME are
    /// set). Default under sudo: the invoking user (SUDO_UID/SUDO_GID); otherwise enforcer's own
    /// identity.
    #[arg(long, value_name = "USER", conflicts_with_all = ["as_root", "privileged"])]
    pub user: Option<String>,
    /// Under sudo, run the command as root instead of as the invoking user. It stays confined:
    /// own PID, cgroup and mount namespaces, no_new_privs, and no CAP_SYS_ADMIN, CAP_NET_ADMIN,
    /// CAP_NET_RAW, CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_MODULE (see README).
    #[arg(long, conflicts_with = "privileged")]
    pub as_root: bool,
    /// Run the command unconfined, as before confinement existed: with enforcer's identity and
    /// every capability, in enforcer's namespaces. A root command can then leave its cgroup, add
    /// nft rules or kill enforcer, so enforcement is only advisory.
    #[arg(long)]
    pub privileged: bool,
    /// The command and its arguments, passed through exactly.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// cgroup to enforce on (absolute, or relative to the cgroup2 mount); its descendants too.
    /// With `--kubernetes`: where to look for the kubelet's pod tree (default: the cgroup2 mount;
    /// kubepods.slice, kubelet.slice/kubelet-kubepods.slice and kubepods/ are detected).
    #[arg(long, value_name = "PATH", required_unless_present = "kubernetes")]
    pub cgroup: Option<PathBuf>,
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
    #[command(flatten)]
    pub kube: Box<KubeArgs>,
    /// Per-workload policies: a YAML file mapping cgroup paths/globs (e.g. system.slice/nginx.service)
    /// to their own registries and modes (see README). Reloaded with the registry.
    #[arg(long, value_name = "FILE")]
    pub workloads: Option<PathBuf>,
    /// Admin HTTP listener (/debug/registryz, /metrics, /healthz, /readyz). Loopback by default.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
    /// A second, public listener with only /metrics, /healthz and /readyz (and /debug/registryz
    /// without services); /debug/* with events and destinations stays on `--admin`. For a pod
    /// port that Prometheus and the kubelet's probes reach while `--admin` stays on loopback.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Write the daemon's pid here once enforcement is in place.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

/// Settings of `daemon --kubernetes`.
#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// kubeconfig to use (default: in-cluster config, else $KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The opt-in label, on a namespace or a pod (Istio ambient's key). A pod labelled with the
    /// key and `none` opts out.
    #[arg(long, value_name = "KEY=VALUE", default_value = "istio.io/dataplane-mode=enforcer")]
    pub kube_label: String,
    /// Govern every pod, labelled or not (the exclusions below still apply).
    #[arg(long)]
    pub kube_govern_all: bool,
    /// Also govern pods of kube-system, kube-public and kube-node-lease.
    #[arg(long)]
    pub kube_system_namespaces: bool,
    /// Also govern hostNetwork pods.
    #[arg(long)]
    pub kube_host_network: bool,
    /// Also govern pods that run an Istio sidecar (istio-proxy).
    #[arg(long)]
    pub kube_sidecar_pods: bool,
    /// Steer governed pods' DNS to the forwarder on --local-address (learns wildcard hosts).
    /// Ungoverned pods are not steered: they keep reaching their own resolvers directly
    /// (README, Kubernetes).
    #[arg(long, requires = "local_address")]
    pub kube_dns_steer: bool,
    /// Non-DNS UDP from governed pods: `judge` (only registry UDP ports) or `allow` (Istio's
    /// sidecars do not capture UDP).
    #[arg(long, value_enum, default_value = "judge", value_name = "HOW")]
    pub kube_udp: KubeUdpArg,
    /// A pod cgroup of no pod known on this node: `deny` until the pod is known, or `allow`.
    #[arg(long, value_enum, default_value = "deny", value_name = "HOW")]
    pub kube_unknown_pods: KubeUnknownArg,
    /// Namespace of the mesh ConfigMap.
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    pub kube_istio_namespace: String,
    /// Name of the mesh ConfigMap (`istio-<revision>` for a revisioned install).
    #[arg(long, value_name = "NAME", default_value = "istio")]
    pub kube_mesh_config: String,
    /// The cluster's DNS domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Services every governed pod may always reach (repeatable; replaces the default
    /// default/kubernetes and kube-system/kube-dns).
    #[arg(long = "kube-always-allow", value_name = "NS/NAME")]
    pub kube_always_allow: Vec<String>,
    /// Resolver addresses of ClusterFirst pods besides the cluster DNS Service (repeatable;
    /// default 169.254.20.10, NodeLocal DNSCache).
    #[arg(long = "kube-node-local-dns", value_name = "IP")]
    pub kube_node_local_dns: Vec<std::net::IpAddr>,
    /// The node's resolv.conf (resolvers of dnsPolicy Default pods).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub kube_node_resolv_conf: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubeUdpArg {
    Judge,
    Allow,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubeUnknownArg {
    Deny,
    Allow,
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
    /// Clean up after `enforcer run`s whose agent died (killed): kill what is left of their
    /// commands, remove their pins and cgroups. Runs that are alive are left alone.
    #[arg(long, conflicts_with_all = ["pin_dir", "cgroup"])]
    pub stale: bool,
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
    fn allow_cidr_host_bits_warn_naming_the_network() {
        let args = |v: &[&str]| {
            let mut argv = vec!["enforcer", "run"];
            for c in v {
                argv.extend(["--allow-cidr", c]);
            }
            argv.extend(["--", "true"]);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(r) => r.policy,
                _ => unreachable!(),
            }
        };
        let w = allow_cidr_warnings(&args(&["198.18.11.7/24", "10.0.0.0/8:443", "[2001:db8::7/64]:443", "bad"]));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("198.18.11.0/24") && w[0].contains("host bits"), "{}", w[0]);
        assert!(w[1].contains("2001:db8::/64"), "{}", w[1]);
    }

    #[test]
    fn usage_errors_and_run_flags() {
        assert!(Cli::try_parse_from(["enforcer", "run", "--mode", "REGISTRY_ONLYX", "--", "true"]).is_err());
        assert!(Cli::try_parse_from(["enforcer", "run", "--user", "nobody", "--as-root", "--", "true"]).is_err());
        assert!(Cli::try_parse_from(["enforcer", "run", "--privileged", "--as-root", "--", "true"]).is_err());
        let Command::Run(r) = Cli::try_parse_from(["enforcer", "run", "--user", "nobody", "--", "id"]).unwrap().command
        else {
            unreachable!()
        };
        assert_eq!(r.user.as_deref(), Some("nobody"));
        assert!(Cli::try_parse_from(["enforcer", "unpin", "--stale", "--pin-dir", "/x"]).is_err());
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
