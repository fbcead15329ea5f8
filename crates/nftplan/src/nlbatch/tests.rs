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

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

fn masq(s: &str) -> Elem {
    Elem::masq(net(s))
}

fn br_net(bridge: &str, subnet: &str) -> Elem {
    Elem::BrNet {
        bridge: IfName::new(bridge).unwrap(),
        subnet: net(subnet),
    }
}

/// The one element operation of a batch.
fn one(b: &Batch) -> Op {
    let mut ops = plan(b).expect("element operations");
    assert_eq!(ops.len(), 1);
    ops.remove(0)
}

fn add(e: Elem) -> Batch {
    Batch::new().add(&[e]).clone()
}

fn delete(e: Elem) -> Batch {
    Batch::new().delete(&[e]).clone()
}

fn get(e: Elem) -> Batch {
    Batch::new().get(&[e]).clone()
}

#[test]
fn per_pod_batches_are_encoded_and_others_left_to_nft() {
    let br = IfName::new("cnirs-a").unwrap();
    let mut b = Batch::new();
    b.add(&[port(Some("10.0.0.5"), "10.1.0.2"), port(None, "fd00::2")])
        .remove(&[Elem::SameBr { bridge: br.clone() }]);
    let ops = plan(&b).expect("all per-pod elements");
    assert_eq!(ops.len(), 4);
    assert_eq!(ops[0].set.name, "pm4");
    assert_eq!(
        ops[0].elems[0].key,
        [10, 0, 0, 5, 6, 0, 0, 0, 0x1f, 0x90, 0, 0],
        "addr . proto . port, each padded to 4"
    );
    assert_eq!(
        ops[0].elems[0].data.as_deref(),
        Some(&[10, 1, 0, 2, 0, 80, 0, 0][..])
    );
    assert_eq!(ops[1].set.name, "pm6_any");
    assert_eq!(ops[1].elems[0].data.as_ref().unwrap().len(), 20);
    assert_eq!((ops[2].verb, ops[3].verb), (Verb::Add, Verb::Delete));
    assert_eq!(ops[3].elems[0].key.len(), 32);
    assert_eq!(&ops[3].elems[0].key[..8], b"cnirs-a\0");
    // A MAC spoof pair in the bridge table.
    let mut s = Batch::new();
    s.add(&Elem::spoof_check(&br, "02:00:00:00:00:0a").unwrap());
    let ops = plan(&s).unwrap();
    assert_eq!(ops[0].set.family.nfproto(), crate::nfnl::NFPROTO_BRIDGE);
    assert_eq!(ops[0].elems[0].key.len(), 16);
    assert_eq!(ops[1].elems[0].key[16..], [2, 0, 0, 0, 0, 0x0a, 0, 0]);
    // The skeleton, rules, batches mixing gets with changes and empty ones go to nft.
    assert!(plan(Batch::new().skeleton().add(&[port(None, "10.1.0.2")])).is_none());
    assert!(plan(Batch::new().push(crate::Cmd::DeleteForwardRule {
        family: crate::IpFamily::V4,
        handle: 3
    }))
    .is_none());
    let mut g = Batch::new();
    g.get(&[port(None, "10.1.0.2")])
        .add(&[port(None, "10.1.0.2")]);
    assert!(plan(&g).is_none());
    assert!(plan(&Batch::new()).is_none());
    // Gets only: one op each.
    let gets = plan(Batch::new().get(&[port(None, "10.1.0.2"), masq("10.0.0.0/8")])).unwrap();
    assert!(gets.iter().all(|o| o.verb == Verb::Get));
}

#[test]
fn every_set_of_the_schema_encodes_its_fields() {
    // One element per set: the key (and data) lengths follow the schema's fields.
    let len = |f: &crate::schema::Field, n: usize| {
        let raw = match f {
            crate::schema::Field::Ifname => 16,
            crate::schema::Field::Ether => 6,
            crate::schema::Field::Ipv4 => 4,
            crate::schema::Field::Ipv6 => 16,
            crate::schema::Field::Proto => 1,
            crate::schema::Field::Service => 2,
        };
        if n > 1 {
            (raw + 3) & !3
        } else {
            raw
        }
    };
    let br = IfName::new("b").unwrap();
    let samples: Vec<Elem> = [
        Elem::ManagedBr { bridge: br.clone() },
        Elem::SameBr { bridge: br.clone() },
        Elem::InternalBr { bridge: br.clone() },
        Elem::IsolatedBr { bridge: br.clone() },
        masq("10.0.0.0/8"),
        masq("fd00::/8"),
        br_net("b", "10.0.0.0/8"),
        br_net("b", "fd00::/8"),
        port(Some("10.0.0.5"), "10.1.0.2"),
        port(None, "10.1.0.2"),
        port(Some("fd00::5"), "fd00::2"),
        port(None, "fd00::2"),
        Elem::VtepPort { port: 4789 },
        Elem::Vtep {
            addr: "10.240.0.1".parse().unwrap(),
        },
        Elem::Vtep {
            addr: "fd00:240::1".parse().unwrap(),
        },
    ]
    .into_iter()
    .chain(Elem::spoof_check(&br, "02:00:00:00:00:0a").unwrap())
    .chain(crate::tests::netpol_samples())
    .collect();
    let mut seen: Vec<&str> = Vec::new();
    for e in &samples {
        let p = e.parts();
        let fields: Vec<_> = p.key.iter().map(crate::schema::Value::field).collect();
        assert_eq!(fields, p.set.key, "{e}");
        let data: Vec<_> = p.data.iter().map(crate::schema::Value::field).collect();
        assert_eq!(data, p.set.data, "{e}");
        // A range (prefix, address or port range) is the last key field of an interval set
        // (and maybe others of a concatenation), never in a set without intervals.
        use crate::schema::Value as V;
        let is_range = |v: &V| matches!(v, V::Net(_) | V::AddrRange(..) | V::PortRange(..));
        let ranges: Vec<bool> = p.key.iter().chain(&p.data).map(is_range).collect();
        if p.set.interval {
            assert!(ranges[p.key.len() - 1], "{e}");
        } else {
            assert!(ranges.iter().all(|r| !r), "{e}");
        }
        let op = encode(Verb::Add, e);
        let start = op.elems.iter().find(|x| x.flags == 0).unwrap();
        let want: usize = p.set.key.iter().map(|f| len(f, p.set.key.len())).sum();
        assert_eq!(start.key.len(), want, "{e}");
        let want: usize = p.set.data.iter().map(|f| len(f, p.set.data.len())).sum();
        assert_eq!(start.data.as_ref().map_or(0, Vec::len), want, "{e}");
        seen.push(p.set.name);
    }
    for d in crate::schema::SETS {
        assert!(
            seen.contains(&d.name),
            "no sample element for set {}",
            d.name
        );
    }
}

#[test]
fn a_batch_is_framed_with_begin_and_end() {
    let ops = plan(&delete(Elem::ManagedBr {
        bridge: IfName::new("br0").unwrap(),
    }))
    .unwrap();
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
    let b = add(masq("10.0.0.0/24"));
    assert_eq!(b.text(), "add element inet cnirs masq4 { 10.0.0.0/24 }\n");
    let op = one(&b);
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
    let b = delete(masq("10.0.0.0/24"));
    assert_eq!(
        b.text(),
        "delete element inet cnirs masq4 { 10.0.0.0/24 }\n"
    );
    let op = one(&b);
    assert_eq!(
        elements(&op, false),
        hex("10 00 01 80  0c 00 01 80 08 00 01 00 0a 00 00 00
             18 00 02 80  08 00 03 00 00 00 00 01  0c 00 01 80 08 00 01 00 0a 00 01 00")
    );
}

#[test]
fn rbtree_v6_and_edges() {
    // fd00::/64: zero end (16 bytes), start, end at fd00:0:0:1::.
    let op = one(&add(masq("fd00::/64")));
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
    for (b, len) in [(add(masq("0.0.0.0/0")), 4), (delete(masq("::/0")), 16)] {
        let op = one(&b);
        assert_eq!(op.elems, [SetElem::key(vec![0; len])], "{}", b.text());
    }
    // The top of the space: start, no end.
    let op = one(&delete(masq("255.255.255.0/24")));
    assert_eq!(op.elems, [SetElem::key(vec![255, 255, 255, 0])]);
    let op = one(&delete(masq("10.0.0.7/32")));
    assert_eq!(op.elems[1].key, [10, 0, 0, 8]);
    // An element built with host bits is encoded by its network (as nft would refuse it).
    let raw = Elem::Masq {
        subnet: net("10.0.0.1/24"),
    };
    assert_eq!(
        encode(Verb::Delete, &raw),
        encode(Verb::Delete, &masq("10.0.0.0/24"))
    );
    // The family picks the set.
    assert_eq!(one(&add(masq("fd00::/64"))).set.name, "masq6");
    assert_eq!(one(&add(br_net("b", "fd00::/64"))).set.name, "br_net6");
}

#[test]
fn pipapo_add_and_delete_are_one_element_with_key_end_as_nft_sends() {
    let e = Elem::BrNet {
        bridge: IfName::new("cnirs-a").unwrap(),
        subnet: "10.0.0.0/24".parse().unwrap(),
    };
    let want = hex("3c 00 01 80
           1c 00 01 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 00 00
           1c 00 0a 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 00 ff");
    let mut b = Batch::new();
    b.add(std::slice::from_ref(&e))
        .delete(std::slice::from_ref(&e));
    let ops = plan(&b).unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(elements(&ops[0], false), want);
    assert_eq!(elements(&ops[1], false), want);
    assert_eq!(ops[1].verb, Verb::Delete);
    let v6 = one(&add(br_net("b", "fd00:213::/64")));
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
    let ops = plan(&b).unwrap();
    // rbtree: what the set's dump must hold, the start and the end element.
    let start = SetElem::key(vec![10, 0, 1, 0]);
    let end = SetElem {
        flags: INTERVAL_END,
        ..SetElem::key(vec![10, 0, 2, 0])
    };
    assert_eq!(ops[0].elems, [start.clone(), end.clone()]);
    assert_eq!(
        one(&get(masq("0.0.0.0/0"))).elems,
        [SetElem::key(vec![0; 4])]
    );
    // pipapo: the key only, as nft asks; the answer's key end is checked here.
    assert_eq!(
        elements(&ops[1], true),
        hex(
            "20 00 01 80
               1c 00 01 80 18 00 01 00 63 6e 69 72 73 2d 61 00 00 00 00 00 00 00 00 00 0a 00 01 00"
        )
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
    let top = one(&get(masq("255.255.255.0/24")));
    assert!(holds_interval(
        &[zero, e([255, 255, 255, 0], false)],
        &top.elems
    ));
    assert!(!holds_interval(
        &[e([255, 255, 255, 0], false), e([255, 255, 255, 128], true)],
        &top.elems
    ));
}

#[test]
fn answers_are_read_back() {
    // NEWSETELEM messages as the kernel sends them (a dump: several elements each).
    let op = one(&add(masq("10.0.0.0/24")));
    let mut payload = vec![1, 0, 0, 0];
    payload.extend(elem_attrs(&op, &op.elems, false));
    assert_eq!(message_elems(&payload), op.elems);
    let pipapo = one(&add(br_net("b", "fd00::/64")));
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

#[test]
fn runs_of_one_set_go_in_one_message_and_the_elements_are_those_of_the_ops() {
    let pods: Vec<Elem> = (2..=200)
        .map(|i| port(None, &format!("10.1.0.{i}")))
        .collect();
    let mut b = Batch::new();
    b.add(&pods)
        .add(&[port(None, "fd00::2")])
        .remove(&[port(None, "10.9.0.1"), port(None, "10.9.0.2")]);
    let ops = plan(&b).unwrap();
    let merged = coalesce(ops.clone());
    // Runs of one (verb, set): each in messages of at most 128, a new message only when
    // the last one of its run is full.
    let mut runs: Vec<(Verb, &str, usize)> = Vec::new();
    for o in &ops {
        match runs.last_mut() {
            Some((v, s, n)) if *v == o.verb && *s == o.set.name => *n += o.elems.len(),
            _ => runs.push((o.verb, o.set.name, o.elems.len())),
        }
    }
    let want: Vec<(Verb, &str, usize)> = runs
        .iter()
        .flat_map(|&(v, s, n)| (0..n.div_ceil(128)).map(move |k| (v, s, (n - k * 128).min(128))))
        .collect();
    let shape: Vec<(Verb, &str, usize)> = merged
        .iter()
        .map(|o| (o.verb, o.set.name, o.elems.len()))
        .collect();
    assert_eq!(shape, want);
    assert!(
        merged.len() < 10 && ops.len() > 200,
        "{} -> {}",
        ops.len(),
        merged.len()
    );
    let flat = |v: &[Op]| -> Vec<(Verb, SetElem)> {
        v.iter()
            .flat_map(|o| o.elems.iter().map(move |e| (o.verb, e.clone())))
            .collect()
    };
    assert_eq!(flat(&merged), flat(&ops));
    // gets stay one per element.
    let gets = plan(Batch::new().get(&pods[..3])).unwrap();
    assert_eq!(coalesce(gets).len(), 3);
}
