//! A fixed world for the packet tables and the program benchmarks:
//! node-0 (10.224.0.4) of the default cluster. Pod A 10.244.0.2 sends from
//! skb ifindex 1 (lo, where BPF_PROG_TEST_RUN puts every packet); pod B
//! 10.244.0.3 lives behind ifindex 42; node-1 (10.224.0.5) owns
//! 10.244.1.0/24.
use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use ipnet::Ipv4Net;
use netplane_common::{LocalPod, NodeConfig, registry};

use netplane::datapath::{Datapath, LoadOptions, key, put_route};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const NODE0: [u8; 4] = [10, 224, 0, 4];
pub const NODE1: [u8; 4] = [10, 224, 0, 5];
pub const POD_A: [u8; 4] = [10, 244, 0, 2];
pub const POD_B: [u8; 4] = [10, 244, 0, 3];
pub const REMOTE_POD: [u8; 4] = [10, 244, 1, 5];
pub const INTERNET: [u8; 4] = [203, 0, 113, 10];

pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const POD_A_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const POD_B_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0b];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x04];
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x05];

/// A TCP segment with a payload.
pub fn tcp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .tcp(40000, 8080, 1, 64000);
    let mut out = Vec::new();
    b.write(&mut out, b"hello netplane").unwrap();
    out
}

/// node-0's data path with routes and pods A and B registered.
pub fn node0_datapath() -> Datapath {
    node0_datapath_with(true)
}

/// node-0, choosing whether the programs report flow events.
pub fn node0_datapath_with(flow_events: bool) -> Datapath {
    node0_datapath_loaded(&LoadOptions {
        flow_events,
        ..LoadOptions::default()
    })
}

/// node-0 loaded as `opts` says (NAT table size, say).
pub fn node0_datapath_loaded(opts: &LoadOptions) -> Datapath {
    let mut dp = Datapath::load(opts).expect("load object");
    dp.set_node(NodeConfig {
        node_ip: key(NODE0.into()),
        uplink_ifindex: 1,
        cluster_cidr: key(Ipv4Addr::new(10, 244, 0, 0)),
        cluster_mask: key(Ipv4Addr::new(255, 255, 0, 0)),
    })
    .unwrap();
    {
        let mut routes = dp.routes_map().unwrap();
        put_route(
            &mut routes,
            "10.244.0.0/24".parse::<Ipv4Net>().unwrap(),
            NODE0.into(),
        )
        .unwrap();
        put_route(
            &mut routes,
            "10.244.1.0/24".parse::<Ipv4Net>().unwrap(),
            NODE1.into(),
        )
        .unwrap();
    }
    let a = LocalPod {
        ifindex: 1,
        pod_mac: POD_A_MAC,
        host_mac: POD_A_HOST_MAC,
    };
    let b = LocalPod {
        ifindex: 42,
        pod_mac: POD_B_MAC,
        host_mac: POD_B_HOST_MAC,
    };
    dp.add_pod(key(POD_A.into()), a).unwrap();
    dp.add_pod(key(POD_B.into()), b).unwrap();
    dp
}

/// The load balancer's address on the VNet: the node's gateway.
pub const GATEWAY: [u8; 4] = [10, 224, 0, 1];

/// `dp` (node-0) with the masquerade on: the node IP over ports
/// `lo..=hi`, the gateway and the node subnet as the default cluster's.
pub fn masquerade_on(mut dp: Datapath, lo: u16, hi: u16) -> Datapath {
    use aya::maps::Array;
    use netplane_common::nat::{NatConfig, SnatSlot};
    let mut cfg: Array<_, NatConfig> = dp.array(registry::NAT_CONFIG).unwrap();
    cfg.set(
        0,
        NatConfig {
            gateway_ip: key(GATEWAY.into()),
            subnet: key(Ipv4Addr::new(10, 224, 0, 0)),
            subnet_mask: key(Ipv4Addr::new(255, 255, 0, 0)),
            slots_per_backend: 1,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    netplane::agent::snat::set_masquerade_slot(
        &mut dp,
        SnatSlot {
            nat_ip: key(NODE0.into()),
            port_lo: lo,
            port_hi: hi,
        },
    )
    .unwrap();
    dp
}

/// The default cluster's outbound load balancer with `ports` per node
/// (blocks from port 1024 on its one frontend IP, node-0's first).
pub fn load_balancer_datapath(ports: u32) -> Datapath {
    let mut c = netplane::config::cluster::Cluster::load(None).unwrap();
    c.outbound.allocated_outbound_ports = Some(ports);
    let plan = netplane::config::outbound::lb_plan(&c, None);
    let mut dp = Datapath::load(&LoadOptions::default()).unwrap();
    netplane::agent::snat::configure_lb(&mut dp, &c, &plan, 1, 1).unwrap();
    dp
}
