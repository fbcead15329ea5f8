//! The overlay gate (the node agent's): VXLAN to our ports from anything but a member VTEP
//! is dropped before decapsulation (sets `vtep_ports`, `vtep4`, `vtep6`).

use super::*;
use crate::state::VtepRecord;

impl Firewall {
    /// Make the overlay gate exactly `ports` (VXLAN UDP ports) and `members` (the cluster's
    /// VTEPs): VXLAN to those ports from any other source is dropped before decapsulation.
    /// Called by the node agent on every change of `hosts/` and every resync; level-triggered:
    /// elements missing from the kernel (deleted by hand, a flushed table) come back.
    ///
    /// One transaction: new elements added and gone ones deleted together, so a member that
    /// stays is never out, not even for an instant; the record is written first as the union
    /// of old and new, so a kill halfway leaves nothing in the kernel without a record. The
    /// gate is part of the state: `reconcile`, `cnirs watch` and every plugin's fail-closed
    /// restore put it back with the table. Returns (added, removed).
    pub fn set_vteps(
        &self,
        ports: &BTreeSet<u16>,
        members: &BTreeSet<std::net::IpAddr>,
    ) -> Result<(usize, usize), NftError> {
        let want: BTreeSet<Elem> = ports
            .iter()
            .map(|p| Elem::VtepPort { port: *p })
            .chain(members.iter().map(|a| Elem::Vtep { addr: *a }))
            .collect();
        let st = Locked::lock(&self.dir)?;
        let old = st.vteps()?;
        let add: Vec<Elem> = want.difference(&old.elems).cloned().collect();
        let gone: Vec<Elem> = old.elems.difference(&want).cloned().collect();
        if let Some(mut restore) = self.stale_table(&st)? {
            // The table is gone or was replaced: the skeleton, every element of the state
            // and the new gate in one transaction.
            st.put_vteps(&VtepRecord {
                elems: old.elems.union(&want).cloned().collect(),
            })?;
            for e in &gone {
                restore.remove(e);
            }
            restore.extend(want.iter().cloned());
            self.restore(&st, &restore)?;
            st.put_vteps(&VtepRecord { elems: want })?;
            return Ok((add.len(), gone.len()));
        }
        if add.is_empty() && gone.is_empty() {
            // Nothing changed here: check the kernel still has it all.
            let list: Vec<Elem> = want.iter().cloned().collect();
            let missing = self.missing(&list)?;
            if !missing.is_empty() {
                let mut b = Batch::new();
                b.add(&missing);
                self.run(&b)?;
            }
            return Ok((missing.len(), 0));
        }
        st.put_vteps(&VtepRecord {
            elems: old.elems.union(&want).cloned().collect(),
        })?;
        let mut b = Batch::new();
        b.add(&add).remove(&gone);
        self.run(&b)?;
        st.put_vteps(&VtepRecord { elems: want })?;
        Ok((add.len(), gone.len()))
    }
}
