//! `netplane-bench`: the benchmark's own tools, kept out of the production
//! binary. `cargo xtask bench` runs them: traffic generators and servers
//! in the lab's pods (each ends by its own deadline and prints JSON), and
//! the per-program costs through BPF_PROG_TEST_RUN.
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "netplane-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Traffic generators and servers for the lab's pods.
    Loadgen {
        #[command(subcommand)]
        generator: Loadgen,
    },
    /// Per-path program costs against the floor program.
    Programs {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Runs per case and round.
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// netplane-cni's ADD and DEL latency (ms), as a runtime calls it.
    Cni {
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// The plugin to time (default: netplane-cni beside this binary).
        #[arg(long)]
        plugin: Option<std::path::PathBuf>,
    },
    /// What reporting flow events costs per program run.
    FlowEvents {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
    },
    /// One program path run over and over (one run per frame), for a
    /// profiler to sample; prints the runs made. Ends at --secs or
    /// --max-runs, whichever comes first.
    RunPath {
        #[arg(long, value_enum)]
        path: netplane_tests::program_cost::ProfiledPath,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 10_000_000)]
        max_runs: u64,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Loadgen { generator } => loadgen(generator),
        Cmd::Cni { runs, plugin } => {
            let plugin = match plugin {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("netplane-cni"),
            };
            let l = netplane_tests::cni_latency::measure(&plugin, runs.max(1))?;
            println!("{}", serde_json::to_string(&l)?);
            Ok(())
        }
        Cmd::Programs { rounds, runs } => {
            let costs = netplane_tests::program_cost::program_costs(rounds.max(1), runs.max(1))?;
            println!("{}", serde_json::to_string(&costs)?);
            Ok(())
        }
        Cmd::FlowEvents { rounds, runs } => {
            let cases = netplane_tests::program_cost::flow_events(rounds.max(1), runs.max(1))?;
            println!("{}", serde_json::to_string(&cases)?);
            Ok(())
        }
        Cmd::RunPath {
            path,
            secs,
            max_runs,
        } => {
            let runs =
                netplane_tests::program_cost::run_path(path, secs.clamp(0.1, 60.0), max_runs)?;
            let row = path.cost_row();
            let ran = netplane_bench_model::tools::RunPath {
                runs,
                cost_row: row.to_string(),
            };
            println!("{}", serde_json::to_string(&ran)?);
            Ok(())
        }
    }
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
        /// Stop after this many connections, before `secs` if need be (a
        /// translated test stays inside its SNAT port block).
        #[arg(long)]
        max_connections: Option<u64>,
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
    use netplane_tests::loadgen as g;
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
        Loadgen::TcpCrr {
            to,
            secs,
            max_connections,
        } => serde_json::to_value(g::tcp_crr(to, secs, max_connections)?)?,
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
