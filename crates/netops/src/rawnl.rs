//! A blocking netlink socket speaking raw messages, for the few requests the typed crates do
//! not carry (ctnetlink flushes, `RTM_GETNETCONF`, IPv4 per-link conf) and for the plugins that
//! have no tokio runtime (`portmap`). Messages are built with [`message`] and [`attr`], and
//! answers are walked with [`attrs`].

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// The netlink attributes of `b`: (type without flags, payload, whole attribute). Stops at the
/// first truncated one.
pub(crate) fn attrs<'a>(mut b: &'a [u8]) -> impl Iterator<Item = (u16, &'a [u8], &'a [u8])> + 'a {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let (whole, payload) = (&b[..len], &b[4..len]);
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
        Some((ty, payload, whole))
    })
}

/// Pad `v` to the 4-byte alignment of netlink attributes.
pub(crate) fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(4), 0);
}

/// One attribute, padded to 4 bytes.
pub(crate) fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len() + 3);
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    pad(&mut v);
    v
}

/// A request: nlmsghdr (pid 0) + `body` (the family header, then attributes).
pub(crate) fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// A netlink socket of one protocol, in the netns of the thread that opened it.
pub(crate) struct Socket(OwnedFd);

impl Socket {
    pub(crate) fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The fd, for a caller that decides how it is closed.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.0
    }

    pub(crate) fn send(&self, m: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl is valid (kernel as destination); `m` outlives the call.
        let n = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.0.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Read the answers to `seq` until DONE (a dump), an ACK, or (a plain get, asked without
    /// `NLM_F_ACK`) the first answer; hand each (type, body) to `each`. A kernel error comes
    /// back as its errno.
    pub(crate) fn read(
        &self,
        seq: u32,
        until_first: bool,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            let mut b = &buf[..n];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < 16 || len > b.len() {
                    return Err(io::ErrorKind::InvalidData.into());
                }
                let body = &b[16..len];
                if mseq == seq {
                    match ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = body
                                .get(..4)
                                .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                                .unwrap_or(0);
                            if code == 0 {
                                return Ok(());
                            }
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        _ => {
                            each(ty, body);
                            if until_first {
                                return Ok(());
                            }
                        }
                    }
                }
                b = &b[((len + 3) & !3).min(b.len())..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_flags() {
        let body = [
            attr(1, &[7]),
            attr(2 | NLA_F_NESTED, &attr(3, &9u32.to_ne_bytes())),
        ]
        .concat();
        assert_eq!(body.len(), 8 + 12);
        let got: Vec<(u16, Vec<u8>)> = attrs(&body).map(|(t, p, _)| (t, p.to_vec())).collect();
        assert_eq!(got[0], (1, vec![7]));
        assert_eq!(got[1].0, 2, "the nested flag is masked");
        let inner: Vec<u16> = attrs(&got[1].1).map(|(t, _, _)| t).collect();
        assert_eq!(inner, vec![3]);
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut body = attr(1, &[1, 2, 3, 4]);
        body.extend_from_slice(&[200, 0, 5, 0, 1]);
        assert_eq!(attrs(&body).count(), 1);
        assert_eq!(attrs(&[3, 0]).count(), 0);
    }

    #[test]
    fn message_header_counts_itself() {
        let m = message(82, NLM_F_REQUEST, 7, &[2, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 82);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
    }
}
