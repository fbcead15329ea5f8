//! Element batches over nfnetlink, in-process: what `nft -f` would send for the scripts the
//! hot path produces (`add`/`delete element` of our sets and maps, and `get element` for
//! CHECK), without starting an `nft` process (~2 ms each on this machine).
//!
//! [`parse`] recognises exactly the lines [`crate::Batch`] renders for those sets; anything else
//! (the skeleton, foreign text) answers `None` and the caller runs `nft -f` as before. Keys and
//! data are encoded as nf_tables stores them: each field of a concatenation padded to 4 bytes,
//! `ifname` as 16 bytes, ports big-endian.
//!
//! Interval sets are encoded as nft 1.0.6 encodes them (captured with `nft --debug=netlink,mnl`
//! on kernel 6.18):
//! - `masq4`/`masq6` (one address field, the kernel's rbtree): a subnet is a start element
//!   (key = network address) and an end element (key = last address + 1, flag
//!   `NFT_SET_ELEM_INTERVAL_END`; none when that overflows, e.g. `0.0.0.0/0`). `add` also sends
//!   the end element at address 0 that nft adds to every set whose first interval does not start
//!   at 0 (nft skips it when its cache shows it is there; the kernel keeps one either way).
//! - `br_net4`/`br_net6` (`ifname . addr`, the kernel's pipapo): one element with
//!   `NFTA_SET_ELEM_KEY` (bridge . network address) and `NFTA_SET_ELEM_KEY_END` (bridge . last
//!   address, inclusive).
//!
//! `get` is exact where nft's is not: [`crate::Batch::get`] asks nft for the interval holding
//! the network address (nft 1.0.6 fails a `get` of a subnet with an adjacent one beside it) and
//! names the subnet in a trailing comment. Here a pipapo `get` of the start key must answer the
//! subnet's own key and key end. The rbtree's `get` is no help: asked for an end element whose
//! key is also an adjacent interval's start, kernel 6.18 may answer the next interval's end
//! (three adjacent /24s show it), so an rbtree set is dumped (one request, a few elements per
//! network) and must hold the start element, the end element and nothing between them.

use std::{io, net::IpAddr};

use ipnetwork::IpNetwork;
use netlink_sys::Socket;

use crate::nfnl::{
    attr, attrs, cstr, put_attr, split, NFNL_SUBSYS_NFTABLES, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLA_F_NESTED: u16 = 0x8000;
const IFNAMSIZ: usize = 16;
/// `NFTA_SET_ELEM_*` attribute types.
const ELEM_KEY: u16 = 1;
const ELEM_DATA: u16 = 2;
const ELEM_FLAGS: u16 = 3;
const ELEM_KEY_END: u16 = 10;
/// `NFTA_DATA_VALUE`.
const DATA_VALUE: u16 = 1;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub const INTERVAL_END: u32 = 1;

/// What a line asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `add element` (no error when present with the same value).
    Add,
    /// `delete element` (ENOENT when missing).
    Delete,
    /// `get element` (ENOENT when missing).
    Get,
}

/// One set element as nf_tables sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElem {
    /// `NFTA_SET_ELEM_KEY`.
    pub key: Vec<u8>,
    /// `NFTA_SET_ELEM_KEY_END` (concatenated intervals: the last key, inclusive).
    pub key_end: Option<Vec<u8>>,
    /// `NFTA_SET_ELEM_FLAGS` ([`INTERVAL_END`] for the end element of an rbtree interval).
    pub flags: u32,
    /// `NFTA_SET_ELEM_DATA` (maps).
    pub data: Option<Vec<u8>>,
}

impl SetElem {
    fn key(key: Vec<u8>) -> SetElem {
        SetElem {
            key,
            key_end: None,
            flags: 0,
            data: None,
        }
    }
}

/// One element operation (one line of the script), encoded: one message of `elems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub verb: Verb,
    /// `NFPROTO_INET` or `NFPROTO_BRIDGE`.
    pub family: u8,
    pub set: String,
    /// What the message carries (`get`: what must be there, see [`apply`]).
    pub elems: Vec<SetElem>,
}

#[derive(Clone, Copy)]
enum Field {
    Ifname,
    Ether,
    V4,
    V6,
    Proto,
    Service,
}

/// How the elements of one of our sets are keyed.
enum Layout {
    /// (key fields, data fields) of a set or map without intervals.
    Plain(&'static [Field], &'static [Field]),
    /// `flags interval` on one address (`V4`/`V6`): rbtree, start and end elements.
    Range(Field),
    /// `flags interval` on `ifname . address`: pipapo, key and key end in one element.
    IfnameRange(Field),
}

fn layout(family: u8, set: &str) -> Option<Layout> {
    use Field::*;
    const INET: u8 = crate::nfnl::NFPROTO_INET;
    const BRIDGE: u8 = crate::nfnl::NFPROTO_BRIDGE;
    Some(match (family, set) {
        (INET, "managed_br" | "internal_br" | "isolated_br") => Layout::Plain(&[Ifname], &[]),
        (INET, "same_br") => Layout::Plain(&[Ifname, Ifname], &[]),
        (INET, "pm4") => Layout::Plain(&[V4, Proto, Service], &[V4, Service]),
        (INET, "pm4_any") => Layout::Plain(&[Proto, Service], &[V4, Service]),
        (INET, "pm6") => Layout::Plain(&[V6, Proto, Service], &[V6, Service]),
        (INET, "pm6_any") => Layout::Plain(&[Proto, Service], &[V6, Service]),
        (INET, "vtep_ports") => Layout::Plain(&[Service], &[]),
        (INET, "vtep4") => Layout::Plain(&[V4], &[]),
        (INET, "vtep6") => Layout::Plain(&[V6], &[]),
        (INET, "masq4") => Layout::Range(V4),
        (INET, "masq6") => Layout::Range(V6),
        (INET, "br_net4") => Layout::IfnameRange(V4),
        (INET, "br_net6") => Layout::IfnameRange(V6),
        (BRIDGE, "spoof_ports") => Layout::Plain(&[Ifname], &[]),
        (BRIDGE, "spoof_ok") => Layout::Plain(&[Ifname, Ether], &[]),
        _ => return None,
    })
}

fn ifname(p: &str, out: &mut Vec<u8>) -> Option<()> {
    let name = p.strip_prefix('"')?.strip_suffix('"')?;
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['"', '\0']) {
        return None;
    }
    let start = out.len();
    out.extend_from_slice(name.as_bytes());
    out.resize(start + IFNAMSIZ, 0);
    Some(())
}

/// Encode `a . b . c` with `fields`; a lone field is not padded (nf_tables' key length is the
/// type's own length then), a concatenation pads each to 4 bytes.
fn encode(text: &str, fields: &[Field]) -> Option<Vec<u8>> {
    let parts: Vec<&str> = text.split(" . ").map(str::trim).collect();
    if parts.len() != fields.len() {
        return None;
    }
    let mut out = Vec::new();
    for (p, f) in parts.iter().zip(fields) {
        match f {
            Field::Ifname => ifname(p, &mut out)?,
            Field::Ether => {
                let bytes: Vec<u8> = p
                    .split(':')
                    .map(|h| {
                        (h.len() == 2)
                            .then(|| u8::from_str_radix(h, 16).ok())
                            .flatten()
                    })
                    .collect::<Option<_>>()?;
                if bytes.len() != 6 {
                    return None;
                }
                out.extend_from_slice(&bytes);
            }
            Field::V4 => match p.parse::<IpAddr>().ok()? {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(_) => return None,
            },
            Field::V6 => match p.parse::<IpAddr>().ok()? {
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V4(_) => return None,
            },
            Field::Proto => out.push(match *p {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                _ => return None,
            }),
            Field::Service => out.extend_from_slice(&p.parse::<u16>().ok()?.to_be_bytes()),
        }
        if fields.len() > 1 {
            out.resize((out.len() + 3) & !3, 0);
        }
    }
    Some(out)
}

/// A subnet of family `field` (network address only, no host bits) as (network address, last
/// address, last + 1 unless that overflows), big-endian bytes.
type Bounds = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn bounds(text: &str, field: Field) -> Option<Bounds> {
    let net: IpNetwork = text.parse().ok()?;
    if net.ip() != net.network() || !text.contains('/') {
        return None;
    }
    match (net, field) {
        (IpNetwork::V4(n), Field::V4) => {
            let start = u32::from(n.network());
            let mask = u32::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
            let last = start | mask;
            Some((
                start.to_be_bytes().to_vec(),
                last.to_be_bytes().to_vec(),
                last.checked_add(1).map(|e| e.to_be_bytes().to_vec()),
            ))
        }
        (IpNetwork::V6(n), Field::V6) => {
            let start = u128::from(n.network());
            let mask = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
            let last = start | mask;
            Some((
                start.to_be_bytes().to_vec(),
                last.to_be_bytes().to_vec(),
                last.checked_add(1).map(|e| e.to_be_bytes().to_vec()),
            ))
        }
        _ => None,
    }
}

/// The elements of one interval-set line: `text` is the subnet (`masq4`) or `"br" . subnet`
/// (`br_net4`).
fn interval_elems(verb: Verb, layout: &Layout, text: &str) -> Option<Vec<SetElem>> {
    match *layout {
        Layout::Range(field) => {
            let (start, _, end) = bounds(text.trim(), field)?;
            let mut v = Vec::new();
            if verb == Verb::Add && start.iter().any(|b| *b != 0) {
                v.push(SetElem {
                    flags: INTERVAL_END,
                    ..SetElem::key(vec![0; start.len()])
                });
            }
            v.push(SetElem::key(start));
            if let Some(end) = end {
                v.push(SetElem {
                    flags: INTERVAL_END,
                    ..SetElem::key(end)
                });
            }
            Some(v)
        }
        Layout::IfnameRange(field) => {
            let (name, subnet) = text.split_once(" . ")?;
            let (start, last, _) = bounds(subnet.trim(), field)?;
            let mut key = Vec::new();
            ifname(name.trim(), &mut key)?;
            let mut key_end = key.clone();
            key.extend_from_slice(&start);
            key_end.extend_from_slice(&last);
            Some(vec![SetElem {
                key_end: Some(key_end),
                ..SetElem::key(key)
            }])
        }
        Layout::Plain(..) => None,
    }
}

/// Marker of the comment [`crate::Batch::get`] appends to the `get` of an interval: the subnet
/// itself, which nft's `get` of the network address cannot name.
pub(crate) const INTERVAL_COMMENT: &str = " # interval ";

fn parse_line(line: &str) -> Option<Op> {
    let (verb, rest) = if let Some(r) = line.strip_prefix("add element ") {
        (Verb::Add, r)
    } else if let Some(r) = line.strip_prefix("delete element ") {
        (Verb::Delete, r)
    } else if let Some(r) = line.strip_prefix("get element ") {
        (Verb::Get, r)
    } else {
        return None;
    };
    let (rest, comment) = match rest.split_once(INTERVAL_COMMENT) {
        Some((r, c)) if verb == Verb::Get => (r, Some(c)),
        Some(_) => return None,
        None => (rest, None),
    };
    let (head, body) = rest.split_once(" { ")?;
    let body = body.strip_suffix(" }")?;
    let mut h = head.split(' ');
    let family = match h.next()? {
        "inet" => crate::nfnl::NFPROTO_INET,
        "bridge" => crate::nfnl::NFPROTO_BRIDGE,
        _ => return None,
    };
    if h.next()? != "cnirs" {
        return None;
    }
    let set = h.next()?;
    if h.next().is_some() || body.contains(',') {
        return None;
    }
    let layout = layout(family, set)?;
    let elems = match &layout {
        Layout::Plain(key_fields, data_fields) => {
            if comment.is_some() {
                return None;
            }
            let (key_text, data_text) = match body.split_once(" : ") {
                Some((k, d)) => (k, Some(d)),
                None => (body, None),
            };
            let data = match (verb, data_text, data_fields.is_empty()) {
                (Verb::Add, Some(d), false) => Some(encode(d, data_fields)?),
                (Verb::Add, None, true) | (Verb::Delete | Verb::Get, None, _) => None,
                _ => return None,
            };
            vec![SetElem {
                data,
                ..SetElem::key(encode(key_text, key_fields)?)
            }]
        }
        Layout::Range(_) | Layout::IfnameRange(_) => {
            let text = match (verb, comment) {
                (Verb::Get, Some(c)) => {
                    // The nft text asks for the network address; the comment names the subnet.
                    let (addr, prefix) = c.rsplit_once('/')?;
                    if addr != body || prefix.parse::<u8>().is_err() {
                        return None;
                    }
                    c
                }
                _ => body,
            };
            interval_elems(verb, &layout, text)?
        }
    };
    Some(Op {
        verb,
        family,
        set: set.to_owned(),
        elems,
    })
}

/// The script as element operations, or `None` when any line is something else (then `nft -f`
/// runs it). A script mixing `get` with changes is left to nft too.
pub fn parse(script: &str) -> Option<Vec<Op>> {
    let ops: Vec<Op> = script
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect::<Option<_>>()?;
    let gets = ops.iter().filter(|o| o.verb == Verb::Get).count();
    (!ops.is_empty() && (gets == 0 || gets == ops.len())).then_some(ops)
}

fn msg(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// One `NFTA_LIST_ELEM` body, attributes in libnftnl's order (flags, key, key end, data).
/// A `get` sends the key and flags only: the kernel looks the element up by its key.
fn elem_body(e: &SetElem, get: bool) -> Vec<u8> {
    let value = |bytes: &[u8]| {
        let mut v = Vec::new();
        put_attr(&mut v, DATA_VALUE, bytes);
        v
    };
    let mut elem = Vec::new();
    if e.flags != 0 {
        put_attr(&mut elem, ELEM_FLAGS, &e.flags.to_be_bytes());
    }
    put_attr(&mut elem, ELEM_KEY | NLA_F_NESTED, &value(&e.key));
    if get {
        return elem;
    }
    if let Some(k) = &e.key_end {
        put_attr(&mut elem, ELEM_KEY_END | NLA_F_NESTED, &value(k));
    }
    if let Some(d) = &e.data {
        put_attr(&mut elem, ELEM_DATA | NLA_F_NESTED, &value(d));
    }
    elem
}

/// `NFTA_SET_ELEM_LIST_*` attributes (table, set, elements) of `elems` of `op`'s set; each
/// element nested under its index + 1, as libnftnl numbers them.
fn elem_attrs(op: &Op, elems: &[SetElem], get: bool) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr(&mut a, 1, &cstr("cnirs")); // NFTA_SET_ELEM_LIST_TABLE
    put_attr(&mut a, 2, &cstr(&op.set)); // NFTA_SET_ELEM_LIST_SET
    let mut list = Vec::new();
    for (i, e) in elems.iter().enumerate() {
        put_attr(&mut list, (i as u16 + 1) | NLA_F_NESTED, &elem_body(e, get));
    }
    put_attr(&mut a, 3 | NLA_F_NESTED, &list); // NFTA_SET_ELEM_LIST_ELEMENTS
    a
}

/// The `GETSETELEM` request for `elem` of `op` (acked), sequence `seq`.
pub fn encode_get(op: &Op, elem: &SetElem, seq: u32) -> Vec<u8> {
    let mut m = Vec::new();
    let attrs = elem_attrs(op, std::slice::from_ref(elem), true);
    msg(
        &mut m,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        op.family,
        0,
        &attrs,
    );
    m
}

/// The elements of a `NEWSETELEM` message (the payload after the netlink header).
pub fn message_elems(payload: &[u8]) -> Vec<SetElem> {
    let Some(list) = payload.get(4..).and_then(|a| attr(a, 3)) else {
        return Vec::new(); // NFTA_SET_ELEM_LIST_ELEMENTS
    };
    attrs(list)
        .filter_map(|(_, body)| {
            let value = |ty| {
                attr(body, ty)
                    .and_then(|n| attr(n, DATA_VALUE))
                    .map(<[u8]>::to_vec)
            };
            Some(SetElem {
                key: value(ELEM_KEY)?,
                key_end: value(ELEM_KEY_END),
                flags: attr(body, ELEM_FLAGS)
                    .and_then(|f| Some(u32::from_be_bytes(f.get(..4)?.try_into().ok()?)))
                    .unwrap_or(0),
                data: value(ELEM_DATA),
            })
        })
        .collect()
}

/// Is `found` (what the kernel answered) the element asked for, exactly? Its key, the
/// interval-end flag and (concatenated intervals) the key end must be ours: pipapo answers a
/// start key with the element whose range holds it.
pub fn is_exact(asked: &SetElem, found: &SetElem) -> bool {
    found.key == asked.key
        && (found.flags & INTERVAL_END) == (asked.flags & INTERVAL_END)
        && asked
            .key_end
            .as_ref()
            .is_none_or(|k| found.key_end.as_ref() == Some(k))
}

/// The bytes of one transaction: BATCH_BEGIN, one message per op (each acked), BATCH_END.
/// Sequence numbers are `base`, `base+1..=base+n`, `base+n+1`.
pub fn encode_batch(ops: &[Op], base: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let subsys = NFNL_SUBSYS_NFTABLES;
    msg(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        base,
        0,
        subsys,
        &[],
    );
    for (i, op) in ops.iter().enumerate() {
        let (ty, flags) = match op.verb {
            Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Verb::Delete | Verb::Get => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let seq = base.wrapping_add(1 + i as u32);
        msg(
            &mut out,
            (subsys << 8) | ty,
            flags,
            seq,
            op.family,
            0,
            &elem_attrs(op, &op.elems, false),
        );
    }
    let end = base.wrapping_add(1 + ops.len() as u32);
    msg(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        0,
        subsys,
        &[],
    );
    out
}

/// (type, seq, first 4 bytes of payload as an errno answer, payload) of each message in a
/// datagram.
fn answers(buf: &[u8]) -> Vec<(u16, u32, Option<i32>, &[u8])> {
    split(buf)
        .into_iter()
        .map(|(ty, seq, payload)| {
            let code = match payload {
                [a, b, c, d, ..] if ty == NLMSG_ERROR => Some(i32::from_ne_bytes([*a, *b, *c, *d])),
                _ => None,
            };
            (ty, seq, code, payload)
        })
        .collect()
}

/// The elements of every `NEWSETELEM` message answering `seq`, until its ack (`get`) or
/// `NLMSG_DONE` (dump); a netlink error answer is returned as the error.
fn collect(sock: &Socket, seq: u32, buf: &mut Vec<u8>) -> io::Result<Vec<SetElem>> {
    let mut out = Vec::new();
    loop {
        buf.clear();
        sock.recv(buf, 0)?;
        for (ty, s, code, payload) in answers(buf) {
            if s != seq {
                continue;
            }
            match code {
                Some(0) => return Ok(out),
                Some(c) => return Err(io::Error::from_raw_os_error(-c)),
                None if ty == NLMSG_DONE => return Ok(out),
                None if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => {
                    out.extend(message_elems(payload));
                }
                None => {}
            }
        }
    }
}

/// Every element of `op`'s set (`GETSETELEM` dump).
fn dump(sock: &Socket, op: &Op, seq: u32, buf: &mut Vec<u8>) -> io::Result<Vec<SetElem>> {
    let mut m = Vec::new();
    let mut attrs = Vec::new();
    put_attr(&mut attrs, 1, &cstr("cnirs")); // NFTA_SET_ELEM_LIST_TABLE
    put_attr(&mut attrs, 2, &cstr(&op.set)); // NFTA_SET_ELEM_LIST_SET
    msg(
        &mut m,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        op.family,
        0,
        &attrs,
    );
    sock.send(&m, 0)?;
    collect(sock, seq, buf)
}

/// Does a dump of an rbtree set hold exactly the interval `asked` describes (its start element,
/// its end element unless the interval runs to the top of the address space) with no element
/// between them (which would make it two intervals, or part of another)?
pub fn holds_interval(dump: &[SetElem], asked: &[SetElem]) -> bool {
    let is_end = |e: &SetElem| e.flags & INTERVAL_END != 0;
    let Some(start) = asked.iter().find(|e| !is_end(e)) else {
        return false;
    };
    let end = asked.iter().find(|e| is_end(e)).map(|e| e.key.as_slice());
    let has = |key: &[u8], end_flag: bool| {
        dump.iter()
            .any(|e| e.key.as_slice() == key && is_end(e) == end_flag)
    };
    let inside = |e: &SetElem| {
        e.key.as_slice() > start.key.as_slice() && end.is_none_or(|k| e.key.as_slice() < k)
    };
    has(&start.key, false) && end.is_none_or(|k| has(k, true)) && !dump.iter().any(inside)
}

/// Run `ops` in this thread's network namespace: changes as one transaction (all or nothing,
/// like `nft -f`), gets one request each. The first error wins.
pub fn apply(ops: &[Op]) -> io::Result<()> {
    // Closed by `netbase::detach` (after the verb answered): see `NfSocket`.
    let sock = crate::nfnl::NfSocket::open()?;
    let mut buf = Vec::with_capacity(1 << 16);
    if ops.iter().all(|o| o.verb == Verb::Get) {
        let mut seq = 0u32;
        let mut dumps: Vec<(u8, &str, Vec<SetElem>)> = Vec::new();
        for op in ops {
            if matches!(layout(op.family, &op.set), Some(Layout::Range(_))) {
                let at = match dumps
                    .iter()
                    .position(|(f, s, _)| *f == op.family && *s == op.set)
                {
                    Some(at) => at,
                    None => {
                        seq += 1;
                        let all = dump(&sock, op, seq, &mut buf)?;
                        dumps.push((op.family, &op.set, all));
                        dumps.len() - 1
                    }
                };
                if !holds_interval(&dumps[at].2, &op.elems) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                continue;
            }
            for elem in &op.elems {
                seq += 1;
                sock.send(&encode_get(op, elem, seq), 0)?;
                let found = collect(&sock, seq, &mut buf)?;
                if !found.first().is_some_and(|f| is_exact(elem, f)) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
            }
        }
        return Ok(());
    }
    let base = 1;
    sock.send(&encode_batch(ops, base), 0)?;
    // One answer per acked message; a failed commit answers the BATCH_BEGIN's seq first.
    let mut pending = ops.len();
    let mut first_err = None;
    while pending > 0 {
        buf.clear();
        sock.recv(&mut buf, 0)?;
        for (_, seq, code, _) in answers(&buf) {
            let Some(code) = code else { continue };
            if seq != base {
                pending = pending.saturating_sub(1);
            }
            if code != 0 && first_err.is_none() {
                first_err = Some(io::Error::from_raw_os_error(-code));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, Elem, IfName, PortMapping, Protocol};

    fn port(host: Option<&str>, c: &str) -> Elem {
        Elem::Port {
            mapping: PortMapping {
                host_ip: host.map(|h| h.parse().unwrap()),
                host_port: 8080,
                protocol: Protocol::Tcp,
                container_ip: c.parse().unwrap(),
                container_port: 80,
            },
        }
    }

    /// Bytes from whitespace-separated hex pairs (as `nft --debug=mnl` prints them).
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    /// `NFTA_SET_ELEM_LIST_ELEMENTS` of the message `op` turns into.
    fn elements(op: &Op, get: bool) -> Vec<u8> {
        let a = elem_attrs(op, &op.elems, get);
        attr(&a, 3).unwrap().to_vec()
    }

    fn one(line: &str) -> Op {
        let mut ops = parse(line).expect(line);
        assert_eq!(ops.len(), 1);
        ops.remove(0)
    }

    #[test]
    fn per_pod_batches_are_encoded_and_others_left_to_nft() {
        let br = IfName::new("cnirs-a").unwrap();
        let mut b = Batch::new();
        b.add(&[port(Some("10.0.0.5"), "10.1.0.2"), port(None, "fd00::2")])
            .remove(&[Elem::SameBr { bridge: br.clone() }]);
        let ops = parse(b.text()).expect("all per-pod elements");
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].set, "pm4");
        assert_eq!(
            ops[0].elems[0].key,
            [10, 0, 0, 5, 6, 0, 0, 0, 0x1f, 0x90, 0, 0],
            "addr . proto . port, each padded to 4"
        );
        assert_eq!(
            ops[0].elems[0].data.as_deref(),
            Some(&[10, 1, 0, 2, 0, 80, 0, 0][..])
        );
        assert_eq!(ops[1].set, "pm6_any");
        assert_eq!(ops[1].elems[0].data.as_ref().unwrap().len(), 20);
        assert_eq!((ops[2].verb, ops[3].verb), (Verb::Add, Verb::Delete));
        assert_eq!(ops[3].elems[0].key.len(), 32);
        assert_eq!(&ops[3].elems[0].key[..8], b"cnirs-a\0");
        // A MAC spoof pair in the bridge table.
        let mut s = Batch::new();
        s.add(&Elem::spoof_check(&br, "02:00:00:00:00:0a").unwrap());
        let ops = parse(s.text()).unwrap();
        assert_eq!(ops[0].elems[0].key.len(), 16);
        assert_eq!(ops[1].elems[0].key[16..], [2, 0, 0, 0, 0, 0x0a, 0, 0]);
        // The skeleton, mixed get/change scripts and foreign text go to nft.
        assert!(parse(crate::SKELETON).is_none());
        let mut g = Batch::new();
        g.get(&[port(None, "10.1.0.2")])
            .add(&[port(None, "10.1.0.2")]);
        assert!(parse(g.text()).is_none());
        assert!(parse("").is_none());
        assert!(parse("add element inet cnirs masq4 { 10.0.0.0/24, 10.0.1.0/24 }").is_none());
        assert!(parse("add element inet other masq4 { 10.0.0.0/24 }").is_none());
    }

    #[test]
    fn a_batch_is_framed_with_begin_and_end() {
        let ops = parse("delete element inet cnirs managed_br { \"br0\" }\n").unwrap();
        let bytes = encode_batch(&ops, 7);
        let a = answers(&bytes);
        assert_eq!(
            a.iter().map(|(t, s, _, _)| (*t, *s)).collect::<Vec<_>>(),
            [
                (NFNL_MSG_BATCH_BEGIN, 7),
                ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM, 8),
                (NFNL_MSG_BATCH_END, 9)
            ]
        );
    }

    // Golden bytes: the NFTA_SET_ELEM_LIST_ELEMENTS attribute nft 1.0.6 sent for the same
    // command (`nft --debug=netlink,mnl -f`, kernel 6.18, x86_64: lengths and types are
    // little-endian, keys big-endian).

    #[test]
    fn rbtree_add_is_zero_end_start_and_end_as_nft_sends() {
        let mut b = Batch::new();
        b.add(&[Elem::masq("10.0.0.0/24".parse().unwrap())]);
        assert_eq!(b.text(), "add element inet cnirs masq4 { 10.0.0.0/24 }\n");
        let op = one(b.text());
        assert_eq!(
            elements(&op, false),
            hex(
                "18 00 01 80  08 00 03 00 00 00 00 01  0c 00 01 80 08 00 01 00 00 00 00 00
                 10 00 02 80  0c 00 01 80 08 00 01 00 0a 00 00 00
                 18 00 03 80  08 00 03 00 00 00 00 01  0c 00 01 80 08 00 01 00 0a 00 01 00"
            )
        );
    }

    #[test]
    fn rbtree_delete_is_start_and_end_as_nft_sends() {
        let op = one("delete element inet cnirs masq4 { 10.0.0.0/24 }");
        assert_eq!(
            elements(&op, false),
            hex("10 00 01 80  0c 00 01 80 08 00 01 00 0a 00 00 00
                 18 00 02 80  08 00 03 00 00 00 00 01  0c 00 01 80 08 00 01 00 0a 00 01 00")
        );
    }

    #[test]
    fn rbtree_v6_and_edges() {
        // fd00::/64: zero end (16 bytes), start, end at fd00:0:0:1::.
        let op = one("add element inet cnirs masq6 { fd00::/64 }");
        assert_eq!(op.elems.len(), 3);
        assert_eq!(op.elems[0].key, [0; 16]);
        assert_eq!(op.elems[0].flags, INTERVAL_END);
        assert_eq!(
            op.elems[1].key,
            hex("fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")
        );
        assert_eq!(
            op.elems[2].key,
            hex("fd 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00")
        );
        assert_eq!(op.elems[2].flags, INTERVAL_END);
        // The whole space: one start element at 0, no zero end, no end (it would overflow).
        for (line, len) in [
            ("add element inet cnirs masq4 { 0.0.0.0/0 }", 4),
            ("delete element inet cnirs masq6 { ::/0 }", 16),
        ] {
            let op = one(line);
            assert_eq!(op.elems, [SetElem::key(vec![0; len])], "{line}");
        }
        // The top of the space: start, no end.
        let op = one("delete element inet cnirs masq4 { 255.255.255.0/24 }");
        assert_eq!(op.elems, [SetElem::key(vec![255, 255, 255, 0])]);
        let op = one("delete element inet cnirs masq4 { 10.0.0.7/32 }");
        assert_eq!(op.elems[1].key, [10, 0, 0, 8]);
        // Host bits, a bare address, the wrong family: nft's business.
        for bad in [
            "add element inet cnirs masq4 { 10.0.0.1/24 }",
            "add element inet cnirs masq4 { 10.0.0.1 }",
            "add element inet cnirs masq4 { fd00::/64 }",
            "add element inet cnirs masq6 { 10.0.0.0/8 }",
            "add element inet cnirs br_net4 { \"br\" . fd00::/64 }",
            "add element inet cnirs br_net4 { 10.0.0.0/8 }",
            "delete element inet cnirs masq4 { 10.0.0.0/24 } # interval 10.0.0.0/24",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn pipapo_add_and_delete_are_one_element_with_key_end_as_nft_sends() {
        let e = Elem::BrNet {
            bridge: IfName::new("cnirs-a").unwrap(),
            subnet: "10.0.0.0/24".parse().unwrap(),
        };
        let want = hex(
            "3c 00 01 80
               1c 00 01 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 00 00
               1c 00 0a 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 00 ff",
        );
        let mut b = Batch::new();
        b.add(std::slice::from_ref(&e))
            .delete(std::slice::from_ref(&e));
        let ops = parse(b.text()).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(elements(&ops[0], false), want);
        assert_eq!(elements(&ops[1], false), want);
        assert_eq!(ops[1].verb, Verb::Delete);
        let v6 = one("add element inet cnirs br_net6 { \"b\" . fd00:213::/64 }");
        let end = v6.elems[0].key_end.as_ref().unwrap();
        assert_eq!(end.len(), 32);
        assert_eq!(end[16..24], hex("fd 00 02 13 00 00 00 00"));
        assert_eq!(end[24..], [0xff; 8]);
    }

    #[test]
    fn interval_gets_name_the_subnet_and_ask_like_nft() {
        let br = IfName::new("cnirs-a").unwrap();
        let mut b = Batch::new();
        b.get(&[
            Elem::masq("10.0.1.0/24".parse().unwrap()),
            Elem::BrNet {
                bridge: br,
                subnet: "10.0.1.0/24".parse().unwrap(),
            },
        ]);
        assert_eq!(
            b.text(),
            "get element inet cnirs masq4 { 10.0.1.0 } # interval 10.0.1.0/24\n\
             get element inet cnirs br_net4 { \"cnirs-a\" . 10.0.1.0 } # interval \"cnirs-a\" . 10.0.1.0/24\n"
        );
        let ops = parse(b.text()).unwrap();
        // rbtree: what the set's dump must hold, the start and the end element.
        let start = SetElem::key(vec![10, 0, 1, 0]);
        let end = SetElem {
            flags: INTERVAL_END,
            ..SetElem::key(vec![10, 0, 2, 0])
        };
        assert_eq!(ops[0].elems, [start.clone(), end.clone()]);
        assert_eq!(
            one("get element inet cnirs masq4 { 0.0.0.0 } # interval 0.0.0.0/0").elems,
            [SetElem::key(vec![0; 4])]
        );
        // pipapo: the key only, as nft asks; the answer's key end is checked here.
        assert_eq!(
            elements(&ops[1], true),
            hex("20 00 01 80
                   1c 00 01 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 01 00")
        );
        let full = &ops[1].elems[0];
        assert!(is_exact(full, full));
        let wider = SetElem {
            key_end: Some(hex(
                "63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 01 7f",
            )),
            ..full.clone()
        };
        assert!(!is_exact(full, &wider), "another range is no match");
        let end_as_start = SetElem {
            flags: 0,
            ..end.clone()
        };
        assert!(!is_exact(&end, &end_as_start));
        // rbtree dumps: ours alone, between adjacent neighbours, and what is not ours.
        let e = |k: [u8; 4], end: bool| SetElem {
            flags: if end { INTERVAL_END } else { 0 },
            ..SetElem::key(k.to_vec())
        };
        let asked = &ops[0].elems;
        let zero = e([0; 4], true);
        assert!(holds_interval(
            &[zero.clone(), start.clone(), end.clone()],
            asked
        ));
        let adjacent = [
            zero.clone(),
            e([10, 0, 0, 0], false),
            e([10, 0, 1, 0], true),
            start.clone(),
            end.clone(),
            e([10, 0, 2, 0], false),
            e([10, 0, 3, 0], true),
        ];
        assert!(holds_interval(&adjacent, asked));
        for (what, dump) in [
            ("empty", vec![]),
            ("no end", vec![zero.clone(), start.clone()]),
            ("no start", vec![zero.clone(), end.clone()]),
            (
                "ends flipped",
                vec![e([10, 0, 1, 0], true), e([10, 0, 2, 0], false)],
            ),
            (
                "two halves",
                vec![
                    start.clone(),
                    e([10, 0, 1, 128], true),
                    e([10, 0, 1, 128], false),
                    end.clone(),
                ],
            ),
            (
                "inside a wider one",
                vec![e([10, 0, 0, 0], false), e([10, 0, 4, 0], true)],
            ),
            (
                "a wider one from our start",
                vec![start.clone(), e([10, 0, 4, 0], true)],
            ),
        ] {
            assert!(!holds_interval(&dump, asked), "{what}");
        }
        // To the top of the space: no end element, nothing after the start.
        let top = one("get element inet cnirs masq4 { 255.255.255.0 } # interval 255.255.255.0/24");
        assert!(holds_interval(
            &[zero, e([255, 255, 255, 0], false)],
            &top.elems
        ));
        assert!(!holds_interval(
            &[e([255, 255, 255, 0], false), e([255, 255, 255, 128], true)],
            &top.elems
        ));
        // A subnet asked as such (`cnirs reconcile` does) is read the same way.
        assert_eq!(one("get element inet cnirs masq4 { 10.0.1.0/24 }"), ops[0]);
        // The comment must agree with the key nft is asked; a bare address is nft's business.
        for bad in [
            "get element inet cnirs masq4 { 10.0.1.0 }",
            "get element inet cnirs br_net4 { \"b\" . 10.0.1.0 }",
            "get element inet cnirs masq4 { 10.0.2.0 } # interval 10.0.1.0/24",
            "get element inet cnirs masq4 { 10.0.1.0 } # interval 10.0.1.0",
            "get element inet cnirs managed_br { \"b\" } # interval \"b\"/1",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn answers_are_read_back() {
        // NEWSETELEM messages as the kernel sends them (a dump: several elements each).
        let op = one("add element inet cnirs masq4 { 10.0.0.0/24 }");
        let mut payload = vec![1, 0, 0, 0];
        payload.extend(elem_attrs(&op, &op.elems, false));
        assert_eq!(message_elems(&payload), op.elems);
        let pipapo = one("add element inet cnirs br_net6 { \"b\" . fd00::/64 }");
        let mut payload = vec![1, 0, 0, 0];
        payload.extend(elem_attrs(&pipapo, &pipapo.elems, false));
        let got = message_elems(&payload);
        assert_eq!(got, pipapo.elems);
        assert!(is_exact(&pipapo.elems[0], &got[0]));
        assert!(message_elems(&payload[..payload.len() - 4]).is_empty());
        for cut in 0..payload.len() {
            let _ = message_elems(&payload[..cut]);
        }
    }
}
