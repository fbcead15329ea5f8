use super::*;

/// The whole plan: [`plan_link`], then (L3) IPAM's addresses and routes.
fn plan(
    dev: &IfName,
    restore: HostState,
    ifname: &IfName,
    state: PathBuf,
    l3: bool,
    ipam: &CniResult,
) -> Result<Vec<Step>, LinkError> {
    let mut steps = plan_link(dev, restore, ifname, state)?;
    if l3 {
        steps.extend(iface::configure_steps(ifname, ipam)?);
    }
    Ok(steps)
}

fn req(conf: &str) -> Request {
    Request::build(
        Command::Add,
        "c1",
        Some("/run/netns/p"),
        "net0",
        format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"host-device",{conf}}}"#).as_bytes(),
    )
    .unwrap()
}

#[test]
fn selectors_in_the_references_order() {
    let none = Path::new("/nonexistent-pci");
    let s = parse_with(
        &req(r#""device":"eth1","hwaddr":"02:00:00:00:00:01""#),
        none,
        none,
    )
    .unwrap();
    assert_eq!(s.selector, Selector::Name(IfName::new("eth1").unwrap()));
    let s = parse_with(&req(r#""hwaddr":"02:00:00:00:00:01""#), none, none).unwrap();
    assert!(matches!(s.selector, Selector::Mac(_)));
    let s = parse_with(&req(r#""kernelpath":"/sys/devices/virtual""#), none, none).unwrap();
    assert_eq!(
        s.selector,
        Selector::NetDir("/sys/devices/virtual/net".into())
    );
    for bad in [
        r#""kernelpath":"/etc""#,
        r#""kernelpath":"sys/devices/x""#,
        r#""kernelpath":"/sys/devices/../../etc""#,
    ] {
        let e = parse_with(&req(bad), none, none).unwrap_err();
        assert!(e.msg.contains("kernelpath"), "{bad}: {}", e.msg);
    }
    let e = parse_with(&req(r#""ipam":{}"#), none, none).unwrap_err();
    assert!(e.msg.contains("pciBusID"), "{}", e.msg);
}

#[test]
fn pci_bus_id_is_refused_clearly_without_pci() {
    let none = Path::new("/nonexistent-pci");
    let e = parse_with(&req(r#""pciBusID":"0000:00:03.0""#), none, none).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("no PCI bus"), "{}", e.msg);
    let e = parse_with(&req(r#""pciBusID":"../../etc""#), none, none).unwrap_err();
    assert!(e.msg.contains("not a PCI address"), "{}", e.msg);
    // A PCI bus without that device.
    let d = std::env::temp_dir().join(format!("hd-pci-{}", std::process::id()));
    std::fs::create_dir_all(d.join("0000:00:04.0/virtio1/net/ens4")).unwrap();
    let e = parse_with(&req(r#""pciBusID":"0000:00:09.0""#), &d, none).unwrap_err();
    assert!(e.msg.contains("no PCI device 0000:00:09.0"), "{}", e.msg);
    // One with a virtio child.
    let s = parse_with(&req(r#""pciBusID":"0000:00:04.0""#), &d, none).unwrap();
    assert_eq!(
        s.selector,
        Selector::NetDir(d.join("0000:00:04.0/virtio1/net"))
    );
    // deviceID names it too, and overrides pciBusID.
    let s = parse_with(
        &req(r#""pciBusID":"0000:00:09.0","runtimeConfig":{"deviceID":"0000:00:04.0"}"#),
        &d,
        none,
    )
    .unwrap();
    assert_eq!(
        s.selector,
        Selector::NetDir(d.join("0000:00:04.0/virtio1/net"))
    );
    let e = parse_with(
        &req(r#""runtimeConfig":{"deviceID":"0000:00:07.0"}"#),
        &d,
        none,
    )
    .unwrap_err();
    assert!(e.msg.contains("deviceID"), "{}", e.msg);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_plan_records_aliases_moves_and_configures() {
    let restore = HostState {
        addrs: vec!["10.7.0.5/24".parse().unwrap()],
        up: true,
    };
    let steps = plan(
        &IfName::new("hd0").unwrap(),
        restore,
        &IfName::new("net0").unwrap(),
        "/run/cni-rs/x/host-device/n-c1-net0.json".into(),
        false,
        &CniResult::default(),
    )
    .unwrap();
    let text: Vec<String> = steps.iter().map(|s| s.command("P")).collect();
    assert_eq!(
        text,
        [
            "write /run/cni-rs/x/host-device/n-c1-net0.json",
            "ip link set hd0 alias \"hd0\"",
            "ip link set hd0 netns P name net0",
            "ip -n P link set net0 up",
        ]
    );
    // A failure at the up: moved back with its address and state, alias cleared, record gone.
    let mut rec = netops::Recorder::failing_at(3);
    netops::apply(&steps, &mut rec).unwrap_err();
    let undo: Vec<String> = rec.calls[4..].iter().map(|s| s.command("P")).collect();
    assert_eq!(
            undo,
            [
                "ip -n P link set net0 netns HOST name hd0; ip addr add 10.7.0.5/24 dev hd0; ip link set hd0 up",
                "ip link set hd0 alias \"\"",
                "rm -f /run/cni-rs/x/host-device/n-c1-net0.json",
            ]
        );
}
