//! Element batches over nfnetlink, in-process: what `nft -f` sends for `add`/`delete element`
//! of our sets and maps, and for `get element` (CHECK), without starting an `nft` process.
//! The commands come typed ([`crate::Batch`]); each element is
//! encoded from its values and its set's entry in [`crate::schema::SETS`], never from text.
//!
//! Keys and data are encoded as nf_tables stores them: each field of a concatenation padded
//! to 4 bytes (a lone field is not), `ifname` as 16 bytes, ports big-endian. Interval sets are
//! encoded as nft 1.0.6 encodes them (captured with `nft --debug=netlink,mnl` on kernel 6.18):
//! - one field with `flags interval` (`masq4`/`masq6`, the kernel's rbtree): a subnet is a
//!   start element (key = network address) and an end element (key = last address + 1, flag
//!   `NFT_SET_ELEM_INTERVAL_END`; none when that overflows, e.g. `0.0.0.0/0`). `add` also
//!   sends the end element at address 0 that nft adds to every set whose first interval does
//!   not start at 0 (nft skips it when its cache shows it is there; the kernel keeps one
//!   either way).
//! - a concatenation with `flags interval` (`br_net4`/`br_net6`, the kernel's pipapo): one
//!   element with `NFTA_SET_ELEM_KEY` (bridge . network address) and `NFTA_SET_ELEM_KEY_END`
//!   (bridge . last address, inclusive).
//!
//! `get` is exact where nft's is not: nft is asked for the interval holding the network
//! address (nft 1.0.6 fails a `get` of a subnet with an adjacent one beside it). Here a pipapo
//! `get` of the start key must answer the subnet's own key and key end. The rbtree's `get` is
//! no help: asked for an end element whose key is also an adjacent interval's start, kernel
//! 6.18 may answer the next interval's end (three adjacent /24s show it), so an rbtree set is
//! dumped (one request, a few elements per network) and must hold the start element, the end
//! element and nothing between them.

use netbase::nlwire::{
    attr, attrs, cstr, messages, nfgen_message, put_attr, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_REQUEST,
};

use crate::{
    batch::{Batch, Cmd},
    elem::Elem,
    nfnl::NFNL_SUBSYS_NFTABLES,
    schema::{Layout, SetDef, Value, TABLE_NAME},
};

mod io;

pub use io::apply;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
/// `NFTA_SET_ELEM_*` attribute types.
const ELEM_KEY: u16 = 1;
const ELEM_DATA: u16 = 2;
const ELEM_FLAGS: u16 = 3;
const ELEM_KEY_END: u16 = 10;
/// `NFTA_DATA_VALUE`.
const DATA_VALUE: u16 = 1;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub const INTERVAL_END: u32 = 1;

/// What a command asks.
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

    fn end(key: Vec<u8>) -> SetElem {
        SetElem {
            flags: INTERVAL_END,
            ..SetElem::key(key)
        }
    }
}

/// One element command, encoded: one message of `elems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// What it asks.
    pub verb: Verb,
    /// The set (its family is the message's).
    pub set: &'static SetDef,
    /// What the message carries (`get`: what must be there, see [`apply`]).
    pub elems: Vec<SetElem>,
}

/// The batch as element operations, or `None` when it holds something else (the skeleton,
/// rules: nft's business) or mixes `get` with changes.
pub fn plan(batch: &Batch) -> Option<Vec<Op>> {
    let ops: Vec<Op> = batch
        .cmds()
        .iter()
        .map(|c| match c {
            Cmd::Add(e) => Some(encode(Verb::Add, e)),
            Cmd::Delete(e) => Some(encode(Verb::Delete, e)),
            Cmd::Get(e) => Some(encode(Verb::Get, e)),
            Cmd::Skeleton | Cmd::AllowForward { .. } | Cmd::DeleteForwardRule { .. } => None,
        })
        .collect::<Option<_>>()?;
    let gets = ops.iter().filter(|o| o.verb == Verb::Get).count();
    (!ops.is_empty() && (gets == 0 || gets == ops.len())).then_some(ops)
}

/// At most this many elements in one message (an attribute's length is 16 bits).
const PER_MESSAGE: usize = 128;

/// `ops` with each run of adds (or deletes) to one set in one message, as nft sends them:
/// one ack per message instead of one per element. `get`s are left alone.
pub fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        match out.last_mut() {
            Some(last)
                if op.verb != Verb::Get
                    && last.verb == op.verb
                    && std::ptr::eq(last.set, op.set)
                    && last.elems.len() + op.elems.len() <= PER_MESSAGE =>
            {
                last.elems.extend(op.elems);
            }
            _ => out.push(op),
        }
    }
    out
}

/// `values` as one key: each value's bytes (`end`: a prefix's last address instead of its
/// network address), each padded to 4 bytes in a concatenation.
fn concat(values: &[Value], end: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 16);
    for v in values {
        v.put(&mut out, end);
        if values.len() > 1 {
            out.resize((out.len() + 3) & !3, 0);
        }
    }
    out
}

/// The message elements of `verb` on `e`, laid out as its set is stored.
pub fn encode(verb: Verb, e: &Elem) -> Op {
    let p = e.parts();
    let elems = match p.set.layout() {
        Layout::Exact => vec![SetElem {
            data: (verb == Verb::Add && !p.data.is_empty()).then(|| concat(&p.data, false)),
            ..SetElem::key(concat(&p.key, false))
        }],
        Layout::ConcatRanges => vec![SetElem {
            key_end: Some(concat(&p.key, true)),
            ..SetElem::key(concat(&p.key, false))
        }],
        Layout::Ranges => {
            let start = concat(&p.key, false);
            let past = p.key.first().and_then(Value::past_end);
            let mut v = Vec::new();
            if verb == Verb::Add && start.iter().any(|b| *b != 0) {
                v.push(SetElem::end(vec![0; start.len()]));
            }
            v.push(SetElem::key(start));
            v.extend(past.map(SetElem::end));
            v
        }
    };
    Op {
        verb,
        set: p.set,
        elems,
    }
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
    put_attr(&mut a, 1, &cstr(TABLE_NAME)); // NFTA_SET_ELEM_LIST_TABLE
    put_attr(&mut a, 2, &cstr(op.set.name)); // NFTA_SET_ELEM_LIST_SET
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
    nfgen_message(
        &mut m,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        op.set.family.nfproto(),
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
    nfgen_message(
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
        nfgen_message(
            &mut out,
            (subsys << 8) | ty,
            flags,
            seq,
            op.set.family.nfproto(),
            0,
            &elem_attrs(op, &op.elems, false),
        );
    }
    let end = base.wrapping_add(1 + ops.len() as u32);
    nfgen_message(
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
    messages(buf)
        .map(|m| (m.kind, m.seq, m.error_code(), m.body))
        .collect()
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

#[cfg(test)]
mod tests;
