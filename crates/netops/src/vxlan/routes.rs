//! The routes through a VXLAN device: a remote host's blocks via its IPv6 link-local next
//! hop (`via inet6` for IPv4 destinations), added, deleted and listed per table.

use rtnetlink::{
    packet_route::route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteVia,
    },
    RouteMessageBuilder,
};

use super::*;
use crate::types::PeerRoute;

impl Netlink<'_> {
    fn peer_route_message(&self, dev: &Link, table: u32, r: &PeerRoute) -> RouteMessage {
        let mut m = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .map(|b| b.build())
            .unwrap_or_default();
        // The builder for one family at a time cannot express an IPv4 destination through an
        // IPv6 next hop: set the header and attributes here.
        m.header.table = if table > 255 {
            rtnetlink::packet_route::route::RouteHeader::RT_TABLE_UNSPEC
        } else {
            table as u8
        };
        if table > 255 {
            m.attributes.push(RouteAttribute::Table(table));
        }
        m.header.protocol = RouteProtocol::Static;
        m.header.kind = RouteType::Unicast;
        m.header.flags.insert(RouteFlags::Onlink);
        m.attributes.push(RouteAttribute::Oif(dev.index));
        if r.dst.is_ipv4() {
            m.attributes
                .push(RouteAttribute::Via(RouteVia::Inet6(r.via)));
        } else {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet6(r.via)));
        }
        m
    }

    fn peer_err(
        &self,
        op: &'static str,
        dev: &Link,
        r: &PeerRoute,
        e: rtnetlink::Error,
    ) -> NetopsError {
        NetopsError::Route {
            op,
            dst: r.dst.to_string(),
            gw: Some(IpAddr::V6(r.via)),
            link: dev.name.clone(),
            netns: self.label.clone(),
            source: Box::new(e),
        }
    }

    /// Add a remote block's route through `dev` in `table`; an identical route is fine.
    /// Equivalent: `ip route replace DST via inet6 VIA dev DEV onlink table T`.
    pub fn peer_route_add(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<(), NetopsError> {
        let msg = self.peer_route_message(dev, table, r);
        match self
            .rt
            .block_on(self.handle.route().add(msg).replace().execute())
        {
            Ok(()) => Ok(()),
            Err(e) if is_nl_exists(&e) => Ok(()),
            Err(e) => Err(self.peer_err("add", dev, r, e)),
        }
    }

    /// Delete one; `Ok(false)` when it was not there.
    /// Equivalent: `ip route del DST via inet6 VIA dev DEV table T`.
    pub fn peer_route_del(
        &self,
        dev: &Link,
        table: u32,
        r: &PeerRoute,
    ) -> Result<bool, NetopsError> {
        let msg = self.peer_route_message(dev, table, r);
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.peer_err("delete", dev, r, e)),
        }
    }

    /// The routes of `table` through `dev` whose next hop is an IPv6 address (the remote
    /// blocks the agent keeps), both families. The dump asks the kernel for that table only.
    /// Equivalent: `ip route show table T dev DEV; ip -6 route show table T dev DEV`.
    pub fn peer_routes(&self, dev: &Link, table: u32) -> Result<Vec<PeerRoute>, NetopsError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = if v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            if table <= 255 {
                msg.header.table = table as u8;
            } else {
                msg.attributes.push(RouteAttribute::Table(table));
            }
            msg.attributes.push(RouteAttribute::Oif(dev.index));
            let msgs = self.dump_routes_strict(msg)?;
            for m in msgs {
                let mut t = u32::from(m.header.table);
                let (mut dst, mut via, mut oif) = (None, None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Table(x) => t = *x,
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                            dst = Some(IpAddr::V4(*d))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                            dst = Some(IpAddr::V6(*d))
                        }
                        RouteAttribute::Via(RouteVia::Inet6(g))
                        | RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(*g),
                        _ => {}
                    }
                }
                if t != table || oif != Some(dev.index) {
                    continue;
                }
                let dst = dst.unwrap_or(if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                let (Some(via), Ok(dst)) = (
                    via,
                    ipnetwork::IpNetwork::new(dst, m.header.destination_prefix_length),
                ) else {
                    continue;
                };
                out.push(PeerRoute { dst, via });
            }
        }
        Ok(out)
    }
}
