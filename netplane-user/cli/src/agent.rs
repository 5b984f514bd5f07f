//! `netplane agent`: one node's (or the load balancer's) data path.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::Args;
use netplane::source::NodeSource;

#[derive(Args)]
pub struct AgentArgs {
    /// Cluster file (default: the embedded default cluster).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the nodes come from: the cluster file, or the Kubernetes API
    /// (Node objects; the cluster file then gives the cluster-wide
    /// settings only). `--kubeconfig` implies kubernetes; without it the
    /// pod's in-cluster configuration is used.
    #[arg(long, value_enum, default_value = "file")]
    source: SourceArg,
    /// Kubeconfig for the Kubernetes API (implies --source kubernetes).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to write the CNI conflist for kubelet once the node's pod CIDR
    /// is known (default with --source kubernetes: /etc/cni/net.d).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// This node's name (in the cluster file, or its Node object's).
    #[arg(long, required_unless_present = "lb", conflicts_with = "lb")]
    node: Option<String>,
    /// Be the outbound load balancer (outbound type loadBalancer) or the
    /// appliance (userDefinedRouting).
    #[arg(long)]
    lb: bool,
    /// With --lb: the internet side's interface (default: the one other
    /// interface with an address; name it where there are several, as on a
    /// VM with a management NIC).
    #[arg(long, requires = "lb")]
    outside_interface: Option<String>,
    /// Network namespace of the node (the lab's nodes live in one).
    #[arg(long)]
    netns: Option<String>,
    /// Also attach the XDP early-drop program to the uplink (see
    /// docs/decisions.md for its cost).
    #[arg(long)]
    uplink_xdp: bool,
    /// On exit, detach the programs and remove the pins. Without it the
    /// data path keeps running and the next agent adopts it.
    #[arg(long)]
    detach_on_exit: bool,
    /// Serve Prometheus metrics on ADDR:PORT (/metrics).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Size the NAT tables for this many translations, whatever the
    /// cluster file says (the lab passes its share when the file is silent).
    #[arg(long)]
    nat_table_entries: Option<u32>,
    /// Messages of the eBPF programs in this log from this level:
    /// error, warn, info (default; debug messages stay off the packet
    /// path) or debug.
    #[arg(long, value_parser = parse_level)]
    bpf_log_level: Option<aya_log::Level>,
    /// How the TC programs attach: tcx links (Linux 6.6+) or filters on a
    /// clsact qdisc (every kernel). Default: probe the kernel, tcx where
    /// it has it.
    #[arg(long, value_enum, env = "NETPLANE_TC_ATTACH")]
    tc_attach: Option<netplane::datapath::hooks::TcMode>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceArg {
    File,
    Kubernetes,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let source = match (args.source, args.kubeconfig) {
        (SourceArg::File, None) => NodeSource::File,
        (_, kubeconfig) => NodeSource::Kubernetes { kubeconfig },
    };
    let cni_conf_dir = match (&source, args.cni_conf_dir) {
        (_, Some(dir)) => Some(dir),
        (NodeSource::Kubernetes { .. }, None) => Some(PathBuf::from("/etc/cni/net.d")),
        (NodeSource::File, None) => None,
    };
    let opts = netplane::agent::Options {
        config: args.config,
        source,
        cni_conf_dir,
        netns: args.netns,
        uplink_xdp: args.uplink_xdp,
        detach_on_exit: args.detach_on_exit,
        metrics_addr: args.metrics_addr,
        bpf_log_level: args.bpf_log_level,
        outside_interface: args.outside_interface,
        nat_table_entries: args.nat_table_entries,
        tc_attach: args.tc_attach,
    };
    match args.node {
        Some(node) if !args.lb => netplane::agent::run(&node, &opts),
        _ => netplane::agent::run_lb(&opts),
    }
}

fn parse_level(s: &str) -> Result<aya_log::Level, String> {
    Ok(match s {
        "error" => aya_log::Level::Error,
        "warn" => aya_log::Level::Warn,
        "info" => aya_log::Level::Info,
        "debug" => aya_log::Level::Debug,
        "trace" => aya_log::Level::Trace,
        other => return Err(format!("{other}: error, warn, info, debug or trace")),
    })
}
