//! Kernel work as values: a plan is a `Vec` of [`Op`]s built by a pure function, printed as the
//! `ip` commands it matches (golden-tested), and run by [`apply`] over an [`Executor`] that
//! records the inverse of every step it completed. A failure at step k undoes k-1..1, newest
//! first, and reports the undo failures beside (never instead of) the original error.
//!
//! `KernelExec` (feature `netlink`) runs ops over netlink (host and pod handles); [`Recorder`] is the in-tree
//! fake that records what it was asked and fails where a test tells it to, so rollback after a
//! failure at every step is a unit test without root.
//!
//! Inverses ([`Reversible::inverse`]) follow one policy: what an attachment owns (its veth, its
//! addresses and routes) is undone; shared things it created (a bridge) are removed only when
//! nothing else uses them; shared settings (bridge up, a pinned MAC, `ip_forward`) stay.

use std::{fmt, path::PathBuf};

use ipnetwork::IpNetwork;

use crate::{
    types::{RuleSpec, TableRoute, VxlanSpec},
    IfName, MacAddr, RouteSpec, SysctlKey,
};

/// Priority of the seal rules of internal bridges ([`Op::SealBridge`]): before the main
/// table's rule (32766), after the local table's (0).
pub const SEAL_RULE_PRIORITY: u32 = 10;

/// Prefix of retired link names (`Netlink::retire_veth`). ADD derives `veth<hex>` (bridge) or
/// the runtime's ifname (`eth0`…), never this prefix.
pub const RETIRED_PREFIX: &str = "cnirsx";

/// The retired name of the link with this index: unique in its netns (the kernel never
/// reuses a live index), 14 bytes.
pub fn retired_name(index: u32) -> String {
    format!("{RETIRED_PREFIX}{index:08x}")
}

/// Which network namespace an op runs in: the plugin's (host) or the pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    Host,
    Pod,
}

/// One kernel operation. Each variant documents the `ip` command it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ip link add NAME [mtu MTU] type bridge mcast_snooping 0|1` (a bridge created
    /// concurrently, or already there, is reused as it is).
    CreateBridge {
        name: IfName,
        mtu: Option<u32>,
        mcast_snooping: bool,
    },
    /// `ip link del NAME`, only while no port is enslaved to it (inverse of `CreateBridge`).
    DeleteBridgeIfUnused { name: IfName },
    /// The kernel-level seal of an internal network's bridge: policy rules (IPv4 and IPv6) that
    /// refuse what is routed out of it, and what is routed into its `subnets` from anywhere
    /// but the host itself, independent of nftables. Idempotent. Equivalent:
    /// `ip rule add iif NAME priority 10 unreachable` (both families), and per subnet
    /// `ip rule add priority 9 to SUBNET iif lo lookup main` + `ip rule add priority 10 to SUBNET unreachable`.
    SealBridge {
        name: IfName,
        subnets: Vec<IpNetwork>,
    },
    /// Remove that seal (a non-internal bridge of the same name). Idempotent.
    UnsealBridge {
        name: IfName,
        subnets: Vec<IpNetwork>,
    },
    /// `ip link set NAME address <its current address>`: a bridge whose MAC was never set
    /// takes the lowest MAC of its ports, which changes as pods come and go.
    PinMac { link: IfName },
    /// `ip link set NAME up`.
    SetUp { ns: Ns, link: IfName },
    /// `ip link set NAME promisc on|off`.
    SetPromisc { link: IfName, on: bool },
    /// `ip link add HOST [mtu M] type veth peer name PEER netns NETNS [address MAC]`: the peer
    /// is created in the pod under its final name (no move, no rename) and set up; the host end
    /// stays down until `SetMaster` (after `NoIpv6`).
    CreateVeth {
        host: IfName,
        peer: IfName,
        netns: PathBuf,
        mtu: Option<u32>,
        peer_mac: Option<MacAddr>,
    },
    /// `ip link del NAME` (either end of a veth removes both).
    DeleteLink { ns: Ns, link: IfName },
    /// `sysctl -w net.ipv6.conf.LINK.disable_ipv6=1` on a link whose carrier is not up yet (the
    /// veth's host end is still down), so it never gets a link-local address. Nothing when the
    /// kernel has no IPv6.
    ///
    /// - Host side, every veth: a bridge port needs no IPv6 address of its own (IPv6 bridged
    ///   through it is untouched), and each one would add a link-local address and two routes to
    ///   the host's IPv6 table, which the kernel walks whole at every link up and down.
    /// - Pod side, on a network that gives the pod no IPv6 address (what Docker does on an
    ///   IPv4-only network): no link-local address, so no DAD probe, router solicitation or MLD
    ///   report, each a multicast the bridge floods to every other pod of the network, a CPU
    ///   cost per new pod that grows with the pods on the bridge (docs/performance.md).
    NoIpv6 { ns: Ns, link: IfName },
    /// `ip link set LINK master BRIDGE up`.
    SetMaster { link: IfName, bridge: IfName },
    /// `ip link set LINK type bridge_slave [hairpin on|off] [isolated on|off]`.
    SetBridgePort {
        link: IfName,
        hairpin: Option<bool>,
        isolated: Option<bool>,
    },
    /// `ip addr add CIDR dev LINK [nodad]` (nodad: IPv6 without duplicate address detection).
    AddAddr {
        ns: Ns,
        link: IfName,
        cidr: IpNetwork,
        dad: bool,
    },
    /// `ip addr del CIDR dev LINK`.
    DelAddr {
        ns: Ns,
        link: IfName,
        cidr: IpNetwork,
    },
    /// `ip route add DST [via GW] dev LINK [metric N]`.
    AddRoute {
        ns: Ns,
        link: IfName,
        route: RouteSpec,
    },
    /// `ip route del DST [via GW] dev LINK [metric N]`.
    DelRoute {
        ns: Ns,
        link: IfName,
        route: RouteSpec,
    },
    /// `sysctl -w KEY=VALUE` in the host netns.
    SetSysctl { key: SysctlKey, value: String },
    /// `ip link add NAME [address MAC] [mtu M] type vxlan id VNI local VTEP dev UNDERLAY
    /// dstport PORT nolearning` (an existing device made for the same VNI, VTEP and MAC is
    /// kept, and not undone); its inverse deletes the device this step created.
    CreateVxlan { spec: VxlanSpec },
    /// `ip link set LINK address MAC` (a shared setting: no inverse).
    SetMac { link: IfName, mac: MacAddr },
    /// `ip rule add ...` (an existing rule is kept, and not undone).
    AddRule { rule: RuleSpec },
    /// `ip rule del ...`.
    DelRule { rule: RuleSpec },
    /// `ip route add ... table T` in a table of ours (an existing route is kept).
    AddTableRoute { route: TableRoute },
    /// `ip route del ... table T`.
    DelTableRoute { route: TableRoute },
}

/// A step whose inverse can be computed from the step alone.
pub trait Reversible: Sized {
    /// What undoes this step once it changed the kernel; `None` when nothing must be undone
    /// (the change is shared and harmless, or the inverse of an earlier step removes it).
    fn inverse(&self) -> Option<Self>;
}

impl Reversible for Op {
    fn inverse(&self) -> Option<Op> {
        Some(match self {
            Op::CreateBridge { name, .. } => Op::DeleteBridgeIfUnused { name: name.clone() },
            Op::SetPromisc { link, on } => Op::SetPromisc {
                link: link.clone(),
                on: !on,
            },
            Op::CreateVeth { host, .. } => Op::DeleteLink {
                ns: Ns::Host,
                link: host.clone(),
            },
            Op::AddAddr { ns, link, cidr, .. } => Op::DelAddr {
                ns: *ns,
                link: link.clone(),
                cidr: *cidr,
            },
            Op::DelAddr { ns, link, cidr } => Op::AddAddr {
                ns: *ns,
                link: link.clone(),
                cidr: *cidr,
                dad: false,
            },
            Op::AddRoute { ns, link, route } => Op::DelRoute {
                ns: *ns,
                link: link.clone(),
                route: route.clone(),
            },
            Op::DelRoute { ns, link, route } => Op::AddRoute {
                ns: *ns,
                link: link.clone(),
                route: route.clone(),
            },
            Op::CreateVxlan { spec } => Op::DeleteLink {
                ns: Ns::Host,
                link: IfName::new(&spec.name).ok()?,
            },
            Op::AddRule { rule } => Op::DelRule { rule: rule.clone() },
            Op::DelRule { rule } => Op::AddRule { rule: rule.clone() },
            Op::AddTableRoute { route } => Op::DelTableRoute {
                route: route.clone(),
            },
            Op::DelTableRoute { route } => Op::AddTableRoute {
                route: route.clone(),
            },
            // A seal stays when an ADD fails: an internal bridge must never be left open.
            Op::DeleteBridgeIfUnused { .. }
            | Op::SealBridge { .. }
            | Op::UnsealBridge { .. }
            | Op::PinMac { .. }
            | Op::SetUp { .. }
            | Op::SetMaster { .. }
            | Op::NoIpv6 { .. }
            | Op::SetBridgePort { .. }
            | Op::DeleteLink { .. }
            | Op::SetMac { .. }
            | Op::SetSysctl { .. } => return None,
        })
    }
}

/// The `ip rule` commands of a seal, one line per rule pair.
pub(crate) fn seal_text(verb: &str, name: &IfName, subnets: &[IpNetwork]) -> String {
    let p = SEAL_RULE_PRIORITY;
    let mut s = format!("ip rule {verb} iif {name} priority {p} unreachable  # -4 and -6");
    for n in subnets {
        let n = netbase::subnet(*n);
        s += &format!(
            "\nip rule {verb} to {n} iif lo priority {} lookup main; ip rule {verb} to {n} priority {p} unreachable",
            p - 1
        );
    }
    s
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn route_text(r: &RouteSpec) -> String {
    let dst = if r.dst.prefix() == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    let mut s = dst;
    if let Some(gw) = r.gw {
        s += &format!(" via {gw}");
    }
    if r.onlink {
        s += " onlink";
    }
    s
}

impl Op {
    /// The `ip` (or `sysctl`) command this op matches; pod-side ops get `-n NETNS`.
    pub fn command(&self, pod_netns: &str) -> String {
        let ip = |ns: &Ns| match ns {
            Ns::Host => "ip".to_string(),
            Ns::Pod => format!("ip -n {pod_netns}"),
        };
        let metric = |r: &RouteSpec| {
            r.priority
                .map(|p| format!(" metric {p}"))
                .unwrap_or_default()
        };
        match self {
            Op::CreateBridge {
                name,
                mtu,
                mcast_snooping,
            } => format!(
                "ip link add {name}{} type bridge mcast_snooping {}",
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
                u8::from(*mcast_snooping)
            ),
            Op::DeleteBridgeIfUnused { name } => {
                format!("ip link del {name}  # if it has no ports")
            }
            Op::SealBridge { name, subnets } => seal_text("add", name, subnets),
            Op::UnsealBridge { name, subnets } => seal_text("del", name, subnets),
            Op::PinMac { link } => format!("ip link set {link} address <its own>  # pin"),
            Op::SetUp { ns, link } => format!("{} link set {link} up", ip(ns)),
            Op::SetPromisc { link, on } => format!("ip link set {link} promisc {}", on_off(*on)),
            Op::CreateVeth {
                host,
                peer,
                netns,
                mtu,
                peer_mac,
            } => {
                let mtu = mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
                format!(
                    "ip link add {host}{mtu} type veth peer name {peer} netns {}{}{mtu}",
                    netns.display(),
                    peer_mac
                        .map(|m| format!(" address {m}"))
                        .unwrap_or_default(),
                )
            }
            Op::DeleteLink { ns, link } => format!("{} link del {link}", ip(ns)),
            Op::SetMaster { link, bridge } => format!("ip link set {link} master {bridge} up"),
            Op::NoIpv6 { ns, link } => {
                let sysctl = format!("sysctl -w net.ipv6.conf.{link}.disable_ipv6=1");
                match ns {
                    Ns::Host => sysctl,
                    Ns::Pod => format!("nsenter --net={pod_netns} {sysctl}"),
                }
            }
            Op::SetBridgePort {
                link,
                hairpin,
                isolated,
            } => {
                let mut s = format!("ip link set {link} type bridge_slave");
                if let Some(h) = hairpin {
                    s += &format!(" hairpin {}", on_off(*h));
                }
                if let Some(i) = isolated {
                    s += &format!(" isolated {}", on_off(*i));
                }
                s
            }
            Op::AddAddr {
                ns,
                link,
                cidr,
                dad,
            } => format!(
                "{} addr add {cidr} dev {link}{}",
                ip(ns),
                if cidr.is_ipv6() && !dad { " nodad" } else { "" }
            ),
            Op::DelAddr { ns, link, cidr } => format!("{} addr del {cidr} dev {link}", ip(ns)),
            Op::AddRoute { ns, link, route } => format!(
                "{} route add {} dev {link}{}",
                ip(ns),
                route_text(route),
                metric(route)
            ),
            Op::DelRoute { ns, link, route } => format!(
                "{} route del {} dev {link}{}",
                ip(ns),
                route_text(route),
                metric(route)
            ),
            Op::SetSysctl { key, value } => format!("sysctl -w {key}={value}"),
            Op::CreateVxlan { spec } => format!(
                "ip link add {}{}{} type vxlan id {} local {}{} dstport {}{}",
                spec.name,
                spec.mac
                    .map(|m| format!(" address {m}"))
                    .unwrap_or_default(),
                spec.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
                spec.vni,
                spec.local,
                spec.underlay
                    .map(|i| format!(" dev #{i}"))
                    .unwrap_or_default(),
                spec.port,
                if spec.learning { "" } else { " nolearning" },
            ),
            Op::SetMac { link, mac } => format!("ip link set {link} address {mac}"),
            Op::AddRule { rule } => rule.text().replacen(" rule ", " rule add ", 1),
            Op::DelRule { rule } => rule.text().replacen(" rule ", " rule del ", 1),
            Op::AddTableRoute { route } => route.text(),
            Op::DelTableRoute { route } => route.text().replacen(" route add ", " route del ", 1),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command("POD"))
    }
}

/// Runs one step. `Ok(true)` when the step changed the kernel (its inverse is recorded),
/// `Ok(false)` when the kernel already was so (nothing to undo).
pub trait Executor<S> {
    type Error;
    fn exec(&mut self, step: &S) -> Result<bool, Self::Error>;
    /// An undo step that fails because its object is already gone counts as done.
    fn is_gone(_e: &Self::Error) -> bool {
        false
    }
}

/// The inverses of the steps applied so far, oldest first.
#[derive(Debug)]
pub struct Undo<S>(pub Vec<S>);

/// A step failed: which one, why, and what went wrong while undoing the steps before it.
#[derive(Debug)]
pub struct Failure<S, E> {
    /// 0-based index of the failed step.
    pub step: usize,
    /// The failed step.
    pub op: S,
    pub error: E,
    /// Undo steps that failed (already logged); the original error stays the answer.
    pub undo_errors: Vec<E>,
}

/// Run `steps` in order. On a failure at step k, run the recorded inverses of steps k-1..1
/// newest first (going on past undo failures) and return the failure.
pub fn apply<S, X>(steps: &[S], x: &mut X) -> Result<Undo<S>, Failure<S, X::Error>>
where
    S: Reversible + Clone + fmt::Debug,
    X: Executor<S>,
    X::Error: fmt::Display,
{
    let mut undo = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        match x.exec(s) {
            Ok(true) => undo.extend(s.inverse()),
            Ok(false) => {}
            Err(error) => {
                return Err(Failure {
                    step: i,
                    op: s.clone(),
                    error,
                    undo_errors: rollback(Undo(undo), x),
                })
            }
        }
    }
    Ok(Undo(undo))
}

/// Run the inverses newest first; keep going after a failure; "gone" counts as done.
pub fn rollback<S, X>(undo: Undo<S>, x: &mut X) -> Vec<X::Error>
where
    S: fmt::Debug,
    X: Executor<S>,
    X::Error: fmt::Display,
{
    let mut errs = Vec::new();
    for s in undo.0.into_iter().rev() {
        match x.exec(&s) {
            Ok(_) => {}
            Err(e) if X::is_gone(&e) => {}
            Err(e) => {
                log::warn!("undo {s:?} failed: {e}");
                errs.push(e);
            }
        }
    }
    errs
}

/// The in-tree fake: records every step it is asked to run and fails the calls whose 0-based
/// index (counting undo steps too) is in `fail_at`.
#[derive(Debug)]
pub struct Recorder<S> {
    pub calls: Vec<S>,
    pub fail_at: Vec<usize>,
}

impl<S> Default for Recorder<S> {
    fn default() -> Self {
        Self {
            calls: Vec::new(),
            fail_at: Vec::new(),
        }
    }
}

impl<S> Recorder<S> {
    /// A recorder that fails its `k`-th call.
    pub fn failing_at(k: usize) -> Self {
        Self {
            calls: Vec::new(),
            fail_at: vec![k],
        }
    }
}

/// The error a [`Recorder`] injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at call {0}")]
pub struct Injected(pub usize);

impl<S: Clone> Executor<S> for Recorder<S> {
    type Error = Injected;
    fn exec(&mut self, step: &S) -> Result<bool, Injected> {
        let n = self.calls.len();
        self.calls.push(step.clone());
        if self.fail_at.contains(&n) {
            return Err(Injected(n));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
