//! `netplane trace`: a packet's walk through the lab, hop by hop.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use clap::Args;
use netplane_lab as lab;

#[derive(Args)]
pub struct TraceArgs {
    /// A pod (lab host name or IP).
    from: String,
    /// TO[:PORT[/tcp|/udp]]: a lab host or IP; no port: ICMP echo.
    to: String,
    /// Send with this source address instead of the pod's (spoofing).
    #[arg(long)]
    source_ip: Option<Ipv4Addr>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> Result<()> {
    let state = lab::load_state()?.context("the lab is down: run `netplane lab up`")?;
    let t = lab::trace::trace(&state, &args.from, &args.to, args.source_ip)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", t.render());
    }
    Ok(())
}
