//! `cargo xtask`: the project's developer tasks.
//!
//! - `setup [--check]`   install (or check) the BPF toolchain and the test peers
//! - `build [--release]` setup, then build the `enforcer` binary
//! - `test [-- ARGS]`    setup, build, then `cargo test` over the workspace (needs root)
//! - `lint`              rustfmt --check, clippy -D warnings on every crate (eBPF included), pyflakes
//! - `demo`              a self-contained demo in a private network namespace (needs root)
//! - `bench connect`     connect() latency: no enforcement vs `enforcer run` vs nftables
//! - `bench sync`        a registry of N hosts from YAML into the kernel maps, step by step
//! - `bench dns`         DNS forwarder latency vs dnsmasq, and answer-to-map-insertion delay
//! - `bench all`         the three benchmarks
//! - `bench tc`          iperf3 throughput with/without the TC counters; sock_ops accounting cost
//! - `bench kube-cost`   connect4 BPF ns per call of an ungoverned pod with 0/100/1,000 governed
//! - `bench proxy`       wrk through enforcer's L7 proxy (TLS origination) vs nginx doing the same
//! - `vm-test [--kernel 6.1|6.12|all] [--filter S]... [--smoke]`  integration tests in QEMU guests

mod bench;
mod bench_dns;
mod bench_example;
mod bench_kube;
mod bench_proxy;
mod bench_proxy_instr;
mod bench_sync;
mod bench_tc;
mod bpf_stats;
mod cleanup;
mod demo;
mod lint;
mod netns;
mod setup;
mod util;
mod vmtest;
mod vmtest_kernel;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "enforcer's developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent; a no-op when all is present).
    Setup {
        /// Only report what is missing; exit 1 if anything is.
        #[arg(long)]
        check: bool,
    },
    /// Setup, then `cargo build -p enforcer`.
    Build {
        /// The shipped agent: the `dist` profile (release with fat LTO; target/dist/enforcer).
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run unit and integration tests (root needed). Args after `--` go to
    /// `cargo test`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then `cargo fmt --check`, clippy with warnings denied over every crate (the eBPF one
    /// for bpfel-unknown-none with Debian's clippy) and pyflakes over tests/helpers.
    Lint,
    /// Show enforcer at work against two HTTP servers in a private network namespace (root needed).
    Demo(demo::Args),
    /// The integration tests inside QEMU guests on Debian's 6.1 and 6.12 kernels (root needed).
    VmTest(vmtest::Args),
    /// Benchmarks (never part of `test`).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Internal: the connect()+close() loop of `bench connect`; prints JSON.
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
    /// Internal: the TCP accept loop of `bench connect`.
    #[command(hide = true)]
    BenchServer(bench::ServerArgs),
    /// Internal: run a program and record the BPF run time of its cgroup's programs meanwhile.
    #[command(hide = true)]
    BenchBpfWrap(bpf_stats::WrapArgs),
}

fn main() -> ExitCode {
    // Before any thread exists: make sure cargo-installed tools (bpf-linker) are on PATH.
    util::ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    // The helper subcommands run inside benchmarks: no signal thread, no cleanup registry.
    let result = match cli.cmd {
        Cmd::BenchClient(a) => return bench::client(a),
        Cmd::BenchServer(a) => return bench::server(a),
        Cmd::BenchBpfWrap(a) => return bpf_stats::wrap(a),
        cmd => {
            cleanup::install_signal_handler();
            run(cmd)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Setup { check } => setup::main(check),
        Cmd::Build { release } => {
            setup::ensure()?;
            let bin = util::build_enforcer(release)?;
            println!("built {}", bin.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { args } => test(args),
        Cmd::Lint => lint::main(),
        Cmd::Demo(a) => demo::main(a),
        Cmd::VmTest(a) => vmtest::main(a),
        Cmd::Bench(b) => bench::main(b),
        Cmd::BenchClient(_) | Cmd::BenchServer(_) | Cmd::BenchBpfWrap(_) => unreachable!(),
    }
}

fn test(args: Vec<String>) -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        anyhow::bail!(
            "the integration tests load eBPF programs and create cgroups and network namespaces, \
             so they need root: run `sudo -E cargo xtask test` (or as root)"
        );
    }
    setup::ensure()?;
    let bin = util::build_enforcer(false)?;
    let mut cmd = util::cargo_cmd();
    // `--workspace` minus the BPF crate, which only builds for bpfel-unknown-none (enforcer's
    // build.rs builds it); that is every default member, including the `tests` crate.
    cmd.args(["test", "--workspace", "--exclude", "enforcer-ebpf"]);
    cmd.args(&args);
    cmd.env("ENFORCER_BIN", &bin);
    // Under `sudo -E`, `enforcer run` would default to running commands as the invoking user
    // (SUDO_UID); the tests' commands live in root's environment, so run them as root.
    for v in ["SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND"] {
        cmd.env_remove(v);
    }
    cmd.current_dir(util::workspace_root());
    util::show(&cmd);
    let status = cmd.status().context_spawn("cargo test")?;
    Ok(util::exit_code_of(status))
}

use util::SpawnContext as _;
