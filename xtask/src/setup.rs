//! `cargo xtask setup`: the BPF toolchain (shared/TOOLCHAIN.md) and the runtime/test peers.
//! Idempotent and fast (a few dpkg/rustup queries) when everything is present.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Debian's Rust with a prebuilt core for bpfel-unknown-none, and the LLVM bpf-linker links with.
const TOOLCHAIN_PKGS: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// What enforcer runs next to, and what the tests, demo and bench talk to.
/// The resolver paths of tests/tests/dns_resolvers.rs: nscd and unbound (run by the tests in a
/// private mount namespace and netns; where a package's postinst starts the service on the host,
/// nothing depends on it), musl-gcc (a static musl client) and Go (a pure-Go-resolver client).
/// A test whose program is missing says SKIP.
const PEER_PKGS: &[&str] = &[
    "curl",
    "iproute2",
    "nftables",
    "dnsmasq",
    "python3",
    "iperf3",
    "wrk",
    "openssl",
    "nginx-light",
    "nscd",
    "unbound",
    "musl-tools",
    "golang-go",
    "linux-perf",
];
/// `cargo xtask vm-test`: QEMU (TCG), busybox for the guest's initramfs, depmod/modprobe and xz
/// for the guest kernels' modules.
const VM_PKGS: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "xz-utils"];
/// `cargo xtask lint`: Debian's clippy for the eBPF crate (the same version as `rustc-web`), and
/// pyflakes for the tests' Python helpers.
const LINT_PKGS: &[&str] = &["rust-web-clippy", "pyflakes3"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_FEATURE: &str = "llvm-22";
pub const RUSTUP_TOOLCHAIN: &str = "debian";

struct State {
    missing_pkgs: Vec<&'static str>,
    bpf_linker: bool,
    debian_toolchain: bool,
    rustup: Option<std::path::PathBuf>,
}

fn probe() -> Result<State> {
    let rustup = which::which("rustup").ok();
    let debian_toolchain = match &rustup {
        Some(r) => {
            let out =
                Command::new(r).args(["toolchain", "list"]).output().context("running `rustup toolchain list`")?;
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(RUSTUP_TOOLCHAIN))
        }
        None => false,
    };
    Ok(State {
        missing_pkgs: missing_packages()?,
        bpf_linker: which::which("bpf-linker").is_ok(),
        debian_toolchain,
        rustup,
    })
}

/// Packages of TOOLCHAIN_PKGS + PEER_PKGS + VM_PKGS + LINT_PKGS that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let all: Vec<&'static str> =
        TOOLCHAIN_PKGS.iter().chain(PEER_PKGS).chain(VM_PKGS).chain(LINT_PKGS).copied().collect();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(&all)
        .output()
        .context("running dpkg-query (is this a Debian system?)")?;
    // Unknown packages are reported on stderr and make the exit status 1; that's "missing".
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p)) // strip :arch
        .collect();
    Ok(all.into_iter().filter(|p| !installed.contains(p)).collect())
}

/// `cargo xtask setup [--check]`.
pub fn main(check: bool) -> Result<ExitCode> {
    if check {
        let s = probe()?;
        let mut ok = true;
        let mut line = |good: bool, what: String| {
            ok &= good;
            println!("{} {what}", if good { "ok     " } else { "MISSING" });
        };
        let pkgs: Vec<&str> = TOOLCHAIN_PKGS.iter().chain(PEER_PKGS).chain(VM_PKGS).chain(LINT_PKGS).copied().collect();
        for p in pkgs {
            line(!s.missing_pkgs.contains(&p), format!("apt package {p}"));
        }
        line(s.bpf_linker, "bpf-linker on PATH".into());
        line(s.rustup.is_some(), "rustup on PATH".into());
        line(s.debian_toolchain, format!("rustup toolchain `{RUSTUP_TOOLCHAIN}` (linked to /usr)"));
        match util::cgroup2_mount() {
            Ok(p) => line(true, format!("cgroup2 mounted at {}", p.display())),
            Err(e) => line(false, format!("{e:#}")),
        }
        if !ok {
            println!("run `cargo xtask setup` (as root) to install what is missing");
        }
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if !ensure()? {
        println!("setup: everything is already installed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs whatever is missing; returns whether anything was done. Prints one line per step.
pub fn ensure() -> Result<bool> {
    let s = probe()?;
    let mut did = false;
    if !s.missing_pkgs.is_empty() {
        require_root_to_install(&format!("apt packages {}", s.missing_pkgs.join(" ")))?;
        let mut upd = Command::new("apt-get");
        upd.args(["update", "-q"]);
        util::run_quiet(&mut upd).context("apt-get update failed")?;
        let mut inst = Command::new("apt-get");
        inst.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&s.missing_pkgs);
        util::run_quiet(&mut inst).context("installing apt packages failed")?;
        println!("setup: installed apt packages: {}", s.missing_pkgs.join(" "));
        did = true;
    }
    if !s.bpf_linker {
        let mut c = util::cargo_cmd();
        c.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            LLVM_FEATURE,
        ]);
        util::show(&c);
        let st = c.status().context("could not start `cargo install bpf-linker`")?;
        if !st.success() {
            bail!(
                "`cargo install bpf-linker` failed ({st}); it needs llvm-22-dev (apt) and network access to crates.io"
            );
        }
        if which::which("bpf-linker").is_err() {
            bail!(
                "bpf-linker was installed but is not on PATH; add {} to PATH",
                util::cargo_bin_dir().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.cargo/bin".into())
            );
        }
        println!("setup: installed bpf-linker (LLVM 22)");
        did = true;
    }
    if !s.debian_toolchain {
        let Some(rustup) = &s.rustup else {
            bail!(
                "rustup is not on PATH; the eBPF build runs `cargo +{RUSTUP_TOOLCHAIN}`, which needs rustup (https://rustup.rs)"
            );
        };
        let mut c = Command::new(rustup);
        c.args(["toolchain", "link", RUSTUP_TOOLCHAIN, "/usr"]);
        util::run_quiet(&mut c)?;
        println!("setup: linked rustup toolchain `{RUSTUP_TOOLCHAIN}` to /usr (Debian's rustc-web)");
        did = true;
    }
    util::cgroup2_mount()?;
    Ok(did)
}

fn require_root_to_install(what: &str) -> Result<()> {
    if !util::is_root() {
        bail!(
            "setup must install {what}, which needs root: run `sudo -E cargo xtask setup` (or `cargo xtask setup --check` to only report)"
        );
    }
    Ok(())
}
