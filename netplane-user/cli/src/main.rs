//! `netplane`: the node agent, the lab, and the commands that look inside.
//! One file per command: its arguments, what it does, and its typed rows
//! (`table` renders them; the same rows serialize for `--json`).
//!
//! The lab's commands (lab, trace, ui, diagrams, whoami) come with the
//! `lab` feature (on by default); the DaemonSet's image is built without
//! it.
mod agent;
mod flows;
mod install_cni;
#[cfg(feature = "lab")]
mod lab;
mod nat;
mod plan;
mod pods;
mod ports;
mod routes;
mod select;
mod services;
mod stats;
mod table;
#[cfg(feature = "lab")]
mod trace;
#[cfg(feature = "lab")]
mod ui;
mod validate;
mod verifier;
#[cfg(feature = "lab")]
mod whoami;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::select::Select;

#[derive(Parser)]
#[command(
    name = "netplane",
    version,
    about = "kubenet networking, as AKS runs it, in eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the data path of one node (or, with --lb, of the outbound load
    /// balancer or appliance): load, attach, fill maps, reconcile.
    Agent(agent::AgentArgs),
    /// Install netplane-cni into kubelet's CNI plugin directory (the
    /// DaemonSet's init container).
    InstallCni {
        /// The directory, e.g. /opt/cni/bin.
        dir: std::path::PathBuf,
    },
    #[cfg(feature = "lab")]
    /// The lab: the cluster built in network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: lab::LabCmd,
    },
    /// Packet and drop counters of the running agents.
    Stats(Select),
    /// Live SNAT translations: original and translated tuples, state, age,
    /// idle time left.
    Nat(Select),
    /// SNAT port use per SNAT IP and port block: capacity, allocated, peak,
    /// allocation failures.
    Ports(Select),
    #[cfg(feature = "lab")]
    /// A packet's walk through the lab, hop by hop, computed by the real
    /// programs on a crafted packet against copies of the live maps.
    Trace(trace::TraceArgs),
    /// Flow events: new flows, translations, drops (with reason) and
    /// expiries, from every agent (or one).
    Flows(flows::FlowsArgs),
    /// Pods per node: name, IP, node, host interface, and whether the
    /// node's data path has registered them.
    Pods(Select),
    /// The route table (the UDR) each agent has loaded, as Azure shows one.
    Routes(Select),
    /// ClusterIP Services each node holds (from the Kubernetes API): the
    /// frontend, its ready backends, the flows open through it.
    Services(Select),
    #[cfg(feature = "lab")]
    /// The live web page of the running cluster: topology, UDR, SNAT ports
    /// filling, flows, counters, and traces drawn hop by hop.
    Ui(ui::UiArgs),
    /// Check a cluster file against AKS's rules; all errors at once.
    Validate(validate::ValidateArgs),
    /// Load every program under every load option on this kernel and show
    /// what the verifier processed against netplane's budget (exit 1 over
    /// it).
    Verifier(verifier::VerifierArgs),
    /// Address and SNAT-port arithmetic for an AKS cluster, formulas shown.
    Plan(plan::PlanArgs),
    #[cfg(feature = "lab")]
    /// Draw the teaching guides' two pictures (vnet.svg, egress.svg) from
    /// a cluster file (default: the lab's) into DIR.
    Diagrams {
        dir: std::path::PathBuf,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    #[cfg(feature = "lab")]
    /// Address echo for lab traffic: the server tells each client the
    /// address it saw.
    Whoami {
        #[command(subcommand)]
        command: whoami::WhoamiCmd,
    },
}

fn main() -> ExitCode {
    // Piped into `head`, a CLI should stop quietly, not panic.
    // SAFETY: setting a signal disposition to default at start-up, before
    // any other thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            // kube's client logs every failed connect; the node watch says it
            // once, with what it keeps doing.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Agent(args) => agent::run(args)?,
        Cmd::InstallCni { dir } => install_cni::run(dir)?,
        #[cfg(feature = "lab")]
        Cmd::Lab { command } => return lab::run(command),
        Cmd::Stats(select) => stats::run(&select)?,
        Cmd::Nat(select) => nat::run(&select)?,
        Cmd::Ports(select) => ports::run(&select)?,
        #[cfg(feature = "lab")]
        Cmd::Trace(args) => trace::run(args)?,
        Cmd::Flows(args) => flows::run(args)?,
        Cmd::Pods(select) => pods::run(&select)?,
        Cmd::Routes(select) => routes::run(&select)?,
        Cmd::Services(select) => services::run(&select)?,
        #[cfg(feature = "lab")]
        Cmd::Ui(args) => ui::run(args)?,
        Cmd::Validate(args) => return validate::run(args),
        Cmd::Verifier(args) => return verifier::run(args),
        Cmd::Plan(args) => plan::run(args)?,
        #[cfg(feature = "lab")]
        Cmd::Diagrams { dir, config } => {
            use netplane_lab::tools::diagrams;
            let c = netplane::config::Cluster::load(config.as_deref())?;
            std::fs::create_dir_all(&dir)?;
            for (name, svg) in [
                (diagrams::VNET_SVG, diagrams::vnet(&c)),
                (diagrams::EGRESS_SVG, diagrams::egress(&c)),
            ] {
                let path = dir.join(name);
                std::fs::write(&path, svg)?;
                eprintln!("wrote {}", path.display());
            }
        }
        #[cfg(feature = "lab")]
        Cmd::Whoami { command } => whoami::run(command)?,
    }
    Ok(ExitCode::SUCCESS)
}
