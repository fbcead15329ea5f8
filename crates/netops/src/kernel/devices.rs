//! Links other than veth and bridge: macvlan, IFB; moving a link between namespaces (with its
//! alias); addresses without a prefix route and routes with a preferred source (ptp).

use rtnetlink::{
    packet_route::{link::MacVlanMode, route::RouteAttribute},
    LinkIfb, LinkMacVlan,
};

use super::*;

/// Our [`MacvlanMode`] from the kernel's.
pub(super) fn macvlan_mode_from(m: MacVlanMode) -> MacvlanMode {
    match m {
        MacVlanMode::Private => MacvlanMode::Private,
        MacVlanMode::Vepa => MacvlanMode::Vepa,
        MacVlanMode::Bridge => MacvlanMode::Bridge,
        MacVlanMode::Passthrough => MacvlanMode::Passthru,
        other => MacvlanMode::Other(u32::from(other)),
    }
}

fn macvlan_mode_to(m: MacvlanMode) -> MacVlanMode {
    match m {
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
        MacvlanMode::Other(v) => MacVlanMode::from(v),
    }
}

/// Flags of [`Netlink::add_address_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrFlags {
    /// IFA_F_NODAD (IPv6 only): usable at once, no duplicate address detection.
    pub nodad: bool,
    /// IFA_F_NOPREFIXROUTE: no route to the address's subnet through the link.
    pub noprefixroute: bool,
}

impl Netlink<'_> {
    /// Create a macvlan on the master `spec.master` (an ifindex in THIS handle's netns), in
    /// `into`'s netns under its final name (or here when `into` is `None`), down.
    /// Equivalent: `ip link add link MASTER name NAME [netns POD] [mtu M] [address MAC]
    /// type macvlan mode MODE [bcqueuelen N]`.
    ///
    /// The kernel looks the master up in the requesting socket's netns and checks the name in
    /// the target netns only: a host link of the same name is no obstacle. A link named
    /// `spec.name` in the target gives an error with errno EEXIST ([`NetopsError::is_exists`]);
    /// nothing is created then. Undo: [`Netlink::delete_link`] on the target's handle.
    pub fn create_macvlan(
        &self,
        spec: &MacvlanSpec,
        into: Option<&Netlink<'_>>,
    ) -> Result<Link, NetopsError> {
        validate_ifname(&spec.name)?;
        let mut b = LinkMacVlan::new(&spec.name, spec.master, macvlan_mode_to(spec.mode));
        if let Some(m) = spec.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(q) = spec.bcqueuelen {
            b = b.append_info_data(rtnetlink::packet_route::link::InfoMacVlan::BcQueueLen(q));
        }
        let target = match into {
            Some(t) => {
                let Some(ns) = t.netns() else {
                    return Err(NetopsError::NeedsPodHandle {
                        what: "create_macvlan into another netns",
                    });
                };
                b = b.setns_by_fd(ns.fd().as_raw_fd());
                t
            }
            None => self,
        };
        self.rt
            .block_on(self.handle.link().add(b.build()).execute())
            .map_err(|e| target.link_err("create macvlan", &spec.name, e))?;
        target.require_link(&spec.name)
    }

    /// Create an IFB device, up (egress shaping of a pod: its traffic is redirected here).
    /// Equivalent: `ip link add NAME [mtu M] up type ifb`. EEXIST is an error
    /// ([`NetopsError::is_exists`]). Undo: [`Netlink::delete_link`].
    pub fn create_ifb(&self, name: &str, mtu: Option<u32>) -> Result<Link, NetopsError> {
        validate_ifname(name)?;
        let mut b = LinkIfb::new(name).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.rt
            .block_on(self.handle.link().add(b.build()).execute())
            .map_err(|e| self.link_err("create ifb", name, e))?;
        self.require_link(name)
    }

    /// Move `link` (of this handle's netns) into `to`'s netns, renamed `new_name`. The link
    /// arrives down and without addresses (the kernel drops them). A link already named
    /// `new_name` there is [`NetopsError::NameTaken`], checked before anything moves.
    /// Equivalent: `ip link set NAME netns NS name NEW_NAME`.
    ///
    /// One message: the kernel moves the link (under `new_name` at once when its own name is
    /// taken there), then renames it. Should the rename still fail (a link of that name made
    /// in between), the link is moved back here and the error returned.
    pub fn move_link(
        &self,
        link: &Link,
        to: &Netlink<'_>,
        new_name: &str,
    ) -> Result<(), NetopsError> {
        validate_ifname(new_name)?;
        if to.link(new_name)?.is_some() {
            return Err(NetopsError::NameTaken {
                name: new_name.to_string(),
                netns: to.label.clone(),
            });
        }
        let target = match to.netns() {
            Some(ns) => ns.try_clone()?,
            // The host handle: the netns this thread is in.
            None => NetNs::current()?,
        };
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(target.fd().as_raw_fd())
            .name(new_name.to_string())
            .build();
        let res = self.set_link("set netns", &link.name, msg);
        if res.is_err() && self.link(&link.name)?.is_none() {
            if let Some(moved) = to.link(&link.name)? {
                let home = match self.netns() {
                    Some(ns) => ns.try_clone()?,
                    None => NetNs::current()?,
                };
                let back = LinkUnspec::new_with_index(moved.index)
                    .setns_by_fd(home.fd().as_raw_fd())
                    .build();
                if let Err(e) = to.set_link("set netns (undo)", &moved.name, back) {
                    log::warn!("moving {} back after a failed rename: {e}", link.name);
                }
            }
        }
        res
    }

    /// Rename a link (it must be down). Equivalent: `ip link set NAME name NEW`.
    pub fn rename(&self, link: &Link, new: &str) -> Result<(), NetopsError> {
        validate_ifname(new)?;
        let msg = LinkUnspec::new_with_index(link.index)
            .name(new.to_string())
            .build();
        self.set_link("rename", &link.name, msg)
    }

    /// Set (or, with "", clear) a link's alias. Equivalent: `ip link set NAME alias TEXT`.
    pub fn set_alias(&self, link: &Link, alias: &str) -> Result<(), NetopsError> {
        let msg = LinkUnspec::new_with_index(link.index).alias(alias).build();
        self.set_link("set alias", &link.name, msg)
    }

    /// Every link of this netns. Equivalent: `ip -d link show`.
    pub fn links(&self) -> Result<Vec<Link>, NetopsError> {
        Ok(self.dump_links()?.into_iter().map(link_from_msg).collect())
    }

    /// The link of the IPv4 default route ([`Netlink::default_route_link`]), else of the first
    /// IPv6 one: how the reference macvlan picks its master when none is configured.
    /// Equivalent: `ip route show default`, then `ip -6 route show default`, first `dev`.
    pub fn default_route_link_any(&self) -> Result<Option<Link>, NetopsError> {
        if let Some(l) = self.default_route_link()? {
            return Ok(Some(l));
        }
        for r in self.routes(None, Some(Family::V6))? {
            if r.dst.prefix() == 0 {
                if let Some(oif) = r.oif {
                    return self.link_by_index(oif);
                }
            }
        }
        Ok(None)
    }

    /// Add an address with flags. Equivalent: `ip addr add CIDR dev LINK [nodad]
    /// [noprefixroute]`. EEXIST is an error (check [`NetopsError::is_exists`]).
    pub fn add_address_with(
        &self,
        link: &Link,
        cidr: IpNetwork,
        flags: AddrFlags,
    ) -> Result<(), NetopsError> {
        let mut req = self
            .handle
            .address()
            .add(link.index, cidr.ip(), cidr.prefix());
        let mut f = AddressHeaderFlags::empty();
        if cidr.is_ipv6() && flags.nodad {
            f |= AddressHeaderFlags::Nodad;
        }
        let msg = req.message_mut();
        msg.header.flags = f;
        if flags.noprefixroute {
            // IFA_F_NOPREFIXROUTE does not fit the 8-bit header field: IFA_FLAGS carries it.
            let mut all = rtnetlink::packet_route::address::AddressFlags::empty();
            if cidr.is_ipv6() && flags.nodad {
                all |= rtnetlink::packet_route::address::AddressFlags::Nodad;
            }
            all |= rtnetlink::packet_route::address::AddressFlags::Noprefixroute;
            msg.attributes.push(AddressAttribute::Flags(all));
        }
        self.rt
            .block_on(req.execute())
            .map_err(|source| NetopsError::Address {
                op: "add",
                cidr: cidr.to_string(),
                link: link.name.clone(),
                netns: self.label.clone(),
                source: Box::new(source),
            })
    }

    /// [`Netlink::add_route`] with a preferred source address and/or host scope.
    /// Equivalent: `ip route add DST [via GW] dev LINK [src SRC] [scope host]` (a gateway-less
    /// IPv4 route is scope link unless `host_scope`).
    pub fn add_route_ext(
        &self,
        link: &Link,
        r: &RouteSpec,
        extra: &RouteExtra,
    ) -> Result<(), NetopsError> {
        let mut msg = self.route_message(link, r)?;
        if let Some(s) = extra.src {
            if s.is_ipv4() != r.dst.is_ipv4() {
                return Err(NetopsError::InvalidRoute {
                    dst: r.dst.to_string(),
                    reason: format!("source {s} is not of the destination's family"),
                });
            }
            msg.attributes.push(RouteAttribute::PrefSource(match s {
                IpAddr::V4(v) => RouteAddress::Inet(v),
                IpAddr::V6(v) => RouteAddress::Inet6(v),
            }));
        }
        if extra.host_scope {
            msg.header.scope = RouteScope::Host;
        }
        self.send_route(link, r, msg)
    }
}

/// What [`Netlink::add_route_ext`] adds to a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteExtra {
    /// `src`: the preferred source address.
    pub src: Option<IpAddr>,
    /// `scope host` (the reference's `AddHostRoute`).
    pub host_scope: bool,
}
