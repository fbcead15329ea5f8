//! The dead-node rule: the blocks of nodes whose agents are gone go back to the range.

use std::{collections::BTreeSet, net::IpAddr};

use cluster::{
    ipam::{IpRecord, Keys},
    schema::{self, BlockRecord},
};
use etcd::{Compare, EtcdError, Op};
use ipnetwork::IpNetwork;

use crate::store::Store;

/// What [`reclaim_dead_nodes`] released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub nodes: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub blocks: Vec<IpNetwork>,
}

/// The dead-node rule: a node is dead when it has no `hosts/<node>` key (its agent's lease
/// expired) *and* the judge has one (so agents run in this cluster and the judge's own agent
/// is alive; without agents nobody is ever declared dead). Each block of a dead node goes
/// with its addresses and their attachments' index keys, in one transaction per block that
/// holds only if the block's key is unchanged since read.
pub fn reclaim_dead_nodes(
    store: &dyn Store,
    prefix: &str,
    network: &str,
    judge: &str,
) -> Result<Reclaimed, EtcdError> {
    let hosts_prefix = schema::hosts_prefix(prefix);
    let (hosts, _) = store.list(&hosts_prefix)?;
    let live: BTreeSet<String> = hosts
        .iter()
        .filter_map(|kv| kv.key_str().strip_prefix(&hosts_prefix).map(str::to_string))
        .collect();
    let mut out = Reclaimed::default();
    if !live.contains(judge) {
        return Ok(out);
    }
    let keys = Keys::new(&cluster::ipam::network_prefix(prefix, network));
    let (blocks, _) = store.list(&schema::network_blocks_prefix(prefix, network))?;
    for kv in blocks {
        let key = kv.key_str();
        let Some(block) = key.rsplit('/').next().and_then(schema::parse_cidr_key) else {
            continue;
        };
        let node = serde_json::from_slice::<BlockRecord>(&kv.value)
            .map(|b| b.node)
            .unwrap_or_default();
        if node.is_empty() || live.contains(&node) {
            continue;
        }
        let (ips, _) = store.list(&keys.block_ips(&node, block))?;
        let mut ops = vec![
            Op::delete(&key),
            Op::delete(keys.node_block(&node, block)),
            Op::delete_prefix(keys.block_ips(&node, block)),
        ];
        let mut released: Vec<IpAddr> = Vec::new();
        for ipkv in &ips {
            if let Ok(rec) = serde_json::from_slice::<IpRecord>(&ipkv.value) {
                ops.push(Op::delete(keys.att(&rec.container_id, &rec.ifname)));
            }
            if let Some(ip) = ipkv
                .key_str()
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
            {
                released.push(ip);
            }
        }
        let r = store.txn(&[Compare::unchanged(&key, kv.mod_revision)], &ops, &[])?;
        if r.succeeded {
            out.blocks.push(block);
            out.ips.extend(released);
            if !out.nodes.contains(&node) {
                out.nodes.push(node);
            }
        }
    }
    Ok(out)
}
