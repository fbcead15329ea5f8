//! A small undo log: each create step records its inverse, a failed ADD
//! unwinds them in reverse order.

use ipnetwork::IpNetwork;

use crate::{Link, Netlink, NetopsError, RouteSpec};

/// Which handle an undo step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Pod,
}

/// The inverse of one applied step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoOp {
    /// `ip link del NAME` (a veth: either end removes both).
    DeleteLink { side: Side, name: String },
    /// `ip addr del CIDR dev LINK`.
    DeleteAddress {
        side: Side,
        link: Link,
        cidr: IpNetwork,
    },
    /// `ip route del ...`.
    DeleteRoute {
        side: Side,
        link: Link,
        route: RouteSpec,
    },
    /// `ip link set LINK promisc on|off` back to the previous value.
    SetPromisc { side: Side, link: Link, on: bool },
    /// `ip link set PORT nomaster`.
    Detach { side: Side, link: Link },
}

/// Record of inverses, newest last.
#[derive(Debug, Default)]
pub struct UndoLog {
    ops: Vec<UndoOp>,
}

impl UndoLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, op: UndoOp) {
        self.ops.push(op);
    }

    pub fn ops(&self) -> &[UndoOp] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ADD succeeded: forget the inverses.
    pub fn commit(mut self) {
        self.ops.clear();
    }

    /// Run the inverses newest first. Keeps going after a failure; "not
    /// found" counts as done. Returns the failures (already logged) so the
    /// caller can report them without replacing its original error.
    /// Pod steps are skipped (and reported) when `pod` is `None`.
    pub fn rollback(mut self, host: &Netlink<'_>, pod: Option<&Netlink<'_>>) -> Vec<NetopsError> {
        let mut errs = Vec::new();
        while let Some(op) = self.ops.pop() {
            let side = match &op {
                UndoOp::DeleteLink { side, .. }
                | UndoOp::DeleteAddress { side, .. }
                | UndoOp::DeleteRoute { side, .. }
                | UndoOp::SetPromisc { side, .. }
                | UndoOp::Detach { side, .. } => *side,
            };
            let nl = match side {
                Side::Host => host,
                Side::Pod => match pod {
                    Some(p) => p,
                    None => {
                        log::warn!("rollback: no pod handle for {op:?}");
                        errs.push(NetopsError::NeedsPodHandle { what: "rollback" });
                        continue;
                    }
                },
            };
            let r = match &op {
                UndoOp::DeleteLink { name, .. } => nl.delete_link(name).map(drop),
                UndoOp::DeleteAddress { link, cidr, .. } => {
                    nl.delete_address(link, *cidr).map(drop)
                }
                UndoOp::DeleteRoute { link, route, .. } => nl.delete_route(link, route).map(drop),
                UndoOp::SetPromisc { link, on, .. } => nl.set_promisc(link, *on),
                UndoOp::Detach { link, .. } => nl.detach_from_bridge(link),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    log::warn!("rollback step {op:?} failed: {e}");
                    errs.push(e);
                }
            }
        }
        errs
    }
}
