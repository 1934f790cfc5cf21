//! `cargo xtask lint`: the lint gate CI runs before the tests. Every step runs (a failing one does
//! not hide the next); the task fails if any did.
//!
//! 1. `cargo fmt --all --check` (rustfmt.toml: max_width 120), every crate including the eBPF one.
//! 2. `cargo clippy --workspace --exclude enforcer-ebpf --all-targets -- -D warnings`: the host
//!    crates (enforcer, enforcer-common, tests, xtask), with their unit tests, integration tests
//!    and benches. enforcer's build.rs builds the eBPF object first, so `cargo xtask setup` must
//!    have run (bpf-linker, the `debian` toolchain).
//! 3. The eBPF crate for its real target: `rustup run debian cargo clippy -p enforcer-ebpf
//!    --target bpfel-unknown-none --lib --bins -- -D warnings`, with Debian's clippy
//!    (`rust-web-clippy`, the same 1.96 as the `rustc-web` that builds it; setup installs it) and
//!    the `--cfg bpf_target_arch` aya-build passes. It has no test targets (no `test` crate on
//!    bpfel), so `--all-targets` does not apply. Its own target dir (`target/lint-ebpf`) keeps the
//!    check artifacts apart from the real eBPF build's. One lint is allowed there, see
//!    [`EBPF_ALLOWED`].
//! 4. The Python helpers the integration tests run (`tests/helpers/*.py`): `pyflakes3` (apt
//!    `pyflakes3`, installed by setup), which also rejects syntax errors.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Result, bail};

use crate::{setup, util};

/// Clippy lints allowed for enforcer-ebpf only, with why.
///
/// - `needless_borrows_for_generic_args`: aya-ebpf's map methods take `impl Borrow<K>`, and every
///   map call in the kernel programs passes `&key` (aya's own examples do too). Clippy would move
///   the keys by value instead; that is 25 call sites across sock_addr.rs, sock_ops.rs and tc.rs,
///   which are being reworked for the fast path, so the change is left to that work.
pub const EBPF_ALLOWED: &[&str] = &["clippy::needless_borrows_for_generic_args"];

/// `cargo xtask lint`.
pub fn main() -> Result<ExitCode> {
    setup::ensure()?;
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        let ok = util::cargo_cmd().args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
        if !ok {
            bail!("`cargo {sub}` is not available: run `rustup component add {component}`");
        }
    }
    let root = util::workspace_root();
    let mut failed = Vec::new();
    let mut step = |name: &str, mut cmd: Command| -> Result<()> {
        cmd.current_dir(root);
        util::show(&cmd);
        let t = Instant::now();
        let status = cmd.status().map_err(|e| anyhow::anyhow!("could not start {name}: {e}"))?;
        println!(
            "lint: {name}: {} ({:.1} s)",
            if status.success() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !status.success() {
            failed.push(name.to_string());
        }
        Ok(())
    };

    let mut fmt = util::cargo_cmd();
    fmt.args(["fmt", "--all", "--check"]);
    step("rustfmt", fmt)?;

    let mut clippy = util::cargo_cmd();
    clippy.args([
        "clippy",
        "--keep-going",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy (host crates)", clippy)?;

    step("clippy (enforcer-ebpf, bpfel-unknown-none)", ebpf_clippy()?)?;

    step("pyflakes (tests/helpers)", pyflakes(root)?)?;

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: all clean");
    Ok(ExitCode::SUCCESS)
}

/// Clippy for the eBPF crate the way aya-build compiles it (shared/TOOLCHAIN.md).
fn ebpf_clippy() -> Result<Command> {
    let rustup = which::which("rustup").map_err(|_| {
        anyhow::anyhow!("rustup is not on PATH; the eBPF crate is linted with `rustup run debian cargo clippy`")
    })?;
    let mut c = Command::new(rustup);
    c.args([
        "run",
        setup::RUSTUP_TOOLCHAIN,
        "cargo",
        "clippy",
        "-p",
        "enforcer-ebpf",
        "--target",
        "bpfel-unknown-none",
    ]);
    c.args(["--lib", "--bins", "--target-dir"]).arg(util::target_dir().join("lint-ebpf"));
    c.args(["--", "-D", "warnings"]);
    for lint in EBPF_ALLOWED {
        c.args(["-A", lint]);
    }
    // What aya-build sets for the real build (the `-C` link/debuginfo flags do not matter to a
    // check). The outer cargo's RUSTC/CARGO would pick the stable toolchain; drop them.
    let arch = std::env::consts::ARCH;
    c.env("CARGO_ENCODED_RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{arch}\""));
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "CARGO", "RUSTUP_TOOLCHAIN"] {
        c.env_remove(key);
    }
    Ok(c)
}

fn pyflakes(root: &Path) -> Result<Command> {
    let dir = root.join("tests/helpers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    if files.is_empty() {
        bail!("no Python helpers found in {}", dir.display());
    }
    files.sort();
    let mut c = Command::new("pyflakes3");
    c.args(files);
    Ok(c)
}
