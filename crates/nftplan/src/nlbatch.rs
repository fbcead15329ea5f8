//! Element batches over nfnetlink, in-process: what `nft -f` would send for the scripts the
//! hot path produces (`add`/`delete element` of our non-interval sets and maps, and `get
//! element` for CHECK), without starting an `nft` process (~2 ms each on this machine).
//!
//! [`parse`] recognises exactly the lines [`crate::Batch`] renders for those sets; anything else
//! (the skeleton, interval sets such as `masq4`/`br_net4`, foreign text) answers `None` and the
//! caller runs `nft -f` as before. Keys and data are encoded as nf_tables stores them: each
//! field of a concatenation padded to 4 bytes, `ifname` as 16 bytes, ports big-endian.

use std::{io, net::IpAddr};

use crate::nfnl::{cstr, put_attr};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLA_F_NESTED: u16 = 0x8000;
const IFNAMSIZ: usize = 16;

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

/// One element operation, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub verb: Verb,
    /// `NFPROTO_INET` or `NFPROTO_BRIDGE`.
    pub family: u8,
    pub set: String,
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
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

/// (key fields, data fields) of our non-interval sets and maps.
fn layout(family: u8, set: &str) -> Option<(&'static [Field], &'static [Field])> {
    use Field::*;
    Some(match (family, set) {
        (crate::nfnl::NFPROTO_INET, "managed_br" | "internal_br" | "isolated_br") => {
            (&[Ifname], &[])
        }
        (crate::nfnl::NFPROTO_INET, "same_br") => (&[Ifname, Ifname], &[]),
        (crate::nfnl::NFPROTO_INET, "pm4") => (&[V4, Proto, Service], &[V4, Service]),
        (crate::nfnl::NFPROTO_INET, "pm4_any") => (&[Proto, Service], &[V4, Service]),
        (crate::nfnl::NFPROTO_INET, "pm6") => (&[V6, Proto, Service], &[V6, Service]),
        (crate::nfnl::NFPROTO_INET, "pm6_any") => (&[Proto, Service], &[V6, Service]),
        (crate::nfnl::NFPROTO_BRIDGE, "spoof_ports") => (&[Ifname], &[]),
        (crate::nfnl::NFPROTO_BRIDGE, "spoof_ok") => (&[Ifname, Ether], &[]),
        _ => return None,
    })
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
        let start = out.len();
        match f {
            Field::Ifname => {
                let name = p.strip_prefix('"')?.strip_suffix('"')?;
                if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['"', '\0']) {
                    return None;
                }
                out.extend_from_slice(name.as_bytes());
                out.resize(start + IFNAMSIZ, 0);
            }
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
    let (key_fields, data_fields) = layout(family, set)?;
    let (key_text, data_text) = match body.split_once(" : ") {
        Some((k, d)) => (k, Some(d)),
        None => (body, None),
    };
    let data = match (verb, data_text, data_fields.is_empty()) {
        (Verb::Add, Some(d), false) => Some(encode(d, data_fields)?),
        (Verb::Add, None, true) | (Verb::Delete | Verb::Get, None, _) => None,
        _ => return None,
    };
    Some(Op {
        verb,
        family,
        set: set.to_owned(),
        key: encode(key_text, key_fields)?,
        data,
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

/// `NFTA_SET_ELEM_LIST_*` attributes of one element operation.
fn elem_attrs(op: &Op) -> Vec<u8> {
    let mut a = Vec::new();
    put_attr(&mut a, 1, &cstr("cnirs")); // NFTA_SET_ELEM_LIST_TABLE
    put_attr(
        &mut a,
        2,
        &op.set
            .as_bytes()
            .iter()
            .copied()
            .chain([0])
            .collect::<Vec<_>>(),
    );
    let mut key = Vec::new();
    put_attr(&mut key, 1, &op.key); // NFTA_DATA_VALUE
    let mut elem = Vec::new();
    put_attr(&mut elem, 1 | NLA_F_NESTED, &key); // NFTA_SET_ELEM_KEY
    if let Some(d) = &op.data {
        let mut data = Vec::new();
        put_attr(&mut data, 1, d);
        put_attr(&mut elem, 2 | NLA_F_NESTED, &data); // NFTA_SET_ELEM_DATA
    }
    let mut list = Vec::new();
    put_attr(&mut list, 1 | NLA_F_NESTED, &elem); // NFTA_LIST_ELEM
    put_attr(&mut a, 3 | NLA_F_NESTED, &list); // NFTA_SET_ELEM_LIST_ELEMENTS
    a
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
            &elem_attrs(op),
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

/// (type, seq, first 4 bytes of payload as an errno answer) of each message in a datagram.
fn answers(buf: &[u8]) -> Vec<(u16, u32, Option<i32>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let h = &buf[off..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let code = (ty == NLMSG_ERROR && len >= 20)
            .then(|| i32::from_ne_bytes([h[16], h[17], h[18], h[19]]));
        out.push((ty, seq, code));
        off += (len + 3) & !3;
    }
    out
}

/// Run `ops` in this thread's network namespace: changes as one transaction (all or nothing,
/// like `nft -f`), gets one request each. The first error wins.
pub fn apply(ops: &[Op]) -> io::Result<()> {
    // Closed by `netbase::detach` (after a DEL answered): see `NfSocket`.
    let sock = crate::nfnl::NfSocket::open()?;
    let mut buf = Vec::with_capacity(1 << 16);
    if ops.iter().all(|o| o.verb == Verb::Get) {
        for (i, op) in ops.iter().enumerate() {
            let seq = 1 + i as u32;
            let mut m = Vec::new();
            let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
            msg(
                &mut m,
                ty,
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                op.family,
                0,
                &elem_attrs(op),
            );
            sock.send(&m, 0)?;
            'answer: loop {
                buf.clear();
                sock.recv(&mut buf, 0)?;
                for (_, s, code) in answers(&buf) {
                    if s != seq {
                        continue;
                    }
                    match code {
                        Some(0) => break 'answer,
                        Some(c) => return Err(io::Error::from_raw_os_error(-c)),
                        None => {} // the element itself; the ack follows
                    }
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
        for (_, seq, code) in answers(&buf) {
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
            ops[0].key,
            [10, 0, 0, 5, 6, 0, 0, 0, 0x1f, 0x90, 0, 0],
            "addr . proto . port, each padded to 4"
        );
        assert_eq!(
            ops[0].data.as_deref(),
            Some(&[10, 1, 0, 2, 0, 80, 0, 0][..])
        );
        assert_eq!(ops[1].set, "pm6_any");
        assert_eq!(ops[1].data.as_ref().unwrap().len(), 20);
        assert_eq!((ops[2].verb, ops[3].verb), (Verb::Add, Verb::Delete));
        assert_eq!(ops[3].key.len(), 32);
        assert_eq!(&ops[3].key[..8], b"cnirs-a\0");
        // A MAC spoof pair in the bridge table.
        let mut s = Batch::new();
        s.add(&Elem::spoof_check(&br, "02:00:00:00:00:0a").unwrap());
        let ops = parse(s.text()).unwrap();
        assert_eq!(ops[0].key.len(), 16);
        assert_eq!(ops[1].key[16..], [2, 0, 0, 0, 0, 0x0a, 0, 0]);
        // Interval sets, the skeleton and mixed get/change scripts go to nft.
        let mut m = Batch::new();
        m.add(&[Elem::masq("10.1.0.0/24".parse().unwrap())]);
        assert!(parse(m.text()).is_none());
        assert!(parse(crate::SKELETON).is_none());
        let mut g = Batch::new();
        g.get(&[port(None, "10.1.0.2")])
            .add(&[port(None, "10.1.0.2")]);
        assert!(parse(g.text()).is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn a_batch_is_framed_with_begin_and_end() {
        let ops = parse("delete element inet cnirs managed_br { \"br0\" }\n").unwrap();
        let bytes = encode_batch(&ops, 7);
        let a = answers(&bytes);
        assert_eq!(
            a.iter().map(|(t, s, _)| (*t, *s)).collect::<Vec<_>>(),
            [
                (NFNL_MSG_BATCH_BEGIN, 7),
                ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM, 8),
                (NFNL_MSG_BATCH_END, 9)
            ]
        );
    }
}
