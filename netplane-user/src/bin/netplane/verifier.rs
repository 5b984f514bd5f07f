//! `netplane verifier`: every program loaded under every load option on
//! this kernel, the verifier's instruction count against the budget.
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use netplane::datapath::verifier::Table;

#[derive(Args)]
pub struct VerifierArgs {
    /// The whole table (every program under every option) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: VerifierArgs) -> Result<ExitCode> {
    let table = Table::measure(&mut |variant| eprintln!("   loading every program: {variant}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        print!("{}", table.render());
    }
    let failures = table.failures();
    if failures.is_empty() && table.unlisted.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for c in failures {
        eprintln!(
            "over budget: {} (flow events {}, log {}): {}",
            c.program,
            if c.flow_events { "on" } else { "off" },
            c.log_level,
            c.refused
                .clone()
                .unwrap_or_else(|| format!("{} instructions", c.processed.unwrap_or(0)))
        );
    }
    Ok(ExitCode::FAILURE)
}
