//! NetworkPolicy's elements (sets `np_*`): the whole compiled set is handed over at once and
//! the difference goes to the kernel as one transaction.

use super::*;
use crate::state::{NetpolChange, NetpolRecord};

/// Past this size the changes log is folded into `netpol.json` (by the next change).
const LOG_MAX: u64 = 4 << 20;

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

    /// Add `add` and remove `gone` (NetworkPolicy elements; a pod's ADD or DEL: the elements
    /// that concern it, computed by the caller): one transaction, the record's changes log
    /// appended (not the record rewritten), so the cost is the change's, not the table's.
    /// When the table is missing or was replaced, the skeleton and every recorded element go
    /// in with the change (fail closed), as in [`Firewall::set_netpol`].
    pub fn change_netpol(&self, add: &[Elem], gone: &[Elem]) -> Result<(), NftError> {
        if let Some(e) = add.iter().chain(gone).find(|e| !e.is_netpol()) {
            return Err(NftError::Invalid {
                what: "NetworkPolicy element",
                value: e.to_string(),
                reason: "not an np_* element",
            });
        }
        let st = Locked::lock(&self.dir)?;
        if let Some(mut restore) = self.stale_table(&st)? {
            let mut rec = st.netpol()?;
            rec.elems.extend(add.iter().cloned());
            st.put_netpol(&rec)?;
            for e in gone {
                restore.remove(e);
                rec.elems.remove(e);
            }
            restore.extend(add.iter().cloned());
            self.restore(&st, &restore)?;
            return st.put_netpol(&rec);
        }
        if add.is_empty() && gone.is_empty() {
            return Ok(());
        }
        if st.netpol_log_len() > LOG_MAX {
            let rec = st.netpol()?;
            st.put_netpol(&rec)?;
        }
        if !add.is_empty() {
            st.log_netpol(&NetpolChange::Add(add.to_vec()))?;
        }
        let mut b = Batch::new();
        b.remove(gone).add(add);
        self.run(&b)?;
        if !gone.is_empty() {
            st.log_netpol(&NetpolChange::Del(gone.to_vec()))?;
        }
        Ok(())
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
