//! `cargo xtask vm`: netplane on real virtual machines — each with its own
//! kernel (Debian's bookworm-backports 6.12), virtio-net NIC, BPF
//! filesystem and neighbour table — booted by virtme-ng under QEMU with the
//! host's root filesystem shared read-only, so the VMs run the binaries and
//! the eBPF object just built (docs/decisions.md §39).
//!
//! - `kernel`: the guest kernel, downloaded and unpacked once (never
//!   installed on the host);
//! - `machines`: the VMs' network (a bridge and taps in a namespace of its
//!   own), booting them, talking to them, tearing them down;
//! - `guest`: what runs inside a VM: its address, the same provisioning
//!   script as the Vagrantfile's, then the commands the host sends;
//! - `checks`: `vm test`'s checks;
//! - `vagrant`: `vm vagrant`, the users' Vagrant deployment run for real.
mod checks;
pub mod guest;
pub mod k8s;
pub mod kernel;
pub mod machines;
pub mod vagrant;

use anyhow::Result;

/// `cargo xtask vm test`: two node VMs and a load balancer VM (with the
/// internet host as a namespace in it), each running its agent on its
/// virtio NIC, and the checks of `checks`.
pub fn test(kernel: kernel::Kernel) -> Result<()> {
    let vmlinuz = kernel::ensure(kernel)?;
    machines::preflight()?;
    let started = std::time::Instant::now();
    let cluster = machines::Cluster::boot(&vmlinuz, &machines::Boot::vm_test())?;
    let result = checks::run(&cluster, kernel);
    cluster.shut_down();
    result?;
    eprintln!(
        "== vm test: passed on Linux {} in {:.0} s (boot and checks)",
        kernel.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
