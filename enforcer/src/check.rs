//! `enforcer check`: validate registry files like Istio does (`istioctl validate` / the admission
//! webhook and the CRD schemas), and check that the registry fits the kernel maps.
//!
//! Exit 0 when valid (warnings and notes printed), 1 when invalid, or with `--strict` when there
//! are warnings. Notes (valid Istio configuration enforcer does not act on) never fail.

use crate::{
    cli::CheckArgs,
    config::{
        self, Severity,
        capacity::{self, ALLOW_MAX_ENTRIES, DESTS_MAX_ENTRIES},
    },
};

pub fn check(args: CheckArgs) -> anyhow::Result<i32> {
    match config::load_paths(&args.paths) {
        Ok(reg) => {
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
            let cap = capacity::count(&reg);
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
            println!("{line}");
            if cap.exceeds() {
                if cap.allow_entries > ALLOW_MAX_ENTRIES as usize {
                    println!(
                        "Error: the registry needs {} allow entries (addresses/endpoints x ports x {{number, targetPort}}), more than the kernel ALLOW map holds ({ALLOW_MAX_ENTRIES}); `enforcer run` and `daemon` would refuse it; fix: use CIDR blocks instead of many single addresses, drop targetPorts or ports that are not needed, or split the registry into per-workload policies",
                        cap.allow_entries
                    );
                }
                if cap.dest_entries > DESTS_MAX_ENTRIES as usize {
                    println!(
                        "Error: the registry has {} distinct destinations, more than the kernel DESTS map holds ({DESTS_MAX_ENTRIES}); fix: use CIDR blocks instead of many single addresses, or split the registry",
                        cap.dest_entries
                    );
                }
                println!(
                    "Error: the registry does not fit the kernel maps; nothing would be enforced from these files."
                );
                return Ok(1);
            }
            let warnings = reg.warnings.iter().filter(|d| d.severity == Severity::Warning).count();
            let notes = reg.warnings.len() - warnings;
            if warnings == 0 {
                let extra = if notes > 0 { format!(" ({notes} note{} above)", plural(notes)) } else { String::new() };
                println!("\u{2714} No validation issues found when analyzing {}{extra}.", list(&args));
                Ok(0)
            } else {
                println!(
                    "{warnings} warning(s){}.",
                    if notes > 0 { format!(", {notes} note(s)") } else { String::new() }
                );
                Ok(if args.strict { 1 } else { 0 })
            }
        }
        Err(e) => {
            let diags = e.diagnostics();
            if diags.is_empty() {
                println!("Error: {e}");
            }
            for d in diags {
                println!("Error: {d}");
            }
            println!("Error: {} problem(s) found; nothing would be enforced from these files.", diags.len().max(1));
            Ok(1)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list(args: &CheckArgs) -> String {
    args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
