//! Conntrack entries deleted over netlink (`NETLINK_NETFILTER`, the ctnetlink subsystem), with
//! no `conntrack` binary: one dump per family, then one delete per matching entry, keyed by the
//! entry's own original tuple (and zone) as the kernel sent it.
//!
//! Equivalent: `conntrack -D -f ipv4 -p udp --orig-port-dst PORT` and
//! `conntrack -D -s ADDR` / `-d ADDR` / `-r ADDR` / `-q ADDR`.
//!
//! Why: a UDP flow keeps its DNAT as long as packets keep coming, so after a published port
//! moves to another pod (or the pod is gone) the old entry must be removed, or the traffic
//! keeps going to the old address.

use std::{io, mem::ManuallyDrop, net::IpAddr};

use netbase::{
    nlwire::{
        self, attr_bytes as attr, attrs, attrs_whole, pad, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP,
        NLM_F_REQUEST,
    },
    Detacher,
};

use crate::NetopsError;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_CTA_IP_SRC: u32 = 1 << 0;
const CTA_FILTER_F_CTA_IP_DST: u32 = 1 << 1;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_F_CTA_PROTO_DST_PORT: u32 = 1 << 5;

/// Which entries to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtMatch {
    /// Original direction to `port` of `proto` (`IPPROTO_*`), in `v6` or IPv4 entries: the
    /// flows a published port DNATs.
    DstPort { v6: bool, proto: u8, port: u16 },
    /// Any entry with `addr` as a source or destination in either direction: the flows of a
    /// pod address.
    Address(IpAddr),
}

impl CtMatch {
    fn v6(&self) -> bool {
        match self {
            CtMatch::DstPort { v6, .. } => *v6,
            CtMatch::Address(a) => a.is_ipv6(),
        }
    }
}

/// The parts of an entry a [`CtMatch`] looks at, plus the raw attributes a delete needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    proto: Option<u8>,
    orig_dport: Option<u16>,
    addrs: Vec<IpAddr>,
    /// The CTA_TUPLE_ORIG attribute (header included) and CTA_ZONE, as received.
    key: Vec<u8>,
}

impl Entry {
    fn matches(&self, m: &CtMatch) -> bool {
        match m {
            CtMatch::DstPort { proto, port, .. } => {
                self.proto == Some(*proto) && self.orig_dport == Some(*port)
            }
            CtMatch::Address(a) => self.addrs.contains(a),
        }
    }
}

fn ip_of(ty: u16, p: &[u8]) -> Option<IpAddr> {
    match ty {
        CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(p).ok().map(IpAddr::from),
        CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(p).ok().map(IpAddr::from),
        _ => None,
    }
}

fn parse_tuple(t: &[u8], e: &mut Entry, orig: bool) {
    for (ty, p) in attrs(t) {
        match ty {
            CTA_TUPLE_IP => e.addrs.extend(attrs(p).filter_map(|(t, v)| ip_of(t, v))),
            CTA_TUPLE_PROTO if orig => {
                for (pt, pv) in attrs(p) {
                    match (pt, pv) {
                        (CTA_PROTO_NUM, [n]) => e.proto = Some(*n),
                        (CTA_PROTO_DST_PORT, [a, b]) => {
                            e.orig_dport = Some(u16::from_be_bytes([*a, *b]))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// One ctnetlink message body (after the 4-byte nfgenmsg) as an [`Entry`].
fn parse_entry(body: &[u8]) -> Entry {
    let mut e = Entry::default();
    for (ty, p, whole) in attrs_whole(body) {
        match ty {
            CTA_TUPLE_ORIG => {
                parse_tuple(p, &mut e, true);
                e.key.extend_from_slice(whole);
                pad(&mut e.key);
            }
            CTA_TUPLE_REPLY => parse_tuple(p, &mut e, false),
            CTA_ZONE => {
                e.key.extend_from_slice(whole);
                pad(&mut e.key);
            }
            _ => {}
        }
    }
    e
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The attributes of the kernel-side filtered flushes (`IPCTNL_MSG_CT_DELETE` without a full
/// tuple, with `CTA_FILTER`: the kernel walks its table without building a dump, far cheaper
/// than a dump) that together delete what `m` matches: one per tuple position (the
/// kernel ANDs the fields of one filter). A kernel without filtered flushes parses the partial
/// tuple as an exact one and refuses it (EINVAL: no protocol); it never flushes more.
fn flush_filters(m: &CtMatch) -> Vec<Vec<u8>> {
    let one = |dir: u16, flags_ty: u16, flags: u32, tuple: Vec<u8>| {
        [
            attr(dir | NLA_F_NESTED, &tuple),
            attr(
                CTA_FILTER | NLA_F_NESTED,
                &attr(flags_ty, &flags.to_ne_bytes()),
            ),
        ]
        .concat()
    };
    match *m {
        CtMatch::DstPort { proto, port, .. } => {
            let pr = [
                attr(CTA_PROTO_NUM, &[proto]),
                attr(CTA_PROTO_DST_PORT, &port.to_be_bytes()),
            ]
            .concat();
            vec![one(
                CTA_TUPLE_ORIG,
                CTA_FILTER_ORIG_FLAGS,
                CTA_FILTER_F_CTA_PROTO_NUM | CTA_FILTER_F_CTA_PROTO_DST_PORT,
                attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &pr),
            )]
        }
        CtMatch::Address(a) => {
            let (src, dst) = match a {
                IpAddr::V4(_) => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
                IpAddr::V6(_) => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
            };
            let mut out = Vec::new();
            for (dir, flags_ty) in [
                (CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS),
                (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS),
            ] {
                for (ty, flag) in [
                    (src, CTA_FILTER_F_CTA_IP_SRC),
                    (dst, CTA_FILTER_F_CTA_IP_DST),
                ] {
                    let ip = attr(CTA_TUPLE_IP | NLA_F_NESTED, &attr(ty, &ip_bytes(a)));
                    out.push(one(dir, flags_ty, flag, ip));
                }
            }
            out
        }
    }
}

/// A request: nlmsghdr + nfgenmsg(family, v0, res_id 0) + `attrs`.
fn message(kind: u16, flags: u16, seq: u32, v6: bool, attrs: &[u8]) -> Vec<u8> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let mut m = Vec::new();
    nlwire::nfgen_message(
        &mut m,
        (NFNL_SUBSYS_CTNETLINK << 8) | kind,
        flags,
        seq,
        family,
        0,
        attrs,
    );
    m
}

/// A ctnetlink socket whose close is parked with the verb's detacher.
struct Socket<'d>(ManuallyDrop<nlwire::Socket>, &'d Detacher);

impl Drop for Socket<'_> {
    fn drop(&mut self) {
        // A NETLINK_NETFILTER socket: its close waits for nf_tables' pending destroy work (an
        // RCU grace period after a batch that deleted, e.g. portmap's elements just before),
        // so during a DEL the detached process closes it (`netbase::detach`).
        // SAFETY: taken once, here, and `self.0` is not used after.
        let s = unsafe { ManuallyDrop::take(&mut self.0) };
        self.1.park_fd(s.into_fd());
    }
}

fn err(what: &'static str, source: io::Error) -> NetopsError {
    NetopsError::Conntrack { what, source }
}

impl<'d> Socket<'d> {
    fn open(detach: &'d Detacher) -> Result<Self, NetopsError> {
        nlwire::Socket::open(NETLINK_NETFILTER)
            .map(|s| Socket(ManuallyDrop::new(s), detach))
            .map_err(|e| err("open ctnetlink socket", e))
    }

    fn send(&self, m: &[u8]) -> Result<(), NetopsError> {
        self.0.send(m).map_err(|e| err("send to ctnetlink", e))
    }

    /// Read until DONE (dump) or the ACK/error of `seq`; hand bodies (past the nfgenmsg) to
    /// `each`. ENOENT (the entry went meanwhile) is no error.
    fn read(&self, seq: u32, mut each: impl FnMut(&[u8])) -> Result<(), NetopsError> {
        match self
            .0
            .read(seq, false, |_, body| each(body.get(4..).unwrap_or(&[])))
        {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(err("parse ctnetlink answer", e))
            }
            Err(e) => Err(err("ctnetlink request", e)),
            Ok(()) => Ok(()),
        }
    }
}

/// [`flush_filters`] of every match, one acked request each; the first error stops.
fn flush(sock: &Socket<'_>, matches: &[CtMatch]) -> Result<(), NetopsError> {
    let mut seq = 0x1000u32;
    for m in matches {
        for attrs in flush_filters(m) {
            seq += 1;
            sock.send(&message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                m.v6(),
                &attrs,
            ))?;
            sock.read(seq, |_| {})?;
        }
    }
    Ok(())
}

/// This netns tracks no connection: `nf_conntrack_count` is 0, or conntrack is not loaded (no
/// file). A dump walks the kernel's whole hash table, shared by every netns, so an idle
/// namespace skips it. Unreadable or unparsable: not known empty.
fn table_is_empty() -> bool {
    match std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count") {
        Ok(s) => s.trim() == "0",
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Delete every entry of the current netns that matches one of `matches`: with the kernel's
/// filtered flushes (returns 0: the kernel does not count), else (an older kernel) one dump per
/// family and one delete per matching entry (returns how many; entries gone meanwhile count).
/// An idle netns ([`table_is_empty`]) needs neither. The socket's close is parked with `detach`.
pub fn delete(matches: &[CtMatch], detach: &Detacher) -> Result<usize, NetopsError> {
    if matches.is_empty() || table_is_empty() {
        return Ok(0);
    }
    let sock = Socket::open(detach)?;
    match flush(&sock, matches) {
        Ok(()) => return Ok(0),
        Err(NetopsError::Conntrack { source, .. })
            if source.raw_os_error() == Some(libc::EINVAL) =>
        {
            log::debug!("no filtered conntrack flush in this kernel: dump and delete");
        }
        Err(e) => return Err(e),
    }
    let mut seq = 1u32;
    let mut deleted = 0;
    for v6 in [false, true] {
        let fam: Vec<&CtMatch> = matches.iter().filter(|m| m.v6() == v6).collect();
        if fam.is_empty() {
            continue;
        }
        let mut keys = Vec::new();
        sock.send(&message(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            v6,
            &[],
        ))?;
        sock.read(seq, |body| {
            let e = parse_entry(body);
            if !e.key.is_empty() && fam.iter().any(|m| e.matches(m)) {
                keys.push(e.key);
            }
        })?;
        for key in keys {
            seq += 1;
            sock.send(&message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                v6,
                &key,
            ))?;
            sock.read(seq, |_| {})?;
            deleted += 1;
        }
        seq += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        let pr = [
            attr(CTA_PROTO_NUM, &[proto]),
            attr(2, &1234u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        [
            attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &pr),
        ]
        .concat()
    }

    /// A DNAT'd UDP flow: outside 192.0.2.9 -> host 192.0.2.1:5300, answered by pod 10.1.0.5:80.
    fn dnat_entry() -> Vec<u8> {
        let orig = attr(
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &tuple([192, 0, 2, 9], [192, 0, 2, 1], 17, 5300),
        );
        let reply = attr(
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple([10, 1, 0, 5], [192, 0, 2, 9], 17, 1234),
        );
        [orig, reply, attr(3, &[0, 0, 0, 1])].concat()
    }

    #[test]
    fn a_dnat_entry_matches_its_published_port_and_the_pod_address() {
        let e = parse_entry(&dnat_entry());
        assert_eq!(e.proto, Some(17));
        assert_eq!(e.orig_dport, Some(5300));
        let udp = |port| CtMatch::DstPort {
            v6: false,
            proto: 17,
            port,
        };
        assert!(e.matches(&udp(5300)));
        assert!(!e.matches(&udp(5301)));
        assert!(!e.matches(&CtMatch::DstPort {
            v6: false,
            proto: 6,
            port: 5300
        }));
        assert!(e.matches(&CtMatch::Address("10.1.0.5".parse().unwrap())));
        assert!(!e.matches(&CtMatch::Address("10.1.0.6".parse().unwrap())));
    }

    #[test]
    fn the_delete_key_is_the_original_tuple_as_received() {
        let body = dnat_entry();
        let e = parse_entry(&body);
        let orig_len = usize::from(u16::from_ne_bytes([body[0], body[1]]));
        assert_eq!(e.key, body[..orig_len]);
        let m = message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            false,
            &e.key,
        );
        assert_eq!(m.len(), 20 + e.key.len());
        assert_eq!(
            u16::from_ne_bytes([m[4], m[5]]),
            0x0102,
            "ctnetlink << 8 | DELETE"
        );
        assert_eq!(m[16], libc::AF_INET as u8);
    }

    #[test]
    fn truncated_attributes_stop_parsing_without_panic() {
        let body = dnat_entry();
        for n in 0..body.len() {
            let _ = parse_entry(&body[..n]);
        }
    }

    #[test]
    fn flush_filters_name_one_tuple_position_each() {
        let u16_at = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let a = CtMatch::Address("10.1.2.3".parse().unwrap());
        let f = flush_filters(&a);
        assert_eq!(f.len(), 4, "orig src, orig dst, reply src, reply dst");
        // CTA_TUPLE_ORIG { CTA_TUPLE_IP { CTA_IP_V4_SRC 10.1.2.3 } } CTA_FILTER { ORIG_FLAGS 1 }
        assert_eq!(
            f[0],
            [
                attr(
                    CTA_TUPLE_ORIG | NLA_F_NESTED,
                    &attr(
                        CTA_TUPLE_IP | NLA_F_NESTED,
                        &attr(CTA_IP_V4_SRC, &[10, 1, 2, 3])
                    )
                ),
                attr(
                    CTA_FILTER | NLA_F_NESTED,
                    &attr(CTA_FILTER_ORIG_FLAGS, &1u32.to_ne_bytes())
                ),
            ]
            .concat()
        );
        assert_eq!(u16_at(&f[3], 2), CTA_TUPLE_REPLY | NLA_F_NESTED);
        let reply_flags = &f[3][f[3].len() - 8..];
        assert_eq!(u16_at(reply_flags, 2), CTA_FILTER_REPLY_FLAGS);
        assert_eq!(
            &reply_flags[4..],
            &2u32.to_ne_bytes(),
            "CTA_FILTER_F_CTA_IP_DST"
        );
        let v6 = flush_filters(&CtMatch::Address("fd00::5".parse().unwrap()));
        assert_eq!(u16_at(&v6[1], 10), CTA_IP_V6_DST);

        let p = flush_filters(&CtMatch::DstPort {
            v6: false,
            proto: 17,
            port: 5309,
        });
        assert_eq!(
            p,
            vec![[
                attr(
                    CTA_TUPLE_ORIG | NLA_F_NESTED,
                    &attr(
                        CTA_TUPLE_PROTO | NLA_F_NESTED,
                        &[
                            attr(CTA_PROTO_NUM, &[17]),
                            attr(CTA_PROTO_DST_PORT, &5309u16.to_be_bytes())
                        ]
                        .concat()
                    )
                ),
                attr(
                    CTA_FILTER | NLA_F_NESTED,
                    &attr(CTA_FILTER_ORIG_FLAGS, &(8u32 | 32).to_ne_bytes())
                ),
            ]
            .concat()]
        );
    }
}
