//! TCP reset on idle (Azure's `enableTcpReset`, on in AKS's outbound rule):
//! when the load balancer forgets an established TCP flow at its idle
//! timeout, it tells both ends with an RST, so neither waits on a
//! connection that no longer goes anywhere. Each RST carries exactly the
//! sequence number its receiver expects (the last acknowledgment that
//! receiver sent), the only one a Linux peer accepts (RFC 5961).
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use etherparse::PacketBuilder;
use netplane_common::nat::{FlowKey, NatEntry};

use crate::datapath::addr;

/// Resets both ends of each flow the load balancer has just forgotten: the
/// backend (node IP and port) as if from the remote, and the remote as if
/// from the frontend address and port. One socket serves the batch.
pub fn reset_both_ends<'a>(flows: impl IntoIterator<Item = &'a (FlowKey, NatEntry)>) -> Result<()> {
    let mut socket = None;
    for (k, e) in flows {
        let socket = match &mut socket {
            Some(s) => s,
            None => socket.insert(RawSocket::open()?),
        };
        let (remote, backend, frontend) = (addr(k.dst_ip), addr(k.src_ip), addr(e.nat_ip));
        socket.send_rst((remote, k.dst_port), (backend, k.src_port), e.ack_out)?;
        socket.send_rst((frontend, e.nat_port), (remote, k.dst_port), e.ack_in)?;
    }
    Ok(())
}

/// An IPPROTO_RAW socket: we write the IPv4 header ourselves (the source
/// is not this host's address), the kernel routes it.
struct RawSocket(std::os::fd::OwnedFd);

impl RawSocket {
    fn open() -> Result<Self> {
        // SAFETY: a plain socket(2) call; the returned fd is checked and
        // then owned.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw socket for TCP resets");
        }
        // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn send_rst(&self, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), seq: u32) -> Result<()> {
        let mut packet = Vec::new();
        PacketBuilder::ipv4(from.0.octets(), to.0.octets(), 64)
            .tcp(from.1, to.1, seq, 0)
            .rst()
            .write(&mut packet, &[])
            .context("building an RST")?;
        let dst = SocketAddrV4::new(to.0, 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: `packet` and `sa` live across the call, their lengths are
        // passed, and the fd is open.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending an RST to {}", to.0));
        }
        Ok(())
    }
}
