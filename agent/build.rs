//! Builds the eBPF object (`ebpf/`) with aya-build so a plain `cargo build` of the agent
//! produces everything; the agent embeds it with `include_bytes_aligned!`. With
//! `AYA_BUILD_SKIP=1` (for work that never loads programs) the agent builds without it and
//! `Datapath::open` says so at run time.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(ward_ebpf_object)");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().with_context(|| format!("{} missing", ebpf_dir.display()))?;
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?.to_owned();
    // The shared types are compiled into the object too.
    println!("cargo:rerun-if-changed={manifest_dir}/../common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "ward-ebpf", root_dir: &ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)")?;
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    if std::path::Path::new(&out_dir).join("ward").exists() {
        println!("cargo:rustc-cfg=ward_ebpf_object");
    }
    Ok(())
}
