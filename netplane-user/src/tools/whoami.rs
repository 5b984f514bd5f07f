//! A tiny TCP/UDP echo of addresses: the server answers every client with
//! the address it saw the client as. It shows, from inside a pod, whether a
//! packet arrived with its source intact or translated.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The reply's prefix; what follows is the address the server saw.
const SEEN_PREFIX: &str = "seen-as ";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until `max` clients were answered or `timeout` passed (bounded,
/// so a forgotten server ends by itself). With `hold`, TCP connections are
/// accepted and kept open, unanswered, until the timeout (for filling SNAT
/// port pools).
pub fn serve(listen: SocketAddr, udp: bool, max: u64, timeout: Duration, hold: bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let proto = if udp { "udp" } else { "tcp" };
    let mut answered = 0;
    let log = |local: SocketAddr, peer: SocketAddr| {
        println!("{proto} {local} <- {peer}");
        let _ = std::io::stdout().flush();
    };
    if udp {
        let sock = UdpSocket::bind(listen).with_context(|| format!("binding {listen}/udp"))?;
        println!("listening on {}/udp", sock.local_addr()?);
        let _ = std::io::stdout().flush();
        let mut buf = [0u8; 1500];
        while answered < max && Instant::now() < deadline {
            sock.set_read_timeout(Some(remaining(deadline)))?;
            let Ok((_, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            sock.send_to(format!("{SEEN_PREFIX}{peer}\n").as_bytes(), peer)?;
            log(sock.local_addr()?, peer);
            answered += 1;
        }
    } else {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("binding {listen}/tcp"))?;
        listener.set_nonblocking(true)?;
        println!("listening on {}/tcp", listener.local_addr()?);
        let _ = std::io::stdout().flush();
        let mut held = Vec::new();
        while (hold || answered < max) && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, peer)) if hold => {
                    log(stream.local_addr()?, peer);
                    held.push(stream);
                }
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    let mut line = String::new();
                    let _ = BufReader::new(&stream).read_line(&mut line);
                    let _ = stream.write_all(format!("{SEEN_PREFIX}{peer}\n").as_bytes());
                    log(stream.local_addr()?, peer);
                    answered += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// What the server saw of this client.
#[derive(Debug, serde::Serialize)]
pub struct Answer {
    pub server: SocketAddr,
    pub proto: &'static str,
    pub local: SocketAddr,
    pub seen_as: SocketAddr,
}

/// Asks `server` which address it sees this client as. TCP: with `reset`
/// the connection ends with an RST (SO_LINGER 0) instead of a FIN.
pub fn ask(server: SocketAddr, udp: bool, timeout: Duration, reset: bool) -> Result<Answer> {
    let (local, reply) = if udp {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send(b"who am i?\n")?;
        let mut buf = [0u8; 256];
        let n = sock
            .recv(&mut buf)
            .with_context(|| format!("no answer from {server}/udp within {timeout:?}"))?;
        (
            sock.local_addr()?,
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    } else {
        let mut stream = TcpStream::connect_timeout(&server, timeout)
            .with_context(|| format!("connecting to {server}/tcp"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"who am i?\n")?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .with_context(|| format!("no answer from {server}/tcp"))?;
        if reset {
            let abort = nix::sys::socket::sockopt::Linger;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, abort, &linger).context("SO_LINGER")?;
        }
        (stream.local_addr()?, line)
    };
    let Some(seen) = reply.trim().strip_prefix(SEEN_PREFIX) else {
        bail!("unexpected answer from {server}: {reply:?}");
    };
    Ok(Answer {
        server,
        proto: if udp { "udp" } else { "tcp" },
        local,
        seen_as: seen.parse().context("server's answer")?,
    })
}

/// The outcome of `hold`.
#[derive(Debug, serde::Serialize)]
pub struct HoldReport {
    pub server: SocketAddr,
    pub attempted: u32,
    pub opened: u32,
    pub failed: u32,
}

/// Opens `count` TCP connections to `server` one after another, keeps the
/// ones that open for `hold` after the last attempt, then closes them all.
/// `on_done` sees the report before the connections close.
pub fn hold(
    server: SocketAddr,
    count: u32,
    connect_timeout: Duration,
    hold: Duration,
    on_done: impl FnOnce(&HoldReport),
) -> Result<HoldReport> {
    let mut open = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&server, connect_timeout) {
            Ok(s) => open.push(s),
            Err(_) => failed += 1,
        }
    }
    let report = HoldReport {
        server,
        attempted: count,
        opened: open.len() as u32,
        failed,
    };
    on_done(&report);
    std::thread::sleep(hold);
    drop(open);
    Ok(report)
}
