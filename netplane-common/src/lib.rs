//! Shared between the eBPF programs (`no_std`) and userspace (`feature = "user"`).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` and defined once
//! here; so are the numbered drop reasons, the path counters and the limits.
#![no_std]

/// Fails the build when a type shared with the kernel changes size: the
/// eBPF programs and userspace read the same bytes, so a size change must
/// be a decision, not an accident.
macro_rules! kernel_abi {
    ($($ty:ty => $size:literal),+ $(,)?) => {
        $( const _: () = assert!(core::mem::size_of::<$ty>() == $size); )+
    };
}

pub mod checksum;
pub mod counters;
pub mod events;
pub mod limits;
pub mod maps;
pub mod nat;
pub mod registry;
pub mod services;

pub use counters::{DropReason, Path};
pub use maps::{LocalPod, NodeConfig, PodSlot, RouteTarget};
