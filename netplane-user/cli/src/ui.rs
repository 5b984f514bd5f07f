//! `netplane ui`: serve the live page of the running cluster.
use std::net::SocketAddr;

use anyhow::Result;
use clap::Args;
use netplane_lab::ui;

#[derive(Args)]
pub struct UiArgs {
    /// Address and port to listen on (port 0: any free port).
    #[arg(long, default_value = ui::DEFAULT_LISTEN)]
    listen: SocketAddr,
}

pub fn run(args: UiArgs) -> Result<()> {
    ui::serve(args.listen, |addr| {
        // The first line, which `lab up --ui` waits for.
        println!("{} http://{addr}/", ui::LISTENING);
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })
}
