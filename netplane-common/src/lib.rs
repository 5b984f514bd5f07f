//! Shared between the eBPF programs (`no_std`) and userspace (`feature = "user"`).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` and defined once
//! here; so are the numbered drop reasons, the path counters and the limits.
#![no_std]

pub mod checksum;
pub mod counters;
pub mod events;
pub mod limits;
pub mod maps;
pub mod nat;

pub use counters::{DropReason, Path};
pub use maps::{LocalPod, NodeConfig, RouteTarget};
