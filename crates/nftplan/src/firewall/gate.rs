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
        let old = st.vteps()?.elems;
        self.set_exactly(&st, &old, &want, false, |st, elems| {
            st.put_vteps(&VtepRecord { elems })
        })
    }
}
