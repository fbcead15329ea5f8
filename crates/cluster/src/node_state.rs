//! What the node agent tells the plugins on its own host, through one file: who this host is
//! in the cluster, whether its `hosts/<node>` lease was renewed lately, the networks' records
//! and this node's blocks, as the agent last saw them in etcd.
//!
//! ```text
//! $CNIRS_RUN_DIR/cluster/<prefix>/<node>/agent.json   the agent's (this module)
//! $CNIRS_RUN_DIR/cluster/<prefix>/<node>/ipam/<net>/  etcd-ipam's leases on this host
//! ```
//!
//! (`<prefix>` is the etcd prefix with its slashes turned into `_`; `$CNIRS_RUN_DIR` defaults
//! to `/run/cni-rs`, a tmpfs: no pod survives a reboot, nor does this.)
//!
//! An overlay ADD that finds the file fresh ([`NodeState::usable`]: this node, this VTEP, a
//! renewal at most [`FRESH_MS`] ago) takes the node's identity, the network's VNI and the
//! node's blocks from it instead of reading etcd: while the lease is alive no other host can
//! take this node's blocks (the dead-node rule needs the `hosts/<node>` key gone), so the
//! addresses of those blocks are this host's to hand out. A stale, missing, torn or foreign
//! file only means the ADD reads etcd, as it did before.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::schema::NetworkRecord;

/// How old the last renewal may be for the file to count: the lease lives 30 s from a renewal
/// (the TTL), so at most 15 s after one it has 15 s left, more than any ADD takes.
pub const FRESH_MS: u64 = 15_000;

/// The agent's file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    pub vtep: Option<IpAddr>,
    /// `CLOCK_BOOTTIME` in ms when the lease of `hosts/<node>` was last granted or renewed
    /// (the request's start: the lease lives at least its TTL from then).
    pub renewed_ms: u64,
    /// `networks/<net>` as listed.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    /// This node's blocks, by network (`blocks/<net>/<cidr>` naming this node).
    #[serde(default)]
    pub blocks: BTreeMap<String, BTreeSet<IpNetwork>>,
}

impl NodeState {
    /// True when the file can stand for an etcd read by an ADD of `node` with VTEP `vtep` on a
    /// network of `vni` at time `now_ms` (`CLOCK_BOOTTIME`).
    pub fn usable(&self, node: &str, vtep: IpAddr, network: &str, vni: u32, now_ms: u64) -> bool {
        self.node == node
            && self.vtep == Some(vtep)
            && now_ms >= self.renewed_ms
            && now_ms - self.renewed_ms <= FRESH_MS
            && self.networks.get(network).is_some_and(|n| n.vni == vni)
    }
}

/// `CLOCK_BOOTTIME` in ms (counts suspended time, as the lease's TTL does on the server).
pub fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
        .unwrap_or(0)
}

/// `$CNIRS_RUN_DIR` (default `/run/cni-rs`).
pub fn run_root() -> PathBuf {
    std::env::var_os("CNIRS_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/run/cni-rs"), PathBuf::from)
}

/// `<root>/cluster/<prefix>/<node>`: this node's local state for the cluster at `prefix`.
/// `None` when the node name is not a safe path component (`cni_core::conf::is_safe_name`:
/// letters, digits, `_`, `.`, `-`, starting with a letter or digit, as every host name).
pub fn node_dir(root: &Path, prefix: &str, node: &str) -> Option<PathBuf> {
    if !cni_core::conf::is_safe_name(node) {
        return None;
    }
    let p = prefix.trim_matches('/').replace('/', "_");
    let p = if p.is_empty() { "_".to_string() } else { p };
    Some(root.join("cluster").join(p).join(node))
}

/// The agent's file in a node's dir.
pub fn state_file(node_dir: &Path) -> PathBuf {
    node_dir.join("agent.json")
}

/// Read the agent's file: `None` when missing or unreadable (a torn or foreign file is the
/// same as none: the caller reads etcd).
pub fn load(path: &Path) -> Option<NodeState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Write the agent's file whole (a temp file renamed over it: a reader sees the old or the new).
pub fn store(path: &Path, state: &NodeState) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// Remove the agent's file (the agent stopping: its lease is about to be revoked).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            node: "h1".into(),
            vtep: Some("10.0.0.1".parse().unwrap()),
            renewed_ms: 100_000,
            networks: BTreeMap::from([(
                "ov".to_string(),
                NetworkRecord {
                    vni: 42,
                    subnets: vec![],
                    internal: false,
                },
            )]),
            blocks: BTreeMap::new(),
        }
    }

    #[test]
    fn usable_only_for_this_node_vtep_network_and_a_recent_renewal() {
        let s = state();
        let v: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(s.usable("h1", v, "ov", 42, 100_000 + FRESH_MS));
        assert!(
            !s.usable("h1", v, "ov", 42, 100_000 + FRESH_MS + 1),
            "stale"
        );
        assert!(!s.usable("h1", v, "ov", 42, 99_999), "from the future");
        assert!(!s.usable("h2", v, "ov", 42, 100_000), "another node");
        assert!(!s.usable("h1", "10.0.0.2".parse().unwrap(), "ov", 42, 100_000));
        assert!(!s.usable("h1", v, "ov", 43, 100_000), "another VNI");
        assert!(
            !s.usable("h1", v, "other", 42, 100_000),
            "network not listed"
        );
    }

    #[test]
    fn node_dir_refuses_a_name_that_is_not_one_component() {
        let r = Path::new("/run/x");
        assert_eq!(
            node_dir(r, "/cnirs", "h1").unwrap(),
            Path::new("/run/x/cluster/cnirs/h1")
        );
        assert_eq!(
            node_dir(r, "/a/b/", "h1").unwrap(),
            Path::new("/run/x/cluster/a_b/h1")
        );
        assert!(node_dir(r, "/cnirs", "..").is_none());
        assert!(node_dir(r, "/cnirs", ".").is_none());
        assert!(node_dir(r, "/cnirs", "a/b").is_none());
        assert!(node_dir(r, "/cnirs", "").is_none());
    }

    #[test]
    fn store_then_load_round_trips_and_a_torn_file_is_none() {
        let d = std::env::temp_dir().join(format!("cnirs-node-state-{}", std::process::id()));
        let f = state_file(&d);
        store(&f, &state()).unwrap();
        assert_eq!(load(&f), Some(state()));
        std::fs::write(&f, b"{\"node\":").unwrap();
        assert_eq!(load(&f), None);
        remove(&f).unwrap();
        remove(&f).unwrap();
        assert_eq!(load(&f), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
