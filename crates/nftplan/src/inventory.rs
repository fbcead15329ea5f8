//! What this host's state says exists: networks and their attachments, for `cnirs ls` and
//! `cnirs inspect`. The one place that reads the records back as a whole.
//!
//! Everything comes from the records the plugins write under the lock (see [`crate::state`]):
//! the network's elements (bridge, subnets, internal, masquerade), the isolation record,
//! each bridge attachment's [`PodIface`] (addresses, MAC, host veth; written by
//! [`Firewall::attach_network_pod`] in the same locked write as the attachment) and each
//! portmap attachment's published ports. DEL and GC drop those records with the attachment,
//! so the inventory needs no libcni cache and no conflist. [`Firewall::drift`] asks the kernel
//! for the network's elements with the same check CHECK uses.

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    elem::Elem,
    state::{AttRecord, Locked, NetRecord},
    types::{Feature, IfName, PodIface, PortMapping, Protocol},
    Firewall, NftError,
};

/// One network known on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkView {
    /// CNI network name (conflist `name`).
    pub name: String,
    /// Its bridge, when a bridge, isolation or firewall record names it.
    pub bridge: Option<IfName>,
    /// Subnets living on the bridge (network addresses).
    pub subnets: Vec<IpNetwork>,
    /// An internal-bridge network (nothing in, nothing out).
    pub internal: bool,
    /// Chained with `isolation` (or `firewall` with `ingressPolicy: same-bridge`).
    pub isolated: bool,
    /// Subnets masqueraded on the way out (`ipMasq`).
    pub masquerade: Vec<IpNetwork>,
    /// What the kernel lacks for this network (filled by the caller; empty when healthy).
    pub drift: Vec<String>,
    /// Attachments, by container id then ifname.
    pub attachments: Vec<AttachmentView>,
    /// Every element the state holds for this network and its attachments (for drift).
    #[serde(skip)]
    pub elems: Vec<Elem>,
}

/// One attachment of a container to the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentView {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod interface's addresses (CIDR).
    pub ips: Vec<IpNetwork>,
    /// The pod interface's MAC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host end of its veth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<IfName>,
    /// Published ports.
    pub ports: Vec<PortView>,
}

/// One published port, in CNI's `portMappings` spelling plus the pod address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// The host address; absent = every address of the family.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Pod port.
    pub container_port: u16,
    /// tcp / udp / sctp.
    pub protocol: Protocol,
    /// The pod address the port leads to.
    #[serde(rename = "containerIP")]
    pub container_ip: IpAddr,
    /// Asked for, but published through another attachment of the same container (podman
    /// gives every network of a container the same mappings); taken over when that one goes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

impl From<(&PortMapping, bool)> for PortView {
    fn from((m, standby): (&PortMapping, bool)) -> Self {
        PortView {
            host_ip: m.host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: m.protocol,
            container_ip: m.container_ip,
            standby,
        }
    }
}

impl Firewall {
    /// Every network the state of this namespace knows, with its attachments (no kernel
    /// access; `drift` left empty). Empty when no plugin ever ran here.
    pub fn inventory(&self) -> Result<Vec<NetworkView>, NftError> {
        if !self.state_dir().exists() {
            return Ok(Vec::new());
        }
        let st = Locked::lock(self.state_dir())?;
        let nets = st.all_nets()?;
        let mut atts = Vec::new();
        for f in Feature::ALL {
            atts.extend(st.all_atts(f)?.into_iter().map(|r| (f, r)));
        }
        Ok(views(&nets, &atts))
    }

    /// The elements of `net` the kernel lacks: the same `get element` check as CHECK's.
    pub fn drift(&self, net: &NetworkView) -> Result<Vec<Elem>, NftError> {
        self.missing(&net.elems)
    }
}

/// Networks from the records (pure).
pub(crate) fn views(
    nets: &[(Feature, NetRecord)],
    atts: &[(Feature, AttRecord)],
) -> Vec<NetworkView> {
    let mut by_name: BTreeMap<&str, NetworkView> = BTreeMap::new();
    for (feature, rec) in nets {
        let v = entry(&mut by_name, &rec.network);
        for e in &rec.elems {
            match e {
                Elem::ManagedBr { bridge } if *feature == Feature::Network => {
                    v.bridge = Some(bridge.clone());
                }
                Elem::InternalBr { .. } => v.internal = true,
                Elem::IsolatedBr { bridge } => {
                    v.isolated = true;
                    v.bridge.get_or_insert_with(|| bridge.clone());
                }
                Elem::BrNet { subnet, .. } if !v.subnets.contains(subnet) => {
                    v.subnets.push(*subnet);
                }
                Elem::Masq { subnet } if !v.masquerade.contains(subnet) => {
                    v.masquerade.push(*subnet);
                }
                _ => {}
            }
            push_new(&mut v.elems, e);
        }
        if let Some(b) = &rec.bridge {
            v.bridge.get_or_insert_with(|| b.clone());
        }
    }
    for (_, rec) in atts {
        let a = &rec.attachment;
        let v = entry(&mut by_name, &a.network);
        for e in &rec.elems {
            push_new(&mut v.elems, e);
        }
        let i = match v
            .attachments
            .iter()
            .position(|x| x.container_id == a.container_id && x.ifname == a.ifname)
        {
            Some(i) => i,
            None => {
                v.attachments.push(AttachmentView {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                    ..AttachmentView::default()
                });
                v.attachments.len() - 1
            }
        };
        let av = &mut v.attachments[i];
        if let Some(PodIface {
            ips,
            mac,
            host_ifname,
        }) = &rec.pod
        {
            av.ips.clone_from(ips);
            av.mac.clone_from(mac);
            av.host_ifname.clone_from(host_ifname);
        }
        for e in &rec.elems {
            if let Elem::Port { mapping } = e {
                av.ports.push((mapping, false).into());
            }
        }
        av.ports
            .extend(rec.standby.iter().map(|m| PortView::from((m, true))));
        av.ports.sort();
        av.ports.dedup();
    }
    let mut out: Vec<NetworkView> = by_name.into_values().collect();
    for v in &mut out {
        v.subnets.sort();
        v.masquerade.sort();
        v.attachments
            .sort_by(|x, y| (&x.container_id, &x.ifname).cmp(&(&y.container_id, &y.ifname)));
    }
    out
}

fn push_new(v: &mut Vec<Elem>, e: &Elem) {
    if !v.contains(e) {
        v.push(e.clone());
    }
}

fn entry<'a, 'm>(m: &'m mut BTreeMap<&'a str, NetworkView>, name: &'a str) -> &'m mut NetworkView {
    m.entry(name).or_insert_with(|| NetworkView {
        name: name.to_owned(),
        ..NetworkView::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Attachment, FakeNft, NetworkElems};

    fn fw() -> (tempfile::TempDir, Firewall) {
        let dir = tempfile::tempdir().unwrap();
        let nft = FakeNft::new();
        let f = Firewall::with_backend(dir.path().join("netns-1-1"), Box::new(nft));
        (dir, f)
    }

    fn att(net: &str, cid: &str) -> Attachment {
        Attachment::new(net, cid, "eth0").unwrap()
    }

    fn elems(bridge: &str, subnet: &str, internal: bool) -> NetworkElems {
        NetworkElems {
            bridge: IfName::new(bridge).unwrap(),
            masq: if internal {
                vec![]
            } else {
                vec![subnet.parse().unwrap()]
            },
            subnets: vec![subnet.parse().unwrap()],
            spoof_check: None,
            internal,
        }
    }

    fn pod(ip: &str, mac: &str) -> Option<PodIface> {
        Some(PodIface {
            ips: vec![ip.parse().unwrap()],
            mac: Some(mac.into()),
            host_ifname: Some(IfName::new(&format!("veth{}", &mac[15..])).unwrap()),
        })
    }

    fn port(host: Option<&str>, hp: u16, ctr: &str) -> PortMapping {
        PortMapping {
            host_ip: host.map(|h| h.parse().unwrap()),
            host_port: hp,
            protocol: Protocol::Tcp,
            container_ip: ctr.parse().unwrap(),
            container_port: 80,
        }
    }

    #[test]
    fn an_empty_state_knows_no_network_and_creates_nothing() {
        let (_d, f) = fw();
        assert!(f.inventory().unwrap().is_empty());
        assert!(!f.state_dir().exists(), "listing must not create the state");
    }

    #[test]
    fn inventory_joins_bridge_pod_isolation_and_ports_per_attachment() {
        let (_d, f) = fw();
        let front = elems("br-front", "10.89.1.0/24", false);
        f.attach_network_pod(
            &att("front", "c1"),
            &front,
            pod("10.89.1.2/24", "0a:58:0a:59:01:02"),
        )
        .unwrap();
        f.attach_network_pod(
            &att("front", "c2"),
            &front,
            pod("10.89.1.3/24", "0a:58:0a:59:01:03"),
        )
        .unwrap();
        f.attach_isolation(&att("front", "c1"), &IfName::new("br-front").unwrap())
            .unwrap();
        f.add_ports(
            &att("front", "c1"),
            &[port(Some("127.0.0.1"), 8080, "10.89.1.2")],
        )
        .unwrap();
        f.attach_network_pod(
            &att("back", "c1"),
            &elems("br-back", "10.89.2.0/24", true),
            pod("10.89.2.2/24", "0a:58:0a:59:02:02"),
        )
        .unwrap();

        let inv = f.inventory().unwrap();
        let names: Vec<&str> = inv.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["back", "front"]);
        let (back, front) = (&inv[0], &inv[1]);
        assert!(back.internal && !back.isolated && back.masquerade.is_empty());
        assert!(!front.internal && front.isolated);
        assert_eq!(front.bridge.as_ref().unwrap().as_str(), "br-front");
        assert_eq!(
            front.subnets,
            ["10.89.1.0/24".parse::<IpNetwork>().unwrap()]
        );
        assert_eq!(front.attachments.len(), 2, "{front:?}");
        let c1 = &front.attachments[0];
        assert_eq!(c1.container_id, "c1");
        assert_eq!(c1.ips, ["10.89.1.2/24".parse::<IpNetwork>().unwrap()]);
        assert_eq!(c1.mac.as_deref(), Some("0a:58:0a:59:01:02"));
        assert_eq!(c1.ports.len(), 1);
        assert_eq!(c1.ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(front.attachments[1].ports.is_empty());
        assert!(
            front.elems.iter().any(|e| matches!(e, Elem::Port { .. }))
                && front
                    .elems
                    .iter()
                    .any(|e| matches!(e, Elem::IsolatedBr { .. })),
            "drift must check the ports and isolation too: {:?}",
            front.elems
        );
    }

    #[test]
    fn del_and_gc_remove_the_attachment_and_then_the_network() {
        let (_d, f) = fw();
        let n = elems("br-x", "10.89.3.0/24", false);
        for c in ["c1", "c2"] {
            f.attach_network_pod(&att("x", c), &n, pod("10.89.3.2/24", "0a:58:0a:59:03:02"))
                .unwrap();
        }
        f.add_ports(&att("x", "c1"), &[port(None, 8081, "10.89.3.2")])
            .unwrap();
        f.detach_network(&att("x", "c1")).unwrap();
        f.del_ports(&att("x", "c1"), &[]).unwrap();
        let inv = f.inventory().unwrap();
        assert_eq!(inv[0].attachments.len(), 1);
        assert_eq!(inv[0].attachments[0].container_id, "c2");
        f.gc(Feature::Network, "x", &[]).unwrap();
        assert!(f.inventory().unwrap().is_empty());
    }

    #[test]
    fn a_repeated_add_keeps_the_pod_record_and_a_bare_attach_does_not_erase_it() {
        let (_d, f) = fw();
        let n = elems("br-y", "10.89.4.0/24", false);
        let a = att("y", "c1");
        f.attach_network_pod(&a, &n, pod("10.89.4.2/24", "0a:58:0a:59:04:02"))
            .unwrap();
        f.attach_network(&a, &n).unwrap();
        let inv = f.inventory().unwrap();
        assert_eq!(
            inv[0].attachments[0].mac.as_deref(),
            Some("0a:58:0a:59:04:02")
        );
    }
}
