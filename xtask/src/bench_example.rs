//! Benchmarks that are programs in `enforcer/examples/` (they use the enforcer library, which
//! xtask must not depend on): build the example in release mode, run it, pass its output through.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{
    cleanup::{self, Resource},
    setup, util,
};

/// `cargo build --release -p enforcer --example NAME`; returns the built binary.
pub fn build(name: &str) -> Result<PathBuf> {
    let mut cmd = util::cargo_cmd();
    cmd.args(["build", "--release", "-p", "enforcer", "--example", name]);
    cmd.current_dir(util::workspace_root());
    util::show(&cmd);
    let status = cmd.status().context_spawn("cargo build")?;
    if !status.success() {
        bail!("`cargo build --release -p enforcer --example {name}` failed ({status})");
    }
    let bin = util::target_dir().join("release").join("examples").join(name);
    if !bin.is_file() {
        bail!("cargo built example {name} but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Root check, setup, build, then run the example with `args` (stdout/stderr inherited).
pub fn run(name: &str, args: &[String]) -> Result<()> {
    util::require_root("the benchmark")?;
    setup::ensure()?;
    let bin = build(name)?;
    let mut cmd = Command::new(&bin);
    cmd.args(args).stdin(Stdio::null());
    util::show(&cmd);
    let mut child = cmd.spawn().context_spawn(name)?;
    // Killed (SIGTERM, then SIGKILL) if xtask is interrupted.
    let _guard = cleanup::register(Resource::Process(child.id() as i32));
    let status = child.wait()?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

use util::SpawnContext as _;
