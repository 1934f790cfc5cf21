//! `enforcer check`: validate registry files like Istio does (`istioctl validate` / the admission
//! webhook and the CRD schemas), and check that the registry fits the kernel maps.
//!
//! Exit 0 when valid (warnings and notes printed), 1 when invalid, or with `--strict` when there
//! are warnings. Notes (valid Istio configuration enforcer does not act on) never fail.

use std::path::PathBuf;

use crate::{
    cli::CheckArgs,
    config::{
        self, Registry, Severity,
        capacity::{self, ALLOW_MAX_ENTRIES, Capacity, DESTS_MAX_ENTRIES},
    },
};

/// What `check` concludes about a set of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Loads; at most notes.
    Valid,
    /// Loads with warnings (`--strict` fails).
    Warning,
    /// Istio rejects it, or it does not fit the kernel maps.
    Invalid,
}

/// The outcome of checking some paths.
#[derive(Debug)]
pub struct Report {
    /// The registry, when the files are valid Istio configuration.
    pub registry: Option<Registry>,
    /// Every problem that makes the files invalid, as printed (without the `Error: ` prefix).
    pub errors: Vec<String>,
    /// Map entries needed, when the registry loaded.
    pub capacity: Option<Capacity>,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        match &self.registry {
            _ if !self.errors.is_empty() => Verdict::Invalid,
            Some(r) if r.strict_warnings().next().is_some() => Verdict::Warning,
            _ => Verdict::Valid,
        }
    }
}

/// Load and validate `paths`, then count the kernel map entries the registry needs.
pub fn evaluate(paths: &[PathBuf]) -> Report {
    match config::load_paths(paths) {
        Ok(reg) => {
            let cap = capacity::count(&reg);
            let mut errors = Vec::new();
            if cap.allow_entries > ALLOW_MAX_ENTRIES as usize {
                errors.push(format!(
                    "the registry needs {} allow entries (addresses/endpoints x ports x {{number, targetPort}}), more than the kernel ALLOW map holds ({ALLOW_MAX_ENTRIES}); `enforcer run` and `daemon` would refuse it; fix: use CIDR blocks instead of many single addresses, drop targetPorts or ports that are not needed, or split the registry into per-workload policies",
                    cap.allow_entries
                ));
            }
            if cap.dest_entries > DESTS_MAX_ENTRIES as usize {
                errors.push(format!(
                    "the registry has {} distinct destinations, more than the kernel DESTS map holds ({DESTS_MAX_ENTRIES}); fix: use CIDR blocks instead of many single addresses, or split the registry",
                    cap.dest_entries
                ));
            }
            Report { registry: Some(reg), errors, capacity: Some(cap) }
        }
        Err(e) => {
            let diags = e.diagnostics();
            let errors =
                if diags.is_empty() { vec![e.to_string()] } else { diags.iter().map(|d| d.to_string()).collect() };
            Report { registry: None, errors, capacity: None }
        }
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let report = evaluate(&args.paths);
    let Some(reg) = &report.registry else {
        for e in &report.errors {
            println!("Error: {e}");
        }
        println!("Error: {} problem(s) found; nothing would be enforced from these files.", report.errors.len().max(1));
        return Ok(1);
    };
    for d in &reg.warnings {
        println!("{}: {d}", d.severity);
    }
    let hosts: usize = reg.services.iter().map(|s| s.hosts.len()).sum();
    let mode = match &reg.mode {
        Some((m, src)) => format!("mode {m} (from {src})"),
        None => "no mode set (default REGISTRY_ONLY)".to_string(),
    };
    println!(
        "{} ServiceEntr{} ({hosts} host{}), {} DestinationRule{}, {} Sidecar{}, {mode}",
        reg.services.len(),
        if reg.services.len() == 1 { "y" } else { "ies" },
        plural(hosts),
        reg.destination_rules.len(),
        plural(reg.destination_rules.len()),
        reg.sidecars.len(),
        plural(reg.sidecars.len()),
    );
    if let Some(cap) = &report.capacity {
        println!("{}", capacity_line(cap));
    }
    if !report.errors.is_empty() {
        for e in &report.errors {
            println!("Error: {e}");
        }
        println!("Error: the registry does not fit the kernel maps; nothing would be enforced from these files.");
        return Ok(1);
    }
    let warnings = reg.warnings.iter().filter(|d| d.severity == Severity::Warning).count();
    let notes = reg.warnings.len() - warnings;
    if warnings == 0 {
        let extra = if notes > 0 { format!(" ({notes} note{} above)", plural(notes)) } else { String::new() };
        println!("\u{2714} No validation issues found when analyzing {}{extra}.", list(&args));
        Ok(0)
    } else {
        println!("{warnings} warning(s){}.", if notes > 0 { format!(", {notes} note(s)") } else { String::new() });
        Ok(if args.strict { 1 } else { 0 })
    }
}

fn capacity_line(cap: &Capacity) -> String {
    let mut line = format!(
        "kernel maps: {} allow entr{} of {ALLOW_MAX_ENTRIES}, {} destination{} of {DESTS_MAX_ENTRIES}",
        cap.allow_entries,
        if cap.allow_entries == 1 { "y" } else { "ies" },
        cap.dest_entries,
        plural(cap.dest_entries),
    );
    if cap.dns_names > 0 || cap.wildcard_hosts > 0 {
        line.push_str(&format!(
            "; plus the addresses of {} DNS name{} and {} wildcard host{}, known only when enforcing",
            cap.dns_names,
            plural(cap.dns_names),
            cap.wildcard_hosts,
            plural(cap.wildcard_hosts)
        ));
    }
    line
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list(args: &CheckArgs) -> String {
    args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod corpus;
