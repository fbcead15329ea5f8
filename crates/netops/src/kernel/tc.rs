//! Traffic control over rtnetlink: TBF qdiscs, the ingress / clsact qdiscs, u32 filters with
//! an optional mirred redirect, and reading them back. What the `bandwidth` plugin needs, no
//! `tc` process.
//!
//! netlink-packet-route 0.34 has no TBF type: its options are emitted and read here as raw
//! attributes (`struct tc_tbf_qopt`, `TCA_TBF_RATE64`), as `tc` and the Go reference send them.

use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{DefaultNla, Nla},
    packet_route::tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
        TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage,
        TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
    },
};

use super::*;

/// `TCA_TBF_PARMS`, `TCA_TBF_RATE64` (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
/// `TC_LINKLAYER_ETHERNET`: what `tc` sets; the kernel then needs no rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `sizeof(struct tc_tbf_qopt)`: two `tc_ratespec` (12 bytes each), limit, buffer, mtu.
const TBF_QOPT_LEN: usize = 36;

/// `ETH_P_ALL`, `ETH_P_IP`, `ETH_P_IPV6`.
pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The root qdisc handle `1:` and the ingress/clsact handle `ffff:`.
pub const ROOT_HANDLE: u32 = 0x0001_0000;
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// Filter parents: the ingress qdisc (`parent ffff:`), clsact's ingress and egress hooks.
pub const PARENT_INGRESS: u32 = 0xffff_0000;
pub const PARENT_CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_CLSACT_EGRESS: u32 = 0xffff_fff3;

/// A token bucket as the kernel keeps it (`tc qdisc ... tbf`): what [`Netlink::add_tbf`] sends
/// and [`Netlink::qdiscs`] reads back, unit for unit, so CHECK compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    /// Bytes per second.
    pub rate: u64,
    /// The bucket, as the time the rate takes to fill it, in psched ticks
    /// ([`psched_ticks_per_usec`]).
    pub buffer: u32,
    /// The queue in front of the bucket, in bytes.
    pub limit: u32,
}

/// One qdisc of a link (`tc qdisc show dev LINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Its parameters when it is a TBF.
    pub tbf: Option<TbfParams>,
}

/// One key of a u32 match: the 32-bit word at `off` bytes from the network header, masked,
/// equals `val` (both in the usual reading of the bytes: 10.0.0.0/8 is `0x0a000000` under
/// `0xff000000`). `tc ... u32 match u32 VAL MASK at OFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U32Match {
    pub val: u32,
    pub mask: u32,
    pub off: i32,
}

/// A u32 filter (`tc filter add dev LINK parent P protocol PROTO prio N u32 match ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U32Filter {
    pub parent: u32,
    pub prio: u16,
    /// Host byte order (`ETH_P_ALL`, ...).
    pub protocol: u16,
    /// No key: matches every packet (`match u32 0 0`).
    pub keys: Vec<U32Match>,
    /// `flowid`: the class it assigns (the reference sets 1:1 on its redirect).
    pub classid: Option<u32>,
    /// `action mirred egress redirect dev IFINDEX`; `None`: the filter only stops the
    /// classification (the packet goes on untouched).
    pub redirect: Option<u32>,
}

/// psched ticks per microsecond, from `/proc/net/psched` (the kernel's clock for TBF's
/// buffer). 15.625 (64 ns ticks) on every kernel since 2.6.x when the file cannot be read.
pub fn psched_ticks_per_usec() -> f64 {
    std::fs::read_to_string("/proc/net/psched")
        .ok()
        .and_then(|s| parse_psched(&s))
        .unwrap_or(15.625)
}

/// `t2us us2t clock_res hz`, in hex: ticks per usec = t2us / us2t (× clock factor, as
/// iproute2's `tc_core_init` does).
fn parse_psched(s: &str) -> Option<f64> {
    let v: Vec<u64> = s
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let (t2us, mut us2t, res) = (*v.first()?, *v.get(1)?, *v.get(2)?);
    if res == 1_000_000_000 {
        us2t = t2us;
    }
    if us2t == 0 {
        return None;
    }
    let factor = res as f64 / 1_000_000.0;
    Some(t2us as f64 / us2t as f64 * factor)
}

fn ratespec(rate: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    // cell_log 0, linklayer, overhead 0, cell_align 0, mpu 0, rate (u32, saturated: the
    // exact value goes in TCA_TBF_RATE64).
    b[1] = TC_LINKLAYER_ETHERNET;
    let r = u32::try_from(rate).unwrap_or(u32::MAX);
    b[8..12].copy_from_slice(&r.to_ne_bytes());
    b
}

fn tbf_options(p: &TbfParams) -> Vec<TcOption> {
    let mut qopt = Vec::with_capacity(TBF_QOPT_LEN);
    qopt.extend_from_slice(&ratespec(p.rate));
    qopt.extend_from_slice(&[0u8; 12]); // no peak rate
    qopt.extend_from_slice(&p.limit.to_ne_bytes());
    qopt.extend_from_slice(&p.buffer.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes()); // mtu (peak rate only)
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt))];
    if p.rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            p.rate.to_ne_bytes().to_vec(),
        )));
    }
    opts
}

fn nla_value(n: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The TBF parameters in a qdisc's `TCA_OPTIONS`: netlink-packet-route hands an unknown kind's
/// options over as one raw attribute holding the nested ones.
fn parse_tbf(opts: &[TcOption]) -> Option<TbfParams> {
    let mut raw = Vec::new();
    for o in opts {
        if let TcOption::Other(n) = o {
            raw.extend(nla_value(n));
        }
    }
    let mut parms = None;
    let mut rate64 = None;
    let mut i = 0;
    while i + 4 <= raw.len() {
        let len = usize::from(u16::from_ne_bytes([raw[i], raw[i + 1]]));
        let kind = u16::from_ne_bytes([raw[i + 2], raw[i + 3]]) & 0x3fff;
        if len < 4 || i + len > raw.len() {
            break;
        }
        let val = &raw[i + 4..i + len];
        match kind {
            TCA_TBF_PARMS if val.len() >= TBF_QOPT_LEN => parms = Some(val.to_vec()),
            TCA_TBF_RATE64 if val.len() >= 8 => {
                rate64 = val[..8].try_into().ok().map(u64::from_ne_bytes)
            }
            _ => {}
        }
        i += (len + 3) & !3;
    }
    let p = parms?;
    let rate32 = u32_at(&p, 8)?;
    Some(TbfParams {
        rate: rate64.unwrap_or(u64::from(rate32)),
        limit: u32_at(&p, 24)?,
        buffer: u32_at(&p, 28)?,
    })
}

fn tc_err(netns: &str, op: &'static str, link: &Link, source: rtnetlink::Error) -> NetopsError {
    NetopsError::Tc {
        op,
        link: link.name.clone(),
        netns: netns.to_string(),
        source: Box::new(source),
    }
}

fn index_of(link: &Link) -> Result<i32, NetopsError> {
    i32::try_from(link.index).map_err(|_| NetopsError::LinkNotFound {
        name: link.name.clone(),
        netns: format!("(ifindex {} out of range)", link.index),
    })
}

impl Netlink<'_> {
    /// Put a TBF at the root of `link`. Equivalent: `tc qdisc add dev LINK root handle 1: tbf
    /// rate RATE burst ... limit LIMIT` (the reference's `createTBF`). EEXIST when the link
    /// already has a root qdisc of its own. Undo: [`Netlink::delete_qdisc`] of the root.
    pub fn add_tbf(&self, link: &Link, p: &TbfParams) -> Result<(), NetopsError> {
        let mut msg = TcMessage::with_index(index_of(link)?);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle::from(ROOT_HANDLE);
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf_options(p)));
        self.send_qdisc(msg, "add tbf", link)
    }

    /// The ingress qdisc (`handle ffff:`), where the reference hangs its redirect to the IFB.
    /// Equivalent: `tc qdisc add dev LINK handle ffff: ingress`. EEXIST when it has one.
    pub fn add_ingress_qdisc(&self, link: &Link) -> Result<(), NetopsError> {
        let req = self.handle.qdisc().add(index_of(link)?).ingress();
        self.rt
            .block_on(req.execute())
            .map_err(|e| tc_err(&self.label, "add ingress qdisc", link, e))
    }

    /// The clsact qdisc: filter hooks on both directions (`parent ffff:fff2` for what the
    /// link receives, `ffff:fff3` for what it sends) with no queue.
    /// Equivalent: `tc qdisc add dev LINK clsact`. EEXIST when it has one (or an ingress one).
    pub fn add_clsact(&self, link: &Link) -> Result<(), NetopsError> {
        let mut msg = TcMessage::with_index(index_of(link)?);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle::from(INGRESS_HANDLE);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        self.send_qdisc(msg, "add clsact", link)
    }

    fn send_qdisc(&self, msg: TcMessage, op: &'static str, link: &Link) -> Result<(), NetopsError> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mut handle = self.handle.clone();
        self.rt
            .block_on(async move {
                let mut resp = handle.request(req)?;
                while let Some(m) = futures::StreamExt::next(&mut resp).await {
                    if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
                        if e.code.is_some() {
                            return Err(rtnetlink::Error::NetlinkError(e));
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| tc_err(&self.label, op, link, e))
    }

    /// Delete the qdisc of `link` under `parent` ([`TcHandle::ROOT`] as `0xffff_ffff`, or the
    /// ingress/clsact parent `0xffff_fff1`); `Ok(false)` when there is none (or the link is
    /// gone). Equivalent: `tc qdisc del dev LINK root|ingress`.
    pub fn delete_qdisc(&self, link: &Link, parent: u32) -> Result<bool, NetopsError> {
        let mut req = self.handle.qdisc().del(index_of(link)?);
        req.message_mut().header.parent = TcHandle::from(parent);
        match self.rt.block_on(req.execute()) {
            Ok(()) => Ok(true),
            // ENOENT: no such qdisc; EINVAL: deleting the default root qdisc, which is none of ours.
            Err(e) if is_nl_not_found(&e) || netlink_errno(&e) == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(tc_err(&self.label, "delete qdisc", link, e)),
        }
    }

    /// The qdiscs of `link`. Equivalent: `tc qdisc show dev LINK`.
    pub fn qdiscs(&self, link: &Link) -> Result<Vec<Qdisc>, NetopsError> {
        let msgs: Vec<TcMessage> = self
            .rt
            .block_on(
                self.handle
                    .qdisc()
                    .get()
                    .index(index_of(link)?)
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| tc_err(&self.label, "list qdiscs", link, e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == link.index as i32)
            .map(|m| {
                let mut kind = String::new();
                let mut opts = Vec::new();
                for a in m.attributes {
                    match a {
                        TcAttribute::Kind(k) => kind = k,
                        TcAttribute::Options(o) => opts = o,
                        _ => {}
                    }
                }
                let tbf = (kind == "tbf").then(|| parse_tbf(&opts)).flatten();
                Qdisc {
                    kind,
                    handle: m.header.handle.into(),
                    parent: m.header.parent.into(),
                    tbf,
                }
            })
            .collect())
    }

    /// Add a u32 filter. Equivalent: `tc filter add dev LINK parent P protocol PROTO prio N
    /// u32 match u32 VAL MASK at OFF ... [flowid C] [action mirred egress redirect dev X]`.
    pub fn add_u32_filter(&self, link: &Link, f: &U32Filter) -> Result<(), NetopsError> {
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        let keys: Vec<TcU32Key> = if f.keys.is_empty() {
            vec![TcU32Key::default()]
        } else {
            f.keys
                .iter()
                .map(|k| {
                    let mut key = TcU32Key::default();
                    key.val = k.val & k.mask;
                    key.mask = k.mask;
                    key.off = k.off;
                    key
                })
                .collect()
        };
        sel.nkeys = keys.len() as u8;
        sel.keys = keys;
        let mut opts = Vec::new();
        if let Some(c) = f.classid {
            opts.push(TcFilterU32Option::ClassId(TcHandle::from(c)));
        }
        opts.push(TcFilterU32Option::Selector(sel));
        if let Some(target) = f.redirect {
            let mut m = TcMirror::default();
            m.generic = TcActionGeneric::default();
            m.generic.action = TcActionType::Stolen;
            m.eaction = TcMirrorActionType::EgressRedir;
            m.ifindex = target;
            let mut act = TcAction::default();
            act.attributes = vec![
                TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
                TcActionAttribute::Options(vec![TcActionOption::Mirror(
                    TcActionMirrorOption::Parms(m),
                )]),
            ];
            opts.push(TcFilterU32Option::Action(vec![act]));
        }
        let req = self
            .handle
            .traffic_filter(index_of(link)?)
            .add()
            .parent(f.parent)
            .priority(f.prio)
            .protocol(f.protocol.to_be())
            .u32(&opts)
            .map_err(|e| tc_err(&self.label, "build u32 filter", link, e))?;
        self.rt
            .block_on(req.execute())
            .map_err(|e| tc_err(&self.label, "add u32 filter", link, e))
    }

    /// The u32 filters of `link` under `parent`, one per rule (the kernel also lists each
    /// priority's hash table, without keys: skipped). Equivalent: `tc filter show dev LINK
    /// parent P`.
    pub fn u32_filters(&self, link: &Link, parent: u32) -> Result<Vec<U32Filter>, NetopsError> {
        let mut msg = TcMessage::with_index(index_of(link)?);
        msg.header.parent = TcHandle::from(parent);
        let msgs: Vec<TcMessage> = {
            use rtnetlink::packet_core::{NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
            use rtnetlink::packet_route::RouteNetlinkMessage;
            let mut nl = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
            nl.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut handle = self.handle.clone();
            self.rt
                .block_on(async move {
                    let mut resp = handle.request(nl)?;
                    let mut out = Vec::new();
                    while let Some(m) = futures::StreamExt::next(&mut resp).await {
                        match m.payload {
                            rtnetlink::packet_core::NetlinkPayload::InnerMessage(
                                RouteNetlinkMessage::NewTrafficFilter(t),
                            ) => out.push(t),
                            rtnetlink::packet_core::NetlinkPayload::Error(e)
                                if e.code.is_some() =>
                            {
                                return Err(rtnetlink::Error::NetlinkError(e))
                            }
                            _ => {}
                        }
                    }
                    Ok(out)
                })
                .map_err(|e| tc_err(&self.label, "list filters", link, e))?
        };
        let mut out = Vec::new();
        for m in msgs {
            let info = m.header.info;
            let mut f = U32Filter {
                parent,
                prio: (info >> 16) as u16,
                protocol: u16::from_be((info & 0xffff) as u16),
                keys: Vec::new(),
                classid: None,
                redirect: None,
            };
            let mut is_u32 = false;
            let mut has_sel = false;
            for a in m.attributes {
                match a {
                    TcAttribute::Kind(k) => is_u32 = k == "u32",
                    TcAttribute::Options(opts) => {
                        for o in opts {
                            let TcOption::U32(o) = o else { continue };
                            match o {
                                TcFilterU32Option::ClassId(c) => f.classid = Some(c.into()),
                                TcFilterU32Option::Selector(s) => {
                                    has_sel = true;
                                    f.keys = s
                                        .keys
                                        .iter()
                                        .filter(|k| k.mask != 0)
                                        .map(|k| U32Match {
                                            val: k.val,
                                            mask: k.mask,
                                            off: k.off,
                                        })
                                        .collect();
                                }
                                TcFilterU32Option::Action(acts) => {
                                    for act in acts {
                                        for aa in act.attributes {
                                            let TcActionAttribute::Options(aos) = aa else {
                                                continue;
                                            };
                                            for ao in aos {
                                                if let TcActionOption::Mirror(
                                                    TcActionMirrorOption::Parms(p),
                                                ) = ao
                                                {
                                                    if p.eaction == TcMirrorActionType::EgressRedir
                                                    {
                                                        f.redirect = Some(p.ifindex);
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if is_u32 && has_sel {
                out.push(f);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psched_of_a_modern_kernel_is_64_ns_ticks() {
        assert_eq!(
            parse_psched("000003e8 00000040 000f4240 3b9aca00\n"),
            Some(15.625)
        );
        assert_eq!(parse_psched("garbage"), None);
        assert_eq!(parse_psched("1 0 f4240 64"), None);
    }

    #[test]
    fn tbf_options_round_trip_with_and_without_rate64() {
        for rate in [2_500_000u64, 5_000_000_000] {
            let p = TbfParams {
                rate,
                buffer: 1_953_125,
                limit: 312_500,
            };
            let opts = tbf_options(&p);
            assert_eq!(opts.len(), if rate > u64::from(u32::MAX) { 2 } else { 1 });
            // What the kernel dumps: the attributes nested in one raw TCA_OPTIONS.
            let mut nested = Vec::new();
            for o in &opts {
                let TcOption::Other(n) = o else { panic!() };
                let v = nla_value(n);
                let len = (v.len() + 4) as u16;
                nested.extend(len.to_ne_bytes());
                nested.extend(n.kind().to_ne_bytes());
                nested.extend(&v);
                while nested.len() % 4 != 0 {
                    nested.push(0);
                }
            }
            let dumped = vec![TcOption::Other(DefaultNla::new(2, nested))];
            assert_eq!(parse_tbf(&dumped), Some(p));
        }
    }
}
