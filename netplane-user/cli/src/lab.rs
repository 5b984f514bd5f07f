//! `netplane lab`: the cluster built in network namespaces on this machine.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use netplane_lab as lab;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiserverAction {
    Stop,
    Start,
}

/// Where the lab's agents take the nodes from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabSource {
    File,
    Kubernetes,
}

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build the cluster: VNet, nodes with agents, pods.
    Up {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Agents also attach the XDP early-drop program to node uplinks.
        #[arg(long)]
        uplink_xdp: bool,
        /// netplane; kubenet-classic (bridge, kernel routes, iptables) to
        /// compare; or routed (kernel routes only, no netfilter, no
        /// translation), the benchmarks' floor.
        #[arg(long, value_enum, default_value = "netplane")]
        datapath: lab::DataPathKind,
        /// Where the agents take the nodes from: the cluster file, or a real
        /// Kubernetes API server the lab runs (etcd and kube-apiserver from
        /// `cargo xtask apiserver`) with the lab's nodes as Node objects.
        #[arg(long, value_enum, default_value = "file")]
        source: LabSource,
        /// Also serve the live web page (`netplane ui`), on ADDR:PORT if
        /// given (port 0: any free port).
        #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1,
              default_missing_value = netplane_lab::ui::DEFAULT_LISTEN)]
        ui: Option<std::net::SocketAddr>,
        /// How the agents attach their TC programs (default: each probes
        /// the kernel; tcx where it has it). `clsact` shows on a new kernel
        /// what an older one does.
        #[arg(long, value_enum, env = "NETPLANE_TC_ATTACH")]
        tc_attach: Option<netplane::datapath::hooks::TcMode>,
    },
    /// Remove everything the lab made (idempotent, also after a crash).
    Down,
    /// Apply an edited cluster file (default: the lab's own copy) to the
    /// running agents: routes are added and removed one by one.
    Reload {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop a node's agent and start a new one, which adopts the pinned data
    /// path while traffic flows.
    AgentRestart {
        node: String,
        /// SIGKILL instead of SIGTERM (a crash).
        #[arg(long)]
        kill: bool,
    },
    /// Stop or start the lab's Kubernetes API server (lab up --source
    /// kubernetes): the data path keeps forwarding with the last known
    /// nodes, and the agents resynchronise when it is back.
    Apiserver {
        #[arg(value_enum)]
        action: ApiserverAction,
    },
    /// Create (or with --delete remove) a ClusterIP Service in the lab's
    /// API server (lab up --source kubernetes), with its EndpointSlice
    /// pointing at lab hosts: what the agents, or kube-proxy on the
    /// kubenet-classic lab, then carry.
    Service {
        /// The Service's name (namespace default).
        name: String,
        /// Its cluster IP, inside the cluster file's service_cidr.
        #[arg(long, required_unless_present = "delete")]
        ip: Option<std::net::Ipv4Addr>,
        /// Its ports, PORT/tcp or PORT/udp (repeatable).
        #[arg(long = "port", default_value = "80/tcp")]
        ports: Vec<String>,
        /// A backend, HOST:TARGET_PORT (a lab pod's name or IP; repeatable;
        /// none: the Service refuses).
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// sessionAffinity: ClientIP.
        #[arg(long)]
        affinity: bool,
        #[arg(long)]
        delete: bool,
    },
    /// Hosts, namespaces and agents.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab host (name or IP).
    Exec {
        host: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(command: LabCmd) -> Result<ExitCode> {
    match command {
        LabCmd::Up {
            config,
            uplink_xdp,
            datapath,
            source,
            ui,
            tc_attach,
        } => {
            eprintln!("bringing the lab up");
            let opts = lab::UpOptions {
                uplink_xdp,
                datapath,
                kubernetes: source == LabSource::Kubernetes,
                ui,
                tc_attach,
            };
            let state = lab::up(config.as_deref(), &opts, &mut |l| progress(l))?;
            print_hosts(&state.hosts);
            if let Some(page) = &state.ui {
                eprintln!("\nthe web page: {}", page.url);
            }
            eprintln!(
                "\nexplore: netplane lab exec pod-0-0 -- ping -c1 10.244.1.2\ntear down: netplane lab down"
            );
        }
        LabCmd::Apiserver { action } => {
            let running = action == ApiserverAction::Start;
            lab::control_plane::set_apiserver(running, &mut |l| progress(l))?;
        }
        LabCmd::Service {
            name,
            ip,
            ports,
            backends,
            affinity,
            delete,
        } => {
            if delete {
                lab::kube_services::delete_service(&name)?;
                eprintln!("Service default/{name} deleted");
            } else {
                let ip = ip.context("--ip is required")?;
                let spec =
                    lab::kube_services::LabService::parse(&name, ip, &ports, &backends, affinity)?;
                lab::kube_services::create_service(&spec)?;
                eprintln!("Service default/{name} created: {spec}");
            }
        }
        LabCmd::Reload { config } => {
            lab::reload(config.as_deref())?;
            eprintln!("cluster file applied; agents reconcile their routes");
        }
        LabCmd::AgentRestart { node, kill } => {
            let st = lab::restart_agent(&node, kill, &mut |l| progress(l))?;
            println!(
                "agent of {} running as pid {}; adopted: {}",
                st.node,
                st.pid,
                st.adopted.join(", ")
            );
        }
        LabCmd::Down => {
            lab::down(&mut |l| progress(l))?;
            eprintln!("lab is down");
        }
        LabCmd::Status { json } => {
            let st = lab::status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else if !st.up {
                println!("lab is down");
            } else {
                print_hosts(&st.hosts.iter().map(|h| h.host.clone()).collect::<Vec<_>>());
                for h in st.hosts.iter().filter(|h| !h.netns_present) {
                    println!("MISSING namespace {} of {}", h.host.netns, h.host.name);
                }
                println!();
                for a in &st.agents {
                    let state = if a.running { "running" } else { "NOT RUNNING" };
                    println!(
                        "agent {:<8} pid {:<8} {state:<12} log {}",
                        a.node, a.pid, a.log
                    );
                }
                if let Some(url) = &st.ui {
                    println!("web page {url}");
                }
            }
        }
        LabCmd::Exec { host, command } => {
            let state = lab::load_state()?.context("the lab is down: run `netplane lab up`")?;
            let Some(h) = lab::find_host(&state, &host) else {
                let names: Vec<&str> = state.hosts.iter().map(|h| h.name.as_str()).collect();
                bail!("no lab host {host}; hosts: {}", names.join(", "));
            };
            use std::os::unix::process::CommandExt as _;
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &h.netns])
                .args(&command)
                .exec();
            bail!("running {command:?} in {}: {err}", h.netns);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

fn print_hosts(hosts: &[lab::Host]) {
    println!(
        "{:<10} {:<6} {:<14} {:<8} netns",
        "host", "role", "ip", "node"
    );
    for h in hosts {
        let role = serde_json::to_value(h.role).ok();
        let role = role.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
        println!(
            "{:<10} {:<6} {:<14} {:<8} {}",
            h.name,
            role,
            h.ip,
            h.node.as_deref().unwrap_or("-"),
            h.netns
        );
    }
}
