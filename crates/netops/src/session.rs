//! The kernel as one plugin call sees it, behind a trait: the host netns (where the plugin
//! runs) and, once opened, one pod netns. A verb is handed a [`Session`] instead of building
//! its netlink connections itself: [`KernelSession`] is the real one (feature `netlink`),
//! [`crate::FakeNet`] an in-memory kernel for unit tests of a plugin's ADD/DEL/CHECK/GC.

use std::path::Path;

use ipnetwork::IpNetwork;

use crate::{Executor, Family, IfName, Link, NetopsError, Ns, Op, RouteInfo};

/// Which routes of the main table [`Session::routes`] lists: of `link` and of `family`, each
/// when given.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFilter<'a> {
    pub link: Option<&'a Link>,
    pub family: Option<Family>,
}

impl<'a> RouteFilter<'a> {
    /// The routes through `link`.
    pub fn link(link: &'a Link) -> Self {
        Self {
            link: Some(link),
            family: None,
        }
    }

    /// The routes of `family`.
    pub fn family(family: Family) -> Self {
        Self {
            link: None,
            family: Some(family),
        }
    }
}

/// The kernel of one plugin call.
pub trait Session {
    /// Bind the pod side to the netns at `path`. [`NetopsError::NetnsNotFound`] /
    /// [`NetopsError::NotANetns`] when it is no netns (DEL tolerates both).
    fn open_pod(&mut self, path: &Path) -> Result<(), NetopsError>;
    /// A link by name; `None` when there is none. Equivalent: `ip -d link show NAME`.
    fn link(&mut self, ns: Ns, name: &str) -> Result<Option<Link>, NetopsError>;
    /// Every address of `link` (link-local IPv6 included). Equivalent: `ip addr show dev LINK`.
    fn addresses(&mut self, ns: Ns, link: &Link) -> Result<Vec<IpNetwork>, NetopsError>;
    /// Routes of the main table, as `of` selects them.
    fn routes(&mut self, ns: Ns, of: RouteFilter<'_>) -> Result<Vec<RouteInfo>, NetopsError>;
    /// The host's `net.ipv4.ip_forward` / `net.ipv6.conf.all.forwarding` (`None`: no such
    /// family).
    fn forwarding(&mut self, family: Family) -> Result<Option<bool>, NetopsError>;
    /// Run one op: `Ok(true)` when it changed the kernel ([`Executor`] semantics).
    fn exec(&mut self, op: &Op) -> Result<bool, NetopsError>;
    /// The link `name` as the ops of this session last saw it (created or read by one), read
    /// when none has yet; [`NetopsError::LinkNotFound`] when absent.
    fn known_link(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError>;
    /// [`crate::Netlink::retire_veth`]: the host veth `host` (and, with the pod open, its end
    /// `pod_ifname`) out of service at once, deleted later. `Ok(false)` when there is none.
    fn retire_veth(&mut self, host: &str, pod_ifname: Option<&str>) -> Result<bool, NetopsError>;
    /// Delete the retired links a killed deleter left in the host netns.
    fn delete_retired(&mut self) -> Result<usize, NetopsError>;
    /// The seal rules of `bridge` and `subnets` the host lacks, as `ip rule` text.
    fn missing_seal(
        &mut self,
        bridge: &str,
        subnets: &[IpNetwork],
    ) -> Result<Vec<String>, NetopsError>;
}

/// A session as an [`Executor`] of [`Op`]s, for `netops::apply`.
pub struct SessionExec<'s>(pub &'s mut dyn Session);

impl Executor<Op> for SessionExec<'_> {
    type Error = NetopsError;

    fn exec(&mut self, op: &Op) -> Result<bool, NetopsError> {
        self.0.exec(op)
    }

    fn is_gone(e: &NetopsError) -> bool {
        e.is_not_found()
    }
}

#[cfg(feature = "netlink")]
pub use real::KernelSession;

#[cfg(feature = "netlink")]
mod real {
    use std::path::Path;

    use ipnetwork::IpNetwork;
    use netbase::Detacher;

    use super::{RouteFilter, Session};
    use crate::{
        exec::{LinkCache, OpRun},
        kernel::Conn,
        netns::NsRef,
        Family, IfName, Kernel, Link, NetNs, Netlink, NetopsError, Ns, Op, RouteInfo,
    };

    struct Pod {
        ns: NetNs,
        conn: Conn,
    }

    /// The real kernel over netlink: the connection is opened at the first call that needs
    /// it (a verb that ends before touching the kernel opens nothing), a second one bound to
    /// the pod by [`Session::open_pod`]. Links created or read by ops are looked up once.
    pub struct KernelSession {
        detach: Detacher,
        kernel: Option<Kernel>,
        pod: Option<Pod>,
        links: LinkCache,
    }

    impl KernelSession {
        /// Nothing opened yet; work only the kernel can observe is parked with `detach`.
        pub fn new(detach: Detacher) -> Self {
            Self {
                detach,
                kernel: None,
                pod: None,
                links: LinkCache::new(),
            }
        }

        fn open(&mut self) -> Result<(), NetopsError> {
            if self.kernel.is_none() {
                self.kernel = Some(Kernel::with_detacher(self.detach.clone())?);
            }
            Ok(())
        }

        /// The kernel's host and pod views and the link cache, opening the kernel if needed.
        fn with<T>(
            &mut self,
            f: impl FnOnce(OpRun<'_, '_, '_>) -> Result<T, NetopsError>,
        ) -> Result<T, NetopsError> {
            self.open()?;
            let Self {
                kernel, pod, links, ..
            } = self;
            let Some(k) = kernel.as_ref() else {
                return Err(NetopsError::NeedsPodHandle {
                    what: "a kernel session",
                });
            };
            let host = k.host();
            let pod = pod
                .as_ref()
                .map(|p| k.view(&p.conn, NsRef::Borrowed(&p.ns)));
            f(OpRun {
                host: &host,
                pod: pod.as_ref(),
                links,
            })
        }

        /// `f` on the host netns view of this session's kernel (opened if needed), for a
        /// caller's own host reads and ops beyond [`Session`]'s, on the same connection.
        pub fn host<T, E: From<NetopsError>>(
            &mut self,
            f: impl FnOnce(&Netlink<'_>) -> Result<T, E>,
        ) -> Result<T, E> {
            self.open()?;
            let Some(k) = self.kernel.as_ref() else {
                return Err(NetopsError::NeedsPodHandle {
                    what: "a kernel session",
                }
                .into());
            };
            f(&k.host())
        }

        fn on<T>(
            &mut self,
            ns: Ns,
            f: impl FnOnce(&Netlink<'_>) -> Result<T, NetopsError>,
        ) -> Result<T, NetopsError> {
            self.with(|run| match ns {
                Ns::Host => f(run.host),
                Ns::Pod => f(run
                    .pod
                    .ok_or(NetopsError::NeedsPodHandle { what: "a pod read" })?),
            })
        }
    }

    impl Session for KernelSession {
        fn open_pod(&mut self, path: &Path) -> Result<(), NetopsError> {
            let ns = NetNs::open(path)?;
            self.open()?;
            let conn = match &self.kernel {
                Some(k) => k.connect_in(&ns)?,
                None => return Err(NetopsError::NeedsPodHandle { what: "open_pod" }),
            };
            self.links.retain(|(n, _), _| *n == Ns::Host);
            self.pod = Some(Pod { ns, conn });
            Ok(())
        }

        fn link(&mut self, ns: Ns, name: &str) -> Result<Option<Link>, NetopsError> {
            self.on(ns, |nl| nl.link(name))
        }

        fn addresses(&mut self, ns: Ns, link: &Link) -> Result<Vec<IpNetwork>, NetopsError> {
            self.on(ns, |nl| nl.addresses(link, None))
        }

        fn routes(&mut self, ns: Ns, of: RouteFilter<'_>) -> Result<Vec<RouteInfo>, NetopsError> {
            self.on(ns, |nl| nl.routes(of.link, of.family))
        }

        fn forwarding(&mut self, family: Family) -> Result<Option<bool>, NetopsError> {
            // Over rtnetlink: an open under /proc/sys/net on the host walks past every younger
            // netns (crate::sysctl).
            crate::sysctl::forwarding(family)
        }

        fn exec(&mut self, op: &Op) -> Result<bool, NetopsError> {
            self.with(|mut run| run.exec(op))
        }

        fn known_link(&mut self, ns: Ns, name: &IfName) -> Result<Link, NetopsError> {
            self.with(|mut run| run.link(ns, name))
        }

        fn retire_veth(
            &mut self,
            host: &str,
            pod_ifname: Option<&str>,
        ) -> Result<bool, NetopsError> {
            self.with(|run| {
                let pod = run.pod.zip(pod_ifname);
                run.host.retire_veth(host, pod)
            })
        }

        fn delete_retired(&mut self) -> Result<usize, NetopsError> {
            self.on(Ns::Host, |nl| nl.delete_retired())
        }

        fn missing_seal(
            &mut self,
            bridge: &str,
            subnets: &[IpNetwork],
        ) -> Result<Vec<String>, NetopsError> {
            self.on(Ns::Host, |nl| nl.missing_seal(bridge, subnets))
        }
    }
}
