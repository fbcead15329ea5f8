//! [`KernelExec`]: the [`Executor`] of [`Op`]s over netlink.

use std::collections::HashMap;

use crate::{
    ops::{Executor, Ns, Op},
    BridgePortOpts, IfName, Link, Netlink, NetopsError, VethSpec,
};

/// The links an op run has created or read, by (netns, name): each is looked up once.
pub(crate) type LinkCache = HashMap<(Ns, IfName), Link>;

/// Runs [`Op`]s over netlink: host ops on `host`, pod ops on `pod`. Links are looked up by
/// name once and remembered.
pub struct KernelExec<'a, 'k> {
    pub host: &'a Netlink<'k>,
    pub pod: &'a Netlink<'k>,
    links: LinkCache,
}

impl<'a, 'k> KernelExec<'a, 'k> {
    pub fn new(host: &'a Netlink<'k>, pod: &'a Netlink<'k>) -> Self {
        Self {
            host,
            pod,
            links: HashMap::new(),
        }
    }

    fn ops(&mut self) -> OpRun<'_, 'a, 'k> {
        OpRun {
            host: self.host,
            pod: Some(self.pod),
            links: &mut self.links,
        }
    }

    /// The link `name` in `ns` (cached; [`NetopsError::LinkNotFound`] when absent).
    pub fn link(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
        self.ops().link(ns, name)
    }

    /// Read `name` again (after a step changed it, e.g. its MAC).
    pub fn refresh(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
        self.links.remove(&(ns, name.clone()));
        self.link(ns, name)
    }
}

impl Executor<Op> for KernelExec<'_, '_> {
    type Error = NetopsError;

    fn exec(&mut self, op: &Op) -> Result<bool, NetopsError> {
        self.ops().exec(op)
    }

    fn is_gone(e: &NetopsError) -> bool {
        e.is_not_found()
    }
}

/// One op over the host handle and, when there is one, the pod's, with the link cache of the
/// run it belongs to ([`KernelExec`], [`crate::KernelSession`]).
pub(crate) struct OpRun<'c, 'a, 'k> {
    pub host: &'a Netlink<'k>,
    pub pod: Option<&'a Netlink<'k>>,
    pub links: &'c mut LinkCache,
}

impl<'a, 'k> OpRun<'_, 'a, 'k> {
    fn nl(&self, ns: Ns) -> Result<&'a Netlink<'k>, NetopsError> {
        match ns {
            Ns::Host => Ok(self.host),
            Ns::Pod => self
                .pod
                .ok_or(NetopsError::NeedsPodHandle { what: "a pod op" }),
        }
    }

    /// The link `name` in `ns` (cached; [`NetopsError::LinkNotFound`] when absent).
    pub fn link(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
        if let Some(l) = self.links.get(&(ns, name.clone())) {
            return Ok(l.clone());
        }
        let l = self.nl(ns)?.require_link(name)?;
        self.links.insert((ns, name.clone()), l.clone());
        Ok(l)
    }

    fn forget(&mut self, ns: Ns, name: &IfName) {
        self.links.remove(&(ns, name.clone()));
    }

    pub fn exec(&mut self, op: &Op) -> Result<bool, NetopsError> {
        match op {
            Op::CreateBridge {
                name,
                mtu,
                mcast_snooping,
            } => {
                let new = crate::NewBridge {
                    mtu: *mtu,
                    vlan_filtering: false,
                    mcast_snooping: *mcast_snooping,
                };
                let b = self.host.ensure_bridge(name, &new)?;
                self.links.insert((Ns::Host, name.clone()), b.link);
                Ok(b.created)
            }
            Op::DeleteBridgeIfUnused { name } => {
                let Some(br) = self.host.link(name)? else {
                    return Ok(false);
                };
                if !br.is_bridge() || !self.host.ports(&br)?.is_empty() {
                    return Ok(false);
                }
                self.forget(Ns::Host, name);
                self.host.delete_link(name)
            }
            Op::SealBridge { name, subnets } => self.host.seal_bridge(name, subnets),
            Op::UnsealBridge { name, subnets } => self.host.unseal_bridge(name, subnets),
            Op::PinMac { link } => {
                let l = self.link(Ns::Host, link)?;
                match l.mac {
                    Some(mac) => self.host.set_mac(&l, mac).map(|()| true),
                    None => Ok(false),
                }
            }
            Op::SetUp { ns, link } => {
                let l = self.link(*ns, link)?;
                self.nl(*ns)?.set_up(&l).map(|()| true)
            }
            Op::SetPromisc { link, on } => {
                let l = self.link(Ns::Host, link)?;
                self.host.set_promisc(&l, *on).map(|()| true)
            }
            Op::CreateVeth {
                host,
                peer,
                mtu,
                peer_mac,
                ..
            } => {
                let pair = self.host.create_veth(
                    &VethSpec {
                        host_name: host.to_string(),
                        peer_name: peer.to_string(),
                        mtu: *mtu,
                        peer_mac: *peer_mac,
                        up: true,
                        // Up with `SetMaster`, after `NoIpv6`.
                        host_up: false,
                    },
                    self.nl(Ns::Pod)?,
                )?;
                self.links.insert((Ns::Host, host.clone()), pair.host);
                self.links.insert((Ns::Pod, peer.clone()), pair.peer);
                Ok(true)
            }
            Op::DeleteLink { ns, link } => {
                self.forget(*ns, link);
                self.nl(*ns)?.delete_link(link)
            }
            Op::NoIpv6 { ns, link } => self.nl(*ns)?.disable_ipv6(link),
            Op::SetMaster { link, bridge } => {
                let l = self.link(Ns::Host, link)?;
                let b = self.link(Ns::Host, bridge)?;
                self.host.attach_to_bridge(&l, &b).map(|()| true)
            }
            Op::SetBridgePort {
                link,
                hairpin,
                isolated,
            } => {
                let l = self.link(Ns::Host, link)?;
                let opts = BridgePortOpts {
                    hairpin: *hairpin,
                    isolated: *isolated,
                };
                self.host.set_bridge_port(&l, opts).map(|()| true)
            }
            Op::AddAddr {
                ns,
                link,
                cidr,
                dad,
            } => {
                let l = self.link(*ns, link)?;
                match self.nl(*ns)?.add_address(&l, *cidr, *dad) {
                    Ok(()) => Ok(true),
                    // Added concurrently by another ADD of the same network: not ours to undo.
                    Err(e) if e.is_exists() => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Op::DelAddr { ns, link, cidr } => {
                let l = self.link(*ns, link)?;
                self.nl(*ns)?.delete_address(&l, *cidr)
            }
            Op::AddRoute { ns, link, route } => {
                let l = self.link(*ns, link)?;
                self.nl(*ns)?.add_route(&l, route).map(|()| true)
            }
            Op::DelRoute { ns, link, route } => {
                let l = self.link(*ns, link)?;
                self.nl(*ns)?.delete_route(&l, route)
            }
            Op::SetSysctl { key, value } => {
                if crate::sysctl::read(key)? == *value {
                    return Ok(false);
                }
                crate::sysctl::write(key, value).map(|()| true)
            }
            Op::CreateVxlan { spec } => {
                let info = self.host.ensure_vxlan(spec)?;
                let name = IfName::new(&spec.name)?;
                self.links.insert((Ns::Host, name), info.link);
                Ok(info.created)
            }
            Op::SetMac { link, mac } => {
                let l = self.link(Ns::Host, link)?;
                if l.mac == Some(*mac) {
                    return Ok(false);
                }
                self.host.set_mac(&l, *mac)?;
                self.forget(Ns::Host, link);
                Ok(true)
            }
            Op::AddRule { rule } => self.host.add_rule(rule),
            Op::DelRule { rule } => self.host.delete_rule(rule),
            Op::AddTableRoute { route } => self.host.add_table_route(route),
            Op::DelTableRoute { route } => self.host.delete_table_route(route),
        }
    }
}
