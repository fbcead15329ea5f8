//! The agent's kernel side behind a trait: what it reads and writes on the host, nothing else.
//! [`KernelDataplane`] is the real one (rtnetlink in the host netns, and the overlay gate of
//! table `inet cnirs` through [`nftplan::Firewall`]); [`FakeKernel`] is a
//! recording, stateful fake for unit tests and for the scale harness (`bench/scale`), where a
//! thousand simulated hosts run the agent's loop in one process.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use netops::{FdbEntry, Link, Netlink, NetopsError, VxlanInfo};

/// The host's VXLAN devices and their forwarding databases.
pub trait Dataplane {
    /// Every VXLAN device of the host. Equivalent: `ip -d link show type vxlan`.
    fn vxlans(&self) -> Result<Vec<VxlanInfo>, NetopsError>;
    /// FDB entries of `dev` that name a remote VTEP. Equivalent: `bridge fdb show dev VX`.
    fn fdb_entries(&self, dev: &Link) -> Result<Vec<FdbEntry>, NetopsError>;
    /// Add one; an identical entry is fine. Equivalent: `bridge fdb append|replace`.
    fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError>;
    /// Delete one; `Ok(false)` when it was not there. Equivalent: `bridge fdb del`.
    fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError>;
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

/// The host's kernel: rtnetlink for the VXLAN devices and FDBs, `inet cnirs` for the gate.
pub struct KernelDataplane<'a> {
    host: Netlink<'a>,
    fw: nftplan::Firewall,
}

impl<'a> KernelDataplane<'a> {
    pub fn new(host: Netlink<'a>, fw: nftplan::Firewall) -> Self {
        Self { host, fw }
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

/// One change the fake saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbChange {
    Add,
    Del,
}

/// Called on every FDB change the fake applies (device, entry, change, when): the scale
/// harness measures convergence with it.
pub type Observer = Arc<dyn Fn(&str, &FdbEntry, FdbChange, Instant) + Send + Sync>;

#[derive(Default)]
struct State {
    next_index: u32,
    /// name -> (device, FDB)
    devices: BTreeMap<String, (VxlanInfo, BTreeSet<FdbEntry>)>,
    log: Vec<(String, FdbEntry, FdbChange)>,
    record: bool,
    /// The next `fdb_add` fails (once).
    fail_next_add: bool,
    /// The gate: admitted ports and member VTEPs.
    gate: (BTreeSet<u16>, BTreeSet<IpAddr>),
}

/// A host's VXLAN devices and FDBs in memory, with the kernel's semantics for what the agent
/// does (adding an entry twice is fine, deleting a missing one answers false). Records every
/// change when asked ([`FakeKernel::recording`]) and calls an optional [`Observer`].
#[derive(Default, Clone)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
    observer: Option<Observer>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that keeps a log of every FDB change ([`FakeKernel::log`]).
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

    /// Creates the VXLAN device `name` (VNI, local VTEP) if missing, as the overlay plugin's
    /// ADD does; returns it and whether it was created.
    pub fn ensure_vxlan(&self, name: &str, vni: u32, local: Ipv4Addr) -> (VxlanInfo, bool) {
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
                admin_up: true,
                ..Link::default()
            },
            vni: Some(vni),
            local: Some(local.into()),
            port: Some(netops::VXLAN_PORT),
            created: false,
        };
        s.devices
            .insert(name.to_string(), (info.clone(), BTreeSet::new()));
        (info, true)
    }

    /// Removes a device and its FDB.
    pub fn remove_vxlan(&self, name: &str) -> bool {
        self.lock().devices.remove(name).is_some()
    }

    /// The FDB of `name` as it is now.
    pub fn fdb(&self, name: &str) -> BTreeSet<FdbEntry> {
        self.lock()
            .devices
            .get(name)
            .map(|(_, f)| f.clone())
            .unwrap_or_default()
    }

    /// How many FDB entries all devices hold.
    pub fn fdb_len(&self) -> usize {
        self.lock().devices.values().map(|(_, f)| f.len()).sum()
    }

    /// Every change recorded so far (with [`FakeKernel::recording`]).
    pub fn log(&self) -> Vec<(String, FdbEntry, FdbChange)> {
        self.lock().log.clone()
    }

    /// Makes the next `fdb_add` fail, as a kernel error would.
    pub fn fail_next_add(&self) {
        self.lock().fail_next_add = true;
    }

    fn change(&self, dev: &Link, e: &FdbEntry, c: FdbChange) -> Result<bool, NetopsError> {
        let mut s = self.lock();
        if c == FdbChange::Add && std::mem::take(&mut s.fail_next_add) {
            return Err(NetopsError::Unsupported {
                what: "fdb add (injected by FakeKernel)",
            });
        }
        let record = s.record;
        let Some((_, fdb)) = s.devices.get_mut(&dev.name) else {
            return Err(NetopsError::LinkNotFound {
                name: dev.name.clone(),
                netns: "fake".into(),
            });
        };
        let changed = match c {
            FdbChange::Add => fdb.insert(*e),
            FdbChange::Del => fdb.remove(e),
        };
        if changed && record {
            s.log.push((dev.name.clone(), *e, c));
        }
        drop(s);
        if changed {
            if let Some(o) = &self.observer {
                o(&dev.name, e, c, Instant::now());
            }
        }
        Ok(changed)
    }

    /// Adds an entry directly (the overlay plugin's flood entries, or someone else's hand).
    pub fn insert(&self, dev: &str, e: FdbEntry) -> bool {
        let link = Link {
            name: dev.to_string(),
            ..Link::default()
        };
        self.change(&link, &e, FdbChange::Add).unwrap_or(false)
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
        match self.lock().devices.get(&dev.name) {
            Some((_, f)) => Ok(f.iter().copied().collect()),
            None => Err(NetopsError::LinkNotFound {
                name: dev.name.clone(),
                netns: "fake".into(),
            }),
        }
    }

    fn fdb_add(&self, dev: &Link, entry: &FdbEntry) -> Result<(), NetopsError> {
        self.change(dev, entry, FdbChange::Add).map(|_| ())
    }

    fn fdb_del(&self, dev: &Link, entry: &FdbEntry) -> Result<bool, NetopsError> {
        self.change(dev, entry, FdbChange::Del)
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

impl FakeKernel {
    /// The gate's member VTEPs as the agent last set them.
    pub fn gate_members(&self) -> BTreeSet<IpAddr> {
        self.lock().gate.1.clone()
    }
}
