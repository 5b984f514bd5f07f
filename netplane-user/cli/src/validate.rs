//! `netplane validate`: a cluster file against AKS's rules, all at once.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use netplane::config::{Cluster, cluster::ConfigError};

#[derive(Args)]
pub struct ValidateArgs {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(args: ValidateArgs) -> Result<ExitCode> {
    let file = args.file.as_path();
    let result = Cluster::load(Some(file));
    if args.json {
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
