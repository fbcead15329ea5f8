//! What the verbs are handed instead of building it inside: the node's name, the host side
//! ([`HostSide`]: the kernel and the firewall), the IPAM ([`Ipam`]) and, optionally, an etcd
//! client. The plugin runs with [`KernelHost`](crate::kernel::KernelHost) and
//! [`DelegateIpam`] ([`Ctx::real`]); unit tests and the scale harness (`bench/scale`) run the
//! same ADD/DEL with fakes of both, so the orchestration, the plan and the etcd side are the
//! real code.

use bridge_plugin::{
    config::BridgeSpec,
    plan::{Ids, Observed, Plan},
};
use cni_core::{CniError, CniResult, Command, Request};
use netops::Op;

use crate::{
    config::OverlaySpec,
    error::OverlayError,
    plan::{HostView, Underlay},
};

/// A held per-network lock of this host; released when dropped.
pub struct NetLock(pub Option<Box<dyn std::any::Any>>);

/// The host side of an overlay network: the kernel (host and pod) and the firewall table.
pub trait HostSide {
    /// The underlay interface and this host's VTEP on it: its first IPv4 address, or its first
    /// global IPv6 address when it has no IPv4 one.
    fn underlay(&self, spec: &OverlaySpec) -> Result<Underlay, OverlayError>;
    /// The network's lock on this host: shared for an ADD whose network device exists,
    /// exclusive for the ADD that creates it and for the teardown after the last pod.
    fn lock(&self, spec: &OverlaySpec, exclusive: bool) -> Result<NetLock, OverlayError>;
    /// What the plan depends on: the bridge and the pod (as the bridge plugin reads them) and
    /// the network's VXLAN device.
    fn read(
        &self,
        spec: &OverlaySpec,
        bspec: &BridgeSpec,
        ids: &Ids,
    ) -> Result<HostView, OverlayError>;
    /// Run the plan's steps, undoing the completed ones when one fails; what the result
    /// reports.
    fn apply(&self, plan: &Plan) -> Result<Observed, OverlayError>;
    /// The pod's side gone: its veth retired, its firewall elements dropped (with an internal
    /// network's last attachment, the bridge's seal). Goes on past failures.
    fn detach(&self, req: &Request, spec: &OverlaySpec) -> Vec<OverlayError>;
    /// Does any pod of the network remain on this host?
    fn in_use(&self, spec: &OverlaySpec) -> Result<bool, OverlayError>;
    /// Run `ops` (the network's teardown), each one's "already gone" counting as done. Goes on
    /// past failures.
    fn teardown(&self, ops: &[Op]) -> Vec<OverlayError>;
    /// CHECK of the host and the pod against what ADD left.
    fn check(
        &self,
        req: &Request,
        spec: &OverlaySpec,
        bspec: &BridgeSpec,
        prev: &CniResult,
        ul: &Underlay,
    ) -> Result<(), OverlayError>;
    /// GC of the host side: links a DEL retired, firewall records of attachments not in the
    /// runtime's list.
    fn gc(&self, req: &Request, spec: &OverlaySpec) -> Vec<OverlayError>;
}

/// The IPAM of the network (etcd-ipam).
pub trait Ipam {
    fn run(&self, req: &Request, cmd: Command) -> Result<Option<CniResult>, CniError>;
    /// The etcd reads the IPAM's ADD of `req` starts with, for the overlay to fold into its
    /// own read before any side effect (none by default: the IPAM reads for itself).
    fn add_reads(&self, _req: &Request) -> Result<Vec<etcd::Op>, CniError> {
        Ok(Vec::new())
    }
    /// ADD, starting from this node's blocks as the overlay read them (the answers to
    /// [`Self::add_reads`], or the agent's file) instead of reading again; by default the
    /// IPAM's own ADD.
    fn add(
        &self,
        req: &Request,
        _ahead: Option<etcd_ipam::Ahead>,
    ) -> Result<Option<CniResult>, CniError> {
        self.run(req, Command::Add)
    }
}

/// The IPAM plugin named by the config, run as the runtime would (`CNI_PATH`).
#[derive(Default)]
pub struct DelegateIpam;

impl Ipam for DelegateIpam {
    fn run(&self, req: &Request, cmd: Command) -> Result<Option<CniResult>, CniError> {
        req.delegate_ipam(cmd)
    }
}

/// etcd-ipam run in this process over the overlay's own etcd client: ADD opens one
/// connection (one TLS handshake) instead of two and starts no second process. The overlay
/// takes no IPAM but etcd-ipam (config::parse), so nothing a user could swap is bypassed; any
/// other `ipam.type` is delegated as a runtime would.
///
/// Its ADD's first read (this node's blocks) is folded into the overlay's preflight read
/// ([`Ipam::add_reads`]), or taken from the agent's file when the overlay did ([`Ctx::agent`]):
/// an ADD in a block the node holds makes no etcd call of its own.
pub struct SharedEtcdIpam<'a> {
    pub store: &'a dyn etcd::store::Store,
    pub ipam: etcd_ipam::EtcdIpam,
}

impl<'a> SharedEtcdIpam<'a> {
    pub fn new(store: &'a dyn etcd::store::Store, ipam: etcd_ipam::EtcdIpam) -> Self {
        Self { store, ipam }
    }

    fn is_etcd_ipam(req: &Request) -> bool {
        req.conf
            .ipam
            .as_ref()
            .is_some_and(|i| i.plugin_type == "etcd-ipam")
    }
}

impl Ipam for SharedEtcdIpam<'_> {
    fn run(&self, req: &Request, cmd: Command) -> Result<Option<CniResult>, CniError> {
        match cmd {
            Command::Add | Command::Del | Command::Check if Self::is_etcd_ipam(req) => {
                self.ipam.run_with(req, cmd, self.store, None)
            }
            _ => req.delegate_ipam(cmd),
        }
    }

    fn add_reads(&self, req: &Request) -> Result<Vec<etcd::Op>, CniError> {
        match Self::is_etcd_ipam(req) {
            true => self.ipam.add_reads(req),
            false => Ok(Vec::new()),
        }
    }

    fn add(
        &self,
        req: &Request,
        ahead: Option<etcd_ipam::Ahead>,
    ) -> Result<Option<CniResult>, CniError> {
        match Self::is_etcd_ipam(req) {
            true => self
                .ipam
                .run_with(req, Command::Add, self.store, ahead.as_ref()),
            false => req.delegate_ipam(Command::Add),
        }
    }
}

/// One verb's context.
pub struct Ctx<'a> {
    /// This node's name (`hosts/<node>`, its blocks) and where it came from.
    pub node: crate::schema::NodeName,
    pub host: &'a dyn HostSide,
    pub ipam: &'a dyn Ipam,
    /// `Some`: this store (a client, or a fake; the config's prefix still applies); `None`:
    /// connect to the config's `etcdEndpoints`.
    pub etcd: Option<&'a dyn etcd::store::Store>,
    /// Where this host's agent keeps its file ([`cluster::node_state`]): `$CNIRS_RUN_DIR`'s
    /// `cluster/` tree; `None`: always read etcd (the scale harness's simulated hosts).
    pub agent: Option<std::path::PathBuf>,
}

impl<'a> Ctx<'a> {
    /// The plugin's own: the node name from `$CNIRS_NODE_NAME` or the hostname, a client per
    /// call from the config.
    pub fn real(host: &'a dyn HostSide, ipam: &'a dyn Ipam) -> Self {
        Ctx {
            node: crate::schema::node(),
            host,
            ipam,
            etcd: None,
            agent: Some(::cluster::node_state::run_root()),
        }
    }
}
