//! The attachments of bridge networks (bridge, internal-bridge, overlay, a routed ptp) and
//! of isolation: register, drop, check.

use super::*;

impl Firewall {
    // ---- network (bridge / internal-bridge) ----

    /// Register a bridge attachment; the first one of the network adds its elements
    /// (`managed_br`, `same_br`, `internal_br`, `masq4/6`). No nft exec when nothing is new.
    pub fn attach_network(&self, a: &Attachment, n: &NetworkElems) -> Result<(), NftError> {
        self.attach_network_pod(a, n, None)
    }

    /// [`Firewall::attach_network`], recording the pod side of the attachment (addresses,
    /// MAC, host veth) in the same locked write, for `cnirs inspect`; DEL and GC drop it with
    /// the attachment.
    pub fn attach_network_pod(
        &self,
        a: &Attachment,
        n: &NetworkElems,
        pod: Option<PodIface>,
    ) -> Result<(), NftError> {
        self.attach_network_peers(a, n, &[], pod)
    }

    /// [`Firewall::attach_network_pod`] for a network whose bridge routes to `peers`, other
    /// devices of the network (the overlay's VXLAN device): see [`Elem::for_network_peers`].
    pub fn attach_network_peers(
        &self,
        a: &Attachment,
        n: &NetworkElems,
        peers: &[IfName],
        pod: Option<PodIface>,
    ) -> Result<(), NftError> {
        let own: Vec<Elem> = n
            .spoof_check
            .iter()
            .flat_map(|(port, mac)| Elem::spoof_check(port, mac).into_iter().flatten())
            .collect();
        let net = Elem::for_network_peers(n, peers);
        self.attach(Feature::Network, a, net, own, pod)
    }

    /// Whether any bridge attachment of `network` is recorded here (one `readdir`).
    pub fn network_in_use(&self, network: &str) -> Result<bool, NftError> {
        let st = Locked::lock(&self.dir)?;
        st.has_atts(Feature::Network, network)
    }

    /// Drop a bridge attachment; the last one of the network removes its elements.
    /// Ok when the attachment is unknown (DEL is idempotent). Returns the internal bridge
    /// whose last attachment this was, with the subnets its record held (its kernel-level
    /// seal may go too; the record knows them when the runtime sends no prevResult and the
    /// bridge has no address).
    pub fn detach_network(&self, a: &Attachment) -> Result<Option<LastInternal>, NftError> {
        let removed = self.detach(Feature::Network, a)?;
        let Some(bridge) = removed.iter().find_map(|e| match e {
            Elem::InternalBr { bridge } => Some(bridge.clone()),
            _ => None,
        }) else {
            return Ok(None);
        };
        let subnets = removed
            .iter()
            .filter_map(|e| match e {
                Elem::BrNet { bridge: b, subnet } if *b == bridge => Some(*subnet),
                _ => None,
            })
            .collect();
        Ok(Some(LastInternal { bridge, subnets }))
    }

    /// Which network elements of this attachment are missing from the kernel (empty = fine).
    pub fn check_network(&self, a: &Attachment) -> Result<Vec<Elem>, NftError> {
        self.check(Feature::Network, a)
    }

    /// A routed attachment (`ptp` with `ipMasq`): the pod's subnets masqueraded when they
    /// leave the host (`masq4/6`, shared by the network's attachments), and the pod's host-side
    /// link in `managed_br` (owned by the attachment), so traffic routed into one of our pods
    /// keeps its source, as the reference's per-subnet exception keeps it. DEL and CHECK are
    /// [`Firewall::detach_network`] and [`Firewall::check_network`].
    pub fn attach_routed(
        &self,
        a: &Attachment,
        link: &IfName,
        masq: &[ipnetwork::IpNetwork],
    ) -> Result<(), NftError> {
        let shared = masq.iter().map(|s| Elem::masq(*s)).collect();
        let own = vec![Elem::ManagedBr {
            bridge: link.clone(),
        }];
        self.attach(Feature::Network, a, shared, own, None)
    }

    // ---- isolation ----

    /// Register an isolation attachment: `isolated_br { bridge }` while any exists, and the
    /// same for the devices the network's bridge routes to (its peers: the overlay's VXLAN
    /// device, read from the network's `same_br` pairs), so traffic routed between two
    /// isolated networks is dropped whichever of their devices it leaves by.
    pub fn attach_isolation(&self, a: &Attachment, bridge: &IfName) -> Result<(), NftError> {
        let peers: Vec<IfName> = {
            let st = Locked::lock(&self.dir)?;
            st.net(Feature::Network, &a.network)?
                .elems
                .into_iter()
                .filter_map(|e| match e {
                    Elem::SamePair { iif, oif } if iif == *bridge => Some(oif),
                    _ => None,
                })
                .collect()
        };
        let mut elems = vec![Elem::IsolatedBr {
            bridge: bridge.clone(),
        }];
        elems.extend(peers.into_iter().map(|p| Elem::IsolatedBr { bridge: p }));
        self.attach(Feature::Isolation, a, elems, Vec::new(), None)
    }

    /// Drop an isolation attachment (idempotent).
    pub fn detach_isolation(&self, a: &Attachment) -> Result<(), NftError> {
        self.detach(Feature::Isolation, a).map(drop)
    }

    /// Missing isolation elements of this attachment.
    pub fn check_isolation(&self, a: &Attachment) -> Result<Vec<Elem>, NftError> {
        self.check(Feature::Isolation, a)
    }
}
