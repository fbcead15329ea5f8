//! The compiler: namespaces, pods (labels, named ports, addresses) and policies in, the
//! elements of the `np_*` sets of table `inet cnirs` out. Pure.
//!
//! For each pod address and direction: if a policy of its namespace selects the pod for that
//! direction, one `np_iiso`/`np_eiso` element, and the union of what the rules of all those
//! policies allow, as disjoint elements `pod . peer-range` (rules without ports) and
//! `pod . peer-range . protocol . port-range`. The rules of the table never change; what grows
//! is the number of elements: per isolated pod, the distinct peer ranges its policies allow
//! (pod addresses of the selected peers, ipBlocks less their excepts) times the port ranges.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use nftplan::{Elem, NpDir, NpPorts, Protocol};

use crate::policy::{Labels, Peer, PodInfo, Policy, PortSpec, Rule, NS_NAME_LABEL};

/// Everything the compiler looks at.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// namespace -> labels (with `kubernetes.io/metadata.name`)
    pub namespaces: BTreeMap<String, Labels>,
    /// pods
    pub pods: Vec<PodInfo>,
    /// policies
    pub policies: Vec<Policy>,
}

impl World {
    /// The labels of namespace `ns`: those applied, or only its name label when no Namespace
    /// object was applied (it exists as soon as a pod or policy names it).
    pub fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| Labels::from([(NS_NAME_LABEL.to_owned(), ns.to_owned())]))
    }

    /// Does `peer` (of a policy in `policy_ns`) select `pod`?
    pub fn peer_selects(&self, policy_ns: &str, peer: &Peer, pod: &PodInfo) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    Some(sel) => sel.matches(&self.ns_labels(&pod.namespace)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            Peer::Block { .. } => false,
        }
    }

    /// The policies selecting `pod` for ingress (`ingress`) or egress.
    pub fn selecting<'a>(
        &'a self,
        pod: &'a PodInfo,
        dir: NpDir,
    ) -> impl Iterator<Item = (&'a Policy, &'a Vec<Rule>)> + 'a {
        self.policies.iter().filter_map(move |p| {
            let rules = match dir {
                NpDir::Ingress => p.ingress.as_ref(),
                NpDir::Egress => p.egress.as_ref(),
            }?;
            (p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
                .then_some((p, rules))
        })
    }
}

/// An address as a number in its family (v4 in the low 32 bits).
fn num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

fn max(v6: bool) -> u128 {
    if v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    }
}

fn net_range(n: &IpNetwork) -> (u128, u128) {
    let start = num(n.network());
    let bits = if n.is_ipv6() { 128 } else { 32 };
    let host = u32::from(bits - n.prefix());
    let span = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    (start, start | span)
}

/// `[lo, hi]` less every range of `holes`.
fn subtract(lo: u128, hi: u128, holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = vec![(lo, hi)];
    for &(a, b) in holes {
        out = out
            .into_iter()
            .flat_map(|(x, y)| {
                let mut v = Vec::new();
                if b < x || a > y {
                    v.push((x, y));
                } else {
                    if a > x {
                        v.push((x, a - 1));
                    }
                    if b < y {
                        v.push((b + 1, y));
                    }
                }
                v
            })
            .collect();
    }
    out
}

/// Sorted, merged (touching ranges joined) union of `r`.
fn union(mut r: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    r.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// An address range (first, last) as numbers.
type Span = (u128, u128);
/// A peer range and a port range.
type Rect = (Span, (u16, u16));

/// What one direction of one pod address allows: peer ranges for any protocol, and
/// rectangles (peer range x port range) per protocol.
#[derive(Default)]
struct Allowed {
    any: Vec<(u128, u128)>,
    ports: BTreeMap<Protocol, Vec<Rect>>,
}

/// Disjoint rectangles covering exactly the union of `rects`: the port axis cut at every
/// edge of a port range (a handful: the distinct port ranges of the rules), each piece with
/// the union of the peer ranges over it, equal neighbours merged. O(k x n log n) for k
/// distinct port ranges and n peer ranges (the peer axis holds the many values: one per pod).
fn disjoint(rects: &[Rect]) -> Vec<Rect> {
    let mut by_ports: BTreeMap<(u16, u16), Vec<Span>> = BTreeMap::new();
    for (span, ports) in rects {
        by_ports.entry(*ports).or_default().push(*span);
    }
    let mut cuts: Vec<u32> = Vec::new();
    for (a, b) in by_ports.keys() {
        cuts.push(u32::from(*a));
        cuts.push(u32::from(*b) + 1);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<((u32, u32), Vec<Span>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let peers = union(
            by_ports
                .iter()
                .filter(|((a, b), _)| u32::from(*a) <= lo && hi <= u32::from(*b))
                .flat_map(|(_, spans)| spans.iter().copied())
                .collect(),
        );
        if peers.is_empty() {
            continue;
        }
        match pieces.last_mut() {
            Some(((_, e), ps)) if *e + 1 == lo && *ps == peers => *e = hi,
            _ => pieces.push(((lo, hi), peers)),
        }
    }
    let port = |p: u32| u16::try_from(p).unwrap_or(u16::MAX);
    pieces
        .into_iter()
        .flat_map(|((lo, hi), peers)| peers.into_iter().map(move |s| (s, (port(lo), port(hi)))))
        .collect()
}

/// Compile `w` to the elements of the `np_*` sets.
pub fn compile(w: &World) -> BTreeSet<Elem> {
    let mut out = BTreeSet::new();
    // Each namespace's labels once, and each rule's peers once per family (they do not
    // depend on the pod the rule is applied to): compile is O(pods x selecting rules +
    // rules x pods), not O(pods x rules x pods).
    let ns_labels: BTreeMap<&str, Labels> = w
        .pods
        .iter()
        .map(|p| (p.namespace.as_str(), w.ns_labels(&p.namespace)))
        .collect();
    let mut peers_of: std::collections::HashMap<(usize, bool), Peers<'_>> =
        std::collections::HashMap::new();
    for pod in &w.pods {
        for dir in [NpDir::Ingress, NpDir::Egress] {
            let selecting: Vec<_> = w.selecting(pod, dir).collect();
            if selecting.is_empty() {
                continue; // not isolated in this direction: default allow
            }
            for &ip in &pod.ips {
                let v6 = ip.is_ipv6();
                out.insert(Elem::NpIsolated { dir, pod: ip });
                let mut allowed = Allowed::default();
                for (policy, rules) in &selecting {
                    for rule in rules.iter() {
                        let key = (std::ptr::from_ref(rule) as usize, v6);
                        let peers = peers_of
                            .entry(key)
                            .or_insert_with(|| peer_ranges(w, &ns_labels, policy, &rule.peers, v6));
                        allow_rule(peers, rule, pod, dir, &mut allowed);
                    }
                }
                let elem = |(a, b): (u128, u128), ports| Elem::NpAllow {
                    dir,
                    pod: ip,
                    first: addr(v6, a),
                    last: addr(v6, b),
                    ports,
                };
                for r in union(allowed.any) {
                    out.insert(elem(r, None));
                }
                for (protocol, rects) in allowed.ports {
                    for (r, (first, last)) in disjoint(&rects) {
                        out.insert(elem(
                            r,
                            Some(NpPorts {
                                protocol,
                                first,
                                last,
                            }),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// What a peer list matches in family `v6`: address ranges, and the known pods among them
/// (an egress named port is resolved on each of those).
struct Peers<'a> {
    ranges: Vec<(u128, u128)>,
    pods: Vec<(u128, &'a PodInfo)>,
}

fn peer_ranges<'a>(
    w: &'a World,
    ns_labels: &BTreeMap<&str, Labels>,
    policy: &Policy,
    peers: &[Peer],
    v6: bool,
) -> Peers<'a> {
    let fam = |a: &&IpAddr| a.is_ipv6() == v6;
    let all_pods = || {
        w.pods
            .iter()
            .flat_map(move |p| p.ips.iter().filter(fam).map(move |ip| (num(*ip), p)))
    };
    let mut out = Peers {
        ranges: Vec::new(),
        pods: Vec::new(),
    };
    if peers.is_empty() {
        out.ranges.push((0, max(v6)));
        out.pods.extend(all_pods());
        return out;
    }
    for peer in peers {
        match peer {
            Peer::Pods { .. } => {
                for (n, p) in
                    all_pods().filter(|(_, p)| selects(ns_labels, &policy.namespace, peer, p))
                {
                    out.ranges.push((n, n));
                    out.pods.push((n, p));
                }
            }
            Peer::Block { cidr, except } if cidr.is_ipv6() == v6 => {
                let (lo, hi) = net_range(cidr);
                let holes: Vec<_> = except.iter().map(net_range).collect();
                let inside = subtract(lo, hi, &holes);
                out.pods.extend(
                    all_pods().filter(|(n, _)| inside.iter().any(|(a, b)| a <= n && n <= b)),
                );
                out.ranges.extend(inside);
            }
            Peer::Block { .. } => {}
        }
    }
    out
}

/// [`World::peer_selects`] with the namespaces' labels at hand.
fn selects(
    ns_labels: &BTreeMap<&str, Labels>,
    policy_ns: &str,
    peer: &Peer,
    pod: &PodInfo,
) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let ns_ok = match namespaces {
                None => pod.namespace == policy_ns,
                Some(sel) => ns_labels
                    .get(pod.namespace.as_str())
                    .is_some_and(|l| sel.matches(l)),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }
        Peer::Block { .. } => false,
    }
}

fn allow_rule(peers: &Peers<'_>, rule: &Rule, pod: &PodInfo, dir: NpDir, allowed: &mut Allowed) {
    if rule.ports.is_empty() {
        allowed.any.extend(peers.ranges.iter().copied());
        return;
    }
    for sel in &rule.ports {
        let rects = allowed.ports.entry(sel.protocol).or_default();
        let ports = match &sel.port {
            PortSpec::All => Some((0, u16::MAX)),
            PortSpec::Range(a, b) => Some((*a, *b)),
            // Resolved on the destination: for ingress the selected pod itself.
            PortSpec::Named(name) if dir == NpDir::Ingress => {
                match pod.named_port(name, sel.protocol) {
                    Some(port) => Some((port, port)),
                    None => continue,
                }
            }
            // For egress each destination pod; an address that is no pod cannot match.
            PortSpec::Named(name) => {
                for (n, p) in &peers.pods {
                    if let Some(port) = p.named_port(name, sel.protocol) {
                        rects.push(((*n, *n), (port, port)));
                    }
                }
                None
            }
        };
        if let Some(ports) = ports {
            rects.extend(peers.ranges.iter().map(|r| (*r, ports)));
        }
    }
}
