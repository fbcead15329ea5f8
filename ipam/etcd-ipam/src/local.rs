//! This node's addresses, kept on its own host: etcd hands out blocks to nodes (one
//! transaction per block), and a node hands out the addresses of its own blocks from files,
//! flannel's split (etcd per subnet, host-local per pod). No other host can hand out an
//! address of this node's blocks, so the host's lock is all the uniqueness an address needs.
//!
//! ```text
//! $CNIRS_RUN_DIR/cluster/<prefix>/<node>/ipam/<network>/lock     flock(2), held for a whole call
//! $CNIRS_RUN_DIR/cluster/<prefix>/<node>/ipam/<network>/<ip>     "<containerID>\r\n<ifname>"
//! $CNIRS_RUN_DIR/cluster/<prefix>/<node>/ipam/<network>/blocks   this node's blocks, as this host claimed them
//! ```
//!
//! The lease files are host-local's (its `DiskStore`, its lock and index). `blocks` lists the
//! blocks this host claimed and has not released: an address is handed out only from a block
//! that is both in it and this node's in etcd (or in the agent's file), so a view of etcd read
//! before this host's GC released a block cannot hand out an address of it. A host without
//! the file (its first ADD of the network, after a reboot, or after an upgrade from the layout
//! that kept each address in etcd) takes its blocks from etcd, and the addresses etcd still
//! records in them as leases.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::IpAddr,
    path::{Path, PathBuf},
};

use host_local::{
    disk::DiskStore,
    store::{Owner, Store},
    HostLocalError,
};
use ipnetwork::IpNetwork;

use crate::{config::Config, error::Error};

const BLOCKS_FILE: &str = "blocks";

/// `<run_dir>/cluster/<prefix>/<node>/ipam`: where the networks' directories are.
pub fn root(cfg: &Config, node: &str) -> Result<PathBuf, Error> {
    cluster::node_state::node_dir(&cfg.run_dir, &cfg.prefix, node)
        .map(|d| d.join("ipam"))
        .ok_or_else(|| {
            let e = std::io::Error::new(ErrorKind::InvalidInput, "not a safe path component");
            io("using the node name", Path::new(node), e)
        })
}

/// One network's leases and blocks on this host, locked while held.
pub struct Local {
    leases: DiskStore,
    blocks_file: PathBuf,
    /// `None`: no `blocks` file yet.
    blocks: Option<BTreeSet<IpNetwork>>,
}

impl Local {
    /// Open (creating) the network's directory and take its lock.
    pub fn open(cfg: &Config, node: &str) -> Result<Self, Error> {
        let leases = DiskStore::open(&root(cfg, node)?, &cfg.network)?;
        Self::load(leases)
    }

    /// Like [`Local::open`], `None` (nothing created) when the host has no directory for the
    /// network: DEL, CHECK, GC and STATUS never create state.
    pub fn open_existing(cfg: &Config, node: &str) -> Result<Option<Self>, Error> {
        match DiskStore::open_existing(&root(cfg, node)?, &cfg.network)? {
            Some(l) => Self::load(l).map(Some),
            None => Ok(None),
        }
    }

    fn load(leases: DiskStore) -> Result<Self, Error> {
        let blocks_file = leases.dir().join(BLOCKS_FILE);
        let blocks = match std::fs::read(&blocks_file) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                io(
                    "parsing",
                    &blocks_file,
                    std::io::Error::new(ErrorKind::InvalidData, e),
                )
            })?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &blocks_file, e)),
        };
        Ok(Self {
            leases,
            blocks_file,
            blocks,
        })
    }

    /// The blocks this host holds, `None` when it has no record of them yet.
    pub fn blocks(&self) -> Option<&BTreeSet<IpNetwork>> {
        self.blocks.as_ref()
    }

    /// Record the blocks (before an address of a new one is handed out).
    pub fn set_blocks(&mut self, blocks: BTreeSet<IpNetwork>) -> Result<(), Error> {
        if self.blocks.as_ref() == Some(&blocks) {
            return Ok(());
        }
        let tmp = self.blocks_file.with_extension("tmp");
        let body = serde_json::to_vec(&blocks).unwrap_or_default();
        std::fs::write(&tmp, body).map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &self.blocks_file).map_err(|e| io("renaming", &tmp, e))?;
        self.blocks = Some(blocks);
        Ok(())
    }

    /// Addresses held by (id, ifname).
    pub fn held(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.leases.get_by_id(id, ifname)
    }

    /// Who holds `ip`, if anyone.
    pub fn holder(&self, ip: IpAddr) -> Option<Owner> {
        self.leases
            .lease_iter()
            .find(|(i, _)| *i == ip)
            .map(|(_, o)| o.clone())
    }

    /// Every address held, with its holder.
    pub fn leases(&self) -> Vec<(IpAddr, Owner)> {
        self.leases
            .lease_iter()
            .map(|(ip, o)| (ip, o.clone()))
            .collect()
    }

    /// Every address held.
    pub fn taken(&self) -> BTreeSet<IpAddr> {
        self.leases.lease_iter().map(|(ip, _)| ip).collect()
    }

    /// Hold `ip` for (id, ifname); `Ok(false)` when it is held already.
    pub fn reserve(
        &mut self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        set: usize,
    ) -> Result<bool, Error> {
        Ok(self.leases.reserve(&Owner::new(id, ifname), ip, set)?)
    }

    /// Let `ip` go.
    pub fn release_ip(&mut self, ip: IpAddr) -> Result<(), Error> {
        Ok(self.leases.release(ip)?)
    }

    /// Let go of what (id, ifname) holds; the addresses released.
    pub fn release(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        Ok(self.leases.release_by_id(id, ifname)?)
    }
}

impl From<HostLocalError> for Error {
    fn from(e: HostLocalError) -> Self {
        Error::Local(Box::new(e))
    }
}

fn io(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    HostLocalError::io(op, path, e).into()
}
