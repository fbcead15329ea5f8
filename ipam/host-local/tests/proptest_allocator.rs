//! Model-based property test of the allocator over [`MemStore`]: random sequences of ADD
//! (with or without a requested address), DEL and GC on random range sets, checked step by
//! step against a plain model of host-local's rules:
//!
//! * an address is held by at most one attachment, and only allocatable addresses (inside a
//!   range, not its gateway/network/broadcast) are ever handed out;
//! * an attachment holds at most one address per range set, and an ADD repeated for it gives
//!   the same address back (`new == false`);
//! * a fresh address is the first free one in round-robin order after the set's last
//!   reserved address (the reference's order); a requested one is honoured when free;
//! * exhaustion (code 104) exactly when the set has no free address; a taken request is a
//!   conflict (103); out-of-set or reserved requests are config errors (7);
//! * DEL releases exactly the attachment's leases, GC exactly those not in the valid list;
//! * `free_addresses` and `check` agree with the model.
//!
//! `PROPTEST_CASES` raises the number of cases (default 256 sequences of up to 60 steps).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use cni_core::Attachment;
use host_local::{
    allocator::{self, Requested},
    range::{Range, RangeSet},
    store::{MemStore, Store},
    HostLocalError,
};
use ipnetwork::IpNetwork;
use proptest::prelude::*;

const NETWORK: &str = "net";
const IDS: &[&str] = &["c0", "c1", "c2", "c3", "c4", "c5"];
const IFNAMES: &[&str] = &["eth0", "eth1"];

/// One range: `prefix` of its subnet (number `i` of its set) and offsets of start, end and
/// gateway inside the subnet.
#[derive(Debug, Clone)]
struct RangeSpec {
    v6: bool,
    prefix_bits_left: u8,
    start: u32,
    end: u32,
    gw: u32,
}

fn range_spec(v6: bool) -> impl Strategy<Value = RangeSpec> {
    // Subnets of 4..64 addresses (config refuses prefixes longer than bits - 2).
    (2u8..=6).prop_flat_map(move |left| {
        let size = 1u32 << left;
        (0..size, 0..size, 0..size).prop_map(move |(a, b, g)| RangeSpec {
            v6,
            prefix_bits_left: left,
            start: a.min(b),
            end: a.max(b),
            gw: g,
        })
    })
}

fn build(i: usize, s: &RangeSpec) -> Range {
    let (subnet, base): (IpNetwork, u128) = if s.v6 {
        let base = u128::from(Ipv6Addr::new(0xfd00, 9, i as u16, 0, 0, 0, 0, 0));
        (
            IpNetwork::new(IpAddr::V6(Ipv6Addr::from(base)), 128 - s.prefix_bits_left).unwrap(),
            base,
        )
    } else {
        let base = u32::from(Ipv4Addr::new(10, 9, i as u8, 0));
        (
            IpNetwork::new(IpAddr::V4(Ipv4Addr::from(base)), 32 - s.prefix_bits_left).unwrap(),
            u128::from(base),
        )
    };
    let at = |off: u32| -> IpAddr {
        let n = base + u128::from(off);
        if s.v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        }
    };
    Range {
        subnet,
        start: at(s.start),
        end: at(s.end),
        gateway: at(s.gw),
    }
}

/// Set 0: 1-3 IPv4 ranges in 10.9.{0,1,2}.0; set 1: 1-2 IPv6 ranges in fd00:9:{0,1}::.
fn range_sets() -> impl Strategy<Value = Vec<RangeSet>> {
    (
        proptest::collection::vec(range_spec(false), 1..=3),
        proptest::collection::vec(range_spec(true), 1..=2),
    )
        .prop_map(|(v4, v6)| {
            vec![
                RangeSet(v4.iter().enumerate().map(|(i, s)| build(i, s)).collect()),
                RangeSet(v6.iter().enumerate().map(|(i, s)| build(i, s)).collect()),
            ]
        })
}

#[derive(Debug, Clone)]
enum Op {
    /// ADD of (id, ifname) in range set `set`; `req`: index into candidate addresses to ask for.
    Add {
        id: usize,
        ifname: usize,
        set: usize,
        req: Option<prop::sample::Index>,
    },
    Del {
        id: usize,
        ifname: usize,
    },
    /// GC keeping the attachments whose bit is set (bit = id * 2 + ifname).
    Gc {
        keep: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = (0..IDS.len(), 0..IFNAMES.len());
    prop_oneof![
        6 => (who.clone(), 0usize..2, proptest::option::weighted(0.25, any::<prop::sample::Index>()))
            .prop_map(|((id, ifname), set, req)| Op::Add { id, ifname, set, req }),
        3 => who.prop_map(|(id, ifname)| Op::Del { id, ifname }),
        1 => any::<u16>().prop_map(|keep| Op::Gc { keep }),
    ]
}

/// Every address of the set's ranges (start..=end), in range order: what a request may name.
fn all_addresses(set: &RangeSet) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for r in &set.0 {
        let (a, b) = (num(r.start), num(r.end));
        for n in a..=b {
            out.push(ip_like(n, r.start));
        }
    }
    out
}

/// The allocatable addresses in round-robin order (the model's own arithmetic, not the
/// crate's): every address of every range except its gateway, network and IPv4 broadcast.
fn allocatable(set: &RangeSet) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for r in &set.0 {
        for n in num(r.start)..=num(r.end) {
            let ip = ip_like(n, r.start);
            let net = r.subnet.network();
            let bcast = r.subnet.broadcast();
            if ip == r.gateway || ip == net || (r.subnet.is_ipv4() && ip == bcast) {
                continue;
            }
            out.push(ip);
        }
    }
    out
}

fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn ip_like(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

fn in_ranges(set: &RangeSet, ip: IpAddr) -> bool {
    set.0.iter().any(|r| {
        r.start.is_ipv4() == ip.is_ipv4() && num(r.start) <= num(ip) && num(ip) <= num(r.end)
    })
}

/// The model: who holds what, and the last reserved address per set.
#[derive(Debug, Default)]
struct Model {
    leases: BTreeMap<IpAddr, (usize, usize)>,
    last: [Option<IpAddr>; 2],
}

impl Model {
    fn held(&self, who: (usize, usize), set: &RangeSet) -> Option<IpAddr> {
        self.leases
            .iter()
            .find(|(ip, w)| **w == who && in_ranges(set, **ip))
            .map(|(ip, _)| *ip)
    }

    /// The round-robin pick: first free allocatable address after `last`.
    fn next_free(&self, index: usize, set: &RangeSet) -> Option<IpAddr> {
        let order = allocatable(set);
        if order.is_empty() {
            return None;
        }
        let start = match self.last[index].filter(|l| in_ranges(set, *l)) {
            // After `last` in range order (`last` is always one of the allocatable ones).
            Some(l) => order.iter().position(|x| *x == l).map_or(0, |p| p + 1),
            None => 0,
        };
        (0..order.len())
            .map(|k| order[(start + k) % order.len()])
            .find(|ip| !self.leases.contains_key(ip))
    }
}

fn run_ops(sets: &[RangeSet], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = MemStore::default();
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let before = format!("step {step}: {op:?}\nsets: {sets:?}\nmodel before: {model:?}");
        let ctx = || before.clone();
        match op {
            Op::Add {
                id,
                ifname,
                set: index,
                req,
            } => {
                let set = &sets[*index];
                let who = (*id, *ifname);
                let requested = req.as_ref().map(|i| {
                    let all = all_addresses(set);
                    // Mostly addresses of the set, sometimes one just outside it.
                    let pick = i.index(all.len() + 2);
                    let ip = match pick.checked_sub(all.len()) {
                        None => all[pick],
                        Some(0) => ip_like(num(set.0[0].start).wrapping_sub(1), set.0[0].start),
                        Some(_) => ip_like(num(all[all.len() - 1]) + 1, set.0[0].start),
                    };
                    Requested {
                        ip,
                        field: "args.cni.ips".into(),
                    }
                });
                let got = allocator::allocate(
                    &mut store,
                    NETWORK,
                    *index,
                    set,
                    IDS[*id],
                    IFNAMES[*ifname],
                    requested.as_ref(),
                );
                let held = model.held(who, set);
                match &requested {
                    Some(r) => {
                        let allocatable_ip = allocatable(set).contains(&r.ip);
                        if !in_ranges(set, r.ip) || !allocatable_ip {
                            let e = got.err().ok_or_else(|| {
                                TestCaseError::fail(format!("bad request accepted: {}", ctx()))
                            })?;
                            prop_assert_eq!(cni(e), 7, "{}", ctx());
                        } else if held == Some(r.ip) {
                            let a =
                                got.map_err(|e| TestCaseError::fail(format!("{e}: {}", ctx())))?;
                            prop_assert_eq!(a.address.ip(), r.ip, "{}", ctx());
                            prop_assert!(!a.new, "{}", ctx());
                        } else if held.is_some() {
                            prop_assert!(got.is_err(), "second address for {who:?}: {}", ctx());
                        } else if let Some(owner) = model.leases.get(&r.ip) {
                            let e = got.err().ok_or_else(|| {
                                TestCaseError::fail(format!(
                                    "taken address given ({owner:?}): {}",
                                    ctx()
                                ))
                            })?;
                            prop_assert_eq!(cni(e), 103, "{}", ctx());
                        } else {
                            let a =
                                got.map_err(|e| TestCaseError::fail(format!("{e}: {}", ctx())))?;
                            prop_assert_eq!(a.address.ip(), r.ip, "{}", ctx());
                            prop_assert!(a.new, "{}", ctx());
                            model.leases.insert(r.ip, who);
                            model.last[*index] = Some(r.ip);
                        }
                    }
                    None => match (held, model.next_free(*index, set)) {
                        (Some(h), _) => {
                            let a =
                                got.map_err(|e| TestCaseError::fail(format!("{e}: {}", ctx())))?;
                            prop_assert_eq!(a.address.ip(), h, "repeated ADD: {}", ctx());
                            prop_assert!(!a.new, "{}", ctx());
                        }
                        (None, None) => {
                            let e = got.err().ok_or_else(|| {
                                TestCaseError::fail(format!("allocated in a full set: {}", ctx()))
                            })?;
                            prop_assert_eq!(cni(e), 104, "{}", ctx());
                        }
                        (None, Some(want)) => {
                            let a =
                                got.map_err(|e| TestCaseError::fail(format!("{e}: {}", ctx())))?;
                            prop_assert_eq!(a.address.ip(), want, "round robin: {}", ctx());
                            prop_assert!(a.new, "{}", ctx());
                            let r = set.range_for(want).unwrap().1;
                            prop_assert_eq!(a.address.prefix(), r.subnet.prefix());
                            prop_assert_eq!(a.gateway, r.gateway);
                            model.leases.insert(want, who);
                            model.last[*index] = Some(want);
                        }
                    },
                }
            }
            Op::Del { id, ifname } => {
                let mut released = store.release_by_id(IDS[*id], IFNAMES[*ifname]).unwrap();
                released.sort();
                let mut want: Vec<IpAddr> = model
                    .leases
                    .iter()
                    .filter(|(_, w)| **w == (*id, *ifname))
                    .map(|(ip, _)| *ip)
                    .collect();
                want.sort();
                prop_assert_eq!(&released, &want, "{}", ctx());
                model.leases.retain(|_, w| *w != (*id, *ifname));
            }
            Op::Gc { keep } => {
                let kept = |id: usize, ifname: usize| keep & (1 << (id * 2 + ifname)) != 0;
                let valid: Vec<Attachment> = (0..IDS.len())
                    .flat_map(|id| (0..IFNAMES.len()).map(move |i| (id, i)))
                    .filter(|(id, i)| kept(*id, *i))
                    .map(|(id, i)| Attachment {
                        container_id: IDS[id].into(),
                        ifname: IFNAMES[i].into(),
                    })
                    .collect();
                let mut released = allocator::gc(&mut store, &valid).unwrap();
                released.sort();
                let want: Vec<IpAddr> = model
                    .leases
                    .iter()
                    .filter(|(_, (id, i))| !kept(*id, *i))
                    .map(|(ip, _)| *ip)
                    .collect();
                prop_assert_eq!(&released, &want, "{}", ctx());
                model.leases.retain(|_, (id, i)| kept(*id, *i));
            }
        }
        // After every step: the store is the model.
        let store_leases: BTreeMap<IpAddr, (String, Option<String>)> = store
            .leases()
            .into_iter()
            .map(|l| (l.ip, (l.owner.container_id, l.owner.ifname)))
            .collect();
        let model_leases: BTreeMap<IpAddr, (String, Option<String>)> = model
            .leases
            .iter()
            .map(|(ip, (id, i))| (*ip, (IDS[*id].to_owned(), Some(IFNAMES[*i].to_owned()))))
            .collect();
        prop_assert_eq!(&store_leases, &model_leases, "{}", ctx());
        for (index, set) in sets.iter().enumerate() {
            // One address per attachment per set, all allocatable.
            let order = allocatable(set);
            let mut seen = BTreeMap::new();
            for (ip, who) in &model.leases {
                if in_ranges(set, *ip) {
                    prop_assert!(order.contains(ip), "{ip} is not allocatable: {}", ctx());
                    prop_assert!(
                        seen.insert(*who, *ip).is_none(),
                        "{who:?} holds two in set {index}: {}",
                        ctx()
                    );
                }
            }
            let free = order
                .iter()
                .filter(|ip| !model.leases.contains_key(ip))
                .count() as u128;
            prop_assert_eq!(
                allocator::free_addresses(&store, set),
                free,
                "free in set {}: {}",
                index,
                ctx()
            );
            for (id, cid) in IDS.iter().enumerate() {
                for (i, ifname) in IFNAMES.iter().enumerate() {
                    let holds = seen.contains_key(&(id, i));
                    let ok =
                        allocator::check(&store, NETWORK, std::slice::from_ref(set), cid, ifname)
                            .is_ok();
                    prop_assert_eq!(
                        ok,
                        holds,
                        "check {}/{} set {}: {}",
                        cid,
                        ifname,
                        index,
                        ctx()
                    );
                }
            }
        }
    }
    Ok(())
}

fn cni(e: HostLocalError) -> u32 {
    cni_core::CniError::from(e).code()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_the_model(sets in range_sets(), ops in proptest::collection::vec(op(), 1..60)) {
        run_ops(&sets, &ops)?;
    }
}

/// The candidate order of the crate equals the model's order from every starting point.
#[test]
fn candidates_follow_range_order() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases(512)));
    runner
        .run(
            &(range_sets(), any::<prop::sample::Index>()),
            |(sets, at)| {
                for set in &sets {
                    let order = allocatable(set);
                    let last = (!order.is_empty()).then(|| order[at.index(order.len())]);
                    let got: Vec<IpAddr> = set.candidates(last).map(|(_, ip)| ip).collect();
                    let start = last.map_or(0, |l| order.iter().position(|x| *x == l).unwrap() + 1);
                    let want: Vec<IpAddr> = (0..order.len())
                        .map(|k| order[(start + k) % order.len()])
                        .collect();
                    prop_assert_eq!(got, want, "{:?} from {:?}", set, last);
                    prop_assert_eq!(set.capacity(), order.len() as u128);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
