//! Builds netplane-ebpf for the BPF target (nightly + bpf-linker, installed by
//! `cargo xtask setup`) and leaves the object in OUT_DIR for include_bytes.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../netplane-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netplane-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
