//! The agent's configuration, typed and built once from the command line. The agent never reads
//! clap structs at run time.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    cli::{PolicyArgs, ReportFormat, UnknownNamesArg},
    config::Mode,
};

/// What `run` and `daemon` configure the agent with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Registry files and directories (validated at start and on every reload).
    pub registry: Vec<PathBuf>,
    /// `--mode`: overrides any MeshConfig in the registry paths.
    pub mode: Option<Mode>,
    pub allow: Vec<String>,
    pub allow_cidr: Vec<String>,
    /// Allow port 53 to the resolvers in /etc/resolv.conf.
    pub host_dns: bool,
    pub sni_check: bool,
    /// `--sni-check-target-ports`: TLS-carrying targetPorts go through the SNI check too.
    pub sni_check_target_ports: bool,
    /// `run --quiet`: the proxy's event lines are not printed (they are still recorded).
    pub quiet: bool,
    /// How event lines are printed (`--event-format`).
    pub event_format: ReportFormat,
    /// `--proxy-threads`: the L7 proxy's worker threads (0: one per CPU).
    pub proxy_threads: usize,
    /// `--proxy-idle-timeout` (`None`: never).
    pub proxy_idle_timeout: Option<Duration>,
    /// Where the DNS forwarder and the L7 proxy listen, and what the connect hooks steer to:
    /// loopback for `run` and a host daemon; a node-local address every pod can reach under
    /// Kubernetes (pods have their own network namespace, and their loopback is their own).
    pub local_v4: Ipv4Addr,
    /// The forwarder's IPv6 listener (`None`: IPv6 resolvers are not steered).
    pub local_v6: Option<Ipv6Addr>,
    /// The default policy judges cgroups nobody governs (Kubernetes: pods not opted in): they
    /// pass untouched (`POLICY_F_UNGOVERNED`) and are never DNS-steered. Off (`run`, a host
    /// daemon): the default policy is enforced and steered like any other.
    pub ungoverned_default: bool,
    pub dns: DnsConfig,
}

/// The DNS side: the agent's own lookups and the forwarder.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Empty: the nameservers of /etc/resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// Steer the workload's port-53 traffic to the forwarder.
    pub steer: bool,
    /// The forwarder's port (`None`: the caller's default).
    pub port: Option<u16>,
    /// `--dns-fallback` as `Settings::dns_fallback`: steered port-53 calls while the forwarder
    /// is not running.
    pub fallback: u8,
    pub unknown_names: crate::dns::UnknownNames,
    /// The workloads' resolver search list: resolv.conf's plus `--dns-search`.
    pub search: Vec<String>,
    /// `--dns-forward-ecs`.
    pub forward_ecs: bool,
    /// `run`: give the command a mount namespace that routes every resolver path to the
    /// forwarder (`--no-dns-isolation` turns it off).
    pub isolation: bool,
    /// Print each refused name once on stderr (`run`, unless `--quiet`).
    pub print_refusals: bool,
    /// ... as a JSON object (`--event-format json`).
    pub print_json: bool,
    pub ttl_floor: Duration,
    pub ttl_ceiling: Duration,
    pub grace: Duration,
    pub failure_grace: Duration,
    pub timeout: Duration,
}

impl AgentConfig {
    pub fn from_args(a: &PolicyArgs) -> Self {
        Self {
            registry: a.registry.clone(),
            mode: a.mode,
            allow: a.allow.clone(),
            allow_cidr: a.allow_cidr.clone(),
            host_dns: !a.no_host_dns,
            sni_check: a.sni_check || a.sni_check_target_ports,
            sni_check_target_ports: a.sni_check_target_ports,
            quiet: false,
            event_format: a.event_format,
            proxy_threads: a.proxy_threads,
            proxy_idle_timeout: Some(a.proxy_idle_timeout).filter(|d| !d.is_zero()),
            local_v4: a.local_address.unwrap_or(Ipv4Addr::LOCALHOST),
            local_v6: match (a.local_address, a.local_address_v6) {
                (_, Some(v6)) => Some(v6),
                (None, None) => Some(Ipv6Addr::LOCALHOST),
                (Some(_), None) => None,
            },
            ungoverned_default: false,
            dns: DnsConfig {
                upstreams: a.dns.upstreams.clone(),
                steer: !a.dns.no_dns_steer,
                port: a.dns.dns_port,
                fallback: a.dns.dns_fallback.kernel(),
                unknown_names: match a.dns.unknown_names {
                    UnknownNamesArg::Answer => crate::dns::UnknownNames::AnswerNoAllow,
                    UnknownNamesArg::Nxdomain => crate::dns::UnknownNames::Nxdomain,
                    UnknownNamesArg::Refused => crate::dns::UnknownNames::Refused,
                },
                search: {
                    let mut s =
                        crate::dns::search_domains(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
                    for d in &a.dns.dns_search {
                        let d = d.trim_end_matches('.').to_ascii_lowercase();
                        if !d.is_empty() && !s.contains(&d) {
                            s.push(d);
                        }
                    }
                    s
                },
                forward_ecs: a.dns.dns_forward_ecs,
                isolation: !a.dns.no_dns_isolation,
                print_refusals: false,
                print_json: a.event_format == crate::cli::ReportFormat::Json,
                ttl_floor: a.dns.dns_ttl_floor.max(crate::dns::MIN_TTL_FLOOR),
                // A ceiling under the floor would make every lifetime the ceiling: the floor wins.
                ttl_ceiling: a.dns.dns_ttl_ceiling.max(a.dns.dns_ttl_floor).max(crate::dns::MIN_TTL_FLOOR),
                grace: a.dns.dns_grace,
                failure_grace: a.dns.dns_failure_grace,
                timeout: a.dns.dns_timeout,
            },
        }
    }
}
