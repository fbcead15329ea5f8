//! One simulated host: the real overlay ADD/DEL (`overlay_plugin::add`/`del`, whose IPAM is
//! the real `etcd_ipam::add`/`del`) and the real agent loop (`agent::run_node`), against a real
//! etcd, with a [`FakeKernel`] in place of the host's kernel. The fake's VXLAN device is the
//! one the agent programs, so what the ADD creates is what the agent sees.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use agent::FakeKernel;
use cni_core::{CniError, CniResult, Command, Interface, IpConfig, Request};
use netops::{FdbEntry, Link, FLOOD_MAC};
use overlay_plugin::{
    config::OverlaySpec, dataplane::Underlay, error::OverlayError, Attachment, Ctx, HostSide,
};

/// What the harness shares between hosts.
#[derive(Default)]
pub struct Shared {
    /// Hosts whose VXLAN device exists (they all apply a remote pod's entry).
    pub with_device: AtomicUsize,
    /// Source of pod MACs (unique for the run).
    pub next_mac: AtomicU64,
}

/// The kernel steps of the overlay on a fake: the VXLAN device in the host's [`FakeKernel`],
/// flood entries from `remote_vteps` when it is new, as `dataplane::ensure` does.
struct SimHostSide<'a> {
    host: &'a SimHost,
}

impl HostSide for SimHostSide<'_> {
    fn underlay(&self, _spec: &OverlaySpec) -> Result<Underlay, OverlayError> {
        Ok(Underlay {
            link: Link {
                name: "ul0".into(),
                index: 2,
                mtu: 1500,
                admin_up: true,
                ..Link::default()
            },
            vtep: self.host.vtep,
        })
    }

    fn ensure(
        &self,
        spec: &OverlaySpec,
        ul: &Underlay,
        _mtu: u32,
        remote_vteps: &mut dyn FnMut() -> Result<Vec<Ipv4Addr>, CniError>,
    ) -> Result<(), OverlayError> {
        let (_, created) = self
            .host
            .kernel
            .ensure_vxlan(&spec.vxlan, spec.vni, ul.vtep);
        if created {
            self.host.shared.with_device.fetch_add(1, Ordering::SeqCst);
            match remote_vteps() {
                Ok(vteps) => {
                    for v in vteps {
                        self.host.kernel.insert(
                            &spec.vxlan,
                            FdbEntry {
                                mac: FLOOD_MAC.0,
                                dst: v.into(),
                            },
                        );
                    }
                }
                Err(e) => log::warn!("flood entries for {}: {e}", spec.vxlan),
            }
        }
        Ok(())
    }

    fn check(&self, _spec: &OverlaySpec) -> Result<(), OverlayError> {
        Ok(())
    }
}

/// The bridge attachment without a kernel: only its IPAM delegation, as the real etcd-ipam
/// library calls (the plugin execs the same code), and a fresh MAC for the pod.
struct SimAttachment<'a> {
    host: &'a SimHost,
}

fn with_stdin(req: &Request, stdin: Vec<u8>) -> Request {
    let mut r = req.clone();
    r.stdin = stdin;
    r
}

impl Attachment for SimAttachment<'_> {
    fn add(&self, req: &Request, stdin: Vec<u8>, _internal: bool) -> Result<CniResult, CniError> {
        let r = with_stdin(req, stdin);
        let cfg = etcd_ipam::config::parse(&r)?;
        let got = etcd_ipam::add(
            &self.host.client,
            &cfg,
            &self.host.name,
            &req.container_id,
            &req.ifname,
        )?;
        let n = self.host.shared.next_mac.fetch_add(1, Ordering::Relaxed) as u32;
        let b = n.to_be_bytes();
        let mac = format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]);
        let mut ips = Vec::new();
        for g in got {
            ips.push(IpConfig {
                address: ipnetwork::IpNetwork::new(g.ip, g.prefix)
                    .map_err(|e| CniError::config("ipam.ranges", e))?,
                gateway: Some(g.gateway),
                interface: Some(1),
            });
        }
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: format!("veth{n:08x}"),
                    mac: "0a:58:00:00:00:01".into(),
                    ..Interface::default()
                },
                Interface {
                    name: req.ifname.clone(),
                    mac,
                    sandbox: req
                        .netns
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    ..Interface::default()
                },
            ],
            ips,
            routes: Vec::new(),
            dns: Default::default(),
        })
    }

    fn del(&self, req: &Request, stdin: Vec<u8>, _internal: bool) -> Result<(), CniError> {
        let r = with_stdin(req, stdin);
        let cfg = etcd_ipam::config::parse(&r)?;
        etcd_ipam::del(&self.host.client, &cfg, &req.container_id, &req.ifname).map(|_| ())
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

/// A simulated host.
pub struct SimHost {
    pub name: String,
    pub vtep: Ipv4Addr,
    pub kernel: FakeKernel,
    /// The plugins' client (a long-lived one: the real plugin opens one per call).
    pub client: etcd::Client,
    pub shared: Arc<Shared>,
    pub stats: agent::Stats,
}

/// A pod the harness added.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

impl SimHost {
    fn request(&self, cmd: Command, id: &str, conf: &[u8]) -> Result<Request, CniError> {
        Request::build(cmd, id, Some(&format!("/run/netns/{id}")), "eth0", conf)
    }

    fn ctx<'a>(&'a self, side: &'a SimHostSide<'a>, att: &'a SimAttachment<'a>) -> Ctx<'a> {
        Ctx {
            node: self.name.clone(),
            host: side,
            attachment: att,
            etcd: Some(&self.client),
        }
    }

    /// The overlay's ADD of pod `id`.
    pub fn add(&self, id: &str, conf: &[u8]) -> Result<Pod, CniError> {
        let (side, att) = (SimHostSide { host: self }, SimAttachment { host: self });
        let req = self.request(Command::Add, id, conf)?;
        let res = overlay_plugin::add(&self.ctx(&side, &att), &req)?;
        let ip =
            res.ips.first().map(|i| i.address.ip()).ok_or_else(|| {
                CniError::new(cni_core::ErrorCode::Io, "no address in the result")
            })?;
        let mac = res
            .interfaces
            .get(1)
            .and_then(|i| i.mac.parse::<netops::MacAddr>().ok())
            .map(|m| m.0)
            .ok_or_else(|| CniError::new(cni_core::ErrorCode::Io, "no MAC in the result"))?;
        Ok(Pod {
            id: id.to_string(),
            ip,
            mac,
        })
    }

    /// The overlay's DEL of pod `id`.
    pub fn del(&self, id: &str, conf: &[u8]) -> Result<(), CniError> {
        let (side, att) = (SimHostSide { host: self }, SimAttachment { host: self });
        let req = self.request(Command::Del, id, conf)?;
        overlay_plugin::del(&self.ctx(&side, &att), &req)
    }
}
