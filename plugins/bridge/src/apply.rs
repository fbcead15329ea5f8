//! The side-effect half of ADD: read the kernel before planning ([`read_view`]), run the plan's
//! steps over the kernel and the firewall ([`Effects`]), read back what the result reports
//! ([`observe`]).

use cni_core::IfName;
use netops::{Executor, Family, KernelExec, Netlink, NetopsError, Ns};
use nftplan::{Firewall, NetworkElems, PodIface};

use crate::{
    config::BridgeSpec,
    error::BridgeError,
    plan::{BridgeView, KernelView, Observed, Plan, Step},
};

/// Read what the plan depends on: the bridge (kind, state, addresses), the pod's interface
/// name, `lo`, default routes, and the forwarding sysctls. Nothing is changed.
pub fn read_view(
    host: &Netlink<'_>,
    pod: &Netlink<'_>,
    spec: &BridgeSpec,
    ifname: &IfName,
) -> Result<KernelView, NetopsError> {
    let bridge = match host.link(&spec.bridge)? {
        None => None,
        Some(l) => Some(BridgeView {
            kind: l.kind.clone(),
            up: l.admin_up,
            promisc: l.promisc,
            addrs: if l.is_bridge() {
                host.addresses(&l, None)?
            } else {
                Vec::new()
            },
        }),
    };
    let pod_has_ifname = pod.link(ifname)?.is_some();
    let pod_lo_up = pod.link("lo")?.is_some_and(|l| l.admin_up);
    let defaults = |fam| -> Result<bool, NetopsError> {
        Ok(pod
            .routes(None, Some(fam))?
            .iter()
            .any(|r| r.dst.prefix() == 0))
    };
    Ok(KernelView {
        bridge,
        pod_has_ifname,
        pod_lo_up,
        pod_default_v4: defaults(Family::V4)?,
        pod_default_v6: defaults(Family::V6)?,
        // Over rtnetlink: an open under /proc/sys/net on the host walks past every younger netns
        // (netops::sysctl).
        forward_v4: netops::sysctl::forwarding(Family::V4)?.unwrap_or(false),
        // A host without IPv6: then nothing will be asked of it either.
        forward_v6: netops::sysctl::forwarding(Family::V6)?.unwrap_or(false),
    })
}

/// Runs [`Step`]s: kernel ops through [`KernelExec`], firewall elements through nftplan.
pub struct Effects<'a, 'k> {
    pub kernel: KernelExec<'a, 'k>,
    pub fw: &'a Firewall,
    pub plan_mac: Option<cni_core::MacAddr>,
    pub pod_ifname: IfName,
}

impl Executor<Step> for Effects<'_, '_> {
    type Error = BridgeError;

    fn exec(&mut self, step: &Step) -> Result<bool, BridgeError> {
        match step {
            Step::Net(op) => Ok(self.kernel.exec(op)?),
            Step::AttachFirewall(n) => {
                let spoof_check = match &n.spoof_port {
                    None => None,
                    Some(port) => {
                        let mac = match self.plan_mac {
                            Some(m) => Some(m),
                            None => self.kernel.link(Ns::Pod, &self.pod_ifname)?.mac,
                        };
                        mac.map(|m| (port.clone(), m.to_string()))
                    }
                };
                let pod_mac = match self.plan_mac {
                    Some(m) => Some(m),
                    None => self.kernel.link(Ns::Pod, &self.pod_ifname)?.mac,
                };
                let elems = NetworkElems {
                    bridge: n.bridge.clone(),
                    masq: n.masq.clone(),
                    subnets: n.subnets.clone(),
                    internal: n.internal,
                    spoof_check,
                };
                let pod = Some(PodIface {
                    ips: n.pod_ips.clone(),
                    mac: pod_mac.map(|m| m.to_string()),
                    host_ifname: Some(n.host_veth.clone()),
                });
                if n.peers.is_empty() {
                    self.fw.attach_network_pod(&n.attachment, &elems, pod)?;
                } else {
                    self.fw
                        .attach_network_peers(&n.attachment, &elems, &n.peers, pod)?;
                }
                Ok(true)
            }
            Step::DetachFirewall(a) => {
                self.fw.detach_network(a)?;
                Ok(true)
            }
        }
    }

    fn is_gone(e: &BridgeError) -> bool {
        matches!(e, BridgeError::Kernel(k) if k.is_not_found())
    }
}

/// The MACs and MTU the result reports, from the links the steps created or read.
pub fn observe(fx: &mut Effects<'_, '_>, plan: &Plan) -> Result<Observed, NetopsError> {
    let bridge = fx.kernel.refresh(Ns::Host, &plan.bridge)?;
    let host = fx.kernel.link(Ns::Host, &plan.host_veth)?;
    let pod = fx.kernel.link(Ns::Pod, &plan.ids.ifname)?;
    Ok(Observed {
        bridge_mac: bridge.mac,
        host_mac: host.mac,
        pod_mac: pod.mac,
        pod_mtu: Some(pod.mtu),
    })
}
