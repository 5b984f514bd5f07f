//! The maps, each declared through `maps!` against
//! `netplane_common::registry` (name, kind, key and value checked at
//! compile time).
use crate::registry::maps;
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue},
};
use netplane_common::{
    DropReason, LocalPod, NodeConfig, Path, PodSlot, RouteTarget,
    counters::PathCounter,
    maps::{MAX_INBOUND_FLOWS, MAX_LOCAL_PODS, MAX_ROUTES, POD_SLOTS_LEN},
    nat::{
        BITMAP_PROTOS, EVICTION_CANDIDATES, FlowKey, FragKey, FragPorts, MAX_CONE_PEERS,
        MAX_FRAGMENTED_DATAGRAMS, MAX_NAT_ENTRIES, MAX_PORT_HINTS, MAX_SNAT_IPS, MAX_SNAT_SLOTS,
        NatConfig, NatEntry, NatReverse, PortBitmap, SnatSlot,
    },
    services::{
        Affinity, AffinityKey, Backend, BackendKey, MAX_SERVICE_AFFINITIES, MAX_SERVICE_BACKENDS,
        MAX_SERVICE_FLOWS, MAX_SERVICES, Service, ServiceConfig, ServiceFlow, ServiceKey,
        ServiceReply,
    },
};

maps! {
    /// The UDR table: pod CIDR -> owner node IP.
    ROUTES: LpmTrie<u32, RouteTarget> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

    /// Flows opened toward this node's pods from outside the cluster pod CIDR,
    /// by the pod side's tuple -> when last seen (inbound.rs).
    INBOUND_FLOWS: LruHashMap<FlowKey, u64> =
        LruHashMap::with_max_entries(MAX_INBOUND_FLOWS, 0);

    /// Pods on this node: pod IP -> veth ifindex and MACs.
    LOCAL_PODS: HashMap<u32, LocalPod> = HashMap::with_max_entries(MAX_LOCAL_PODS, 0);

    /// Host-side veth ifindex (its low bits) -> the pod behind it: the
    /// anti-spoofing check's fast answer (netplane_common::maps::PodSlot).
    POD_SLOTS: Array<PodSlot> = Array::with_max_entries(POD_SLOTS_LEN, 0);

    /// This node: slot 0.
    NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

    /// Drops per reason, per CPU.
    DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::SLOTS, 0);

    /// Packets and bytes per path, per CPU.
    PATHS: PerCpuArray<PathCounter> = PerCpuArray::with_max_entries(Path::SLOTS, 0);

    /// Translations by original tuple.
    NAT_OUT: HashMap<FlowKey, NatEntry> = HashMap::with_max_entries(MAX_NAT_ENTRIES, 0);

    /// Translations by reply tuple; inserting a key claims its port.
    NAT_IN: HashMap<FlowKey, NatReverse> = HashMap::with_max_entries(MAX_NAT_ENTRIES, 0);

    /// Where translated traffic goes next; slot 0.
    NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

    /// Port blocks (SNAT IP, range), by accounting slot.
    SNAT_SLOTS: Array<SnatSlot> = Array::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// Ports ever allocated per slot, per CPU (each CPU writes only its own
    /// count, so the sum is exact without atomics).
    SNAT_ALLOCS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// Ports ever freed per slot: written only by `release_claims`, which the
    /// agent's collector runs, so allocated = allocs - frees is exact without a
    /// shared counter.
    SNAT_FREES: Array<u64> = Array::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// New flows refused for want of a port, per slot, per CPU.
    SNAT_FAILS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// Ports taken back from unreplied flows to make room in a full table, per
    /// slot, per CPU: allocated = allocs - frees - evicts.
    SNAT_EVICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// The newest translations' forward keys, oldest first; pushing onto a full
    /// queue drops its oldest.
    EVICTION_QUEUE: Queue<FlowKey> = Queue::with_max_entries(EVICTION_CANDIDATES, 0);

    /// Load balancer: backend node IP -> its first slot.
    LB_BACKENDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SNAT_SLOTS, 0);

    /// Load balancer: frontend IPs (value unused).
    LB_FRONTENDS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

    /// The ports of datagrams in fragments, from their first fragment, by
    /// (addresses, protocol, IP ID): later fragments are translated by them.
    FRAGMENTS: LruHashMap<FragKey, FragPorts> =
        LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

    /// UDP cone flows at the load balancer: (inside address, remote address,
    /// inside port, remote port) an inside endpoint sent to -> when. Replies
    /// from other ports of that remote are refused (port-restricted).
    CONE_PEERS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_CONE_PEERS, 0);

    /// The load balancer, per destination and SNAT IP: where the next free
    /// port of a block probably is (a node searches its port bitmap instead).
    PORT_HINTS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_PORT_HINTS, 0);

    /// Translated (address, port, protocol) in use by some flow, whoever the
    /// remote: the agent's record of which port bitmap bits to keep. Set on
    /// claim; the collector removes the ones no flow holds any more and
    /// clears their bits. No program reads it (decisions.md §51).
    PORT_OWNED: HashMap<FlowKey, u64> = HashMap::with_max_entries(MAX_NAT_ENTRIES, 0);

    /// Per SNAT IP and protocol, the ports some flow holds: where a new flow
    /// finds a free port 64 at a time. Made by the agent with the port blocks
    /// (allocated as added: a node has three), set by claims, cleared by the
    /// collector with the owned-port marks.
    PORT_BITMAPS: HashMap<u64, PortBitmap> =
        HashMap::with_max_entries(MAX_SNAT_IPS * BITMAP_PROTOS.len() as u32, BPF_F_NO_PREALLOC);

    /// Services: the service CIDR and hairpin address; slot 0.
    SERVICE_CONFIG: Array<ServiceConfig> = Array::with_max_entries(1, 0);

    /// Services: frontend -> service.
    SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

    /// Services: (service, index) -> ready backend. Filled by the agent alone,
    /// and mostly empty: entries are allocated as they are added rather than
    /// all at load (BPF_F_NO_PREALLOC).
    SERVICE_BACKENDS: HashMap<BackendKey, Backend> =
        HashMap::with_max_entries(MAX_SERVICE_BACKENDS, BPF_F_NO_PREALLOC);

    /// Service flows: the client's tuple (to the frontend) -> its backend.
    SERVICE_FLOWS: LruHashMap<FlowKey, ServiceFlow> =
        LruHashMap::with_max_entries(MAX_SERVICE_FLOWS, 0);

    /// Service flows: the backend's reply tuple -> the frontend to restore.
    SERVICE_REPLIES: LruHashMap<FlowKey, ServiceReply> =
        LruHashMap::with_max_entries(MAX_SERVICE_FLOWS, 0);

    /// ClientIP session affinity: (client, frontend) -> backend and when.
    SERVICE_AFFINITY: LruHashMap<AffinityKey, Affinity> =
        LruHashMap::with_max_entries(MAX_SERVICE_AFFINITIES, 0);
}

/// Adds one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: this program run is its only writer, and
        // the pointer came from a successful lookup.
        unsafe { *slot += 1 };
    }
}
