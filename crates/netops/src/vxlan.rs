//! VXLAN devices, their forwarding database (FDB), permanent neighbours and the routes through
//! them: what the routed overlay across hosts needs, over rtnetlink (no `ip`/`bridge` processes).
//!
//! The model (see docs/overlay.md): one VXLAN device per overlay network and host, not a bridge
//! port, `nolearning`, its MAC derived from (VNI, VTEP). Per remote host that has blocks in the
//! network: one FDB entry (the host's device MAC -> its VTEP), one permanent neighbour (the
//! host's IPv6 link-local address, derived from that MAC -> the MAC) and a route per aggregate
//! of the host's blocks through that link-local next hop (`via inet6` for IPv4). No all-zero
//! entry: nothing floods between hosts.

mod routes;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
        NLM_F_REQUEST,
    },
    packet_route::{
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteType,
        AddressFamily, RouteNetlinkMessage,
    },
    LinkVxlan,
};

use crate::{
    kernel::{is_nl_exists, is_nl_not_found, link_from_msg},
    types::{Neighbour, VxlanSpec},
    validate_ifname, Link, MacAddr, Netlink, NetopsError,
};

/// The IANA VXLAN port (`dstport 4789`; the kernel's default is the legacy 8472).
pub const VXLAN_PORT: u16 = 4789;

/// The all-zero MAC: an FDB entry with it is a flood destination (broadcast, multicast and
/// unknown unicast go to every such VTEP).
pub const FLOOD_MAC: MacAddr = MacAddr([0; 6]);

/// A VXLAN device as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub link: Link,
    pub vni: Option<u32>,
    /// `local`: the VTEP address, IPv4 or IPv6.
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    /// True when [`Netlink::ensure_vxlan`] created it.
    pub created: bool,
}

/// One FDB entry of a VXLAN device that names a remote VTEP (`bridge fdb show dev VX`, lines with
/// `dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

fn vxlan_from_msg(
    m: rtnetlink::packet_route::link::LinkMessage,
) -> (Link, Option<u32>, Option<IpAddr>, Option<u16>) {
    let (mut vni, mut local, mut port) = (None, None, None);
    for a in &m.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(vs)) = i {
                    for v in vs {
                        match v {
                            InfoVxlan::Id(id) => vni = Some(*id),
                            InfoVxlan::Local(l) => local = Some(IpAddr::V4(*l)),
                            InfoVxlan::Local6(l) => local = Some(IpAddr::V6(*l)),
                            InfoVxlan::Port(p) => port = Some(*p),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    (link_from_msg(m), vni, local, port)
}

impl Netlink<'_> {
    /// Read a VXLAN device by name; `Ok(None)` if there is no link of that name.
    /// Equivalent: `ip -d link show NAME`.
    pub fn vxlan(&self, name: &str) -> Result<Option<VxlanInfo>, NetopsError> {
        validate_ifname(name)?;
        let req = self.handle.link().get().match_name(name).execute();
        let msg = match self.rt.block_on(async move {
            futures::pin_mut!(req);
            req.try_next().await
        }) {
            Ok(m) => m,
            Err(e) if is_nl_not_found(&e) => None,
            Err(e) => return Err(self.link_err("get", name, e)),
        };
        Ok(msg.map(|m| {
            let (link, vni, local, port) = vxlan_from_msg(m);
            VxlanInfo {
                link,
                vni,
                local,
                port,
                created: false,
            }
        }))
    }

    /// Make sure the VXLAN device `spec.name` exists with `spec.vni`, `spec.local` (and
    /// `spec.mac` when given); create it if missing (not up). A link of that name that is not a
    /// VXLAN device, or one with another VNI, local address or MAC, is an error
    /// ([`NetopsError::VxlanMismatch`]): it was not made for this network. A racing creator
    /// (EEXIST) is tolerated by reading the link again.
    /// Equivalent: `ip link add NAME [address MAC] type vxlan id VNI local IP dev UNDERLAY
    /// dstport 4789 nolearning [mtu MTU]`.
    pub fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<VxlanInfo, NetopsError> {
        validate_ifname(&spec.name)?;
        let mut created = false;
        let info = match self.vxlan(&spec.name)? {
            Some(i) => i,
            None => {
                let mut b = LinkVxlan::new(&spec.name, spec.vni)
                    .port(spec.port)
                    .learning(spec.learning);
                b = match spec.local {
                    IpAddr::V4(l) => b.local(l),
                    IpAddr::V6(l) => b.local6(l),
                };
                if let Some(dev) = spec.underlay {
                    b = b.dev(dev);
                }
                if let Some(m) = spec.mtu {
                    b = b.mtu(m);
                }
                if let Some(mac) = spec.mac {
                    b = b.address(mac.0.to_vec());
                }
                match self
                    .rt
                    .block_on(self.handle.link().add(b.build()).execute())
                {
                    Ok(()) => created = true,
                    Err(e) if is_nl_exists(&e) => {
                        log::debug!("vxlan {} created concurrently; re-reading it", spec.name)
                    }
                    Err(source) => {
                        return Err(NetopsError::Link {
                            op: "create vxlan",
                            name: spec.name.clone(),
                            netns: self.label.clone(),
                            source: Box::new(source),
                        })
                    }
                }
                self.vxlan(&spec.name)?
                    .ok_or_else(|| NetopsError::LinkNotFound {
                        name: spec.name.clone(),
                        netns: self.label.clone(),
                    })?
            }
        };
        if info.link.kind.as_deref() != Some("vxlan")
            || info.vni != Some(spec.vni)
            || info.local != Some(spec.local)
            || spec.mac.is_some_and(|m| info.link.mac != Some(m))
        {
            return Err(NetopsError::VxlanMismatch {
                name: spec.name.clone(),
                netns: self.label.clone(),
                want: format!(
                    "vxlan id {} local {}{}",
                    spec.vni,
                    spec.local,
                    spec.mac
                        .map(|m| format!(" address {m}"))
                        .unwrap_or_default()
                ),
                have: format!(
                    "{} id {:?} local {:?} address {:?}",
                    info.link.kind.as_deref().unwrap_or("non-vxlan link"),
                    info.vni,
                    info.local,
                    info.link.mac.map(|m| m.to_string())
                ),
            });
        }
        Ok(VxlanInfo { created, ..info })
    }

    /// Every VXLAN device of this netns. Equivalent: `ip -d link show type vxlan`.
    pub fn vxlans(&self) -> Result<Vec<VxlanInfo>, NetopsError> {
        Ok(self
            .dump_links()?
            .into_iter()
            .map(vxlan_from_msg)
            .filter(|(l, ..)| l.kind.as_deref() == Some("vxlan"))
            .map(|(link, vni, local, port)| VxlanInfo {
                link,
                vni,
                local,
                port,
                created: false,
            })
            .collect())
    }

    fn fdb_message(&self, dev: &Link, mac: [u8; 6], dst: Option<IpAddr>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = dev.index;
        m.header.state = NeighbourState::Permanent;
        // NTF_SELF: the entry belongs to the VXLAN device's own FDB, not to its bridge's.
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(d) = dst {
            m.attributes.push(NeighbourAttribute::Destination(match d {
                IpAddr::V4(v) => NeighbourAddress::Inet(v),
                IpAddr::V6(v) => NeighbourAddress::Inet6(v),
            }));
        }
        m
    }

    fn neigh_request(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        self.rt.block_on(async move {
            let mut resp = handle.request(req)?;
            while let Some(m) = resp.next().await {
                if let NetlinkPayload::Error(e) = m.payload {
                    return Err(rtnetlink::Error::NetlinkError(e));
                }
            }
            Ok(())
        })
    }

    fn fdb_err(
        &self,
        op: &'static str,
        dev: &Link,
        e: &FdbEntry,
        source: rtnetlink::Error,
    ) -> NetopsError {
        NetopsError::Fdb {
            op,
            mac: MacAddr(e.mac).to_string(),
            dst: e.dst,
            dev: dev.name.clone(),
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Add an FDB entry `mac -> dst` on a VXLAN device; an existing identical entry is fine.
    /// The all-zero MAC ([`FLOOD_MAC`]) is appended, so several remote VTEPs each get a copy of
    /// flooded frames.
    /// Equivalent: `bridge fdb append 00:00:00:00:00:00 dev VX dst IP` for the flood entry,
    /// `bridge fdb replace MAC dev VX dst IP permanent` for a pod.
    pub fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError> {
        let msg = self.fdb_message(dev, entry.mac, Some(entry.dst));
        let flags = if entry.mac == FLOOD_MAC.0 {
            NLM_F_CREATE | NLM_F_APPEND
        } else {
            NLM_F_CREATE | NLM_F_REPLACE
        };
        match self.neigh_request(RouteNetlinkMessage::NewNeighbour(msg), flags) {
            Ok(()) => Ok(()),
            Err(e) if is_nl_exists(&e) => Ok(()),
            Err(e) => Err(self.fdb_err("add", dev, entry, e)),
        }
    }

    /// Delete an FDB entry; `Ok(false)` when the kernel says it was not there (a missing remote
    /// of an existing all-zero entry may be reported as success).
    /// Equivalent: `bridge fdb del MAC dev VX dst IP`.
    pub fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError> {
        let msg = self.fdb_message(dev, entry.mac, Some(entry.dst));
        match self.neigh_request(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.fdb_err("delete", dev, entry, e)),
        }
    }

    /// FDB entries of `dev` that name a remote VTEP (`dst`).
    /// Equivalent: `bridge fdb show dev VX | grep dst`.
    pub fn fdb_entries(&self, dev: &Link) -> Result<Vec<FdbEntry>, NetopsError> {
        let req = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let msgs: Vec<NeighbourMessage> =
            self.rt
                .block_on(req.try_collect())
                .map_err(|source| NetopsError::Dump {
                    what: "fdb",
                    netns: self.label.clone(),
                    source: Box::new(source),
                })?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.ifindex != dev.index {
                continue;
            }
            let (mut mac, mut dst) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        dst = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        dst = Some(IpAddr::V6(*v))
                    }
                    // In an AF_BRIDGE message the VTEP address is not typed by the family:
                    // its length says v4 or v6.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst) {
                out.push(FdbEntry { mac, dst });
            }
        }
        Ok(out)
    }

    /// A permanent neighbour (ARP/NDP entry) `ip -> mac` on `dev`, replacing any other.
    /// Equivalent: `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub fn neigh_replace(&self, dev: &Link, ip: IpAddr, mac: MacAddr) -> Result<(), NetopsError> {
        let req = self
            .handle
            .neighbours()
            .add(dev.index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute();
        self.rt
            .block_on(req)
            .map_err(|source| NetopsError::Neighbour {
                op: "replace",
                ip,
                dev: dev.name.clone(),
                netns: self.label.clone(),
                source: Box::new(source),
            })
    }

    /// Delete the neighbour `ip` on `dev`; `Ok(false)` if there was none.
    /// Equivalent: `ip neigh del IP dev DEV`.
    pub fn neigh_del(&self, dev: &Link, ip: IpAddr) -> Result<bool, NetopsError> {
        let mut m = NeighbourMessage::default();
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = dev.index;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
        match self.neigh_request(RouteNetlinkMessage::DelNeighbour(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(source) => Err(NetopsError::Neighbour {
                op: "delete",
                ip,
                dev: dev.name.clone(),
                netns: self.label.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// The interface of the IPv4 default route (lowest metric), if any.
    /// Equivalent: `ip -4 route show default` and take `dev`.
    pub fn default_route_link(&self) -> Result<Option<Link>, NetopsError> {
        let mut routes: Vec<_> = self
            .routes(None, Some(crate::Family::V4))?
            .into_iter()
            .filter(|r| r.dst.prefix() == 0 && r.oif.is_some())
            .collect();
        routes.sort_by_key(|r| r.priority.unwrap_or(0));
        match routes.first().and_then(|r| r.oif) {
            Some(oif) => self.link_by_index(oif),
            None => Ok(None),
        }
    }

    /// The first global IPv4 address of `link` (a VTEP address).
    /// Equivalent: `ip -4 addr show dev LINK scope global`.
    pub fn first_ipv4(&self, link: &Link) -> Result<Option<Ipv4Addr>, NetopsError> {
        Ok(self
            .addresses(link, Some(crate::Family::V4))?
            .into_iter()
            .find_map(|a| match a.ip() {
                IpAddr::V4(v) if !v.is_loopback() && !v.is_link_local() => Some(v),
                _ => None,
            }))
    }

    /// The first global IPv6 address of `link` (an IPv6 VTEP address: not link-local, not
    /// loopback, not multicast). Equivalent: `ip -6 addr show dev LINK scope global`.
    pub fn first_global_ipv6(&self, link: &Link) -> Result<Option<Ipv6Addr>, NetopsError> {
        Ok(self
            .addresses(link, Some(crate::Family::V6))?
            .into_iter()
            .find_map(|a| match a.ip() {
                IpAddr::V6(v)
                    if !v.is_loopback()
                        && !v.is_multicast()
                        && !v.is_unspecified()
                        && (v.segments()[0] & 0xffc0) != 0xfe80 =>
                {
                    Some(v)
                }
                _ => None,
            }))
    }

    /// The IPv4 and IPv6 neighbours of `dev` (both families; the kernel's own resolutions
    /// included, see [`Neighbour::permanent`]). Equivalent: `ip neigh show dev DEV`.
    pub fn neighbours(&self, dev: &Link) -> Result<Vec<Neighbour>, NetopsError> {
        let req = self.handle.neighbours().get().execute();
        let msgs: Vec<NeighbourMessage> =
            self.rt
                .block_on(req.try_collect())
                .map_err(|source| NetopsError::Dump {
                    what: "neighbours",
                    netns: self.label.clone(),
                    source: Box::new(source),
                })?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.ifindex != dev.index
                || !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        ip = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        ip = Some(IpAddr::V6(*v))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddr)
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour {
                    ip,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }
}
