//! The entry points the plugins call.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use netbase::Detacher;

use crate::{
    backend::{NftBackend, NftCli, TableProbe},
    batch::Batch,
    elem::Elem,
    nsstate::{self, NetnsId},
    state::{AttRecord, Locked, NetRecord, PortOwner},
    types::{Attachment, Feature, IfName, NetworkElems, PodIface, PortMapping},
    IpNetwork, NftError,
};

mod forward;
mod gate;
mod maintain;
mod netpol;
mod network;
mod ports;

use ports::{port_elem, ports_of};

/// Default root of the run-time state (`$CNIRS_RUN_DIR` overrides it).
pub const DEFAULT_RUN_DIR: &str = "/run/cni-rs";

/// The firewall of one network namespace: its state directory and an nft backend.
pub struct Firewall {
    dir: PathBuf,
    nft: Box<dyn NftBackend>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall").field("dir", &self.dir).finish()
    }
}

/// `$CNIRS_RUN_DIR`, default `/run/cni-rs`: the root of every namespace's state directory.
pub fn run_root() -> PathBuf {
    std::env::var_os("CNIRS_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// [`run_root`] + `/netns-<inode>-<cookie>` of this thread's netns: state is per network
/// namespace, like the nft table it describes, and bound to the netns cookie, which the kernel
/// never reuses. The first call in a namespace removes what dead namespaces at the same inode
/// left, and adopts the layout before the cookie only when it provably belongs here (see
/// [`crate::nsstate`]).
pub fn default_state_dir() -> Result<PathBuf, NftError> {
    state_dir_of(&NftCli::new())
}

fn state_dir_of(nft: &NftCli) -> Result<PathBuf, NftError> {
    let id = NetnsId::current()?;
    nsstate::resolve(&run_root(), id, || {
        matches!(nft.probe_table(), Ok(TableProbe::Present(_)))
    })
}

/// A verb's firewall: opened at its first use (a verb that ends before touching it opens
/// nothing, not even the state directory), its sockets' closes parked with the verb's
/// detacher; or handed in ready (a test's, over [`crate::FakeNft`]).
pub struct FirewallCell {
    cell: std::cell::OnceCell<Firewall>,
    detach: Detacher,
}

impl FirewallCell {
    /// [`Firewall::open_with`] at the first [`FirewallCell::get`].
    pub fn lazy(detach: &Detacher) -> Self {
        Self {
            cell: std::cell::OnceCell::new(),
            detach: detach.clone(),
        }
    }

    /// This firewall.
    pub fn ready(fw: Firewall) -> Self {
        Self {
            cell: std::cell::OnceCell::from(fw),
            detach: Detacher::immediate(),
        }
    }

    /// The firewall, opened now if it was not yet.
    pub fn get(&self) -> Result<&Firewall, NftError> {
        if let Some(fw) = self.cell.get() {
            return Ok(fw);
        }
        let fw = Firewall::open_with(&self.detach)?;
        Ok(self.cell.get_or_init(|| fw))
    }
}

impl Firewall {
    /// The real thing: [`default_state_dir`] and the kernel ([`NftCli::new`]); its sockets are
    /// closed at once (tools, daemons).
    pub fn open() -> Result<Self, NftError> {
        Self::open_with(&Detacher::immediate())
    }

    /// [`Firewall::open`] for a plugin's verb: the close of each nfnetlink socket is parked
    /// with the verb's `detach` ([`NftCli::with_detacher`]).
    pub fn open_with(detach: &Detacher) -> Result<Self, NftError> {
        let nft = NftCli::new().with_detacher(detach.clone());
        Ok(Firewall::with_backend(state_dir_of(&nft)?, Box::new(nft)))
    }

    /// Explicit state directory and backend (tests, a fake, `ip netns exec`).
    pub fn with_backend(state_dir: impl Into<PathBuf>, nft: Box<dyn NftBackend>) -> Self {
        Firewall {
            dir: state_dir.into(),
            nft,
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// Every element the state records (networks of every feature, published ports).
    fn state_elems(&self, st: &Locked) -> Result<BTreeSet<Elem>, NftError> {
        let mut elems: BTreeSet<Elem> = BTreeSet::new();
        for (_, rec) in st.all_nets()? {
            elems.extend(rec.elems);
        }
        for rec in st.all_atts(Feature::Portmap)? {
            elems.extend(rec.elems);
        }
        elems.extend(st.vteps()?.elems);
        elems.extend(st.netpol()?.elems);
        Ok(elems)
    }

    /// The fail-closed check of every attaching call (one netlink request): when table
    /// `inet cnirs` is missing or is not the one this state last filled, the elements to
    /// restore with the skeleton, in the same batch as the call's own.
    fn stale_table(&self, st: &Locked) -> Result<Option<BTreeSet<Elem>>, NftError> {
        let probe = self.nft.probe_table()?;
        let recorded = st.table_handle()?;
        match probe {
            TableProbe::Unknown => return Ok(None),
            TableProbe::Present(h) if recorded == Some(h) => return Ok(None),
            _ => {}
        }
        let elems = self.state_elems(st)?;
        if recorded.is_some() || !elems.is_empty() {
            log::warn!(
                "table inet cnirs {} (flushed or reloaded?): restoring the skeleton and {} \
                 element(s) from {}",
                if probe == TableProbe::Missing {
                    "is missing"
                } else {
                    "was replaced"
                },
                elems.len(),
                self.dir.display()
            );
        }
        Ok(Some(elems))
    }

    /// Record which table the state now describes.
    fn note_table(&self, st: &Locked) -> Result<(), NftError> {
        if let TableProbe::Present(h) = self.nft.probe_table()? {
            st.put_table_handle(h)?;
        }
        Ok(())
    }

    /// Apply a restore batch (skeleton + `elems`) on its own; a failure is [`NftError::Restore`].
    fn restore(&self, st: &Locked, elems: &BTreeSet<Elem>) -> Result<(), NftError> {
        let list: Vec<Elem> = elems.iter().cloned().collect();
        let mut b = Batch::new();
        b.skeleton().add(&list);
        self.nft.apply(&b).map_err(|e| NftError::Restore {
            state: self.dir.clone(),
            source: Box::new(e),
        })?;
        self.note_table(st)
    }

    /// Make a feature's whole recorded set of elements (`old`, written by `put`) exactly
    /// `want`, in one transaction (`remove_first`: gone elements before new ones, for interval
    /// sets). The record is written first as the union of old and new, so a kill halfway
    /// leaves nothing in the kernel without a record; a missing or replaced table gets the
    /// skeleton, every element of the state and `want` together (fail closed). With nothing
    /// to change, elements missing from the kernel are put back. Returns (added, removed).
    fn set_exactly(
        &self,
        st: &Locked,
        old: &BTreeSet<Elem>,
        want: &BTreeSet<Elem>,
        remove_first: bool,
        put: impl Fn(&Locked, BTreeSet<Elem>) -> Result<(), NftError>,
    ) -> Result<(usize, usize), NftError> {
        let add: Vec<Elem> = want.difference(old).cloned().collect();
        let gone: Vec<Elem> = old.difference(want).cloned().collect();
        if let Some(mut restore) = self.stale_table(st)? {
            put(st, old.union(want).cloned().collect())?;
            for e in &gone {
                restore.remove(e);
            }
            restore.extend(want.iter().cloned());
            self.restore(st, &restore)?;
            put(st, want.clone())?;
            return Ok((add.len(), gone.len()));
        }
        if add.is_empty() && gone.is_empty() {
            let list: Vec<Elem> = want.iter().cloned().collect();
            let missing = self.missing(&list)?;
            if !missing.is_empty() {
                let mut b = Batch::new();
                b.add(&missing);
                self.run(&b)?;
            }
            return Ok((missing.len(), 0));
        }
        put(st, old.union(want).cloned().collect())?;
        let mut b = Batch::new();
        if remove_first {
            b.remove(&gone).add(&add);
        } else {
            b.add(&add).remove(&gone);
        }
        self.run(&b)?;
        put(st, want.clone())?;
        Ok((add.len(), gone.len()))
    }

    /// Load (or repair) the skeleton only.
    pub fn ensure_skeleton(&self) -> Result<(), NftError> {
        self.nft.apply(Batch::new().skeleton())
    }

    // ---- internals ----

    /// Register `a`: the network's shared `elems` (refcounted) and the attachment's `own`
    /// elements (removed with it).
    fn attach(
        &self,
        feature: Feature,
        a: &Attachment,
        elems: Vec<Elem>,
        own: Vec<Elem>,
        pod: Option<PodIface>,
    ) -> Result<(), NftError> {
        let st = Locked::lock(&self.dir)?;
        let stale = self.stale_table(&st)?;
        // The attachment first (with its own elements as intent): from here on DEL knows it
        // and what it may have put in the kernel, whatever happens next.
        let prior = st.att(feature, a)?;
        let created = prior.is_none();
        let pod_changed = pod.is_some() && prior.as_ref().map(|r| &r.pod) != Some(&pod);
        let pod = pod.or_else(|| prior.as_ref().and_then(|r| r.pod.clone()));
        let mut own_new: Vec<Elem> = match &prior {
            Some(r) if !r.pending => own
                .iter()
                .filter(|e| !r.elems.contains(e))
                .cloned()
                .collect(),
            _ => own.clone(),
        };
        own_new.dedup();
        if created || !own_new.is_empty() || pod_changed {
            st.put_att(
                feature,
                &AttRecord {
                    attachment: a.clone(),
                    elems: own.clone(),
                    pending: !own_new.is_empty(),
                    standby: Vec::new(),
                    pod: pod.clone(),
                },
            )?;
        }
        let before = st.net(feature, &a.network)?;
        let mut net = before.clone();
        let mut new: BTreeSet<Elem> = elems
            .into_iter()
            .filter(|e| !net.elems.contains(e))
            .collect();
        new.extend(net.pending.iter().cloned()); // a dead writer's unfinished batch
        if new.is_empty() && own_new.is_empty() {
            // Nothing new, but what this attachment depends on must be in the kernel.
            return match &stale {
                Some(elems) => self.restore(&st, elems),
                None => Ok(()),
            };
        }
        // Intent, then the kernel, then done: a kill at any point leaves a record of every
        // element that may be in the kernel.
        net.elems.extend(new.iter().cloned());
        net.pending = new.clone();
        st.put_net(feature, &net)?;
        let mut list: Vec<Elem> = new.into_iter().collect();
        list.extend(own_new);
        let mut b = Batch::new();
        if let Some(restore) = &stale {
            let rest: Vec<Elem> = restore
                .iter()
                .filter(|e| !list.contains(e))
                .cloned()
                .collect();
            b.skeleton().add(&rest);
        }
        b.add(&list);
        let applied = self.run(&b).map_err(|e| match &stale {
            Some(_) => NftError::Restore {
                state: self.dir.clone(),
                source: Box::new(e),
            },
            None => e,
        });
        if let Err(e) = applied {
            match &prior {
                Some(r) => st.put_att(feature, r)?,
                None => st.drop_att(feature, a)?,
            }
            if before.elems.is_empty() && before.pending.is_empty() {
                st.drop_net(feature, &a.network)?;
            } else {
                st.put_net(feature, &before)?;
            }
            return Err(e);
        }
        if stale.is_some() {
            self.note_table(&st)?;
        }
        net.pending.clear();
        st.put_net(feature, &net)?;
        if !own.is_empty() {
            st.put_att(
                feature,
                &AttRecord {
                    attachment: a.clone(),
                    elems: own,
                    pending: false,
                    standby: Vec::new(),
                    pod,
                },
            )?;
        }
        Ok(())
    }

    /// Returns the network elements removed (empty unless this was the network's last one).
    fn detach(&self, feature: Feature, a: &Attachment) -> Result<Vec<Elem>, NftError> {
        let st = Locked::lock(&self.dir)?;
        if let Some(rec) = st.att(feature, a)? {
            if feature != Feature::Portmap && !rec.elems.is_empty() {
                self.remove_tolerant(&rec.elems, &[])?;
            }
        }
        st.drop_att(feature, a)?;
        if st.has_atts(feature, &a.network)? {
            return Ok(Vec::new());
        }
        let net = st.net(feature, &a.network)?;
        let elems = self.unshared(&st, feature, &net)?;
        self.remove_tolerant(&elems, &[])?;
        st.drop_net(feature, &a.network)?;
        Ok(elems)
    }

    fn check(&self, feature: Feature, a: &Attachment) -> Result<Vec<Elem>, NftError> {
        let st = Locked::lock(&self.dir)?;
        let Some(rec) = st.att(feature, a)? else {
            return Err(NftError::NotAttached {
                feature: feature.as_str(),
                attachment: a.to_string(),
            });
        };
        let net = st.net(feature, &a.network)?;
        let elems: Vec<Elem> = net.elems.into_iter().chain(rec.elems).collect();
        self.missing(&elems)
    }

    /// Elements of `net` that no other network record (of any feature) also holds.
    fn unshared(
        &self,
        st: &Locked,
        feature: Feature,
        net: &NetRecord,
    ) -> Result<Vec<Elem>, NftError> {
        let others: BTreeSet<Elem> = st
            .all_nets()?
            .into_iter()
            .filter(|(f, r)| !(*f == feature && r.network == net.network))
            .flat_map(|(_, r)| r.elems)
            .collect();
        Ok(net
            .elems
            .iter()
            .filter(|e| !others.contains(e))
            .cloned()
            .collect())
    }

    /// Ports just released (`freed`) whose key a standby owner (the same container through
    /// another attachment) still wants: publish its mapping and make it the active owner.
    fn hand_over(&self, st: &Locked, freed: &[PortMapping]) -> Result<(), NftError> {
        for m in freed {
            let k = m.key();
            let mut owners = st.port_owners(&k)?;
            let overlaps = |o: &PortOwner| {
                o.host_ip.is_none() || k.host_ip.is_none() || o.host_ip == k.host_ip
            };
            let Some(next) = owners.iter_mut().find(|o| o.standby && overlaps(o)) else {
                continue;
            };
            let Some(mapping) = next.mapping.clone() else {
                continue;
            };
            next.standby = false;
            let heir = next.owner.clone();
            // Intent first (the heir's record, pending), then the kernel.
            let Some(mut rec) = st.att(Feature::Portmap, &heir)? else {
                continue;
            };
            rec.standby.retain(|s| *s != mapping);
            rec.elems.push(port_elem(&mapping));
            rec.pending = true;
            st.put_att(Feature::Portmap, &rec)?;
            st.put_port_owners(&k, &owners)?;
            let mut b = Batch::new();
            b.add(&[port_elem(&mapping)]);
            self.run(&b)?;
            rec.pending = false;
            st.put_att(Feature::Portmap, &rec)?;
            log::info!("port {k} handed over to {heir}");
        }
        Ok(())
    }

    fn unown_port(&self, st: &Locked, a: &Attachment, m: &PortMapping) -> Result<(), NftError> {
        let k = m.key();
        let mut owners = st.port_owners(&k)?;
        let before = owners.len();
        owners.retain(|o| !(o.owner == *a && o.host_ip == k.host_ip));
        // An empty list always takes the removal path, which also clears a temporary file left
        // by a write that was killed before its rename.
        if owners.len() != before || owners.is_empty() {
            st.put_port_owners(&k, &owners)?;
        }
        Ok(())
    }

    /// Apply `b`; if it fails (table or set missing, e.g. first call or after a flush), load the
    /// skeleton and `b` in one transaction and try once more. No message parsing: any failure
    /// gets the retry, a real error fails again and is returned.
    fn run(&self, b: &Batch) -> Result<(), NftError> {
        if b.is_empty() {
            return Ok(());
        }
        match self.nft.apply(b) {
            Ok(()) => Ok(()),
            Err(first) => {
                log::debug!("nft batch failed ({first}); retrying with the skeleton");
                self.nft.apply(Batch::new().skeleton().extend(b))
            }
        }
    }

    /// Remove `owned` and `extra` without failing on missing elements. If the batch still fails
    /// (an element exists with a different value), go element by element: failures on `owned`
    /// are returned, failures on `extra` (from config, maybe not ours) are logged.
    fn remove_tolerant(&self, owned: &[Elem], extra: &[Elem]) -> Result<(), NftError> {
        let mut b = Batch::new();
        b.remove(owned).remove(extra);
        if b.is_empty() || self.run(&b).is_ok() {
            return Ok(());
        }
        let mut first_err = None;
        for (e, ours) in owned
            .iter()
            .map(|e| (e, true))
            .chain(extra.iter().map(|e| (e, false)))
        {
            if let Err(err) = self.nft.apply(Batch::new().remove(std::slice::from_ref(e))) {
                log::warn!("cannot remove {e}: {err}");
                if ours && first_err.is_none() {
                    first_err = Some(err);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Which of `elems` are not in the kernel: one `get element` batch, and element by element
    /// only when that fails.
    pub(crate) fn missing(&self, elems: &[Elem]) -> Result<Vec<Elem>, NftError> {
        let mut b = Batch::new();
        b.get(elems);
        if b.is_empty() || self.nft.apply(&b).is_ok() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in elems {
            if self
                .nft
                .apply(Batch::new().get(std::slice::from_ref(e)))
                .is_err()
            {
                out.push(e.clone());
            }
        }
        Ok(out)
    }
}

/// The last attachment of an internal network is gone: its bridge and the subnets it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastInternal {
    /// The internal network's bridge.
    pub bridge: IfName,
    /// Its subnets (network addresses), as the attachments recorded them.
    pub subnets: Vec<IpNetwork>,
}

/// CHECK's verdict on what [`Firewall::check_network`] and its siblings found missing:
/// [`NftError::Missing`] naming the elements, or Ok when nothing is missing.
pub fn missing_error(what: &'static str, a: &Attachment, missing: &[Elem]) -> Result<(), NftError> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(NftError::Missing {
        what,
        attachment: a.to_string(),
        elems: missing
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
