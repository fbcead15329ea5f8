//! The suite's firewall model. Plugins (bridge, internal-bridge, portmap, isolation, firewall)
//! and `cnirs` call only this crate for firewall work.
//!
//! # The table
//!
//! One table, `inet cnirs` (and `bridge cnirs` for the MAC spoof check), with a fixed
//! skeleton and no per-pod or per-network chains: everything per network or per pod is an
//! element of a set or map ([`Elem`]). The sets, from [`schema::SETS`]:
//!
//! ```text
//! managed_br  { ifname }                 bridges of ours
//! same_br     { ifname . ifname }        ("br" . "br"): lets a rule match iif == oif
//! internal_br { ifname }                 internal-bridge networks: nothing in, nothing out
//! isolated_br { ifname }                 isolation plugin: isolated networks cannot talk
//! masq4/6     { subnet, interval }       ipMasq subnets
//! br_net4/6   { ifname . subnet, interval }   subnets on a bridge (hairpin masquerade)
//! pm4/pm6     { addr . proto . port : addr . port }   host-address-specific published ports
//! pm4_any/pm6_any { proto . port : addr . port }      0.0.0.0 / :: published ports
//! vtep_ports { port }, vtep4/vtep6 { addr }           the overlay gate (node agent's)
//! spoof_ports { ifname }, spoof_ok { ifname . ether_addr }   (bridge cnirs) macspoofchk
//! np_iiso4/6, np_eiso4/6 { addr }                      NetworkPolicy: isolated pods
//! np_in_one4/6, np_out_one4/6 { addr . addr . inet_proto . inet_service }  one peer, one port
//! np_in_any4/6, np_out_any4/6 { addr . addr range, interval }   allowed peers, any port
//! np_in4/6, np_out4/6 { addr . addr range . inet_proto . port range, interval }
//! ```
//! forward: same-bridge accept (br_netfilter makes bridged traffic cross this hook with
//! iif == oif), established accept, internal drops, `ct status dnat` to our bridges accept,
//! isolated-to-isolated drop. prerouting/output: `fib daddr type local jump portmap` (DNAT
//! through the maps). postrouting: hairpin and 127.0.0.1 masquerade, masquerade of masq subnets
//! leaving our bridges. raw_pre: Docker's "drop remote loopback" guard. input: a pod on an internal
//! bridge reaches the host only at the bridge's own addresses, never at its other interfaces';
//! VXLAN (udp dport @vtep_ports) whose outer source is not in vtep4/vtep6 is dropped before
//! decapsulation ([`Firewall::set_vteps`]). The chains and rules are [`skeleton::CHAINS`] and
//! [`skeleton::RULES`].
//!
//! # Typed from the plugin to the kernel
//!
//! ```text
//! plugin -> Firewall (state, lock, refcounts) -> Batch [Cmd::Add(Elem), Cmd::Delete(..), ..]
//!        -> NftBackend::apply(&Batch)
//!             NftCli, Engine::InProcess:  element changes, or gets -> nlbatch: each Elem's
//!                                         Parts (set + Values) encoded from schema::SETS,
//!                                         one nfnetlink transaction (no process, no text)
//!                                         skeleton, host-chain rules -> Batch::text()
//!                                         -> libnftables in-process, else `nft -f -`
//!             NftCli, Engine::Program:    Batch::text() -> `$CNIRS_NFT -f -` (or a test's
//!                                         `ip netns exec NS nft`)
//!             FakeNft:                    applied to an in-memory table (tests)
//! ```
//! * [`schema::SETS`] is the one table of sets and maps (family, name, key and data types,
//!   `flags interval`). The skeleton's declarations ([`skeleton::skeleton_text`]), the nft
//!   text of elements, their nf_tables encoding (field sizes, padding, rbtree or pipapo
//!   layout) and the fake all come from it. [`Elem::parts`] is the one place that says which
//!   set an element goes to and what its values are.
//! * A [`Batch`] is a list of typed commands ([`Cmd`]). Its text ([`Batch::text`]) exists for
//!   logs, golden tests and the backends that run nft; nothing parses it back.
//! * [`NftCli`] says how it reaches the kernel ([`Engine`]): decided when it is built
//!   (`$CNIRS_NFT` set or not) and logged once per process at debug level (`CNIRS_LOG=debug`,
//!   stderr or `CNIRS_LOG_FILE`, never stdout). In-process, a batch of element changes or of
//!   gets always goes over nfnetlink (an error there is returned, not retried through nft);
//!   a batch that holds the skeleton or rules goes to libnftables, or to the `nft` program
//!   when the library does not load (logged once too).
//!
//! The skeleton itself stays nft text, loaded by nft (libnftables or the program): nft 1.0.6
//! creates a JSON-declared map whose value is a concatenation as a plain set (and a dnat
//! through it segfaults nft), and rule expressions are nft's business. The text is built only
//! from validated types ([`IfName`]: kernel rules minus `"` and `\`, `IpAddr`, `IpNetwork`,
//! `u16`, [`Protocol`], `MacAddr`), never from raw user strings, so it cannot be injected
//! into.
//!
//! # Adding a set
//!
//! The overlay gate's sets (`vtep_ports`, `vtep4`, `vtep6`) are the worked example:
//! 1. one entry per set in [`schema::SETS`]: `set(Family::Inet, "vtep4", &[Ipv4])`;
//!    `ranges(..)` for `flags interval` (the last key field is then a prefix,
//!    [`schema::Value::Net`]), `map(.., key, data)` for a map;
//! 2. the [`Elem`] variant it holds (`Vtep { addr: IpAddr }`) and its arm in [`Elem::parts`]:
//!    the set (`const VTEP4: &SetDef = schema::def("vtep4")`, checked when the crate is built)
//!    and one [`schema::Value`] per key (and data) field. Elements are recorded in the state
//!    files as serde JSON tagged by variant: a new variant is skipped, not fatal, by an older
//!    binary;
//! 3. the rules that use it in [`skeleton::RULES`] (`udp dport @vtep_ports ip saddr != @vtep4
//!    drop` in `input`), and `tests/golden/skeleton.nft` updated (a unit test checks that
//!    every `@set` a rule names is in the schema and that every set is used);
//! 4. the [`Firewall`] entry point that adds and removes the elements and the state that
//!    records them: under a [`Feature`] that refcounts them per network (see
//!    `attach_isolation` for the smallest one), or a record of its own ([`Firewall::set_vteps`]
//!    and `vtep.json`), included in what `reconcile` and the fail-closed restore put back.
//!
//! Text, netlink encoding, CHECK's lookups, reconcile, `cnirs inspect`'s drift and
//! [`FakeNft`] follow without further code; `every_set_of_the_schema_encodes_its_fields`
//! (in `nlbatch`) wants one sample element per set, and the kernel test
//! `netlink_element_batches_match_nft_text` should get one too. The field types are those
//! of [`schema::Field`]; a field of an interval concatenation may be a range of its own
//! ([`schema::Value::AddrRange`], [`schema::Value::PortRange`]: NetworkPolicy's `np_*` sets,
//! [`Firewall::set_netpol`]). A verdict map would need one more field type, `Field::Verdict`
//! (nf_tables takes its data as `NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { .. } }`); nothing
//! uses one today.
//!
//! # Testing without root
//!
//! [`FakeNft`] is an in-memory nftables with the kernel's semantics (a batch is atomic; `add`
//! of an existing element is a no-op unless its data differs; `delete` and `get` of a missing
//! one fail; elements need the skeleton; handles are never reused; the host's FORWARD chains
//! are listed and edited as the firewall plugin does). Hand it to
//! [`Firewall::with_backend`] and assert on [`FakeNft::dump`] or [`FakeNft::elems`]; break
//! things as an admin does with [`FakeNft::flush_ruleset`] or [`FakeNft::replace_table`].
//!
//! # Cost per plugin call
//!
//! In steady state no process is started: an element batch is one nfnetlink transaction in
//! the plugin's own process. If it fails (table or set missing: first call, after `nft flush
//! ruleset`) the skeleton and the batch are applied together once more, through libnftables.
//! Attaching the 2nd..Nth pod of a network sends nothing. The ruleset is never listed.
//! Deletions tolerate missing elements by `add` + `delete` of the same element in one
//! transaction (1.0.6 has no `destroy`).
//!
//! Why a deleting batch costs more than an adding one: the time is spent in the `close()` of
//! the netlink socket. Deleted objects go onto nf_tables' destroy list, freed by a work item
//! after `synchronize_rcu()`; the NETLINK_URELEASE notifier run on close flushes that work, so
//! the closing process waits for an RCU grace period. Our sockets are therefore closed by
//! `netbase::detach` after the verb answered (see `nfnl::NfSocket`).
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
//! read-modify-write and the kernel batch. Network elements are refcounted by attachments;
//! port mappings are owned by exactly one attachment and a second claimant gets
//! [`NftError::Conflict`].

mod backend;
mod batch;
mod elem;
mod error;
mod fake;
mod firewall;
mod foreign;
pub mod guard;
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
pub use elem::{Elem, NpDir, NpPorts, Parts, BRIDGE_TABLE, SKELETON_RULES, TABLE};
pub use error::NftError;
pub use fake::FakeNft;
pub use firewall::{
    default_state_dir, missing_error, run_root, Firewall, FirewallCell, LastInternal,
    DEFAULT_RUN_DIR,
};
pub use inventory::{AttachmentView, NetworkView, PortView};
pub use ipnetwork::IpNetwork;
pub use nsstate::NetnsId;
pub use skeleton::SKELETON;
pub use state::{lock_file, replace_file};
pub use types::{Attachment, Feature, IfName, NetworkElems, PodIface, PortMapping, Protocol};

#[cfg(test)]
mod tests;
