//! `netplane whoami`: an address echo for lab traffic.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use clap::Subcommand;
use netplane_lab::tools::whoami;

#[derive(Subcommand)]
pub enum WhoamiCmd {
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
        /// TCP: end the connection with an RST instead of a FIN.
        #[arg(long, conflicts_with = "udp")]
        reset: bool,
        /// UDP: the question's size in bytes; the answer is as large (over
        /// the MTU, both travel in fragments).
        #[arg(long, default_value_t = 0, requires = "udp")]
        size: usize,
        /// TCP: send this many bytes after the question; the server answers
        /// with their hash, and `intact` says whether it matches.
        #[arg(long, default_value_t = 0, conflicts_with = "udp")]
        send: usize,
        /// Ask from this local port (default: one the kernel picks).
        #[arg(long)]
        from_port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: WhoamiCmd) -> Result<()> {
    match command {
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
            reset,
            size,
            send,
            from_port,
            json,
        } => {
            let opts = whoami::AskOptions {
                udp,
                timeout: Duration::from_secs(timeout),
                reset,
                size,
                send,
                from_port,
            };
            let a = whoami::ask(server, &opts)?;
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
    }
    Ok(())
}
