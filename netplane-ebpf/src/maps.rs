//! The maps. Names must match `netplane_common::maps::names` (userspace opens
//! them by those names; the packet-table tests fail if they drift).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use netplane_common::{
    DropReason, LocalPod, NodeConfig, Path, RouteTarget,
    counters::PathCounter,
    maps::{MAX_LOCAL_PODS, MAX_ROUTES},
};

/// The UDR table: pod CIDR -> owner node IP.
#[map]
pub static ROUTES: LpmTrie<u32, RouteTarget> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Pods on this node: pod IP -> veth ifindex and MACs.
#[map]
pub static LOCAL_PODS: HashMap<u32, LocalPod> = HashMap::with_max_entries(MAX_LOCAL_PODS, 0);

/// This node: slot 0.
#[map]
pub static NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Drops per reason, per CPU.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::SLOTS, 0);

/// Packets and bytes per path, per CPU.
#[map]
pub static PATHS: PerCpuArray<PathCounter> = PerCpuArray::with_max_entries(Path::SLOTS, 0);
