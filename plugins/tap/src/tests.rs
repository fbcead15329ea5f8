use cni_core::Command;

use super::*;

/// The whole plan (both halves), as it runs.
fn plan(spec: &Spec, ifname: &IfName, ipam: &CniResult) -> Result<Vec<Step>, LinkError> {
    let mut steps = plan_link(spec, ifname)?;
    steps.extend(spec.plan_config(spec.l3, ifname, ipam)?);
    Ok(steps)
}

#[test]
fn the_plan_makes_the_tap_then_sets_it_up() {
    let r = Request::build(
        Command::Add,
        "c1",
        Some("/run/netns/p"),
        "tap0",
        br#"{"cniVersion":"1.0.0","name":"n","type":"tap","multiQueue":true,"mtu":1400,
               "mac":"02:00:00:00:00:07","owner":1000,"group":1000,"bridge":"br0"}"#,
    )
    .unwrap();
    let spec = parse(&r).unwrap();
    let steps = plan(&spec, &IfName::new("tap0").unwrap(), &CniResult::default()).unwrap();
    let text: Vec<String> = steps.iter().map(|s| s.command("P")).collect();
    assert_eq!(
        text,
        [
            "ip -n P tuntap add mode tap name tap0 multi_queue vnet_hdr user 1000 group 1000",
            "ip -n P link set tap0 mtu 1400 address 02:00:00:00:00:07",
            "ip -n P link set tap0 master br0",
            "ip -n P link set tap0 up",
        ]
    );
}
