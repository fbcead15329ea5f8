//! Orchestration tests: the verbs over the in-memory firewall ([`nftplan::FakeNft`]) and a
//! recording host kernel, no root. What is published, removed, flushed and reported when a
//! side effect fails.

use std::{cell::RefCell, sync::Arc};

use cni_core::{args::Command, CniError, ErrorCode, Request};
use netops::{conntrack::CtMatch, NetopsError};
use nftplan::{FakeNft, Firewall, FirewallCell};

use crate::{Ctx, HostKernel};

/// Records what it was asked; fails the calls named.
#[derive(Default)]
struct FakeKernel {
    localnet: RefCell<Vec<String>>,
    flushed: RefCell<Vec<CtMatch>>,
    fail_flush: bool,
}

impl HostKernel for FakeKernel {
    fn route_localnet(&self, bridge: &str) -> Result<(), NetopsError> {
        self.localnet.borrow_mut().push(bridge.to_string());
        Ok(())
    }

    fn flush_conntrack(&self, flows: &[CtMatch]) -> Result<usize, NetopsError> {
        if self.fail_flush {
            return Err(NetopsError::Injected {
                op: "conntrack flush".into(),
                errno: libc_eio(),
            });
        }
        self.flushed.borrow_mut().extend_from_slice(flows);
        Ok(flows.len())
    }
}

fn libc_eio() -> i32 {
    5
}

struct World {
    nft: Arc<FakeNft>,
    fw: FirewallCell,
    kernel: FakeKernel,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let nft = FakeNft::new();
        let dir = tempfile::tempdir().unwrap();
        let fw = FirewallCell::ready(Firewall::with_backend(
            dir.path().join("netns-1"),
            Box::new(nft.clone()),
        ));
        World {
            nft,
            fw,
            kernel: FakeKernel::default(),
            _dir: dir,
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            fw: &self.fw,
            kernel: &self.kernel,
        }
    }
}

/// A portmap config with these mappings and the bridge plugin's result for pod `ip`.
fn conf(mappings: &str, ip: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"n","type":"portmap",
        "runtimeConfig":{{"portMappings":{mappings}}},
        "prevResult":{{"cniVersion":"1.1.0",
          "interfaces":[{{"name":"cni0","mac":"02:00:00:00:00:01"}},
                        {{"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/run/netns/p"}}],
          "ips":[{{"address":"{ip}/24","interface":1}}]}}}}"#
    )
}

const WEB: &str = r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
    {"hostPort":5353,"containerPort":53,"protocol":"udp"}]"#;

fn req(cmd: Command, conf: &str, cid: &str) -> Request {
    Request::build(cmd, cid, Some("/run/netns/p"), "eth0", conf.as_bytes()).unwrap()
}

#[test]
fn add_publishes_and_del_removes_the_elements_and_flushes_the_pods_flows() {
    let w = World::new();
    let c = conf(WEB, "10.1.0.5");
    crate::add(&w.ctx(), &req(Command::Add, &c, "c1")).unwrap();
    assert!(!w.nft.elems().is_empty());
    assert_eq!(
        *w.kernel.localnet.borrow(),
        ["cni0"],
        "no hostIP: published on 127.0.0.1 too, which needs route_localnet on the bridge"
    );
    crate::check(&w.ctx(), &req(Command::Check, &c, "c1")).unwrap();

    crate::del(&w.ctx(), &req(Command::Del, &c, "c1")).unwrap();
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
    let flushed = w.kernel.flushed.borrow().clone();
    assert!(flushed.contains(&CtMatch::Address("10.1.0.5".parse().unwrap())));
    assert!(
        flushed.contains(&CtMatch::DstPort {
            v6: false,
            proto: 17,
            port: 5353
        }),
        "the UDP mapping's flows: {flushed:?}"
    );
    // CHECK of what DEL removed fails.
    let e = crate::check(&w.ctx(), &req(Command::Check, &c, "c1")).unwrap_err();
    assert_eq!(CniError::from(e).code(), ErrorCode::CheckFailed.as_u32());
}

#[test]
fn a_port_held_by_another_pod_is_a_conflict_and_changes_nothing() {
    let w = World::new();
    crate::add(&w.ctx(), &req(Command::Add, &conf(WEB, "10.1.0.5"), "c1")).unwrap();
    let before = w.nft.elems();
    let e = crate::add(&w.ctx(), &req(Command::Add, &conf(WEB, "10.1.0.6"), "c2")).unwrap_err();
    assert_eq!(CniError::from(e).code(), ErrorCode::Conflict.as_u32());
    assert_eq!(w.nft.elems(), before);
}

#[test]
fn route_localnet_is_enabled_for_a_loopback_mapping_only() {
    let w = World::new();
    let m = r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"192.0.2.1"}]"#;
    crate::add(&w.ctx(), &req(Command::Add, &conf(m, "10.1.0.5"), "c1")).unwrap();
    assert!(w.kernel.localnet.borrow().is_empty());
    let m = r#"[{"hostPort":8081,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]"#;
    crate::add(&w.ctx(), &req(Command::Add, &conf(m, "10.1.0.6"), "c2")).unwrap();
    assert_eq!(*w.kernel.localnet.borrow(), ["cni0"]);
}

#[test]
fn del_goes_on_past_a_failure_and_reports_it() {
    // The firewall fails: the conntrack flush still runs.
    let w = World::new();
    let c = conf(WEB, "10.1.0.5");
    crate::add(&w.ctx(), &req(Command::Add, &c, "c1")).unwrap();
    w.nft.fail_next(&[true; 4]);
    let e = crate::del(&w.ctx(), &req(Command::Del, &c, "c1")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Firewall.as_u32(), "{e:?}");
    assert!(!w.kernel.flushed.borrow().is_empty());

    // The conntrack flush fails: the elements are gone and the failure is reported.
    let mut w = World::new();
    w.kernel.fail_flush = true;
    crate::add(&w.ctx(), &req(Command::Add, &c, "c1")).unwrap();
    let e = crate::del(&w.ctx(), &req(Command::Del, &c, "c1")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Kernel.as_u32(), "{e:?}");
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
}

#[test]
fn del_with_a_config_add_refused_still_removes_the_elements() {
    let w = World::new();
    crate::add(&w.ctx(), &req(Command::Add, &conf(WEB, "10.1.0.5"), "c1")).unwrap();
    let bad = conf(r#"[{"hostPort":0,"containerPort":80}]"#, "10.1.0.5");
    crate::del(&w.ctx(), &req(Command::Del, &bad, "c1")).unwrap();
    assert!(w.nft.elems().is_empty(), "{}", w.nft.dump());
}

#[test]
fn gc_drops_the_elements_of_attachments_no_longer_valid() {
    let w = World::new();
    crate::add(&w.ctx(), &req(Command::Add, &conf(WEB, "10.1.0.5"), "c1")).unwrap();
    let m2 = r#"[{"hostPort":9090,"containerPort":80,"protocol":"tcp"}]"#;
    crate::add(&w.ctx(), &req(Command::Add, &conf(m2, "10.1.0.6"), "c2")).unwrap();
    let gc = r#"{"cniVersion":"1.1.0","name":"n","type":"portmap",
        "cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]}"#;
    crate::gc(&w.ctx(), &req(Command::Gc, gc, "gc")).unwrap();
    let left = w.nft.dump();
    assert!(left.contains("9090") && !left.contains("8080"), "{left}");
}
