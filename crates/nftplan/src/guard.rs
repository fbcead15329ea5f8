//! The NetworkPolicy guard: a small table `inet cnirs_guard` owned by the netlink socket of
//! the process that holds it (`NFT_TABLE_F_OWNER`, `cnirs watch`). Only that socket can change
//! or delete it and `nft flush ruleset` from another process skips it (`nft_flush` in
//! nf_tables_api.c skips owned tables); it goes away when its owner exits.
//!
//! ```text
//! table inet cnirs_guard {            (flags owner)
//!   set iiso4 { ipv4_addr }  set iiso6 { ipv6_addr }     ingress-isolated pods
//!   set eiso4 { ipv4_addr }  set eiso6 { ipv6_addr }     egress-isolated pods
//!   chain forward { type filter hook forward priority 10; policy accept;
//!     meta nfproto ipv4 ip daddr @iiso4 meta mark & PASS == 0 drop     (and saddr @eiso4, v6)
//!     meta mark set meta mark & ~PASS
//!   }
//! }
//! ```
//! `inet cnirs`'s `netpol` chain (priority -5) sets [`NP_PASS_MARK`] on every packet it lets
//! through (replies included). After a flush the main table is gone, nothing sets the bit,
//! and the guard drops what goes to or comes from an isolated pod until `inet cnirs` is
//! restored: fail closed. The guard clears the bit again, so it does not leak to later hooks.
//!
//! The rules are built as nf_tables expressions here (not nft text): an owned table belongs
//! to the socket that created it, and `nft` would exit with it.

use std::{collections::BTreeSet, io, net::IpAddr};

use netbase::nlwire::{
    cstr, nfgen_message, put_attr, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};

use crate::{
    elem::NpDir,
    nfnl::{NFNL_SUBSYS_NFTABLES, NFPROTO_INET},
};

/// The packet mark bit `inet cnirs`'s `netpol` chain sets on what it lets through. Not one of
/// kube-proxy's (0x4000 masquerade, 0x8000 drop), kube-router's (0x10000, 0x20000) or
/// Cilium's (0x0f00) bits.
pub const NP_PASS_MARK: u32 = 0x0100_0000;

/// The guard table's name (family inet).
pub const GUARD_TABLE: &str = "cnirs_guard";

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_APPEND: u16 = 0x800;
const NFT_TABLE_F_OWNER: u32 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
/// nft's type ids of `ipv4_addr` / `ipv6_addr` (for listings).
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The guard's sets: (name, direction, v6).
const SETS: [(&str, NpDir, bool); 4] = [
    ("iiso4", NpDir::Ingress, false),
    ("iiso6", NpDir::Ingress, true),
    ("eiso4", NpDir::Egress, false),
    ("eiso6", NpDir::Egress, true),
];

/// The isolation an element of `inet cnirs`'s set `set` stands for (`np_iiso4 { 10.0.0.2 }`
/// is `(Ingress, 10.0.0.2)`), from the set's name and the element's key as a NEWSETELEM or
/// DELSETELEM event carries them; `None` for any other set.
pub fn isolation_of(set: &str, key: &[u8]) -> Option<(NpDir, IpAddr)> {
    let (_, dir, v6) = SETS
        .iter()
        .find(|(n, _, _)| set.strip_prefix("np_") == Some(n))?;
    let ip = match (*v6, key.len()) {
        (false, 4) => IpAddr::from(<[u8; 4]>::try_from(key).ok()?),
        (true, 16) => IpAddr::from(<[u8; 16]>::try_from(key).ok()?),
        _ => return None,
    };
    Some((*dir, ip))
}

fn set_name(dir: NpDir, v6: bool) -> &'static str {
    SETS.iter()
        .find(|(_, d, s)| *d == dir && *s == v6)
        .map_or("iiso4", |(n, _, _)| n)
}

fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn nested(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attr(&mut v, ty | NLA_F_NESTED, body);
    v
}

/// `NFTA_DATA_VALUE` in a nested attribute `ty`.
fn data(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    put_attr(&mut inner, 1, value);
    nested(ty, &inner)
}

/// One expression (`NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`).
fn expr(name: &str, body: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    put_attr(&mut e, 1, &cstr(name));
    put_attr(&mut e, 2 | NLA_F_NESTED, body);
    nested(1, &e)
}

fn meta_load(key: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 2, &be(key)); // NFTA_META_KEY
    put_attr(&mut b, 1, &be(NFT_REG_1)); // NFTA_META_DREG
    expr("meta", &b)
}

fn meta_store_mark() -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 2, &be(NFT_META_MARK));
    put_attr(&mut b, 3, &be(NFT_REG_1)); // NFTA_META_SREG
    expr("meta", &b)
}

fn cmp_eq(value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 1, &be(NFT_REG_1)); // NFTA_CMP_SREG
    put_attr(&mut b, 2, &be(NFT_CMP_EQ)); // NFTA_CMP_OP
    b.extend(data(3, value)); // NFTA_CMP_DATA
    expr("cmp", &b)
}

/// reg1 = (reg1 & mask) ^ 0, 4 bytes.
fn and_mask(mask: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 1, &be(NFT_REG_1)); // SREG
    put_attr(&mut b, 2, &be(NFT_REG_1)); // DREG
    put_attr(&mut b, 3, &be(4)); // LEN
    b.extend(data(4, &mask.to_ne_bytes())); // MASK (the mark is host order)
    b.extend(data(5, &[0; 4])); // XOR
    expr("bitwise", &b)
}

fn payload_network(offset: u32, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 1, &be(NFT_REG_1)); // DREG
    put_attr(&mut b, 2, &be(NFT_PAYLOAD_NETWORK_HEADER)); // BASE
    put_attr(&mut b, 3, &be(offset));
    put_attr(&mut b, 4, &be(len));
    expr("payload", &b)
}

fn lookup(set: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_attr(&mut b, 1, &cstr(set)); // NFTA_LOOKUP_SET
    put_attr(&mut b, 2, &be(NFT_REG_1)); // NFTA_LOOKUP_SREG
    expr("lookup", &b)
}

fn verdict(code: u32) -> Vec<u8> {
    let mut code_attr = Vec::new();
    put_attr(&mut code_attr, 1, &be(code)); // NFTA_VERDICT_CODE
    let verdict = nested(2, &code_attr); // NFTA_DATA_VERDICT
    let mut b = Vec::new();
    put_attr(&mut b, 1, &be(NFT_REG_VERDICT)); // NFTA_IMMEDIATE_DREG
    b.extend(nested(2, &verdict)); // NFTA_IMMEDIATE_DATA
    expr("immediate", &b)
}

/// The expressions of `meta nfproto F ip[6] {d,s}addr @set meta mark & PASS == 0 drop`.
fn drop_rule(dir: NpDir, v6: bool) -> Vec<u8> {
    // daddr for ingress, saddr for egress: IPv4 16/12, IPv6 24/8.
    let (offset, len) = match (dir, v6) {
        (NpDir::Ingress, false) => (16, 4),
        (NpDir::Egress, false) => (12, 4),
        (NpDir::Ingress, true) => (24, 16),
        (NpDir::Egress, true) => (8, 16),
    };
    let mut e = Vec::new();
    e.extend(meta_load(NFT_META_NFPROTO));
    e.extend(cmp_eq(&[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }]));
    e.extend(payload_network(offset, len));
    e.extend(lookup(set_name(dir, v6)));
    e.extend(meta_load(NFT_META_MARK));
    e.extend(and_mask(NP_PASS_MARK));
    e.extend(cmp_eq(&[0; 4]));
    e.extend(verdict(NF_DROP));
    e
}

/// `meta mark set meta mark & ~PASS`.
fn clear_rule() -> Vec<u8> {
    let mut e = Vec::new();
    e.extend(meta_load(NFT_META_MARK));
    e.extend(and_mask(!NP_PASS_MARK));
    e.extend(meta_store_mark());
    e
}

struct Msgs {
    out: Vec<u8>,
    seq: u32,
    acked: usize,
}

impl Msgs {
    fn new(base: u32) -> Self {
        let mut out = Vec::new();
        nfgen_message(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            base,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        Msgs {
            out,
            seq: base,
            acked: 0,
        }
    }

    fn push(&mut self, ty: u16, flags: u16, attrs: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        self.acked += 1;
        nfgen_message(
            &mut self.out,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            NFPROTO_INET,
            0,
            attrs,
        );
    }

    fn end(mut self) -> (Vec<u8>, usize) {
        nfgen_message(
            &mut self.out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq.wrapping_add(1),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        (self.out, self.acked)
    }
}

/// The batch that creates the owned table, its sets, chain and rules.
pub fn create_batch(base: u32) -> (Vec<u8>, usize) {
    let mut m = Msgs::new(base);
    let table = cstr(GUARD_TABLE);
    let mut a = Vec::new();
    put_attr(&mut a, 1, &table); // NFTA_TABLE_NAME
    put_attr(&mut a, 2, &be(NFT_TABLE_F_OWNER)); // NFTA_TABLE_FLAGS
    m.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, &a);
    for (i, (name, _, v6)) in SETS.iter().enumerate() {
        let mut a = Vec::new();
        put_attr(&mut a, 1, &table); // NFTA_SET_TABLE
        put_attr(&mut a, 2, &cstr(name)); // NFTA_SET_NAME
        put_attr(&mut a, 3, &be(0)); // NFTA_SET_FLAGS
        put_attr(&mut a, 4, &be(if *v6 { TYPE_IPV6 } else { TYPE_IPV4 })); // KEY_TYPE
        put_attr(&mut a, 5, &be(if *v6 { 16 } else { 4 })); // KEY_LEN
        put_attr(&mut a, 10, &be(i as u32 + 1)); // NFTA_SET_ID
        m.push(NFT_MSG_NEWSET, NLM_F_CREATE, &a);
    }
    let mut hook = Vec::new();
    put_attr(&mut hook, 1, &be(NF_INET_FORWARD)); // NFTA_HOOK_HOOKNUM
    put_attr(&mut hook, 2, &be(10)); // NFTA_HOOK_PRIORITY: after inet cnirs (-5, 0)
    let mut a = Vec::new();
    put_attr(&mut a, 1, &table); // NFTA_CHAIN_TABLE
    put_attr(&mut a, 3, &cstr("forward")); // NFTA_CHAIN_NAME
    a.extend(nested(4, &hook)); // NFTA_CHAIN_HOOK
    put_attr(&mut a, 5, &be(NF_ACCEPT)); // NFTA_CHAIN_POLICY
    put_attr(&mut a, 7, &cstr("filter")); // NFTA_CHAIN_TYPE
    m.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &a);
    let rules: Vec<Vec<u8>> = SETS
        .iter()
        .map(|(_, dir, v6)| drop_rule(*dir, *v6))
        .chain([clear_rule()])
        .collect();
    for exprs in rules {
        let mut a = Vec::new();
        put_attr(&mut a, 1, &table); // NFTA_RULE_TABLE
        put_attr(&mut a, 2, &cstr("forward")); // NFTA_RULE_CHAIN
        a.extend(nested(4, &exprs)); // NFTA_RULE_EXPRESSIONS
        m.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &a);
    }
    m.end()
}

/// The batch that adds `add` and removes `gone` (isolated pod addresses per direction).
pub fn change_batch(
    base: u32,
    add: &[(NpDir, IpAddr)],
    gone: &[(NpDir, IpAddr)],
) -> (Vec<u8>, usize) {
    let mut m = Msgs::new(base);
    for (ty, list) in [(NFT_MSG_DELSETELEM, gone), (NFT_MSG_NEWSETELEM, add)] {
        for (name, dir, v6) in SETS {
            let keys: Vec<Vec<u8>> = list
                .iter()
                .filter(|(d, ip)| *d == dir && ip.is_ipv6() == v6)
                .map(|(_, ip)| match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                })
                .collect();
            if keys.is_empty() {
                continue;
            }
            let mut elems = Vec::new();
            for k in keys {
                elems.extend(nested(1, &data(1 | NLA_F_NESTED, &k))); // ELEM { KEY { VALUE } }
            }
            let mut a = Vec::new();
            put_attr(&mut a, 1, &cstr(GUARD_TABLE)); // NFTA_SET_ELEM_LIST_TABLE
            put_attr(&mut a, 2, &cstr(name)); // NFTA_SET_ELEM_LIST_SET
            a.extend(nested(3, &elems)); // NFTA_SET_ELEM_LIST_ELEMENTS
            let flags = if ty == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE
            } else {
                0
            };
            m.push(ty, flags, &a);
        }
    }
    m.end()
}

/// The guard, held: the socket that owns the table (closing it removes the table) and the
/// isolated addresses it holds.
pub struct Guard {
    sock: netbase::nlwire::Socket,
    held: BTreeSet<(NpDir, IpAddr)>,
    seq: u32,
}

impl Guard {
    /// Create the table in this thread's network namespace, owned by a new socket. Fails with
    /// `EEXIST` when another process holds one.
    pub fn create() -> io::Result<Guard> {
        let sock = netbase::nlwire::Socket::open(libc::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        let mut g = Guard {
            sock,
            held: BTreeSet::new(),
            seq: 1,
        };
        let (batch, acked) = create_batch(g.seq);
        g.run(batch, acked)?;
        Ok(g)
    }

    /// Make the guard hold exactly `want` (one transaction; nothing when equal).
    pub fn sync(&mut self, want: &BTreeSet<(NpDir, IpAddr)>) -> io::Result<(usize, usize)> {
        let add: Vec<_> = want.difference(&self.held).copied().collect();
        let gone: Vec<_> = self.held.difference(want).copied().collect();
        if add.is_empty() && gone.is_empty() {
            return Ok((0, 0));
        }
        let (batch, acked) = change_batch(self.seq, &add, &gone);
        self.run(batch, acked)?;
        self.held = want.clone();
        Ok((add.len(), gone.len()))
    }

    /// The addresses held.
    pub fn held(&self) -> &BTreeSet<(NpDir, IpAddr)> {
        &self.held
    }

    fn run(&mut self, batch: Vec<u8>, acked: usize) -> io::Result<()> {
        let base = self.seq;
        self.seq = self.seq.wrapping_add(acked as u32 + 2);
        self.sock.send(&batch)?;
        let mut buf = Vec::with_capacity(1 << 14);
        let mut pending = acked;
        let mut first_err = None;
        while pending > 0 {
            self.sock.recv(&mut buf)?;
            for m in netbase::nlwire::messages(&buf) {
                let Some(code) = m.error_code() else { continue };
                let at = m.seq.wrapping_sub(base);
                if at == 0 && code != 0 {
                    // The batch failed as a whole: no per-message acks follow.
                    pending = 0;
                } else if at >= 1 && at as usize <= acked {
                    pending = pending.saturating_sub(1);
                } else {
                    continue; // a late answer to an earlier batch
                }
                if code != 0 && first_err.is_none() {
                    first_err = Some(io::Error::from_raw_os_error(-code));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
