//! A batch: one transaction as a list of typed commands, built by pure code and handed to a
//! backend. Its nft text ([`Batch::text`]) is for logs, golden tests and the backends that
//! run nft; the netlink backend encodes the commands themselves ([`crate::nlbatch`]).

use std::fmt;

use crate::{elem::Elem, schema::Layout, types::IfName};

/// The family of a host table that is not ours (`ip filter`, `ip6 filter`: iptables-nft's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// `ip`
    V4,
    /// `ip6`
    V6,
}

impl IpFamily {
    /// Both, in the order they are visited.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// nft's keyword: `ip`, `ip6`.
    pub const fn keyword(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Load (or repair) the whole skeleton ([`crate::skeleton::skeleton_text`]).
    Skeleton,
    /// `add element`: a no-op when the element is there with the same data.
    Add(Elem),
    /// `delete element`: fails when the element is missing.
    Delete(Elem),
    /// `get element`: fails when the element is missing. A batch of gets changes nothing.
    Get(Elem),
    /// Insert the three rules that let `bridge` through `family filter FORWARD`, tagged
    /// `cnirs:<bridge>` (the firewall plugin, see `foreign.rs`).
    AllowForward {
        /// `ip` or `ip6`
        family: IpFamily,
        /// the network's bridge
        bridge: IfName,
    },
    /// `delete rule FAMILY filter FORWARD handle N`.
    DeleteForwardRule {
        /// `ip` or `ip6`
        family: IpFamily,
        /// the rule's handle
        handle: u64,
    },
}

/// Marker of the comment [`Batch::get`] writes after the `get` of an interval: nft is asked
/// for the network address, the comment names the subnet meant (for the reader of a log).
const INTERVAL_COMMENT: &str = " # interval ";

impl fmt::Display for Cmd {
    /// The command as nft text (no trailing newline; the skeleton is several lines).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::Skeleton => f.write_str(crate::skeleton::SKELETON.trim_end()),
            Cmd::Add(e) => write!(f, "add element {} {e}", e.table()),
            Cmd::Delete(e) => write!(
                f,
                "delete element {} {} {{ {} }}",
                e.table(),
                e.set_name(),
                e.key_text()
            ),
            Cmd::Get(e) => {
                write!(
                    f,
                    "get element {} {} {{ {} }}",
                    e.table(),
                    e.set_name(),
                    e.query_key_text()
                )?;
                if e.parts().set.layout() != Layout::Exact {
                    write!(f, "{INTERVAL_COMMENT}{}", e.key_text())?;
                }
                Ok(())
            }
            Cmd::AllowForward { family, bridge } => {
                f.write_str(crate::foreign::insert_text(*family, bridge).trim_end())
            }
            Cmd::DeleteForwardRule { family, handle } => write!(
                f,
                "delete rule {} filter FORWARD handle {handle}",
                family.keyword()
            ),
        }
    }
}

/// One transaction. Pure: nothing runs until a backend takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    cmds: Vec<Cmd>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// `add element` of each of `elems`.
    pub fn add(&mut self, elems: &[Elem]) -> &mut Self {
        self.cmds.extend(elems.iter().cloned().map(Cmd::Add));
        self
    }

    /// Delete `elems`, tolerating elements that are not there, in the same transaction:
    /// nft 1.0.6 has no `destroy`, and `delete element` of a missing element fails the whole
    /// batch; `add` then `delete` of the same element always succeeds (the add is a no-op if
    /// the element exists, else it creates what the delete removes) and is atomic.
    pub fn remove(&mut self, elems: &[Elem]) -> &mut Self {
        for e in elems {
            self.cmds.push(Cmd::Add(e.clone()));
            self.cmds.push(Cmd::Delete(e.clone()));
        }
        self
    }

    /// Strict delete of each of `elems` (the batch fails if one is missing).
    pub fn delete(&mut self, elems: &[Elem]) -> &mut Self {
        self.cmds.extend(elems.iter().cloned().map(Cmd::Delete));
        self
    }

    /// Ask for each of `elems` (the batch fails if one is missing). An interval is asked by
    /// its network address in the text (see [`Elem::query_key_text`]), with the subnet named
    /// in a trailing comment (`# interval 10.1.0.0/24`) that nft skips; the netlink backend
    /// demands that exact subnet.
    pub fn get(&mut self, elems: &[Elem]) -> &mut Self {
        self.cmds.extend(elems.iter().cloned().map(Cmd::Get));
        self
    }

    /// The whole skeleton.
    pub fn skeleton(&mut self) -> &mut Self {
        self.cmds.push(Cmd::Skeleton);
        self
    }

    /// Any command.
    pub fn push(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push(cmd);
        self
    }

    /// The commands of `other`, after ours.
    pub fn extend(&mut self, other: &Batch) -> &mut Self {
        self.cmds.extend(other.cmds.iter().cloned());
        self
    }

    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The commands, in order.
    pub fn cmds(&self) -> &[Cmd] {
        &self.cmds
    }

    /// The batch as an nft script (`nft -f -`), one command per line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.cmds {
            s.push_str(&c.to_string());
            s.push('\n');
        }
        s
    }
}
