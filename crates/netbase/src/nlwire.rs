//! The suite's one netlink wire codec, for the requests the typed crates (rtnetlink) do not
//! carry: nf_tables element batches and table probes (`nftplan`), ctnetlink flushes,
//! `RTM_GETNETCONF` and per-link IPv4 conf (`netops`).
//!
//! Messages are built with [`message`] / [`nfgen_message`] and [`put_attr`], answers are split
//! with [`messages`] and walked with [`attrs`]; [`Socket`] is a blocking netlink socket of one
//! protocol in the netns of the thread that opened it. Everything but [`Socket`] is pure and
//! unit-tested on bytes.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`: the header of every nfnetlink message after the nlmsghdr.
pub const NFGEN_HDRLEN: usize = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLA_F_NESTED: u16 = 0x8000;
/// The type bits of `nla_type` (without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`).
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// The attributes of `b` as (type without flags, payload). A truncated attribute ends the walk.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs_whole(b).map(|(t, p, _)| (t, p))
}

/// [`attrs`], each with the whole attribute (header and payload) as a third item, for a caller
/// that copies attributes as they are.
pub fn attrs_whole(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
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
        b = b.get(align(len)..).unwrap_or(&[]);
        Some((ty, payload, whole))
    })
}

/// The payload of the first attribute of type `ty` (flags masked off).
pub fn attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find_map(|(t, p)| (t == ty).then_some(p))
}

/// `len` rounded up to netlink's 4-byte alignment.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Pad `v` to the 4-byte alignment of netlink attributes.
pub fn pad(v: &mut Vec<u8>) {
    v.resize(align(v.len()), 0);
}

/// Append one attribute (length, type, payload, padding) to `out`.
pub fn put_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    pad(out);
}

/// One attribute as a value ([`put_attr`] into a new buffer).
pub fn attr_bytes(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(align(4 + payload.len()));
    put_attr(&mut v, ty, payload);
    v
}

/// A NUL-terminated string attribute payload.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// A request: nlmsghdr (pid 0) + `body` (the family header, then attributes).
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    put_header(&mut m, NLMSG_HDRLEN + body.len(), kind, flags, seq);
    m.extend_from_slice(body);
    m
}

/// Append an nfnetlink message to `out`: nlmsghdr, nfgenmsg (`family`, version 0, `res_id`
/// big-endian), `attrs`.
pub fn nfgen_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    put_header(
        out,
        NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len(),
        kind,
        flags,
        seq,
    );
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

fn put_header(out: &mut Vec<u8>, len: usize, kind: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    pub seq: u32,
    /// Everything after the nlmsghdr.
    pub body: &'a [u8],
}

impl Msg<'_> {
    /// The errno of an `NLMSG_ERROR` answer, negative as the kernel sends it (0: an ack);
    /// `None` for any other message.
    pub fn error_code(&self) -> Option<i32> {
        match self.body {
            [a, b, c, d, ..] if self.kind == NLMSG_ERROR => {
                Some(i32::from_ne_bytes([*a, *b, *c, *d]))
            }
            _ if self.kind == NLMSG_ERROR => Some(-libc::EIO),
            _ => None,
        }
    }
}

/// The messages of a datagram; a truncated one ends the walk.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let h = buf.get(off..off.checked_add(NLMSG_HDRLEN)?)?;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return None;
        }
        let m = Msg {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            body: &buf[off + NLMSG_HDRLEN..off + len],
        };
        off += align(len);
        Some(m)
    })
}

/// A netlink socket of one protocol, in the netns of the thread that opened it. Dropping it
/// closes the fd; a caller whose close may wait (nfnetlink) takes the fd with
/// [`Socket::into_fd`] and hands it to its detacher.
#[derive(Debug)]
pub struct Socket(OwnedFd);

impl Socket {
    /// `socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)`.
    #[allow(unsafe_code)]
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
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

    /// Bind to a port id the kernel picks (no multicast groups).
    #[allow(unsafe_code)]
    pub fn bind_auto(&self) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl (pid 0: the kernel assigns one, no groups) is valid and
        // outlives the call.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::bind(
                self.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Join multicast group `group` (`NETLINK_ADD_MEMBERSHIP`).
    pub fn add_membership(&self, group: u32) -> io::Result<()> {
        self.set_opt(libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group)
    }

    /// `SO_RCVBUF`.
    pub fn set_rcvbuf(&self, bytes: usize) -> io::Result<()> {
        let v = libc::c_uint::try_from(bytes).unwrap_or(libc::c_uint::MAX);
        self.set_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, v)
    }

    #[allow(unsafe_code)]
    fn set_opt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_uint) -> io::Result<()> {
        // SAFETY: `v` is a valid c_uint for the length given and outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The fd, for a caller that decides how it is closed.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    /// Send `m` to the kernel.
    #[allow(unsafe_code)]
    pub fn send(&self, m: &[u8]) -> io::Result<()> {
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

    /// Receive one datagram into `buf` (cleared first, filled up to its capacity; at least
    /// 64 KiB is reserved).
    #[allow(unsafe_code)]
    pub fn recv(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.reserve(1 << 16);
        // SAFETY: the spare capacity is valid for writes of its length; only the `n` bytes the
        // kernel wrote are then made part of the vector.
        let n = unsafe {
            let spare = buf.spare_capacity_mut();
            libc::recv(
                self.0.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: recv(2) initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(n as usize) };
        Ok(())
    }

    /// Read the answers to `seq` until DONE (a dump), an ACK, or (a plain get, asked without
    /// `NLM_F_ACK`, when `until_first`) the first answer; hand each (type, body) to `each`. A
    /// kernel error comes back as its errno; a truncated message as `InvalidData`.
    pub fn read(
        &self,
        seq: u32,
        until_first: bool,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            self.recv(&mut buf)?;
            let mut seen = 0usize;
            for m in messages(&buf) {
                seen += align(NLMSG_HDRLEN + m.body.len());
                if m.seq != seq {
                    continue;
                }
                match m.error_code() {
                    Some(0) => return Ok(()),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                    None if m.kind == NLMSG_DONE => return Ok(()),
                    None => {
                        each(m.kind, m.body);
                        if until_first {
                            return Ok(());
                        }
                    }
                }
            }
            if seen < buf.len() && buf.len() - seen >= NLMSG_HDRLEN {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_flags() {
        let body = [
            attr_bytes(1, &[7]),
            attr_bytes(2 | NLA_F_NESTED, &attr_bytes(3, &9u32.to_ne_bytes())),
        ]
        .concat();
        assert_eq!(body.len(), 8 + 12);
        let got: Vec<(u16, Vec<u8>)> = attrs(&body).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(got[0], (1, vec![7]));
        assert_eq!(got[1].0, 2, "the nested flag is masked");
        let inner: Vec<u16> = attrs(&got[1].1).map(|(t, _)| t).collect();
        assert_eq!(inner, vec![3]);
        let whole: Vec<usize> = attrs_whole(&body).map(|(_, _, w)| w.len()).collect();
        assert_eq!(whole, vec![5, 12], "unpadded length of each attribute");
        assert_eq!(attr(&body, 1), Some(&[7u8][..]));
        assert_eq!(attr(&body, 9), None);
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut body = attr_bytes(1, &[1, 2, 3, 4]);
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

    #[test]
    fn nfgen_messages_split_back_with_their_errors() {
        let mut buf = Vec::new();
        nfgen_message(
            &mut buf,
            (10 << 8) | 12,
            NLM_F_REQUEST,
            3,
            1,
            0x0102,
            &cstr("ab"),
        );
        assert_eq!(buf.len(), 16 + 4 + 3);
        assert_eq!(
            &buf[16..20],
            &[1, 0, 1, 2],
            "family, version, res_id big-endian"
        );
        pad(&mut buf);
        buf.extend(message(NLMSG_ERROR, 0, 4, &(-libc::ENOENT).to_ne_bytes()));
        let got: Vec<Msg<'_>> = messages(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].kind, got[0].seq, got[0].error_code()),
            ((10 << 8) | 12, 3, None)
        );
        assert_eq!(got[1].error_code(), Some(-libc::ENOENT));
        for cut in 0..buf.len() {
            assert!(messages(&buf[..cut]).count() <= 2);
        }
    }
}
