//! `netplane`: the node agent, the lab, and the commands that look inside.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netplane::{cluster::Cluster, ebpf::Counters, lab, paths, whoami};

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
    Agent {
        /// Cluster file (default: the embedded default cluster).
        #[arg(long)]
        config: Option<PathBuf>,
        /// This node's name in the cluster file.
        #[arg(long, required_unless_present = "lb", conflicts_with = "lb")]
        node: Option<String>,
        /// Be the outbound load balancer (outbound type loadBalancer) or the
        /// appliance (userDefinedRouting).
        #[arg(long)]
        lb: bool,
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
        /// Messages of the eBPF programs in this log from this level:
        /// error, warn, info (default; debug messages stay off the packet
        /// path) or debug.
        #[arg(long, value_parser = parse_level)]
        bpf_log_level: Option<aya_log::Level>,
    },
    /// The lab: the cluster built in network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// Packet and drop counters of the running agents.
    Stats {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Live SNAT translations: original and translated tuples, state, age,
    /// idle time left.
    Nat {
        /// A node's, or "lb" / "appliance" (default: all agents).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// SNAT port use per SNAT IP and port block: capacity, allocated, peak,
    /// allocation failures.
    Ports {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A packet's walk through the lab, hop by hop, computed by the real
    /// programs on a crafted packet against copies of the live maps.
    Trace {
        /// A pod (lab host name or IP).
        from: String,
        /// TO[:PORT[/tcp|/udp]]: a lab host or IP; no port: ICMP echo.
        to: String,
        /// Send with this source address instead of the pod's (spoofing).
        #[arg(long)]
        source_ip: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        json: bool,
    },
    /// Flow events: new flows, translations, drops (with reason) and
    /// expiries, from every agent (or one).
    Flows {
        #[arg(long)]
        node: Option<String>,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many seconds.
        #[arg(long = "for")]
        for_secs: Option<u64>,
        /// Events shown from each log first.
        #[arg(long, default_value_t = 50)]
        last: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks of the loaded programs (BPF_PROG_TEST_RUN); see
    /// `cargo xtask bench-flows`.
    #[command(hide = true)]
    BenchFlowEvents {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Runs per case and round.
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// Per-path program costs against the floor program
    /// (BPF_PROG_TEST_RUN); see `cargo xtask bench`.
    #[command(hide = true)]
    BenchPrograms {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// Traffic generators and servers that `cargo xtask bench` runs in the
    /// lab's pods; each ends by its own deadline and prints JSON.
    #[command(hide = true)]
    Loadgen {
        #[command(subcommand)]
        generator: Loadgen,
    },
    /// Pods per node: name, IP, node, host interface, and whether the
    /// node's data path has registered them.
    Pods {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The route table (the UDR) each agent has loaded, as Azure shows one.
    Routes {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check a cluster file against AKS's rules; all errors at once.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Address and SNAT-port arithmetic for an AKS cluster, formulas shown.
    Plan {
        #[arg(long)]
        nodes: u32,
        #[arg(long)]
        max_pods: u32,
        #[arg(long, value_enum, default_value = "kubenet")]
        mode: netplane::plan::Mode,
        /// Extra nodes during an upgrade.
        #[arg(long, default_value_t = 1)]
        surge: u32,
        /// Frontend public IPs of the outbound load balancer.
        #[arg(long, default_value_t = 1)]
        outbound_ips: u32,
        /// Ports per node per frontend IP (0: Azure's default table).
        #[arg(long)]
        allocated_outbound_ports: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Address echo for lab traffic: the server tells each client the
    /// address it saw.
    Whoami {
        #[command(subcommand)]
        command: WhoamiCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
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

#[derive(Subcommand)]
enum WhoamiCmd {
    /// Answer clients until --max were served or --timeout passed.
    Serve {
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: SocketAddr,
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value_t = 1000)]
        max: u64,
        /// Seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// TCP: accept and keep connections open, unanswered, until the
        /// timeout.
        #[arg(long)]
        hold: bool,
    },
    /// Open COUNT TCP connections to a server and hold them (fills SNAT
    /// port pools); prints how many opened.
    Hold {
        server: SocketAddr,
        #[arg(long)]
        count: u32,
        /// Seconds per connection attempt.
        #[arg(long, default_value_t = 2)]
        connect_timeout: u64,
        /// Seconds to keep them open after the last attempt.
        #[arg(long, default_value_t = 3)]
        hold: u64,
        #[arg(long)]
        json: bool,
    },
    /// Ask a server which address it sees this client as.
    Ask {
        server: SocketAddr,
        #[arg(long)]
        udp: bool,
        /// Seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Piped into `head`, a CLI should stop quietly, not panic.
    // SAFETY: setting a signal disposition to default at start-up.
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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
        Cmd::Agent {
            config,
            node,
            lb,
            netns,
            uplink_xdp,
            detach_on_exit,
            metrics_addr,
            bpf_log_level,
        } => {
            let opts = netplane::agent::Options {
                config,
                netns,
                uplink_xdp,
                detach_on_exit,
                metrics_addr,
                bpf_log_level,
            };
            match (node, lb) {
                (Some(node), false) => netplane::agent::run(&node, &opts)?,
                _ => netplane::agent::run_lb(&opts)?,
            }
        }
        Cmd::Lab { command } => return lab_cmd(command),
        Cmd::Stats { node, json } => stats(node, json)?,
        Cmd::Routes { node, json } => routes(node, json)?,
        Cmd::Pods { node, json } => pods(node, json)?,
        Cmd::BenchFlowEvents { rounds, runs } => {
            let cases = netplane::bench::flow_events(rounds.max(1), runs.max(1))?;
            println!("{}", serde_json::to_string(&cases)?);
        }
        Cmd::BenchPrograms { rounds, runs } => {
            let costs = netplane::bench::program_costs(rounds.max(1), runs.max(1))?;
            println!("{}", serde_json::to_string(&costs)?);
        }
        Cmd::Loadgen { generator } => loadgen(generator)?,
        Cmd::Flows {
            node,
            follow,
            for_secs,
            last,
            json,
        } => {
            let agents = pinned_nodes(node)?;
            netplane::flows::show(
                &agents,
                last,
                follow,
                for_secs.map(Duration::from_secs),
                &mut |v| {
                    if json {
                        println!("{v}");
                    } else {
                        println!("{}", netplane::flows::render(v));
                    }
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                },
            )?;
        }
        Cmd::Trace {
            from,
            to,
            source_ip,
            json,
        } => {
            let state = lab::load_state()?.context("the lab is down: run `netplane lab up`")?;
            let t = netplane::trace::trace(&state, &from, &to, source_ip)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", t.render());
            }
        }
        Cmd::Nat { node, json } => nat(node, json)?,
        Cmd::Ports { node, json } => ports(node, json)?,
        Cmd::Validate { file, json } => return validate(&file, json),
        Cmd::Plan {
            nodes,
            max_pods,
            mode,
            surge,
            outbound_ips,
            allocated_outbound_ports,
            json,
        } => {
            let input = netplane::plan::Input {
                nodes,
                max_pods,
                mode,
                surge,
                outbound_ips,
                allocated_outbound_ports,
            };
            let plan = netplane::plan::plan(input).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
        }
        Cmd::Whoami { command } => match command {
            WhoamiCmd::Serve {
                listen,
                udp,
                max,
                timeout,
                hold,
            } => whoami::serve(listen, udp, max, Duration::from_secs(timeout), hold)?,
            WhoamiCmd::Hold {
                server,
                count,
                connect_timeout,
                hold,
                json,
            } => {
                let report = whoami::hold(
                    server,
                    count,
                    Duration::from_secs(connect_timeout),
                    Duration::from_secs(hold),
                    |r| {
                        if json {
                            println!("{}", serde_json::to_string(r).expect("serializable"));
                        } else {
                            println!(
                                "{} of {} connections to {} opened, {} failed",
                                r.opened, r.attempted, r.server, r.failed
                            );
                        }
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    },
                )?;
                if report.opened == 0 {
                    bail!("no connection to {server} opened");
                }
            }
            WhoamiCmd::Ask {
                server,
                udp,
                timeout,
                json,
            } => {
                let a = whoami::ask(server, udp, Duration::from_secs(timeout))?;
                if json {
                    println!("{}", serde_json::to_string(&a)?);
                } else {
                    println!(
                        "{}/{}: this client is {}, the server saw {}{}",
                        a.server,
                        a.proto,
                        a.local,
                        a.seen_as,
                        if a.local == a.seen_as {
                            " (unchanged)"
                        } else {
                            " (translated)"
                        }
                    );
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum Loadgen {
    /// Count UDP datagrams on a port.
    UdpSink {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        secs: f64,
        /// Stop this long after the last datagram.
        #[arg(long, default_value_t = 500)]
        idle_ms: u64,
    },
    /// Send UDP datagrams of `payload` bytes as fast as possible.
    UdpFlood {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 18)]
        payload: usize,
        #[arg(long)]
        secs: f64,
    },
    /// Echo UDP datagrams back.
    UdpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        secs: f64,
    },
    /// Echo TCP, one connection at a time.
    TcpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        secs: f64,
    },
    /// Request/response latency over one TCP connection.
    TcpRr {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 1)]
        size: usize,
        #[arg(long)]
        secs: f64,
    },
    /// New TCP connections per second, one at a time.
    TcpCrr {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long)]
        secs: f64,
    },
    /// Fill a SNAT port pool toward one UDP echo server.
    UdpFill {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 10_000)]
        first_port: u16,
        #[arg(long)]
        flows: u32,
        #[arg(long)]
        pool: u32,
        /// Fill levels (percent) at which allocation cost is measured.
        #[arg(long, value_delimiter = ',', default_value = "10,50,90,99")]
        cost_at: Vec<f64>,
    },
    /// One datagram from each of `sources` ports to each port of a range.
    UdpSpray {
        #[arg(long)]
        to: Ipv4Addr,
        #[arg(long)]
        dport_first: u16,
        #[arg(long)]
        dport_last: u16,
        #[arg(long, default_value_t = 20_000)]
        first_port: u16,
        #[arg(long)]
        sources: u16,
    },
}

fn loadgen(generator: Loadgen) -> Result<()> {
    use netplane::loadgen as g;
    let json = match generator {
        Loadgen::UdpSink {
            port,
            secs,
            idle_ms,
        } => serde_json::to_value(g::udp_sink(port, secs, idle_ms)?)?,
        Loadgen::UdpFlood { to, payload, secs } => {
            serde_json::to_value(g::udp_flood(to, payload, secs)?)?
        }
        Loadgen::UdpEcho { port, secs } => {
            g::udp_echo(port, secs)?;
            serde_json::json!({"done": true})
        }
        Loadgen::TcpEcho { port, secs } => {
            g::tcp_echo(port, secs)?;
            serde_json::json!({"done": true})
        }
        Loadgen::TcpRr { to, size, secs } => serde_json::to_value(g::tcp_rr(to, size, secs)?)?,
        Loadgen::TcpCrr { to, secs } => serde_json::to_value(g::tcp_crr(to, secs)?)?,
        Loadgen::UdpFill {
            to,
            first_port,
            flows,
            pool,
            cost_at,
        } => serde_json::to_value(g::udp_fill(to, first_port, flows, pool, &cost_at)?)?,
        Loadgen::UdpSpray {
            to,
            dport_first,
            dport_last,
            first_port,
            sources,
        } => serde_json::to_value(g::udp_spray(
            to,
            (dport_first, dport_last),
            first_port,
            sources,
        )?)?,
    };
    println!("{json}");
    Ok(())
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

/// Pretty JSON on stdout, for `--json`.
fn print_json(v: serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

fn lab_cmd(command: LabCmd) -> Result<ExitCode> {
    match command {
        LabCmd::Up {
            config,
            uplink_xdp,
            datapath,
        } => {
            eprintln!("bringing the lab up");
            let opts = lab::UpOptions {
                uplink_xdp,
                datapath,
            };
            let state = lab::up(config.as_deref(), &opts, &mut |l| progress(l))?;
            print_hosts(&state.hosts);
            eprintln!(
                "\nexplore: netplane lab exec pod-0-0 -- ping -c1 10.244.1.2\ntear down: netplane lab down"
            );
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

/// The nodes to report on: the one asked for, or every node with pins.
fn pinned_nodes(node: Option<String>) -> Result<Vec<String>> {
    Ok(match node {
        Some(n) => vec![n],
        None => {
            let mut v: Vec<String> = std::fs::read_dir(paths::bpffs())
                .context("no agent is running (no pins under the bpffs)")?
                .flatten()
                // Directories only: the kernel puts maps.debug and
                // progs.debug files in every bpffs.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    })
}

fn routes(node: Option<String>, json: bool) -> Result<()> {
    // Owner names from the lab's cluster file, when there is a lab.
    let names: Vec<(std::net::Ipv4Addr, String)> = lab::load_state()
        .ok()
        .flatten()
        .and_then(|s| Cluster::load(Some(std::path::Path::new(&s.cluster_file))).ok())
        .map(|c| c.nodes().into_iter().map(|n| (n.ip, n.name)).collect())
        .unwrap_or_default();
    let owner = |ip| {
        names
            .iter()
            .find(|(i, _)| *i == ip)
            .map_or("-".to_string(), |(_, n)| n.clone())
    };
    let limit = netplane_common::limits::AZURE_UDR_ROUTE_LIMIT;
    let mut all = serde_json::Map::new();
    for n in pinned_nodes(node)? {
        let routes = netplane::ebpf::pinned_routes(&paths::pins(&n))?;
        if json {
            let list: Vec<_> = routes
                .iter()
                .map(|(cidr, ip)| {
                    serde_json::json!({
                        "address_prefix": cidr.to_string(),
                        "next_hop_type": "VirtualAppliance",
                        "next_hop_ip": ip.to_string(),
                        "node": owner(*ip),
                    })
                })
                .collect();
            all.insert(
                n.clone(),
                serde_json::json!({ "routes": list, "count": routes.len(), "limit": limit }),
            );
            continue;
        }
        println!("{n}: {} of {limit} routes", routes.len());
        println!(
            "  {:<18} {:<17} {:<15} node",
            "address prefix", "next hop type", "next hop IP"
        );
        for (cidr, ip) in &routes {
            println!(
                "  {:<18} {:<17} {:<15} {}",
                cidr.to_string(),
                "VirtualAppliance",
                ip.to_string(),
                owner(*ip)
            );
        }
    }
    if json {
        print_json(serde_json::json!({ "nodes": all }))?;
    }
    Ok(())
}

fn pods(node: Option<String>, json: bool) -> Result<()> {
    let cluster = running_cluster()?;
    let nodes: Vec<String> = match node {
        Some(n) => vec![n],
        None => cluster.nodes().into_iter().map(|n| n.name).collect(),
    };
    let mut rows = Vec::new();
    for n in &nodes {
        let registered = netplane::ebpf::pinned_pod_ips(&paths::pins(n)).unwrap_or_default();
        for p in netplane::pods::registered(n)? {
            rows.push(serde_json::json!({
                "pod": p.name,
                "ip": p.ip.to_string(),
                "node": p.node,
                "interface": p.host_ifname,
                "netns": p.netns,
                "in_data_path": registered.contains(&p.ip),
            }));
        }
    }
    if json {
        print_json(serde_json::json!({ "pods": rows }))?;
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:<10} {:<12} in data path",
        "pod", "ip", "node", "interface"
    );
    for r in &rows {
        println!(
            "{:<12} {:<14} {:<10} {:<12} {}",
            r["pod"].as_str().unwrap_or("?"),
            r["ip"].as_str().unwrap_or("?"),
            r["node"].as_str().unwrap_or("?"),
            r["interface"].as_str().unwrap_or("?"),
            if r["in_data_path"] == true {
                "yes"
            } else {
                "NO"
            }
        );
    }
    Ok(())
}

/// The cluster file the running agents use: the lab's, else the default.
fn running_cluster() -> Result<Cluster> {
    let lab_file = lab::load_state()
        .ok()
        .flatten()
        .map(|s| PathBuf::from(s.cluster_file));
    Ok(Cluster::load(lab_file.as_deref())?)
}

fn nat(node: Option<String>, json: bool) -> Result<()> {
    let cluster = running_cluster()?;
    let mut all = serde_json::Map::new();
    for n in pinned_nodes(node)? {
        let lb = n == netplane::agent::lb_name(&cluster);
        let t = if lb {
            netplane::snat::Timeouts::load_balancer(&cluster)
        } else {
            netplane::snat::Timeouts::node(&cluster)
        };
        let flows = netplane::snat::flows(&paths::pins(&n), &t)?;
        if json {
            all.insert(n.clone(), serde_json::to_value(&flows)?);
            continue;
        }
        println!("{n}: {} translations", flows.len());
        if flows.is_empty() {
            continue;
        }
        println!(
            "  {:<5} {:<24} {:<24} {:<24} {:<12} {:>6} {:>10}",
            "proto", "original", "remote", "translated", "state", "age", "idle left"
        );
        for f in &flows {
            println!(
                "  {:<5} {:<24} {:<24} {:<24} {:<12} {:>5}s {:>9}s",
                f.proto, f.original, f.remote, f.translated, f.state, f.age_s, f.idle_left_s
            );
        }
    }
    if json {
        print_json(serde_json::json!({ "agents": all }))?;
    }
    Ok(())
}

fn ports(node: Option<String>, json: bool) -> Result<()> {
    let cluster = running_cluster()?;
    let lb_name = netplane::agent::lb_name(&cluster);
    let mut all = serde_json::Map::new();
    for n in pinned_nodes(node)? {
        let slots = netplane::snat::slot_use(&paths::pins(&n))?;
        let peaks = netplane::snat::read_peaks(&n);
        // Whose block each slot is: the load balancer's are per node.
        let owner = |slot: u32| -> String {
            if n != lb_name {
                return n.clone();
            }
            let appliance = (lb_name == "appliance").then_some(lab::APPLIANCE_OUTSIDE_IP);
            let plan = netplane::snat::lb_plan(&cluster, appliance);
            plan.slots
                .get(slot as usize)
                .and_then(|s| s.node.clone())
                .unwrap_or_else(|| "all nodes".into())
        };
        let rows: Vec<serde_json::Value> = slots
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).expect("serializable");
                v["peak"] = peaks
                    .get(&s.slot)
                    .copied()
                    .unwrap_or(0)
                    .max(s.allocated)
                    .into();
                v["block_of"] = owner(s.slot).into();
                v
            })
            .collect();
        if json {
            all.insert(n.clone(), serde_json::Value::Array(rows));
            continue;
        }
        println!("{n}");
        println!(
            "  {:<15} {:<12} {:<10} {:>9} {:>10} {:>8} {:>9}",
            "SNAT IP", "ports", "block of", "capacity", "allocated", "peak", "failures"
        );
        for r in &rows {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            println!(
                "  {:<15} {:<12} {:<10} {:>9} {:>10} {:>8} {:>9}",
                r["snat_ip"].as_str().unwrap_or("?"),
                r["ports"].as_str().unwrap_or("?"),
                r["block_of"].as_str().unwrap_or("?"),
                n("capacity"),
                n("allocated"),
                n("peak"),
                n("failures")
            );
        }
    }
    if json {
        print_json(serde_json::json!({ "agents": all }))?;
    }
    Ok(())
}

fn stats(node: Option<String>, json: bool) -> Result<()> {
    let nodes = pinned_nodes(node)?;
    let mut all = serde_json::Map::new();
    for n in &nodes {
        let c = Counters::read_pinned(&paths::pins(n))?;
        if json {
            all.insert(n.clone(), serde_json::to_value(&c)?);
            continue;
        }
        println!("{n}");
        println!("  {:<22} {:>12} {:>14}", "path", "packets", "bytes");
        for p in &c.paths {
            println!("  {:<22} {:>12} {:>14}", p.path, p.packets, p.bytes);
        }
        println!("  {:<22} {:>12}", "drop reason", "packets");
        for d in &c.drops {
            println!(
                "  {:<22} {:>12}",
                format!("{} ({})", d.reason, d.code),
                d.packets
            );
        }
    }
    if json {
        print_json(serde_json::json!({ "nodes": all }))?;
    }
    Ok(())
}

fn validate(file: &std::path::Path, json: bool) -> Result<ExitCode> {
    use netplane::cluster::ConfigError;
    let result = Cluster::load(Some(file));
    if json {
        let v = match &result {
            Ok(_) => serde_json::json!({ "valid": true, "errors": [] }),
            Err(ConfigError::Invalid { violations, .. }) => {
                serde_json::json!({ "valid": false, "errors": violations })
            }
            Err(e) => serde_json::json!({
                "valid": false,
                "errors": [{ "field": "", "value": "", "rule": e.to_string() }]
            }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match &result {
            Ok(c) => {
                for w in c.warnings() {
                    println!("{w}");
                }
                println!("{}: valid ({} nodes)", file.display(), c.nodes.len());
            }
            Err(e) => eprintln!("{e}"),
        }
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
