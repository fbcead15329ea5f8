//! Synchronous netlink operations over rtnetlink on a tokio current_thread
//! runtime. One [`Kernel`] per process; [`Netlink`] views talk to the host
//! netns or to one pod netns.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
        link::{
            InfoBridgePort, InfoData, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
            LinkMessage,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
        AddressFamily,
    },
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec,
    LinkVeth, RouteMessageBuilder,
};
use tokio::runtime::Runtime;

use crate::{
    error::{errno, netlink_errno},
    types::*,
    validate_ifname, NetNs, NetopsError,
};

mod seal;
pub use seal::SEAL_RULE_PRIORITY;

const HOST: &str = "host";

/// Owns the tokio current_thread runtime and the netlink connection of the
/// netns the creating thread is in (the "host"). Create it on the thread
/// that will use it; all calls block on that runtime.
pub struct Kernel {
    rt: Runtime,
    host: Handle,
}

/// A netlink connection bound to one netns, usable synchronously.
/// Obtained from [`Kernel::host`] or [`Kernel::pod`].
pub struct Netlink<'k> {
    pub(crate) rt: &'k Runtime,
    pub(crate) handle: Handle,
    /// The pod netns this socket is bound to (`None` = host).
    ns: Option<NetNs>,
    pub(crate) label: String,
}

fn connect(netns: &str) -> Result<Handle, NetopsError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetopsError::Connection {
            netns: netns.to_string(),
            source,
        })?;
    tokio::spawn(conn);
    Ok(handle)
}

impl Kernel {
    /// Build the runtime and open a netlink socket in the calling thread's
    /// current netns.
    pub fn new() -> Result<Self, NetopsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetopsError::Runtime)?;
        let host = {
            let _g = rt.enter();
            connect(HOST)?
        };
        Ok(Self { rt, host })
    }

    /// Operations on the host netns (the one the Kernel was created in).
    pub fn host(&self) -> Netlink<'_> {
        Netlink {
            rt: &self.rt,
            handle: self.host.clone(),
            ns: None,
            label: HOST.into(),
        }
    }

    /// Open a second netlink connection bound to `ns`: setns into it on this
    /// thread, create the socket, setns back, with no `.await` in between.
    /// The socket stays bound to `ns` for its whole life.
    pub fn pod(&self, ns: &NetNs) -> Result<Netlink<'_>, NetopsError> {
        let label = ns.path().display().to_string();
        let _g = self.rt.enter();
        let handle = ns.run(|| connect(&label))??;
        Ok(Netlink {
            rt: &self.rt,
            handle,
            ns: Some(ns.try_clone()?),
            label,
        })
    }
}

pub(crate) fn link_from_msg(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        admin_up: m.header.flags.contains(LinkFlags::Up),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        allmulti: m.header.flags.contains(LinkFlags::Allmulti),
        ..Default::default()
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(b) => l.mac = MacAddr::from_slice(&b),
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::TxQueueLen(v) => l.txqlen = v,
            LinkAttribute::Controller(c) if c != 0 => l.master = Some(c),
            LinkAttribute::OperState(s) => l.oper_state = s.to_string(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            let mut f = BridgePortFlags::default();
                            for p in ps {
                                match p {
                                    InfoBridgePort::HairpinMode(v) => f.hairpin = v,
                                    InfoBridgePort::Isolated(v) => f.isolated = v,
                                    _ => {}
                                }
                            }
                            l.bridge_port = Some(f);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

pub(crate) fn is_nl_not_found(e: &rtnetlink::Error) -> bool {
    netlink_errno(e).is_some_and(errno::is_not_found)
}

pub(crate) fn is_nl_exists(e: &rtnetlink::Error) -> bool {
    netlink_errno(e).is_some_and(errno::is_exists)
}

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
    /// "host" or the pod netns path, as used in error messages.
    pub fn netns_label(&self) -> &str {
        &self.label
    }

    /// The pod netns this handle is bound to (`None` for the host handle).
    pub fn netns(&self) -> Option<&NetNs> {
        self.ns.as_ref()
    }

    pub(crate) fn link_err(
        &self,
        op: &'static str,
        name: &str,
        source: rtnetlink::Error,
    ) -> NetopsError {
        NetopsError::Link {
            op,
            name: name.to_string(),
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Read a link by name; `Ok(None)` if there is none.
    /// Equivalent: `ip -d link show NAME`.
    pub fn link(&self, name: &str) -> Result<Option<Link>, NetopsError> {
        validate_ifname(name)?;
        let req = self.handle.link().get().match_name(name).execute();
        match self.rt.block_on(async move {
            futures::pin_mut!(req);
            req.try_next().await
        }) {
            Ok(m) => Ok(m.map(link_from_msg)),
            Err(e) if is_nl_not_found(&e) => Ok(None),
            Err(e) => Err(self.link_err("get", name, e)),
        }
    }

    /// Read a link by ifindex; `Ok(None)` if there is none.
    /// Equivalent: `ip -d link show` and pick the index.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetopsError> {
        let req = self.handle.link().get().match_index(index).execute();
        match self.rt.block_on(async move {
            futures::pin_mut!(req);
            req.try_next().await
        }) {
            Ok(m) => Ok(m.map(link_from_msg)),
            Err(e) if is_nl_not_found(&e) => Ok(None),
            Err(e) => Err(self.link_err("get", &format!("#{index}"), e)),
        }
    }

    /// Like [`Netlink::link`] but a missing link is [`NetopsError::LinkNotFound`].
    pub fn require_link(&self, name: &str) -> Result<Link, NetopsError> {
        self.link(name)?.ok_or_else(|| NetopsError::LinkNotFound {
            name: name.to_string(),
            netns: self.label.clone(),
        })
    }

    pub(crate) fn set_link(
        &self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), NetopsError> {
        let req = self.handle.link().set(msg).execute();
        self.rt
            .block_on(req)
            .map_err(|e| self.link_err(op, name, e))
    }

    /// Make sure a bridge `name` exists and is up; create it if missing.
    /// Equivalent: `ip link add NAME [mtu MTU] type bridge [vlan_filtering 1]
    /// && ip link set NAME up`. A racing creator (EEXIST) is tolerated by
    /// reading the link again. A non-bridge link with that name is
    /// [`NetopsError::NotABridge`]. The bridge MAC is left to the kernel.
    /// MTU and vlan_filtering apply only when the bridge is created here.
    pub fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<BridgeInfo, NetopsError> {
        let mut created = false;
        let link = match self.link(name)? {
            Some(l) => l,
            None => {
                let mut b = LinkBridge::new(name);
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                if vlan_filtering {
                    b = b.vlan_filtering(true);
                }
                match self
                    .rt
                    .block_on(self.handle.link().add(b.build()).execute())
                {
                    Ok(()) => created = true,
                    Err(e) if is_nl_exists(&e) => {
                        log::debug!("bridge {name} created concurrently; re-reading it")
                    }
                    Err(source) => {
                        return Err(NetopsError::CreateBridge {
                            name: name.into(),
                            source: Box::new(source),
                        })
                    }
                }
                self.require_link(name)?
            }
        };
        if !link.is_bridge() {
            return Err(NetopsError::NotABridge {
                name: name.into(),
                netns: self.label.clone(),
                kind: link.kind,
            });
        }
        let mut link = link;
        if !link.admin_up {
            self.set_up(&link)?;
            link.admin_up = true;
        }
        Ok(BridgeInfo { link, created })
    }

    /// Set a link administratively up. Equivalent: `ip link set NAME up`.
    pub fn set_up(&self, link: &Link) -> Result<(), NetopsError> {
        self.set_link(
            "set up",
            &link.name,
            LinkUnspec::new_with_index(link.index).up().build(),
        )
    }

    /// Set a link administratively down. Equivalent: `ip link set NAME down`.
    pub fn set_down(&self, link: &Link) -> Result<(), NetopsError> {
        self.set_link(
            "set down",
            &link.name,
            LinkUnspec::new_with_index(link.index).down().build(),
        )
    }

    /// Bring `lo` up (in a pod netns). Equivalent: `ip link set lo up`.
    pub fn loopback_up(&self) -> Result<(), NetopsError> {
        let lo = self.require_link("lo")?;
        if lo.admin_up {
            return Ok(());
        }
        self.set_up(&lo)
    }

    /// Promiscuous mode on/off. Equivalent: `ip link set NAME promisc on|off`.
    pub fn set_promisc(&self, link: &Link, on: bool) -> Result<(), NetopsError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .promiscuous(on)
            .build();
        self.set_link("set promisc", &link.name, msg)
    }

    /// Set the hardware address. Equivalent: `ip link set NAME address MAC`.
    ///
    /// On a bridge this also pins the address: a bridge whose MAC was never set takes the
    /// lowest MAC of its ports, which changes as pods come and go and leaves stale gateway
    /// entries in the pods' neighbour tables.
    pub fn set_mac(&self, link: &Link, mac: MacAddr) -> Result<(), NetopsError> {
        self.set_link(
            "set address",
            &link.name,
            LinkUnspec::new_with_index(link.index)
                .address(mac.0.to_vec())
                .build(),
        )
    }

    /// Set or clear IFF_ALLMULTI. Equivalent: `ip link set NAME allmulticast on|off`.
    pub fn set_allmulti(&self, link: &Link, on: bool) -> Result<(), NetopsError> {
        self.set_link(
            "set allmulticast",
            &link.name,
            LinkUnspec::new_with_index(link.index)
                .allmulticast(on)
                .build(),
        )
    }

    /// Set the transmit queue length. Equivalent: `ip link set NAME txqueuelen LEN`.
    pub fn set_txqlen(&self, link: &Link, len: u32) -> Result<(), NetopsError> {
        self.set_link(
            "set txqueuelen",
            &link.name,
            LinkUnspec::new_with_index(link.index)
                .txqueuelen(len)
                .build(),
        )
    }

    /// Set the MTU. Equivalent: `ip link set NAME mtu MTU`.
    pub fn set_mtu(&self, link: &Link, mtu: u32) -> Result<(), NetopsError> {
        self.set_link(
            "set mtu",
            &link.name,
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
        )
    }

    /// Create a veth pair on this (host) handle whose peer is created
    /// directly inside `pod`'s netns under its final name, with MTU and
    /// optional peer MAC, both ends up if `spec.up`: one RTM_NEWLINK (host end
    /// up in it) and, for the peer's up, one RTM_SETLINK in the pod. No move,
    /// no rename. Equivalent: `ip link add HOST [mtu M] up type veth peer name
    /// PEER netns POD [address MAC] [mtu M] && ip -n POD link set PEER up`.
    ///
    /// A link already named `peer_name` in the pod gives
    /// [`NetopsError::PeerExists`], one named `host_name` here gives
    /// [`NetopsError::HostVethExists`]; the kernel creates nothing in both
    /// cases. Undo: [`Netlink::delete_link`] of either end.
    pub fn create_veth(&self, spec: &VethSpec, pod: &Netlink<'_>) -> Result<VethPair, NetopsError> {
        validate_ifname(&spec.host_name)?;
        validate_ifname(&spec.peer_name)?;
        let Some(pod_ns) = pod.ns.as_ref() else {
            return Err(NetopsError::NeedsPodHandle {
                what: "create_veth",
            });
        };
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.clone())
            .setns_by_fd(pod_ns.fd().as_raw_fd());
        if let Some(m) = spec.mtu {
            peer = peer.mtu(m);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        // No IFF_UP in the peer message: the kernel configures the peer
        // before linking the two ends, and veth_open() then fails ENOTCONN.
        let mut host = LinkVeth::new(&spec.host_name, &spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(m) = spec.mtu {
            host = host.mtu(m);
        }
        if spec.up {
            host = host.up();
        }
        if let Err(source) = self
            .rt
            .block_on(self.handle.link().add(host.build()).execute())
        {
            if is_nl_exists(&source) {
                // The kernel says EEXIST for either side; find out which.
                if pod.link(&spec.peer_name)?.is_some() {
                    return Err(NetopsError::PeerExists {
                        peer: spec.peer_name.clone(),
                        netns: pod.label.clone(),
                    });
                }
                if self.link(&spec.host_name)?.is_some() {
                    return Err(NetopsError::HostVethExists {
                        host: spec.host_name.clone(),
                    });
                }
            }
            return Err(NetopsError::CreateVeth {
                host: spec.host_name.clone(),
                peer: spec.peer_name.clone(),
                netns: pod.label.clone(),
                source: Box::new(source),
            });
        }
        if spec.up {
            let msg = LinkUnspec::new_with_name(&spec.peer_name).up().build();
            pod.set_link("set up", &spec.peer_name, msg)?;
        }
        let host = self.require_link(&spec.host_name)?;
        let peer = pod.require_link(&spec.peer_name)?;
        Ok(VethPair { host, peer })
    }

    /// Enslave `port` to `bridge` and set it up, in one RTM_SETLINK.
    /// Equivalent: `ip link set PORT master BRIDGE up`.
    pub fn attach_to_bridge(&self, port: &Link, bridge: &Link) -> Result<(), NetopsError> {
        let msg = LinkUnspec::new_with_index(port.index)
            .controller(bridge.index)
            .up()
            .build();
        self.set_link("set master", &port.name, msg)
    }

    /// Remove `port` from its bridge. Equivalent: `ip link set PORT nomaster`.
    pub fn detach_from_bridge(&self, port: &Link) -> Result<(), NetopsError> {
        let msg = LinkUnspec::new_with_index(port.index)
            .nocontroller()
            .build();
        self.set_link("set nomaster", &port.name, msg)
    }

    /// Set bridge port flags on an enslaved link (no-op when `opts` is empty).
    /// Equivalent: `ip link set PORT type bridge_slave hairpin on|off isolated on|off`.
    pub fn set_bridge_port(&self, port: &Link, opts: BridgePortOpts) -> Result<(), NetopsError> {
        if opts == BridgePortOpts::default() {
            return Ok(());
        }
        let mut b = LinkBridgePort::new(port.index);
        if let Some(h) = opts.hairpin {
            b = b.hairpin(h);
        }
        if let Some(i) = opts.isolated {
            b = b.isolated(i);
        }
        let req = self.handle.link().set_port(b.build()).execute();
        self.rt
            .block_on(req)
            .map_err(|e| self.link_err("set bridge_slave", &port.name, e))
    }

    /// VLAN on a bridge port (`bridge vlan add dev PORT vid VID [pvid untagged]`).
    /// Not implemented yet: always [`NetopsError::Unsupported`].
    pub fn set_port_vlan(
        &self,
        _port: &Link,
        _vid: u16,
        _pvid_untagged: bool,
    ) -> Result<(), NetopsError> {
        Err(NetopsError::Unsupported {
            what: "vlan on a bridge port",
        })
    }

    /// The links enslaved to `bridge`. Equivalent: `ip link show master BRIDGE`.
    pub fn ports(&self, bridge: &Link) -> Result<Vec<Link>, NetopsError> {
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(|source| NetopsError::Dump {
                what: "links",
                netns: self.label.clone(),
                source: Box::new(source),
            })?;
        Ok(msgs
            .into_iter()
            .map(link_from_msg)
            .filter(|l| l.master == Some(bridge.index))
            .collect())
    }

    /// Delete a link by name; `Ok(false)` if there was none (idempotent DEL).
    /// Deleting one end of a veth deletes both. Equivalent: `ip link del NAME`.
    pub fn delete_link(&self, name: &str) -> Result<bool, NetopsError> {
        validate_ifname(name)?;
        let msg = LinkUnspec::new_with_name(name).build();
        match self
            .rt
            .block_on(self.handle.link().del_with_message(msg).execute())
        {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.link_err("delete", name, e)),
        }
    }

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
        let msgs: Vec<AddressMessage> =
            self.rt
                .block_on(req.execute().try_collect())
                .map_err(|source| NetopsError::Dump {
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

    fn route_message(&self, link: &Link, r: &RouteSpec) -> Result<RouteMessage, NetopsError> {
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
        Ok(b.build())
    }

    /// Add a route in the main table through `link`.
    /// Equivalent: `ip route add DST [via GW] dev LINK [metric N]`
    /// (`DST` = `default` for 0.0.0.0/0 or ::/0). EEXIST is an error.
    pub fn add_route(&self, link: &Link, r: &RouteSpec) -> Result<(), NetopsError> {
        let msg = self.route_message(link, r)?;
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
