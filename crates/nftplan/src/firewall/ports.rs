//! Published ports: the portmap entry points of [`Firewall`], with ownership and conflicts.

use super::*;

impl Firewall {
    /// Publish `mappings` for this attachment (replacing what it published before).
    /// Refused with [`NftError::Conflict`] if another attachment holds one of the host ports
    /// (a wildcard address conflicts with every address of its family); nothing changes then.
    pub fn add_ports(&self, a: &Attachment, mappings: &[PortMapping]) -> Result<(), NftError> {
        let mut want: Vec<PortMapping> = Vec::new();
        for m in mappings {
            let m = m.validated()?;
            if !want.contains(&m) {
                want.push(m);
            }
        }
        // Two mappings of one request on the same host port.
        for (i, m) in want.iter().enumerate() {
            if want[..i].iter().any(|o| overlaps(o, m)) {
                return Err(NftError::Conflict {
                    port: m.key().to_string(),
                    owner: a.to_string(),
                });
            }
        }
        let st = Locked::lock(&self.dir)?;
        let stale = self.stale_table(&st)?;
        let rec = st.att(Feature::Portmap, a)?;
        let old: Vec<PortMapping> = rec.as_ref().map(|r| ports_of(&r.elems)).unwrap_or_default();
        let old_standby: Vec<PortMapping> =
            rec.as_ref().map(|r| r.standby.clone()).unwrap_or_default();
        // Active: we publish it. Standby: the same container publishes it through another
        // attachment (podman gives every network of a container the same mappings); we take
        // it over when that attachment goes. Another container: refused.
        let (mut active, mut standby) = (Vec::new(), Vec::new());
        for m in &want {
            let k = m.key();
            let mut behind_sibling = false;
            for o in st.port_owners(&k)? {
                let same_addr =
                    o.host_ip.is_none() || k.host_ip.is_none() || o.host_ip == k.host_ip;
                if !same_addr || o.owner == *a {
                    continue;
                }
                if o.owner.container_id != a.container_id {
                    return Err(NftError::Conflict {
                        port: k.to_string(),
                        owner: o.owner.to_string(),
                    });
                }
                if !o.standby && !old.contains(m) {
                    behind_sibling = true;
                }
            }
            if behind_sibling {
                standby.push(m.clone());
            } else {
                active.push(m.clone());
            }
        }
        // A record left `pending` by a killed call: its elements may or may not be in the
        // kernel; take them out (tolerantly) and publish afresh.
        let (old, old_standby) = match &rec {
            Some(r) if r.pending => {
                self.remove_tolerant(&r.elems, &[])?;
                (Vec::new(), r.standby.clone())
            }
            _ => (old, old_standby),
        };
        let gone_maps: Vec<PortMapping> = old
            .iter()
            .filter(|m| !active.contains(m))
            .cloned()
            .collect();
        let new: Vec<Elem> = active
            .iter()
            .filter(|m| !old.contains(m))
            .map(port_elem)
            .collect();
        if gone_maps.is_empty() && new.is_empty() && standby == old_standby && rec.is_some() {
            return match &stale {
                Some(elems) => self.restore(&st, elems),
                None => Ok(()),
            };
        }
        // Intent first: the record (pending) and the owners, then the kernel. A kill anywhere
        // leaves a record from which DEL or GC removes whatever reached the kernel.
        let mut record = AttRecord {
            attachment: a.clone(),
            elems: old.iter().chain(active.iter()).map(port_elem).collect(),
            pending: true,
            standby: standby.clone(),
            pod: None,
        };
        record.elems.dedup();
        st.put_att(Feature::Portmap, &record)?;
        let mut saved: Vec<(crate::types::PortKey, Vec<PortOwner>)> = Vec::new();
        let dropped = gone_maps
            .iter()
            .chain(old_standby.iter().filter(|m| !standby.contains(m)));
        for m in dropped {
            let k = m.key();
            saved.push((k, st.port_owners(&k)?));
            self.unown_port(&st, a, m)?;
        }
        for (m, is_standby) in active
            .iter()
            .map(|m| (m, false))
            .chain(standby.iter().map(|m| (m, true)))
        {
            let k = m.key();
            let mut owners = st.port_owners(&k)?;
            saved.push((k, owners.clone()));
            owners.retain(|o| !(o.owner == *a && o.host_ip == k.host_ip));
            owners.push(PortOwner {
                host_ip: k.host_ip,
                owner: a.clone(),
                mapping: Some(m.clone()),
                standby: is_standby,
            });
            st.put_port_owners(&k, &owners)?;
        }
        let gone: Vec<Elem> = gone_maps.iter().map(port_elem).collect();
        let mut b = Batch::new();
        if let Some(restore) = &stale {
            // Everything the state knew (this attachment's old ports included, so that the
            // removal below finds them), then the change.
            let rest: Vec<Elem> = restore
                .iter()
                .filter(|e| !new.contains(e))
                .cloned()
                .collect();
            b.skeleton().add(&rest);
        }
        b.remove(&gone).add(&new);
        if let Err(e) = self.run(&b) {
            // Nothing changed in the kernel: put the owners and the record back.
            for (k, owners) in saved.iter().rev() {
                st.put_port_owners(k, owners)?;
            }
            match rec {
                Some(r) => st.put_att(Feature::Portmap, &r)?,
                None => st.drop_att(Feature::Portmap, a)?,
            }
            return Err(e);
        }
        if stale.is_some() {
            self.note_table(&st)?;
        }
        record.elems = active.iter().map(port_elem).collect();
        record.pending = false;
        st.put_att(Feature::Portmap, &record)
    }

    /// Unpublish this attachment's ports: those in state, plus `from_config` (the mappings of
    /// the DEL's config, used when state was lost) unless another attachment owns them.
    /// Missing elements and an unknown attachment are fine.
    pub fn del_ports(&self, a: &Attachment, from_config: &[PortMapping]) -> Result<(), NftError> {
        let st = Locked::lock(&self.dir)?;
        let owned: Vec<PortMapping> = st
            .att(Feature::Portmap, a)?
            .map(|r| ports_of(&r.elems))
            .unwrap_or_default();
        let mut extra = Vec::new();
        for m in from_config.iter().filter_map(|m| m.validated().ok()) {
            if owned.contains(&m) || extra.contains(&m) {
                continue;
            }
            let k = m.key();
            let foreign = st.port_owners(&k)?.iter().any(|o| {
                o.owner != *a
                    && (o.host_ip.is_none() || k.host_ip.is_none() || o.host_ip == k.host_ip)
            });
            if !foreign {
                extra.push(m);
            }
        }
        let owned_elems: Vec<Elem> = owned.iter().map(port_elem).collect();
        let extra_elems: Vec<Elem> = extra.iter().map(port_elem).collect();
        self.remove_tolerant(&owned_elems, &extra_elems)?;
        let standby = st
            .att(Feature::Portmap, a)?
            .map(|r| r.standby)
            .unwrap_or_default();
        for m in owned.iter().chain(standby.iter()) {
            self.unown_port(&st, a, m)?;
        }
        self.hand_over(&st, &owned)?;
        st.drop_att(Feature::Portmap, a)?;
        if !st.has_atts(Feature::Portmap, &a.network)? {
            st.drop_net(Feature::Portmap, &a.network)?;
        }
        Ok(())
    }

    /// Which published ports of this attachment are missing from the kernel.
    pub fn check_ports(&self, a: &Attachment) -> Result<Vec<Elem>, NftError> {
        let st = Locked::lock(&self.dir)?;
        let rec = st
            .att(Feature::Portmap, a)?
            .ok_or_else(|| NftError::NotAttached {
                feature: Feature::Portmap.as_str(),
                attachment: a.to_string(),
            })?;
        self.missing(&rec.elems)
    }
}

pub(super) fn port_elem(m: &PortMapping) -> Elem {
    Elem::Port { mapping: m.clone() }
}

pub(super) fn ports_of(elems: &[Elem]) -> Vec<PortMapping> {
    elems
        .iter()
        .filter_map(|e| match e {
            Elem::Port { mapping } => Some(mapping.clone()),
            _ => None,
        })
        .collect()
}

fn overlaps(a: &PortMapping, b: &PortMapping) -> bool {
    let (ka, kb) = (a.key(), b.key());
    ka.v6 == kb.v6
        && ka.protocol == kb.protocol
        && ka.host_port == kb.host_port
        && (ka.host_ip.is_none() || kb.host_ip.is_none() || ka.host_ip == kb.host_ip)
}
