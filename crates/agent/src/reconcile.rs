//! Bring every local overlay VXLAN device to what the cluster asks for: per remote host with
//! blocks in the device's network, one FDB entry, one permanent neighbour and the routes of
//! its blocks ([`cluster::peers::peers`]). Entries on our devices that the cluster does not
//! ask for go (a host that left, a block released, a flood entry of the L2 design).
//!
//! [`Programmer::full`] compares with the kernel (the periodic resync, a device that came or
//! went); [`Programmer::nodes`] changes only the entries of the hosts an event was about,
//! against what this agent applied last: a block claimed anywhere costs each host O(1).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use cluster::{
    peers::{peers, Peer, View},
    route_table, vni_of_name,
};
use netops::{FdbEntry, Link, MacAddr, PeerRoute, VxlanInfo};

use crate::Dataplane;

/// What one pass changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// Local devices of a network the view does not know yet (its `networks/` key).
    pub unknown_vnis: usize,
}

/// The entries of one device, as sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceEntries {
    pub fdb: BTreeSet<FdbEntry>,
    /// (next hop, MAC), permanent.
    pub neigh: BTreeSet<(IpAddr, MacAddr)>,
    pub routes: BTreeSet<PeerRoute>,
}

impl DeviceEntries {
    /// One peer's entries.
    pub fn of(p: &Peer) -> Self {
        let mut d = DeviceEntries::default();
        d.add(p);
        d
    }

    fn add(&mut self, p: &Peer) {
        self.fdb.insert(FdbEntry {
            mac: p.mac,
            dst: p.vtep,
        });
        self.neigh.insert((IpAddr::V6(p.next_hop), MacAddr(p.mac)));
        for r in &p.routes {
            self.routes.insert(PeerRoute {
                dst: *r,
                via: p.next_hop,
            });
        }
    }

    fn extend(&mut self, o: &DeviceEntries) {
        self.fdb.extend(o.fdb.iter().copied());
        self.neigh.extend(o.neigh.iter().copied());
        self.routes.extend(o.routes.iter().copied());
    }
}

/// What the device of `vni` on the host `me` (VTEP `vtep`) should hold, per remote host. Pure.
pub fn desired_by_node(
    view: &View,
    me: &str,
    vtep: IpAddr,
    vni: u32,
) -> BTreeMap<String, DeviceEntries> {
    let ps = peers(view, me, vtep, vni);
    warn_collisions(&ps, vni);
    ps.iter()
        .map(|p| (p.node.clone(), DeviceEntries::of(p)))
        .collect()
}

/// What the device of `vni` on the host `me` (VTEP `vtep`) should hold. Pure.
pub fn desired(view: &View, me: &str, vtep: IpAddr, vni: u32) -> DeviceEntries {
    let mut d = DeviceEntries::default();
    for e in desired_by_node(view, me, vtep, vni).values() {
        d.extend(e);
    }
    d
}

/// Two hosts whose derived MACs collide cannot both be reached through one device: say so.
fn warn_collisions(ps: &[Peer], vni: u32) {
    let mut seen: BTreeSet<[u8; 6]> = BTreeSet::new();
    for p in ps {
        if !seen.insert(p.mac) {
            log::error!(
                "VNI {vni}: host {} ({}) derives the same VXLAN MAC {} as another host; one of \
                 them is unreachable: change one VTEP address",
                p.node,
                p.vtep,
                MacAddr(p.mac)
            );
        }
    }
}

fn have(host: &dyn Dataplane, dev: &Link, table: u32) -> Result<DeviceEntries, String> {
    let fdb = host
        .fdb_entries(dev)
        .map_err(|e| format!("fdb of {}: {e}", dev.name))?;
    let neigh = host
        .neighbours(dev)
        .map_err(|e| format!("neighbours of {}: {e}", dev.name))?
        .into_iter()
        .filter(|n| n.permanent)
        .map(|n| (n.ip, n.mac))
        .collect();
    let routes = host
        .peer_routes(dev, table)
        .map_err(|e| format!("routes of {}: {e}", dev.name))?;
    Ok(DeviceEntries {
        fdb: fdb.into_iter().collect(),
        neigh,
        routes: routes.into_iter().collect(),
    })
}

/// One device from `h` to `want`: adds (FDB, neighbours, then routes that use them), then
/// removals in the reverse order. Returns (added, removed).
fn sync(
    host: &dyn Dataplane,
    dev: &Link,
    table: u32,
    h: &DeviceEntries,
    want: &DeviceEntries,
) -> (usize, usize) {
    let (mut added, mut removed) = (0, 0);
    let count = |r: Result<(), netops::NetopsError>, n: &mut usize| match r {
        Ok(()) => *n += 1,
        Err(e) => log::warn!("{e}"),
    };
    for e in want.fdb.difference(&h.fdb) {
        count(host.fdb_add(dev, e), &mut added);
    }
    // A neighbour whose MAC changed is replaced: compare by address.
    for (ip, mac) in &want.neigh {
        if !h.neigh.contains(&(*ip, *mac)) {
            count(host.neigh_add(dev, *ip, *mac), &mut added);
        }
    }
    for r in want.routes.difference(&h.routes) {
        count(host.peer_route_add(dev, table, r), &mut added);
    }
    for r in h.routes.difference(&want.routes) {
        count(host.peer_route_del(dev, table, r).map(drop), &mut removed);
    }
    // A neighbour with the right address and another MAC was replaced above.
    for (ip, _) in &h.neigh {
        if !want.neigh.iter().any(|(w, _)| w == ip) {
            count(host.neigh_del(dev, *ip).map(drop), &mut removed);
        }
    }
    for e in h.fdb.difference(&want.fdb) {
        count(host.fdb_del(dev, e).map(drop), &mut removed);
    }
    (added, removed)
}

/// A device this agent programs, and what it applied there per remote host.
struct Device {
    link: Link,
    vni: u32,
    applied: BTreeMap<String, DeviceEntries>,
}

/// The agent's programming of its devices, remembering what it applied.
#[derive(Default)]
pub struct Programmer {
    devices: HashMap<String, Device>,
}

impl Programmer {
    /// Every local overlay device whose VTEP is `vtep` (devices of another VTEP are not ours
    /// to program) to [`desired`], compared with what the kernel holds.
    pub fn full(&mut self, host: &dyn Dataplane, view: &View, me: &str, vtep: IpAddr) -> Changes {
        let mut c = Changes::default();
        let devices: Vec<VxlanInfo> = match host.vxlans() {
            Ok(d) => d,
            Err(e) => {
                log::warn!("list vxlan devices: {e}");
                return c;
            }
        };
        let mut now = HashMap::new();
        for dev in devices {
            let Some(vni) = vni_of_name(&dev.link.name) else {
                continue;
            };
            if dev.local != Some(vtep) {
                continue;
            }
            if view.networks_of(vni).is_empty() {
                c.unknown_vnis += 1;
                continue;
            }
            let by_node = desired_by_node(view, me, vtep, vni);
            let mut want = DeviceEntries::default();
            for e in by_node.values() {
                want.extend(e);
            }
            let table = route_table(vni);
            match have(host, &dev.link, table) {
                Ok(h) => {
                    let (a, r) = sync(host, &dev.link, table, &h, &want);
                    c.added += a;
                    c.removed += r;
                }
                Err(e) => log::warn!("{e}"),
            }
            now.insert(
                dev.link.name.clone(),
                Device {
                    link: dev.link,
                    vni,
                    applied: by_node,
                },
            );
        }
        self.devices = now;
        log_changes(&c);
        c
    }

    /// Only the entries of `nodes` on every device programmed so far, against what was applied
    /// there last (no kernel read): the cost of a block claimed or a host gone is O(1) per
    /// device.
    pub fn nodes(
        &mut self,
        host: &dyn Dataplane,
        view: &View,
        vtep: IpAddr,
        nodes: &BTreeSet<String>,
    ) -> Changes {
        let mut c = Changes::default();
        for d in self.devices.values_mut() {
            let table = route_table(d.vni);
            for n in nodes {
                let want = view
                    .peer(n, vtep, d.vni)
                    .map(|p| DeviceEntries::of(&p))
                    .unwrap_or_default();
                let old = d.applied.get(n).cloned().unwrap_or_default();
                if want == old {
                    continue;
                }
                let (a, r) = sync(host, &d.link, table, &old, &want);
                c.added += a;
                c.removed += r;
                if want == DeviceEntries::default() {
                    d.applied.remove(n);
                } else {
                    d.applied.insert(n.clone(), want);
                }
            }
        }
        log_changes(&c);
        c
    }
}

fn log_changes(c: &Changes) {
    if c.added + c.removed > 0 {
        log::info!("overlay entries: {} added, {} removed", c.added, c.removed);
    }
}

/// Every local overlay device whose VTEP is `vtep` to [`desired`] (a [`Programmer::full`]
/// pass with nothing remembered).
pub fn reconcile(host: &dyn Dataplane, view: &View, me: &str, vtep: IpAddr) -> Changes {
    Programmer::default().full(host, view, me, vtep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Change, Entry};
    use crate::FakeKernel;

    fn view() -> View {
        let p = "/cnirs";
        let mut v = View::default();
        for (k, val) in [
            ("/cnirs/hosts/h1", r#"{"vtep":"10.240.0.1"}"#),
            ("/cnirs/hosts/h2", r#"{"vtep":"10.240.0.2"}"#),
            ("/cnirs/hosts/h3", r#"{"vtep":"10.240.0.3"}"#),
            ("/cnirs/networks/a", r#"{"vni":7}"#),
            ("/cnirs/blocks/a/10.64.0.0_26", r#"{"node":"h1"}"#),
            ("/cnirs/blocks/a/10.64.0.64_26", r#"{"node":"h2"}"#),
            ("/cnirs/blocks/a/10.64.0.128_26", r#"{"node":"h2"}"#),
            ("/cnirs/blocks/a/fd64::40_122", r#"{"node":"h3"}"#),
        ] {
            v.apply(p, k, Some(val.as_bytes()));
        }
        v
    }

    fn me() -> IpAddr {
        "10.240.0.1".parse().unwrap()
    }

    #[test]
    fn a_device_gets_four_entries_per_remote_host_at_most_and_nothing_else_stays() {
        let k = FakeKernel::new();
        let (vx, _) = k.ensure_vxlan("cnirsvx7", 7, me(), None);
        // A stale flood entry of the L2 design and a neighbour nobody asks for.
        k.insert(
            "cnirsvx7",
            Entry::Fdb(FdbEntry {
                mac: [0; 6],
                dst: "10.240.0.9".parse().unwrap(),
            }),
        );
        k.insert(
            "cnirsvx7",
            Entry::Neigh("fe80::1".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 1])),
        );
        let c = reconcile(&k, &view(), "h1", me());
        assert_eq!(c.removed, 2);
        let e = k.entries("cnirsvx7");
        // h2: FDB + neighbour + one route (its two blocks are buddies? 64/26 and 128/26 are
        // not: two routes); h3: FDB + neighbour + its v6 route.
        let routes: Vec<String> = e
            .iter()
            .filter_map(|x| match x {
                Entry::Route(t, r) => {
                    assert_eq!(*t, route_table(7));
                    Some(r.dst.to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(routes, ["10.64.0.64/26", "10.64.0.128/26", "fd64::40/122"]);
        assert_eq!(e.iter().filter(|x| matches!(x, Entry::Fdb(_))).count(), 2);
        assert_eq!(
            e.iter().filter(|x| matches!(x, Entry::Neigh(..))).count(),
            2
        );
        let h2: IpAddr = "10.240.0.2".parse().unwrap();
        let mac = cluster::vxlan_mac(7, h2);
        assert!(e.contains(&Entry::Fdb(FdbEntry { mac, dst: h2 })));
        assert!(e.contains(&Entry::Neigh(
            IpAddr::V6(cluster::link_local(mac)),
            MacAddr(mac)
        )));
        // Level-triggered: a second pass changes nothing; an entry removed by hand comes back.
        assert_eq!(reconcile(&k, &view(), "h1", me()), Changes::default());
        k.fdb_del(&vx.link, &FdbEntry { mac, dst: h2 }).unwrap();
        assert_eq!(reconcile(&k, &view(), "h1", me()).added, 1);
    }

    #[test]
    fn a_host_that_leaves_takes_its_entries_and_other_vteps_devices_are_left_alone() {
        let k = FakeKernel::recording();
        k.ensure_vxlan("cnirsvx7", 7, me(), None);
        k.ensure_vxlan("cnirsvx8", 8, me(), None);
        k.ensure_vxlan("cnirsvx9", 9, "10.240.0.77".parse().unwrap(), None);
        let mut v = view();
        let c = reconcile(&k, &v, "h1", me());
        assert_eq!(c.unknown_vnis, 1, "VNI 8 has no networks/ record yet");
        assert!(k.entries("cnirsvx8").is_empty());
        assert!(k.entries("cnirsvx9").is_empty());
        v.apply("/cnirs", "/cnirs/hosts/h2", None);
        let c = reconcile(&k, &v, "h1", me());
        assert_eq!(c.removed, 4, "h2's FDB entry, neighbour and two routes");
        let dels: Vec<Entry> = k
            .log()
            .into_iter()
            .filter(|(_, _, ch)| *ch == Change::Del)
            .map(|(_, e, _)| e)
            .collect();
        // Routes go before the neighbour they use, the neighbour before the FDB entry.
        assert!(matches!(dels[0], Entry::Route(..)) && matches!(dels[3], Entry::Fdb(_)));
    }

    #[test]
    fn an_event_changes_only_the_entries_of_the_host_it_is_about() {
        let k = FakeKernel::recording();
        k.ensure_vxlan("cnirsvx7", 7, me(), None);
        let mut v = view();
        let mut p = Programmer::default();
        let c = p.full(&k, &v, "h1", me());
        assert_eq!(c.added, 7);
        let before = k.log().len();
        // h2 claims the buddy of 10.64.0.128/26: its two routes become... it now holds
        // 64/26, 128/26 and 192/26: the /26 and the /25 (128/25).
        v.apply(
            "/cnirs",
            "/cnirs/blocks/a/10.64.0.192_26",
            Some(br#"{"node":"h2"}"#),
        );
        let c = p.nodes(&k, &v, me(), &BTreeSet::from(["h2".to_string()]));
        assert_eq!(
            (c.added, c.removed),
            (1, 1),
            "10.64.0.128/25 in, 10.64.0.128/26 out"
        );
        let changed: Vec<Entry> = k.log()[before..].iter().map(|(_, e, _)| *e).collect();
        assert!(
            changed.iter().all(|e| matches!(e, Entry::Route(..))),
            "{changed:?}"
        );
        // h3 leaves: its three entries go, h2's stay.
        v.apply("/cnirs", "/cnirs/hosts/h3", None);
        let c = p.nodes(&k, &v, me(), &BTreeSet::from(["h3".to_string()]));
        assert_eq!((c.added, c.removed), (0, 3));
        // The resync finds the kernel as the events left it.
        assert_eq!(p.full(&k, &v, "h1", me()), Changes::default());
    }
}
