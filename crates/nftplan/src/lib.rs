//! The suite's firewall model. Plugins (bridge, internal-bridge, portmap, isolation, firewall)
//! call only this crate for firewall work.
//!
//! # The table
//!
//! One table, `inet cnirs`, with a fixed skeleton ([`SKELETON`]) and no per-pod or per-network
//! chains: everything per network or per pod is an element of a set or map ([`Elem`]).
//!
//! ```text
//! managed_br  { ifname }                 bridges of ours
//! same_br     { ifname . ifname }        ("br" . "br"): lets a rule match iif == oif
//! internal_br { ifname }                 internal-bridge networks: nothing in, nothing out
//! isolated_br { ifname }                 isolation plugin: isolated networks cannot talk
//! masq4/6     { subnet, interval }       ipMasq subnets
//! pm4/pm6     { addr . proto . port : addr . port }   host-address-specific published ports
//! pm4_any/pm6_any { proto . port : addr . port }      0.0.0.0 / :: published ports
//! vtep_ports { port }, vtep4/vtep6 { addr }           the overlay gate (node agent's)
//! ```
//! forward: same-bridge accept (br_netfilter makes bridged traffic cross this hook with
//! iif == oif), established accept, internal drops, `ct status dnat` to our bridges accept,
//! isolated-to-isolated drop. prerouting/output: `fib daddr type local jump portmap` (DNAT
//! through the maps). postrouting: hairpin and 127.0.0.1 masquerade, masquerade of masq subnets
//! leaving our bridges. raw_pre: Docker's "drop remote loopback" guard. input: a pod on an internal
//! bridge reaches the host only at the bridge's own addresses, never at its other interfaces';
//! VXLAN (udp dport @vtep_ports) whose outer source is not in vtep4/vtep6 is dropped before
//! decapsulation ([`Firewall::set_vteps`]).
//!
//! # Text batches, not the `nftables` crate
//!
//! Everything is nft text run with `nft -f -`:
//! * the skeleton must be text anyway: nft 1.0.6 creates a JSON-declared map whose value is a
//!   concatenation as a plain set, and a dnat through it segfaults nft;
//! * one language for skeleton and elements keeps golden tests readable and the whole
//!   transaction (skeleton + elements on the fallback path) one script;
//! * the text is built only from validated types ([`IfName`]: kernel rules minus `"` and `\`,
//!   `IpAddr`, `IpNetwork`, `u16`, [`Protocol`]), never from raw user strings, so it cannot be
//!   injected into; the crate's known serde pitfalls (`LT`/`GT` swapped, no `verdict` set
//!   type) do not apply.
//!
//! # Cost per plugin call
//!
//! At most one `nft` exec in steady state: an element batch (~2-3 ms). If it fails (table or
//! set missing: first call, after `nft flush ruleset`) the skeleton and the batch are applied
//! together once more. Attaching the 2nd..Nth pod of a network execs nothing. The ruleset is
//! never listed. Deletions tolerate missing elements by `add` + `delete` of the same element in
//! one transaction (1.0.6 has no `destroy`).
//!
//! Why deleting costs ~10 ms more than adding (measured, kernel 6.18): the time is spent in
//! nft's `close()` of its netlink socket. Deleted objects go onto nf_tables' destroy list, freed
//! by a work item after `synchronize_rcu()`; the NETLINK_URELEASE notifier run on close flushes
//! that work, so the process waits for an RCU grace period. Any batch that deletes (element
//! delete, `flush chain` in the skeleton) pays it; pure adds do not.
//!
//! # Fail closed
//!
//! Every attaching call first asks the kernel (one netlink `GETTABLE`, no exec) whether table
//! `inet cnirs` is the one this state last filled (same handle; handles are never reused in a
//! namespace). If it is missing or was replaced (`nft flush ruleset`, a firewall reload), the
//! call restores the skeleton and every element of the state in the same batch as its own
//! elements, or fails ([`NftError::Restore`]): it never answers success unsealed.
//!
//! # State
//!
//! Owners and refcounts live in files under `$CNIRS_RUN_DIR/netns-<inode>-<cookie>` (see
//! [`default_state_dir`] and [`nsstate`]: bound to the netns cookie, which the kernel never
//! reuses, so a new namespace never inherits a dead one's state), one flock held across
//! read-modify-write and the nft exec. Network
//! elements are refcounted by attachments; port mappings are owned by exactly one attachment
//! and a second claimant gets [`NftError::Conflict`].

mod backend;
mod batch;
mod elem;
mod error;
mod fake;
mod firewall;
mod foreign;
mod inventory;
mod libnft;
pub mod nfnl;
mod nlbatch;
pub mod nsstate;
pub mod schema;
pub mod skeleton;
mod state;
mod types;

pub use backend::{Engine, NftBackend, NftCli, TableProbe};
pub use batch::{Batch, Cmd, IpFamily};
pub use elem::{Elem, Parts, BRIDGE_TABLE, SKELETON_RULES, TABLE};
pub use error::NftError;
pub use fake::FakeNft;
pub use firewall::{
    default_state_dir, missing_error, run_root, Firewall, LastInternal, DEFAULT_RUN_DIR,
};
pub use inventory::{AttachmentView, NetworkView, PortView};
pub use ipnetwork::IpNetwork;
pub use nsstate::NetnsId;
pub use skeleton::SKELETON;
pub use types::{Attachment, Feature, IfName, NetworkElems, PodIface, PortMapping, Protocol};

#[cfg(test)]
mod tests;
