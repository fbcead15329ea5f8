//! The plugin's etcd side: register the network and the pod on ADD, remove the pod on DEL, drop
//! this node's pods that GC does not list.

use std::net::{IpAddr, Ipv4Addr};

use cni_core::{CniError, ErrorCode};
use etcd::{Client, Compare, CompareOp, Created, EtcdError, Op};

use crate::{
    config::OverlaySpec,
    schema::{self, HostRecord, NetworkRecord, PodRecord},
};

fn etcd_err(what: &str, e: EtcdError) -> CniError {
    let code = match e {
        EtcdError::Unavailable { .. } => ErrorCode::TryAgainLater,
        _ => ErrorCode::Io,
    };
    CniError::new(code, format!("etcd: {what}: {e}"))
}

pub struct Cluster {
    client: Client,
    prefix: String,
}

impl Cluster {
    pub fn connect(spec: &OverlaySpec) -> Result<Self, CniError> {
        let client = Client::new(&spec.etcd_endpoints)
            .map_err(|e| CniError::config("ipam.etcdEndpoints", e))?;
        Ok(Self {
            client,
            prefix: spec.etcd_prefix.clone(),
        })
    }

    /// Over a client the caller already has (keys under `prefix`).
    pub fn with_client(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
        }
    }

    /// `networks/<network>`, put if absent. A network registered with another VNI is a
    /// conflict: two overlays of one name on different VNIs would never meet.
    pub fn register_network(
        &self,
        spec: &OverlaySpec,
        subnets: Vec<String>,
    ) -> Result<(), CniError> {
        let rec = NetworkRecord {
            vni: spec.vni,
            subnets,
            internal: spec.internal,
        };
        let key = schema::network_key(&self.prefix, &spec.network);
        let value =
            serde_json::to_vec(&rec).map_err(|e| CniError::new(ErrorCode::Io, e.to_string()))?;
        match self
            .client
            .create_or_get(&key, &value, None)
            .map_err(|e| etcd_err(&format!("register {key}"), e))?
        {
            Created::Created { .. } => Ok(()),
            Created::Exists(kv) => match serde_json::from_slice::<NetworkRecord>(&kv.value) {
                Ok(have) if have.vni != spec.vni => Err(CniError::new(
                    ErrorCode::Conflict,
                    format!(
                        "network {} is VNI {} in the cluster ({key}), this config says {}",
                        spec.network, have.vni, spec.vni
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    /// VTEPs of every registered host but `me`.
    pub fn remote_vteps(&self, me: Ipv4Addr) -> Result<Vec<Ipv4Addr>, CniError> {
        let p = schema::hosts_prefix(&self.prefix);
        let (kvs, _) = self
            .client
            .range_prefix(&p)
            .map_err(|e| etcd_err(&format!("list {p}"), e))?;
        let mut out: Vec<Ipv4Addr> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<HostRecord>(&kv.value).ok())
            .map(|h| h.vtep)
            .filter(|v| *v != me)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// `pods/<network>/<ip>` for each address of the pod.
    pub fn register_pod(
        &self,
        network: &str,
        ips: &[IpAddr],
        rec: &PodRecord,
    ) -> Result<(), CniError> {
        let value =
            serde_json::to_vec(rec).map_err(|e| CniError::new(ErrorCode::Io, e.to_string()))?;
        let ops: Vec<Op> = ips
            .iter()
            .map(|ip| Op::put(schema::pod_key(&self.prefix, network, ip), &value, None))
            .collect();
        self.client
            .txn(&[], &ops, &[])
            .map_err(|e| etcd_err(&format!("register pod of {network}"), e))?;
        Ok(())
    }

    /// Delete this node's `pods/<network>/*` records for which `gone` says so, each only if it
    /// is unchanged since it was read (a new pod given the same address keeps its record).
    pub fn remove_pods(
        &self,
        network: &str,
        node: &str,
        gone: impl Fn(&PodRecord) -> bool,
    ) -> Result<usize, CniError> {
        let p = schema::pods_prefix(&self.prefix, network);
        let (kvs, _) = self
            .client
            .range_prefix(&p)
            .map_err(|e| etcd_err(&format!("list {p}"), e))?;
        let mut n = 0;
        for kv in kvs {
            let Ok(rec) = serde_json::from_slice::<PodRecord>(&kv.value) else {
                continue;
            };
            if rec.node != node || !gone(&rec) {
                continue;
            }
            self.client
                .txn(
                    &[Compare::mod_revision(
                        &kv.key,
                        CompareOp::Equal,
                        kv.mod_revision,
                    )],
                    &[Op::delete(&kv.key)],
                    &[],
                )
                .map_err(|e| etcd_err(&format!("delete {}", kv.key_str()), e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Which of `ips` have a record naming this attachment.
    pub fn pod_registered(
        &self,
        network: &str,
        ip: &IpAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, CniError> {
        let key = schema::pod_key(&self.prefix, network, ip);
        let kv = self
            .client
            .get(&key)
            .map_err(|e| etcd_err(&format!("get {key}"), e))?;
        Ok(kv
            .and_then(|kv| serde_json::from_slice::<PodRecord>(&kv.value).ok())
            .is_some_and(|r| r.container_id == container_id && r.ifname == ifname))
    }
}
