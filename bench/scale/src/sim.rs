//! One simulated host: the real overlay ADD/DEL (`overlay_plugin::add`/`del`: its etcd side,
//! its plan) with the real etcd-ipam allocator in-process (`etcd_ipam::add`/`del`), and the
//! real agent loop (`agent::run_node`), against a real etcd, with a [`FakeKernel`] in place of
//! the host's kernel. The plan's VXLAN device is created in the fake kernel, which is the one
//! the agent programs, so what the first ADD creates is what the agent sees.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use agent::FakeKernel;
use bridge_plugin::{
    config::BridgeSpec,
    plan::{Ids, Observed, Plan, Step},
};
use cni_core::{CniError, CniResult, Command, IpConfig, MacAddr, Request};
use ipnetwork::IpNetwork;
use netops::{Link, Op};
use overlay_plugin::{
    config::OverlaySpec,
    error::OverlayError,
    plan::{HostView, Underlay},
    Ctx, HostSide, Ipam, NetLock,
};

/// What the harness shares between hosts.
#[derive(Default)]
pub struct Shared {
    /// Hosts whose VXLAN device exists (they all apply a remote block's route).
    pub with_device: AtomicUsize,
    /// Source of pod MACs (unique for the run).
    pub next_mac: AtomicU64,
}

/// The host side of the overlay on a fake: the plan's VXLAN device (created and removed) in
/// the host's [`FakeKernel`]; the bridge, the veths and the firewall are not simulated.
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

    fn lock(&self, _spec: &OverlaySpec, _exclusive: bool) -> Result<NetLock, OverlayError> {
        Ok(NetLock(None))
    }

    fn read(&self, spec: &OverlaySpec, _: &BridgeSpec, _: &Ids) -> Result<HostView, OverlayError> {
        let vxlan = self
            .host
            .kernel_device(&spec.vxlan)
            .map(|(vni, local, mac)| (Some(vni), Some(local), mac));
        Ok(HostView {
            bridge: Default::default(),
            vxlan,
        })
    }

    fn apply(&self, plan: &Plan) -> Result<Observed, OverlayError> {
        for s in &plan.steps {
            if let Step::Net(Op::CreateVxlan { spec }) = s {
                let (_, created) = self
                    .host
                    .kernel
                    .ensure_vxlan(&spec.name, spec.vni, spec.local, spec.mac);
                if created {
                    self.host.shared.with_device.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        self.host.pods.fetch_add(1, Ordering::SeqCst);
        let n = self.host.shared.next_mac.fetch_add(1, Ordering::Relaxed) as u32;
        let b = n.to_be_bytes();
        Ok(Observed {
            pod_mac: Some(MacAddr([0x0a, 0x58, b[0], b[1], b[2], b[3]])),
            ..Observed::default()
        })
    }

    fn detach(&self, _req: &Request, _spec: &OverlaySpec) -> Vec<OverlayError> {
        let _ = self
            .host
            .pods
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        Vec::new()
    }

    fn in_use(&self, _spec: &OverlaySpec) -> Result<bool, OverlayError> {
        Ok(self.host.pods.load(Ordering::SeqCst) > 0)
    }

    fn teardown(&self, ops: &[Op]) -> Vec<OverlayError> {
        for op in ops {
            if let Op::DeleteLink { link, .. } = op {
                if self.host.kernel.remove_vxlan(link.as_str()) {
                    self.host.shared.with_device.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
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
        Ok(())
    }

    fn gc(&self, _: &Request, _: &OverlaySpec) -> Vec<OverlayError> {
        Vec::new()
    }
}

/// etcd-ipam in-process (the plugin execs the same code), over the host's long-lived client.
struct SimIpam<'a> {
    host: &'a SimHost,
}

impl Ipam for SimIpam<'_> {
    fn run(&self, req: &Request, cmd: Command) -> Result<Option<CniResult>, CniError> {
        let cfg = etcd_ipam::config::parse(req)?;
        let (id, ifname) = (&req.container_id, &req.ifname);
        match cmd {
            Command::Add => {
                let got = etcd_ipam::add(&self.host.client, &cfg, &self.host.name, id, ifname)?;
                let mut ips = Vec::new();
                for g in got {
                    ips.push(IpConfig {
                        address: IpNetwork::new(g.ip, g.prefix)
                            .map_err(|e| CniError::config("ipam.ranges", e))?,
                        gateway: Some(g.gateway),
                        interface: None,
                    });
                }
                Ok(Some(CniResult {
                    ips,
                    ..CniResult::default()
                }))
            }
            Command::Del => etcd_ipam::del(&cfg, &self.host.name, id, ifname).map(|_| None),
            _ => Ok(None),
        }
    }
}

/// A simulated host.
pub struct SimHost {
    pub name: String,
    pub vtep: IpAddr,
    pub kernel: FakeKernel,
    /// The plugins' client (a long-lived one: the real plugin opens one per call).
    pub client: etcd::Client,
    pub shared: Arc<Shared>,
    pub stats: agent::Stats,
    /// Pods of the network on this host.
    pub pods: AtomicUsize,
    /// Blocks this host's pods were given addresses in (a new one must reach every host).
    pub blocks: Mutex<BTreeSet<IpNetwork>>,
}

/// A pod the harness added.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub ip: IpAddr,
    /// The block of its address, when its ADD was the first in that block on this host.
    pub new_block: Option<IpNetwork>,
}

impl SimHost {
    fn kernel_device(&self, name: &str) -> Option<(u32, IpAddr, Option<netops::MacAddr>)> {
        use agent::Dataplane;
        self.kernel
            .vxlans()
            .ok()?
            .into_iter()
            .find_map(|d| (d.link.name == name).then_some((d.vni?, d.local?, d.link.mac)))
    }

    fn request(&self, cmd: Command, id: &str, conf: &[u8]) -> Result<Request, CniError> {
        Request::build(cmd, id, Some(&format!("/run/netns/{id}")), "eth0", conf)
    }

    fn ctx<'a>(&'a self, side: &'a SimHostSide<'a>, ipam: &'a SimIpam<'a>) -> Ctx<'a> {
        Ctx {
            node: cluster::schema::NodeName {
                name: self.name.clone(),
                source: "the scale harness",
            },
            host: side,
            ipam,
            etcd: Some(&self.client),
            // The simulated hosts have no agent's file: every ADD reads etcd (the load measured).
            agent: None,
        }
    }

    /// The overlay's ADD of pod `id`.
    pub fn add(&self, id: &str, conf: &[u8]) -> Result<Pod, CniError> {
        let (side, ipam) = (SimHostSide { host: self }, SimIpam { host: self });
        let req = self.request(Command::Add, id, conf)?;
        let res = overlay_plugin::add(&self.ctx(&side, &ipam), &req)?;
        let addr =
            res.ips.first().map(|i| i.address).ok_or_else(|| {
                CniError::new(cni_core::ErrorCode::Io, "no address in the result")
            })?;
        // The result carries the pod's on-link prefix: its block.
        let block = IpNetwork::new(addr.network(), addr.prefix())
            .map_err(|e| CniError::new(cni_core::ErrorCode::Io, e.to_string()))?;
        let new_block = self
            .blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(block)
            .then_some(block);
        Ok(Pod {
            id: id.to_string(),
            ip: addr.ip(),
            new_block,
        })
    }

    /// The overlay's DEL of pod `id`.
    pub fn del(&self, id: &str, conf: &[u8]) -> Result<(), CniError> {
        let (side, ipam) = (SimHostSide { host: self }, SimIpam { host: self });
        let req = self.request(Command::Del, id, conf)?;
        overlay_plugin::del(&self.ctx(&side, &ipam), &req)
    }
}
