//! `netplane flows`: flow events from every agent (or one).
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use netplane::inspect::flows;

use crate::select::Select;

#[derive(Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    select: Select,
    /// Keep printing new events.
    #[arg(long)]
    follow: bool,
    /// With --follow: stop after this many seconds.
    #[arg(long = "for")]
    for_secs: Option<u64>,
    /// Events shown from each log first.
    #[arg(long, default_value_t = 50)]
    last: usize,
}

pub fn run(args: FlowsArgs) -> Result<()> {
    let agents = args.select.agents()?;
    let json = args.select.json;
    flows::show(
        &agents,
        args.last,
        args.follow,
        args.for_secs.map(Duration::from_secs),
        &mut |v| {
            if json {
                println!("{v}");
            } else {
                println!("{}", flows::render(v));
            }
            let _ = std::io::Write::flush(&mut std::io::stdout());
        },
    )
}
