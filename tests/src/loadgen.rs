//! Traffic generators and servers for `cargo xtask bench`, run inside the
//! lab's pods and `inet` (`netplane loadgen ...`, hidden). Every one ends by
//! its own deadline, so nothing outlives a benchmark, and prints one JSON
//! object.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netplane_bench_model::{
    FillCostSample, FillRun, FillSample,
    tools::{TcpCrr, TcpRr, UdpFlood, UdpSink, UdpSpray},
};

/// Messages per sendmmsg/recvmmsg call.
const BATCH: usize = 64;
/// Largest datagram the sinks read.
const MAX_DATAGRAM: usize = 2048;
/// How long a connect or a reply may take before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `tcp_echo` waits on a silent connection before taking the next.
const ECHO_IDLE: Duration = Duration::from_secs(2);

pub fn udp_sink(port: u16, secs: f64, idle_ms: u64) -> Result<UdpSink> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut bufs = vec![[0u8; MAX_DATAGRAM]; BATCH];
    let (mut packets, mut first, mut last) = (0u64, None, Instant::now());
    while Instant::now() < deadline {
        let n = recv_batch(&sock, &mut bufs)?;
        let now = Instant::now();
        if n > 0 {
            packets += n as u64;
            first.get_or_insert(now);
            last = now;
        } else if first.is_some() && now - last > Duration::from_millis(idle_ms) {
            break;
        }
    }
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Ok(UdpSink {
        packets,
        seconds,
        packets_per_second: if seconds > 0.0 {
            packets as f64 / seconds
        } else {
            0.0
        },
    })
}

/// UDP flood: `payload`-byte datagrams to `to` as fast as sendmmsg goes,
/// for `secs`.
pub fn udp_flood(to: SocketAddrV4, payload: usize, secs: f64) -> Result<UdpFlood> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(to)?;
    let data = vec![0x5au8; payload];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| mmsg(&mut iov, None)).collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let (mut sent, mut refused) = (0u64, 0u64);
    while Instant::now() < deadline {
        // SAFETY: msgs holds BATCH initialised headers pointing at live data.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED) => refused += 1,
                _ => return Err(e).context("sendmmsg"),
            }
        } else {
            sent += n as u64;
        }
    }
    Ok(UdpFlood {
        sent,
        refused,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// TCP echo server, one connection at a time (the clients are single
/// connections or one-at-a-time connection loops), until `secs` pass.
pub fn tcp_echo(port: u16, secs: f64) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    set_int_opt(&listener, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = [0u8; MAX_DATAGRAM];
    while Instant::now() < deadline {
        if !readable(&listener, Duration::from_millis(100))? {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_millis(200)))?;
        // A client that goes silent (its FIN or RST never came) must not
        // hold the one-at-a-time server for the rest of its life.
        let mut last = Instant::now();
        while Instant::now() < deadline && last.elapsed() < ECHO_IDLE {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    last = Instant::now();
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// UDP echo server: every datagram goes back to its sender, until `secs`
/// pass.
pub fn udp_echo(port: u16, secs: f64) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = [0u8; MAX_DATAGRAM];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

pub fn tcp_rr(to: SocketAddrV4, size: usize, secs: f64) -> Result<TcpRr> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(to), IO_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let (req, mut resp) = (vec![1u8; size], vec![0u8; size]);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut ns: Vec<u64> = Vec::with_capacity(1 << 20);
    while Instant::now() < deadline {
        let t = Instant::now();
        conn.write_all(&req)?;
        conn.read_exact(&mut resp).context("reading the response")?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    if ns.is_empty() {
        bail!("no transaction completed");
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    Ok(TcpRr {
        transactions: ns.len() as u64,
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
    })
}

pub fn tcp_crr(to: SocketAddrV4, secs: f64, max: Option<u64>) -> Result<TcpCrr> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let (mut ok, mut failures) = (0u64, 0u64);
    while Instant::now() < deadline && max.is_none_or(|m| ok + failures < m) {
        match one_transaction(to) {
            Ok(()) => ok += 1,
            Err(_) => failures += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(TcpCrr {
        connections: ok,
        failures,
        seconds,
        per_second: ok as f64 / seconds,
    })
}

fn one_transaction(to: SocketAddrV4) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(to), IO_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(&[1])?;
    let mut b = [0u8; 1];
    conn.read_exact(&mut b)
}

/// Fills a SNAT port pool of `pool` ports toward one destination (a UDP
/// echo server): `flows` new flows, each from its own source port (from
/// `first_port` on), sent in steps of 2 % of the pool; after each step,
/// flows whose echo did not come back (see [`unanswered`]) are failures,
/// and the step's sockets close (the translations stay until their UDP
/// timeout). At each fill
/// level in `cost_at` (percent), compares sendto of a batch of new flows
/// with sendto on flows that already have their port.
pub fn udp_fill(
    to: SocketAddrV4,
    first_port: u16,
    flows: u32,
    pool: u32,
    cost_at: &[f64],
) -> Result<FillRun> {
    if u32::from(first_port) + flows > 65_536 {
        bail!("{flows} source ports from {first_port} do not fit below 65536");
    }
    let step = (pool / 50).max(1) as usize;
    let batch = (pool / 200).clamp(8, 200) as usize;
    let mut marks: Vec<usize> = cost_at
        .iter()
        .map(|p| (p / 100.0 * f64::from(pool)) as usize)
        .filter(|m| *m >= batch)
        .collect();
    marks.sort_unstable();
    let mut new_ns: Vec<u64> = Vec::with_capacity(flows as usize);
    let (mut curve, mut cost, mut failures) = (Vec::new(), Vec::new(), 0u64);
    let mut open: Vec<UdpSocket> = Vec::with_capacity(step);
    let mut buf = [0u8; 64];
    for i in 0..flows as usize {
        let sock = bind_port(first_port + i as u16)?;
        let t = Instant::now();
        sock.send_to(&[0u8; 16], to)?;
        new_ns.push(t.elapsed().as_nanos() as u64);
        open.push(sock);
        let sent = i + 1;
        if sent % step == 0 || sent == flows as usize {
            failures += unanswered(&mut open, &mut buf);
            curve.push(FillSample {
                flows: sent as u64,
                fill_pct: 100.0 * sent as f64 / f64::from(pool),
                failures: failures as f64,
            });
        }
        // A cost window ends: the batch of new flows just sent, against
        // sends on the first flows (closed sockets, live translations).
        if marks.first() == Some(&(sent - batch.min(sent))) && sent >= batch {
            let mark = marks.remove(0);
            let mut est = Vec::with_capacity(batch);
            for j in 0..batch {
                let s = bind_port(first_port + j as u16)?;
                let t = Instant::now();
                s.send_to(&[0u8; 16], to)?;
                est.push(t.elapsed().as_nanos() as u64);
            }
            cost.push(FillCostSample {
                fill_pct: 100.0 * mark as f64 / f64::from(pool),
                new_flow_ns: median_u64(&new_ns[mark..sent]),
                established_ns: median_u64(&est),
            });
        }
    }
    Ok(FillRun {
        pool: u64::from(pool),
        curve,
        cost,
    })
}

/// How long a step waits with no new echo before its remaining flows count
/// as failed, and the most it waits in all: long enough that a stalled CPU
/// on a shared machine (tens of ms) does not pass for a lost port.
const FILL_REPLY_IDLE: Duration = Duration::from_millis(250);
const FILL_REPLY_DEADLINE: Duration = Duration::from_secs(2);

/// Waits for each socket's echo and closes the sockets: returns how many
/// got none (no reply while replies stopped coming, or by the deadline).
fn unanswered(open: &mut Vec<UdpSocket>, buf: &mut [u8]) -> u64 {
    let start = Instant::now();
    let mut last_reply = start;
    while !open.is_empty()
        && start.elapsed() < FILL_REPLY_DEADLINE
        && last_reply.elapsed() < FILL_REPLY_IDLE
    {
        let before = open.len();
        open.retain(|s| s.recv(buf).is_err());
        if open.len() < before {
            last_reply = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let failed = open.len() as u64;
    open.clear();
    failed
}

fn bind_port(port: u16) -> Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding source port {port}"))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

pub fn udp_spray(
    to: Ipv4Addr,
    dports: (u16, u16),
    first_port: u16,
    sources: u16,
) -> Result<UdpSpray> {
    let start = Instant::now();
    let (mut flows, mut refused) = (0u64, 0u64);
    let dests: Vec<libc::sockaddr_in> = (dports.0..=dports.1)
        .map(|p| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    let data = [0u8; 16];
    for s in 0..sources {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, first_port + s))?;
        for chunk in dests.chunks(BATCH) {
            let mut iov = libc::iovec {
                iov_base: data.as_ptr() as *mut _,
                iov_len: data.len(),
            };
            let mut msgs: Vec<libc::mmsghdr> =
                chunk.iter().map(|d| mmsg(&mut iov, Some(d))).collect();
            let mut done = 0usize;
            // Bounded: each message is sent or refused once.
            while done < msgs.len() {
                // SAFETY: msgs[done..] are initialised headers.
                let n = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        msgs[done..].as_mut_ptr(),
                        (msgs.len() - done) as u32,
                        0,
                    )
                };
                if n <= 0 {
                    refused += 1;
                    done += 1;
                } else {
                    flows += n as u64;
                    done += n as usize;
                }
            }
        }
    }
    Ok(UdpSpray {
        flows,
        refused,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn median_u64(v: &[u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2] as f64
}

/// One message of a sendmmsg/recvmmsg batch: one buffer, and for
/// unconnected sends its destination. The caller keeps `iov`, its buffer
/// and `to` alive while the header is in use.
fn mmsg(iov: *mut libc::iovec, to: Option<&libc::sockaddr_in>) -> libc::mmsghdr {
    // SAFETY: an all-zero mmsghdr is a valid empty message.
    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
    m.msg_hdr.msg_iov = iov;
    m.msg_hdr.msg_iovlen = 1;
    if let Some(to) = to {
        m.msg_hdr.msg_name = to as *const libc::sockaddr_in as *mut _;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    }
    m
}

fn recv_batch(sock: &UdpSocket, bufs: &mut [[u8; MAX_DATAGRAM]]) -> Result<usize> {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs.iter_mut().map(|iov| mmsg(iov, None)).collect();
    // SAFETY: msgs points at live buffers; the socket's read timeout bounds
    // the wait.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => Ok(0),
            _ => Err(e).context("recvmmsg"),
        };
    }
    Ok(n as usize)
}

fn readable(fd: &impl AsRawFd, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    Ok(n > 0)
}

fn set_int_opt(fd: &impl AsRawFd, level: i32, opt: i32, value: i32) -> Result<()> {
    // SAFETY: an int option with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &value as *const i32 as *const _,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generators against their servers over loopback: what they count
    /// is what went through.
    #[test]
    fn rr_and_crr_count_real_transactions() {
        let port = 47_311;
        let server = std::thread::spawn(move || tcp_echo(port, 1.5));
        std::thread::sleep(Duration::from_millis(100));
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let rr = tcp_rr(to, 1, 0.3).unwrap();
        assert!(rr.transactions > 10, "{rr:?}");
        assert!(rr.p50_us > 0.0 && rr.p50_us <= rr.p99_us && rr.p99_us <= rr.max_us);
        let crr = tcp_crr(to, 0.3, None).unwrap();
        assert!(crr.connections > 10 && crr.failures == 0, "{crr:?}");
        server.join().unwrap().unwrap();
        // Nobody listens any more: every connection fails, and is counted.
        let dead = tcp_crr(to, 0.1, None).unwrap();
        assert_eq!(dead.connections, 0);
        assert!(dead.failures > 0);
    }

    #[test]
    fn the_sink_counts_what_the_flood_sent() {
        let port = 47_312;
        let sink = std::thread::spawn(move || udp_sink(port, 3.0, 300));
        std::thread::sleep(Duration::from_millis(100));
        let sent = udp_flood(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 18, 0.2).unwrap();
        let got = sink.join().unwrap().unwrap();
        assert!(sent.sent > 1000, "{sent:?}");
        assert!(
            got.packets > 0 && got.packets <= sent.sent,
            "{got:?} {sent:?}"
        );
    }

    #[test]
    fn a_fill_without_translation_has_no_failures_and_a_silent_one_all() {
        let port = 47_313;
        let echo = std::thread::spawn(move || udp_echo(port, 2.0));
        std::thread::sleep(Duration::from_millis(100));
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let r = udp_fill(to, 40_000, 200, 200, &[50.0]).unwrap();
        assert_eq!(r.curve.last().unwrap().flows, 200);
        assert_eq!(r.curve.last().unwrap().failures, 0.0, "{r:?}");
        assert_eq!(r.cost.len(), 1);
        echo.join().unwrap().unwrap();
        let silent = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 1);
        let r = udp_fill(silent, 41_000, 100, 100, &[]).unwrap();
        assert_eq!(r.curve.last().unwrap().failures, 100.0);
    }
}
