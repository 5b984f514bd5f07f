//! The SNAT engine's maps: one engine, two roles (the node's masquerade and
//! the outbound load balancer), same types.
//!
//! A translation is two entries made together: `NAT_OUT`, keyed by the
//! original tuple (inside address and port to the remote), and `NAT_IN`,
//! keyed by the reply's tuple (remote to the translated address and port).
//! Claiming a port *is* inserting its `NAT_IN` key with BPF_NOEXIST, so a
//! port is consumed per destination (remote IP, remote port, protocol), and
//! two CPUs can never take the same one.

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// One direction of a flow. Addresses in `maps::ip_key` form, ports in host
/// order. ICMP echo: the identifier is the inside port; the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    // Two fields rather than [u8; 3]: zeroing a 3-byte array becomes a
    // memset call in BPF that the verifier refuses after it returns.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    pub const fn new(src_ip: u32, dst_ip: u32, src_port: u16, dst_port: u16, proto: u8) -> Self {
        Self {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Connection state, enough for the timeouts.
pub mod state {
    /// First packet seen outbound, no reply yet (SYN sent; UDP/ICMP: new).
    pub const NEW: u8 = 0;
    /// Replies seen, no FIN or RST.
    pub const ESTABLISHED: u8 = 1;
    /// FIN or RST seen: transitory timeout; a SYN reopens it.
    pub const CLOSING: u8 = 2;
}

/// NAT_OUT value: how the original tuple is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub nat_ip: u32,
    pub nat_port: u16,
    pub state: u8,
    pub _pad: u8,
    /// Accounting slot (index into the SNAT_* arrays) the port came from.
    pub slot: u32,
    pub _pad2: u32,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) at creation and last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// NAT_IN value: where a reply goes back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub orig_ip: u32,
    pub orig_port: u16,
    pub _pad: u16,
}

/// A block of ports on one SNAT IP: the unit of allocation and accounting.
/// Node masquerade: one slot (node IP, port range). Load balancer: one slot
/// per backend node per frontend IP (that node's fixed block).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatSlot {
    pub nat_ip: u32,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl SnatSlot {
    pub const fn size(&self) -> u32 {
        (self.port_hi as u32) - (self.port_lo as u32) + 1
    }
}

/// NAT_CONFIG[0].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Next hop for destinations outside the node subnet (the load balancer
    /// or the appliance), `ip_key` form; 0: none.
    pub gateway_ip: u32,
    /// On-link destinations (the node subnet): next hop is the destination.
    pub subnet: u32,
    pub subnet_mask: u32,
    /// Load balancer: slots per backend (= frontend IPs).
    pub slots_per_backend: u32,
    /// Load balancer: the interface towards the internet and its next hop
    /// (0: the destination is on-link).
    pub outside_ifindex: u32,
    pub outside_gateway: u32,
    /// Load balancer: the interface towards the VNet.
    pub inside_ifindex: u32,
    pub _pad: u32,
}

impl NatConfig {
    /// True for destinations on the node subnet (the next hop is the
    /// destination itself); false for all when no subnet is configured.
    #[inline(always)]
    pub const fn on_link(&self, ip: u32) -> bool {
        self.subnet != 0 && ip & self.subnet_mask == self.subnet
    }
}

/// Map names.
pub mod names {
    pub const NAT_OUT: &str = "NAT_OUT";
    pub const NAT_IN: &str = "NAT_IN";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const SNAT_SLOTS: &str = "SNAT_SLOTS";
    pub const SNAT_ALLOCS: &str = "SNAT_ALLOCS";
    pub const SNAT_FREES: &str = "SNAT_FREES";
    pub const SNAT_FAILS: &str = "SNAT_FAILS";
    pub const LB_BACKENDS: &str = "LB_BACKENDS";
    pub const LB_FRONTENDS: &str = "LB_FRONTENDS";
    /// Not pinned: a hint, rebuilt by traffic.
    pub const PORT_HINTS: &str = "PORT_HINTS";
    pub const PORT_OWNED: &str = "PORT_OWNED";
}

/// Translations a node or load balancer can hold at once, as compiled; the
/// cluster file's `limits.nat_table_entries` sets it at load time within
/// the range below.
pub const MAX_NAT_ENTRIES: u32 = 262_144;
/// The range `limits.nat_table_entries` may take.
pub const NAT_TABLE_ENTRIES_MIN: u32 = 1024;
pub const NAT_TABLE_ENTRIES_MAX: u32 = 4 * 1024 * 1024;
/// The maps whose capacity is the NAT table size.
pub const NAT_TABLE_MAPS: [&str; 3] = [names::NAT_OUT, names::NAT_IN, names::PORT_OWNED];
/// Accounting slots: 1000 backends x 16 frontend IPs would not fit a lab;
/// this covers the lab and the validation limits' common cases.
pub const MAX_SNAT_SLOTS: u32 = 4096;
/// Most frontend IPs a backend's allocation tries.
pub const MAX_FRONTENDS: u32 = 16;
/// The key of PORT_OWNED: a translated address and port, whoever the remote.
pub const fn owned_key(nat_ip: u32, nat_port: u16, proto: u8) -> FlowKey {
    FlowKey::new(0, nat_ip, 0, nat_port, proto)
}

/// Destinations whose next free port is remembered (an LRU hint only).
pub const MAX_PORT_HINTS: u32 = 65_536;

kernel_abi!(FlowKey => 16, NatEntry => 32, NatReverse => 8, SnatSlot => 8, NatConfig => 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::NatEntry {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::NatReverse {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::SnatSlot {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::NatConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sizes() {
        let s = SnatSlot {
            nat_ip: 0,
            port_lo: 1024,
            port_hi: 65535,
        };
        assert_eq!(s.size(), 64_512);
    }
}
