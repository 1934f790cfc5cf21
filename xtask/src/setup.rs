//! `cargo xtask setup`: the BPF toolchain (shared/TOOLCHAIN.md) and the runtime/test peers.
//! Idempotent and fast (a few dpkg/rustup queries) when everything is present.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Debian's Rust with a prebuilt core for bpfel-unknown-none, and the LLVM bpf-linker links with.
const TOOLCHAIN_PKGS: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// What enforcer runs next to, and what the tests, demo and bench talk to (`prometheus` ships
/// `promtool`, and the server the metrics tests scrape the daemon with).
/// (python3-websockets / python3-grpcio: the proxy's WebSocket and gRPC tests, with
/// /usr/bin/python3; linux-perf: the proxy bench's profile.)
/// The resolver paths of tests/tests/dns_resolvers.rs: nscd and unbound (run by the tests in a
/// private mount namespace and netns; where a package's postinst starts the service on the host,
/// nothing depends on it), musl-gcc (a static musl client) and Go (a pure-Go-resolver client);
/// libsystemd-shared for the systemd-resolved that `fetch_resolved` unpacks (not installed).
/// A test whose program is missing says SKIP.
const PEER_PKGS: &[&str] = &[
    "curl",
    "iproute2",
    "nftables",
    "dnsmasq",
    "python3",
    "python3-websockets",
    "python3-grpcio",
    "iperf3",
    "wrk",
    "openssl",
    "nginx-light",
    "nscd",
    "unbound",
    "musl-tools",
    "golang-go",
    "libsystemd-shared",
    "linux-perf",
    "prometheus",
];
/// `cargo xtask vm-test`: QEMU (TCG), busybox for the guest's initramfs, depmod/modprobe and xz
/// for the guest kernels' modules.
const VM_PKGS: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "xz-utils"];
/// `cargo xtask lint`: Debian's clippy for the eBPF crate (the same version as `rustc-web`), and
/// pyflakes for the tests' Python helpers.
const LINT_PKGS: &[&str] = &["rust-web-clippy", "pyflakes3", "python3-yaml", "python3-pip"];
/// The Kubernetes schema validator tests/tests/deploy.rs runs over deploy/ (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The live view's browser tests (tests/tests/ui.rs): Debian's chromium, driven headless by
/// playwright-core (npm, `npm ci` in [`UI_HELPER_DIR`]; it never downloads a browser).
const UI_PKGS: &[&str] = &["chromium", "nodejs"];
const UI_HELPER_DIR: &str = "tests/helpers/ui";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_FEATURE: &str = "llvm-22";
pub const RUSTUP_TOOLCHAIN: &str = "debian";

struct State {
    missing_pkgs: Vec<&'static str>,
    /// `npm ci` has installed what tests/helpers/ui/package-lock.json pins.
    ui_modules: bool,
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
        ui_modules: ui_modules_installed(),
        bpf_linker: which::which("bpf-linker").is_ok(),
        debian_toolchain,
        rustup,
    })
}

/// Packages of TOOLCHAIN_PKGS + PEER_PKGS + VM_PKGS + LINT_PKGS + UI_PKGS that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let all: Vec<&'static str> =
        TOOLCHAIN_PKGS.iter().chain(PEER_PKGS).chain(VM_PKGS).chain(LINT_PKGS).chain(UI_PKGS).copied().collect();
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
        let pkgs: Vec<&str> =
            TOOLCHAIN_PKGS.iter().chain(PEER_PKGS).chain(VM_PKGS).chain(LINT_PKGS).chain(UI_PKGS).copied().collect();
        for p in pkgs {
            line(!s.missing_pkgs.contains(&p), format!("apt package {p}"));
        }
        line(s.ui_modules, format!("{UI_HELPER_DIR}/node_modules as package-lock.json pins it (npm ci)"));
        line(s.bpf_linker, "bpf-linker on PATH".into());
        line(which::which("kubernetes-validate").is_ok(), format!("{KUBERNETES_VALIDATE} (pip) on PATH"));
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
    if !s.ui_modules {
        // Debian's nodejs has no npm of its own (NodeSource's does).
        if which::which("npm").is_err() {
            require_root_to_install("the apt package npm")?;
            let mut inst = Command::new("apt-get");
            inst.env("DEBIAN_FRONTEND", "noninteractive").args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "npm",
            ]);
            util::run_quiet(&mut inst).context("installing npm failed")?;
        }
        let mut c = Command::new("npm");
        c.args(["ci", "--no-audit", "--no-fund"]).current_dir(util::workspace_root().join(UI_HELPER_DIR));
        util::run_quiet(&mut c)
            .with_context(|| format!("`npm ci` in {UI_HELPER_DIR} failed (it needs the npm registry)"))?;
        println!("setup: installed {UI_HELPER_DIR}/node_modules (npm ci)");
    }
    if which::which("kubernetes-validate").is_err() {
        require_root_to_install(KUBERNETES_VALIDATE)?;
        let pip = |extra: &[&str]| {
            let mut c = Command::new("python3");
            c.args(["-m", "pip", "install", "-q"]).args(extra).arg(KUBERNETES_VALIDATE);
            util::run_quiet(&mut c)
        };
        // Debian's python3 refuses system-wide pip installs without the flag (PEP 668).
        pip(&[]).or_else(|_| pip(&["--break-system-packages"])).context("pip install kubernetes-validate failed")?;
        println!("setup: installed {KUBERNETES_VALIDATE} (pip)");
        did = true;
    }
    did |= fetch_resolved();
    util::cgroup2_mount()?;
    Ok(did)
}

/// Every package tests/helpers/ui/package-lock.json pins is in node_modules at its version.
fn ui_modules_installed() -> bool {
    let dir = util::workspace_root().join(UI_HELPER_DIR);
    let read = |p: std::path::PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let Some(lock) = read(dir.join("package-lock.json")) else { return false };
    let Some(pkgs) = lock["packages"].as_object() else { return false };
    pkgs.iter()
        .filter(|(path, _)| !path.is_empty())
        .all(|(path, meta)| read(dir.join(path).join("package.json")).is_some_and(|p| p["version"] == meta["version"]))
}

fn require_root_to_install(what: &str) -> Result<()> {
    if !util::is_root() {
        bail!(
            "setup must install {what}, which needs root: run `sudo -E cargo xtask setup` (or `cargo xtask setup --check` to only report)"
        );
    }
    Ok(())
}

/// Where `fetch_resolved` unpacks systemd-resolved and nss-resolve (tests/tests/dns_resolvers.rs
/// runs them from there in a private mount namespace).
pub fn resolved_root() -> std::path::PathBuf {
    util::target_dir().join("debs").join("systemd-resolved")
}

/// Debian's systemd-resolved and libnss-resolve, downloaded with `apt-get download` and unpacked
/// (not installed: installing systemd-resolved takes over the host's /etc/resolv.conf). Best
/// effort: without them the nss-resolve test says SKIP. Returns whether anything was done.
fn fetch_resolved() -> bool {
    let root = resolved_root();
    if root.join("lib/systemd/systemd-resolved").exists() {
        return false;
    }
    let dl = util::target_dir().join("debs").join("download");
    let r = (|| -> Result<()> {
        std::fs::create_dir_all(&dl)?;
        std::fs::create_dir_all(&root)?;
        let download = || {
            let mut c = Command::new("apt-get");
            c.current_dir(&dl).args(["download", "-q", "systemd-resolved", "libnss-resolve"]);
            util::run_quiet(&mut c)
        };
        // A machine whose packages were all there has not run `apt-get update` (no lists yet).
        download()
            .or_else(|_| {
                util::run_quiet(Command::new("apt-get").args(["update", "-q"]))?;
                download()
            })
            .context("apt-get download systemd-resolved libnss-resolve")?;
        for e in std::fs::read_dir(&dl)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                let mut x = Command::new("dpkg-deb");
                x.arg("-x").arg(&p).arg(&root);
                util::run_quiet(&mut x).with_context(|| format!("dpkg-deb -x {}", p.display()))?;
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => {
            println!("setup: unpacked systemd-resolved and libnss-resolve into {}", root.display());
            true
        }
        Err(e) => {
            println!("setup: warning: could not fetch systemd-resolved ({e:#}); the nss-resolve test will SKIP");
            false
        }
    }
}
