//! Orchestration tests: the verbs over an in-memory kernel ([`netops::FakeNet`]), firewall
//! ([`nftplan::FakeNft`] with a state directory of its own) and IPAM
//! ([`cni_core::delegate::FakeIpam`]), no root. What each verb creates, undoes, releases and
//! reports when a side effect fails.

use std::sync::Arc;

use cni_core::{
    args::Command,
    delegate::FakeIpam,
    result::{CniResult, IpConfig},
    CniError, ErrorCode, Request,
};
use netops::{FakeNet, Ns};
use nftplan::{FakeNft, Firewall, FirewallCell};

use crate::{
    config::Mode,
    plan,
    verbs::{self, Ctx},
};

const NETNS: &str = "/run/netns/p";

const CONF: &str = r#"{"cniVersion":"1.1.0","name":"n1","type":"bridge","bridge":"br-t",
    "isGateway":true,"ipMasq":true,"ipam":{"type":"host-local"}}"#;

fn internal_conf() -> String {
    CONF.replace(r#""type":"bridge""#, r#""type":"internal-bridge""#)
}

fn lease(ip: &str) -> CniResult {
    CniResult {
        ips: vec![IpConfig {
            address: ip.parse().unwrap(),
            gateway: Some("10.5.0.1".parse().unwrap()),
            interface: None,
        }],
        ..Default::default()
    }
}

/// A host with a pod netns per container, an empty firewall and an IPAM with two leases.
struct World {
    net: FakeNet,
    nft: Arc<FakeNft>,
    fw: FirewallCell,
    ipam: FakeIpam,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let mut net = FakeNet::new();
        net.add_pod(NETNS).add_pod("/run/netns/q");
        let nft = FakeNft::new();
        let dir = tempfile::tempdir().unwrap();
        let fw = FirewallCell::ready(Firewall::with_backend(
            dir.path().join("netns-1"),
            Box::new(nft.clone()),
        ));
        World {
            net,
            nft,
            fw,
            ipam: FakeIpam::new([lease("10.5.0.2/24"), lease("10.5.0.3/24")]),
            _dir: dir,
        }
    }

    fn run<T>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        f(&mut Ctx {
            net: &mut self.net,
            fw: &self.fw,
            ipam: &self.ipam,
        })
    }

    fn add(
        &mut self,
        conf: &str,
        mode: Mode,
        cid: &str,
        netns: &str,
    ) -> Result<CniResult, CniError> {
        let r = req(Command::Add, conf, cid, netns);
        self.run(|c| verbs::add(c, &r, mode))
    }

    fn del(&mut self, conf: &str, mode: Mode, cid: &str, netns: &str) -> Result<(), CniError> {
        let r = req(Command::Del, conf, cid, netns);
        self.run(|c| verbs::del(c, &r, mode))
    }

    fn host_veth(cid: &str) -> String {
        plan::host_veth_name("n1", cid, "eth0").unwrap().to_string()
    }
}

fn req(cmd: Command, conf: &str, cid: &str, netns: &str) -> Request {
    Request::build(cmd, cid, Some(netns), "eth0", conf.as_bytes()).unwrap()
}

/// The config with `prevResult` (for CHECK).
fn with_prev(conf: &str, prev: &CniResult) -> String {
    let mut v: serde_json::Value = serde_json::from_str(conf).unwrap();
    v["prevResult"] = prev.to_json(cni_core::version::Version::parse("1.1.0").unwrap());
    v.to_string()
}

#[test]
fn add_creates_the_attachment_and_del_retires_it_releases_the_address_and_its_elements() {
    let mut w = World::new();
    let res = w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    assert_eq!(res.ips[0].address.to_string(), "10.5.0.2/24");
    let veth = World::host_veth("c1");
    let br = w.net.host.links["br-t"].index;
    assert_eq!(w.net.host.links[&veth].master, Some(br));
    assert_eq!(
        w.net.pod(NETNS).addrs["eth0"],
        ["10.5.0.2/24".parse().unwrap()]
    );
    assert!(!w.nft.elems().is_empty(), "firewall elements attached");
    assert_eq!(w.ipam.held(), ["n1/c1/eth0"]);

    w.del(CONF, Mode::External, "c1", NETNS).unwrap();
    assert!(!w.net.host.links.contains_key(&veth));
    assert_eq!(
        w.net.retired.len(),
        1,
        "the host veth is retired, deleted later"
    );
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
    assert!(w.ipam.held().is_empty());
    // DEL again: idempotent.
    w.del(CONF, Mode::External, "c1", NETNS).unwrap();
}

#[test]
fn an_add_failing_at_a_kernel_step_undoes_it_and_releases_the_address() {
    let mut w = World::new();
    w.net.fail_matching("addr add");
    let e = w.add(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Kernel.as_u32(), "{e:?}");
    assert!(e.details.contains("at step"), "{}", e.details);
    assert_eq!(w.net.host.names(), ["lo"], "bridge and veth undone");
    assert_eq!(w.net.pod(NETNS).names(), ["lo"]);
    assert_eq!(w.ipam.calls(), [Command::Add, Command::Del]);
    assert!(w.ipam.held().is_empty(), "the address is released");
    assert!(w.nft.elems().is_empty());
}

#[test]
fn an_add_failing_at_the_firewall_undoes_the_links_and_releases_the_address() {
    let mut w = World::new();
    w.nft.fail_next(&[true; 4]);
    let e = w.add(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert_ne!(e.code(), 0);
    assert!(!w.net.host.links.contains_key(&World::host_veth("c1")));
    assert_eq!(w.net.pod(NETNS).names(), ["lo"]);
    assert!(w.ipam.held().is_empty());
}

#[test]
fn an_add_refused_before_ipam_asks_nothing_of_it() {
    let mut w = World::new();
    w.net.put_link(Ns::Host, "br-t", Some("dummy"));
    let e = w.add(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidConfig.as_u32(), "{e:?}");
    assert!(w.ipam.calls().is_empty());
    // A netns that is not there: nothing either.
    let e = w
        .add(CONF, Mode::External, "c2", "/run/netns/gone")
        .unwrap_err();
    assert_ne!(e.code(), 0);
    assert!(w.ipam.calls().is_empty());
}

#[test]
fn del_goes_on_past_a_failure_and_reports_it() {
    let mut w = World::new();
    w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    // The netns cannot be opened (not "gone": an I/O error): the firewall and IPAM still go.
    w.net.fail_open_pod();
    let e = w.del(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert!(e.msg.contains("injected"), "{e:?}");
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
    assert!(w.ipam.held().is_empty());

    // IPAM fails: the links and elements still go, and the failure is reported.
    let mut w = World::new();
    w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    w.ipam
        .fail(Command::Del, CniError::new(ErrorCode::Io, "ipam store"));
    let e = w.del(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert_eq!(e.msg, "ipam store");
    assert!(!w.net.host.links.contains_key(&World::host_veth("c1")));
    assert!(w.nft.elems().is_empty());

    // Two failures: the first decides the code, the second is in the details.
    let mut w = World::new();
    w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    w.net.fail_open_pod();
    w.ipam
        .fail(Command::Del, CniError::new(ErrorCode::Io, "ipam store"));
    let e = w.del(CONF, Mode::External, "c1", NETNS).unwrap_err();
    assert!(e.msg.contains("injected"), "{e:?}");
    assert!(e.details.contains("ipam store"), "{}", e.details);
}

#[test]
fn del_of_a_pod_whose_netns_is_gone_still_releases_everything() {
    let mut w = World::new();
    w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    w.net.pods.remove(std::path::Path::new(NETNS));
    w.del(CONF, Mode::External, "c1", NETNS).unwrap();
    assert!(!w.net.host.links.contains_key(&World::host_veth("c1")));
    assert!(w.nft.elems().is_empty());
    assert!(w.ipam.held().is_empty());
}

#[test]
fn the_internal_networks_last_detach_unseals_its_bridge() {
    let mut w = World::new();
    let conf = internal_conf();
    w.add(&conf, Mode::Internal, "c1", NETNS).unwrap();
    w.add(&conf, Mode::Internal, "c2", "/run/netns/q").unwrap();
    assert!(!w.net.seals.is_empty(), "sealed at the first ADD");
    let sealed = w.net.seals.clone();
    w.del(&conf, Mode::Internal, "c1", NETNS).unwrap();
    assert_eq!(w.net.seals, sealed, "another pod still holds the network");
    w.del(&conf, Mode::Internal, "c2", "/run/netns/q").unwrap();
    assert!(w.net.seals.is_empty(), "{:?}", w.net.seals);
}

#[test]
fn check_passes_after_add_and_fails_on_a_missing_address() {
    let mut w = World::new();
    let res = w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    let conf = with_prev(CONF, &res);
    let r = req(Command::Check, &conf, "c1", NETNS);
    w.run(|c| verbs::check(c, &r, Mode::External)).unwrap();
    w.net
        .pods
        .get_mut(std::path::Path::new(NETNS))
        .unwrap()
        .addrs
        .clear();
    let e = w.run(|c| verbs::check(c, &r, Mode::External)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::CheckFailed.as_u32(), "{e:?}");
}

#[test]
fn gc_deletes_retired_links_and_stale_attachments() {
    let mut w = World::new();
    w.add(CONF, Mode::External, "c1", NETNS).unwrap();
    w.add(CONF, Mode::External, "c2", "/run/netns/q").unwrap();
    w.del(CONF, Mode::External, "c1", NETNS).unwrap();
    assert_eq!(w.net.retired.len(), 1);
    // GC with c2 valid: it keeps its elements and address.
    let mut v: serde_json::Value = serde_json::from_str(CONF).unwrap();
    v["cni.dev/valid-attachments"] = serde_json::json!([{"containerID":"c2","ifname":"eth0"}]);
    let r = req(Command::Gc, &v.to_string(), "gc", NETNS);
    w.run(|c| verbs::gc(c, &r, Mode::External)).unwrap();
    assert!(w.net.retired.is_empty());
    assert!(
        !w.net
            .host
            .names()
            .iter()
            .any(|n| n.starts_with(netops::RETIRED_PREFIX)),
        "{:?}",
        w.net.host.names()
    );
    assert!(!w.nft.elems().is_empty(), "c2's elements stay");
    assert_eq!(w.ipam.held(), ["n1/c2/eth0"]);
    // GC with none valid: c2's go too.
    let r = req(Command::Gc, CONF, "gc", NETNS);
    w.run(|c| verbs::gc(c, &r, Mode::External)).unwrap();
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
    assert!(w.ipam.held().is_empty());
}
