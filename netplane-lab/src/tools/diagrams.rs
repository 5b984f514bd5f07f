//! The teaching guides' two pictures, drawn from a cluster file (the
//! lab's default one for docs/), so their addresses are the lab's own:
//!
//! - `vnet`: the VNet, its subnet's route table, the nodes and pods, and
//!   one pod-to-pod packet followed hop by hop;
//! - `egress`: a connection's tuple rewritten at the node and at the load
//!   balancer and back, and one frontend IP's ports cut into node blocks.
//!
//! `netplane diagrams DIR` writes them; a test keeps docs/ current.
use std::{fmt::Write as _, net::Ipv4Addr};

use netplane_common::limits;

use netplane::config::{
    Cluster,
    cluster::pod_gateway,
    outbound::{gateway, lb_plan},
};

/// The file names under docs/.
pub const VNET_SVG: &str = "vnet.svg";
pub const EGRESS_SVG: &str = "egress.svg";

const FONT: &str = "font-family=\"DejaVu Sans, Verdana, sans-serif\"";

/// A small SVG writer: boxes, text and arrows.
struct Svg {
    out: String,
}

impl Svg {
    fn new(w: u32, h: u32, title: &str) -> Self {
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" {FONT} font-size=\"13\">\n\
             <title>{title}</title>\n\
             <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#333\"/></marker></defs>\n\
             <rect width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n"
        );
        out.reserve(8192);
        Self { out }
    }

    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, fill: &str, stroke: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\"/>"
        );
    }

    fn text(&mut self, x: u32, y: u32, s: &str) {
        self.text_styled(x, y, s, "");
    }

    fn bold(&mut self, x: u32, y: u32, s: &str) {
        self.text_styled(x, y, s, " font-weight=\"bold\"");
    }

    fn small(&mut self, x: u32, y: u32, s: &str) {
        self.text_styled(x, y, s, " font-size=\"11\" fill=\"#444\"");
    }

    fn text_styled(&mut self, x: u32, y: u32, s: &str, style: &str) {
        let _ = writeln!(
            self.out,
            "<text x=\"{x}\" y=\"{y}\"{style}>{}</text>",
            escape(s)
        );
    }

    fn arrow(&mut self, (x1, y1): (u32, u32), (x2, y2): (u32, u32), color: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"{color}\" stroke-width=\"2\" marker-end=\"url(#arrow)\"/>"
        );
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The VNet and one pod-to-pod packet, hop by hop.
pub fn vnet(c: &Cluster) -> String {
    let nodes = c.nodes();
    let (a, b) = (&nodes[0], &nodes[1.min(nodes.len() - 1)]);
    let pod = |n: &netplane::config::NodePlan, i: u32| {
        Ipv4Addr::from(u32::from(n.pod_cidr.network()) + 2 + i)
    };
    let (src, dst) = (pod(a, 0), pod(b, 0));
    let mut s = Svg::new(
        960,
        600,
        "The VNet, its route table, and one pod-to-pod packet",
    );
    s.rect(10, 10, 940, 580, "#f4f8fc", "#5b8bd0");
    s.bold(24, 32, &format!("VNet {}", c.network.vnet_cidr));
    s.rect(24, 44, 560, 330, "#eaf2fb", "#5b8bd0");
    s.bold(36, 64, &format!("node subnet {}", c.network.node_subnet));
    s.small(
        36,
        82,
        "Azure: the fabric routes it by the subnet's route table",
    );
    for (i, n) in [a, b].into_iter().enumerate() {
        let x = 40 + i as u32 * 275;
        s.rect(x, 96, 255, 262, "#ffffff", "#333");
        s.bold(x + 10, 116, &format!("{} {}", n.name, n.ip));
        s.small(x + 10, 134, "eth0 on the subnet, IP forwarding on");
        s.rect(x + 10, 144, 235, 50, "#fff6e0", "#c98a00");
        s.text(x + 18, 162, "netplane: from_pod / from_uplink");
        s.small(
            x + 18,
            180,
            &format!("kubenet: bridge cbr0 {}", pod_gateway(n.pod_cidr)),
        );
        s.small(x + 10, 214, &format!("pod CIDR {}", n.pod_cidr));
        for p in 0..2 {
            let y = 226 + p * 62;
            s.rect(x + 10, y, 235, 50, "#eef9ee", "#3a8a3a");
            s.text(x + 18, y + 20, &format!("pod-{i}-{p}"));
            s.text(x + 18, y + 38, &pod(n, p).to_string());
        }
    }
    // The route table, as Azure shows it.
    s.rect(600, 44, 336, 330, "#ffffff", "#5b8bd0");
    s.bold(612, 64, "route table (UDR) of the subnet");
    s.small(
        612,
        82,
        &format!(
            "one route per node, at most {} routes",
            limits::AZURE_UDR_ROUTE_LIMIT
        ),
    );
    for (x, h) in [
        (612, "address prefix"),
        (724, "next hop type"),
        (846, "next hop IP"),
    ] {
        s.small(x, 104, h);
    }
    for (i, n) in nodes.iter().take(6).enumerate() {
        let y = 126 + i as u32 * 20;
        s.text(612, y, &n.pod_cidr.to_string());
        s.text(724, y, "VirtualAppliance");
        s.text(846, y, &n.ip.to_string());
    }
    s.small(612, 260, "Azure: the fabric looks the route up;");
    s.small(612, 276, "lab: the node's ROUTES map does.");
    s.small(612, 300, "The fabric only knows NIC addresses:");
    s.small(612, 316, "without a route, a pod address is unknown.");
    // The packet's way: out of pod A, through both nodes, into pod B.
    s.arrow((150, 276), (150, 196), "#c0392b");
    s.arrow((285, 170), (315, 170), "#c0392b");
    s.arrow((425, 196), (425, 226), "#c0392b");
    for (x, y, n) in [(156, 250, "1"), (286, 160, "2 3"), (431, 214, "4")] {
        s.text_styled(x, y, n, " font-weight=\"bold\" fill=\"#c0392b\"");
    }
    s.bold(
        24,
        402,
        &format!("one packet from {src} to {dst}, hop by hop"),
    );
    let hops = [
        (
            "1",
            format!("pod-0-0 sends to its gateway (ARP answered by {})", a.name),
            64,
        ),
        (
            "2",
            format!(
                "{} routes it: {} -> next hop {} (TTL - 1)",
                a.name, b.pod_cidr, b.ip
            ),
            63,
        ),
        (
            "3",
            "on the VNet: pod addresses on the wire, no NAT, no tunnel".to_string(),
            63,
        ),
        (
            "4",
            format!(
                "{} delivers it into pod-1-0 (a routed hop: TTL - 1)",
                b.name
            ),
            62,
        ),
    ];
    for (x, h) in [
        (24, "hop"),
        (60, "what happens"),
        (640, "source"),
        (760, "destination"),
        (890, "TTL"),
    ] {
        s.small(x, 424, h);
    }
    for (i, (n, what, ttl)) in hops.iter().enumerate() {
        let y = 446 + i as u32 * 24;
        s.text(24, y, n);
        s.text(60, y, what);
        s.text(640, y, &src.to_string());
        s.text(760, y, &dst.to_string());
        s.text(890, y, &ttl.to_string());
    }
    s.small(
        24,
        560,
        "traceroute from the pod shows the nodes (netplane) or the bridges 10.244.x.1 (kubenet) as the hops; the receiver sees the sender's own address",
    );
    s.finish()
}

/// Egress through both SNAT stages, and a frontend IP's port blocks.
pub fn egress(c: &Cluster) -> String {
    let nodes = c.nodes();
    let node = &nodes[0];
    let pod = Ipv4Addr::from(u32::from(node.pod_cidr.network()) + 2);
    let plan = lb_plan(c, None);
    let frontend = plan.frontends[0];
    let block = &plan.slots[0];
    let inet: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    let pod_port = 51000u16;
    let mut s = Svg::new(
        960,
        600,
        "Egress: two translations, and a frontend IP's port blocks",
    );
    let lanes = [
        ("pod-0-0", pod.to_string()),
        (node.name.as_str(), node.ip.to_string()),
        ("load balancer", format!("{} / {frontend}", gateway(c))),
        ("inet", inet.to_string()),
    ];
    for (i, (name, addr)) in lanes.iter().enumerate() {
        let x = 40 + i as u32 * 230;
        s.rect(x, 20, 190, 44, "#eaf2fb", "#5b8bd0");
        s.bold(x + 10, 38, name);
        s.small(x + 10, 56, addr);
        let _ = writeln!(
            s.out,
            "<line x1=\"{0}\" y1=\"64\" x2=\"{0}\" y2=\"300\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>",
            x + 95
        );
    }
    let lane_x = |i: u32| 40 + i * 230 + 95;
    let fwd = [
        (0, 1, format!("{pod}:{pod_port} -> {inet}:80")),
        (1, 2, format!("{}:{pod_port} -> {inet}:80", node.ip)),
        (2, 3, format!("{frontend}:{} -> {inet}:80", block.port_lo)),
    ];
    for (k, (from, to, label)) in fwd.iter().enumerate() {
        let y = 92 + k as u32 * 40;
        s.arrow((lane_x(*from), y), (lane_x(*to) - 4, y), "#c0392b");
        s.small(lane_x(*from) + 8, y - 6, label);
    }
    s.small(
        40,
        200,
        "node: masquerade, source -> node IP (the pod's port kept when free)",
    );
    s.small(
        40,
        216,
        "load balancer: outbound rule, source -> frontend IP, a port of the node's block",
    );
    let back = [
        (
            3u32,
            2u32,
            format!("{inet}:80 -> {frontend}:{}", block.port_lo),
        ),
        (2, 1, format!("{inet}:80 -> {}:{pod_port}", node.ip)),
        (1, 0, format!("{inet}:80 -> {pod}:{pod_port}")),
    ];
    for (k, (from, to, label)) in back.iter().enumerate() {
        let y = 240 + k as u32 * 20;
        s.arrow((lane_x(*from), y), (lane_x(*to) + 4, y), "#2c7a2c");
        s.small(lane_x(*to) + 8, y - 4, label);
    }
    s.small(
        lane_x(0) + 8,
        296,
        "the reply: each stage reverses its own translation (NAT_IN)",
    );

    // One frontend IP's ports, cut into node blocks.
    let ports = c.ports_per_node().unwrap_or(0);
    let total = limits::AZURE_SNAT_PORTS_PER_FRONTEND;
    s.bold(
        24,
        326,
        &format!("frontend {frontend}: {total} ports, {ports} per node"),
    );
    let (bx, bw) = (24u32, 912u32);
    s.rect(bx, 352, bw, 36, "#f2f2f2", "#666");
    s.small(bx, 348, &format!("{}", limits::SNAT_PORT_MIN));
    let px = |p: u32| bx + (u64::from(p) * u64::from(bw) / u64::from(total)) as u32;
    for (i, sl) in plan
        .slots
        .iter()
        .filter(|s| s.nat_ip == frontend)
        .enumerate()
    {
        let lo = u32::from(sl.port_lo) - u32::from(limits::SNAT_PORT_MIN);
        let hi = u32::from(sl.port_hi) - u32::from(limits::SNAT_PORT_MIN) + 1;
        let fill = if i == 0 { "#e67e22" } else { "#5b8bd0" };
        let w = (px(hi) - px(lo)).max(2);
        s.rect(px(lo), 352, w, 36, fill, "#333");
    }
    s.small(
        24,
        404,
        &format!(
            "node-0's block {}-{} (orange): {ports} connections at once to one destination IP:port; the {}th fails (nat_ports_exhausted)",
            block.port_lo,
            block.port_hi,
            ports + 1
        ),
    );
    s.small(
        24,
        422,
        "the same port serves other destinations at the same time: TCP per destination IP and port, UDP per destination IP",
    );
    let fit = |ips: u32| total * ips / ports.max(1);
    s.bold(24, 460, "what a second frontend IP changes");
    s.small(
        24,
        480,
        &format!(
            "not the node's ports: allocated outbound ports are per node in total, {ports} with one IP or two",
        ),
    );
    s.small(
        24,
        498,
        &format!(
            "how many nodes fit: nodes <= {total} x IPs / ports per node = {} with one IP, {} with two",
            fit(1),
            fit(2)
        ),
    );
    s.small(
        24,
        530,
        "Azure: the load balancer's SNAT happens in the hosts' virtual switches; the lab's load balancer is a namespace at the subnet's gateway address",
    );
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ holds what the lab's own cluster file draws: regenerate with
    /// `netplane diagrams docs` after a change.
    #[test]
    fn the_docs_diagrams_are_current() {
        let c = Cluster::load(None).unwrap();
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
        for (name, svg) in [(VNET_SVG, vnet(&c)), (EGRESS_SVG, egress(&c))] {
            let on_disk = std::fs::read_to_string(format!("{docs}{name}")).unwrap_or_default();
            assert!(
                on_disk == svg,
                "docs/{name} is out of date: run `netplane diagrams docs`"
            );
            assert!(
                svg.contains("10.244.0.2"),
                "{name} carries the lab's addresses"
            );
        }
    }
}
