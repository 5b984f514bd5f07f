//! ClusterIP Services in the data path (docs/services.md): a pod's packet
//! to a service frontend (cluster IP, port, protocol) gets a ready
//! backend's address, as kube-proxy's DNAT would, and the backend's
//! replies get the frontend back before they reach the client pod.
//!
//! Four maps: `SERVICES` (frontend -> service), `SERVICE_BACKENDS`
//! ((service, index) -> backend), and two LRU tables that play conntrack:
//! `SERVICE_FLOWS` (the client's tuple -> its backend, so a flow keeps its
//! backend) and `SERVICE_REPLIES` (the backend's reply tuple -> the
//! frontend to restore). `SERVICE_AFFINITY` holds ClientIP affinity.

pub mod names {
    pub const SERVICE_CONFIG: &str = "SERVICE_CONFIG";
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_BACKENDS: &str = "SERVICE_BACKENDS";
    pub const SERVICE_FLOWS: &str = "SERVICE_FLOWS";
    pub const SERVICE_REPLIES: &str = "SERVICE_REPLIES";
    pub const SERVICE_AFFINITY: &str = "SERVICE_AFFINITY";
}

/// Service ports (frontends) a node can hold.
pub const MAX_SERVICES: u32 = 4_096;
/// Ready backends one service port can spread over.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 256;
/// Backends over all services.
pub const MAX_SERVICE_BACKENDS: u32 = 65_536;
/// Service flows remembered per node (least recently used go first).
pub const MAX_SERVICE_FLOWS: u32 = 65_536;
/// ClientIP affinities remembered per node.
pub const MAX_SERVICE_AFFINITIES: u32 = 16_384;
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`
/// (3 hours), which kube-proxy passes to iptables' `recent` match.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// SERVICE_CONFIG[0]: the service CIDR and the address hairpinned flows
/// take as their source. A zero mask: no service CIDR (the programs leave
/// its addresses alone); `frontends` 0: no reply can be a service's, and
/// the programs skip that lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceConfig {
    pub cidr: u32,
    pub mask: u32,
    /// The node's pod gateway (the pod CIDR's first address, cbr0's on
    /// kubenet): a pod that reaches itself through a service sees this
    /// source, as kube-proxy's hairpin masquerade gives it.
    pub hairpin_ip: u32,
    /// Frontends in SERVICES.
    pub frontends: u32,
}

impl ServiceConfig {
    #[inline(always)]
    pub fn in_range(&self, ip: u32) -> bool {
        self.mask != 0 && ip & self.mask == self.cidr
    }
}

/// SERVICES key: a frontend. Port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub ip: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    pub const fn new(ip: u32, port: u16, proto: u8) -> Self {
        Self {
            ip,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// SERVICES value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Names this service's backends in SERVICE_BACKENDS.
    pub id: u32,
    /// Ready backends: indices 0..backends. 0: the frontend rejects (ICMP
    /// port unreachable, as kube-proxy's REJECT rule answers).
    pub backends: u32,
    /// ClientIP session affinity timeout; 0: none.
    pub affinity_secs: u32,
    pub _pad: u32,
}

/// SERVICE_BACKENDS key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service: u32,
    pub index: u32,
}

/// A backend (SERVICE_BACKENDS value): pod address and target port (host
/// order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// SERVICE_FLOWS value: the flow's backend, and the source the backend
/// sees (the client's own, or for a masqueraded flow the hairpin address
/// or the node's, with a random port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceFlow {
    pub backend_ip: u32,
    pub backend_port: u16,
    pub src_port: u16,
    pub src_ip: u32,
    /// The backend's index in SERVICE_BACKENDS when the flow opened: a new
    /// TCP connection on the same tuple keeps the backend only while it is
    /// still there.
    pub index: u32,
}

/// SERVICE_REPLIES value: what the backend's reply must look like again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceReply {
    /// The frontend the client sent to: the reply's source again.
    pub frontend_ip: u32,
    /// The client: the reply's destination again (differs from the reply's
    /// destination only for a masqueraded flow).
    pub client_ip: u32,
    pub frontend_port: u16,
    pub client_port: u16,
    pub _pad: u32,
    /// bpf_ktime_get_ns at the flow's start and at its latest reply: a UDP
    /// entry idle longer than conntrack's UDP stream timeout is stale.
    pub last_ns: u64,
}

/// kube-proxy masquerades a flow it cannot leave as it is (a pod reaching
/// itself, the node's own traffic) with `MASQUERADE --random-fully`: the
/// source port is drawn at random from this range (nf_nat's default).
pub const MASQUERADE_PORT_MIN: u16 = 1024;
pub const MASQUERADE_PORT_MAX: u16 = 65535;
/// Random ports tried before a masqueraded flow is refused.
pub const MASQUERADE_PORT_TRIES: u32 = 8;

/// SERVICE_AFFINITY key: (client, frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client_ip: u32,
    pub frontend: ServiceKey,
}

/// SERVICE_AFFINITY value: the client's backend and when it last opened a
/// flow to it (bpf_ktime_get_ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub backend: Backend,
    /// The backend's index in SERVICE_BACKENDS.
    pub index: u32,
    pub last_ns: u64,
}

kernel_abi!(
    ServiceConfig => 16,
    ServiceKey => 8,
    Service => 16,
    BackendKey => 8,
    Backend => 8,
    ServiceFlow => 16,
    ServiceReply => 24,
    AffinityKey => 12,
    Affinity => 24,
);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::ServiceConfig {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::Service {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::ServiceReply {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::ServiceFlow {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::Affinity {}
}
