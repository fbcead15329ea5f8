//! The socket side: one transaction per change batch, one request per `get` (a dump per
//! rbtree set).

use std::io;

use netbase::{
    nlwire::{cstr, nfgen_message, put_attr, NLMSG_DONE, NLM_F_DUMP, NLM_F_REQUEST},
    Detacher,
};

use super::{
    answers, encode_batch, encode_get, holds_interval, is_exact, message_elems, Op, SetElem, Verb,
    NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM,
};
use crate::{
    nfnl::{NfSocket as Socket, NFNL_SUBSYS_NFTABLES},
    schema::{Layout, SetDef, TABLE_NAME},
};

/// The elements of every `NEWSETELEM` message answering `seq`, until its ack (`get`) or
/// `NLMSG_DONE` (dump); a netlink error answer is returned as the error.
fn collect(sock: &Socket, seq: u32, buf: &mut Vec<u8>) -> io::Result<Vec<SetElem>> {
    let mut out = Vec::new();
    loop {
        sock.recv(buf)?;
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
    put_attr(&mut attrs, 1, &cstr(TABLE_NAME)); // NFTA_SET_ELEM_LIST_TABLE
    put_attr(&mut attrs, 2, &cstr(op.set.name)); // NFTA_SET_ELEM_LIST_SET
    nfgen_message(
        &mut m,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        op.set.family.nfproto(),
        0,
        &attrs,
    );
    sock.send(&m)?;
    collect(sock, seq, buf)
}

/// Run `ops` in this thread's network namespace: changes as one transaction (all or nothing,
/// like `nft -f`), gets one request each. The first error wins. The socket's close is parked
/// with `detach` (after the verb answered: see `NfSocket`).
pub fn apply(ops: &[Op], detach: &Detacher) -> io::Result<()> {
    let sock = Socket::open(detach)?;
    let mut buf = Vec::with_capacity(1 << 16);
    if ops.iter().all(|o| o.verb == Verb::Get) {
        let mut seq = 0u32;
        let mut dumps: Vec<(&SetDef, Vec<SetElem>)> = Vec::new();
        for op in ops {
            if op.set.layout() == Layout::Ranges {
                let at = match dumps.iter().position(|(s, _)| *s == op.set) {
                    Some(at) => at,
                    None => {
                        seq += 1;
                        let all = dump(&sock, op, seq, &mut buf)?;
                        dumps.push((op.set, all));
                        dumps.len() - 1
                    }
                };
                if !holds_interval(&dumps[at].1, &op.elems) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                continue;
            }
            for elem in &op.elems {
                seq += 1;
                sock.send(&encode_get(op, elem, seq))?;
                let found = collect(&sock, seq, &mut buf)?;
                if !found.first().is_some_and(|f| is_exact(elem, f)) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
            }
        }
        return Ok(());
    }
    let base = 1;
    sock.send(&encode_batch(ops, base))?;
    // One answer per acked message; a failed commit answers the BATCH_BEGIN's seq first.
    let mut pending = ops.len();
    let mut first_err = None;
    while pending > 0 {
        sock.recv(&mut buf)?;
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
