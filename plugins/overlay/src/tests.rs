//! The verbs' orchestration with fakes handed in through [`Ctx`] (no root, no kernel): what is
//! touched, in which order, and what is reported when a step fails.

use std::{cell::RefCell, net::Ipv4Addr, time::Duration};

use cni_core::{Command, ErrorCode};
use netops::Link;

use super::*;
use crate::{dataplane::Underlay, error::OverlayError};

#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<String>>,
    fail_del: bool,
}

impl Recorder {
    fn note(&self, what: &str) {
        self.calls.borrow_mut().push(what.to_string());
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl HostSide for Recorder {
    fn underlay(&self, _: &OverlaySpec) -> Result<Underlay, OverlayError> {
        self.note("underlay");
        Ok(Underlay {
            link: Link {
                name: "ul0".into(),
                index: 2,
                mtu: 1500,
                ..Link::default()
            },
            vtep: Ipv4Addr::new(10, 240, 0, 1),
        })
    }
    fn ensure(
        &self,
        _: &OverlaySpec,
        _: &Underlay,
        _: u32,
        _: &mut dyn FnMut() -> Result<Vec<Ipv4Addr>, CniError>,
    ) -> Result<(), OverlayError> {
        self.note("ensure");
        Ok(())
    }
    fn check(&self, _: &OverlaySpec) -> Result<(), OverlayError> {
        self.note("check");
        Ok(())
    }
}

impl Attachment for Recorder {
    fn add(&self, _: &Request, _: Vec<u8>, _: bool) -> Result<CniResult, CniError> {
        self.note("attach");
        Ok(CniResult::default())
    }
    fn del(&self, _: &Request, _: Vec<u8>, _: bool) -> Result<(), CniError> {
        self.note("detach");
        if self.fail_del {
            return Err(CniError::new(ErrorCode::Kernel, "veth delete failed"));
        }
        Ok(())
    }
    fn check(&self, _: &Request, _: Vec<u8>, _: bool) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, _: &Request, _: Vec<u8>, _: bool) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _: &Request, _: Vec<u8>, _: bool) -> Result<(), CniError> {
        Ok(())
    }
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

fn req(cmd: Command) -> Request {
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "type": "overlay",
        "vni": 42, "ipam": {"type": "etcd-ipam", "etcdEndpoints": ["http://127.0.0.1:1"],
        "ranges": [[{"subnet": "10.1.0.0/16"}]]}});
    Request::build(cmd, "c1", Some("/x"), "eth0", conf.to_string().as_bytes()).unwrap()
}

#[test]
fn add_with_etcd_down_fails_try_again_before_any_device_or_attachment() {
    let (host, att, etcd) = (Recorder::default(), Recorder::default(), dead_etcd());
    let ctx = Ctx {
        node: "h1".into(),
        host: &host,
        attachment: &att,
        etcd: Some(&etcd),
    };
    let e = add(&ctx, &req(Command::Add)).unwrap_err();
    assert_eq!(e.code, ErrorCode::TryAgainLater, "{e}");
    // The underlay is read (to know the VTEP and MTU); nothing is created.
    assert_eq!(host.calls(), ["underlay"]);
    assert!(att.calls().is_empty());
}

#[test]
fn del_goes_on_past_a_failed_detach_and_reports_both_failures() {
    let host = Recorder::default();
    let att = Recorder {
        fail_del: true,
        ..Recorder::default()
    };
    let etcd = dead_etcd();
    let ctx = Ctx {
        node: "h1".into(),
        host: &host,
        attachment: &att,
        etcd: Some(&etcd),
    };
    let e = del(&ctx, &req(Command::Del)).unwrap_err();
    assert_eq!(att.calls(), ["detach"]);
    assert!(host.calls().is_empty(), "DEL needs no host step");
    // The first failure is the error; the etcd one is in the details.
    assert_eq!(e.code, ErrorCode::Kernel, "{e}");
    assert!(e.details.contains("etcd"), "{}", e.details);
}
