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

    /// The reply tuple (NAT_IN's key) of this original tuple translated to
    /// `nat_ip:nat_port`.
    pub const fn reply_via(&self, nat_ip: u32, nat_port: u16) -> Self {
        Self::new(self.dst_ip, nat_ip, self.dst_port, nat_port, self.proto)
    }
}

/// NAT_OUT value: how the original tuple is translated, and what the flow
/// has shown of its life. Each flag is a byte of its own, only ever set
/// (or all cleared together when a SYN reopens a closed tuple): a packet on
/// one CPU cannot overwrite a flag another CPU has just set, as a shared
/// state byte rewritten on every packet could.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub nat_ip: u32,
    pub nat_port: u16,
    /// A reply was seen (TCP: the SYN-ACK; UDP: traffic both ways).
    pub replied: u8,
    /// The inside sent a FIN.
    pub fin_out: u8,
    /// Accounting slot (index into the SNAT_* arrays) the port came from.
    pub slot: u32,
    /// The remote sent a FIN.
    pub fin_in: u8,
    /// Either side sent an RST.
    pub rst: u8,
    pub _pad: u16,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) at creation and last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// TCP: the acknowledgment number of the inside's latest packet (the
    /// next byte it expects from the remote) and of the remote's latest
    /// packet, in host order: an RST with exactly that sequence number is
    /// one the receiver accepts (RFC 5961), for TCP reset on idle.
    pub ack_out: u32,
    pub ack_in: u32,
}

/// Where a flow is in its life, from its flags: what its timeout depends
/// on (Linux conntrack's TCP states, coarsened to what decides a timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No reply yet (TCP: SYN sent; UDP and ICMP: one direction).
    New,
    /// Replies seen (UDP: a stream), no FIN or RST.
    Established,
    /// The inside sent a FIN, the remote not yet.
    FinWait,
    /// The remote sent a FIN, the inside not yet.
    CloseWait,
    /// Both sent a FIN.
    TimeWait,
    /// An RST was seen.
    Close,
}

impl Phase {
    pub const fn name(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::Established => "established",
            Phase::FinWait => "fin_wait",
            Phase::CloseWait => "close_wait",
            Phase::TimeWait => "time_wait",
            Phase::Close => "close",
        }
    }
}

impl NatEntry {
    /// The flow's phase (only TCP sets the closing flags).
    pub const fn phase(&self) -> Phase {
        if self.rst != 0 {
            Phase::Close
        } else if self.fin_out != 0 && self.fin_in != 0 {
            Phase::TimeWait
        } else if self.fin_in != 0 {
            Phase::CloseWait
        } else if self.fin_out != 0 {
            Phase::FinWait
        } else if self.replied != 0 {
            Phase::Established
        } else {
            Phase::New
        }
    }
}

/// FRAGMENTS key: the datagram a fragment belongs to, as the program sees
/// it (before its own translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    /// The IP identification.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// FRAGMENTS value: the ports the datagram's first fragment carried (ICMP
/// echo: as `FlowKey` holds them), for its later fragments, which have none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub src_port: u16,
    pub dst_port: u16,
}

/// Remote ports remembered for the port-restricted filter of UDP cone
/// flows (LRU).
pub const MAX_CONE_PEERS: u32 = 65_536;

/// Translations a full table remembers as candidates to evict (the newest,
/// a queue that drops its oldest when full; decisions §34).
pub const EVICTION_CANDIDATES: u32 = 16_384;

/// Candidates a new flow looks at before it gives up on a full table: the
/// bound on what a flood of new flows costs each packet (Linux's
/// early_drop looks at a few buckets the same way).
pub const EVICTION_TRIES: u32 = 8;

/// Datagrams in fragments whose ports are remembered (LRU) at each stage.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8192;

/// NAT_IN value: where a reply goes back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub orig_ip: u32,
    pub orig_port: u16,
    pub _pad: u16,
}

/// One claim the agent's collector releases: its NAT_IN key and the slot
/// its port is counted in (`NO_SLOT`: none, nothing to credit). The
/// `release_claims` program deletes the claim and, only if it was there,
/// credits the slot in SNAT_FREES, within one program run: no kill of the
/// agent can come between the two (docs/decisions.md §47). It sets
/// `released` to 1 for each claim it deleted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimRelease {
    pub key: FlowKey,
    pub slot: u32,
    pub released: u32,
}

impl ClaimRelease {
    /// The slot of a claim whose port no slot counts.
    pub const NO_SLOT: u32 = u32::MAX;
}

/// Claims per run of `release_claims`: the frame is the claims, and
/// 64 × 24 bytes fits the page an XDP test run gets.
pub const RELEASE_BATCH: usize = 64;

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
    /// The VNet's address space: private destinations outside it have no
    /// route (Azure's system routes, next hop None).
    pub vnet: u32,
    pub vnet_mask: u32,
    /// 1: UDP is port-restricted cone NAT (Azure's load balancer): one port
    /// per inside endpoint and remote IP, whatever the remote port.
    pub udp_cone: u32,
}

impl NatConfig {
    /// True for destinations on the node subnet (the next hop is the
    /// destination itself); false for all when no subnet is configured.
    #[inline(always)]
    pub const fn on_link(&self, ip: u32) -> bool {
        self.subnet != 0 && ip & self.subnet_mask == self.subnet
    }

    /// True for destinations Azure's system routes drop: inside one of the
    /// private ranges of [`crate::limits::AZURE_NONE_ROUTES`] and outside
    /// the VNet's address space.
    #[inline(always)]
    pub const fn next_hop_none(&self, ip: u32) -> bool {
        if self.vnet_mask != 0 && ip & self.vnet_mask == self.vnet {
            return false;
        }
        let mut i = 0;
        while i < crate::limits::AZURE_NONE_ROUTES.len() {
            let (net, prefix) = crate::limits::AZURE_NONE_ROUTES[i];
            // Map-key form: the octets as they sit in the packet.
            let mask = u32::from_ne_bytes((u32::MAX << (32 - prefix)).to_be_bytes());
            if ip & mask == u32::from_ne_bytes(net) {
                return true;
            }
            i += 1;
        }
        false
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
    pub const SNAT_EVICTS: &str = "SNAT_EVICTS";
    /// The newest translations, oldest first: where a full table looks for
    /// an unreplied flow to give up.
    pub const EVICTION_QUEUE: &str = "EVICTION_QUEUE";
    pub const LB_BACKENDS: &str = "LB_BACKENDS";
    pub const LB_FRONTENDS: &str = "LB_FRONTENDS";
    /// Not pinned: a hint, rebuilt by traffic.
    pub const PORT_HINTS: &str = "PORT_HINTS";
    /// Not pinned: fragments in flight (fragments.rs in the programs).
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Not pinned: the remote ports UDP cone flows sent to (filtering).
    pub const CONE_PEERS: &str = "CONE_PEERS";
    pub const PORT_OWNED: &str = "PORT_OWNED";
    /// Not pinned: a search hint, made by the agent with the port blocks
    /// and rebuilt by traffic.
    pub const PORT_BITMAPS: &str = "PORT_BITMAPS";
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
/// Per-flow maps compiled smaller than the NAT tables: tables sized below
/// a map's compiled capacity (a large lab's share) shrink it to their size;
/// larger ones leave it as compiled.
pub const FLOW_MAPS: [(&str, u32); 4] = [
    (names::PORT_HINTS, MAX_PORT_HINTS),
    (names::CONE_PEERS, MAX_CONE_PEERS),
    (
        crate::services::names::SERVICE_FLOWS,
        crate::services::MAX_SERVICE_FLOWS,
    ),
    (
        crate::services::names::SERVICE_REPLIES,
        crate::services::MAX_SERVICE_FLOWS,
    ),
];
/// Accounting slots: 1000 backends x 16 frontend IPs would not fit a lab;
/// this covers the lab and the validation limits' common cases.
pub const MAX_SNAT_SLOTS: u32 = 4096;
/// Most frontend IPs a backend's allocation tries.
pub const MAX_FRONTENDS: u32 = 16;
/// PORT_OWNED's value is when the port was last claimed
/// (bpf_ktime_get_ns): the collector clears only marks claimed before it
/// began to learn which ports are held, so a port claimed during its pass
/// keeps its mark.
pub const fn claimed_before(claimed_ns: u64, since_ns: u64) -> bool {
    claimed_ns < since_ns
}

/// The key of PORT_OWNED: a translated address and port, whoever the remote.
pub const fn owned_key(nat_ip: u32, nat_port: u16, proto: u8) -> FlowKey {
    FlowKey::new(0, nat_ip, 0, nat_port, proto)
}

/// Destinations whose next free port is remembered (an LRU hint only).
pub const MAX_PORT_HINTS: u32 = 65_536;

/// The ports of one SNAT IP and protocol that some flow holds, a bit per
/// port (PORT_BITMAPS' value): where a new flow looks first for a port no
/// flow uses, 64 ports a word. A hint only: a bit may be stale either way,
/// and the NAT_IN insert stays the claim (docs/decisions.md §44).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    pub words: [u64; PORT_BITMAP_WORDS],
}

/// Words of a [`PortBitmap`]: 65,536 ports, 64 a word.
pub const PORT_BITMAP_WORDS: usize = 65_536 / 64;
/// SNAT IPs with a bitmap: a node has one, a load balancer one per
/// frontend (a backend's allocation tries at most [`MAX_FRONTENDS`]).
pub const MAX_SNAT_IPS: u32 = MAX_FRONTENDS;
/// Protocols with a bitmap per SNAT IP (TCP, UDP, ICMP).
pub const BITMAP_PROTOS: [u8; 3] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP];

impl PortBitmap {
    pub const EMPTY: Self = Self {
        words: [0; PORT_BITMAP_WORDS],
    };

    /// PORT_BITMAPS' key for an SNAT IP (`ip_key` form) and protocol.
    pub const fn key(nat_ip: u32, proto: u8) -> u64 {
        (nat_ip as u64) << 8 | proto as u64
    }

    /// The word holding `port`'s bit, and the bit.
    pub const fn word_and_bit(port: u16) -> (usize, u64) {
        ((port / 64) as usize, 1 << (port % 64))
    }

    pub fn set(&mut self, port: u16) {
        let (w, b) = Self::word_and_bit(port);
        self.words[w] |= b;
    }

    pub fn clear(&mut self, port: u16) {
        let (w, b) = Self::word_and_bit(port);
        self.words[w] &= !b;
    }

    pub const fn is_set(&self, port: u16) -> bool {
        let (w, b) = Self::word_and_bit(port);
        self.words[w] & b != 0
    }
}

kernel_abi!(FlowKey => 16, NatEntry => 40, NatReverse => 8, SnatSlot => 8, NatConfig => 40);
kernel_abi!(PortBitmap => 8192);
kernel_abi!(FragKey => 12, FragPorts => 4, ClaimRelease => 24);

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
    // SAFETY: repr(C), an array of integers.
    unsafe impl aya::Pod for super::PortBitmap {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::NatConfig {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::FragPorts {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::ClaimRelease {}
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::maps::ip_key;

    #[test]
    fn private_ranges_outside_the_vnet_have_no_route() {
        let cfg = NatConfig {
            vnet: ip_key([10, 224, 0, 0]),
            vnet_mask: ip_key([255, 240, 0, 0]),
            ..Default::default()
        };
        for dropped in [
            [10, 0, 0, 10],
            [10, 255, 255, 255],
            [172, 16, 0, 1],
            [172, 31, 255, 255],
            [192, 168, 1, 1],
            [100, 64, 0, 1],
            [100, 127, 255, 255],
        ] {
            assert!(cfg.next_hop_none(ip_key(dropped)), "{dropped:?}");
        }
        for routed in [
            [10, 224, 0, 4], // the VNet
            [10, 239, 255, 255],
            [172, 32, 0, 1],   // just past 172.16/12
            [100, 128, 0, 1],  // just past 100.64/10
            [203, 0, 113, 10], // the internet
            [9, 255, 255, 255],
        ] {
            assert!(!cfg.next_hop_none(ip_key(routed)), "{routed:?}");
        }
    }

    #[test]
    fn port_bitmap_bits() {
        let mut b = PortBitmap::EMPTY;
        for p in [0, 63, 64, 1024, 65535] {
            assert!(!b.is_set(p));
            b.set(p);
            assert!(b.is_set(p));
        }
        assert_eq!(b.words[0], 1 | 1 << 63);
        assert_eq!((b.words[1], b.words[16], b.words[1023]), (1, 1, 1 << 63));
        b.clear(63);
        assert_eq!(b.words[0], 1);
        // Keys differ by protocol and address.
        assert_ne!(PortBitmap::key(1, PROTO_TCP), PortBitmap::key(1, PROTO_UDP));
        assert_ne!(PortBitmap::key(1, PROTO_TCP), PortBitmap::key(2, PROTO_TCP));
    }

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
