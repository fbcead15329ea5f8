//! [`FakeNet`]: an in-memory kernel with the semantics the plugins rely on, so the
//! orchestration of a plugin's verbs (what is created, undone, retired, reported) is a unit
//! test without root. It keeps links (with addresses, master, flags), routes, host sysctls,
//! seal rules and retired links for the host netns and for any number of pod netns, and fails
//! the calls a test names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;

mod ns;

pub use ns::FakeNs;

use crate::{
    ops::{retired_name, seal_text, RETIRED_PREFIX},
    Family, IfName, Link, MacAddr, NetopsError, Ns, Op, RouteFilter, RouteInfo, Session,
};

/// Which calls fail.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// The `n`-th [`Session::exec`] (0-based, counting undo ops too).
    Exec(usize),
    /// Every op whose command (as [`Op::command`] prints it) contains this text.
    Matching(String),
    /// Every read ([`Session::link`], addresses, routes, forwarding).
    Reads,
    /// [`Session::open_pod`].
    OpenPod,
}

/// The in-memory kernel (module doc).
#[derive(Debug, Default)]
pub struct FakeNet {
    pub host: FakeNs,
    /// Pod netns by path; [`Session::open_pod`] of another path is `NetnsNotFound`.
    pub pods: BTreeMap<PathBuf, FakeNs>,
    /// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding`, and any key an op set.
    pub sysctls: BTreeMap<String, String>,
    /// Seal rules present, as `ip rule` text.
    pub seals: BTreeSet<String>,
    /// Links retired (renamed, waiting for their delete) in the host netns, by retired name.
    pub retired: Vec<String>,
    /// Policy rules and routes of other tables in the host netns, as `ip rule`/`ip route` text.
    pub policy: BTreeSet<String>,
    /// Every op run, as the command it matches, with `!` in front when it failed.
    pub log: Vec<String>,
    pod: Option<PathBuf>,
    faults: Vec<Fault>,
    execs: usize,
    next_index: u32,
}

const ERRNO_INJECTED: i32 = libc::EIO;

impl FakeNet {
    /// A host with `lo`, forwarding off, no pod netns.
    pub fn new() -> Self {
        let mut f = Self {
            next_index: 1,
            ..Self::default()
        };
        let lo = f.new_link("lo", None);
        f.host.links.insert("lo".into(), lo);
        f.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
        f.sysctls
            .insert("net.ipv6.conf.all.forwarding".into(), "0".into());
        f
    }

    /// Add a pod netns at `path`, with `lo` down.
    pub fn add_pod(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        let lo = self.new_link("lo", None);
        let mut ns = FakeNs::default();
        ns.links.insert("lo".into(), lo);
        self.pods.insert(path.into(), ns);
        self
    }

    /// The pod netns at `path` (empty when there is none).
    pub fn pod(&self, path: impl AsRef<Path>) -> FakeNs {
        self.pods.get(path.as_ref()).cloned().unwrap_or_default()
    }

    /// Fail the `n`-th op run (0-based, undo ops counted), with EIO.
    pub fn fail_exec_at(&mut self, n: usize) -> &mut Self {
        self.faults.push(Fault::Exec(n));
        self
    }

    /// Fail every op whose command contains `text` (e.g. `"route add"`), with EIO.
    pub fn fail_matching(&mut self, text: &str) -> &mut Self {
        self.faults.push(Fault::Matching(text.to_string()));
        self
    }

    /// Fail every read.
    pub fn fail_reads(&mut self) -> &mut Self {
        self.faults.push(Fault::Reads);
        self
    }

    /// Fail opening the pod netns (with EIO, not "not found").
    pub fn fail_open_pod(&mut self) -> &mut Self {
        self.faults.push(Fault::OpenPod);
        self
    }

    /// Stop failing anything.
    pub fn heal(&mut self) -> &mut Self {
        self.faults.clear();
        self
    }

    /// How many ops were run.
    pub fn execs(&self) -> usize {
        self.execs
    }

    /// Create a link directly (a bridge or a device the test's host already has).
    pub fn put_link(&mut self, ns: Ns, name: &str, kind: Option<&str>) -> Link {
        let l = self.new_link(name, kind);
        if let Ok(n) = self.ns_mut(ns) {
            n.links.insert(name.to_string(), l.clone());
        }
        l
    }

    fn new_link(&mut self, name: &str, kind: Option<&str>) -> Link {
        let index = self.next_index;
        self.next_index += 1;
        let b = index.to_be_bytes();
        Link {
            name: name.to_string(),
            index,
            mac: (name != "lo").then_some(MacAddr([0x02, 0xfa, b[0], b[1], b[2], b[3]])),
            mtu: 1500,
            kind: kind.map(str::to_string),
            oper_state: "DOWN".into(),
            ..Link::default()
        }
    }

    fn label(&self, ns: Ns) -> String {
        match (ns, &self.pod) {
            (Ns::Host, _) => "host".into(),
            (Ns::Pod, Some(p)) => p.display().to_string(),
            (Ns::Pod, None) => "pod".into(),
        }
    }

    fn ns(&self, ns: Ns) -> Result<&FakeNs, NetopsError> {
        match ns {
            Ns::Host => Ok(&self.host),
            Ns::Pod => self
                .pod
                .as_ref()
                .and_then(|p| self.pods.get(p))
                .ok_or(NetopsError::NeedsPodHandle { what: "a pod op" }),
        }
    }

    fn ns_mut(&mut self, ns: Ns) -> Result<&mut FakeNs, NetopsError> {
        match ns {
            Ns::Host => Ok(&mut self.host),
            Ns::Pod => self
                .pod
                .as_ref()
                .and_then(|p| self.pods.get_mut(p))
                .ok_or(NetopsError::NeedsPodHandle { what: "a pod op" }),
        }
    }

    fn read(&self, what: &str) -> Result<(), NetopsError> {
        if self.faults.contains(&Fault::Reads) {
            return Err(NetopsError::Injected {
                op: what.to_string(),
                errno: ERRNO_INJECTED,
            });
        }
        Ok(())
    }

    fn fault_at(&self, n: usize, command: &str) -> bool {
        self.faults.iter().any(|f| match f {
            Fault::Exec(k) => *k == n,
            Fault::Matching(t) => command.contains(t.as_str()),
            Fault::Reads | Fault::OpenPod => false,
        })
    }

    fn apply(&mut self, op: &Op) -> Result<bool, NetopsError> {
        match op {
            Op::CreateBridge { name, mtu, .. } => self.create_bridge(name, *mtu),
            Op::DeleteBridgeIfUnused { name } => self.delete_bridge_if_unused(name),
            Op::SealBridge { name, subnets } => {
                let mut added = false;
                for rule in seal_text("add", name, subnets).lines() {
                    added |= self.seals.insert(rule.replacen("add", "", 1));
                }
                Ok(added)
            }
            Op::UnsealBridge { name, subnets } => {
                let mut removed = false;
                for rule in seal_text("add", name, subnets).lines() {
                    removed |= self.seals.remove(&rule.replacen("add", "", 1));
                }
                Ok(removed)
            }
            Op::PinMac { link } => Ok(self.host.require(link, "host")?.mac.is_some()),
            Op::SetUp { ns, link } => {
                let label = self.label(*ns);
                self.ns_mut(*ns)?.require_mut(link, &label)?.admin_up = true;
                Ok(true)
            }
            Op::SetPromisc { link, on } => {
                self.host.require_mut(link, "host")?.promisc = *on;
                Ok(true)
            }
            Op::CreateVeth {
                host,
                peer,
                mtu,
                peer_mac,
                ..
            } => self.create_veth(host, peer, *mtu, *peer_mac),
            Op::DeleteLink { ns, link } => self.delete_link(*ns, link),
            Op::NoIpv6 { ns, link } => {
                let label = self.label(*ns);
                let n = self.ns_mut(*ns)?;
                n.require(link, &label)?;
                Ok(n.no_ipv6.insert(link.to_string()))
            }
            Op::SetMaster { link, bridge } => {
                let br = self.host.require(bridge, "host")?.index;
                let l = self.host.require_mut(link, "host")?;
                l.master = Some(br);
                l.admin_up = true;
                Ok(true)
            }
            Op::SetBridgePort {
                link,
                hairpin,
                isolated,
            } => {
                let l = self.host.require_mut(link, "host")?;
                let mut f = l.bridge_port.unwrap_or_default();
                f.hairpin = hairpin.unwrap_or(f.hairpin);
                f.isolated = isolated.unwrap_or(f.isolated);
                l.bridge_port = Some(f);
                Ok(true)
            }
            Op::AddAddr { ns, link, cidr, .. } => {
                let label = self.label(*ns);
                let n = self.ns_mut(*ns)?;
                n.require(link, &label)?;
                let a = n.addrs.entry(link.to_string()).or_default();
                if a.contains(cidr) {
                    return Ok(false);
                }
                a.push(*cidr);
                Ok(true)
            }
            Op::DelAddr { ns, link, cidr } => {
                let n = self.ns_mut(*ns)?;
                let a = n.addrs.entry(link.to_string()).or_default();
                let before = a.len();
                a.retain(|x| x != cidr);
                Ok(a.len() != before)
            }
            Op::AddRoute { ns, link, route } => {
                let label = self.label(*ns);
                let n = self.ns_mut(*ns)?;
                let oif = n.require(link, &label)?.index;
                n.routes.push(RouteInfo {
                    dst: netbase::subnet(route.dst),
                    gw: route.gw,
                    oif: Some(oif),
                    priority: route.priority,
                    table: 254,
                });
                Ok(true)
            }
            Op::DelRoute { ns, link, route } => {
                let n = self.ns_mut(*ns)?;
                let Some(oif) = n.links.get(link.as_str()).map(|l| l.index) else {
                    return Ok(false);
                };
                let before = n.routes.len();
                n.routes.retain(|r| {
                    !(r.oif == Some(oif) && r.dst == netbase::subnet(route.dst) && r.gw == route.gw)
                });
                Ok(n.routes.len() != before)
            }
            Op::SetSysctl { key, value } => {
                let old = self.sysctls.insert(key.to_string(), value.clone());
                Ok(old.as_deref() != Some(value.as_str()))
            }
            Op::CreateVxlan { spec } => {
                if self.host.links.contains_key(spec.name.as_str()) {
                    return Ok(false);
                }
                let mut l = self.new_link(&spec.name, Some("vxlan"));
                l.mtu = spec.mtu.unwrap_or(1450);
                l.mac = spec.mac.or(l.mac);
                self.host.links.insert(spec.name.clone(), l);
                Ok(true)
            }
            Op::SetMac { link, mac } => {
                let l = self.host.require_mut(link, "host")?;
                let changed = l.mac != Some(*mac);
                l.mac = Some(*mac);
                Ok(changed)
            }
            Op::AddRule { rule } => Ok(self.policy.insert(rule.text())),
            Op::DelRule { rule } => Ok(self.policy.remove(&rule.text())),
            Op::AddTableRoute { route } => Ok(self.policy.insert(route.text())),
            Op::DelTableRoute { route } => Ok(self.policy.remove(&route.text())),
        }
    }

    fn create_bridge(&mut self, name: &IfName, mtu: Option<u32>) -> Result<bool, NetopsError> {
        if let Some(l) = self.host.links.get(name.as_str()) {
            if !l.is_bridge() {
                return Err(NetopsError::NotABridge {
                    name: name.to_string(),
                    netns: "host".into(),
                    kind: l.kind.clone(),
                });
            }
            return Ok(false);
        }
        let mut l = self.new_link(name, Some("bridge"));
        l.mtu = mtu.unwrap_or(1500);
        l.admin_up = true;
        self.host.links.insert(name.to_string(), l);
        Ok(true)
    }

    fn delete_bridge_if_unused(&mut self, name: &IfName) -> Result<bool, NetopsError> {
        let Some(br) = self.host.links.get(name.as_str()) else {
            return Ok(false);
        };
        let index = br.index;
        if !br.is_bridge() || self.host.links.values().any(|l| l.master == Some(index)) {
            return Ok(false);
        }
        Ok(self.host.remove(name).is_some())
    }

    fn create_veth(
        &mut self,
        host: &IfName,
        peer: &IfName,
        mtu: Option<u32>,
        peer_mac: Option<MacAddr>,
    ) -> Result<bool, NetopsError> {
        let label = self.label(Ns::Pod);
        if self.ns(Ns::Pod)?.links.contains_key(peer.as_str()) {
            return Err(NetopsError::PeerExists {
                peer: peer.to_string(),
                netns: label,
            });
        }
        if self.host.links.contains_key(host.as_str()) {
            return Err(NetopsError::HostVethExists {
                host: host.to_string(),
            });
        }
        let mut h = self.new_link(host, Some("veth"));
        let mut p = self.new_link(peer, Some("veth"));
        h.mtu = mtu.unwrap_or(1500);
        p.mtu = h.mtu;
        p.mac = peer_mac.or(p.mac);
        p.admin_up = true;
        h.parent = Some(p.index);
        p.parent = Some(h.index);
        self.host.links.insert(host.to_string(), h);
        self.ns_mut(Ns::Pod)?.links.insert(peer.to_string(), p);
        Ok(true)
    }

    /// Delete a link; a veth takes its peer along (wherever it is).
    fn delete_link(&mut self, ns: Ns, name: &str) -> Result<bool, NetopsError> {
        let Some(l) = self.ns_mut(ns)?.remove(name) else {
            return Ok(false);
        };
        if l.kind.as_deref() == Some("veth") {
            if let Some(peer) = l.parent {
                for n in std::iter::once(&mut self.host).chain(self.pods.values_mut()) {
                    if let Some(pn) = n
                        .links
                        .values()
                        .find(|x| x.index == peer)
                        .map(|x| x.name.clone())
                    {
                        n.remove(&pn);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Rename `name` in `ns` to a retired name, down and off its bridge.
    fn retire(&mut self, ns: Ns, name: &str) -> Result<Option<String>, NetopsError> {
        let n = self.ns_mut(ns)?;
        let Some(mut l) = n.links.remove(name) else {
            return Ok(None);
        };
        n.addrs.remove(name);
        let new = retired_name(l.index);
        l.name = new.clone();
        l.admin_up = false;
        l.master = None;
        n.links.insert(new.clone(), l);
        Ok(Some(new))
    }
}

impl Session for FakeNet {
    fn open_pod(&mut self, path: &Path) -> Result<(), NetopsError> {
        if self.faults.contains(&Fault::OpenPod) {
            return Err(NetopsError::Injected {
                op: format!("open netns {}", path.display()),
                errno: ERRNO_INJECTED,
            });
        }
        if !self.pods.contains_key(path) {
            return Err(NetopsError::NetnsNotFound {
                path: path.to_path_buf(),
            });
        }
        self.pod = Some(path.to_path_buf());
        Ok(())
    }

    fn link(&mut self, ns: Ns, name: &str) -> Result<Option<Link>, NetopsError> {
        self.read("get link")?;
        Ok(self.ns(ns)?.links.get(name).cloned())
    }

    fn addresses(&mut self, ns: Ns, link: &Link) -> Result<Vec<IpNetwork>, NetopsError> {
        self.read("list addresses")?;
        Ok(self
            .ns(ns)?
            .addrs
            .get(&link.name)
            .cloned()
            .unwrap_or_default())
    }

    fn routes(&mut self, ns: Ns, of: RouteFilter<'_>) -> Result<Vec<RouteInfo>, NetopsError> {
        self.read("list routes")?;
        Ok(self
            .ns(ns)?
            .routes
            .iter()
            .filter(|r| of.link.is_none_or(|l| r.oif == Some(l.index)))
            .filter(|r| of.family.is_none_or(|f| Family::of(&r.dst.ip()) == f))
            .cloned()
            .collect())
    }

    fn forwarding(&mut self, family: Family) -> Result<Option<bool>, NetopsError> {
        self.read("read forwarding")?;
        let key = match family {
            Family::V4 => "net.ipv4.ip_forward",
            Family::V6 => "net.ipv6.conf.all.forwarding",
        };
        Ok(self.sysctls.get(key).map(|v| v == "1"))
    }

    fn exec(&mut self, op: &Op) -> Result<bool, NetopsError> {
        let n = self.execs;
        self.execs += 1;
        let command = op.command(&self.label(Ns::Pod));
        if self.fault_at(n, &command) {
            self.log.push(format!("!{command}"));
            return Err(NetopsError::Injected {
                op: command,
                errno: ERRNO_INJECTED,
            });
        }
        let res = self.apply(op);
        self.log.push(match &res {
            Ok(_) => command,
            Err(_) => format!("!{command}"),
        });
        res
    }

    fn known_link(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
        let label = self.label(ns);
        self.ns(ns)?.require(name, &label).cloned()
    }

    fn retire_veth(&mut self, host: &str, pod_ifname: Option<&str>) -> Result<bool, NetopsError> {
        let Some(retired) = self.retire(Ns::Host, host)? else {
            return Ok(false);
        };
        self.retired.push(retired);
        if let (Some(ifname), true) = (pod_ifname, self.pod.is_some()) {
            if self
                .ns(Ns::Pod)?
                .links
                .get(ifname)
                .and_then(|l| l.kind.as_deref())
                == Some("veth")
            {
                self.retire(Ns::Pod, ifname)?;
            }
        }
        Ok(true)
    }

    fn delete_retired(&mut self) -> Result<usize, NetopsError> {
        let names: Vec<String> = self
            .host
            .links
            .keys()
            .filter(|n| n.starts_with(RETIRED_PREFIX))
            .cloned()
            .collect();
        for n in &names {
            self.delete_link(Ns::Host, n)?;
        }
        self.retired.retain(|r| !names.contains(r));
        Ok(names.len())
    }

    fn missing_seal(
        &mut self,
        bridge: &str,
        subnets: &[IpNetwork],
    ) -> Result<Vec<String>, NetopsError> {
        self.read("list rules")?;
        let name = IfName::new(bridge).map_err(NetopsError::from)?;
        Ok(seal_text("add", &name, subnets)
            .lines()
            .map(|r| r.replacen("add", "", 1))
            .filter(|r| !self.seals.contains(r))
            .collect())
    }
}

#[cfg(test)]
mod tests;
