use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary. Rerun when it
/// changes (e.g. after `cargo xtask setup` rebuilt it). Mirrors aya-template.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
