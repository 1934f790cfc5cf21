//! `cargo xtask bench kube-cost`: what an ungoverned pod pays in the connect4 hook in Kubernetes
//! mode (BPF run time per call, `BPF_ENABLE_STATS`) with 0 / 100 / 1,000 governed pods, against
//! the same pod judged as ALLOW_ANY and a governed pod. The measuring program is
//! `enforcer/examples/bench_kube_cost.rs` (it writes the maps through the agent's apply path).

use std::process::ExitCode;

use anyhow::Result;

use crate::bench_example;

#[derive(clap::Args, Clone)]
pub struct KubeCostArgs {
    /// Governed pod counts to measure, comma-separated.
    #[arg(long, default_value = "0,100,1000")]
    pub governed: String,
    /// connect() calls per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub iterations: u64,
    /// Rounds per point (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

pub fn main(a: KubeCostArgs) -> Result<ExitCode> {
    bench_example::run(
        "bench_kube_cost",
        &[
            "--governed".into(),
            a.governed,
            "--iterations".into(),
            a.iterations.to_string(),
            "--rounds".into(),
            a.rounds.to_string(),
        ],
    )?;
    Ok(ExitCode::SUCCESS)
}
