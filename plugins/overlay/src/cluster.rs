//! The plugin's etcd side: register the network and the pod on ADD, remove the pod on DEL, drop
//! this node's pods that GC does not list.

use std::net::{IpAddr, Ipv4Addr};

use cni_core::{CniError, ErrorCode};
use etcd::{Client, Compare, CompareOp, Created, EtcdError, Op, OpResponse};

use crate::{
    config::OverlaySpec,
    schema::{self, HostRecord, NetworkRecord, PodRecord},
};

fn etcd_err(what: &str, e: EtcdError) -> CniError {
    if e.is_config() {
        // TLS at first contact: the CA does not verify the member, or our certificate was
        // refused or is missing. The config's fault: code 7 naming the key.
        let field = e.tls_file().map_or_else(
            || "ipam.etcdEndpoints".to_string(),
            |f| format!("ipam.{}", f.conf_key()),
        );
        return CniError::config(&field, format!("etcd: {what}: {e}"));
    }
    let code = match e {
        EtcdError::Unavailable { .. } => ErrorCode::TryAgainLater,
        _ => ErrorCode::Io,
    };
    CniError::new(code, format!("etcd: {what}: {e}"))
}

/// Code 7 when `hosts/<node>` (its value `value`) names another VTEP than `vtep`.
fn check_identity(
    key: &str,
    value: &[u8],
    node: &crate::schema::NodeName,
    vtep: Ipv4Addr,
) -> Result<(), CniError> {
    match serde_json::from_slice::<HostRecord>(value) {
        Ok(h) if h.vtep != vtep => Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "node name {:?} ({}) is registered in etcd ({key}) by another host, VTEP {}; \
                 this host's VTEP is {vtep}: two hosts share one node name. Give each host its \
                 own (CNIRS_NODE_NAME for the plugins, the same for the agent's --node-name)",
                node.name, node.source, h.vtep
            ),
        )),
        _ => Ok(()),
    }
}

pub struct Cluster {
    client: Client,
    prefix: String,
}

impl Cluster {
    pub fn connect(spec: &OverlaySpec) -> Result<Self, CniError> {
        if let Some((field, msg)) = &spec.etcd_tls_error {
            return Err(CniError::config(field, msg));
        }
        let opts = etcd::Options {
            tls: spec.etcd_tls.clone(),
            ..etcd::Options::default()
        };
        let client = Client::with_options(&spec.etcd_endpoints, opts)
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

    /// The first etcd step of ADD, before any side effect: `hosts/<node>` must not name
    /// another VTEP (two hosts sharing a node name would record pods, and delete them, under
    /// each other's name), and `networks/<network>` must not name another VNI. One read
    /// (a txn) in the usual case; the network is then created if absent.
    pub fn preflight(
        &self,
        spec: &OverlaySpec,
        node: &crate::schema::NodeName,
        vtep: Ipv4Addr,
        subnets: Vec<String>,
    ) -> Result<(), CniError> {
        let host_key = schema::host_key(&self.prefix, &node.name);
        let net_key = schema::network_key(&self.prefix, &spec.network);
        let r = self
            .client
            .txn(
                &[Compare::absent(&net_key)],
                &[Op::get(&host_key)],
                &[Op::get(&host_key), Op::get(&net_key)],
            )
            .map_err(|e| etcd_err(&format!("read {host_key} and {net_key}"), e))?;
        let mut gets = r.responses.into_iter().filter_map(|op| match op {
            OpResponse::Get(kvs) => Some(kvs.into_iter().next()),
            _ => None,
        });
        if let Some(host) = gets.next().flatten() {
            check_identity(&host_key, &host.value, node, vtep)?;
        }
        match gets.next().flatten() {
            Some(kv) => self.check_vni(spec, &net_key, &kv.value),
            None => self.register_network(spec, &net_key, subnets),
        }
    }

    /// `networks/<network>`, put if absent.
    fn register_network(
        &self,
        spec: &OverlaySpec,
        key: &str,
        subnets: Vec<String>,
    ) -> Result<(), CniError> {
        let rec = NetworkRecord {
            vni: spec.vni,
            subnets,
            internal: spec.internal,
        };
        let value =
            serde_json::to_vec(&rec).map_err(|e| CniError::new(ErrorCode::Io, e.to_string()))?;
        match self
            .client
            .create_or_get(key, &value, None)
            .map_err(|e| etcd_err(&format!("register {key}"), e))?
        {
            Created::Created { .. } => Ok(()),
            Created::Exists(kv) => self.check_vni(spec, key, &kv.value),
        }
    }

    /// A network registered with another VNI is a conflict: two overlays of one name on
    /// different VNIs would never meet.
    fn check_vni(&self, spec: &OverlaySpec, key: &str, value: &[u8]) -> Result<(), CniError> {
        match serde_json::from_slice::<NetworkRecord>(value) {
            Ok(have) if have.vni != spec.vni => Err(CniError::new(
                ErrorCode::Conflict,
                format!(
                    "network {} is VNI {} in the cluster ({key}), this config says {}",
                    spec.network, have.vni, spec.vni
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `hosts/<node>` must be absent or name `vtep` (GC's guard, like ADD's).
    pub fn check_node(
        &self,
        node: &crate::schema::NodeName,
        vtep: Ipv4Addr,
    ) -> Result<(), CniError> {
        let key = schema::host_key(&self.prefix, &node.name);
        match self
            .client
            .get(&key)
            .map_err(|e| etcd_err(&format!("get {key}"), e))?
        {
            Some(kv) => check_identity(&key, &kv.value, node, vtep),
            None => Ok(()),
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
