//! Kernel steps as values, each with the command it matches and its inverse, and the executor
//! that runs them ([`Effects`]: netops' `KernelExec` for [`netops::Op`]s, netops calls for the
//! rest).

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use netops::{
    AddrFlags, Executor, IfName, KernelExec, Link, MacAddr, MacvlanMode, MacvlanSpec, NetNs,
    Netlink, NetopsError, Ns, Op, Reversible, RouteExtra, RouteSpec, SysctlKey, TapSpec,
};

use crate::LinkError;

/// What a host link had before it moved into a pod, put back when it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    pub addrs: Vec<IpNetwork>,
    pub up: bool,
}

/// A macvlan of `master` (on the host, or in the pod with `master_in_pod`), made as `name` in
/// the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanLink {
    pub name: IfName,
    pub master: IfName,
    pub master_in_pod: bool,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub bcqueuelen: Option<u32>,
}

impl MacvlanLink {
    fn command(&self, pod: &str) -> String {
        let (name, master) = (&self.name, &self.master);
        let mut s = if self.master_in_pod {
            format!("ip -n {pod} link add link {master} name {name}")
        } else {
            format!("ip link add link {master} name {name} netns {pod}")
        };
        s += &link_attrs(self.mtu, self.mac);
        s += &format!(" type macvlan mode {}", self.mode);
        if let Some(q) = self.bcqueuelen {
            s += &format!(" bcqueuelen {q}");
        }
        s
    }

    /// netops' spec, for the master's index.
    fn spec(&self, master: u32) -> MacvlanSpec {
        MacvlanSpec {
            name: self.name.to_string(),
            master,
            mode: self.mode,
            mtu: self.mtu,
            mac: self.mac,
            bcqueuelen: self.bcqueuelen,
        }
    }
}

/// ` mtu M address MAC`, each when given (`ip link` syntax).
fn link_attrs(mtu: Option<u32>, mac: Option<MacAddr>) -> String {
    let mut s = String::new();
    if let Some(m) = mtu {
        s += &format!(" mtu {m}");
    }
    if let Some(m) = mac {
        s += &format!(" address {m}");
    }
    s
}

/// A route of `link` in `ns` with a preferred source or host scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtRoute {
    pub ns: Ns,
    pub link: IfName,
    pub route: RouteSpec,
    pub extra: RouteExtra,
}

impl ExtRoute {
    fn command(&self, pod: &str) -> String {
        let (route, extra) = (&self.route, &self.extra);
        let via = route.gw.map(|g| format!(" via {g}")).unwrap_or_default();
        let src = extra.src.map(|s| format!(" src {s}")).unwrap_or_default();
        let scope = if extra.host_scope { " scope host" } else { "" };
        format!(
            "{} route add {}{via} dev {}{src}{scope}",
            ip(&self.ns, pod),
            route.dst,
            self.link
        )
    }
}

/// `ip`, or `ip -n POD` for the pod's netns.
fn ip(ns: &Ns, pod: &str) -> String {
    match ns {
        Ns::Host => "ip".to_string(),
        Ns::Pod => format!("ip -n {pod}"),
    }
}

/// One step of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A netops op (veth, addresses, routes, up, host sysctls, delete).
    Net(Op),
    /// `ip netns exec POD sysctl -w KEY=VALUE`; `required: false` ignores a failure (the
    /// reference's `_, _ = sysctl.Sysctl(...)`). No undo: the pod's own setting.
    PodSysctl {
        key: SysctlKey,
        value: String,
        required: bool,
    },
    /// `ip addr add CIDR dev LINK nodad noprefixroute`.
    AddAddrNoPrefix {
        ns: Ns,
        link: IfName,
        cidr: IpNetwork,
    },
    /// `ip route add DST [via GW] dev LINK [src SRC] [scope host]`.
    AddRouteExt(ExtRoute),
    /// `ip link add link MASTER name NAME netns POD type macvlan mode MODE`, down.
    CreateMacvlan(MacvlanLink),
    /// `ip -n POD tuntap add mode tap name NAME ...` (persistent), down.
    CreateTap(TapSpec),
    /// `ip link set LINK [mtu M] [address MAC]`.
    SetLinkAttrs {
        ns: Ns,
        link: IfName,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
    },
    /// `ip -n POD link set LINK master BRIDGE` (both in the pod).
    SetPodMaster { link: IfName, bridge: IfName },
    /// `ip link set LINK alias TEXT` ("" clears it).
    SetAlias { ns: Ns, link: IfName, alias: String },
    /// `ip link set HOST netns POD name POD_NAME` (the kernel drops its addresses and sets it
    /// down; its undo puts back `restore`).
    MoveToPod {
        host_name: IfName,
        pod_name: IfName,
        restore: HostState,
    },
    /// `ip -n POD link set POD_NAME netns HOST name HOST_NAME`, then its host addresses and
    /// state back (`ip addr add ...; ip link set HOST_NAME up`).
    MoveToHost {
        pod_name: IfName,
        host_name: IfName,
        restore: HostState,
    },
    /// Write a state file (mode 0600, its directory 0700).
    WriteState { path: PathBuf, body: String },
    /// Remove a state file (gone is fine).
    RemoveState { path: PathBuf },
}

impl Reversible for Step {
    fn inverse(&self) -> Option<Step> {
        Some(match self {
            Step::Net(op) => return op.inverse().map(Step::Net),
            Step::AddAddrNoPrefix { ns, link, cidr } => Step::Net(Op::DelAddr {
                ns: *ns,
                link: link.clone(),
                cidr: *cidr,
            }),
            Step::AddRouteExt(r) => Step::Net(Op::DelRoute {
                ns: r.ns,
                link: r.link.clone(),
                route: r.route.clone(),
            }),
            Step::CreateMacvlan(m) => Step::Net(Op::DeleteLink {
                ns: Ns::Pod,
                link: m.name.clone(),
            }),
            Step::CreateTap(spec) => Step::Net(Op::DeleteLink {
                ns: Ns::Pod,
                link: IfName::new(&spec.name).ok()?,
            }),
            Step::SetAlias { ns, link, .. } => Step::SetAlias {
                ns: *ns,
                link: link.clone(),
                alias: String::new(),
            },
            Step::MoveToPod {
                host_name,
                pod_name,
                restore,
            } => Step::MoveToHost {
                pod_name: pod_name.clone(),
                host_name: host_name.clone(),
                restore: restore.clone(),
            },
            Step::WriteState { path, .. } => Step::RemoveState { path: path.clone() },
            // The link goes (with its attributes) or its settings are the pod's.
            Step::PodSysctl { .. }
            | Step::SetLinkAttrs { .. }
            | Step::SetPodMaster { .. }
            | Step::MoveToHost { .. }
            | Step::RemoveState { .. } => return None,
        })
    }
}

impl Step {
    /// The command this step matches; pod-side steps get `-n POD`.
    pub fn command(&self, pod: &str) -> String {
        let ip = |ns: &Ns| ip(ns, pod);
        match self {
            Step::Net(op) => op.command(pod),
            Step::PodSysctl {
                key,
                value,
                required,
            } => format!(
                "nsenter --net={pod} sysctl -w {key}={value}{}",
                if *required { "" } else { "  # best effort" }
            ),
            Step::AddAddrNoPrefix { ns, link, cidr } => format!(
                "{} addr add {cidr} dev {link}{} noprefixroute",
                ip(ns),
                if cidr.is_ipv6() { " nodad" } else { "" }
            ),
            Step::AddRouteExt(r) => r.command(pod),
            Step::CreateMacvlan(m) => m.command(pod),
            Step::CreateTap(t) => {
                let mut s = format!("ip -n {pod} tuntap add mode tap name {}", t.name);
                if t.multi_queue {
                    s += " multi_queue";
                }
                if t.vnet_hdr {
                    s += " vnet_hdr";
                }
                if let Some(u) = t.owner {
                    s += &format!(" user {u}");
                }
                if let Some(g) = t.group {
                    s += &format!(" group {g}");
                }
                s
            }
            Step::SetLinkAttrs { ns, link, mtu, mac } => {
                format!("{} link set {link}{}", ip(ns), link_attrs(*mtu, *mac))
            }
            Step::SetPodMaster { link, bridge } => {
                format!("ip -n {pod} link set {link} master {bridge}")
            }
            Step::SetAlias { ns, link, alias } => {
                format!("{} link set {link} alias {alias:?}", ip(ns))
            }
            Step::MoveToPod {
                host_name,
                pod_name,
                ..
            } => format!("ip link set {host_name} netns {pod} name {pod_name}"),
            Step::MoveToHost {
                pod_name,
                host_name,
                restore,
            } => {
                let mut s = format!("ip -n {pod} link set {pod_name} netns HOST name {host_name}");
                for a in &restore.addrs {
                    s += &format!("; ip addr add {a} dev {host_name}");
                }
                if restore.up {
                    s += &format!("; ip link set {host_name} up");
                }
                s
            }
            Step::WriteState { path, .. } => format!("write {}", path.display()),
            Step::RemoveState { path } => format!("rm -f {}", path.display()),
        }
    }
}

/// Runs [`Step`]s: ops through netops' `KernelExec`, the rest through netops calls.
pub struct Effects<'a, 'k> {
    pub kernel: KernelExec<'a, 'k>,
    pub pod_ns: &'a NetNs,
}

impl<'a, 'k> Effects<'a, 'k> {
    pub fn new(host: &'a Netlink<'k>, pod: &'a Netlink<'k>, pod_ns: &'a NetNs) -> Self {
        Self {
            kernel: KernelExec::new(host, pod),
            pod_ns,
        }
    }

    fn nl(&self, ns: Ns) -> &'a Netlink<'k> {
        match ns {
            Ns::Host => self.kernel.host,
            Ns::Pod => self.kernel.pod,
        }
    }

    /// A link read now (not from the op cache: steps here move and rename links).
    fn fresh(&self, ns: Ns, name: &str) -> Result<Link, NetopsError> {
        self.nl(ns).require_link(name)
    }
}

/// Put a returned link's addresses and admin state back (an address already there is fine).
/// Equivalent: `ip addr add A dev NAME ...; ip link set NAME up`.
pub fn restore_host(
    host: &Netlink<'_>,
    name: &str,
    restore: &HostState,
) -> Result<(), NetopsError> {
    let l = host.require_link(name)?;
    for a in &restore.addrs {
        match host.add_address(&l, *a, false) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
    }
    if restore.up && !l.admin_up {
        host.set_up(&l)?;
    }
    Ok(())
}

fn write_state(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    use std::{
        io::Write,
        os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Executor<Step> for Effects<'_, '_> {
    type Error = LinkError;

    fn exec(&mut self, step: &Step) -> Result<bool, LinkError> {
        match step {
            Step::Net(op) => Ok(self.kernel.exec(op)?),
            Step::PodSysctl {
                key,
                value,
                required,
            } => match netops::sysctl::write_in(self.pod_ns, key, value) {
                Ok(()) => Ok(false),
                Err(e) if !required => {
                    log::debug!("{key}={value} in the pod: {e} (best effort)");
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            },
            Step::AddAddrNoPrefix { ns, link, cidr } => {
                let l = self.fresh(*ns, link)?;
                let flags = AddrFlags {
                    nodad: true,
                    noprefixroute: true,
                };
                self.nl(*ns).add_address_with(&l, *cidr, flags)?;
                Ok(true)
            }
            Step::AddRouteExt(r) => {
                let l = self.fresh(r.ns, &r.link)?;
                self.nl(r.ns).add_route_ext(&l, &r.route, &r.extra)?;
                Ok(true)
            }
            Step::CreateMacvlan(m) => {
                let from = if m.master_in_pod { Ns::Pod } else { Ns::Host };
                let master = self.fresh(from, &m.master)?;
                let into = (!m.master_in_pod).then_some(self.kernel.pod);
                self.nl(from).create_macvlan(&m.spec(master.index), into)?;
                Ok(true)
            }
            Step::CreateTap(spec) => {
                netops::create_tap(self.pod_ns, spec)?;
                Ok(true)
            }
            Step::SetLinkAttrs { ns, link, mtu, mac } => {
                let l = self.fresh(*ns, link)?;
                if let Some(m) = mtu {
                    self.nl(*ns).set_mtu(&l, *m)?;
                }
                if let Some(m) = mac {
                    self.nl(*ns).set_mac(&l, *m)?;
                }
                Ok(true)
            }
            Step::SetPodMaster { link, bridge } => {
                let pod = self.kernel.pod;
                let l = pod.require_link(link)?;
                let b = pod.require_link(bridge)?;
                if !b.is_bridge() {
                    return Err(LinkError::Config(format!(
                        "bridge {bridge} in the pod is a {}, not a bridge",
                        b.kind.as_deref().unwrap_or("device of no kind")
                    )));
                }
                pod.attach_to_bridge(&l, &b)?;
                Ok(true)
            }
            Step::SetAlias { ns, link, alias } => {
                let l = self.fresh(*ns, link)?;
                self.nl(*ns).set_alias(&l, alias)?;
                Ok(true)
            }
            Step::MoveToPod {
                host_name,
                pod_name,
                ..
            } => {
                let l = self.fresh(Ns::Host, host_name)?;
                self.kernel.host.move_link(&l, self.kernel.pod, pod_name)?;
                Ok(true)
            }
            Step::MoveToHost {
                pod_name,
                host_name,
                restore,
            } => {
                let Some(l) = self.kernel.pod.link(pod_name)? else {
                    return Ok(false);
                };
                self.kernel.pod.move_link(&l, self.kernel.host, host_name)?;
                restore_host(self.kernel.host, host_name, restore)?;
                Ok(true)
            }
            Step::WriteState { path, body } => {
                write_state(path, body).map_err(|source| LinkError::Io {
                    what: format!("writing {}", path.display()),
                    source,
                })?;
                Ok(true)
            }
            Step::RemoveState { path } => match std::fs::remove_file(path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(source) => Err(LinkError::Io {
                    what: format!("removing {}", path.display()),
                    source,
                }),
            },
        }
    }

    fn is_gone(e: &LinkError) -> bool {
        matches!(e, LinkError::Kernel(k) if k.is_not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    #[test]
    fn inverses_undo_what_the_attachment_made() {
        let restore = HostState {
            addrs: vec!["10.0.0.5/24".parse().unwrap()],
            up: true,
        };
        let mv = Step::MoveToPod {
            host_name: n("eth1"),
            pod_name: n("net0"),
            restore: restore.clone(),
        };
        assert_eq!(
            mv.inverse(),
            Some(Step::MoveToHost {
                pod_name: n("net0"),
                host_name: n("eth1"),
                restore,
            })
        );
        let tap = Step::CreateTap(TapSpec {
            name: "tap0".into(),
            ..Default::default()
        });
        assert_eq!(
            tap.inverse(),
            Some(Step::Net(Op::DeleteLink {
                ns: Ns::Pod,
                link: n("tap0")
            }))
        );
        assert_eq!(
            Step::SetAlias {
                ns: Ns::Host,
                link: n("eth1"),
                alias: "eth1".into()
            }
            .inverse(),
            Some(Step::SetAlias {
                ns: Ns::Host,
                link: n("eth1"),
                alias: String::new()
            })
        );
        assert_eq!(
            Step::PodSysctl {
                key: SysctlKey::parse("net.ipv4.conf.eth0.arp_notify").unwrap(),
                value: "1".into(),
                required: false
            }
            .inverse(),
            None
        );
    }

    #[test]
    fn steps_print_as_commands() {
        let s = Step::CreateMacvlan(MacvlanLink {
            name: n("eth0"),
            master: n("ens3"),
            master_in_pod: false,
            mode: MacvlanMode::Vepa,
            mtu: Some(1400),
            mac: None,
            bcqueuelen: None,
        });
        assert_eq!(
            s.command("/run/netns/p"),
            "ip link add link ens3 name eth0 netns /run/netns/p mtu 1400 type macvlan mode vepa"
        );
        let r = Step::AddRouteExt(ExtRoute {
            ns: Ns::Pod,
            link: n("eth0"),
            route: RouteSpec {
                dst: "10.1.0.0/24".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
                priority: None,
                onlink: false,
            },
            extra: RouteExtra {
                src: Some("10.1.0.5".parse().unwrap()),
                host_scope: false,
            },
        });
        assert_eq!(
            r.command("P"),
            "ip -n P route add 10.1.0.0/24 via 10.1.0.1 dev eth0 src 10.1.0.5"
        );
    }
}
