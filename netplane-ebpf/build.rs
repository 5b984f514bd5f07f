use which::which;

/// bpf-linker links the BPF object; rebuild when it changes (aya-template's
/// recipe).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
