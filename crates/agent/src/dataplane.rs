//! The agent's kernel side behind a trait: what it reads and writes on the host, nothing else.
//! [`KernelDataplane`] is the real one (rtnetlink in the host netns, a link-change
//! subscription, and the overlay gate of table `inet cnirs` through [`nftplan::Firewall`]);
//! [`FakeKernel`] is a recording, stateful fake for unit tests and for the scale harness
//! (`bench/scale`), where a thousand simulated hosts run the agent's loop in one process.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Instant,
};

use netops::{
    FdbEntry, Link, LinkWatch, MacAddr, Neighbour, Netlink, NetopsError, PeerRoute, VxlanInfo,
};

/// The host's VXLAN devices and the entries the agent keeps on them.
pub trait Dataplane {
    /// Every VXLAN device of the host. Equivalent: `ip -d link show type vxlan`.
    fn vxlans(&self) -> Result<Vec<VxlanInfo>, NetopsError>;
    /// FDB entries of `dev` that name a remote VTEP. Equivalent: `bridge fdb show dev VX`.
    fn fdb_entries(&self, dev: &Link) -> Result<Vec<FdbEntry>, NetopsError>;
    /// Add one; an identical entry is fine. Equivalent: `bridge fdb replace MAC dev VX dst IP`.
    fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError>;
    /// Delete one; `Ok(false)` when it was not there. Equivalent: `bridge fdb del`.
    fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError>;
    /// Neighbours of `dev` (the agent keeps the permanent ones). Equivalent: `ip neigh show dev VX`.
    fn neighbours(&self, dev: &Link) -> Result<Vec<Neighbour>, NetopsError>;
    /// A permanent neighbour. Equivalent: `ip neigh replace IP lladdr MAC dev VX nud permanent`.
    fn neigh_add(&self, dev: &Link, ip: IpAddr, mac: MacAddr) -> Result<(), NetopsError>;
    /// Equivalent: `ip neigh del IP dev VX`; `Ok(false)` when it was not there.
    fn neigh_del(&self, dev: &Link, ip: IpAddr) -> Result<bool, NetopsError>;
    /// Routes of `table` through `dev` with an IPv6 next hop. Equivalent: `ip route show table T dev VX`.
    fn peer_routes(&self, dev: &Link, table: u32) -> Result<Vec<PeerRoute>, NetopsError>;
    /// Equivalent: `ip route replace DST via inet6 NH dev VX onlink table T`.
    fn peer_route_add(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<(), NetopsError>;
    /// Equivalent: `ip route del DST via inet6 NH dev VX table T`; `Ok(false)` when absent.
    fn peer_route_del(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<bool, NetopsError>;
    /// Did a link appear, change or go since the last call (a network's device created by the
    /// first pod's ADD, or removed by the last one's DEL)?
    fn links_changed(&self) -> bool;
    /// The overlay gate: VXLAN to `ports` is admitted only from `members` (one transaction,
    /// never an empty window for members that stay). Returns (added, removed).
    fn set_gate(
        &self,
        ports: &BTreeSet<u16>,
        members: &BTreeSet<IpAddr>,
    ) -> Result<(usize, usize), String>;
    /// The firewall table back from its recorded state (skeleton, elements, gate), as
    /// `cnirs reconcile` does.
    fn restore(&self) -> Result<(), String>;
}

/// The host's kernel: rtnetlink for the devices and their entries, `inet cnirs` for the gate.
pub struct KernelDataplane<'a> {
    host: Netlink<'a>,
    fw: nftplan::Firewall,
    links: Option<LinkWatch>,
}

impl<'a> KernelDataplane<'a> {
    pub fn new(host: Netlink<'a>, fw: nftplan::Firewall) -> Self {
        let links = match LinkWatch::open() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("link notifications unavailable ({e}): new devices wait for the resync");
                None
            }
        };
        Self { host, fw, links }
    }
}

impl Dataplane for KernelDataplane<'_> {
    fn vxlans(&self) -> Result<Vec<VxlanInfo>, NetopsError> {
        self.host.vxlans()
    }

    fn fdb_entries(&self, dev: &Link) -> Result<Vec<FdbEntry>, NetopsError> {
        self.host.fdb_entries(dev)
    }

    fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError> {
        self.host.fdb_add(dev, entry)
    }

    fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError> {
        self.host.fdb_del(dev, entry)
    }

    fn neighbours(&self, dev: &Link) -> Result<Vec<Neighbour>, NetopsError> {
        self.host.neighbours(dev)
    }

    fn neigh_add(&self, dev: &Link, ip: IpAddr, mac: MacAddr) -> Result<(), NetopsError> {
        self.host.neigh_replace(dev, ip, mac)
    }

    fn neigh_del(&self, dev: &Link, ip: IpAddr) -> Result<bool, NetopsError> {
        self.host.neigh_del(dev, ip)
    }

    fn peer_routes(&self, dev: &Link, table: u32) -> Result<Vec<PeerRoute>, NetopsError> {
        self.host.peer_routes(dev, table)
    }

    fn peer_route_add(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<(), NetopsError> {
        self.host.peer_route_add(dev, table, r)
    }

    fn peer_route_del(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<bool, NetopsError> {
        self.host.peer_route_del(dev, table, r)
    }

    fn links_changed(&self) -> bool {
        self.links.as_ref().is_some_and(LinkWatch::changed)
    }

    fn set_gate(
        &self,
        ports: &BTreeSet<u16>,
        members: &BTreeSet<IpAddr>,
    ) -> Result<(usize, usize), String> {
        self.fw.set_vteps(ports, members).map_err(|e| e.to_string())
    }

    fn restore(&self) -> Result<(), String> {
        self.fw.reconcile().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// One entry the agent keeps on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    Fdb(FdbEntry),
    Neigh(IpAddr, MacAddr),
    Route(u32, PeerRoute),
}

/// Entries the kernel keys alike (a neighbour by address, a route by table and destination).
fn same_key(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (Entry::Neigh(x, _), Entry::Neigh(y, _)) => x == y,
        (Entry::Route(t, r), Entry::Route(u, q)) => t == u && r.dst == q.dst,
        _ => a == b,
    }
}

/// The entries of `entries` keyed like `e` ([`same_key`]): adjacent in the set's order (a
/// neighbour's address, a route's table and destination come first), so a range finds them
/// without a scan of the device (3,000 entries at N=1,000, for each of a fill's million adds).
fn same_keyed(entries: &BTreeSet<Entry>, e: &Entry) -> Vec<Entry> {
    let from = match *e {
        Entry::Neigh(ip, _) => Entry::Neigh(ip, MacAddr([0; 6])),
        Entry::Route(t, r) => Entry::Route(
            t,
            PeerRoute {
                dst: r.dst,
                via: std::net::Ipv6Addr::UNSPECIFIED,
            },
        ),
        Entry::Fdb(_) => *e,
    };
    entries
        .range(from..)
        .take_while(|x| same_key(x, e))
        .copied()
        .collect()
}

/// One change the fake saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Del,
}

/// Called on every change the fake applies (device, entry, change, when): the scale harness
/// measures convergence with it.
pub type Observer = Arc<dyn Fn(&str, &Entry, Change, Instant) + Send + Sync>;

#[derive(Default)]
struct State {
    next_index: u32,
    /// name -> (device, entries)
    devices: BTreeMap<String, (VxlanInfo, BTreeSet<Entry>)>,
    log: Vec<(String, Entry, Change)>,
    record: bool,
    /// The next add (of any entry) fails (once).
    fail_next_add: bool,
    /// The gate: admitted ports and member VTEPs.
    gate: (BTreeSet<u16>, BTreeSet<IpAddr>),
}

/// A host's VXLAN devices and their entries in memory, with the kernel's semantics for what
/// the agent does (adding an entry twice is fine, deleting a missing one answers false; a
/// device's entries go with it). Records every change when asked ([`FakeKernel::recording`])
/// and calls an optional [`Observer`].
#[derive(Default, Clone)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
    observer: Option<Observer>,
    /// Bumped when a device is created or removed; `links_changed` compares.
    generation: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that keeps a log of every change ([`FakeKernel::log`]).
    pub fn recording() -> Self {
        let f = Self::default();
        f.lock().record = true;
        f
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the VXLAN device `name` (VNI, local VTEP, MAC) if missing, as the overlay
    /// plugin's first ADD does; returns it and whether it was created.
    pub fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: IpAddr,
        mac: Option<MacAddr>,
    ) -> (VxlanInfo, bool) {
        let mut s = self.lock();
        if let Some((d, _)) = s.devices.get(name) {
            return (d.clone(), false);
        }
        s.next_index += 1;
        let info = VxlanInfo {
            link: Link {
                name: name.to_string(),
                index: 100 + s.next_index,
                kind: Some("vxlan".into()),
                mtu: 1450,
                mac,
                admin_up: true,
                ..Link::default()
            },
            vni: Some(vni),
            local: Some(local),
            port: Some(netops::VXLAN_PORT),
            created: false,
        };
        s.devices
            .insert(name.to_string(), (info.clone(), BTreeSet::new()));
        drop(s);
        self.generation.fetch_add(1, Ordering::SeqCst);
        (info, true)
    }

    /// Removes a device and its entries (the last pod's DEL).
    pub fn remove_vxlan(&self, name: &str) -> bool {
        let gone = self.lock().devices.remove(name).is_some();
        if gone {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        gone
    }

    /// Whether a device exists.
    pub fn has_vxlan(&self, name: &str) -> bool {
        self.lock().devices.contains_key(name)
    }

    /// The entries of `name` as they are now.
    pub fn entries(&self, name: &str) -> BTreeSet<Entry> {
        self.lock()
            .devices
            .get(name)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }

    /// How many entries all devices hold.
    pub fn len(&self) -> usize {
        self.lock().devices.values().map(|(_, e)| e.len()).sum()
    }

    /// No entry on any device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change recorded so far (with [`FakeKernel::recording`]).
    pub fn log(&self) -> Vec<(String, Entry, Change)> {
        self.lock().log.clone()
    }

    /// Makes the next add fail, as a kernel error would.
    pub fn fail_next_add(&self) {
        self.lock().fail_next_add = true;
    }

    /// Adds an entry as someone else's hand would (not through the agent).
    pub fn insert(&self, dev: &str, e: Entry) -> bool {
        let link = Link {
            name: dev.to_string(),
            ..Link::default()
        };
        self.change(&link, e, Change::Add).unwrap_or(false)
    }

    fn change(&self, dev: &Link, e: Entry, c: Change) -> Result<bool, NetopsError> {
        let mut s = self.lock();
        if c == Change::Add && std::mem::take(&mut s.fail_next_add) {
            return Err(NetopsError::Unsupported {
                what: "add (injected by FakeKernel)",
            });
        }
        let record = s.record;
        let Some((_, entries)) = s.devices.get_mut(&dev.name) else {
            return Err(NetopsError::LinkNotFound {
                name: dev.name.clone(),
                netns: "fake".into(),
            });
        };
        let changed = match (c, e) {
            // A neighbour or route replaces one with the same key.
            (Change::Add, Entry::Neigh(..) | Entry::Route(..)) => {
                let old = same_keyed(entries, &e);
                if old == [e] {
                    false
                } else {
                    for o in &old {
                        entries.remove(o);
                    }
                    entries.insert(e)
                }
            }
            (Change::Add, _) => entries.insert(e),
            (Change::Del, Entry::Neigh(..)) => {
                let old = same_keyed(entries, &e);
                for o in &old {
                    entries.remove(o);
                }
                !old.is_empty()
            }
            (Change::Del, _) => entries.remove(&e),
        };
        if changed && record {
            s.log.push((dev.name.clone(), e, c));
        }
        drop(s);
        if changed {
            if let Some(o) = &self.observer {
                o(&dev.name, &e, c, Instant::now());
            }
        }
        Ok(changed)
    }

    fn device_entries(&self, dev: &Link) -> Result<BTreeSet<Entry>, NetopsError> {
        match self.lock().devices.get(&dev.name) {
            Some((_, e)) => Ok(e.clone()),
            None => Err(NetopsError::LinkNotFound {
                name: dev.name.clone(),
                netns: "fake".into(),
            }),
        }
    }

    /// The gate's member VTEPs as the agent last set them.
    pub fn gate_members(&self) -> BTreeSet<IpAddr> {
        self.lock().gate.1.clone()
    }
}

impl Dataplane for FakeKernel {
    fn vxlans(&self) -> Result<Vec<VxlanInfo>, NetopsError> {
        Ok(self
            .lock()
            .devices
            .values()
            .map(|(d, _)| d.clone())
            .collect())
    }

    fn fdb_entries(&self, dev: &Link) -> Result<Vec<FdbEntry>, NetopsError> {
        Ok(self
            .device_entries(dev)?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Fdb(f) => Some(f),
                _ => None,
            })
            .collect())
    }

    fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError> {
        self.change(dev, Entry::Fdb(*entry), Change::Add).map(drop)
    }

    fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError> {
        self.change(dev, Entry::Fdb(*entry), Change::Del)
    }

    fn neighbours(&self, dev: &Link) -> Result<Vec<Neighbour>, NetopsError> {
        Ok(self
            .device_entries(dev)?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Neigh(ip, mac) => Some(Neighbour {
                    ip,
                    mac,
                    permanent: true,
                }),
                _ => None,
            })
            .collect())
    }

    fn neigh_add(&self, dev: &Link, ip: IpAddr, mac: MacAddr) -> Result<(), NetopsError> {
        self.change(dev, Entry::Neigh(ip, mac), Change::Add)
            .map(drop)
    }

    fn neigh_del(&self, dev: &Link, ip: IpAddr) -> Result<bool, NetopsError> {
        self.change(dev, Entry::Neigh(ip, MacAddr([0; 6])), Change::Del)
    }

    fn peer_routes(&self, dev: &Link, table: u32) -> Result<Vec<PeerRoute>, NetopsError> {
        Ok(self
            .device_entries(dev)?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Route(t, r) if t == table => Some(r),
                _ => None,
            })
            .collect())
    }

    fn peer_route_add(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<(), NetopsError> {
        self.change(dev, Entry::Route(table, *r), Change::Add)
            .map(drop)
    }

    fn peer_route_del(&self, dev: &Link, table: u32, r: &PeerRoute) -> Result<bool, NetopsError> {
        self.change(dev, Entry::Route(table, *r), Change::Del)
    }

    fn links_changed(&self) -> bool {
        let now = self.generation.load(Ordering::SeqCst);
        self.seen.swap(now, Ordering::SeqCst) != now
    }

    fn set_gate(
        &self,
        ports: &BTreeSet<u16>,
        members: &BTreeSet<IpAddr>,
    ) -> Result<(usize, usize), String> {
        let mut s = self.lock();
        let (old_ports, old) = std::mem::replace(&mut s.gate, (ports.clone(), members.clone()));
        let added = ports.difference(&old_ports).count() + members.difference(&old).count();
        let removed = old_ports.difference(ports).count() + old.difference(members).count();
        Ok((added, removed))
    }

    fn restore(&self) -> Result<(), String> {
        Ok(())
    }
}
