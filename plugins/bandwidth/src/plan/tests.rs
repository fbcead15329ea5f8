use super::*;

const TICKS: f64 = 15.625;

fn n(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn target() -> Target {
    Target {
        veth: n("veth1234"),
        mtu: 1500,
        egress_ifb: n("bwp0123456789ab"),
        ingress_ifb: n("bwi0123456789ab"),
        alias: "cnirs-bandwidth net c1".into(),
    }
}

#[test]
fn ifb_name_is_the_references() {
    // utils.MustFormatHashWithPrefix(15, "bwp", "mynet"+"ctr1"): sha512 hex, first 12.
    let name = ifb_name("bwp", "mynet", "ctr1").unwrap();
    let digest = Sha512::digest(b"mynetctr1");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(name.as_str(), format!("bwp{}", &hex[..12]));
    assert_eq!(name.as_str().len(), 15);
    // sha512("") starts with cf83e135: a known vector pins the algorithm.
    assert_eq!(ifb_name("bwp", "", "").unwrap().as_str(), "bwpcf83e1357eef");
}

#[test]
fn an_uncapped_limit_gives_the_references_tbf() {
    // 1 Mbit/s with a 100 kbit burst: under the cap, as the reference computes it.
    let s = shaping(
        &Limit {
            rate: 1_000_000,
            burst: 100_000,
        },
        1500,
        TICKS,
    )
    .unwrap();
    assert_eq!(s.burst_bytes, 12_500);
    assert_eq!(s.tbf.rate, 125_000);
    // buffer = 12500 * 1e6 / 125000 us = 100000 us = 1562500 ticks
    assert_eq!(s.tbf.buffer, 1_562_500);
    // limit = 125000 * 0.025 + 12500
    assert_eq!(s.tbf.limit, 3_125 + 12_500);
}

#[test]
fn containerd_and_cri_o_bursts_are_capped_to_100ms_of_the_rate() {
    for burst in [u64::from(u32::MAX), u64::from(u32::MAX) * 8 - 1] {
        let s = shaping(
            &Limit {
                rate: 20_000_000,
                burst,
            },
            1500,
            TICKS,
        )
        .unwrap();
        assert_eq!(s.burst_bytes, 250_000, "20 Mbit/s for 100 ms");
        assert!(s.asked_bytes > 500_000_000);
        assert_eq!(s.tbf.buffer, 1_562_500, "100 ms in ticks");
        assert_eq!(s.tbf.limit, 62_500 + 250_000);
    }
}

#[test]
fn a_burst_below_one_frame_is_raised_to_one_frame() {
    let s = shaping(
        &Limit {
            rate: 64_000,
            burst: 800,
        },
        1500,
        TICKS,
    )
    .unwrap();
    assert_eq!(s.burst_bytes, 1514);
    // 64 kbit/s for 100 ms is 800 bytes: the floor beats the cap too.
    let s = shaping(
        &Limit {
            rate: 64_000,
            burst: 80_000,
        },
        1500,
        TICKS,
    )
    .unwrap();
    assert_eq!(s.burst_bytes, 1514);
}

#[test]
fn rates_past_the_kernels_limits_are_refused_and_fast_ones_work() {
    let s = shaping(
        &Limit {
            rate: 100_000_000_000,
            burst: 1_000_000_000,
        },
        9000,
        TICKS,
    )
    .unwrap();
    assert_eq!(s.tbf.rate, 12_500_000_000, "above 4 GB/s: RATE64");
    let e = shaping(
        &Limit {
            rate: u64::MAX / 2,
            burst: 8_000,
        },
        1500,
        TICKS,
    )
    .unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("4 GiB"), "{}", e.msg);
}

#[test]
fn subnet_keys_for_both_families_and_directions() {
    let v4: IpNetwork = "10.1.0.0/16".parse().unwrap();
    assert_eq!(
        subnet_keys(&v4, false),
        vec![U32Match {
            val: 0x0a01_0000,
            mask: 0xffff_0000,
            off: 16
        }]
    );
    assert_eq!(subnet_keys(&v4, true)[0].off, 12);
    let v6: IpNetwork = "fd00:1:2::/56".parse().unwrap();
    let k = subnet_keys(&v6, false);
    assert_eq!(
        k,
        vec![
            U32Match {
                val: 0xfd00_0001,
                mask: u32::MAX,
                off: 24
            },
            U32Match {
                val: 0x0002_0000,
                mask: 0xffff_ff00,
                off: 28
            },
        ]
    );
    assert!(subnet_keys(&"0.0.0.0/0".parse().unwrap(), true).is_empty());
}

#[test]
fn the_plan_without_subnets_is_the_references_layout() {
    let spec = Spec {
        ingress: Some(Limit {
            rate: 1_000_000,
            burst: 100_000,
        }),
        egress: Some(Limit {
            rate: 2_000_000,
            burst: 200_000,
        }),
        subnets: Subnets::All,
    };
    let steps = build(&spec, &target(), TICKS).unwrap();
    assert_eq!(
            text(&steps),
            "tc qdisc add dev veth1234 root handle 1: tbf rate 1000000bit burst 12500b limit 15625b  # buffer 1562500 ticks
ip link add bwp0123456789ab mtu 1500 up type ifb; ip link set bwp0123456789ab alias \"cnirs-bandwidth net c1\"
tc qdisc add dev veth1234 handle ffff: ingress
tc filter add dev veth1234 parent ffff: protocol all prio 1 u32 match u32 0 0 flowid 1:1 action mirred egress redirect dev bwp0123456789ab
tc qdisc add dev bwp0123456789ab root handle 1: tbf rate 2000000bit burst 25000b limit 31250b  # buffer 1562500 ticks"
        );
}

#[test]
fn the_plan_with_unshaped_subnets_uses_clsact_and_two_ifbs() {
    let spec = Spec {
        ingress: Some(Limit {
            rate: 1_000_000,
            burst: u64::from(u32::MAX),
        }),
        egress: Some(Limit {
            rate: 1_000_000,
            burst: 100_000,
        }),
        subnets: Subnets::Except(vec![
            "10.9.0.0/16".parse().unwrap(),
            "fd09::/64".parse().unwrap(),
        ]),
    };
    let steps = build(&spec, &target(), TICKS).unwrap();
    assert_eq!(
            text(&steps),
            "tc qdisc add dev veth1234 clsact
ip link add bwp0123456789ab mtu 1500 up type ifb; ip link set bwp0123456789ab alias \"cnirs-bandwidth net c1\"
tc qdisc add dev bwp0123456789ab root handle 1: tbf rate 1000000bit burst 12500b limit 15625b  # buffer 1562500 ticks
tc filter add dev veth1234 ingress protocol ip prio 1 u32 match u32 0x0a090000 0xffff0000 at 16  # pass: not shaped
tc filter add dev veth1234 ingress protocol ipv6 prio 2 u32 match u32 0xfd090000 0xffffffff at 24 match u32 0x00000000 0xffffffff at 28  # pass: not shaped
tc filter add dev veth1234 ingress protocol all prio 3 u32 match u32 0 0 flowid 1:1 action mirred egress redirect dev bwp0123456789ab
ip link add bwi0123456789ab mtu 1500 up type ifb; ip link set bwi0123456789ab alias \"cnirs-bandwidth net c1\"
tc qdisc add dev bwi0123456789ab root handle 1: tbf rate 1000000bit burst 12500b limit 15625b  # buffer 1562500 ticks, burst asked 536870911b
tc filter add dev veth1234 egress protocol ip prio 1 u32 match u32 0x0a090000 0xffff0000 at 12  # pass: not shaped
tc filter add dev veth1234 egress protocol ipv6 prio 2 u32 match u32 0xfd090000 0xffffffff at 8 match u32 0x00000000 0xffffffff at 12  # pass: not shaped
tc filter add dev veth1234 egress protocol all prio 3 u32 match u32 0 0 flowid 1:1 action mirred egress redirect dev bwi0123456789ab"
        );
}

#[test]
fn undo_removes_ifbs_and_qdiscs_newest_first() {
    let spec = Spec {
        ingress: Some(Limit {
            rate: 1_000_000,
            burst: 100_000,
        }),
        egress: Some(Limit {
            rate: 1_000_000,
            burst: 100_000,
        }),
        subnets: Subnets::All,
    };
    let steps = build(&spec, &target(), TICKS).unwrap();
    // The last step (the IFB's TBF) fails: everything before it is undone.
    let mut rec = netops::Recorder::failing_at(steps.len() - 1);
    let f = netops::apply(&steps, &mut rec).unwrap_err();
    assert_eq!(f.step, steps.len() - 1);
    let undo: Vec<String> = rec.calls[steps.len()..]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        undo,
        [
            "tc qdisc del dev veth1234 ingress",
            "ip link del bwp0123456789ab",
            "tc qdisc del dev veth1234 root",
        ]
    );
}
