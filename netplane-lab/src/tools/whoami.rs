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
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while answered < max && Instant::now() < deadline {
            sock.set_read_timeout(Some(remaining(deadline)))?;
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            // As long as the question: a large one (fragments) gets a large
            // answer (fragments back).
            sock.send_to(&padded(format!("{SEEN_PREFIX}{peer}\n"), n), peer)?;
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
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    // "who am i? N": N bytes follow; the answer carries
                    // their hash, so the client knows they came intact.
                    let payload: u64 = line
                        .split_whitespace()
                        .nth(3)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let hash = (payload > 0)
                        .then(|| hash_stream(&mut std::io::Read::take(&mut reader, payload)))
                        .transpose()
                        .ok()
                        .flatten();
                    let answer = match hash {
                        Some(h) => format!("{SEEN_PREFIX}{peer} {HASH_PREFIX}{h:016x}\n"),
                        None => format!("{SEEN_PREFIX}{peer}\n"),
                    };
                    let _ = stream.write_all(answer.as_bytes());
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

const HASH_PREFIX: &str = "fnv1a=";

/// FNV-1a (64 bits) of everything `r` yields: a check that a transfer's
/// bytes arrived intact, computed the same way at both ends.
fn hash_stream(r: &mut impl std::io::Read) -> std::io::Result<u64> {
    let mut h = Fnv1a::default();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.0);
        }
        h.write(&buf[..n]);
    }
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `n` bytes of a fixed pseudo-random stream (xorshift), the payload of
/// `ask --send`.
fn payload(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The largest UDP datagram over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// `text`, then filler up to `len` bytes.
fn padded(text: String, len: usize) -> Vec<u8> {
    let mut out = text.into_bytes();
    if out.len() < len {
        out.resize(len, b'.');
    }
    out
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
    /// Bytes of the answer (UDP: as many as the question's).
    pub bytes: usize,
    /// TCP with `send`: whether the server's hash of the bytes it read
    /// equals the client's.
    pub intact: Option<bool>,
}

/// How to ask.
#[derive(Debug, Clone)]
pub struct AskOptions {
    pub udp: bool,
    pub timeout: Duration,
    /// TCP: end the connection with an RST instead of a FIN.
    pub reset: bool,
    /// UDP: the question's size in bytes (the answer comes back as large;
    /// over the MTU both go in fragments).
    pub size: usize,
    /// TCP: send this many bytes after the question; the server hashes them.
    pub send: usize,
    /// Ask from this local port (else one the kernel picks).
    pub from_port: Option<u16>,
}

/// A TCP connection, from `from_port` when one is given.
fn connect_from(
    server: SocketAddr,
    from_port: Option<u16>,
    timeout: Duration,
) -> Result<TcpStream> {
    let Some(port) = from_port else {
        return Ok(TcpStream::connect_timeout(&server, timeout)?);
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // A port this host used a moment ago may still be in TIME_WAIT.
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
        .with_context(|| format!("binding local port {port}"))?;
    sock.connect_timeout(&server.into(), timeout)?;
    Ok(sock.into())
}

/// Asks `server` which address it sees this client as.
pub fn ask(server: SocketAddr, opts: &AskOptions) -> Result<Answer> {
    let AskOptions {
        udp,
        timeout,
        reset,
        size,
        send,
        from_port,
    } = opts.clone();
    let mut intact: Option<bool> = None;
    if size > MAX_DATAGRAM {
        bail!("--size {size}: a UDP datagram holds at most {MAX_DATAGRAM} bytes");
    }
    let (local, reply, bytes) = if udp {
        let sock = UdpSocket::bind(("0.0.0.0", from_port.unwrap_or(0)))
            .with_context(|| format!("binding local port {}", from_port.unwrap_or(0)))?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send(&padded("who am i?\n".into(), size))?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = sock
            .recv(&mut buf)
            .with_context(|| format!("no answer from {server}/udp within {timeout:?}"))?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let line = line.lines().next().unwrap_or_default().to_string();
        (sock.local_addr()?, line, n)
    } else {
        let mut stream = connect_from(server, from_port, timeout)
            .with_context(|| format!("connecting to {server}/tcp"))?;
        stream.set_read_timeout(Some(timeout))?;
        let mut expected = None;
        if send > 0 {
            let data = payload(send);
            stream.write_all(format!("who am i? {send}\n").as_bytes())?;
            stream.write_all(&data)?;
            let mut h = Fnv1a::default();
            h.write(&data);
            expected = Some(format!("{HASH_PREFIX}{:016x}", h.0));
        } else {
            stream.write_all(b"who am i?\n")?;
        }
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .with_context(|| format!("no answer from {server}/tcp"))?;
        intact = expected.map(|h| line.split_whitespace().nth(2) == Some(h.as_str()));
        let line = line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        if reset {
            let abort = nix::sys::socket::sockopt::Linger;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, abort, &linger).context("SO_LINGER")?;
        }
        let n = line.len();
        (stream.local_addr()?, line, n)
    };
    let Some(seen) = reply.trim().strip_prefix(SEEN_PREFIX) else {
        bail!("unexpected answer from {server}: {reply:?}");
    };
    Ok(Answer {
        server,
        proto: if udp { "udp" } else { "tcp" },
        local,
        seen_as: seen.parse().context("server's answer")?,
        bytes,
        intact,
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
