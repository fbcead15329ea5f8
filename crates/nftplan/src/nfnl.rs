//! The few nf_tables netlink messages the suite sends itself (no `nft` exec): "does table
//! `inet cnirs` exist, and which one is it" (`NFT_MSG_GETTABLE`), the ruleset
//! generation (`NFT_MSG_GETGEN`), the netns cookie of the socket (`SO_NETNS_COOKIE`), and the
//! parsing of change events (`NFNLGRP_NFTABLES`) for `cnirs watch`.
//!
//! Messages are built and parsed with the suite's one netlink codec (`netbase::nlwire`):
//! `netlink-packet-*` has no nf_tables family, and the five messages used here are a header
//! and one or two attributes each. Parsing is pure and unit-tested on captured bytes.

use std::io;

use netbase::{
    nlwire::{
        self, attr, cstr, messages, put_attr, NFGEN_HDRLEN, NLMSG_DONE, NLM_F_ACK, NLM_F_REQUEST,
    },
    Detacher,
};

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// `NFPROTO_INET`: the family of `inet cnirs`.
pub const NFPROTO_INET: u8 = 1;
/// `NFPROTO_BRIDGE`: the family of `bridge cnirs`.
pub const NFPROTO_BRIDGE: u8 = 7;
/// The multicast group nf_tables announces every committed change on.
pub const NFNLGRP_NFTABLES: u32 = 7;

/// `SO_NETNS_COOKIE` (Linux 5.14; 71 on every architecture but mips/sparc/parisc/alpha).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// nf_tables message types (`enum nf_tables_msg_types`), as found in the low byte of
/// `nlmsg_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum NftMsg {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    DelChain = 5,
    NewRule = 6,
    DelRule = 8,
    NewSet = 9,
    DelSet = 11,
    NewSetElem = 12,
    DelSetElem = 14,
    NewGen = 15,
    GetGen = 16,
    Other = 255,
}

impl NftMsg {
    fn from_u8(v: u8) -> NftMsg {
        use NftMsg::*;
        match v {
            0 => NewTable,
            1 => GetTable,
            2 => DelTable,
            3 => NewChain,
            5 => DelChain,
            6 => NewRule,
            8 => DelRule,
            9 => NewSet,
            11 => DelSet,
            12 => NewSetElem,
            14 => DelSetElem,
            15 => NewGen,
            16 => GetGen,
            _ => Other,
        }
    }
}

/// One nf_tables message, reduced to what the watcher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftEvent {
    /// What happened.
    pub msg: NftMsg,
    /// `nfgen_family` (NFPROTO_*).
    pub family: u8,
    /// The table the object belongs to (attribute 1 of every table/chain/rule/set/elem
    /// message is its table's name).
    pub table: Option<String>,
    /// NEWGEN: the generation id just committed.
    pub gen_id: Option<u32>,
    /// NEWGEN: pid and name of the process that committed it.
    pub proc_pid: Option<u32>,
    /// NEWGEN: process name.
    pub proc_name: Option<String>,
    /// NEWSETELEM/DELSETELEM: the set's name.
    pub set: Option<String>,
    /// NEWSETELEM/DELSETELEM: the keys of the elements added or deleted.
    pub keys: Vec<Vec<u8>>,
}

/// The messages of an answer as (nf_tables message type, attributes), or the netlink error.
type Answer = Result<Vec<(u8, Vec<u8>)>, io::Error>;

/// A bound NETLINK_NETFILTER socket whose close is handed to a [`Detacher`] (the verb's: after
/// a DEL, closed by the detached process). The kernel makes the close of such a socket wait
/// for nf_tables' pending destroy work (an RCU grace period, docs/performance.md) after any
/// batch that deleted something, in this netns, by anyone; the commit itself was acknowledged
/// before.
pub(crate) struct NfSocket {
    sock: Option<nlwire::Socket>,
    detach: Detacher,
}

impl NfSocket {
    /// Open and bind (no groups); closed through `detach`.
    pub(crate) fn open(detach: &Detacher) -> io::Result<Self> {
        let sock = nlwire::Socket::open(libc::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        Ok(NfSocket {
            sock: Some(sock),
            detach: detach.clone(),
        })
    }

    fn sock(&self) -> io::Result<&nlwire::Socket> {
        self.sock
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    pub(crate) fn send(&self, m: &[u8]) -> io::Result<()> {
        self.sock()?.send(m)
    }

    pub(crate) fn recv(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        self.sock()?.recv(buf)
    }
}

impl Drop for NfSocket {
    fn drop(&mut self) {
        if let Some(s) = self.sock.take() {
            self.detach.park_fd(s.into_fd());
        }
    }
}

/// A netlink socket on NETLINK_NETFILTER in the calling thread's network namespace.
pub struct Nfnl {
    sock: NfSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    /// Open and bind (no groups); closed at once when dropped.
    pub fn open() -> io::Result<Self> {
        Self::open_with(&Detacher::immediate())
    }

    /// [`Nfnl::open`], its close parked with `detach`.
    pub fn open_with(detach: &Detacher) -> io::Result<Self> {
        Ok(Nfnl {
            sock: NfSocket::open(detach)?,
            seq: 0,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    /// The socket's file descriptor (to poll it).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.sock().map_or(-1, |s| s.as_raw_fd())
    }

    /// The cookie of the network namespace this socket lives in: a 64-bit id the kernel
    /// never hands out twice (unlike the namespace's inode number).
    pub fn netns_cookie(&self) -> io::Result<u64> {
        netns_cookie_of(self.raw_fd())
    }

    /// Join nf_tables' change events; `rcvbuf` bytes of receive buffer (a reload can emit
    /// thousands of messages at once).
    pub fn subscribe(&self, rcvbuf: usize) -> io::Result<()> {
        self.sock.sock()?.add_membership(NFNLGRP_NFTABLES)?;
        // A full buffer drops events (ENOBUFS on the next recv); the caller treats that as
        // "something changed".
        if let Err(e) = self.sock.sock()?.set_rcvbuf(rcvbuf) {
            log::debug!("SO_RCVBUF {rcvbuf}: {e}");
        }
        Ok(())
    }

    /// The handle of table `family name`, `None` when it does not exist. A table's handle is
    /// drawn from a per-netns counter that only grows: a table deleted and created again (by
    /// us or by anyone) has a new handle.
    pub fn table_handle(&mut self, family: u8, name: &str) -> io::Result<Option<u64>> {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 1, &cstr(name)); // NFTA_TABLE_NAME
        let msgs = self.request(NftMsg::GetTable, family, &attrs)?;
        match msgs {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
            Ok(msgs) => Ok(msgs
                .iter()
                .filter(|(t, _)| *t == NftMsg::NewTable as u8)
                .find_map(|(_, body)| attr(body, 4).and_then(be_u64))), // NFTA_TABLE_HANDLE
        }
    }

    /// The current ruleset generation (incremented by every commit).
    pub fn generation(&mut self) -> io::Result<u32> {
        let msgs = self.request(NftMsg::GetGen, 0, &[])??;
        msgs.iter()
            .filter(|(t, _)| *t == NftMsg::NewGen as u8)
            .find_map(|(_, body)| attr(body, 1).and_then(be_u32)) // NFTA_GEN_ID
            .ok_or_else(|| io::Error::other("no NFTA_GEN_ID in the GETGEN answer"))
    }

    /// Block until events arrive; returns them parsed. An `ENOBUFS` error means events were
    /// lost.
    pub fn recv_events(&mut self) -> io::Result<Vec<NftEvent>> {
        self.sock.recv(&mut self.buf)?;
        Ok(parse_events(&self.buf))
    }

    /// Send one request and collect the answer: `Ok(Ok(messages))`, or `Ok(Err(errno))` for a
    /// netlink error answer.
    fn request(&mut self, msg: NftMsg, family: u8, attrs: &[u8]) -> io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = Vec::with_capacity(nlwire::NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len());
        nlwire::nfgen_message(
            &mut m,
            (NFNL_SUBSYS_NFTABLES << 8) | msg as u16,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            attrs,
        );
        self.sock.send(&m)?;
        let mut out = Vec::new();
        loop {
            self.sock.recv(&mut self.buf)?;
            for m in messages(&self.buf) {
                if m.seq != seq {
                    continue;
                }
                match m.error_code() {
                    Some(0) => return Ok(Ok(out)),
                    Some(code) => return Ok(Err(io::Error::from_raw_os_error(-code))),
                    None if m.kind == NLMSG_DONE => return Ok(Ok(out)),
                    None if m.kind >> 8 == NFNL_SUBSYS_NFTABLES => {
                        out.push((
                            (m.kind & 0xff) as u8,
                            m.body.get(NFGEN_HDRLEN..).unwrap_or(&[]).to_vec(),
                        ));
                    }
                    None => {}
                }
            }
        }
    }
}

/// `getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE)`.
pub fn netns_cookie_of(fd: std::os::fd::RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given; the kernel writes at
    // most `len` bytes; a bad fd is reported as an error, not UB.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Parse every nf_tables message of a datagram (others are skipped).
pub fn parse_events(buf: &[u8]) -> Vec<NftEvent> {
    messages(buf)
        .filter(|m| m.kind >> 8 == NFNL_SUBSYS_NFTABLES)
        .map(|m| {
            let (ty, body) = (m.kind, m.body);
            let msg = NftMsg::from_u8((ty & 0xff) as u8);
            let family = body.first().copied().unwrap_or(0);
            let attrs = body.get(NFGEN_HDRLEN..).unwrap_or(&[]);
            let s = |t| attr(attrs, t).map(|v| String::from_utf8_lossy(trim_nul(v)).into_owned());
            if msg == NftMsg::NewGen {
                NftEvent {
                    msg,
                    family,
                    table: None,
                    gen_id: attr(attrs, 1).and_then(be_u32),
                    proc_pid: attr(attrs, 2).and_then(be_u32),
                    proc_name: s(3),
                    set: None,
                    keys: Vec::new(),
                }
            } else {
                let elem_msg = matches!(msg, NftMsg::NewSetElem | NftMsg::DelSetElem);
                NftEvent {
                    msg,
                    family,
                    table: s(1),
                    gen_id: None,
                    proc_pid: None,
                    proc_name: None,
                    // NFTA_SET_ELEM_LIST_SET
                    set: if elem_msg { s(2) } else { None },
                    keys: if elem_msg {
                        crate::nlbatch::message_elems(body)
                            .into_iter()
                            .map(|e| e.key)
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            }
        })
        .collect()
}

fn trim_nul(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or(v)
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(ty: u8, family: u8, attrs: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | ty as u16;
        nlwire::nfgen_message(&mut m, kind, 0, 0, family, 0, attrs);
        nlwire::pad(&mut m);
        m
    }

    #[test]
    fn events_of_a_flush_then_a_generation() {
        let mut a = Vec::new();
        put_attr(&mut a, 1, &cstr("cnirs"));
        put_attr(&mut a, 3, &7u64.to_be_bytes());
        let mut buf = msg(NftMsg::DelTable as u8, NFPROTO_INET, &a);
        let mut g = Vec::new();
        put_attr(&mut g, 1, &42u32.to_be_bytes());
        put_attr(&mut g, 2, &1234u32.to_be_bytes());
        put_attr(&mut g, 3, &cstr("nft"));
        buf.extend(msg(NftMsg::NewGen as u8, 0, &g));
        let ev = parse_events(&buf);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].msg, NftMsg::DelTable);
        assert_eq!(ev[0].family, NFPROTO_INET);
        assert_eq!(ev[0].table.as_deref(), Some("cnirs"));
        assert_eq!(ev[1].msg, NftMsg::NewGen);
        assert_eq!(ev[1].gen_id, Some(42));
        assert_eq!(ev[1].proc_pid, Some(1234));
        assert_eq!(ev[1].proc_name.as_deref(), Some("nft"));
    }

    #[test]
    fn truncated_datagrams_do_not_panic() {
        let mut a = Vec::new();
        put_attr(&mut a, 1, &cstr("cnirs"));
        let buf = msg(NftMsg::DelChain as u8, NFPROTO_INET, &a);
        for cut in 0..buf.len() {
            let _ = parse_events(&buf[..cut]);
        }
        assert_eq!(parse_events(&buf)[0].msg, NftMsg::DelChain);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut a = Vec::new();
        put_attr(&mut a, 1, b"ab\0");
        put_attr(&mut a, 4, &9u64.to_be_bytes());
        assert_eq!(a.len(), 8 + 12);
        assert_eq!(attr(&a, 4).and_then(be_u64), Some(9));
    }
}
