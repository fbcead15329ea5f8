//! NetworkPolicy's elements (sets `np_*`): the whole compiled set is handed over at once and
//! the difference goes to the kernel as one transaction.

use super::*;
use crate::state::NetpolRecord;

impl Firewall {
    /// Make NetworkPolicy's elements exactly `want` (every `Elem::NpIsolated` and
    /// `Elem::NpAllow` of this namespace, as the policy compiler renders them). Returns
    /// (added, removed).
    ///
    /// One transaction: gone elements removed first, then new ones added (elements of an
    /// interval set may not overlap, and a change often replaces a range by a wider one), so
    /// a policy change is atomic: no packet sees half of it. The record is written first as
    /// the union of old and new, so a kill halfway leaves nothing in the kernel without a
    /// record. When the table is missing or was replaced, the skeleton, every element of the
    /// state and `want` go in together (fail closed). Level-triggered: with nothing to change,
    /// elements missing from the kernel are put back.
    pub fn set_netpol(&self, want: &BTreeSet<Elem>) -> Result<(usize, usize), NftError> {
        if let Some(e) = want.iter().find(|e| !e.is_netpol()) {
            return Err(NftError::Invalid {
                what: "NetworkPolicy element",
                value: e.to_string(),
                reason: "not an np_* element",
            });
        }
        let st = Locked::lock(&self.dir)?;
        let old = st.netpol()?.elems;
        // Gone elements first: an interval set's elements may not overlap.
        self.set_exactly(&st, &old, want, true, |st, elems| {
            st.put_netpol(&NetpolRecord { elems })
        })
    }

    /// Which of `elems` (NetworkPolicy elements a pod needs) the kernel lacks: CHECK.
    pub fn check_netpol(&self, elems: &[Elem]) -> Result<Vec<Elem>, NftError> {
        let _st = Locked::lock(&self.dir)?;
        self.missing(elems)
    }

    /// The NetworkPolicy elements the state records (`cnirs policy ls`, tests).
    pub fn netpol_elems(&self) -> Result<BTreeSet<Elem>, NftError> {
        let st = Locked::lock(&self.dir)?;
        Ok(st.netpol()?.elems)
    }
}
