use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds `enforcer-ebpf` for the BPF target with Debian's toolchain (`rustup toolchain link debian
/// /usr`, see shared/TOOLCHAIN.md; `cargo xtask setup` does it). The object is embedded in the agent.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "enforcer-ebpf")
        .ok_or_else(|| anyhow!("enforcer-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let toolchain = std::env::var("ENFORCER_BPF_TOOLCHAIN").unwrap_or_else(|_| "debian".into());
    println!("cargo:rerun-if-env-changed=ENFORCER_BPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (needs bpf-linker and the `debian` rustup toolchain)")
}
