//! `cargo xtask bench sync`: a registry of N hosts from YAML into the kernel maps, step by step
//! (parse, compile, BPF load, full apply, 1% incremental apply, no-op apply), against raw
//! `bpf(BPF_MAP_UPDATE_ELEM)` of the same keys. The measuring program is
//! `enforcer/examples/bench_sync.rs`.

use std::process::ExitCode;

use anyhow::Result;

use crate::bench_example;

#[derive(clap::Args, Clone)]
pub struct SyncArgs {
    /// Number of hosts (ServiceEntries, one address and one TCP port each).
    #[arg(long, default_value_t = 100_000)]
    pub hosts: usize,
    /// Registry shape: `static` (STATIC + 1 endpoint), `addresses` (NONE + 1 address) or `both`.
    #[arg(long, default_value = "both", value_parser = ["static", "addresses", "both"])]
    pub shape: String,
    /// BPF load + full apply + raw baseline rounds per shape (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub apply_rounds: usize,
}

pub fn main(a: SyncArgs) -> Result<ExitCode> {
    bench_example::run(
        "bench_sync",
        &[
            "--hosts".into(),
            a.hosts.to_string(),
            "--shape".into(),
            a.shape,
            "--rounds".into(),
            a.apply_rounds.to_string(),
        ],
    )?;
    Ok(ExitCode::SUCCESS)
}
