//! The verbs' orchestration with fakes handed in through [`Ctx`] (no root, no kernel, no
//! etcd): what is touched, in which order, what is written to the cluster, what is released
//! and reported when a step fails.

use std::{cell::RefCell, time::Duration};

use bridge_plugin::{
    config::BridgeSpec,
    plan::{Ids, Observed, Plan},
};
use cni_core::{CniResult, Command, ErrorCode, Request};
use etcd::store::MemStore;
use netops::{Link, Op};

use super::*;
use crate::{
    ctx::NetLock,
    plan::{HostView, Underlay},
};

#[derive(Default)]
struct FakeHost {
    calls: RefCell<Vec<String>>,
    /// The network's device exists (as this network's).
    device: bool,
    /// Pods of the network remain after this one's DEL.
    in_use: bool,
    fail_apply: bool,
    fail_detach: bool,
    plans: RefCell<Vec<String>>,
}

impl FakeHost {
    fn note(&self, what: &str) {
        self.calls.borrow_mut().push(what.to_string());
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

fn vtep() -> std::net::IpAddr {
    "10.240.0.1".parse().unwrap()
}

impl HostSide for FakeHost {
    fn underlay(&self, _: &OverlaySpec) -> Result<Underlay, OverlayError> {
        self.note("underlay");
        Ok(Underlay {
            link: Link {
                name: "ul0".into(),
                index: 2,
                mtu: 1500,
                ..Link::default()
            },
            vtep: vtep(),
        })
    }
    fn lock(&self, _: &OverlaySpec, exclusive: bool) -> Result<NetLock, OverlayError> {
        self.note(if exclusive {
            "lock-exclusive"
        } else {
            "lock-shared"
        });
        Ok(NetLock(None))
    }
    fn read(&self, spec: &OverlaySpec, _: &BridgeSpec, _: &Ids) -> Result<HostView, OverlayError> {
        self.note("read");
        let mac = netops::MacAddr(::cluster::vxlan_mac(spec.vni, vtep()));
        Ok(HostView {
            bridge: Default::default(),
            vxlan: self
                .device
                .then_some((Some(spec.vni), Some(vtep()), Some(mac))),
        })
    }
    fn apply(&self, plan: &Plan) -> Result<Observed, OverlayError> {
        self.note("apply");
        self.plans.borrow_mut().push(plan.text());
        if self.fail_apply {
            return Err(OverlayError::Check("injected apply failure".into()));
        }
        Ok(Observed::default())
    }
    fn detach(&self, _: &Request, _: &OverlaySpec) -> Vec<OverlayError> {
        self.note("detach");
        if self.fail_detach {
            return vec![OverlayError::Check("veth delete failed".into())];
        }
        Vec::new()
    }
    fn in_use(&self, _: &OverlaySpec) -> Result<bool, OverlayError> {
        Ok(self.in_use)
    }
    fn teardown(&self, ops: &[Op]) -> Vec<OverlayError> {
        self.note(&format!("teardown {}", ops.len()));
        Vec::new()
    }
    fn check(
        &self,
        _: &Request,
        _: &OverlaySpec,
        _: &BridgeSpec,
        _: &CniResult,
        _: &Underlay,
    ) -> Result<(), OverlayError> {
        self.note("check");
        Ok(())
    }
    fn gc(&self, _: &Request, _: &OverlaySpec) -> Vec<OverlayError> {
        self.note("gc");
        vec![OverlayError::Check("a retired link would not go".into())]
    }
}

#[derive(Default)]
struct FakeIpam {
    calls: RefCell<Vec<Command>>,
    fail: Option<Command>,
}

impl Ipam for FakeIpam {
    fn run(&self, _: &Request, cmd: Command) -> Result<Option<CniResult>, CniError> {
        self.calls.borrow_mut().push(cmd);
        if self.fail == Some(cmd) {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                "etcd-ipam: etcd down",
            ));
        }
        Ok((cmd == Command::Add).then(|| {
            CniResult::from_json(
                &serde_json::json!({"cniVersion": "1.0.0",
                    "ips": [{"address": "10.64.1.5/12", "gateway": "10.64.0.1"}]}),
                "ipam",
            )
            .unwrap()
        }))
    }
}

fn req(cmd: Command, extra: serde_json::Value) -> Request {
    let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "type": "overlay",
        "vni": 42, "isDefaultGateway": true, "ipam": {"type": "etcd-ipam",
        "etcdEndpoints": ["http://127.0.0.1:1"], "ranges": [[{"subnet": "10.64.0.0/12"}]]}});
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    Request::build(cmd, "c1", Some("/x"), "eth0", conf.to_string().as_bytes()).unwrap()
}

fn ctx<'a>(host: &'a FakeHost, ipam: &'a dyn Ipam, store: &'a dyn etcd::store::Store) -> Ctx<'a> {
    Ctx {
        node: crate::schema::NodeName {
            name: "h1".into(),
            source: "a test",
        },
        host,
        ipam,
        etcd: Some(store),
        agent: None,
    }
}

#[test]
fn the_first_add_on_a_host_registers_the_network_and_creates_the_device_exclusively() {
    let (host, ipam, store) = (
        FakeHost::default(),
        FakeIpam::default(),
        MemStore::default(),
    );
    let r = add(
        &ctx(&host, &ipam, &store),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap();
    assert_eq!(
        host.calls(),
        [
            "underlay",
            "lock-shared",
            "read",
            "lock-exclusive",
            "read",
            "apply"
        ]
    );
    assert_eq!(*ipam.calls.borrow(), [Command::Add]);
    assert_eq!(store.keys("/cnirs/networks/"), ["/cnirs/networks/ov"]);
    assert_eq!(store.writes(), 1, "the network's record, nothing per pod");
    let plan = host.plans.borrow()[0].clone();
    for want in [
        "ip link add cnirsvx42 address 02:",
        "type vxlan id 42 local 10.240.0.1",
        "ip -4 route add 10.64.0.0/12 dev cnirsbr42 table",
        "ip -4 route add unreachable default table",
        "ip -4 rule add priority 11 to 10.64.0.0/12 lookup",
        "addr add 10.64.1.5/25 dev eth0",
        "route add default via 10.64.0.1 onlink dev eth0",
        "sysctl -w net.ipv4.conf.cnirsbr42.send_redirects=0",
    ] {
        assert!(plan.contains(want), "{want} missing from:\n{plan}");
    }
    // The result says what the pod has: its block as its prefix.
    assert_eq!(r.ips[0].address.to_string(), "10.64.1.5/25");
}

#[test]
fn a_later_add_shares_the_lock_writes_nothing_and_creates_no_device() {
    let host = FakeHost {
        device: true,
        ..FakeHost::default()
    };
    let (ipam, store) = (FakeIpam::default(), MemStore::default());
    store.put("/cnirs/networks/ov", br#"{"vni":42}"#);
    let w = store.writes();
    add(
        &ctx(&host, &ipam, &store),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap();
    assert_eq!(host.calls(), ["underlay", "lock-shared", "read", "apply"]);
    assert_eq!(store.writes(), w, "no etcd write of the overlay's own");
    assert!(!host.plans.borrow()[0].contains("type vxlan"));
}

#[test]
fn a_failed_apply_releases_the_address() {
    let host = FakeHost {
        fail_apply: true,
        ..FakeHost::default()
    };
    let (ipam, store) = (FakeIpam::default(), MemStore::default());
    let e = add(
        &ctx(&host, &ipam, &store),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::CheckFailed.as_u32(), "{e}");
    assert_eq!(*ipam.calls.borrow(), [Command::Add, Command::Del]);
}

#[test]
fn a_network_of_another_vni_or_a_shared_node_name_is_refused_before_any_side_effect() {
    let (host, ipam, store) = (
        FakeHost::default(),
        FakeIpam::default(),
        MemStore::default(),
    );
    store.put("/cnirs/networks/ov", br#"{"vni":7}"#);
    let e = add(
        &ctx(&host, &ipam, &store),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict.as_u32(), "{e}");
    assert_eq!(host.calls(), ["underlay"]);
    assert!(ipam.calls.borrow().is_empty());
    let store = MemStore::default();
    store.put("/cnirs/hosts/h1", br#"{"vtep":"10.240.0.3"}"#);
    let e = add(
        &ctx(&host, &ipam, &store),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidConfig.as_u32(), "{e}");
    assert!(
        e.msg.contains("10.240.0.3") && e.msg.contains("h1"),
        "{}",
        e.msg
    );
    assert!(ipam.calls.borrow().is_empty());
}

/// A client whose only endpoint refuses connections, giving up after 200 ms.
fn dead_etcd() -> etcd::Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    etcd::Client::with_options(
        &[format!("http://127.0.0.1:{port}")],
        etcd::Options {
            retry_deadline: Duration::from_millis(200),
            ..etcd::Options::default()
        },
    )
    .unwrap()
}

#[test]
fn add_with_etcd_down_fails_try_again_before_any_lock_device_or_address() {
    let (host, ipam, etcd) = (FakeHost::default(), FakeIpam::default(), dead_etcd());
    let e = add(
        &ctx(&host, &ipam, &etcd),
        &req(Command::Add, serde_json::json!({})),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TryAgainLater.as_u32(), "{e}");
    assert_eq!(host.calls(), ["underlay"]);
    assert!(ipam.calls.borrow().is_empty());
}

#[test]
fn del_goes_on_past_every_failure_reports_them_all_and_takes_the_last_pods_network_away() {
    let host = FakeHost {
        fail_detach: true,
        ..FakeHost::default()
    };
    let ipam = FakeIpam {
        fail: Some(Command::Del),
        ..FakeIpam::default()
    };
    let store = MemStore::default();
    let e = del(
        &ctx(&host, &ipam, &store),
        &req(Command::Del, serde_json::json!({})),
    )
    .unwrap_err();
    // The first failure decides the code; the IPAM's is in the details.
    assert_eq!(e.code(), ErrorCode::CheckFailed.as_u32(), "{e}");
    assert!(e.details.contains("etcd down"), "{}", e.details);
    // No pod left: the device, table and rules go, under the exclusive lock.
    let calls = host.calls();
    assert_eq!(calls[..2], ["detach", "lock-exclusive"]);
    assert!(calls[2].starts_with("teardown "), "{calls:?}");
    assert_eq!(store.writes(), 0, "DEL writes nothing of the overlay's own");
}

#[test]
fn del_of_one_pod_among_several_leaves_the_network_on_the_host() {
    let host = FakeHost {
        in_use: true,
        ..FakeHost::default()
    };
    let (ipam, store) = (FakeIpam::default(), MemStore::default());
    del(
        &ctx(&host, &ipam, &store),
        &req(Command::Del, serde_json::json!({})),
    )
    .unwrap();
    assert_eq!(host.calls(), ["detach"]);
    assert_eq!(*ipam.calls.borrow(), [Command::Del]);
}

#[test]
fn gc_reports_every_failure_not_only_the_first() {
    let host = FakeHost {
        in_use: true,
        ..FakeHost::default()
    };
    let ipam = FakeIpam {
        fail: Some(Command::Gc),
        ..FakeIpam::default()
    };
    let store = MemStore::default();
    let e = gc(
        &ctx(&host, &ipam, &store),
        &req(Command::Gc, serde_json::json!({})),
    )
    .unwrap_err();
    assert!(e.msg.contains("retired link"), "{}", e.msg);
    assert!(e.details.contains("etcd down"), "{}", e.details);
    // A node name held by another VTEP: this host's GC collects no address.
    let store = MemStore::default();
    store.put("/cnirs/hosts/h1", br#"{"vtep":"10.240.0.9"}"#);
    let ipam = FakeIpam::default();
    let e = gc(
        &ctx(&host, &ipam, &store),
        &req(Command::Gc, serde_json::json!({})),
    )
    .unwrap_err();
    assert!(e.details.contains("10.240.0.9"), "{}", e.details);
    assert!(ipam.calls.borrow().is_empty());
}

#[test]
fn an_ipam_other_than_etcd_ipam_is_refused() {
    let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "type": "overlay",
        "vni": 42, "ipam": {"type": "host-local", "etcdEndpoints": ["http://127.0.0.1:1"],
        "ranges": [[{"subnet": "10.64.0.0/12"}]]}});
    let r = Request::build(
        Command::Add,
        "c1",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let e = config::parse(&r).unwrap_err();
    assert!(e.msg.contains("ipam.type"), "{}", e.msg);
    conf["ipam"]["type"] = serde_json::json!("etcd-ipam");
    let r = Request::build(
        Command::Add,
        "c1",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    config::parse(&r).unwrap();
}

fn shared_ipam<'a>(
    store: &'a dyn etcd::store::Store,
    dir: &tempfile::TempDir,
) -> crate::SharedEtcdIpam<'a> {
    crate::SharedEtcdIpam::new(
        store,
        etcd_ipam::EtcdIpam {
            node: "h1".into(),
            options: etcd::Options::default(),
            run_dir: dir.path().into(),
        },
    )
}

/// The addresses host h1 holds for network `ov` (etcd-ipam's leases under `dir`).
fn leases(dir: &tempfile::TempDir) -> Vec<String> {
    let d = dir.path().join("cluster/cnirs/h1/ipam/ov");
    let mut v: Vec<String> = std::fs::read_dir(&d)
        .map(|r| {
            r.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn etcd_ipam_in_process_allocates_in_the_nodes_block_over_the_same_store() {
    let (host, store, dir) = (
        FakeHost::default(),
        MemStore::default(),
        tempfile::tempdir().unwrap(),
    );
    let ipam = shared_ipam(&store, &dir);
    let c = ctx(&host, &ipam, &store);
    let r = add(&c, &req(Command::Add, serde_json::json!({}))).unwrap();
    let ip = r.ips[0].address;
    assert_eq!(ip.prefix(), 25, "the node's block, not the range: {ip}");
    assert_eq!(leases(&dir), [ip.ip().to_string()], "held on the host");
    let keys = store.keys("/cnirs/ipam/ov/");
    assert!(
        keys.len() == 1 && keys[0].starts_with("/cnirs/ipam/ov/nodes/h1/"),
        "the block under the node, no address key: {keys:?}"
    );
    assert_eq!(
        store.keys("/cnirs/blocks/ov/").len(),
        1,
        "one block claimed"
    );
}

#[test]
fn etcd_ipam_in_process_releases_the_address_when_apply_fails() {
    let host = FakeHost {
        fail_apply: true,
        ..FakeHost::default()
    };
    let (store, dir) = (MemStore::default(), tempfile::tempdir().unwrap());
    let ipam = shared_ipam(&store, &dir);
    let c = ctx(&host, &ipam, &store);
    add(&c, &req(Command::Add, serde_json::json!({}))).unwrap_err();
    assert!(
        leases(&dir).is_empty(),
        "no address left held: {:?}",
        leases(&dir)
    );
}

#[test]
fn a_later_add_with_etcd_ipam_in_process_is_one_etcd_read_and_with_the_agents_file_none() {
    let host = FakeHost {
        device: true,
        ..FakeHost::default()
    };
    let (store, dir) = (MemStore::default(), tempfile::tempdir().unwrap());
    let ipam = shared_ipam(&store, &dir);
    let c = ctx(&host, &ipam, &store);
    // The host's first pod registers the network and claims the node's block.
    let first = add(&c, &req(Command::Add, serde_json::json!({}))).unwrap();
    let mut later = req(Command::Add, serde_json::json!({}));
    later.container_id = "c2".into();
    let (n, w) = (store.round_trips(), store.writes());
    let r = add(&c, &later).unwrap();
    assert_eq!(
        (store.round_trips() - n, store.writes() - w),
        (1, 0),
        "the overlay's and etcd-ipam's reads in one transaction, no write"
    );
    let (a, b) = (first.ips[0].address, r.ips[0].address);
    assert_ne!(a.ip(), b.ip());
    assert_eq!(a.network(), b.network(), "the node's block: {a} {b}");
    // The agent's file, fresh, for this node and VTEP: no etcd call at all.
    let block: ipnetwork::IpNetwork = format!("{}/25", a.network()).parse().unwrap();
    let st = ::cluster::node_state::NodeState {
        node: "h1".into(),
        vtep: Some(host.underlay(&config::parse(&later).unwrap()).unwrap().vtep),
        renewed_ms: ::cluster::node_state::boottime_ms(),
        networks: [(
            "ov".to_string(),
            crate::schema::NetworkRecord {
                vni: 42,
                subnets: vec![],
                internal: false,
            },
        )]
        .into(),
        blocks: [("ov".to_string(), [block].into())].into(),
    };
    let node_dir = ::cluster::node_state::node_dir(dir.path(), "/cnirs", "h1").unwrap();
    ::cluster::node_state::store(&::cluster::node_state::state_file(&node_dir), &st).unwrap();
    let with_agent = Ctx {
        agent: Some(dir.path().into()),
        ..ctx(&host, &ipam, &store)
    };
    let mut third = later.clone();
    third.container_id = "c3".into();
    let n = store.round_trips();
    let r3 = add(&with_agent, &third).unwrap();
    assert_eq!(store.round_trips(), n, "no etcd call");
    assert!(block.contains(r3.ips[0].address.ip()));
    assert_eq!(leases(&dir).len(), 3);
    // Stale (no renewal for more than 15 s): etcd is read again.
    let old = ::cluster::node_state::NodeState {
        renewed_ms: st
            .renewed_ms
            .saturating_sub(::cluster::node_state::FRESH_MS + 1_000),
        ..st
    };
    ::cluster::node_state::store(&::cluster::node_state::state_file(&node_dir), &old).unwrap();
    let mut fourth = later.clone();
    fourth.container_id = "c4".into();
    add(&with_agent, &fourth).unwrap();
    assert_eq!(store.round_trips(), n + 1, "one read");
}
