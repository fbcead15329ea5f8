//! Addresses and routes of a link: add, ensure, list, delete.

use super::*;

fn route_addr(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(v)),
        _ => None,
    }
}

fn addr_from_msg(m: &AddressMessage) -> Option<IpNetwork> {
    let mut addr = None;
    let mut local = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(ip) => addr = Some(*ip),
            AddressAttribute::Local(ip) => local = Some(*ip),
            _ => {}
        }
    }
    IpNetwork::new(local.or(addr)?, m.header.prefix_len).ok()
}

fn address_message(index: u32, cidr: &IpNetwork) -> AddressMessage {
    match cidr {
        IpNetwork::V4(n) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(n.ip(), n.prefix())
            .build(),
        IpNetwork::V6(n) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(n.ip(), n.prefix())
            .build(),
    }
}

impl Netlink<'_> {
    fn addr_err(
        &self,
        op: &'static str,
        link: &Link,
        cidr: &IpNetwork,
        source: rtnetlink::Error,
    ) -> NetopsError {
        NetopsError::Address {
            op,
            cidr: cidr.to_string(),
            link: link.name.clone(),
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Add an address. IPv6 addresses get IFA_F_NODAD unless `dad`.
    /// EEXIST is returned as an error (check [`NetopsError::is_exists`]).
    /// Equivalent: `ip addr add CIDR dev LINK [nodad]` (IPv4 also sets the
    /// broadcast address like `brd +`).
    pub fn add_address(&self, link: &Link, cidr: IpNetwork, dad: bool) -> Result<(), NetopsError> {
        let mut req = self
            .handle
            .address()
            .add(link.index, cidr.ip(), cidr.prefix());
        if cidr.is_ipv6() && !dad {
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        self.rt
            .block_on(req.execute())
            .map_err(|e| self.addr_err("add", link, &cidr, e))
    }

    /// Add `cidr` unless the link already has that IP (with any prefix).
    /// Returns true when added here (undo: [`Netlink::delete_address`]).
    /// Equivalent: `ip addr show dev LINK | grep -q IP || ip addr add CIDR dev LINK`.
    pub fn ensure_address(&self, link: &Link, cidr: IpNetwork) -> Result<bool, NetopsError> {
        let have = self.addresses(link, Some(Family::of(&cidr.ip())))?;
        if have.iter().any(|a| a.ip() == cidr.ip()) {
            return Ok(false);
        }
        match self.add_address(link, cidr, false) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Addresses of a link, optionally of one family (link-local IPv6
    /// included). Equivalent: `ip [-4|-6] addr show dev LINK`.
    pub fn addresses(
        &self,
        link: &Link,
        family: Option<Family>,
    ) -> Result<Vec<IpNetwork>, NetopsError> {
        let mut req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index);
        req.message_mut().header.family = match family {
            Some(Family::V4) => AddressFamily::Inet,
            Some(Family::V6) => AddressFamily::Inet6,
            None => AddressFamily::Unspec,
        };
        // The kernel filters by link only under strict checking; without it an address dump
        // walks every link of the netns (70 us with a bridge of 500 ports). Strict checking
        // is on for this one request only: it also rejects header fields that other dumps of
        // the crate set. Without it (an old kernel) the crate's filter still applies.
        let strict = self.strict_check(true);
        if strict {
            req.message_mut().header.index = link.index;
        }
        let msgs = self
            .rt
            .block_on(req.execute().try_collect::<Vec<AddressMessage>>());
        if strict {
            self.strict_check(false);
        }
        let msgs = msgs.map_err(|source| NetopsError::Dump {
            what: "addresses",
            netns: self.label.clone(),
            source: Box::new(source),
        })?;
        Ok(msgs.iter().filter_map(addr_from_msg).collect())
    }

    /// Delete an address; `Ok(false)` if it was not there.
    /// Equivalent: `ip addr del CIDR dev LINK`.
    pub fn delete_address(&self, link: &Link, cidr: IpNetwork) -> Result<bool, NetopsError> {
        let msg = address_message(link.index, &cidr);
        match self.rt.block_on(self.handle.address().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.addr_err("delete", link, &cidr, e)),
        }
    }

    pub(super) fn route_message(
        &self,
        link: &Link,
        r: &RouteSpec,
    ) -> Result<RouteMessage, NetopsError> {
        let bad = |reason: String| NetopsError::InvalidRoute {
            dst: r.dst.to_string(),
            reason,
        };
        if let Some(gw) = r.gw {
            if gw.is_ipv4() != r.dst.is_ipv4() {
                return Err(bad(format!(
                    "gateway {gw} is not of the destination's family"
                )));
            }
        }
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .map_err(|e| bad(e.to_string()))?
            .output_interface(link.index)
            // Same as `ip route add` (and the Go plugins): proto boot.
            .protocol(RouteProtocol::Boot);
        match r.gw {
            Some(gw) => b = b.gateway(gw).map_err(|e| bad(e.to_string()))?,
            // A gateway-less IPv4 route is on-link: scope link, as `ip route add DST dev X` does.
            None if r.dst.is_ipv4() => b = b.scope(RouteScope::Link),
            None => {}
        }
        if let Some(p) = r.priority {
            b = b.priority(p);
        }
        if r.onlink {
            b = b.onlink();
        }
        Ok(b.build())
    }

    /// Add a route in the main table through `link`.
    /// Equivalent: `ip route add DST [via GW] dev LINK [metric N]`
    /// (`DST` = `default` for 0.0.0.0/0 or ::/0). EEXIST is an error.
    pub fn add_route(&self, link: &Link, r: &RouteSpec) -> Result<(), NetopsError> {
        let msg = self.route_message(link, r)?;
        self.send_route(link, r, msg)
    }

    /// Send a route of `r` through `link` built by [`Netlink::route_message`] (and amended).
    pub(crate) fn send_route(
        &self,
        link: &Link,
        r: &RouteSpec,
        msg: RouteMessage,
    ) -> Result<(), NetopsError> {
        self.rt
            .block_on(self.handle.route().add(msg).execute())
            .map_err(|source| NetopsError::Route {
                op: "add",
                dst: r.dst.to_string(),
                gw: r.gw,
                link: link.name.clone(),
                netns: self.label.clone(),
                source: Box::new(source),
            })
    }

    /// Delete a route added with [`Netlink::add_route`]; `Ok(false)` if absent.
    /// Equivalent: `ip route del DST [via GW] dev LINK`.
    pub fn delete_route(&self, link: &Link, r: &RouteSpec) -> Result<bool, NetopsError> {
        let msg = self.route_message(link, r)?;
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(source) => Err(NetopsError::Route {
                op: "delete",
                dst: r.dst.to_string(),
                gw: r.gw,
                link: link.name.clone(),
                netns: self.label.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// Routes of the main table, optionally only those through `link` and of
    /// one family. Equivalent: `ip [-4|-6] route show [dev LINK]`.
    pub fn routes(
        &self,
        link: Option<&Link>,
        family: Option<Family>,
    ) -> Result<Vec<RouteInfo>, NetopsError> {
        let mut out = Vec::new();
        let fams: &[Family] = match family {
            Some(Family::V4) => &[Family::V4],
            Some(Family::V6) => &[Family::V6],
            None => &[Family::V4, Family::V6],
        };
        for fam in fams {
            let msg = match fam {
                Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            let msgs: Vec<RouteMessage> = self
                .rt
                .block_on(self.handle.route().get(msg).execute().try_collect())
                .map_err(|source| NetopsError::Dump {
                    what: "routes",
                    netns: self.label.clone(),
                    source: Box::new(source),
                })?;
            for m in msgs {
                let mut table = u32::from(m.header.table);
                let mut dst = None;
                let mut gw = None;
                let mut oif = None;
                let mut priority = None;
                for a in m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = route_addr(d),
                        RouteAttribute::Gateway(g) => gw = route_addr(g),
                        RouteAttribute::Oif(o) => oif = Some(o),
                        RouteAttribute::Priority(p) => priority = Some(p),
                        RouteAttribute::Table(t) => table = t,
                        _ => {}
                    }
                }
                if table != u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                if let Some(l) = link {
                    if oif != Some(l.index) {
                        continue;
                    }
                }
                let dst_ip = dst.unwrap_or(match fam {
                    Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                });
                let Ok(dst) = IpNetwork::new(dst_ip, m.header.destination_prefix_length) else {
                    continue;
                };
                out.push(RouteInfo {
                    dst,
                    gw,
                    oif,
                    priority,
                    table,
                });
            }
        }
        Ok(out)
    }
}

impl Netlink<'_> {
    /// A route dump filtered by the kernel on the table and output interface that `msg`
    /// carries (`rtm_table`/`RTA_TABLE`, `RTA_OIF`) under strict checking; without strict
    /// checking (an old kernel) every route comes back and the caller's filter applies.
    pub(crate) fn dump_routes_strict(
        &self,
        mut msg: RouteMessage,
    ) -> Result<Vec<RouteMessage>, NetopsError> {
        use rtnetlink::packet_route::route::RouteType;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unspec;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.destination_prefix_length = 0;
        msg.header.source_prefix_length = 0;
        msg.header.tos = 0;
        let strict = self.strict_check(true);
        let msgs = self.rt.block_on(
            self.handle
                .route()
                .get(msg)
                .execute()
                .try_collect::<Vec<_>>(),
        );
        if strict {
            self.strict_check(false);
        }
        msgs.map_err(|source| NetopsError::Dump {
            what: "routes",
            netns: self.label.clone(),
            source: Box::new(source),
        })
    }
}

impl Netlink<'_> {
    /// `NETLINK_GET_STRICT_CHK` on this connection's socket; false when it could not be set.
    #[allow(unsafe_code)]
    fn strict_check(&self, on: bool) -> bool {
        let v: libc::c_int = on.into();
        // SAFETY: setsockopt on the connection's own fd (alive as long as the runtime that
        // `self` borrows), with a pointer to a c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_NETLINK,
                libc::NETLINK_GET_STRICT_CHK,
                std::ptr::from_ref(&v).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }
}
