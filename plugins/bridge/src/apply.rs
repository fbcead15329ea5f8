//! The side-effect half of ADD: read the kernel before planning ([`read_view`]), run the plan's
//! steps over the kernel and the firewall ([`Effects`]), read back what the result reports
//! ([`observe`]).

use cni_core::IfName;
use netops::{Executor, Family, Link, NetopsError, Ns, RouteFilter, Session};
use nftplan::{Firewall, NetworkElems, PodIface};

use crate::{
    config::BridgeSpec,
    error::BridgeError,
    plan::{BridgeView, KernelView, Observed, Plan, Step},
};

/// Read what the plan depends on: the bridge (kind, state, addresses), the pod's interface
/// name, `lo`, default routes, and the forwarding sysctls. Nothing is changed.
/// The pod netns must be open ([`Session::open_pod`]).
pub fn read_view(
    net: &mut dyn Session,
    spec: &BridgeSpec,
    ifname: &IfName,
) -> Result<KernelView, NetopsError> {
    let bridge = match net.link(Ns::Host, &spec.bridge)? {
        None => None,
        Some(l) => Some(BridgeView {
            kind: l.kind.clone(),
            up: l.admin_up,
            promisc: l.promisc,
            addrs: if l.is_bridge() {
                net.addresses(Ns::Host, &l)?
            } else {
                Vec::new()
            },
        }),
    };
    let pod_has_ifname = net.link(Ns::Pod, ifname)?.is_some();
    let pod_lo_up = net.link(Ns::Pod, "lo")?.is_some_and(|l| l.admin_up);
    let mut defaults = |fam| -> Result<bool, NetopsError> {
        Ok(net
            .routes(Ns::Pod, RouteFilter::family(fam))?
            .iter()
            .any(|r| r.dst.prefix() == 0))
    };
    let pod_default_v4 = defaults(Family::V4)?;
    let pod_default_v6 = defaults(Family::V6)?;
    Ok(KernelView {
        bridge,
        pod_has_ifname,
        pod_lo_up,
        pod_default_v4,
        pod_default_v6,
        forward_v4: net.forwarding(Family::V4)?.unwrap_or(false),
        // A host without IPv6: then nothing will be asked of it either.
        forward_v6: net.forwarding(Family::V6)?.unwrap_or(false),
    })
}

/// Runs [`Step`]s: kernel ops through the call's [`Session`], firewall elements through
/// nftplan.
pub struct Effects<'a> {
    pub net: &'a mut dyn Session,
    pub fw: &'a Firewall,
    pub plan_mac: Option<cni_core::MacAddr>,
    pub pod_ifname: IfName,
}

impl Executor<Step> for Effects<'_> {
    type Error = BridgeError;

    fn exec(&mut self, step: &Step) -> Result<bool, BridgeError> {
        match step {
            Step::Net(op) => Ok(self.net.exec(op)?),
            Step::AttachFirewall(n) => {
                let spoof_check = match &n.spoof_port {
                    None => None,
                    Some(port) => {
                        let mac = match self.plan_mac {
                            Some(m) => Some(m),
                            None => self.net.known_link(Ns::Pod, &self.pod_ifname)?.mac,
                        };
                        mac.map(|m| (port.clone(), m.to_string()))
                    }
                };
                let pod_mac = match self.plan_mac {
                    Some(m) => Some(m),
                    None => self.net.known_link(Ns::Pod, &self.pod_ifname)?.mac,
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
/// The bridge is read afresh (a step may have changed its MAC).
pub fn observe(net: &mut dyn Session, plan: &Plan) -> Result<Observed, NetopsError> {
    let bridge = fresh_link(net, Ns::Host, &plan.bridge)?;
    let host = net.known_link(Ns::Host, &plan.host_veth)?;
    let pod = net.known_link(Ns::Pod, &plan.ids.ifname)?;
    Ok(Observed {
        bridge_mac: bridge.mac,
        host_mac: host.mac,
        pod_mac: pod.mac,
        pod_mtu: Some(pod.mtu),
    })
}

fn fresh_link(net: &mut dyn Session, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
    net.link(ns, name)?
        .ok_or_else(|| NetopsError::LinkNotFound {
            name: name.to_string(),
            netns: match ns {
                Ns::Host => "host".into(),
                Ns::Pod => "pod".into(),
            },
        })
}
