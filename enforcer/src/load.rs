//! From command-line policy arguments to a validated configuration (config + command line), and
//! from that plus resolved names to the desired map contents. Shared by `run` and `daemon` (and
//! every reload).

use std::{collections::HashMap, net::IpAddr};

use enforcer_common::PolicyId;

use crate::{
    agent::AgentConfig,
    config::{self, Mode, Registry},
    policy::{self, CliAllow, Desired, HostIndex, Inputs, ServiceIds},
    resolver::ResolvedName,
};

/// A validated configuration, before name resolution.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub registry: Registry,
    pub cli: Vec<CliAllow>,
    pub dns_servers: Vec<IpAddr>,
    pub mode: Mode,
    /// Where the mode came from ("--mode", "default", or a file:line).
    pub mode_source: String,
    /// Config warnings (unsupported fields, kinds, ...).
    pub warnings: Vec<String>,
    /// `--sni-check`: TLS/HTTPS ports go through the proxy's SNI check.
    pub sni_check: bool,
    /// `--sni-check-target-ports`: so do the targetPorts that carry TLS.
    pub sni_check_target_ports: bool,
}

pub fn kernel_mode(mode: Mode) -> enforcer_common::Mode {
    match mode {
        Mode::AllowAny => enforcer_common::Mode::AllowAny,
        Mode::RegistryOnly => enforcer_common::Mode::RegistryOnly,
        Mode::Audit => enforcer_common::Mode::Audit,
    }
}

/// Parse `--allow` / `--allow-cidr`, reporting every bad value at once.
pub fn cli_allows(args: &AgentConfig) -> anyhow::Result<Vec<CliAllow>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for a in &args.allow {
        match CliAllow::parse_host(a) {
            Ok(c) => out.push(c),
            Err(e) => errors.push(format!("--allow {e}")),
        }
    }
    for a in &args.allow_cidr {
        match CliAllow::parse_cidr(a) {
            Ok(c) => out.push(c),
            Err(e) => errors.push(format!("--allow-cidr {e}")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    Ok(out)
}

/// Load and validate the registry files; the error lists every problem with file:line.
pub fn load_registry(args: &AgentConfig) -> anyhow::Result<Registry> {
    if args.registry.is_empty() {
        return Ok(Registry::default());
    }
    config::load_paths(&args.registry).map_err(|e| {
        let diags = e.diagnostics();
        if diags.is_empty() {
            anyhow::anyhow!("{e}")
        } else {
            let lines: Vec<String> = diags.iter().map(|d| format!("  {d}")).collect();
            anyhow::anyhow!(
                "invalid registry ({} problem{}):\n{}",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" },
                lines.join("\n")
            )
        }
    })
}

/// Validate everything the user gave; nothing is resolved or applied.
pub fn load_config(args: &AgentConfig) -> anyhow::Result<LoadedConfig> {
    let registry = load_registry(args)?;
    let cli = cli_allows(args)?;
    let warnings: Vec<String> = registry.warnings.iter().map(|d| d.to_string()).collect();
    let dns_servers: Vec<IpAddr> = if !args.host_dns {
        vec![]
    } else {
        policy::parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    };
    let (mode, mode_source) = match (args.mode, &registry.mode) {
        (Some(m), _) => (m, "--mode".to_string()),
        (None, Some((m, src))) => (*m, src.to_string()),
        (None, None) => (Mode::RegistryOnly, "default".to_string()),
    };
    Ok(LoadedConfig {
        registry,
        cli,
        dns_servers,
        mode,
        mode_source,
        warnings,
        sni_check: args.sni_check,
        sni_check_target_ports: args.sni_check_target_ports,
    })
}

/// The desired map contents of one policy: `registry` under `policy_id` (service keys in
/// `scope`), with the command-line allows and host resolvers of `cfg`, and its name index.
pub fn compile_policy(
    cfg: &LoadedConfig,
    registry: &Registry,
    policy_id: PolicyId,
    scope: &str,
    resolved: &std::collections::BTreeMap<String, ResolvedName>,
    ids: &mut ServiceIds,
) -> (Desired, HostIndex) {
    let now = tokio::time::Instant::now();
    let usable: HashMap<String, Vec<IpAddr>> =
        resolved.iter().map(|(name, r)| (name.clone(), r.usable(now).into_iter().map(|(a, _)| a).collect())).collect();
    policy::compile(
        &Inputs {
            registry,
            resolved: &usable,
            cli: &cfg.cli,
            dns_servers: &cfg.dns_servers,
            policy_id,
            sni_check: cfg.sni_check,
            sni_check_target_ports: cfg.sni_check_target_ports,
            scope,
        },
        ids,
    )
}
