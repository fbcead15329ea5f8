//! What the verbs are handed instead of building it inside: the node's name, the host's kernel
//! steps ([`HostSide`]), the bridge attachment ([`Attachment`]) and, optionally, an etcd client.
//! The plugin runs with [`KernelHost`] + [`BridgeAttachment`] ([`Ctx::real`]); the scale
//! harness (`bench/scale`) runs the same ADD/DEL with fakes of both, so etcd-ipam's allocation
//! and the network/pod registration are the real code against a real etcd.

use std::{cell::OnceCell, net::Ipv4Addr};

use cni_core::{CniError, CniResult, Request};
use netops::Kernel;

use crate::{
    bridge_seam,
    config::OverlaySpec,
    dataplane::{self, Underlay},
    error::OverlayError,
};

/// The host-side kernel steps of an overlay network (not the pod's: those are the
/// attachment's).
pub trait HostSide {
    /// The underlay interface and this host's VTEP address ([`dataplane::underlay`]).
    fn underlay(&self, spec: &OverlaySpec) -> Result<Underlay, OverlayError>;
    /// The network's bridge and VXLAN device; flood entries from `remote_vteps` when the device
    /// is new ([`dataplane::ensure`]).
    fn ensure(
        &self,
        spec: &OverlaySpec,
        ul: &Underlay,
        mtu: u32,
        remote_vteps: &mut dyn FnMut() -> Result<Vec<Ipv4Addr>, CniError>,
    ) -> Result<(), OverlayError>;
    /// CHECK of the network's devices ([`dataplane::check`]).
    fn check(&self, spec: &OverlaySpec) -> Result<(), OverlayError>;
}

/// The bridge attachment: veth, addresses, routes, firewall, IPAM delegation, rollback.
pub trait Attachment {
    fn add(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError>;
    fn check(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError>;
    fn gc(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError>;
    fn status(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError>;
}

/// One verb's context.
pub struct Ctx<'a> {
    /// This node's name (`hosts/<node>`, the pod records' `node`).
    pub node: String,
    pub host: &'a dyn HostSide,
    pub attachment: &'a dyn Attachment,
    /// `Some`: this client (the config's prefix still applies); `None`: connect to the config's
    /// `etcdEndpoints`.
    pub etcd: Option<&'a etcd::Client>,
}

impl<'a> Ctx<'a> {
    /// The plugin's own: the node name from `$CNIRS_NODE_NAME` or the hostname, a client per
    /// call from the config.
    pub fn real(host: &'a KernelHost, attachment: &'a BridgeAttachment) -> Self {
        Ctx {
            node: crate::schema::node_name(),
            host,
            attachment,
            etcd: None,
        }
    }
}

/// The host's kernel over netlink; the connection is opened at the first step that needs it
/// (DEL needs none).
#[derive(Default)]
pub struct KernelHost {
    kernel: OnceCell<Kernel>,
}

impl KernelHost {
    fn kernel(&self) -> Result<&Kernel, OverlayError> {
        if let Some(k) = self.kernel.get() {
            return Ok(k);
        }
        let k = Kernel::new()?;
        Ok(self.kernel.get_or_init(|| k))
    }
}

impl HostSide for KernelHost {
    fn underlay(&self, spec: &OverlaySpec) -> Result<Underlay, OverlayError> {
        dataplane::underlay(&self.kernel()?.host(), spec)
    }

    fn ensure(
        &self,
        spec: &OverlaySpec,
        ul: &Underlay,
        mtu: u32,
        remote_vteps: &mut dyn FnMut() -> Result<Vec<Ipv4Addr>, CniError>,
    ) -> Result<(), OverlayError> {
        dataplane::ensure(&self.kernel()?.host(), spec, ul, mtu, remote_vteps)
    }

    fn check(&self, spec: &OverlaySpec) -> Result<(), OverlayError> {
        dataplane::check(&self.kernel()?.host(), spec)
    }
}

/// The bridge plugin's attachment ([`bridge_seam`]).
#[derive(Default)]
pub struct BridgeAttachment;

impl Attachment for BridgeAttachment {
    fn add(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<CniResult, CniError> {
        bridge_seam::add(req, stdin, internal)
    }

    fn del(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
        bridge_seam::del(req, stdin, internal)
    }

    fn check(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
        bridge_seam::check(req, stdin, internal)
    }

    fn gc(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
        bridge_seam::gc(req, stdin, internal)
    }

    fn status(&self, req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
        bridge_seam::status(req, stdin, internal)
    }
}
