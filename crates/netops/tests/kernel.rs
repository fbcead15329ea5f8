//! Kernel tests (root): each test makes its own "host" and "pod" netns
//! (`cnirs-t<pid>-<n>-...`), runs host-side operations on a thread that
//! entered the test host netns, and deletes both namespaces on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use netops::{
    apply, errno,
    sysctl::{self, Ipv4Conf},
    BridgePortOpts, Family, IfName, IpNetwork, Kernel, KernelExec, MacAddr, NetNs, NetopsError,
    NewBridge, Ns, Op, RouteSpec, SysctlKey, VethSpec,
};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct TestNs {
    name: String,
    path: PathBuf,
}

impl TestNs {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("cnirs-t{}-{n}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let path = PathBuf::from(format!("/run/netns/{name}"));
        Self { name, path }
    }

    fn ip(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap()
    }

    fn ip_ok(&self, args: &[&str]) {
        let o = self.ip(args);
        assert!(
            o.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `ip -n NS -j -d link show dev NAME`, `None` if missing.
    fn link_json(&self, name: &str) -> Option<Value> {
        let o = self.ip(&["-j", "-d", "link", "show", "dev", name]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array().and_then(|a| a.first().cloned())
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let o = self.ip(&a);
        assert!(o.status.success(), "{args:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run `f` on a fresh thread that first entered `host`: nothing the test
/// does on the host side can touch the machine's own netns.
fn in_host<T: Send>(host: &TestNs, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            NetNs::open(&host.path).unwrap().enter().unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

macro_rules! need_root {
    () => {
        if !is_root() {
            panic!("kernel tests need root (run: make conformance as root)");
        }
    };
}

fn veth(host: &str, peer: &str) -> VethSpec {
    VethSpec {
        host_name: host.into(),
        peer_name: peer.into(),
        mtu: None,
        peer_mac: None,
        up: true,
        host_up: true,
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_is_created_up_then_reused_and_non_bridge_is_refused() {
    need_root!();
    let h = TestNs::new("h");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        // This kernel may lack CONFIG_BRIDGE_VLAN_FILTERING: then EOPNOTSUPP
        // and no bridge left behind.
        match host.ensure_bridge(
            "brv",
            &NewBridge {
                vlan_filtering: true,
                ..Default::default()
            },
        ) {
            Ok(b) => assert!(b.created),
            Err(e) => {
                assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
                assert!(host.link("brv").unwrap().is_none());
            }
        }
        let b = host
            .ensure_bridge(
                "br0",
                &NewBridge {
                    mtu: Some(1400),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(b.created);
        assert_eq!(b.link.kind.as_deref(), Some("bridge"));
        assert_eq!(b.link.mtu, 1400);
        assert!(b.link.admin_up);
        assert!(b.link.mac.is_some());
        // Made here: no multicast snooping unless asked for.
        assert_eq!(
            host.require_link("br0").unwrap().mcast_snooping,
            Some(false)
        );
        let again = host.ensure_bridge("br0", &NewBridge::default()).unwrap();
        assert!(!again.created);
        assert_eq!(again.link.index, b.link.index);
        let snoop = NewBridge {
            mcast_snooping: true,
            ..Default::default()
        };
        host.ensure_bridge("br2", &snoop).unwrap();
        assert_eq!(host.require_link("br2").unwrap().mcast_snooping, Some(true));

        // A bridge made by someone else, down: reused (as it is) and brought up.
        h.ip_ok(&["link", "add", "br1", "type", "bridge"]);
        let other = host.ensure_bridge("br1", &NewBridge::default()).unwrap();
        assert!(!other.created);
        let br1 = host.require_link("br1").unwrap();
        assert!(br1.admin_up);
        assert_eq!(
            br1.mcast_snooping,
            Some(true),
            "the kernel's default, left alone"
        );

        h.ip_ok(&[
            "link", "add", "notbr", "type", "veth", "peer", "name", "notbr-p",
        ]);
        let e = host
            .ensure_bridge("notbr", &NewBridge::default())
            .unwrap_err();
        assert!(
            matches!(e, NetopsError::NotABridge { ref kind, .. } if kind.as_deref() == Some("veth")),
            "{e}"
        );
    });
    let j = h.link_json("br0").unwrap();
    assert_eq!(j["linkinfo"]["info_kind"], "bridge");
    assert_eq!(j["linkinfo"]["info_data"]["vlan_filtering"], 0);
    assert_eq!(j["mtu"], 1400);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn veth_peer_is_created_in_pod_with_final_name_mtu_and_mac() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    let mac: MacAddr = "0a:58:0a:f0:00:07".parse().unwrap();
    let pair = in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        // Opening the pod handle left this thread in the host netns.
        assert!(NetNs::current()
            .unwrap()
            .same_as(&NetNs::open(&h.path).unwrap()));
        let spec = VethSpec {
            mtu: Some(1450),
            peer_mac: Some(mac),
            ..veth("veth0", "eth0")
        };
        k.host().create_veth(&spec, &pod).unwrap()
    });
    assert_eq!(pair.peer.name, "eth0");
    assert_eq!(pair.peer.mac, Some(mac));
    assert_eq!(pair.peer.mtu, 1450);
    assert_eq!(pair.host.mtu, 1450);
    assert_eq!(pair.host.kind.as_deref(), Some("veth"));
    let pj = p.link_json("eth0").expect("eth0 in pod");
    assert_eq!(pj["address"], "0a:58:0a:f0:00:07");
    assert_eq!(pj["ifindex"], pair.peer.index);
    assert_eq!(pj["mtu"], 1450);
    assert!(pj["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let hj = h.link_json("veth0").expect("veth0 on host");
    assert_eq!(hj["ifindex"], pair.host.index);
    assert!(
        h.link_json("eth0").is_none(),
        "peer must not appear on the host"
    );
    assert!(p.link_json("veth0").is_none());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn existing_peer_or_host_name_gives_distinct_error_and_leaves_nothing() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    p.ip_ok(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    h.ip_ok(&[
        "link", "add", "taken", "type", "veth", "peer", "name", "taken-p",
    ]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let host = k.host();
        let e = host.create_veth(&veth("veth0", "eth0"), &pod).unwrap_err();
        assert!(
            matches!(e, NetopsError::PeerExists { ref peer, .. } if peer == "eth0"),
            "{e}"
        );
        assert!(e.is_exists());
        assert!(
            host.link("veth0").unwrap().is_none(),
            "host end left behind"
        );

        let e = host.create_veth(&veth("taken", "eth1"), &pod).unwrap_err();
        assert!(
            matches!(e, NetopsError::HostVethExists { ref host, .. } if host == "taken"),
            "{e}"
        );
        assert!(pod.link("eth1").unwrap().is_none(), "pod end left behind");
    });
    assert!(h.link_json("veth0").is_none());
    assert!(p.link_json("eth1").is_none());
    // the pre-existing eth0 is untouched
    assert_eq!(
        p.link_json("eth0").unwrap()["linkinfo"]["info_kind"],
        "veth"
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn port_is_enslaved_up_with_hairpin_and_isolated_and_promisc_toggles() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let host = k.host();
        let br = host
            .ensure_bridge("cni0", &NewBridge::default())
            .unwrap()
            .link;
        let pair = host
            .create_veth(
                &VethSpec {
                    up: false,
                    host_up: false,
                    ..veth("veth0", "eth0")
                },
                &pod,
            )
            .unwrap();
        assert!(!pair.host.admin_up);
        host.attach_to_bridge(&pair.host, &br).unwrap();
        host.set_bridge_port(
            &pair.host,
            BridgePortOpts {
                hairpin: Some(true),
                isolated: Some(true),
            },
        )
        .unwrap();
        let l = host.require_link("veth0").unwrap();
        assert_eq!(l.master, Some(br.index));
        assert!(l.admin_up);
        let f = l.bridge_port.expect("bridge port flags");
        assert!(f.hairpin && f.isolated);

        host.set_promisc(&br, true).unwrap();
        assert!(host.require_link("cni0").unwrap().promisc);
        host.set_promisc(&br, false).unwrap();
        assert!(!host.require_link("cni0").unwrap().promisc);

        let e = host.set_port_vlan(&l, 10, true).unwrap_err();
        assert!(matches!(e, NetopsError::Unsupported { .. }));
    });
    let j = h.link_json("veth0").unwrap();
    assert_eq!(j["master"], "cni0");
    assert_eq!(j["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(j["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(j["linkinfo"]["info_slave_data"]["isolated"], true);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pod_addresses_nodad_and_routes_v4_v6() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let pair = k.host().create_veth(&veth("veth0", "eth0"), &pod).unwrap();
        pod.loopback_up().unwrap();
        let eth0 = pair.peer;
        pod.add_address(&eth0, net("10.244.7.2/24"), false).unwrap();
        pod.add_address(&eth0, net("fd00:7::2/64"), false).unwrap();
        let e = pod
            .add_address(&eth0, net("10.244.7.2/24"), false)
            .unwrap_err();
        assert!(e.is_exists(), "{e}");
        pod.add_route(
            &eth0,
            &RouteSpec {
                dst: net("0.0.0.0/0"),
                gw: Some("10.244.7.1".parse().unwrap()),
                priority: None,
                onlink: false,
            },
        )
        .unwrap();
        pod.add_route(
            &eth0,
            &RouteSpec {
                dst: net("192.168.77.0/24"),
                gw: None,
                priority: Some(50),
                onlink: false,
            },
        )
        .unwrap();
        pod.add_route(
            &eth0,
            &RouteSpec {
                dst: net("::/0"),
                gw: Some("fd00:7::1".parse().unwrap()),
                priority: None,
                onlink: false,
            },
        )
        .unwrap();
        let bad = pod
            .add_route(
                &eth0,
                &RouteSpec {
                    dst: net("::/0"),
                    gw: Some("10.0.0.1".parse().unwrap()),
                    priority: None,
                    onlink: false,
                },
            )
            .unwrap_err();
        assert!(matches!(bad, NetopsError::InvalidRoute { .. }), "{bad}");

        let addrs = pod.addresses(&eth0, None).unwrap();
        assert!(addrs.contains(&net("10.244.7.2/24")), "{addrs:?}");
        assert!(addrs.contains(&net("fd00:7::2/64")), "{addrs:?}");
        assert_eq!(
            pod.addresses(&eth0, Some(Family::V4)).unwrap(),
            vec![net("10.244.7.2/24")]
        );

        let routes = pod.routes(Some(&eth0), None).unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.dst == net("0.0.0.0/0") && r.gw == Some("10.244.7.1".parse().unwrap())),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r.dst == net("192.168.77.0/24") && r.priority == Some(50)),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r.dst == net("::/0") && r.gw == Some("fd00:7::1".parse().unwrap())),
            "{routes:?}"
        );
        assert!(pod
            .routes(Some(&eth0), Some(Family::V4))
            .unwrap()
            .iter()
            .all(|r| r.dst.is_ipv4()));

        let l = pod.require_link("eth0").unwrap();
        assert!(l.admin_up);
        assert!(pod.require_link("lo").unwrap().admin_up);

        assert!(pod
            .delete_route(
                &eth0,
                &RouteSpec {
                    dst: net("192.168.77.0/24"),
                    gw: None,
                    priority: Some(50),
                    onlink: false,
                }
            )
            .unwrap());
        assert!(!pod
            .delete_route(
                &eth0,
                &RouteSpec {
                    dst: net("192.168.77.0/24"),
                    gw: None,
                    priority: Some(50),
                    onlink: false,
                }
            )
            .unwrap());
    });
    let a = p.json(&["addr", "show", "dev", "eth0"]);
    let infos = a[0]["addr_info"].as_array().unwrap();
    let v6 = infos
        .iter()
        .find(|i| i["local"] == "fd00:7::2")
        .expect("v6 addr");
    assert_eq!(v6["nodad"], true);
    assert!(v6.get("tentative").is_none());
    let r4 = p.json(&["-4", "route", "show", "default"]);
    assert_eq!(r4[0]["gateway"], "10.244.7.1");
    assert_eq!(r4[0]["dev"], "eth0");
    let r6 = p.json(&["-6", "route", "show", "default"]);
    assert_eq!(r6[0]["gateway"], "fd00:7::1");
    let lo = p.link_json("lo").unwrap();
    assert!(lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_address_is_added_once_reported_and_deleted_idempotently() {
    need_root!();
    let h = TestNs::new("h");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let br = host
            .ensure_bridge("cni0", &NewBridge::default())
            .unwrap()
            .link;
        assert!(host.ensure_address(&br, net("10.99.0.1/24")).unwrap());
        assert!(!host.ensure_address(&br, net("10.99.0.1/24")).unwrap());
        assert!(host.ensure_address(&br, net("fd99::1/64")).unwrap());
        let v4 = host.addresses(&br, Some(Family::V4)).unwrap();
        assert_eq!(v4, vec![net("10.99.0.1/24")]);
        assert!(host.delete_address(&br, net("10.99.0.1/24")).unwrap());
        assert!(!host.delete_address(&br, net("10.99.0.1/24")).unwrap());
        assert!(host.addresses(&br, Some(Family::V4)).unwrap().is_empty());
    });
    let a = h.json(&["-6", "addr", "show", "dev", "cni0"]);
    assert!(a[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["local"] == "fd99::1"));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn delete_link_is_idempotent_in_host_and_pod() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let host = k.host();
        host.create_veth(&veth("veth0", "eth0"), &pod).unwrap();
        assert!(pod.delete_link("eth0").unwrap());
        assert!(
            host.link("veth0").unwrap().is_none(),
            "deleting one end removes the pair"
        );
        assert!(!pod.delete_link("eth0").unwrap());
        assert!(!host.delete_link("veth0").unwrap());

        // A pair gone between the lookup and the retire (its pod netns being destroyed, as
        // when the runtime deletes the netns before DEL): nothing to retire, no error.
        host.create_veth(&veth("veth1", "eth1"), &pod).unwrap();
        let stale = host.require_link("veth1").unwrap();
        assert!(pod.delete_link("eth1").unwrap());
        assert!(!host.retire_veth_link(&stale, Some((&pod, "eth1"))).unwrap());
        assert!(!host.retire_veth("veth1", Some((&pod, "eth1"))).unwrap());
        assert!(host.link("nosuch").unwrap().is_none());
        let e = host.require_link("nosuch").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(errno::is_not_found(e.errno().unwrap()));
    });
    assert!(p.link_json("eth0").is_none());
    let e = NetNs::open(format!("/run/netns/cnirs-t{}-gone", std::process::id())).unwrap_err();
    assert!(matches!(e, NetopsError::NetnsNotFound { .. }));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sysctls_read_over_rtnetlink_and_written_through_a_fresh_procfs_match_proc_sys() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    let fwd4 = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
    let fwd6 = SysctlKey::parse("net.ipv6.conf.all.forwarding").unwrap();
    in_host(&h, || {
        assert_eq!(sysctl::forwarding(Family::V4).unwrap(), Some(false));
        assert_eq!(sysctl::forwarding(Family::V6).unwrap(), Some(false));
        sysctl::write(&fwd4, "1").unwrap();
        assert_eq!(sysctl::forwarding(Family::V4).unwrap(), Some(true));
        assert_eq!(sysctl::forwarding(Family::V6).unwrap(), Some(false));
        sysctl::write(&fwd6, "1").unwrap();
        assert_eq!(sysctl::forwarding(Family::V6).unwrap(), Some(true));

        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        k.host().create_veth(&veth("veth0", "eth0"), &pod).unwrap();
        let rl = SysctlKey::conf("ipv4", "veth0", "route_localnet").unwrap();
        assert_eq!(
            sysctl::ipv4_conf("veth0", Ipv4Conf::RouteLocalnet).unwrap(),
            0
        );
        assert!(sysctl::ensure_ipv4_conf_one("veth0", Ipv4Conf::RouteLocalnet).unwrap());
        assert_eq!(sysctl::read(&rl).unwrap(), "1");
        assert!(!sysctl::ensure_ipv4_conf_one("veth0", Ipv4Conf::RouteLocalnet).unwrap());
        sysctl::write(&rl, "0").unwrap();
        assert_eq!(
            sysctl::ipv4_conf("veth0", Ipv4Conf::RouteLocalnet).unwrap(),
            0
        );
        let e = sysctl::ipv4_conf("nosuch0", Ipv4Conf::RouteLocalnet).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(
            e.to_string()
                .contains("net.ipv4.conf.nosuch0.route_localnet"),
            "{e}"
        );

        let off = SysctlKey::conf("ipv6", "veth0", "disable_ipv6").unwrap();
        assert_eq!(sysctl::read(&off).unwrap(), "0");
        sysctl::write_fresh(&off, "1").unwrap();
        assert_eq!(sysctl::read(&off).unwrap(), "1");
        let e = sysctl::write_fresh(
            &SysctlKey::conf("ipv6", "nosuch0", "disable_ipv6").unwrap(),
            "1",
        )
        .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        // the pod's netns saw none of it
        assert_eq!(sysctl::read_in(&ns, &fwd4).unwrap(), "0");
        let pod_off = SysctlKey::conf("ipv6", "eth0", "disable_ipv6").unwrap();
        assert_eq!(sysctl::read_in(&ns, &pod_off).unwrap(), "0");
    });
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sysctl_is_written_in_the_given_netns_only() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    let fwd = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        k.host().create_veth(&veth("veth0", "eth0"), &pod).unwrap();
        sysctl::write_in(&ns, &fwd, "1").unwrap();
        assert_eq!(sysctl::read_in(&ns, &fwd).unwrap(), "1");
        // this thread is in the test host netns, which is untouched
        assert_eq!(sysctl::read(&fwd).unwrap(), "0");
        let dad = SysctlKey::conf("ipv6", "eth0", "accept_dad").unwrap();
        sysctl::write_in(&ns, &dad, "0").unwrap();
        assert_eq!(sysctl::read_in(&ns, &dad).unwrap(), "0");
        // eth0 exists only in the pod
        let e = sysctl::read(&dad).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let rl = SysctlKey::conf("ipv4", "veth0", "route_localnet").unwrap();
        sysctl::write(&rl, "1").unwrap();
        assert_eq!(sysctl::read(&rl).unwrap(), "1");
    });
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.name,
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
}

/// A plan of ops run on the real kernel: the last step fails (a route via a gateway outside
/// every subnet of the interface), and everything the earlier steps created is gone.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn failed_op_rolls_back_the_bridge_veth_and_addresses_in_the_kernel() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let host = k.host();
        let n = |s: &str| IfName::new(s).unwrap();
        let plan = vec![
            Op::CreateBridge {
                name: n("cni0"),
                mtu: None,
                mcast_snooping: false,
            },
            Op::AddAddr {
                ns: Ns::Host,
                link: n("cni0"),
                cidr: net("10.98.0.1/24"),
                dad: false,
            },
            Op::CreateVeth {
                host: n("veth0"),
                peer: n("eth0"),
                netns: p.path.clone(),
                mtu: None,
                peer_mac: None,
            },
            Op::SetMaster {
                link: n("veth0"),
                bridge: n("cni0"),
            },
            Op::AddAddr {
                ns: Ns::Pod,
                link: n("eth0"),
                cidr: net("10.98.0.2/24"),
                dad: false,
            },
            Op::AddRoute {
                ns: Ns::Pod,
                link: n("eth0"),
                route: RouteSpec {
                    dst: net("10.99.0.0/16"),
                    gw: Some("192.0.2.1".parse().unwrap()),
                    priority: None,
                    onlink: false,
                },
            },
        ];
        let mut x = KernelExec::new(&host, &pod);
        let f = apply(&plan, &mut x).unwrap_err();
        assert_eq!(f.step, 5, "{}", f.error);
        assert!(f.undo_errors.is_empty(), "{:?}", f.undo_errors);
        assert!(host.link("veth0").unwrap().is_none());
        assert!(pod.link("eth0").unwrap().is_none());
        assert!(
            host.link("cni0").unwrap().is_none(),
            "unused bridge removed"
        );
    });
}

/// The whole bridge attachment, in process, bridge already present.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn attachment_sequence_is_fast() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    let (times, total) = in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let br = host
            .ensure_bridge("cni0", &NewBridge::default())
            .unwrap()
            .link;
        host.ensure_address(&br, net("10.97.0.1/24")).unwrap();
        let t0 = Instant::now();
        let ns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&ns).unwrap();
        let t_pod = t0.elapsed();
        let br = host
            .ensure_bridge("cni0", &NewBridge::default())
            .unwrap()
            .link;
        let t_br = t0.elapsed();
        let pair = host.create_veth(&veth("veth0", "eth0"), &pod).unwrap();
        let t_veth = t0.elapsed();
        host.attach_to_bridge(&pair.host, &br).unwrap();
        host.set_bridge_port(
            &pair.host,
            BridgePortOpts {
                hairpin: Some(true),
                isolated: None,
            },
        )
        .unwrap();
        let t_master = t0.elapsed();
        pod.loopback_up().unwrap();
        pod.add_address(&pair.peer, net("10.97.0.2/24"), false)
            .unwrap();
        pod.add_route(
            &pair.peer,
            &RouteSpec {
                dst: net("0.0.0.0/0"),
                gw: Some("10.97.0.1".parse().unwrap()),
                priority: None,
                onlink: false,
            },
        )
        .unwrap();
        let total = t0.elapsed();
        (
            format!("pod handle {t_pod:?}, ensure_bridge {:?}, veth {:?}, master+hairpin {:?}, lo+addr+route {:?}",
                t_br - t_pod, t_veth - t_br, t_master - t_veth, total - t_master),
            total,
        )
    });
    eprintln!("attachment sequence: total {total:?} ({times})");
    let r4 = p.json(&["-4", "route", "show", "default"]);
    assert_eq!(r4[0]["gateway"], "10.97.0.1");
    assert_eq!(h.link_json("veth0").unwrap()["master"], "cni0");
    // Generous bound: the point is "no 20-40 ms netns move".
    assert!(total.as_millis() < 500, "{total:?}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn concurrent_ensure_bridge_agrees_on_one_bridge() {
    need_root!();
    let h = TestNs::new("h");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    NetNs::open(&h.path).unwrap().enter().unwrap();
                    let k = Kernel::new().unwrap();
                    k.host()
                        .ensure_bridge("brrace", &NewBridge::default())
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(results.iter().filter(|b| b.created).count() <= 1);
    assert!(results
        .iter()
        .all(|b| b.link.index == results[0].link.index));
    assert!(results.iter().all(|b| b.link.admin_up));
    assert!(h.link_json("brrace").is_some());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn vxlan_is_created_on_a_bridge_with_flood_and_pod_fdb_entries_and_neighbours() {
    need_root!();
    let h = TestNs::new("h");
    h.ip_ok(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    h.ip_ok(&["link", "set", "ul0p", "up"]);
    h.ip_ok(&["addr", "add", "10.240.9.1/24", "dev", "ul0"]);
    h.ip_ok(&["link", "set", "ul0", "up"]);
    h.ip_ok(&[
        "route",
        "add",
        "default",
        "via",
        "10.240.9.254",
        "dev",
        "ul0",
    ]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let ul = host.default_route_link().unwrap().unwrap();
        assert_eq!(ul.name, "ul0");
        let local = host.first_ipv4(&ul).unwrap().unwrap();
        assert_eq!(local.to_string(), "10.240.9.1");
        let spec = netops::VxlanSpec {
            name: "vx42".into(),
            vni: 42,
            local: local.into(),
            underlay: Some(ul.index),
            port: netops::VXLAN_PORT,
            learning: false,
            mtu: Some(1450),
            mac: None,
        };
        let vx = host.ensure_vxlan(&spec).unwrap();
        assert!(vx.created);
        assert_eq!(vx.vni, Some(42));
        let again = host.ensure_vxlan(&spec).unwrap();
        assert!(!again.created);
        // Same name, other VNI: not ours.
        let e = host
            .ensure_vxlan(&netops::VxlanSpec {
                vni: 43,
                ..spec.clone()
            })
            .unwrap_err();
        assert!(matches!(e, NetopsError::VxlanMismatch { .. }), "{e}");
        let br = host
            .ensure_bridge(
                "br42",
                &NewBridge {
                    mtu: Some(1450),
                    ..Default::default()
                },
            )
            .unwrap()
            .link;
        host.attach_to_bridge(&vx.link, &br).unwrap();
        let flood = |d: &str| netops::FdbEntry {
            mac: netops::FLOOD_MAC.0,
            dst: d.parse().unwrap(),
        };
        let pod = netops::FdbEntry {
            mac: [0x0a, 0x58, 0, 0, 0, 7],
            dst: "10.240.9.2".parse().unwrap(),
        };
        for e in [flood("10.240.9.2"), flood("10.240.9.3"), pod] {
            host.fdb_add(&vx.link, &e).unwrap();
            host.fdb_add(&vx.link, &e).unwrap(); // idempotent
        }
        let mut have = host.fdb_entries(&vx.link).unwrap();
        have.sort();
        let mut want = vec![flood("10.240.9.2"), flood("10.240.9.3"), pod];
        want.sort();
        assert_eq!(have, want);
        assert!(host.fdb_del(&vx.link, &flood("10.240.9.2")).unwrap());
        // Deleting it again is not an error (the kernel may or may not say ENOENT).
        host.fdb_del(&vx.link, &flood("10.240.9.2")).unwrap();
        assert_eq!(host.fdb_entries(&vx.link).unwrap().len(), 2);
        let ip = "10.99.0.7".parse().unwrap();
        host.neigh_replace(&br, ip, MacAddr(pod.mac)).unwrap();
        host.neigh_replace(&br, ip, MacAddr(pod.mac)).unwrap();
        assert!(host.neigh_del(&br, ip).unwrap());
        assert!(!host.neigh_del(&br, ip).unwrap());
        assert_eq!(host.vxlans().unwrap().len(), 1);
    });
    let j = h.link_json("vx42").unwrap();
    let d = &j["linkinfo"]["info_data"];
    assert_eq!(d["id"], 42);
    assert_eq!(d["port"], 4789);
    assert_eq!(d["learning"], false);
    assert_eq!(d["local"], "10.240.9.1");
    assert_eq!(j["master"], "br42");
    assert_eq!(j["mtu"], 1450);
    let o = Command::new("bridge")
        .args(["-n", &h.name, "fdb", "show", "dev", "vx42"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("00:00:00:00:00:00 dst 10.240.9.3"), "{text}");
    assert!(text.contains("0a:58:00:00:00:07 dst 10.240.9.2"), "{text}");
    assert!(!text.contains("00:00:00:00:00:00 dst 10.240.9.2"), "{text}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn routed_overlay_device_entries_rules_and_table_routes_over_netlink() {
    need_root!();
    let h = TestNs::new("h");
    h.ip_ok(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    h.ip_ok(&["link", "set", "ul0p", "up"]);
    h.ip_ok(&["addr", "add", "fd40::1/64", "dev", "ul0", "nodad"]);
    h.ip_ok(&["link", "set", "ul0", "up"]);
    h.ip_ok(&["link", "add", "br7", "type", "bridge"]);
    h.ip_ok(&["link", "set", "br7", "up"]);
    let mac = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    let table = 0x6300_0007;
    let ll: std::net::Ipv6Addr = "fe80::22:22ff:fe22:2222".parse().unwrap();
    let peer_mac = MacAddr([0x02, 0x22, 0x22, 0x22, 0x22, 0x22]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let ul = host.require_link("ul0").unwrap();
        // An IPv6 underlay: the VTEP is the first global IPv6 address.
        let v6 = host.first_global_ipv6(&ul).unwrap().unwrap();
        assert_eq!(v6.to_string(), "fd40::1");
        assert_eq!(host.first_ipv4(&ul).unwrap(), None);
        let spec = netops::VxlanSpec {
            name: "vx7".into(),
            vni: 7,
            local: v6.into(),
            underlay: Some(ul.index),
            port: netops::VXLAN_PORT,
            learning: false,
            mtu: Some(1430),
            mac: Some(mac),
        };
        let vx = host.ensure_vxlan(&spec).unwrap();
        assert!(vx.created);
        assert_eq!(vx.local, Some(v6.into()));
        assert_eq!(vx.link.mac, Some(mac));
        assert!(!host.ensure_vxlan(&spec).unwrap().created);
        // Another MAC under the same name: not ours.
        let other = netops::VxlanSpec {
            mac: Some(MacAddr([0x02, 0, 0, 0, 0, 1])),
            ..spec.clone()
        };
        assert!(matches!(
            host.ensure_vxlan(&other).unwrap_err(),
            NetopsError::VxlanMismatch { .. }
        ));
        host.set_up(&vx.link).unwrap();
        // The peer entries: FDB (v6 VTEP), a permanent neighbour, a v4 and a v6 route
        // through the link-local next hop in our table.
        let fdb = netops::FdbEntry {
            mac: peer_mac.0,
            dst: "fd40::2".parse().unwrap(),
        };
        host.fdb_add(&vx.link, &fdb).unwrap();
        assert_eq!(host.fdb_entries(&vx.link).unwrap(), vec![fdb]);
        host.neigh_replace(&vx.link, ll.into(), peer_mac).unwrap();
        let n = host.neighbours(&vx.link).unwrap();
        assert!(
            n.iter()
                .any(|x| x.ip == std::net::IpAddr::V6(ll) && x.mac == peer_mac && x.permanent),
            "{n:?}"
        );
        let routes = [
            netops::PeerRoute {
                dst: net("10.77.1.0/25"),
                via: ll,
            },
            netops::PeerRoute {
                dst: net("fd77::80/121"),
                via: ll,
            },
        ];
        for r in &routes {
            host.peer_route_add(&vx.link, table, r).unwrap();
            host.peer_route_add(&vx.link, table, r).unwrap(); // idempotent
        }
        let mut have = host.peer_routes(&vx.link, table).unwrap();
        have.sort();
        assert_eq!(have, routes.to_vec());
        assert!(host.peer_route_del(&vx.link, table, &routes[0]).unwrap());
        assert!(!host.peer_route_del(&vx.link, table, &routes[0]).unwrap());
        assert_eq!(host.peer_routes(&vx.link, table).unwrap(), vec![routes[1]]);
        // The network's table and rules, as ops (with their inverses).
        let tr = |dst: &str, target: netops::TableTarget| netops::TableRoute {
            table,
            dst: net(dst),
            target,
        };
        let troutes = [
            tr("10.77.0.0/16", netops::TableTarget::Dev("br7".into())),
            tr("0.0.0.0/0", netops::TableTarget::Unreachable),
            tr("::/0", netops::TableTarget::Unreachable),
        ];
        let rules = [
            netops::RuleSpec {
                v6: false,
                priority: 8,
                iif: None,
                dst: Some(net("10.77.0.0/16")),
                action: netops::RuleAction::Lookup(table),
            },
            netops::RuleSpec {
                v6: true,
                priority: 10,
                iif: Some("vx7".into()),
                dst: None,
                action: netops::RuleAction::Unreachable,
            },
        ];
        assert_eq!(host.missing_table_routes(&troutes).unwrap().len(), 3);
        assert_eq!(host.missing_rules(&rules).unwrap().len(), 2);
        let ops: Vec<Op> = troutes
            .iter()
            .map(|r| Op::AddTableRoute { route: r.clone() })
            .chain(rules.iter().map(|r| Op::AddRule { rule: r.clone() }))
            .collect();
        let pod = Kernel::new().unwrap();
        let podh = pod.host();
        let mut x = KernelExec::new(&host, &podh);
        let undo = apply(&ops, &mut x).unwrap();
        assert_eq!(undo.0.len(), 5, "every step created something");
        // Again: nothing new, nothing to undo.
        assert!(apply(&ops, &mut x).unwrap().0.is_empty());
        let m = host.missing_table_routes(&troutes).unwrap();
        assert!(m.is_empty(), "{m:?}");
        assert!(host.missing_rules(&rules).unwrap().is_empty());
        netops::rollback(undo, &mut x);
        assert_eq!(host.missing_table_routes(&troutes).unwrap().len(), 3);
        assert_eq!(host.missing_rules(&rules).unwrap().len(), 2);
    });
    let j = h.link_json("vx7").unwrap();
    assert_eq!(j["linkinfo"]["info_data"]["local6"], "fd40::1");
    assert_eq!(j["address"], "02:11:22:33:44:55");
    assert_eq!(j["mtu"], 1430);
    let r = h.json(&["-6", "route", "show", "table", &table.to_string()]);
    assert!(r.to_string().contains("fd77::80/121"), "{r}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn seal_rules_are_added_reported_when_missing_and_removed() {
    need_root!();
    let h = TestNs::new("h");
    let subnets = [net("10.98.0.0/24"), net("fd00:98::/64")];
    let (t_iif, t_all) = in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        // Cost: the iif rules alone, then with one subnet per family (each timed on a
        // clean slate; printed, never asserted).
        // Averages over 50 rounds after a warm-up round.
        let time = |subnets: &[IpNetwork]| {
            assert!(host.seal_bridge("cnirs-s0", subnets).unwrap());
            assert!(host.unseal_bridge("cnirs-s0", subnets).unwrap());
            let mut total = std::time::Duration::ZERO;
            for _ in 0..50 {
                let t0 = Instant::now();
                assert!(host.seal_bridge("cnirs-s0", subnets).unwrap());
                total += t0.elapsed();
                assert!(host.unseal_bridge("cnirs-s0", subnets).unwrap());
            }
            total / 50
        };
        let t_iif = time(&[]);
        let t_all = time(&subnets);
        assert!(host.seal_bridge("cnirs-s0", &subnets).unwrap());
        assert!(host.missing_seal("cnirs-s0", &subnets).unwrap().is_empty());
        // Idempotent: nothing new the second time.
        assert!(!host.seal_bridge("cnirs-s0", &subnets).unwrap());
        (t_iif, t_all)
    });
    eprintln!("seal_bridge: iif rules {t_iif:?}, iif + 2 subnets {t_all:?}");
    let v4 = h.json(&["-4", "rule"]);
    let has = |prio: u64, key: &str, val: &str, last: (&str, &str)| {
        v4.as_array()
            .unwrap()
            .iter()
            .any(|r| r["priority"] == prio && r[key] == val && r[last.0] == last.1)
    };
    assert!(has(9, "dst", "10.98.0.0", ("iif", "lo")), "{v4}");
    assert!(has(9, "dst", "10.98.0.0", ("table", "main")), "{v4}");
    assert!(
        has(10, "dst", "10.98.0.0", ("action", "unreachable")),
        "{v4}"
    );
    assert!(
        has(10, "iif", "cnirs-s0", ("action", "unreachable")),
        "{v4}"
    );
    h.ip_ok(&[
        "-6",
        "rule",
        "del",
        "priority",
        "10",
        "to",
        "fd00:98::/64",
        "unreachable",
    ]);
    let gone = in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let m = host.missing_seal("cnirs-s0", &subnets).unwrap();
        assert!(host.unseal_bridge("cnirs-s0", &subnets).unwrap());
        assert!(!host.unseal_bridge("cnirs-s0", &subnets).unwrap());
        (m, host.missing_seal("cnirs-s0", &subnets).unwrap().len())
    });
    assert_eq!(
        gone.0,
        ["ip -6 rule priority 10 to fd00:98::/64 unreachable"]
    );
    assert_eq!(gone.1, 6, "all six rules gone after unseal");
    let show = format!("{}{}", h.json(&["-4", "rule"]), h.json(&["-6", "rule"]));
    assert!(
        !show.contains("cnirs-s0") && !show.contains("10.98.0.0") && !show.contains("fd00:98"),
        "{show}"
    );
}

// ---- macvlan, IFB, TAP, moving links, tc (issue 28) ----

/// `tc -j qdisc show dev NAME` in `ns`.
fn tc_json(ns: &TestNs, args: &[&str]) -> Value {
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.name, "tc", "-j"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if o.stdout.trim_ascii().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn macvlan_is_created_in_the_pod_under_its_final_name_even_when_the_host_has_that_name() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    h.ip_ok(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    h.ip_ok(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let pod = k.pod(&NetNs::open(&p.path).unwrap()).unwrap();
        let master = host.require_link("up0").unwrap();
        for (mode, name) in [
            (netops::MacvlanMode::Bridge, "bridge"),
            (netops::MacvlanMode::Private, "private"),
            (netops::MacvlanMode::Vepa, "vepa"),
        ] {
            let l = host
                .create_macvlan(
                    &netops::MacvlanSpec {
                        name: "eth0".into(),
                        master: master.index,
                        mode,
                        mtu: Some(1400),
                        mac: Some("02:42:ac:11:00:09".parse().unwrap()),
                        bcqueuelen: None,
                    },
                    Some(&pod),
                )
                .unwrap();
            assert_eq!(l.kind.as_deref(), Some("macvlan"));
            assert_eq!(l.macvlan_mode, Some(mode));
            assert_eq!(l.mtu, 1400);
            assert_eq!(l.mac.unwrap().to_string(), "02:42:ac:11:00:09");
            assert!(l.link_netnsid.is_some(), "the master is in another netns");
            let j = p.link_json("eth0").unwrap();
            assert_eq!(j["linkinfo"]["info_data"]["mode"], name, "{j}");
            // A second one of the same name in the pod: EEXIST, nothing created.
            let e = host
                .create_macvlan(
                    &netops::MacvlanSpec {
                        name: "eth0".into(),
                        master: master.index,
                        mode,
                        mtu: None,
                        mac: None,
                        bcqueuelen: None,
                    },
                    Some(&pod),
                )
                .unwrap_err();
            assert!(e.is_exists(), "{e}");
            assert!(pod.delete_link("eth0").unwrap());
        }
        assert!(
            host.link("eth0").unwrap().is_some(),
            "the host's eth0 untouched"
        );
        // Passthru takes the master's MAC; one per master.
        let pt = host
            .create_macvlan(
                &netops::MacvlanSpec {
                    name: "net1".into(),
                    master: master.index,
                    mode: netops::MacvlanMode::Passthru,
                    mtu: None,
                    mac: None,
                    bcqueuelen: None,
                },
                Some(&pod),
            )
            .unwrap();
        assert_eq!(pt.macvlan_mode, Some(netops::MacvlanMode::Passthru));
        // linkInContainer: master and macvlan in the pod.
        p.ip_ok(&[
            "link", "add", "inner", "type", "veth", "peer", "name", "innerp",
        ]);
        let inner = pod.require_link("inner").unwrap();
        let l = pod
            .create_macvlan(
                &netops::MacvlanSpec {
                    name: "net2".into(),
                    master: inner.index,
                    mode: netops::MacvlanMode::Bridge,
                    mtu: None,
                    mac: None,
                    bcqueuelen: None,
                },
                None,
            )
            .unwrap();
        assert_eq!(l.parent, Some(inner.index));
        assert_eq!(l.link_netnsid, None);
    });
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_link_moves_into_the_pod_renamed_with_its_alias_and_back() {
    need_root!();
    let h = TestNs::new("h");
    let p = TestNs::new("p");
    h.ip_ok(&["link", "add", "hd0", "type", "veth", "peer", "name", "hd0p"]);
    h.ip_ok(&["addr", "add", "10.77.0.1/24", "dev", "hd0"]);
    p.ip_ok(&[
        "link", "add", "taken", "type", "veth", "peer", "name", "takenp",
    ]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let pns = NetNs::open(&p.path).unwrap();
        let pod = k.pod(&pns).unwrap();
        let dev = host.require_link("hd0").unwrap();
        host.set_alias(&dev, "hd0").unwrap();
        assert_eq!(
            host.require_link("hd0").unwrap().alias.as_deref(),
            Some("hd0")
        );
        // A name taken in the pod: refused, the device stays where it was.
        let e = host.move_link(&dev, &pod, "taken").unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(host.link("hd0").unwrap().is_some());
        host.move_link(&dev, &pod, "net0").unwrap();
        assert!(host.link("hd0").unwrap().is_none());
        let inpod = pod.require_link("net0").unwrap();
        assert_eq!(inpod.alias.as_deref(), Some("hd0"), "the alias travels");
        assert!(!inpod.admin_up);
        assert!(
            pod.addresses(&inpod, Some(Family::V4)).unwrap().is_empty(),
            "moved without addresses"
        );
        // Its own name taken in the pod: it arrives under the new one all the same.
        p.ip_ok(&["link", "add", "hd1", "type", "veth", "peer", "name", "hd1p"]);
        h.ip_ok(&["link", "add", "hd1", "type", "veth", "peer", "name", "hd1x"]);
        let hd1 = host.require_link("hd1").unwrap();
        host.move_link(&hd1, &pod, "net1").unwrap();
        assert!(pod.link("net1").unwrap().is_some());
        // And back, under its old name.
        pod.move_link(&inpod, &host, "hd0").unwrap();
        let back = host.require_link("hd0").unwrap();
        host.set_alias(&back, "").unwrap();
        assert_eq!(host.require_link("hd0").unwrap().alias, None);
    });
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn addresses_without_prefix_route_and_routes_with_a_source() {
    need_root!();
    let h = TestNs::new("h");
    h.ip_ok(&["link", "add", "a0", "type", "veth", "peer", "name", "a0p"]);
    h.ip_ok(&["link", "set", "a0", "up"]);
    h.ip_ok(&["link", "set", "a0p", "up"]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let l = host.require_link("a0").unwrap();
        let flags = netops::AddrFlags {
            nodad: true,
            noprefixroute: true,
        };
        host.add_address_with(&l, net("10.78.0.5/24"), flags)
            .unwrap();
        host.add_address_with(&l, net("fd00:78::5/64"), flags)
            .unwrap();
        let routes = host.routes(Some(&l), None).unwrap();
        assert!(
            !routes
                .iter()
                .any(|r| r.dst == net("10.78.0.0/24") || r.dst == net("fd00:78::/64")),
            "a prefix route was made: {routes:?}"
        );
        let gw: std::net::IpAddr = "10.78.0.1".parse().unwrap();
        let src: std::net::IpAddr = "10.78.0.5".parse().unwrap();
        host.add_route_ext(
            &l,
            &RouteSpec {
                dst: net("10.78.0.1/32"),
                gw: None,
                priority: None,
                onlink: false,
            },
            &netops::RouteExtra {
                src: Some(src),
                host_scope: false,
            },
        )
        .unwrap();
        host.add_route_ext(
            &l,
            &RouteSpec {
                dst: net("10.78.0.0/24"),
                gw: Some(gw),
                priority: None,
                onlink: false,
            },
            &netops::RouteExtra {
                src: Some(src),
                host_scope: false,
            },
        )
        .unwrap();
        let e = host
            .add_route_ext(
                &l,
                &RouteSpec {
                    dst: net("10.79.0.0/24"),
                    gw: Some(gw),
                    priority: None,
                    onlink: false,
                },
                &netops::RouteExtra {
                    src: Some("fd00::1".parse().unwrap()),
                    host_scope: false,
                },
            )
            .unwrap_err();
        assert!(matches!(e, NetopsError::InvalidRoute { .. }), "{e}");
    });
    let v = h.json(&["-4", "route", "show", "dev", "a0"]);
    let text = v.to_string();
    assert!(
        text.contains(r#""dst":"10.78.0.1","#) && text.contains(r#""scope":"link""#),
        "{text}"
    );
    assert!(
        text.contains(r#""gateway":"10.78.0.1""#) && text.contains(r#""prefsrc":"10.78.0.5""#),
        "{text}"
    );
    let a = h.json(&["addr", "show", "dev", "a0"]).to_string();
    assert!(a.contains("noprefixroute"), "{a}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn tap_is_persistent_exclusive_and_owned() {
    need_root!();
    let p = TestNs::new("p");
    let pns = NetNs::open(&p.path).unwrap();
    let spec = netops::TapSpec {
        name: "tap0".into(),
        multi_queue: true,
        vnet_hdr: true,
        owner: Some(54321),
        group: Some(54322),
    };
    netops::create_tap(&pns, &spec).unwrap();
    let j = p
        .link_json("tap0")
        .expect("tap0 exists after the fd was closed");
    let info = &j["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tap", "{j}");
    assert_eq!(info["multi_queue"], true, "{j}");
    assert_eq!(info["vnet_hdr"], true, "{j}");
    assert_eq!(info["pi"], false, "{j}");
    assert_eq!(info["user"], 54321, "{j}");
    assert_eq!(info["group"], 54322, "{j}");
    // IFF_TUN_EXCL: the same name again is refused, not attached to.
    let e = netops::create_tap(&pns, &spec).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    // A plain one, no owner: anyone with CAP_NET_ADMIN only.
    netops::create_tap(
        &pns,
        &netops::TapSpec {
            name: "tap1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let j = p.link_json("tap1").unwrap();
    assert_eq!(j["linkinfo"]["info_data"]["multi_queue"], false, "{j}");
    assert!(j["linkinfo"]["info_data"].get("user").is_none(), "{j}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn ifb_tbf_ingress_and_a_redirect_filter_as_the_reference_bandwidth_sets_them() {
    need_root!();
    let h = TestNs::new("h");
    h.ip_ok(&["link", "add", "vh", "type", "veth", "peer", "name", "vp"]);
    in_host(&h, || {
        let k = Kernel::new().unwrap();
        let host = k.host();
        let veth = host.require_link("vh").unwrap();
        let ifb = host.create_ifb("bwp0", Some(1400)).unwrap();
        assert_eq!(ifb.kind.as_deref(), Some("ifb"));
        assert!(ifb.admin_up);
        assert_eq!(ifb.mtu, 1400);
        assert!(host.create_ifb("bwp0", None).unwrap_err().is_exists());
        // 20 Mbit/s, 256 KB bucket.
        let tbf = netops::tc::TbfParams {
            rate: 2_500_000,
            buffer: 1_600_000,
            limit: 318_500,
        };
        host.add_tbf(&ifb, &tbf).unwrap();
        host.add_tbf(&veth, &tbf).unwrap();
        assert!(host.add_tbf(&veth, &tbf).unwrap_err().is_exists());
        host.add_ingress_qdisc(&veth).unwrap();
        let redirect = netops::tc::U32Filter {
            parent: netops::tc::PARENT_INGRESS,
            prio: 1,
            protocol: netops::tc::ETH_P_ALL,
            keys: vec![],
            classid: Some(0x0001_0001),
            redirect: Some(ifb.index),
        };
        host.add_u32_filter(&veth, &redirect).unwrap();
        let pass = netops::tc::U32Filter {
            parent: netops::tc::PARENT_INGRESS,
            prio: 2,
            protocol: netops::tc::ETH_P_IP,
            keys: vec![netops::tc::U32Match {
                val: 0x0a00_0000,
                mask: 0xff00_0000,
                off: 16,
            }],
            classid: None,
            redirect: None,
        };
        host.add_u32_filter(&veth, &pass).unwrap();
        // Read back exactly as sent.
        let qd = host.qdiscs(&ifb).unwrap();
        let root = qd.iter().find(|q| q.kind == "tbf").expect("tbf on the ifb");
        assert_eq!(root.tbf, Some(tbf));
        assert_eq!(root.handle, netops::tc::ROOT_HANDLE);
        let qd = host.qdiscs(&veth).unwrap();
        assert!(qd
            .iter()
            .any(|q| q.kind == "ingress" && q.handle == netops::tc::INGRESS_HANDLE));
        let fs = host.u32_filters(&veth, netops::tc::PARENT_INGRESS).unwrap();
        assert_eq!(fs, vec![redirect.clone(), pass.clone()], "{fs:?}");
        // Above 4 GB/s the rate goes in TCA_TBF_RATE64.
        let fast = netops::tc::TbfParams {
            rate: 6_250_000_000,
            buffer: 15_625,
            limit: 100_000_000,
        };
        assert!(host.delete_qdisc(&ifb, 0xffff_ffff).unwrap());
        host.add_tbf(&ifb, &fast).unwrap();
        assert_eq!(
            host.qdiscs(&ifb).unwrap().iter().find_map(|q| q.tbf),
            Some(fast)
        );
        // Delete: root and ingress; again is Ok(false).
        assert!(host.delete_qdisc(&veth, 0xffff_ffff).unwrap());
        assert!(host.delete_qdisc(&veth, 0xffff_fff1).unwrap());
        assert!(!host.delete_qdisc(&veth, 0xffff_fff1).unwrap());
        assert!(!host.delete_qdisc(&veth, 0xffff_ffff).unwrap());
        assert!(host
            .u32_filters(&veth, netops::tc::PARENT_INGRESS)
            .unwrap()
            .is_empty());
        // clsact: both hooks.
        host.add_clsact(&veth).unwrap();
        let eg = netops::tc::U32Filter {
            parent: netops::tc::PARENT_CLSACT_EGRESS,
            ..redirect.clone()
        };
        host.add_u32_filter(&veth, &eg).unwrap();
        assert_eq!(
            host.u32_filters(&veth, netops::tc::PARENT_CLSACT_EGRESS)
                .unwrap(),
            vec![eg]
        );
    });
    // What `tc` sees: the reference's shape.
    let v = tc_json(&h, &["qdisc", "show", "dev", "bwp0"]).to_string();
    assert!(
        v.contains(r#""kind":"tbf""#) && v.contains(r#""handle":"1:""#),
        "{v}"
    );
    let f = tc_json(&h, &["filter", "show", "dev", "vh", "egress"]).to_string();
    assert!(f.contains("mirred") && f.contains("bwp0"), "{f}");
}
