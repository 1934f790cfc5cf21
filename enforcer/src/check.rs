//! `enforcer check`: validate registry files like `istioctl analyze`.

use crate::{cli::CheckArgs, config};

pub fn check(args: CheckArgs) -> anyhow::Result<i32> {
    match config::load_paths(&args.paths) {
        Ok(reg) => {
            for w in &reg.warnings {
                println!("Warning: {w}");
            }
            let hosts: usize = reg.services.iter().map(|s| s.hosts.len()).sum();
            let mode = match &reg.mode {
                Some((m, src)) => format!("mode {m} (from {src})"),
                None => "no mode set (default REGISTRY_ONLY)".to_string(),
            };
            println!(
                "{} ServiceEntr{} ({hosts} host{}), {} DestinationRule{}, {mode}",
                reg.services.len(),
                if reg.services.len() == 1 { "y" } else { "ies" },
                if hosts == 1 { "" } else { "s" },
                reg.destination_rules.len(),
                if reg.destination_rules.len() == 1 { "" } else { "s" },
            );
            if reg.warnings.is_empty() {
                println!("\u{2714} No validation issues found when analyzing {}.", list(&args));
                Ok(0)
            } else {
                println!("{} warning(s).", reg.warnings.len());
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

fn list(args: &CheckArgs) -> String {
    args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
