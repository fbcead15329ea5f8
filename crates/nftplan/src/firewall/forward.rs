//! The firewall plugin's entry points of [`Firewall`]: accept rules for a network's bridge in
//! the host's own FORWARD chains (see `foreign.rs`), per network, not per pod.

use super::*;

impl Firewall {
    /// Register a firewall attachment and let `bridge`'s traffic through the host's
    /// `filter FORWARD` chains that drop by policy (iptables' FORWARD DROP as Docker sets it):
    /// three rules per bridge, inserted by the network's first attachment (one `nft -j list
    /// chains`, plus the insert where a chain drops); later attachments run no nft. The
    /// network's last detach (or GC) removes them.
    pub fn attach_forward(&self, a: &Attachment, bridge: &IfName) -> Result<(), NftError> {
        let st = Locked::lock(&self.dir)?;
        if st.att(Feature::Firewall, a)?.is_none() {
            st.put_att(
                Feature::Firewall,
                &AttRecord {
                    attachment: a.clone(),
                    elems: Vec::new(),
                    pending: false,
                    standby: Vec::new(),
                    pod: None,
                },
            )?;
        }
        let mut net = st.net(Feature::Firewall, &a.network)?;
        if net.bridge.as_ref() == Some(bridge) {
            // Recorded only after the network's first attachment put the rules in place: the
            // 2nd..Nth pod runs no nft. After a reload, `cnirs-reconcile` restores them.
            return Ok(());
        }
        // The rules (idempotent), then the record: a kill in between leaves no record, and the
        // next attachment of the network inserts them again (a no-op) and records them.
        crate::foreign::allow(self.nft.as_ref(), bridge)?;
        net.bridge = Some(bridge.clone());
        st.put_net(Feature::Firewall, &net)
    }

    /// Drop a firewall attachment; the network's last one removes its bridge's rules.
    pub fn detach_forward(&self, a: &Attachment) -> Result<(), NftError> {
        let st = Locked::lock(&self.dir)?;
        st.drop_att(Feature::Firewall, a)?;
        if st.has_atts(Feature::Firewall, &a.network)? {
            return Ok(());
        }
        self.drop_forward(&st, &a.network)
    }

    pub(super) fn drop_forward(&self, st: &Locked, network: &str) -> Result<(), NftError> {
        let net = st.net(Feature::Firewall, network)?;
        if let Some(bridge) = &net.bridge {
            crate::foreign::remove(self.nft.as_ref(), bridge)?;
        }
        st.drop_net(Feature::Firewall, network)
    }
}
