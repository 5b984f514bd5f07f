//! `netplane verifier`: every program loaded under every load option on
//! this kernel, the verifier's instruction count against the budget and
//! against the counts last recorded for this kernel series.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Args;
use netplane::datapath::verifier::{Baseline, GROWTH_FLAG_PERCENT, Table, kernel_series};

#[derive(Args)]
pub struct VerifierArgs {
    /// The whole table (every program under every option) as JSON.
    #[arg(long)]
    json: bool,
    /// Flag (exit 1) a program whose largest count grew by more than a
    /// fifth over the one recorded in FILE for this kernel series
    /// (docs/verifier.json).
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Write this kernel series' counts into FILE (created if missing).
    #[arg(long, value_name = "FILE", conflicts_with = "baseline")]
    record: Option<PathBuf>,
}

fn read_baseline(path: &PathBuf) -> Result<Baseline> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Baseline::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn run(args: VerifierArgs) -> Result<ExitCode> {
    let table = Table::measure(&mut |variant| eprintln!("   loading every program: {variant}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        print!("{}", table.render());
    }
    let mut ok = true;
    for c in table.failures() {
        ok = false;
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
    ok &= table.unlisted.is_empty();
    if let Some(path) = &args.baseline {
        let baseline = read_baseline(path)?;
        let series = kernel_series(&table.kernel);
        if !baseline.contains_key(&series) {
            eprintln!(
                "no counts recorded for Linux {series} in {}",
                path.display()
            );
        }
        for g in table.growth(&baseline) {
            ok = false;
            eprintln!(
                "grew more than {GROWTH_FLAG_PERCENT} %: {} {} -> {} on Linux {series}; \
                 if that is the price of a change, record it (--record) and say so in the commit",
                g.program, g.recorded, g.now
            );
        }
    }
    if let Some(path) = &args.record {
        let mut baseline = read_baseline(path)?;
        table.record(&mut baseline);
        std::fs::write(path, serde_json::to_string_pretty(&baseline)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "recorded Linux {} in {}",
            kernel_series(&table.kernel),
            path.display()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
