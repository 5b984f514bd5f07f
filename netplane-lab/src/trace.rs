//! `netplane trace`: a packet's walk through the lab, computed by running
//! the real programs (BPF_PROG_TEST_RUN) on a crafted packet, hop by hop,
//! against private copies of each agent's maps (Datapath::snapshot): the
//! decisions are the data path's own, and nothing live changes.
use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, lpm_trie::Key};
use bytes::{BufMut as _, Bytes, BytesMut};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use netplane_common::{
    DropReason, LocalPod, Path,
    maps::programs,
    nat::{FlowKey, NatEntry, NatReverse},
    registry,
};
use serde::Serialize;

use netplane::{
    config::Cluster,
    datapath::{Counters, Datapath, addr, key},
};

use crate::topology::{Host, LabState, Role, find_host};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// The crafted packet's source port (TCP/UDP) or echo identifier.
const TRACE_PORT: u16 = 40_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// TO[:PORT/PROTO]: a lab host or an IP; no port means an ICMP echo.
pub fn parse_target(state: &LabState, s: &str) -> Result<(Ipv4Addr, u16, Proto)> {
    let (who, rest) = match s.split_once(':') {
        Some((w, r)) => (w, Some(r)),
        None => (s, None),
    };
    let ip = resolve(state, who)?;
    let Some(rest) = rest else {
        return Ok((ip, 0, Proto::Icmp));
    };
    let (port, proto) = match rest.split_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some((_, other)) => bail!("protocol {other}: tcp or udp"),
        None => (rest, Proto::Tcp),
    };
    Ok((
        ip,
        port.parse().with_context(|| format!("port {port}"))?,
        proto,
    ))
}

fn resolve(state: &LabState, who: &str) -> Result<Ipv4Addr> {
    if let Some(h) = find_host(state, who) {
        return Ok(h.ip);
    }
    who.parse()
        .with_context(|| format!("{who} is neither a lab host nor an IPv4 address"))
}

/// One program's part in the walk.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub host: String,
    pub program: String,
    pub attached: String,
    /// The packet as the program received it.
    pub packet_in: String,
    pub decision: String,
    /// Maps consulted or written, with key and value.
    pub maps: Vec<String>,
    /// The packet as the program left it.
    pub packet_out: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Walk {
    /// The host that sends the packet (a lab host's name, or an address).
    pub starts_at: String,
    pub hops: Vec<Hop>,
    pub outcome: String,
    /// Where the walk ends: the host that receives the packet, or the
    /// agent that dropped it or handed it to its own stack.
    pub ends_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub forward: Walk,
    /// For a translated flow: the reply's walk back.
    pub reply: Option<Walk>,
}

/// The agents' private copies, made on first use.
struct Copies {
    dps: StdHashMap<String, Datapath>,
}

impl Copies {
    fn get(&mut self, agent: &str) -> Result<&mut Datapath> {
        if !self.dps.contains_key(agent) {
            let dp = Datapath::snapshot(&netplane::datapath::Pins::of(agent))
                .with_context(|| format!("copying {agent}'s maps (is its agent running?)"))?;
            self.dps.insert(agent.to_string(), dp);
        }
        Ok(self.dps.get_mut(agent).expect("inserted"))
    }
}

/// A frame from `src` to `dst`, built once and handed from hop to hop.
fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: Proto, reply: bool) -> Bytes {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        src.octets(),
        dst.octets(),
        64,
    );
    let mut out = BytesMut::new().writer();
    match proto {
        Proto::Tcp => {
            let b = b.tcp(sport, dport, 1, 64240);
            let b = if reply { b.syn().ack(2) } else { b.syn() };
            b.write(&mut out, &[])
        }
        Proto::Udp => b.udp(sport, dport).write(&mut out, b"trace"),
        Proto::Icmp if reply => b.icmpv4_echo_reply(dport, 1).write(&mut out, b"trace"),
        Proto::Icmp => b.icmpv4_echo_request(sport, 1).write(&mut out, b"trace"),
    }
    .expect("writing to memory");
    out.into_inner().freeze()
}

/// Addresses and ports of a frame, for people.
fn describe(f: &[u8]) -> String {
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return "(not IPv4)".into();
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return "(not IPv4)".into();
    };
    let h = ip.header();
    let (s, d, ttl) = (h.source_addr(), h.destination_addr(), h.ttl());
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => format!(
            "tcp {s}:{} -> {d}:{} ttl {ttl}",
            t.source_port(),
            t.destination_port()
        ),
        Some(TransportSlice::Udp(u)) => format!(
            "udp {s}:{} -> {d}:{} ttl {ttl}",
            u.source_port(),
            u.destination_port()
        ),
        Some(TransportSlice::Icmpv4(i)) => {
            let id = u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]]);
            format!("icmp {s} -> {d} id {id} ttl {ttl}")
        }
        _ => format!("{s} -> {d} ttl {ttl}"),
    }
}

/// (source, source port, destination, destination port) of a frame.
fn tuple(f: &[u8]) -> Option<(Ipv4Addr, u16, Ipv4Addr, u16)> {
    let p = SlicedPacket::from_ethernet(f).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    let (s, d) = (ip.header().source_addr(), ip.header().destination_addr());
    Some(match &p.transport {
        Some(TransportSlice::Tcp(t)) => (s, t.source_port(), d, t.destination_port()),
        Some(TransportSlice::Udp(u)) => (s, u.source_port(), d, u.destination_port()),
        Some(TransportSlice::Icmpv4(i)) => {
            let id = u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]]);
            (s, id, d, id)
        }
        _ => (s, 0, d, 0),
    })
}

/// What moved in a copy's counters during one run.
fn moved(before: &Counters, after: &Counters) -> (Option<Path>, Option<DropReason>) {
    let path = Path::ALL
        .into_iter()
        .find(|p| after.packets_of(*p) > before.packets_of(*p));
    let drop = DropReason::ALL
        .into_iter()
        .find(|r| after.drops_of(*r) > before.drops_of(*r));
    (path, drop)
}

/// The Service entries a translated flow used, as map lines.
fn service_maps(
    dp: &mut Datapath,
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    proto: u8,
) -> Result<Vec<String>> {
    use netplane_common::services::{Service, ServiceFlow, ServiceKey};
    let mut out = Vec::new();
    let services: HashMap<_, ServiceKey, Service> = dp.hash(registry::SERVICES)?;
    if let Ok(s) = services.get(&ServiceKey::new(key(dst), dport, proto), 0) {
        out.push(format!(
            "SERVICES[{dst}:{dport}] = service {}, {} ready backend(s){}",
            s.id,
            s.backends,
            if s.affinity_secs > 0 {
                format!(", ClientIP affinity {} s", s.affinity_secs)
            } else {
                String::new()
            }
        ));
    }
    let flows: aya::maps::HashMap<_, FlowKey, ServiceFlow> =
        dp.lru_hash(registry::SERVICE_FLOWS)?;
    let k = FlowKey::new(key(src), key(dst), sport, dport, proto);
    if let Ok(f) = flows.get(&k, 0) {
        out.push(format!(
            "SERVICE_FLOWS[{src}:{sport} -> {dst}:{dport}] = backend {}:{}, seen as {}:{}",
            addr(f.backend_ip),
            f.backend_port,
            addr(f.src_ip),
            f.src_port
        ));
    }
    Ok(out)
}

/// Where the walk goes after a hop.
enum Next {
    At(String, &'static str),
    /// The outcome, and the host where the walk ends.
    Done(String, String),
}

struct World<'a> {
    state: &'a LabState,
    cluster: Cluster,
    copies: Copies,
}

impl World<'_> {
    fn host_by_ip(&self, ip: Ipv4Addr) -> Option<&Host> {
        self.state.hosts.iter().find(|h| h.ip == ip)
    }

    fn name_of(&self, ip: Ipv4Addr) -> String {
        self.host_by_ip(ip)
            .map_or_else(|| ip.to_string(), |h| h.name.clone())
    }

    /// BPF_PROG_TEST_RUN delivers on lo: in the copy of `node`, the pod's
    /// veth is lo, so the anti-spoofing check sees the packet on the pod's
    /// interface.
    fn as_sender(&mut self, node: &str, pod_ip: Ipv4Addr) -> Result<()> {
        let dp = self.copies.get(node)?;
        let mut me = dp
            .pods_map()?
            .get(&key(pod_ip), 0)
            .context("the pod is not in its node's data path")?;
        me.ifindex = 1;
        dp.add_pod(key(pod_ip), me)
    }

    fn outbound(&self) -> &Host {
        self.state
            .hosts
            .iter()
            .find(|h| matches!(h.role, Role::Lb | Role::Appliance))
            .expect("lab plan")
    }

    /// Runs `program` of `agent` on `f` and says what it decided.
    fn hop(&mut self, agent: &str, program: &'static str, f: &[u8]) -> Result<(Hop, Bytes, Next)> {
        let node_subnet = self.cluster.network.node_subnet;
        let dp = self.copies.get(agent)?;
        let before = dp.counters()?;
        let (verdict, out) = dp.run(program, f, 0, 0)?;
        let after = dp.counters()?;
        let (path, drop) = moved(&before, &after);
        let (src, sport, dst, dport) = tuple(f).context("crafted frames are IPv4")?;
        let mut maps = Vec::new();
        let attached = match program {
            programs::FROM_POD => "tc ingress, host side of the pod's veth",
            programs::FROM_UPLINK => "tc ingress, the node's eth0",
            programs::LB_FROM_VNET => "tc ingress, the VNet side (eth0)",
            programs::LB_FROM_INTERNET => "tc ingress, the internet side (eth1)",
            _ => "tc",
        };
        let pods: HashMap<_, u32, LocalPod> = dp.hash(registry::LOCAL_PODS)?;
        if let Ok(p) = pods.get(&key(dst), 0) {
            maps.push(format!("LOCAL_PODS[{dst}] = veth ifindex {}", p.ifindex));
        }
        let routes = dp.routes_map()?;
        let route = routes
            .get(&Key::new(32, key(dst)), 0)
            .ok()
            .map(|r| addr(r.node_ip));
        let nat_out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT)?;
        let proto = match f.get(14 + 9) {
            Some(6) => 6,
            Some(17) => 17,
            _ => 1,
        };
        // Keyed by the destination as it leaves (a Service's backend, when
        // the flow was translated for one first).
        let (_, _, out_dst, out_dport) = tuple(&out).unwrap_or((src, sport, dst, dport));
        let out_key = FlowKey::new(
            key(src),
            key(out_dst),
            sport,
            if proto == 1 { 0 } else { out_dport },
            proto,
        );
        let translated = nat_out.get(&out_key, 0).ok();
        if matches!(path, Some(Path::SnatIn | Path::LbIn)) {
            let nat_in: HashMap<_, FlowKey, NatReverse> = dp.hash(registry::NAT_IN)?;
            let in_key = FlowKey::new(
                key(src),
                key(dst),
                if proto == 1 { 0 } else { sport },
                dport,
                proto,
            );
            if let Ok(r) = nat_in.get(&in_key, 0) {
                maps.push(format!(
                    "NAT_IN[{src}:{sport} -> {dst}:{dport}] = {}:{}",
                    addr(r.orig_ip),
                    r.orig_port
                ));
            }
        }
        let (decision, next) = match (verdict, path, drop) {
            (_, _, Some(r)) if verdict == TC_ACT_SHOT => (
                format!("drop: {} (reason {})", r.name(), r as u32),
                Next::Done(format!("dropped at {agent}: {}", r.name()), agent.into()),
            ),
            (TC_ACT_REDIRECT, Some(Path::SameNode | Path::FromRemoteNode | Path::SnatIn), _) => {
                let (_, _, d, _) = tuple(&out).unwrap_or((src, sport, dst, dport));
                let pod = self.name_of(d);
                (
                    format!("deliver to local pod {pod} (bpf_redirect_peer)"),
                    Next::Done(format!("delivered to {pod}"), pod),
                )
            }
            (TC_ACT_REDIRECT, Some(Path::ServiceOut), _) => {
                let (_, _, backend, bport) = tuple(&out).context("a translated frame")?;
                maps.extend(service_maps(dp, (src, sport), (dst, dport), proto)?);
                let decision =
                    format!("service {dst}:{dport}: destination -> backend {backend}:{bport}");
                let here: HashMap<_, u32, LocalPod> = dp.hash(registry::LOCAL_PODS)?;
                if here.get(&key(backend), 0).is_ok() {
                    let pod = self.name_of(backend);
                    (decision, Next::Done(format!("delivered to {pod}"), pod))
                } else {
                    let owner = self
                        .copies
                        .get(agent)?
                        .routes_map()?
                        .get(&Key::new(32, key(backend)), 0)
                        .ok()
                        .map(|r| addr(r.node_ip))
                        .context("a backend without a route")?;
                    let name = self.name_of(owner);
                    let decision = format!("{decision}, routed to {name} ({owner})");
                    (decision, Next::At(name, programs::FROM_UPLINK))
                }
            }
            (TC_ACT_REDIRECT, Some(Path::ServiceReply), _) => {
                let (s2, p2, d, _) = tuple(&out).unwrap_or((src, sport, dst, dport));
                let pod = self.name_of(d);
                (
                    format!("a Service's reply: source restored to {s2}:{p2}, deliver to {pod}"),
                    Next::Done(format!("delivered to {pod}"), pod),
                )
            }
            (TC_ACT_REDIRECT, Some(Path::ServiceReject), _) => (
                "service without a ready backend: ICMP port unreachable back to the pod".into(),
                Next::Done(
                    format!("refused at {agent} (ICMP port unreachable)"),
                    agent.into(),
                ),
            ),
            (TC_ACT_REDIRECT, Some(Path::ToRemoteNode), _) => {
                let owner = route.context("routed without a route")?;
                maps.push(format!(
                    "ROUTES[{dst}] -> next hop {owner} (VirtualAppliance)"
                ));
                let name = self.name_of(owner);
                (
                    format!("route to {name} ({owner}), TTL decremented"),
                    Next::At(name, programs::FROM_UPLINK),
                )
            }
            (TC_ACT_REDIRECT, Some(Path::SnatOut | Path::LbOut), _) => {
                let e = translated.context("translated without an entry")?;
                if out_dst != dst {
                    // A Service's backend outside the cluster pod CIDR.
                    maps.extend(service_maps(dp, (src, sport), (dst, dport), proto)?);
                }
                maps.push(format!(
                    "NAT_OUT[{src}:{sport} -> {out_dst}:{out_dport}] = {}:{} (slot {})",
                    addr(e.nat_ip),
                    e.nat_port,
                    e.slot
                ));
                let what = if path == Some(Path::SnatOut) {
                    "masquerade"
                } else {
                    "outbound rule"
                };
                let decision = format!("{what}: source -> {}:{}", addr(e.nat_ip), e.nat_port);
                if path == Some(Path::LbOut) {
                    (
                        decision,
                        Next::Done(
                            format!("leaves to the internet; delivered to {}", self.name_of(dst)),
                            self.name_of(dst),
                        ),
                    )
                } else if node_subnet.contains(&out_dst) {
                    let name = self.name_of(out_dst);
                    let node = self
                        .host_by_ip(out_dst)
                        .is_some_and(|h| h.role == Role::Node);
                    let next = if node {
                        Next::At(name, programs::FROM_UPLINK)
                    } else {
                        Next::Done(format!("delivered to {name} on the VNet"), name)
                    };
                    (decision, next)
                } else {
                    let gw = self.outbound().name.clone();
                    (decision, Next::At(gw, programs::LB_FROM_VNET))
                }
            }
            (TC_ACT_REDIRECT, Some(Path::LbIn), _) => {
                let (_, _, d, _) = tuple(&out).unwrap_or((src, sport, dst, dport));
                let name = self.name_of(d);
                (
                    format!("reply translated back to {d}"),
                    Next::At(name, programs::FROM_UPLINK),
                )
            }
            (TC_ACT_OK, Some(Path::TtlExpired), _) => (
                "TTL would expire: handed to the kernel".into(),
                Next::Done(
                    format!("{agent}'s kernel answers ICMP time exceeded"),
                    agent.into(),
                ),
            ),
            (TC_ACT_OK, _, _) => (
                "pass to the host's own stack".into(),
                Next::Done(format!("to {agent}'s own stack"), agent.into()),
            ),
            (v, p, d) => (
                format!("verdict {v} (path {p:?}, drop {d:?})"),
                Next::Done(format!("verdict {v} at {agent}"), agent.into()),
            ),
        };
        let hop = Hop {
            host: agent.to_string(),
            program: program.to_string(),
            attached: attached.to_string(),
            packet_in: describe(f),
            decision,
            maps,
            packet_out: describe(&out),
        };
        Ok((hop, Bytes::from(out), next))
    }

    fn walk(
        &mut self,
        starts_at: String,
        mut agent: String,
        mut program: &'static str,
        mut f: Bytes,
    ) -> Result<(Walk, Bytes)> {
        let mut hops = Vec::new();
        // At most a pod's node, another node, the load balancer and back.
        for _ in 0..6 {
            let (hop, out, next) = self.hop(&agent, program, &f)?;
            hops.push(hop);
            match next {
                Next::Done(outcome, ends_at) => {
                    let walk = Walk {
                        starts_at,
                        hops,
                        outcome,
                        ends_at,
                    };
                    return Ok((walk, out));
                }
                Next::At(a, p) => {
                    agent = a;
                    program = p;
                    f = out;
                }
            }
        }
        bail!("the walk did not end within 6 hops")
    }
}

/// Traces a packet from a pod (optionally with a spoofed source address)
/// to a target, and back if it was translated.
pub fn trace(state: &LabState, from: &str, to: &str, source_ip: Option<Ipv4Addr>) -> Result<Trace> {
    let pod = find_host(state, from).with_context(|| format!("no lab host {from}"))?;
    if pod.role != Role::Pod {
        bail!("{from} is a {:?}: traces start at a pod", pod.role);
    }
    let node = pod.node.clone().expect("pods have nodes");
    let (dst, dport, proto) = parse_target(state, to)?;
    let cluster = Cluster::load(Some(std::path::Path::new(&state.cluster_file)))?;
    let mut world = World {
        state,
        cluster,
        copies: Copies {
            dps: StdHashMap::new(),
        },
    };
    world.as_sender(&node, pod.ip)?;
    let src = source_ip.unwrap_or(pod.ip);
    let f = frame(src, TRACE_PORT, dst, dport, proto, false);
    let (forward, out) = world.walk(pod.name.clone(), node.clone(), programs::FROM_POD, f)?;
    // A translated flow: the reply from the far end to what it saw.
    let decided = |what: &str| forward.hops.iter().any(|h| h.decision.starts_with(what));
    let translated = decided("masquerade") || decided("outbound");
    // The far end (the target, or a Service's backend) answers what it saw.
    let answer = tuple(&out).map(|(s, sp, d, dp)| frame(d, dp, s, sp, proto, true));
    let backend = tuple(&out).and_then(|(_, _, d, _)| world.host_by_ip(d).cloned());
    let reply = if decided("service") && !translated {
        let backend = backend.context("a Service's backend that is no lab host")?;
        let node = backend
            .node
            .clone()
            .context("a Service's backend that is no pod")?;
        world.as_sender(&node, backend.ip)?;
        let rf = answer.context("a translated frame")?;
        Some(
            world
                .walk(backend.name.clone(), node, programs::FROM_POD, rf)?
                .0,
        )
    } else if translated {
        let (seen_src, _, remote, _) = tuple(&out).context("translated frame")?;
        let rf = answer.context("translated frame")?;
        let (agent, program) = if world
            .host_by_ip(seen_src)
            .is_some_and(|h| h.role == Role::Node)
        {
            (world.name_of(seen_src), programs::FROM_UPLINK)
        } else {
            (world.outbound().name.clone(), programs::LB_FROM_INTERNET)
        };
        Some(world.walk(world.name_of(remote), agent, program, rf)?.0)
    } else {
        None
    };
    Ok(Trace { forward, reply })
}

impl Trace {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let walk = |s: &mut String, title: &str, w: &Walk| {
            s.push_str(&format!("{title}\n"));
            for (i, h) in w.hops.iter().enumerate() {
                s.push_str(&format!(
                    "  {}. {} / {} ({})\n",
                    i + 1,
                    h.host,
                    h.program,
                    h.attached
                ));
                s.push_str(&format!("     in:       {}\n", h.packet_in));
                for m in &h.maps {
                    s.push_str(&format!("     map:      {m}\n"));
                }
                s.push_str(&format!("     decision: {}\n", h.decision));
                s.push_str(&format!("     out:      {}\n", h.packet_out));
            }
            s.push_str(&format!("  => {}\n", w.outcome));
        };
        walk(&mut s, "forward", &self.forward);
        if let Some(r) = &self.reply {
            walk(&mut s, "reply", r);
        }
        s
    }
}
