//! From command-line policy arguments to the desired map contents: config -> resolver -> policy.
//! Shared by `run` and `daemon` (and by every daemon reload).

use std::net::IpAddr;

use anyhow::Context as _;
use enforcer_common::{DEFAULT_POLICY, MODE_ALLOW_ANY, MODE_AUDIT, MODE_REGISTRY_ONLY};

use crate::{
    cli::PolicyArgs,
    config::{self, Mode, Registry},
    policy::{self, CliAllow, Desired, Inputs},
    resolver::HostResolver,
};

/// A fully loaded policy, ready to apply.
pub struct Loaded {
    pub registry: Registry,
    pub mode: Mode,
    /// Where the mode came from ("--mode", "default", or a file:line).
    pub mode_source: String,
    pub desired: Desired,
    /// Config warnings, resolution failures, compile warnings.
    pub warnings: Vec<String>,
}

pub fn kernel_mode(mode: Mode) -> u32 {
    match mode {
        Mode::AllowAny => MODE_ALLOW_ANY,
        Mode::RegistryOnly => MODE_REGISTRY_ONLY,
        Mode::Audit => MODE_AUDIT,
    }
}

/// Parse `--allow` / `--allow-cidr`, reporting every bad value at once.
pub fn cli_allows(args: &PolicyArgs) -> anyhow::Result<Vec<CliAllow>> {
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
pub fn load_registry(args: &PolicyArgs) -> anyhow::Result<Registry> {
    if args.registry.is_empty() {
        return Ok(Registry::default());
    }
    config::load_paths(&args.registry).map_err(|e| {
        let diags = e.diagnostics();
        if diags.is_empty() {
            anyhow::anyhow!("{e}")
        } else {
            let lines: Vec<String> = diags.iter().map(|d| format!("  {d}")).collect();
            anyhow::anyhow!("invalid registry ({} problem{}):\n{}", diags.len(), if diags.len() == 1 { "" } else { "s" }, lines.join("\n"))
        }
    })
}

pub async fn load(args: &PolicyArgs) -> anyhow::Result<Loaded> {
    let registry = load_registry(args)?;
    let cli = cli_allows(args)?;
    let mut warnings: Vec<String> = registry.warnings.iter().map(|d| d.to_string()).collect();

    let names = policy::names_to_resolve(&registry, &cli);
    let resolved = if names.is_empty() {
        Default::default()
    } else {
        let resolver = HostResolver::from_system().context("setting up the DNS resolver")?;
        let (resolved, errors) = resolver.resolve_all(names).await;
        warnings.extend(errors.into_iter().map(|e| format!("DNS lookup failed: {e}")));
        resolved
    };
    let dns_servers: Vec<IpAddr> = if args.no_host_dns {
        vec![]
    } else {
        policy::parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    };
    let desired = policy::compile(&Inputs {
        registry: &registry,
        resolved: &resolved,
        cli: &cli,
        dns_servers: &dns_servers,
        policy_id: DEFAULT_POLICY,
    });
    warnings.extend(desired.warnings.iter().cloned());

    let (mode, mode_source) = match (args.mode, &registry.mode) {
        (Some(m), _) => (m, "--mode".to_string()),
        (None, Some((m, src))) => (*m, src.to_string()),
        (None, None) => (Mode::RegistryOnly, "default".to_string()),
    };
    Ok(Loaded { registry, mode, mode_source, desired, warnings })
}
