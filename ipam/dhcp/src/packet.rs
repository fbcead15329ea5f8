//! The container side of the wire: an `AF_PACKET` datagram socket bound to the container
//! interface (opened inside the pod netns), carrying IPv4/UDP datagrams framed with
//! `etherparse`. A packet socket, as the reference's nclient4 uses, because before the lease
//! the interface has no address: the kernel would neither send from 0.0.0.0 nor accept the
//! server's unicast OFFER to an address it does not have.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::proto::{Dest, Transport};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const ETH_P_IP: u16 = 0x0800;

/// An `AF_PACKET`/`SOCK_DGRAM` socket for IPv4 on one interface. Equivalent of what
/// `tcpdump -i IFNAME ip` opens, plus sending.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

fn sockaddr(ifindex: i32, mac: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_IP.to_be();
    sa.sll_ifindex = ifindex;
    if let Some(m) = mac {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&m);
    }
    sa
}

impl PacketSocket {
    /// Open and bind to `ifindex` in the calling thread's netns.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own and nothing else closes.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = sockaddr(ifindex, None);
        // SAFETY: `sa` is a valid sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }
}

/// IPv4 + UDP (68 -> 67) around `payload`.
pub fn frame(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(CLIENT_PORT, SERVER_PORT);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(out)
}

/// The UDP payload of an IPv4 datagram to port 68, else `None`. Checksums are not checked:
/// over a veth or macvlan the sender's checksum may be left to offload (`CHECKSUM_PARTIAL`),
/// and a packet socket sees it before completion.
pub fn unframe(packet: &[u8]) -> Option<&[u8]> {
    let p = SlicedPacket::from_ip(packet).ok()?;
    if !matches!(p.net, Some(NetSlice::Ipv4(_))) {
        return None;
    }
    match p.transport {
        Some(TransportSlice::Udp(u)) if u.destination_port() == CLIENT_PORT => Some(u.payload()),
        _ => None,
    }
}

impl Transport for PacketSocket {
    fn send(&mut self, to: Dest, payload: &[u8]) -> io::Result<()> {
        let pkt = frame(to.src, to.dst, payload)?;
        let sa = sockaddr(self.ifindex, Some(to.mac));
        // SAFETY: `pkt` outlives the call; `sa` is a valid sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                std::ptr::addr_of!(sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<(Vec<u8>, [u8; 6])>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                continue;
            }
            let mut sa = sockaddr(0, None);
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `sa` are valid for writes of the sizes passed; `len` holds
            // the size of `sa`.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of_mut!(sa).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e);
            }
            if sa.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let n = usize::try_from(n).unwrap_or(0);
            if let Some(payload) = buf.get(..n).and_then(unframe) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&sa.sll_addr[..6]);
                return Ok(Some((payload.to_vec(), mac)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn frame_and_unframe_round_trip_only_for_port_68() {
        let p = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, b"hello").unwrap();
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(p[9], 17, "UDP");
        assert_eq!(&p[16..20], &[255, 255, 255, 255]);
        // Ours goes to 67: not for us.
        assert_eq!(unframe(&p), None);
        // A server's answer (67 -> 68).
        let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 50], 64).udp(67, 68);
        let mut ans = Vec::new();
        b.write(&mut ans, b"offer").unwrap();
        assert_eq!(unframe(&ans), Some(&b"offer"[..]));
        assert_eq!(unframe(&ans[..10]), None);
    }
}
