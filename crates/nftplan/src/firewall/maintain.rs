//! GC, reconcile and the questions `cnirs` asks of the state and the kernel.

use super::*;

impl Firewall {
    /// Drop every attachment of (`feature`, `network`) whose (container id, ifname) is not in
    /// `valid`, with its elements; the network's elements go if nothing remains.
    pub fn gc(
        &self,
        feature: Feature,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<(), NftError> {
        let st = Locked::lock(&self.dir)?;
        let stale: Vec<AttRecord> = st
            .atts(feature, network)?
            .into_iter()
            .filter(|r| {
                !valid
                    .iter()
                    .any(|(c, i)| *c == r.attachment.container_id && *i == r.attachment.ifname)
            })
            .collect();
        let remaining = st.atts(feature, network)?.len() - stale.len();
        let mut elems: Vec<Elem> = stale.iter().flat_map(|r| r.elems.clone()).collect();
        let net = st.net(feature, network)?;
        if remaining == 0 {
            elems.extend(self.unshared(&st, feature, &net)?);
        }
        self.remove_tolerant(&elems, &[])?;
        for r in &stale {
            let owned = ports_of(&r.elems);
            for m in owned.iter().chain(r.standby.iter()) {
                self.unown_port(&st, &r.attachment, m)?;
            }
            self.hand_over(&st, &owned)?;
            st.drop_att(feature, &r.attachment)?;
        }
        if remaining == 0 {
            if feature == Feature::Firewall {
                self.drop_forward(&st, network)?;
            } else {
                st.drop_net(feature, network)?;
            }
            st.prune_net_dirs(feature, network);
        }
        Ok(())
    }

    /// Load the skeleton (repairing its rules) and re-add every element the state knows, in one
    /// transaction: the way back after `nft flush ruleset` or a firewall reload. Returns how
    /// many elements it (re-)added.
    pub fn reconcile(&self) -> Result<usize, NftError> {
        let st = Locked::lock(&self.dir)?;
        let elems: Vec<Elem> = self.state_elems(&st)?.into_iter().collect();
        self.nft.apply(Batch::new().skeleton().add(&elems))?;
        self.note_table(&st)?;
        st.prune_all_dirs()?;
        // The firewall plugin's rules live in the host's own chains, which a reload may have
        // recreated empty.
        for (feature, rec) in st.all_nets()? {
            if let (Feature::Firewall, Some(bridge)) = (feature, &rec.bridge) {
                crate::foreign::allow(self.nft.as_ref(), bridge)?;
            }
        }
        Ok(elems.len())
    }

    /// Every element the state records that the kernel lacks (what `cnirs reconcile --check`
    /// reports): one `get` batch, element by element only when that fails.
    pub fn missing_elems(&self) -> Result<Vec<Elem>, NftError> {
        let st = Locked::lock(&self.dir)?;
        let elems: Vec<Elem> = self.state_elems(&st)?.into_iter().collect();
        self.missing(&elems)
    }

    /// True when the state records nothing (no plugin attached anything here).
    pub fn state_is_empty(&self) -> Result<bool, NftError> {
        if !self.dir.exists() {
            return Ok(true);
        }
        Locked::lock(&self.dir)?.is_empty()
    }

    /// Is table `inet cnirs` the one this state last filled? `None` when the backend cannot
    /// tell; otherwise what the kernel answered and the handle recorded.
    pub fn table_is_current(&self) -> Result<Option<bool>, NftError> {
        let st = Locked::lock(&self.dir)?;
        Ok(match self.nft.probe_table()? {
            TableProbe::Unknown => None,
            TableProbe::Missing => Some(false),
            TableProbe::Present(h) => Some(st.table_handle()? == Some(h)),
        })
    }
}
