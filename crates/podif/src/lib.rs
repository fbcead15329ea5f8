//! The shared half of the plugins that give a pod one interface of their own kind (`ptp`,
//! `macvlan`, `host-device`, `tap`), so each plugin is its config, its plan and little else.
//!
//! - [`step`]: kernel steps as values ([`Step`]: netops' [`netops::Op`]s plus macvlan, TAP,
//!   moving a link, addresses without prefix route, routes with a source, pod sysctls, state
//!   files), each printed as the command it matches, with its inverse; [`Effects`] runs them.
//! - [`iface`]: the IPAM half (the reference's `ipam.ConfigureIface`): the steps that put
//!   IPAM's addresses and routes on the pod interface, the result, the CHECK of what a result
//!   says against the kernel, and the common DEL.
//! - [`LinkError`]: the plugins' error, mapped to CNI codes once.
//!
//! Every plugin's ADD is: parse and validate -> read the kernel -> IPAM -> plan (pure) ->
//! [`run`] (apply with undo; IPAM DEL when anything after IPAM fails) -> result.

pub mod iface;
pub mod step;

use cni_core::{error::from_lower, CniError, ErrorCode, Request};
use netops::NetopsError;

pub use step::{restore_host, Effects, HostState, Step};

/// The error of the interface plugins: every failure keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] NetopsError),
    #[error("{source}")]
    Step {
        step: usize,
        command: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("{0}")]
    Check(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<LinkError> for CniError {
    fn from(e: LinkError) -> CniError {
        match e {
            LinkError::Cni(c) => c,
            LinkError::Kernel(k) => from_lower(&k),
            LinkError::Check(m) => CniError::new(ErrorCode::CheckFailed, m),
            LinkError::Conflict(m) => CniError::new(ErrorCode::Conflict, m),
            LinkError::Config(m) => CniError::new(ErrorCode::InvalidConfig, m),
            LinkError::Io { what, source } => CniError::io(what, &source),
            LinkError::Step {
                step,
                command,
                source,
            } => CniError::from(*source).at_step(step, &command),
        }
    }
}

/// Apply `steps` with an undo of every completed one; on a failure, undo and (when `ipam`
/// ran) release the address before answering with the step's error. On success, the undo of
/// the whole plan, for a later step of the plugin's own that fails ([`rollback`]).
pub fn run(
    req: &Request,
    steps: &[Step],
    fx: &mut Effects<'_, '_>,
    ipam_ran: bool,
) -> Result<netops::Undo<Step>, LinkError> {
    let ns_label = req
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    log::debug!(
        "{}: plan:\n{}",
        req.tag(),
        steps
            .iter()
            .map(|s| s.command(&ns_label))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let res = netops::apply(steps, fx).map_err(|f| {
        for u in &f.undo_errors {
            log::warn!("{}: rollback: {u}", req.tag());
        }
        LinkError::Step {
            step: f.step + 1,
            command: f.op.command(&ns_label),
            source: Box::new(f.error),
        }
    });
    if res.is_err() && ipam_ran {
        release_ipam(req);
    }
    res
}

/// Undo a plan [`run`] completed (a later step failed), then release the address.
pub fn rollback(req: &Request, undo: netops::Undo<Step>, fx: &mut Effects<'_, '_>, ipam_ran: bool) {
    for e in netops::rollback(undo, fx) {
        log::warn!("{}: rollback: {e}", req.tag());
    }
    if ipam_ran {
        release_ipam(req);
    }
}

/// ADD in the reference's order for a plugin whose IPAM may need the interface to exist (the
/// dhcp daemon runs its client on it, in the pod): the `link` steps, then IPAM (when `l3`),
/// then the steps `configure` builds from IPAM's answer. A failure anywhere undoes every step
/// taken and releases the address. Returns IPAM's result (empty without `l3`) and the undo of
/// both phases, oldest first, for [`rollback`].
pub fn link_then_ipam(
    req: &Request,
    fx: &mut Effects<'_, '_>,
    link: &[Step],
    l3: bool,
    configure: impl FnOnce(&cni_core::CniResult) -> Result<Vec<Step>, LinkError>,
) -> Result<(cni_core::CniResult, netops::Undo<Step>), LinkError> {
    let mut undo = run(req, link, fx, false)?;
    let ipam = if l3 {
        match iface::ipam_add(req) {
            Ok(r) => r,
            Err(e) => {
                rollback(req, undo, fx, false);
                return Err(e);
            }
        }
    } else {
        cni_core::CniResult::default()
    };
    match configure(&ipam).and_then(|steps| run(req, &steps, fx, false)) {
        Ok(more) => {
            undo.0.extend(more.0);
            Ok((ipam, undo))
        }
        Err(e) => {
            rollback(req, undo, fx, l3);
            Err(e)
        }
    }
}

/// What a verb of an interface plugin opens in the kernel: the pod's netns (`CNI_NETNS`) and
/// one netlink connection, which gives the host's and the pod's handles.
pub struct PodKernel {
    pub netns: std::path::PathBuf,
    pub ns: netops::NetNs,
    kernel: netops::Kernel,
}

impl PodKernel {
    /// Open the pod's netns, then the connection.
    pub fn open(req: &Request) -> Result<Self, LinkError> {
        let netns = req.netns()?.clone();
        let ns = netops::NetNs::open(&netns)?;
        let kernel = netops::Kernel::new()?;
        Ok(Self { netns, ns, kernel })
    }

    /// The host's netns.
    pub fn host(&self) -> netops::Netlink<'_> {
        self.kernel.host()
    }

    /// The pod's netns.
    pub fn pod(&self) -> Result<netops::Netlink<'_>, LinkError> {
        Ok(self.kernel.pod(&self.ns)?)
    }
}

/// CHECK's start for an interface plugin: IPAM's CHECK when it has IPAM (`l3`), then the
/// previous result, then the kernel.
pub fn check_start(req: &Request, l3: bool) -> Result<(cni_core::CniResult, PodKernel), LinkError> {
    if l3 {
        req.delegate_ipam(cni_core::Command::Check)?;
    }
    let prev = req.require_prev_result()?;
    Ok((prev, PodKernel::open(req)?))
}

/// ADD's refusal of a name the pod already uses.
pub fn refuse_taken(
    pod: &netops::Netlink<'_>,
    ifname: &netops::IfName,
    netns: &std::path::Path,
) -> Result<(), LinkError> {
    match pod.link(ifname)? {
        Some(_) => Err(LinkError::Conflict(format!(
            "interface {ifname} already exists in {}",
            netns.display()
        ))),
        None => Ok(()),
    }
}

/// What ADD of a plugin whose one interface is the pod's `CNI_IFNAME` plans against: the
/// request, both netns, the pod's netns path and the interface's name.
pub struct LinkCtx<'a, 'k> {
    pub req: &'a Request,
    pub host: &'a netops::Netlink<'k>,
    pub pod: &'a netops::Netlink<'k>,
    pub netns: &'a std::path::Path,
    pub ifname: &'a netops::IfName,
}

impl LinkCtx<'_, '_> {
    /// [`refuse_taken`] for this pod and name.
    pub fn refuse_taken(&self) -> Result<(), LinkError> {
        refuse_taken(self.pod, self.ifname, self.netns)
    }
}

/// The validated config of a plugin whose one interface is the pod's `CNI_IFNAME` (macvlan,
/// tap, host-device): how ADD ([`add_pod_link`]) plans that interface.
pub trait PodLink {
    /// The steps before IPAM, from the kernel as `cx` reads it. Refuses a name the pod
    /// already uses ([`LinkCtx::refuse_taken`]) where the plugin's own checks put it.
    fn plan_in(&self, cx: &LinkCtx<'_, '_>) -> Result<Vec<Step>, LinkError>;

    /// The steps after IPAM, from its answer: (`l3`, the config names an IPAM plugin) its
    /// addresses and routes, or (L2) the link up.
    fn plan_config(
        &self,
        l3: bool,
        ifname: &netops::IfName,
        ipam: &cni_core::CniResult,
    ) -> Result<Vec<Step>, LinkError> {
        iface::configure_or_up(l3, ifname, ipam)
    }
}

/// ADD of a plugin whose one interface is the pod's `CNI_IFNAME`: the pod's netns and the
/// kernel opened, [`PodLink::plan_in`]'s steps, IPAM and [`PodLink::plan_config`]'s steps
/// ([`link_then_ipam`]), then the result naming that interface with IPAM's addresses and the
/// config's DNS. When the interface cannot be read back, every step is undone and the address
/// released.
pub fn add_pod_link(req: &Request, spec: &impl PodLink) -> Result<cni_core::CniResult, LinkError> {
    let ifname = netops::IfName::new(&req.ifname).map_err(NetopsError::from)?;
    let k = PodKernel::open(req)?;
    let (host, pod) = (k.host(), k.pod()?);
    let link = spec.plan_in(&LinkCtx {
        req,
        host: &host,
        pod: &pod,
        netns: &k.netns,
        ifname: &ifname,
    })?;
    let mut fx = Effects::new(&host, &pod, &k.ns);
    let l3 = has_ipam(req);
    let (ipam, undo) = link_then_ipam(req, &mut fx, &link, l3, |ipam| {
        spec.plan_config(l3, &ifname, ipam)
    })?;
    let read = pod
        .require_link(&ifname)
        .map_err(LinkError::from)
        .and_then(|l| {
            let sandbox = req.netns()?.display().to_string();
            Ok(iface::pod_interface(&l, &sandbox))
        });
    match read {
        Ok(i) => Ok(iface::result(
            vec![i],
            0,
            &ipam,
            req.conf.dns.clone().unwrap_or_default(),
        )),
        Err(e) => {
            rollback(req, undo, &mut fx, l3);
            Err(e)
        }
    }
}

/// The `Plugin` impl of an interface plugin from its crate's `add` and `check` (returning
/// [`LinkError`]) and the given `del`; GC and STATUS go to IPAM when the config names one,
/// unless given too. `known_args` or `any_args` as the plugin accepts `CNI_ARGS`.
#[macro_export]
macro_rules! link_plugin {
    (@args known_args $v:expr) => {
        fn known_args(&self) -> &'static [&'static str] {
            $v
        }
    };
    (@args any_args $v:expr) => {
        fn any_args(&self) -> bool {
            $v
        }
    };
    ($ty:ty, $name:literal, $args:ident = $v:expr, del = $del:expr) => {
        $crate::link_plugin!(
            $ty,
            $name,
            $args = $v,
            del = $del,
            gc = |r| $crate::delegate_ipam_if_any(r, ::cni_core::Command::Gc),
            status = |r| $crate::delegate_ipam_if_any(r, ::cni_core::Command::Status)
        );
    };
    ($ty:ty, $name:literal, $args:ident = $v:expr, del = $del:expr, gc = $gc:expr, status = $status:expr) => {
        impl ::cni_core::Plugin for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            $crate::link_plugin!(@args $args $v);

            fn add(
                &self,
                req: &::cni_core::Request,
            ) -> Result<::cni_core::CniResult, ::cni_core::CniError> {
                Ok(add(req)?)
            }

            fn del(&self, req: &::cni_core::Request) -> Result<(), ::cni_core::CniError> {
                let del: fn(&::cni_core::Request) -> Result<(), ::cni_core::CniError> = $del;
                del(req)
            }

            fn check(&self, req: &::cni_core::Request) -> Result<(), ::cni_core::CniError> {
                Ok(check(req)?)
            }

            fn gc(&self, req: &::cni_core::Request) -> Result<(), ::cni_core::CniError> {
                let gc: fn(&::cni_core::Request) -> Result<(), ::cni_core::CniError> = $gc;
                gc(req)
            }

            fn status(&self, req: &::cni_core::Request) -> Result<(), ::cni_core::CniError> {
                let status: fn(&::cni_core::Request) -> Result<(), ::cni_core::CniError> =
                    $status;
                status(req)
            }
        }
    };
}

/// A deterministic host-side veth name from (network, container id, ifname): `veth` + 11 hex
/// digits of their FNV-1a hash, so DEL finds it without the netns or a previous result (the
/// bridge plugin's rule).
pub fn host_veth_name(
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<netops::IfName, LinkError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(
        netops::IfName::new(&format!("veth{:011x}", h & 0xfff_ffff_ffff))
            .map_err(NetopsError::from)?,
    )
}

/// IPAM DEL after a failed ADD (logged, never replacing the ADD's error).
pub fn release_ipam(req: &Request) {
    if let Err(e) = req.delegate_ipam(cni_core::Command::Del) {
        log::warn!(
            "{}: releasing the address after a failed ADD: {e}",
            req.tag()
        );
    }
}

/// True when the config names an IPAM plugin (`ipam.type`): the plugins are L2-only without.
pub fn has_ipam(req: &Request) -> bool {
    req.conf
        .ipam
        .as_ref()
        .is_some_and(|i| !i.plugin_type.is_empty())
}

/// `cmd` (GC, STATUS, DEL) passed to the IPAM plugin when the config names one; nothing
/// otherwise (an L2-only attachment holds no address).
pub fn delegate_ipam_if_any(req: &Request, cmd: cni_core::Command) -> Result<(), CniError> {
    if has_ipam(req) {
        req.delegate_ipam(cmd)?;
    }
    Ok(())
}

/// `runtimeConfig` of a plugin whose one capability is `mac` (macvlan, tap).
#[derive(Debug, Default, serde::Deserialize)]
pub struct MacRuntimeConfig {
    pub mac: Option<String>,
}

/// The MAC a runtime or the config asks for, with the reference's precedence: the config's
/// `mac`, overridden by `CNI_ARGS` `MAC`, overridden by `runtimeConfig.mac`. Multicast
/// addresses are refused.
pub fn requested_mac(
    req: &Request,
    conf: Option<&str>,
    runtime: Option<&MacRuntimeConfig>,
) -> Result<Option<netops::MacAddr>, CniError> {
    let runtime = runtime.and_then(|r| r.mac.as_deref());
    let mut mac: Option<(&str, &str)> = conf.filter(|m| !m.is_empty()).map(|m| (m, "mac"));
    if let Some(m) = req.args.get("MAC").filter(|m| !m.is_empty()) {
        mac = Some((m, "CNI_ARGS MAC"));
    }
    if let Some(m) = runtime.filter(|m| !m.is_empty()) {
        mac = Some((m, "runtimeConfig.mac"));
    }
    let Some((s, field)) = mac else {
        return Ok(None);
    };
    let m: netops::MacAddr = s
        .parse()
        .map_err(|_| CniError::config(field, format!("{s:?} is not a MAC address")))?;
    if !m.is_unicast() {
        return Err(CniError::config(
            field,
            format!("{s} is a multicast address"),
        ));
    }
    Ok(Some(m))
}
