//! The plugin's etcd side: one read before any side effect (this node's identity and the
//! network's VNI), and `networks/<net>` written when this host's device for the network is
//! about to be created. Nothing per pod: the addresses are etcd-ipam's, and the agents route
//! blocks, not pods.

use std::net::IpAddr;

use etcd::{
    store::{gets, Store},
    Client, Compare, Op, OpResponse, TxnResponse,
};

use crate::{
    config::OverlaySpec,
    error::OverlayError,
    schema::{self, HostRecord, NetworkRecord, NodeName},
};

/// Where the records are: a client of the config's endpoints, or a store handed in.
enum Backend<'a> {
    Client(Client),
    Store(&'a dyn Store),
}

pub struct Cluster<'a> {
    backend: Backend<'a>,
    prefix: String,
}

impl<'a> Cluster<'a> {
    fn store(&self) -> &dyn Store {
        match &self.backend {
            Backend::Client(c) => c,
            Backend::Store(s) => *s,
        }
    }

    pub fn connect(spec: &OverlaySpec) -> Result<Self, OverlayError> {
        Ok(Self {
            backend: Backend::Client(Self::client(spec)?),
            prefix: spec.etcd_prefix.clone(),
        })
    }

    /// A client of the config's endpoints with its TLS keys (nothing contacted yet).
    pub fn client(spec: &OverlaySpec) -> Result<Client, cni_core::CniError> {
        if let Some((field, msg)) = &spec.etcd_tls_error {
            return Err(cni_core::CniError::config(field, msg));
        }
        let opts = etcd::Options {
            tls: spec.etcd_tls.clone(),
            ..etcd::Options::default()
        };
        Client::with_options(&spec.etcd_endpoints, opts)
            .map_err(|e| cni_core::CniError::config("ipam.etcdEndpoints", e))
    }

    /// Over a store the caller already has (keys under `prefix`).
    pub fn with_store(store: &'a dyn Store, prefix: &str) -> Self {
        Self {
            backend: Backend::Store(store),
            prefix: prefix.to_string(),
        }
    }

    /// The first etcd step of ADD, before any side effect, one read: `hosts/<node>` must not
    /// name another VTEP (two hosts sharing a node name would share blocks), and
    /// `networks/<network>` must not name another VNI. `extra` (read-only operations: the
    /// IPAM's first read) go into the same transaction. Returns the network's record, if any,
    /// and the answers to `extra` (a response of the same revision holding only theirs).
    ///
    /// A serializable read: the member answers from its own state, without the quorum round
    /// of a linearizable read (1.1 against 2.8 ms p50 and 1.4 against 31 ms p90 on the 3-host
    /// harness under load). What it may miss (a record written in the last milliseconds
    /// elsewhere) is caught by the writes: etcd-ipam's compares, `register_network`'s.
    pub fn preflight(
        &self,
        spec: &OverlaySpec,
        node: &NodeName,
        vtep: IpAddr,
        extra: &[Op],
    ) -> Result<(Option<NetworkRecord>, TxnResponse), OverlayError> {
        let host_key = schema::host_key(&self.prefix, &node.name);
        let net_key = schema::network_key(&self.prefix, &spec.network);
        let mut ops = vec![Op::get(&host_key), Op::get(&net_key)];
        ops.extend_from_slice(extra);
        let mut r = self
            .store()
            .read_serializable(&ops)
            .map_err(|e| OverlayError::etcd(format!("read {host_key} and {net_key}"), e))?;
        let rest = r.responses.split_off(2.min(r.responses.len()));
        let mut gets = r.responses.into_iter().filter_map(|op| match op {
            OpResponse::Get(kvs) => Some(kvs.into_iter().next()),
            _ => None,
        });
        if let Some(host) = gets.next().flatten() {
            check_identity(&host_key, &host.value, node, vtep)?;
        }
        let known = match gets.next().flatten() {
            Some(kv) => Some(check_vni(spec, &net_key, &kv.value)?),
            None => None,
        };
        let ahead = TxnResponse {
            responses: rest,
            ..r
        };
        Ok((known, ahead))
    }

    /// `networks/<network>`, put if absent (a record naming another VNI is a conflict).
    pub fn register_network(&self, spec: &OverlaySpec) -> Result<(), OverlayError> {
        let key = schema::network_key(&self.prefix, &spec.network);
        let rec = NetworkRecord {
            vni: spec.vni,
            subnets: spec.subnets.iter().map(|s| s.to_string()).collect(),
            internal: spec.internal,
        };
        let value = serde_json::to_vec(&rec)
            .map_err(|e| cni_core::CniError::new(cni_core::ErrorCode::Io, e.to_string()))?;
        let r = self
            .store()
            .txn(
                &[Compare::absent(&key)],
                &[Op::put(&key, &value, None)],
                &[Op::get(&key)],
            )
            .map_err(|e| OverlayError::etcd(format!("register {key}"), e))?;
        match gets(&r).first().and_then(|k| k.first()) {
            Some(kv) if !r.succeeded => check_vni(spec, &key, &kv.value).map(drop),
            _ => Ok(()),
        }
    }

    /// `hosts/<node>` must be absent or name `vtep` (GC's guard, like ADD's).
    pub fn check_node(&self, node: &NodeName, vtep: IpAddr) -> Result<(), OverlayError> {
        let key = schema::host_key(&self.prefix, &node.name);
        let r = self
            .store()
            .txn(&[], &[Op::get(&key)], &[])
            .map_err(|e| OverlayError::etcd(format!("get {key}"), e))?;
        match gets(&r).first().and_then(|k| k.first()) {
            Some(kv) => check_identity(&key, &kv.value, node, vtep),
            None => Ok(()),
        }
    }
}

/// [`OverlayError::NodeTaken`] when `hosts/<node>` (its value `value`) names another VTEP.
fn check_identity(
    key: &str,
    value: &[u8],
    node: &NodeName,
    vtep: IpAddr,
) -> Result<(), OverlayError> {
    match serde_json::from_slice::<HostRecord>(value) {
        Ok(h) if h.vtep != vtep => Err(OverlayError::NodeTaken {
            node: node.name.clone(),
            source_of: node.source,
            key: key.to_string(),
            theirs: h.vtep,
            ours: vtep,
        }),
        _ => Ok(()),
    }
}

/// A network registered with another VNI is a conflict: two overlays of one name on different
/// VNIs would never meet. An unreadable record is not this plugin's to judge.
fn check_vni(spec: &OverlaySpec, key: &str, value: &[u8]) -> Result<NetworkRecord, OverlayError> {
    match serde_json::from_slice::<NetworkRecord>(value) {
        Ok(have) if have.vni != spec.vni => Err(OverlayError::VniConflict {
            network: spec.network.clone(),
            key: key.to_string(),
            have: have.vni,
            want: spec.vni,
        }),
        Ok(have) => Ok(have),
        Err(_) => Ok(NetworkRecord {
            vni: spec.vni,
            subnets: Vec::new(),
            internal: spec.internal,
        }),
    }
}
