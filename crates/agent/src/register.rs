//! `hosts/<node>`: registering this host on a lease, never over another host's key.

use std::net::IpAddr;

use cluster::schema::{self, HostRecord};
use etcd::{Client, Compare, LeaseKeeper, Op, OpResponse};

use crate::{Node, LEASE_TTL_S, RENEW};
use cluster::peers::View;

/// What [`claim`] found at `hosts/<node>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours (created now, or already this VTEP's and now on our lease).
    Ours,
    /// Another host holds the name: its VTEP (None when its value is unreadable).
    Taken(Option<IpAddr>),
}

/// Create `key` = `value` on `lease` if absent; if it holds this VTEP already (our own earlier
/// registration: a restart within the lease, or a lease of ours that expired), move it to
/// `lease` with a compare on its revision; never touch a key naming another VTEP. Atomic: of
/// two agents racing for one name, one wins and the other sees [`Claim::Taken`].
pub fn claim(
    client: &Client,
    key: &str,
    value: &[u8],
    lease: i64,
    me: IpAddr,
) -> Result<Claim, etcd::EtcdError> {
    let mut compare = Compare::absent(key);
    for _ in 0..5 {
        let r = client.txn(
            std::slice::from_ref(&compare),
            &[Op::put(key, value, Some(lease))],
            &[Op::get(key)],
        )?;
        if r.succeeded {
            return Ok(Claim::Ours);
        }
        let kv = r.responses.into_iter().find_map(|op| match op {
            OpResponse::Get(kvs) => kvs.into_iter().next(),
            _ => None,
        });
        let Some(kv) = kv else {
            compare = Compare::absent(key); // deleted in between: create it
            continue;
        };
        match serde_json::from_slice::<HostRecord>(&kv.value) {
            Ok(h) if h.vtep == me => {
                if kv.lease == lease && kv.value == value {
                    return Ok(Claim::Ours);
                }
                compare = Compare::unchanged(key, kv.mod_revision);
            }
            Ok(h) => return Ok(Claim::Taken(Some(h.vtep))),
            Err(_) => return Ok(Claim::Taken(None)),
        }
    }
    // Changed under us five times in a row: someone else is writing it.
    Ok(Claim::Taken(None))
}

/// The message for a node name held by another host.
pub fn taken_message(
    key: &str,
    node: &str,
    source: &str,
    theirs: Option<IpAddr>,
    me: IpAddr,
) -> String {
    let theirs = theirs.map_or_else(
        || "an unreadable value".to_string(),
        |v| format!("VTEP {v}"),
    );
    format!(
        "node name {node:?} (from {source}) is held by another host: {key} has {theirs}, this \
         host's VTEP is {me}. Two hosts cannot share a node name: give this one its own with \
         --node-name (or CNIRS_NODE_NAME). Not registering, not overwriting."
    )
}

/// `hosts/<node>` on a lease, kept alive.
pub(crate) struct Registration {
    pub(crate) keeper: Option<LeaseKeeper>,
}

impl Registration {
    /// Keep `hosts/<node>` ours. Err (stop the agent) when another host holds the name.
    pub(crate) fn ensure(
        &mut self,
        client: &Client,
        node: &Node,
        value: &[u8],
        view: Option<&View>,
        me: IpAddr,
    ) -> Result<(), String> {
        let key = schema::host_key(&node.prefix, &node.name);
        if let Some(other) = view
            .and_then(|v| v.hosts.get(&node.name))
            .filter(|v| **v != me)
        {
            return Err(taken_message(
                &key,
                &node.name,
                node.source,
                Some(*other),
                me,
            ));
        }
        let lost = self.keeper.as_ref().is_none_or(|k| k.lost());
        let missing = view.is_some_and(|v| v.hosts.get(&node.name) != Some(&me));
        if !lost && !missing && view.is_some() {
            return Ok(());
        }
        let lease = match self.keeper.as_ref().filter(|_| !lost) {
            Some(k) => k.id(),
            None => match client.lease_grant(LEASE_TTL_S) {
                Ok(id) => {
                    self.keeper = Some(client.keep_alive(id, RENEW));
                    id
                }
                Err(e) if e.is_config() => return Err(format!("lease for {key}: {e}")),
                Err(e) => {
                    log::warn!("lease for {key}: {e}");
                    return Ok(());
                }
            },
        };
        match claim(client, &key, value, lease, me) {
            Ok(Claim::Ours) => {
                if lost || missing {
                    log::info!("registered {key} (vtep {me}, lease {lease:x})");
                }
                Ok(())
            }
            Ok(Claim::Taken(theirs)) => {
                Err(taken_message(&key, &node.name, node.source, theirs, me))
            }
            Err(e) if e.is_config() => Err(format!("register {key}: {e}")),
            Err(e) => {
                log::warn!("register {key}: {e}");
                Ok(())
            }
        }
    }

    pub(crate) fn revoke(&mut self, client: &Client) {
        if let Some(k) = self.keeper.take() {
            let id = k.id();
            drop(k);
            if let Err(e) = client.lease_revoke(id) {
                log::warn!("revoke lease {id:x}: {e}");
            }
        }
    }
}
