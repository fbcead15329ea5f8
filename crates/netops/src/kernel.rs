//! Synchronous netlink operations over rtnetlink on a tokio current_thread
//! runtime. One [`Kernel`] per process; [`Netlink`] views talk to the host
//! netns or to one pod netns.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
        link::{
            InfoBridge, InfoBridgePort, InfoData, InfoMacVlan, InfoPortData, InfoVeth,
            LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
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
    netns::NsRef,
    types::*,
    validate_ifname, NetNs, NetopsError,
};

mod addr;
mod devices;
mod policy;
mod retire;
mod seal;
pub mod tc;
pub use devices::{AddrFlags, RouteExtra};
pub use retire::STALL_ENV as RETIRE_STALL_ENV;

const HOST: &str = "host";

/// Owns the tokio current_thread runtime and the netlink connection of the
/// netns the creating thread is in (the "host"). Create it on the thread
/// that will use it; all calls block on that runtime.
pub struct Kernel {
    rt: Runtime,
    host: Conn,
    /// Where the views park work only the kernel can observe ([`Netlink::retire_veth`]).
    detach: netbase::Detacher,
}

/// A connection's request handle, and its socket's fd (owned by the connection task, which
/// lives as long as the runtime) for socket options.
#[derive(Clone)]
pub(crate) struct Conn {
    handle: Handle,
    fd: RawFd,
}

/// A netlink connection bound to one netns, usable synchronously.
/// Obtained from [`Kernel::host`] or [`Kernel::pod`].
pub struct Netlink<'k> {
    pub(crate) rt: &'k Runtime,
    pub(crate) handle: Handle,
    /// The pod netns this socket is bound to (`None` = host).
    ns: Option<NsRef<'k>>,
    pub(crate) label: String,
    /// The socket's fd (see [`Conn`]).
    pub(crate) fd: RawFd,
    pub(crate) detach: &'k netbase::Detacher,
}

fn connect(netns: &str) -> Result<Conn, NetopsError> {
    let (mut conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetopsError::Connection {
            netns: netns.to_string(),
            source,
        })?;
    let fd = conn.socket_mut().as_raw_fd();
    tokio::spawn(conn);
    Ok(Conn { handle, fd })
}

impl Kernel {
    /// Build the runtime and open a netlink socket in the calling thread's
    /// current netns. Work the views park runs at once ([`Kernel::with_detacher`]).
    pub fn new() -> Result<Self, NetopsError> {
        Self::with_detacher(netbase::Detacher::immediate())
    }

    /// [`Kernel::new`], parking work only the kernel can observe (the delete of a retired
    /// veth) with `detach`: the verb's, so it runs after the answer.
    pub fn with_detacher(detach: netbase::Detacher) -> Result<Self, NetopsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetopsError::Runtime)?;
        let host = {
            let _g = rt.enter();
            connect(HOST)?
        };
        Ok(Self { rt, host, detach })
    }

    /// Operations on the host netns (the one the Kernel was created in).
    pub fn host(&self) -> Netlink<'_> {
        Netlink {
            rt: &self.rt,
            handle: self.host.handle.clone(),
            ns: None,
            label: HOST.into(),
            fd: self.host.fd,
            detach: &self.detach,
        }
    }

    /// Open a second netlink connection bound to `ns`: setns into it on this
    /// thread, create the socket, setns back, with no `.await` in between.
    /// The socket stays bound to `ns` for its whole life.
    pub fn pod(&self, ns: &NetNs) -> Result<Netlink<'_>, NetopsError> {
        let conn = self.connect_in(ns)?;
        Ok(self.view(&conn, NsRef::Owned(ns.try_clone()?)))
    }

    /// A netlink connection bound to `ns` ([`Kernel::pod`]).
    pub(crate) fn connect_in(&self, ns: &NetNs) -> Result<Conn, NetopsError> {
        let label = ns.path().display().to_string();
        let _g = self.rt.enter();
        ns.run(|| connect(&label))?
    }

    /// The view of a pod connection.
    pub(crate) fn view<'k>(&'k self, conn: &Conn, ns: NsRef<'k>) -> Netlink<'k> {
        Netlink {
            rt: &self.rt,
            handle: conn.handle.clone(),
            label: ns.get().path().display().to_string(),
            ns: Some(ns),
            fd: conn.fd,
            detach: &self.detach,
        }
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
            LinkAttribute::IfAlias(a) if !a.is_empty() => l.alias = Some(a),
            LinkAttribute::Link(p) if p != 0 => l.parent = Some(p),
            LinkAttribute::LinkNetNsId(id) => l.link_netnsid = Some(id),
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
                        LinkInfo::Data(InfoData::MacVlan(ms)) => {
                            for m in ms {
                                if let InfoMacVlan::Mode(mode) = m {
                                    l.macvlan_mode = Some(devices::macvlan_mode_from(mode));
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Bridge(bs)) => {
                            for b in bs {
                                if let InfoBridge::MulticastSnooping(v) = b {
                                    l.mcast_snooping = Some(v);
                                }
                            }
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

impl Netlink<'_> {
    /// "host" or the pod netns path, as used in error messages.
    pub fn netns_label(&self) -> &str {
        &self.label
    }

    /// The pod netns this handle is bound to (`None` for the host handle).
    pub fn netns(&self) -> Option<&NetNs> {
        self.ns.as_ref().map(NsRef::get)
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

    /// `sysctl -w net.ipv6.conf.LINK.disable_ipv6=1` in this socket's netns, through a procfs
    /// instance of its own ([`crate::sysctl::write_fresh`]). False when the kernel has no IPv6
    /// (no such file).
    pub fn disable_ipv6(&self, link: &crate::IfName) -> Result<bool, NetopsError> {
        let key = crate::sysctl::SysctlKey::conf("ipv6", link.as_str(), "disable_ipv6")?;
        let write = || crate::sysctl::write_fresh(&key, "1");
        let res = match self.netns() {
            None => write(),
            Some(ns) => crate::sysctl::in_ns(ns, write),
        };
        match res {
            Ok(()) => Ok(true),
            // No /proc/sys/net/ipv6: a kernel without IPv6 (ipv6.disable=1).
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
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
    /// Equivalent: `ip link add NAME [mtu MTU] type bridge mcast_snooping 0|1
    /// [vlan_filtering 1] && ip link set NAME up`. A racing creator (EEXIST) is tolerated by
    /// reading the link again. A non-bridge link with that name is
    /// [`NetopsError::NotABridge`]. The bridge MAC is left to the kernel.
    /// `new` applies only when the bridge is created here.
    pub fn ensure_bridge(&self, name: &str, new: &NewBridge) -> Result<BridgeInfo, NetopsError> {
        let mut created = false;
        let link = match self.link(name)? {
            Some(l) => l,
            None => {
                let mut b = LinkBridge::new(name).mcast_snooping(new.mcast_snooping);
                if let Some(m) = new.mtu {
                    b = b.mtu(m);
                }
                if new.vlan_filtering {
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
    /// optional peer MAC: one RTM_NEWLINK (host end up in it if
    /// `spec.host_up`) and, if `spec.up`, one RTM_SETLINK in the pod for the
    /// peer's up. No move, no rename. Equivalent: `ip link add HOST [mtu M]
    /// [up] type veth peer name PEER netns POD [address MAC] [mtu M] &&
    /// ip -n POD link set PEER up`.
    ///
    /// A link already named `peer_name` in the pod gives
    /// [`NetopsError::PeerExists`], one named `host_name` here gives
    /// [`NetopsError::HostVethExists`]; the kernel creates nothing in both
    /// cases. Undo: [`Netlink::delete_link`] of either end.
    pub fn create_veth(&self, spec: &VethSpec, pod: &Netlink<'_>) -> Result<VethPair, NetopsError> {
        validate_ifname(&spec.host_name)?;
        validate_ifname(&spec.peer_name)?;
        let Some(pod_ns) = pod.netns() else {
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
        if spec.host_up {
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

    /// Every link of this netns, as netlink messages. Equivalent: `ip -d link show`.
    pub(crate) fn dump_links(&self) -> Result<Vec<LinkMessage>, NetopsError> {
        self.rt
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(|source| NetopsError::Dump {
                what: "links",
                netns: self.label.clone(),
                source: Box::new(source),
            })
    }

    /// The links enslaved to `bridge`. Equivalent: `ip link show master BRIDGE`.
    pub fn ports(&self, bridge: &Link) -> Result<Vec<Link>, NetopsError> {
        Ok(self
            .dump_links()?
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
}
