//! `cargo xtask bench dns`: the DNS forwarder against a real dnsmasq upstream: sequential latency
//! direct vs through the forwarder, then an open-loop load, with the delay of each learned
//! answer's insertion into the real kernel map, and the agent's refresh rate for a TTL-0 name.
//! It prints the three targets (added p50 <= 100 µs, p99 answer-to-map <= 1 ms at 10k q/s, no hot
//! loop) as met / NOT met. The measuring program is `enforcer/examples/bench_dns.rs`.

use std::process::ExitCode;

use anyhow::Result;

use crate::bench_example;

#[derive(clap::Args, Clone)]
pub struct DnsArgs {
    /// Sequential queries per path (direct to dnsmasq, and through the forwarder).
    #[arg(long, default_value_t = 20_000)]
    pub queries: usize,
    /// Offered rate of the open-loop phase, queries per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Length of the open-loop phase, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Paced UDP sender tasks in the open-loop phase.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Learn every answer on the blocking pool (the path before the inline one), to compare.
    #[arg(long)]
    pub blocking_learn: bool,
}

pub fn main(a: DnsArgs) -> Result<ExitCode> {
    let mut args = vec![
        "--queries".into(),
        a.queries.to_string(),
        "--rate".into(),
        a.rate.to_string(),
        "--duration".into(),
        a.duration.to_string(),
        "--senders".into(),
        a.senders.to_string(),
    ];
    if a.blocking_learn {
        args.push("--blocking-learn".into());
    }
    bench_example::run("bench_dns", &args)?;
    Ok(ExitCode::SUCCESS)
}
