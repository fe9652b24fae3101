//! Builds the eBPF programs (mesh-ebpf) for bpfel-unknown-none with the eBPF toolchain, so the
//! agent embeds them with include_bytes!. The toolchain must ship LLVM 22 to match bpf-linker;
//! `cargo xtask setup` installs both and exports MESH_EBPF_TOOLCHAIN when the default
//! `nightly` does not fit.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MESH_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=MESH_EBPF_SKIP");
    // The fuzz targets link the agent library but never load programs; building the eBPF crate
    // under the fuzzer's sanitizer flags takes minutes for nothing. An agent built this way
    // refuses to start (ebpf::load checks for the empty object).
    if std::env::var_os("MESH_EBPF_SKIP").is_some_and(|v| v == "1") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("mesh-ebpf");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let toolchain = std::env::var("MESH_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let package = aya_build::Package {
        name: "mesh-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../mesh-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}
