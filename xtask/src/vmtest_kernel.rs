//! Guest kernels for `vm-test`: Debian's linux-image packages, downloaded with `apt-get download`
//! and unpacked with `dpkg-deb -x` into `target/vm-kernels/<series>/` (never installed), then
//! `depmod -b` so the guest's modprobe finds its modules. Cached: once `ready` exists, a run does
//! no apt call at all (`rm -rf target/vm-kernels` to fetch the current ABI again).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The kernel series we test on.
pub const SERIES: &[&str] = &["6.1", "6.12"];

/// An unpacked guest kernel.
pub struct Kernel {
    pub series: String,
    /// The package it came from (`linux-image-6.1.0-56-amd64`).
    pub package: String,
    /// `uname -r` of the guest (`6.1.0-56-amd64`).
    pub release: String,
    /// The unpacked package: `<root>/boot/vmlinuz-<release>`, `<root>/lib/modules/<release>`.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// The cached kernel of `series`, fetched and unpacked first if it is not cached yet.
pub fn ensure(series: &str) -> Result<Kernel> {
    let dir = util::target_dir().join("vm-kernels").join(series);
    let ready = dir.join("ready");
    if let Ok(text) = std::fs::read_to_string(&ready) {
        let mut it = text.split_whitespace();
        if let (Some(package), Some(release)) = (it.next(), it.next()) {
            let k = Kernel {
                series: series.into(),
                package: package.into(),
                release: release.into(),
                root: dir.join("root"),
            };
            if k.vmlinuz().is_file() && k.modules().join("modules.dep").is_file() {
                return Ok(k);
            }
        }
    }
    let package = resolve_package(series)?;
    println!("vm-test: fetching {package} (guest kernel {series}) into {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut dl = util::cmd("apt-get", ["download", "-q", &package]);
    dl.current_dir(&dir);
    util::run_quiet(&mut dl).with_context(|| format!("downloading {package}"))?;
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb in {}", dir.display()))?;
    let root = dir.join("root");
    util::run_quiet(&mut util::cmd("dpkg-deb", ["-x".as_ref(), deb.as_os_str(), root.as_os_str()]))?;
    let _ = std::fs::remove_file(&deb);
    let release = std::fs::read_dir(root.join("lib/modules"))
        .context("the package has no lib/modules")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the package has no lib/modules/<release>")?;
    let k = Kernel { series: series.into(), package: package.clone(), release: release.clone(), root };
    if !k.vmlinuz().is_file() {
        bail!("{package} has no {}", k.vmlinuz().display());
    }
    // The guest's modprobe (autoloading veth & co.) reads modules.dep from this tree.
    util::run_quiet(&mut util::cmd("depmod", ["-b".as_ref(), k.root.as_os_str(), release.as_ref()]))?;
    std::fs::write(&ready, format!("{package} {release}\n"))?;
    Ok(k)
}

/// The current package name of `series` from apt's lists (`apt-get update` once if they are
/// empty or do not know it).
fn resolve_package(series: &str) -> Result<String> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    loop {
        if let Some(p) = lookup(series)? {
            return Ok(p);
        }
        if UPDATED.swap(true, Ordering::SeqCst) {
            bail!(
                "apt knows no linux-image package for kernel {series} (looked for {}); is this Debian 12 (bookworm) with its -security or -backports suite?",
                match series {
                    "6.12" => "linux-image-6.12-amd64's dependency",
                    _ => "linux-image-6.1.0-<N>-amd64",
                }
            );
        }
        println!("vm-test: apt-get update (to find the kernel packages)");
        util::run_quiet(&mut util::cmd("apt-get", ["update", "-q"]))?;
    }
}

fn lookup(series: &str) -> Result<Option<String>> {
    match series {
        // The meta package depends on the current ABI: linux-image-6.12.<N>+deb12-amd64.
        "6.12" => {
            let out = Command::new("apt-cache")
                .args(["depends", "linux-image-6.12-amd64"])
                .output()
                .context("running apt-cache")?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends:"))
                .map(str::trim)
                .find(|p| p.starts_with("linux-image-6.12.") && p.ends_with("-amd64"))
                .map(str::to_string))
        }
        "6.1" => {
            let out = Command::new("apt-cache")
                .args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"])
                .output()
                .context("running apt-cache")?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter_map(|p| {
                    let abi = p.strip_prefix("linux-image-6.1.0-")?.strip_suffix("-amd64")?;
                    Some((abi.parse::<u32>().ok()?, p.to_string()))
                })
                .max()
                .map(|(_, p)| p))
        }
        other => bail!("unknown kernel series {other} (known: {})", SERIES.join(", ")),
    }
}

/// Modules the initramfs loads before it can mount the host's root over 9p (virtio-pci and 9p
/// are modules in Debian's 6.1, partly built in in 6.12), dependencies first; `.ko.xz` files
/// are decompressed into `dest` (busybox insmod loads plain `.ko`). Returns the load order.
pub fn initramfs_modules(k: &Kernel, dest: &Path) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    for m in ["virtio_pci", "9pnet_virtio", "9p"] {
        let out = util::run_quiet(&mut util::cmd(
            "modprobe",
            [
                "-d".as_ref(),
                k.root.as_os_str(),
                "-S".as_ref(),
                k.release.as_ref(),
                "--show-depends".as_ref(),
                m.as_ref(),
            ],
        ))?;
        for line in out.lines() {
            // "insmod /path/x.ko[.xz] [params]" or "builtin x"
            let mut w = line.split_whitespace();
            if w.next() != Some("insmod") {
                continue;
            }
            let Some(path) = w.next() else { continue };
            let path = Path::new(path);
            let name = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .to_string();
            if order.contains(&name) {
                continue;
            }
            let target = dest.join(&name);
            if path.extension().is_some_and(|e| e == "xz") {
                let data = run_bytes(&mut util::cmd("xz", ["-dc".as_ref(), path.as_os_str()]))?;
                std::fs::write(&target, data)?;
            } else if path.extension().is_some_and(|e| e == "zst") {
                let data = run_bytes(&mut util::cmd("zstd", ["-dc".as_ref(), path.as_os_str()]))?;
                std::fs::write(&target, data)?;
            } else {
                std::fs::copy(path, &target).with_context(|| format!("copying {}", path.display()))?;
            }
            order.push(name);
        }
    }
    Ok(order)
}

/// Runs a command; its stdout as bytes, or an error with its stderr.
fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("could not start `{}`", util::display_cmd(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", util::display_cmd(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}
