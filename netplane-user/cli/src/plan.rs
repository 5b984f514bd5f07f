//! `netplane plan`: the address and SNAT-port arithmetic of a cluster.
use anyhow::Result;
use clap::Args;
use netplane::config::plan::{self, Input, Mode};

#[derive(Args)]
pub struct PlanArgs {
    #[arg(long)]
    nodes: u32,
    #[arg(long)]
    max_pods: u32,
    #[arg(long, value_enum, default_value = "kubenet")]
    mode: Mode,
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
}

pub fn run(args: PlanArgs) -> Result<()> {
    let plan = plan::plan(Input {
        nodes: args.nodes,
        max_pods: args.max_pods,
        mode: args.mode,
        surge: args.surge,
        outbound_ips: args.outbound_ips,
        allocated_outbound_ports: args.allocated_outbound_ports,
    })
    .map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(())
}
