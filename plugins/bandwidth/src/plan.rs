//! The pure part: the kernel parameters of a limit (with the burst cap), the IFB names, and
//! the list of steps of one attachment, printed as the `tc` / `ip` commands they match.
//!
//! # Layout (the reference's, when every packet is shaped)
//!
//! ```text
//! towards the pod:  tc qdisc add dev VETH root handle 1: tbf rate R burst B latency 25ms
//! from the pod:     ip link add bwpXXXXXXXXXXXX mtu MTU up type ifb
//!                   tc qdisc add dev VETH handle ffff: ingress
//!                   tc filter add dev VETH parent ffff: protocol all prio 1 u32 match u32 0 0
//!                      flowid 1:1 action mirred egress redirect dev bwpXXXXXXXXXXXX
//!                   tc qdisc add dev bwpXXXXXXXXXXXX root handle 1: tbf rate R burst B latency 25ms
//! ```
//!
//! With `shapedSubnets`/`unshapedSubnets` the host veth gets a clsact qdisc instead, and both
//! directions go through an IFB of their own (`bwp…` from the pod, `bwi…` towards it): u32
//! filters on clsact's two hooks choose, by the remote address (destination of what the pod
//! sends, source of what it receives), what is redirected to the IFB (shaped) and what passes
//! untouched. A classless TBF cannot choose; HTB could, but the reference's HTB attempt was
//! reverted for its queueing side effects, and this keeps the one TBF per direction.
//!
//! # The burst cap
//!
//! TBF's bucket starts full: in the first second a flow gets `rate + burst` through. The
//! runtimes fill the burst in for a rate-only annotation: containerd with `MaxUint32` bits
//! (512 MiB), CRI-O with `MaxUint32*8-1` bits (4 GiB). With the reference, a 15 Mbit/s limit
//! then let 2 Gbit through in the first second (its issue #609), and here ~4 Gbit/s under a
//! 20 Mbit/s limit. The burst is therefore capped at what the rate sends in 100 ms
//! ([`BURST_CAP_MS`]): the first second carries at most 1.1x the limit whatever a runtime
//! sends, 100 ms still absorbs TCP's bursts at that rate (a slow-start round, a compressed ACK
//! train), and the bucket's time stays far inside the kernel's 32-bit tick count at every
//! rate. It never goes below one full-size frame (MTU + Ethernet header): a smaller bucket
//! can never send such a frame, and the reference's qdisc then stalls the link.

use std::fmt;

use cni_core::{CniError, ErrorCode, IfName};
use ipnetwork::IpNetwork;
use netops::tc::{self, TbfParams, U32Filter, U32Match};
use sha2::{Digest, Sha512};

use crate::config::{Limit, Spec, Subnets};

/// The queueing latency the reference gives TBF's `limit`: 25 ms of the rate, plus the burst.
pub const LATENCY_US: f64 = 25_000.0;
/// The burst cap: what the rate sends in this many milliseconds (module doc).
pub const BURST_CAP_MS: u64 = 100;
/// The IFB of the pod's egress: the reference's name (`bwp` + 12 hex digits of
/// sha512(network + container id)), so a DEL here removes one the reference made.
pub const EGRESS_IFB_PREFIX: &str = "bwp";
/// The IFB of the pod's ingress, with subnets only (not in the reference).
pub const INGRESS_IFB_PREFIX: &str = "bwi";
/// The alias our IFBs carry: `cnirs-bandwidth NETWORK CONTAINERID`, for GC.
pub const ALIAS_PREFIX: &str = "cnirs-bandwidth";

/// `PREFIX` + the first hex digits of sha512(network + container id), 15 bytes.
pub fn ifb_name(prefix: &str, network: &str, container_id: &str) -> Result<IfName, CniError> {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{prefix}{hex}");
    IfName::new(&name[..netops::IFNAMSIZ_MAX.min(name.len())])
        .map_err(|e| CniError::new(ErrorCode::InvalidConfig, e.to_string()))
}

/// The alias of the IFBs of one attachment.
pub fn ifb_alias(network: &str, container_id: &str) -> String {
    format!("{ALIAS_PREFIX} {network} {container_id}")
}

/// One direction's limit as the kernel will hold it, and whether the burst was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    pub tbf: TbfParams,
    /// The bucket in bytes actually used.
    pub burst_bytes: u64,
    /// The bucket in bytes asked for.
    pub asked_bytes: u64,
}

/// TBF parameters for `limit` on a link of MTU `mtu`, with the burst capped (module doc) and
/// computed as the reference computes them (same float steps), so an uncapped limit gives the
/// reference's qdisc exactly. `ticks` is [`tc::psched_ticks_per_usec`].
pub fn shaping(limit: &Limit, mtu: u32, ticks: f64) -> Result<Shaping, CniError> {
    let rate = limit.rate / 8;
    let asked = limit.burst / 8;
    let floor = u64::from(mtu) + 14;
    let cap = (rate.saturating_mul(BURST_CAP_MS) / 1000).max(floor);
    let burst = asked.clamp(floor, cap);
    // buffer = time2Tick(uint32(burst * 1e6 / rate)); limit = uint32(rate * latency / 1e6) + burst
    let usec = burst as f64 * 1_000_000.0 / rate as f64;
    let buffer = usec * ticks;
    let limit_bytes = (rate as f64 * LATENCY_US / 1_000_000.0).floor() + burst as f64;
    if buffer >= f64::from(u32::MAX) || limit_bytes >= f64::from(u32::MAX) {
        return Err(CniError::config(
            "rate",
            format!(
                "{} bit/s is above what the kernel's TBF can queue (its limit of 25 ms at that \
                 rate would exceed 4 GiB)",
                limit.rate
            ),
        ));
    }
    Ok(Shaping {
        tbf: TbfParams {
            rate,
            buffer: buffer as u32,
            limit: limit_bytes as u32,
        },
        burst_bytes: burst,
        asked_bytes: asked,
    })
}

/// u32 keys matching `net` as the source (`src`) or destination address of an IPv4/IPv6
/// header (offsets from the network header: IPv4 src 12 / dst 16, IPv6 src 8 / dst 24). A /0
/// gives no key: everything of that family.
pub fn subnet_keys(net: &IpNetwork, src: bool) -> Vec<U32Match> {
    let (bytes, base): (Vec<u8>, i32) = match net {
        IpNetwork::V4(n) => (n.network().octets().to_vec(), if src { 12 } else { 16 }),
        IpNetwork::V6(n) => (n.network().octets().to_vec(), if src { 8 } else { 24 }),
    };
    let prefix = u32::from(net.prefix());
    let mut keys = Vec::new();
    for (i, word) in bytes.chunks(4).enumerate() {
        let bits_before = 32 * i as u32;
        let mask = match prefix.saturating_sub(bits_before) {
            0 => 0,
            n if n >= 32 => u32::MAX,
            n => u32::MAX << (32 - n),
        };
        if mask == 0 {
            continue;
        }
        let val = u32::from_be_bytes([word[0], word[1], word[2], word[3]]) & mask;
        keys.push(U32Match {
            val,
            mask,
            off: base + 4 * i as i32,
        });
    }
    keys
}

/// A filter as planned: its redirect target is an IFB named here (its index is known once it
/// exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPlan {
    pub parent: u32,
    pub prio: u16,
    pub protocol: u16,
    pub keys: Vec<U32Match>,
    pub classid: Option<u32>,
    pub redirect: Option<IfName>,
}

impl FilterPlan {
    /// The kernel's form once the redirect target's index is known.
    pub fn resolve(&self, target: Option<u32>) -> U32Filter {
        U32Filter {
            parent: self.parent,
            prio: self.prio,
            protocol: self.protocol,
            keys: self.keys.clone(),
            classid: self.classid,
            redirect: target,
        }
    }
}

/// One step of an attachment's shaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `ip link add NAME mtu MTU up type ifb` (+ alias). Undo: delete it.
    CreateIfb {
        name: IfName,
        mtu: u32,
        alias: String,
    },
    /// `tc qdisc add dev LINK root handle 1: tbf ...`. Undo: delete the root qdisc.
    AddTbf {
        link: IfName,
        shaping: Shaping,
    },
    /// `tc qdisc add dev LINK handle ffff: ingress`. Undo: delete it (its filters go with it).
    AddIngress {
        link: IfName,
    },
    /// `tc qdisc add dev LINK clsact`. Undo: delete it.
    AddClsact {
        link: IfName,
    },
    /// `tc filter add dev LINK ...`: removed with its qdisc.
    AddFilter {
        link: IfName,
        filter: FilterPlan,
    },
    /// Undo steps.
    DeleteLink {
        link: IfName,
    },
    DeleteQdisc {
        link: IfName,
        parent: u32,
    },
}

impl netops::Reversible for Step {
    fn inverse(&self) -> Option<Step> {
        match self {
            Step::CreateIfb { name, .. } => Some(Step::DeleteLink { link: name.clone() }),
            Step::AddTbf { link, .. } => Some(Step::DeleteQdisc {
                link: link.clone(),
                parent: 0xffff_ffff,
            }),
            Step::AddIngress { link } | Step::AddClsact { link } => Some(Step::DeleteQdisc {
                link: link.clone(),
                parent: 0xffff_fff1,
            }),
            Step::AddFilter { .. } | Step::DeleteLink { .. } | Step::DeleteQdisc { .. } => None,
        }
    }
}

fn parent_text(p: u32) -> String {
    match p {
        tc::PARENT_INGRESS => "parent ffff:".into(),
        tc::PARENT_CLSACT_INGRESS => "ingress".into(),
        tc::PARENT_CLSACT_EGRESS => "egress".into(),
        p => format!("parent {:x}:{:x}", p >> 16, p & 0xffff),
    }
}

fn proto_text(p: u16) -> &'static str {
    match p {
        tc::ETH_P_IP => "ip",
        tc::ETH_P_IPV6 => "ipv6",
        _ => "all",
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateIfb { name, mtu, alias } => {
                write!(f, "ip link add {name} mtu {mtu} up type ifb; ip link set {name} alias \"{alias}\"")
            }
            Step::AddTbf { link, shaping: s } => write!(
                f,
                "tc qdisc add dev {link} root handle 1: tbf rate {}bit burst {}b limit {}b  # buffer {} ticks{}",
                s.tbf.rate * 8,
                s.burst_bytes,
                s.tbf.limit,
                s.tbf.buffer,
                if s.burst_bytes != s.asked_bytes {
                    format!(", burst asked {}b", s.asked_bytes)
                } else {
                    String::new()
                }
            ),
            Step::AddIngress { link } => write!(f, "tc qdisc add dev {link} handle ffff: ingress"),
            Step::AddClsact { link } => write!(f, "tc qdisc add dev {link} clsact"),
            Step::AddFilter { link, filter: p } => {
                write!(
                    f,
                    "tc filter add dev {link} {} protocol {} prio {} u32",
                    parent_text(p.parent),
                    proto_text(p.protocol),
                    p.prio
                )?;
                if p.keys.is_empty() {
                    write!(f, " match u32 0 0")?;
                }
                for k in &p.keys {
                    write!(f, " match u32 0x{:08x} 0x{:08x} at {}", k.val, k.mask, k.off)?;
                }
                if let Some(c) = p.classid {
                    write!(f, " flowid {:x}:{:x}", c >> 16, c & 0xffff)?;
                }
                match &p.redirect {
                    Some(t) => write!(f, " action mirred egress redirect dev {t}"),
                    None => write!(f, "  # pass: not shaped"),
                }
            }
            Step::DeleteLink { link } => write!(f, "ip link del {link}"),
            Step::DeleteQdisc { link, parent } => write!(
                f,
                "tc qdisc del dev {link} {}",
                if *parent == 0xffff_ffff { "root" } else { "ingress" }
            ),
        }
    }
}

/// Where the attachment lives: the host veth (name, MTU) and the derived IFB names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub veth: IfName,
    pub mtu: u32,
    pub egress_ifb: IfName,
    pub ingress_ifb: IfName,
    pub alias: String,
}

/// Filters choosing what goes to `ifb` at `parent`, by `subnets` (`src`: match the source).
fn selection(parent: u32, subnets: &Subnets, src: bool, ifb: &IfName) -> Vec<FilterPlan> {
    let per_family = |nets: &[IpNetwork], redirect: Option<&IfName>| -> Vec<FilterPlan> {
        nets.iter()
            .map(|n| FilterPlan {
                parent,
                // One protocol per priority: IPv4 at 1, IPv6 at 2.
                prio: if n.is_ipv4() { 1 } else { 2 },
                protocol: if n.is_ipv4() {
                    tc::ETH_P_IP
                } else {
                    tc::ETH_P_IPV6
                },
                keys: subnet_keys(n, src),
                classid: None,
                redirect: redirect.cloned(),
            })
            .collect()
    };
    match subnets {
        Subnets::All => vec![FilterPlan {
            parent,
            prio: 1,
            protocol: tc::ETH_P_ALL,
            keys: vec![],
            classid: Some(0x0001_0001),
            redirect: Some(ifb.clone()),
        }],
        Subnets::Only(nets) => per_family(nets, Some(ifb)),
        Subnets::Except(nets) => {
            let mut v = per_family(nets, None);
            v.push(FilterPlan {
                parent,
                prio: 3,
                protocol: tc::ETH_P_ALL,
                keys: vec![],
                classid: Some(0x0001_0001),
                redirect: Some(ifb.clone()),
            });
            v
        }
    }
}

/// The steps of one attachment, in order (IFBs before the filters that redirect to them).
pub fn build(spec: &Spec, t: &Target, ticks: f64) -> Result<Vec<Step>, CniError> {
    let mut steps = Vec::new();
    let ingress = spec
        .ingress
        .map(|l| shaping(&l, t.mtu, ticks))
        .transpose()?;
    let egress = spec.egress.map(|l| shaping(&l, t.mtu, ticks)).transpose()?;
    let ifb = |name: &IfName| Step::CreateIfb {
        name: name.clone(),
        mtu: t.mtu,
        alias: t.alias.clone(),
    };
    match spec.subnets {
        Subnets::All => {
            if let Some(s) = ingress {
                steps.push(Step::AddTbf {
                    link: t.veth.clone(),
                    shaping: s,
                });
            }
            if let Some(s) = egress {
                steps.push(ifb(&t.egress_ifb));
                steps.push(Step::AddIngress {
                    link: t.veth.clone(),
                });
                for filter in selection(tc::PARENT_INGRESS, &spec.subnets, false, &t.egress_ifb) {
                    steps.push(Step::AddFilter {
                        link: t.veth.clone(),
                        filter,
                    });
                }
                steps.push(Step::AddTbf {
                    link: t.egress_ifb.clone(),
                    shaping: s,
                });
            }
        }
        Subnets::Only(_) | Subnets::Except(_) => {
            steps.push(Step::AddClsact {
                link: t.veth.clone(),
            });
            for (shaping, ifb_name, parent, src) in [
                (egress, &t.egress_ifb, tc::PARENT_CLSACT_INGRESS, false),
                (ingress, &t.ingress_ifb, tc::PARENT_CLSACT_EGRESS, true),
            ] {
                let Some(s) = shaping else { continue };
                steps.push(ifb(ifb_name));
                steps.push(Step::AddTbf {
                    link: ifb_name.clone(),
                    shaping: s,
                });
                for filter in selection(parent, &spec.subnets, src, ifb_name) {
                    steps.push(Step::AddFilter {
                        link: t.veth.clone(),
                        filter,
                    });
                }
            }
        }
    }
    Ok(steps)
}

/// The plan as text, one command per line.
pub fn text(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
