//! `cargo xtask bench proxy-instructions`: the L7 proxy's instructions per request, counted by
//! callgrind (repeatable on a busy machine, where `bench proxy`'s CPU time per request moves by
//! ±15% between runs). It runs the enforcer library's measurement test
//! (`proxy::tests::requests_for_instruction_counts`: requests over one keep-alive connection,
//! TLS originated to an in-process upstream) under `valgrind --tool=callgrind` twice, with
//! `--requests` and twice as many, counting only inside the proxy's connection tasks (the client
//! connection's and the upstream connection's), so the test client and the upstream server are
//! left out; the difference over the extra requests is the per-request cost (start-up, the TLS
//! handshake and the first request cancel out). The baseline is the same count for `--compare`
//! (another test binary, e.g. one built from the previous commit), in the same run.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

#[derive(clap::Args, Clone)]
pub struct ProxyInstrArgs {
    /// Requests in the first run (the second makes twice as many).
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,
    /// Another enforcer library test binary to count the same way (its path from `cargo test
    /// --release -p enforcer --lib --no-run`), printed as a ratio against this tree's.
    #[arg(long, value_name = "PATH")]
    pub compare: Option<PathBuf>,
}

const TEST: &str = "proxy::tests::requests_for_instruction_counts";
/// Where the count is on: the proxy's per-connection tasks (callgrind matches demangled names).
const TOGGLES: [&str; 2] = ["*enforcer::proxy::handle_conn*", "*enforcer::proxy::upstream::Sender::dial*"];

/// Builds the enforcer library's tests (release) and returns the test binary.
fn build_test_binary() -> Result<PathBuf> {
    let mut cmd = util::cargo_cmd();
    cmd.args(["test", "--release", "-p", "enforcer", "--lib", "--no-run", "--message-format=json"])
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit());
    let out = cmd.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("`cargo test --release -p enforcer --lib --no-run` failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["reason"] == "compiler-artifact" && v["target"]["name"] == "enforcer" && v["profile"]["test"] == true
        })
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no test binary for the enforcer library")
}

/// Instructions callgrind counted (its `totals:` / `summary:` line).
fn total_instructions(out_file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(out_file).with_context(|| format!("reading {}", out_file.display()))?;
    parse_total(&text).with_context(|| format!("no totals line in {}", out_file.display()))
}

fn parse_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One counted run of `requests` requests.
fn count(bin: &Path, requests: u32, dir: &Path) -> Result<u64> {
    let out_file = dir.join(format!("callgrind.{requests}.out"));
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--collect-atstart=no"]);
    for t in TOGGLES {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    cmd.arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(bin)
        .args(["--ignored", "--exact", TEST, "--test-threads=1", "--quiet"])
        .env("ENFORCER_PROXY_REQUESTS", requests.to_string())
        .stdin(Stdio::null());
    let out = cmd.output().context("running valgrind (Debian's valgrind package)")?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            util::display_cmd(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    total_instructions(&out_file)
}

/// Instructions per request of `bin`: the difference between `n` and `2n` requests.
fn per_request(bin: &Path, n: u32, dir: &Path) -> Result<f64> {
    let (a, b) = (count(bin, n, dir)?, count(bin, 2 * n, dir)?);
    if b <= a {
        bail!("callgrind counted {b} instructions for {} requests and {a} for {n}: nothing to measure", 2 * n);
    }
    Ok((b - a) as f64 / f64::from(n))
}

pub fn main(args: ProxyInstrArgs) -> Result<ExitCode> {
    if args.requests == 0 {
        bail!("--requests must be positive");
    }
    if which::which("valgrind").is_err() {
        bail!("valgrind is not installed (Debian: apt-get install valgrind)");
    }
    let bin = build_test_binary()?;
    let dir = util::TempDir::new("enforcer-bench-proxy-instr")?;
    println!(
        "callgrind, instructions inside the proxy's connection tasks, ({} - {}) requests / {}: {}",
        2 * args.requests,
        args.requests,
        args.requests,
        bin.display()
    );
    let here = per_request(&bin, args.requests, &dir.path)?;
    println!("this tree:  {here:>10.0} instructions per request");
    if let Some(other) = &args.compare {
        let there = per_request(other, args.requests, &dir.path)?;
        println!("--compare:  {there:>10.0} instructions per request ({})", other.display());
        println!("this tree / --compare: {:.3}x", here / there);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        assert_eq!(parse_total("events: Ir\nfn=x\n1 2\ntotals: 123456\n"), Some(123456));
        assert_eq!(parse_total("events: Ir\nsummary: 99 7\n"), Some(99));
        assert_eq!(parse_total("events: Ir\n"), None);
    }
}
