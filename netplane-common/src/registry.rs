//! Every map of the data path, declared once with its kind, key and value.
//!
//! A map's name is its eBPF static's, its pin's and its name here (the
//! `names` modules hold the strings). netplane-ebpf declares each static
//! through its `map!` macro, which fails the build unless this registry
//! has the map under the same name with the same kind, key and value;
//! userspace opens maps only through these definitions (netplane-user's
//! `datapath::pins` for an agent's pins, `Datapath` for a loaded object),
//! so a map is never opened by a string or read as the wrong type.
use core::marker::PhantomData;

use crate::{
    LocalPod, NodeConfig, PodSlot, RouteTarget,
    counters::PathCounter,
    events::{EventBudget, names as ev},
    maps::names,
    nat::{
        FlowKey, FragKey, FragPorts, NatConfig, NatEntry, NatReverse, PortBitmap, SnatSlot,
        names as nat,
    },
    services::{
        Affinity, AffinityKey, Backend, BackendKey, Service, ServiceConfig, ServiceFlow,
        ServiceKey, ServiceReply, names as svc,
    },
};

/// The kinds of map, as marker types (never values).
pub mod kind {
    pub enum Hash {}
    pub enum LruHash {}
    pub enum Array {}
    pub enum PerCpuArray {}
    pub enum LpmTrie {}
    pub enum Queue {}
    pub enum RingBuf {}
}

/// One map: its name, and (as types) its kind, key and value. Arrays are
/// keyed by `u32`; a queue's and a ring's key is `()`.
pub struct MapDef<Kind, K, V> {
    pub name: &'static str,
    types: Types<Kind, K, V>,
}

/// The types a definition carries, and no value of them.
type Types<Kind, K, V> = PhantomData<fn() -> (Kind, K, V)>;

impl<Kind, K, V> MapDef<Kind, K, V> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }
}

impl<Kind, K, V> Clone for MapDef<Kind, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Kind, K, V> Copy for MapDef<Kind, K, V> {}

/// String equality a `const` can use (the eBPF crate's name check).
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

pub const ROUTES: MapDef<kind::LpmTrie, u32, RouteTarget> = MapDef::new(names::ROUTES);
pub const INBOUND_FLOWS: MapDef<kind::LruHash, FlowKey, u64> = MapDef::new(names::INBOUND_FLOWS);
pub const LOCAL_PODS: MapDef<kind::Hash, u32, LocalPod> = MapDef::new(names::LOCAL_PODS);
pub const POD_SLOTS: MapDef<kind::Array, u32, PodSlot> = MapDef::new(names::POD_SLOTS);
pub const NODE_CONFIG: MapDef<kind::Array, u32, NodeConfig> = MapDef::new(names::NODE_CONFIG);
pub const DROPS: MapDef<kind::PerCpuArray, u32, u64> = MapDef::new(names::DROPS);
pub const PATHS: MapDef<kind::PerCpuArray, u32, PathCounter> = MapDef::new(names::PATHS);

pub const NAT_OUT: MapDef<kind::Hash, FlowKey, NatEntry> = MapDef::new(nat::NAT_OUT);
pub const NAT_IN: MapDef<kind::Hash, FlowKey, NatReverse> = MapDef::new(nat::NAT_IN);
pub const NAT_CONFIG: MapDef<kind::Array, u32, NatConfig> = MapDef::new(nat::NAT_CONFIG);
pub const SNAT_SLOTS: MapDef<kind::Array, u32, SnatSlot> = MapDef::new(nat::SNAT_SLOTS);
pub const SNAT_ALLOCS: MapDef<kind::PerCpuArray, u32, u64> = MapDef::new(nat::SNAT_ALLOCS);
pub const SNAT_FREES: MapDef<kind::Array, u32, u64> = MapDef::new(nat::SNAT_FREES);
pub const SNAT_FAILS: MapDef<kind::PerCpuArray, u32, u64> = MapDef::new(nat::SNAT_FAILS);
pub const SNAT_EVICTS: MapDef<kind::PerCpuArray, u32, u64> = MapDef::new(nat::SNAT_EVICTS);
pub const EVICTION_QUEUE: MapDef<kind::Queue, (), FlowKey> = MapDef::new(nat::EVICTION_QUEUE);
pub const LB_BACKENDS: MapDef<kind::Hash, u32, u32> = MapDef::new(nat::LB_BACKENDS);
pub const LB_FRONTENDS: MapDef<kind::Hash, u32, u32> = MapDef::new(nat::LB_FRONTENDS);
pub const FRAGMENTS: MapDef<kind::LruHash, FragKey, FragPorts> = MapDef::new(nat::FRAGMENTS);
pub const CONE_PEERS: MapDef<kind::LruHash, FlowKey, u64> = MapDef::new(nat::CONE_PEERS);
pub const PORT_HINTS: MapDef<kind::LruHash, FlowKey, u32> = MapDef::new(nat::PORT_HINTS);
pub const PORT_OWNED: MapDef<kind::Hash, FlowKey, u64> = MapDef::new(nat::PORT_OWNED);
pub const PORT_BITMAPS: MapDef<kind::Hash, u64, PortBitmap> = MapDef::new(nat::PORT_BITMAPS);

pub const SERVICE_CONFIG: MapDef<kind::Array, u32, ServiceConfig> =
    MapDef::new(svc::SERVICE_CONFIG);
pub const SERVICES: MapDef<kind::Hash, ServiceKey, Service> = MapDef::new(svc::SERVICES);
pub const SERVICE_BACKENDS: MapDef<kind::Hash, BackendKey, Backend> =
    MapDef::new(svc::SERVICE_BACKENDS);
pub const SERVICE_FLOWS: MapDef<kind::LruHash, FlowKey, ServiceFlow> =
    MapDef::new(svc::SERVICE_FLOWS);
pub const SERVICE_REPLIES: MapDef<kind::LruHash, FlowKey, ServiceReply> =
    MapDef::new(svc::SERVICE_REPLIES);
pub const SERVICE_AFFINITY: MapDef<kind::LruHash, AffinityKey, Affinity> =
    MapDef::new(svc::SERVICE_AFFINITY);

pub const FLOW_EVENTS: MapDef<kind::RingBuf, (), ()> = MapDef::new(ev::FLOW_EVENTS);
pub const EVENT_BUDGET: MapDef<kind::PerCpuArray, u32, EventBudget> = MapDef::new(ev::EVENT_BUDGET);
pub const EVENTS_SUPPRESSED: MapDef<kind::PerCpuArray, u32, u64> =
    MapDef::new(ev::EVENTS_SUPPRESSED);
