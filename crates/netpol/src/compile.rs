//! The compiler: namespaces, pods (labels, named ports, addresses) and policies in, the
//! elements of the `np_*` sets of table `inet cnirs` out. Pure.
//!
//! For each pod address and direction: if a policy of its namespace selects the pod for that
//! direction, one `np_iiso`/`np_eiso` element, and the union of what the rules of all those
//! policies allow, in two kinds of elements that never mix:
//! - address ranges (`ipBlock`s less their excepts, "any"): disjoint elements `pod .
//!   peer-range` and `pod . peer-range . protocol . port-range` ([`Elem::NpAllow`]); they do
//!   not depend on which pods exist;
//! - pod peers (selectors, and the pods an egress named port is resolved on), one address
//!   each, never merged with their neighbours ([`Elem::NpPair`]): per (pod, peer) the union of
//!   the port ranges. So a pod's ADD only adds the elements of its own addresses and those
//!   where it is the peer ([`compile_touching`]), and changes no other element.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use nftplan::{Elem, NpDir, NpPorts, Protocol};

use crate::policy::{Labels, Peer, PodInfo, Policy, PortSpec, Rule, Selector, NS_NAME_LABEL};

mod ranges;
use ranges::{addr, disjoint, max, net_range, num, subtract, union, Rect};

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

/// What one direction of one pod address allows: peer ranges for any protocol, and
/// rectangles (peer range x port range) per protocol.
#[derive(Default)]
struct Allowed {
    any: Vec<(u128, u128)>,
    ports: BTreeMap<Protocol, Vec<Rect>>,
}

/// Compile `w` to the elements of the `np_*` sets.
pub fn compile(w: &World) -> BTreeSet<Elem> {
    Compiler::new(w, None).run()
}

/// The elements of [`compile`]`(w)` that concern the addresses `ips` ([`touches`]): those of
/// the pods owning them and those naming them as a peer. What a pod's ADD or DEL changes.
/// O(policies + pods the policies naming `ips` select), not O(pods x policies).
pub fn compile_touching(w: &World, ips: &[IpAddr]) -> BTreeSet<Elem> {
    Compiler::new(w, Some(ips)).run()
}

/// Does `e` concern one of `ips` (its pod, or its peer pod)?
pub fn touches(e: &Elem, ips: &[IpAddr]) -> bool {
    match e {
        Elem::NpIsolated { pod, .. } | Elem::NpAllow { pod, .. } => ips.contains(pod),
        Elem::NpPair { pod, peer, .. } => ips.contains(pod) || ips.contains(peer),
        _ => false,
    }
}

/// The port ranges allowed per protocol towards one peer pod, or every protocol (`any`).
#[derive(Default)]
struct PairAcc {
    any: bool,
    /// (protocol, port range), in any order, repeats allowed
    ports: Vec<(Protocol, (u16, u16))>,
}

/// (direction, isolated pod address, peer pod address) -> what is allowed.
type Pairs = BTreeMap<(NpDir, IpAddr, IpAddr), PairAcc>;

struct Compiler<'a> {
    w: &'a World,
    only: Option<&'a [IpAddr]>,
    ns_labels: BTreeMap<&'a str, Labels>,
    /// Each rule's peers once per family and scope: (rule address, v6, restricted to `only`).
    peers_of: HashMap<(usize, bool, bool), Peers<'a>>,
    out: BTreeSet<Elem>,
    pairs: Pairs,
    /// The pods owning an address of `only` (all pods without it).
    cands: Vec<&'a PodInfo>,
}

impl<'a> Compiler<'a> {
    fn new(w: &'a World, only: Option<&'a [IpAddr]>) -> Self {
        let mut ns_labels = BTreeMap::new();
        for p in &w.pods {
            if !ns_labels.contains_key(p.namespace.as_str()) {
                ns_labels.insert(p.namespace.as_str(), w.ns_labels(&p.namespace));
            }
        }
        Compiler {
            w,
            only,
            ns_labels,
            peers_of: HashMap::new(),
            out: BTreeSet::new(),
            pairs: Pairs::new(),
            cands: w
                .pods
                .iter()
                .filter(|p| only.is_none_or(|o| p.ips.iter().any(|ip| o.contains(ip))))
                .collect(),
        }
    }

    fn run(mut self) -> BTreeSet<Elem> {
        let w = self.w;
        for pod in &w.pods {
            let own: Vec<IpAddr> = match self.only {
                None => pod.ips.clone(),
                Some(only) => pod
                    .ips
                    .iter()
                    .filter(|ip| only.contains(ip))
                    .copied()
                    .collect(),
            };
            if !own.is_empty() {
                self.whole_pod(pod, &own);
            }
        }
        if self.only.is_some() {
            self.as_peer();
        }
        for ((dir, pod, peer), acc) in std::mem::take(&mut self.pairs) {
            emit_pair(&mut self.out, dir, pod, peer, acc);
        }
        self.out
    }

    fn peers(&mut self, policy: &Policy, rule: &'a Rule, v6: bool, restricted: bool) -> &Peers<'a> {
        let key = (std::ptr::from_ref(rule) as usize, v6, restricted);
        let only = self.only.filter(|_| restricted);
        if self.peers_of.contains_key(&key) {
            return &self.peers_of[&key];
        }
        let pods: Vec<&'a PodInfo> = match only {
            Some(_) => self.cands.clone(),
            None => self.w.pods.iter().collect(),
        };
        let ns_labels = &self.ns_labels;
        self.peers_of
            .entry(key)
            .or_insert_with(|| peer_ranges(&pods, ns_labels, policy, &rule.peers, v6, only))
    }

    /// Every element of `pod`'s addresses `ips` (all of them, or those in `only`).
    fn whole_pod(&mut self, pod: &'a PodInfo, ips: &[IpAddr]) {
        let w = self.w;
        let mut pairs = std::mem::take(&mut self.pairs);
        for dir in [NpDir::Ingress, NpDir::Egress] {
            let selecting: Vec<_> = w.selecting(pod, dir).collect();
            if selecting.is_empty() {
                continue; // not isolated in this direction: default allow
            }
            for &ip in ips {
                let v6 = ip.is_ipv6();
                self.out.insert(Elem::NpIsolated { dir, pod: ip });
                let mut allowed = Allowed::default();
                for (policy, rules) in &selecting {
                    for rule in rules.iter() {
                        let peers = self.peers(policy, rule, v6, false);
                        allow_rule(peers, rule, pod, dir, Some(&mut allowed), &mut |peer, p| {
                            merge(&mut pairs, (dir, ip, peer), p);
                        });
                    }
                }
                emit_ranges(&mut self.out, dir, ip, allowed);
            }
        }
        self.pairs = pairs;
    }

    /// The pair elements naming an address of `only` as the peer, of the pods that do not own
    /// one: driven by the policies whose rules name them.
    fn as_peer(&mut self) {
        let w = self.w;
        let only = self.only.unwrap_or_default();
        if w.policies.is_empty() {
            return;
        }
        let fams: Vec<bool> = [false, true]
            .into_iter()
            .filter(|v6| only.iter().any(|ip| ip.is_ipv6() == *v6))
            .collect();
        // The pods of each namespace: a policy selects only in its own.
        let mut by_ns: BTreeMap<&'a str, Vec<&'a PodInfo>> = BTreeMap::new();
        for p in &w.pods {
            by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        let mut selected: Vec<(&'a str, &'a Selector, Vec<&'a PodInfo>)> = Vec::new();
        let mut pairs = std::mem::take(&mut self.pairs);
        for policy in &w.policies {
            for dir in [NpDir::Ingress, NpDir::Egress] {
                let Some(rules) = (match dir {
                    NpDir::Ingress => policy.ingress.as_ref(),
                    NpDir::Egress => policy.egress.as_ref(),
                }) else {
                    continue;
                };
                // Only the families of `only` can be named.
                for v6 in [false, true].into_iter().filter(|v6| fams.contains(v6)) {
                    let naming: Vec<&'a Rule> = rules
                        .iter()
                        .filter(|r| {
                            let p = self.peers(policy, r, v6, true);
                            !p.pods.is_empty() || !p.in_ranges.is_empty()
                        })
                        .collect();
                    if naming.is_empty() {
                        continue;
                    }
                    // Policies of one namespace often share a podSelector: matched once.
                    let at = match selected.iter().position(|(ns, sel, _)| {
                        *ns == policy.namespace.as_str() && **sel == policy.pod_selector
                    }) {
                        Some(at) => at,
                        None => {
                            let pods = by_ns
                                .get(policy.namespace.as_str())
                                .into_iter()
                                .flatten()
                                .copied()
                                .filter(|p| policy.pod_selector.matches(&p.labels))
                                .collect();
                            selected.push((&policy.namespace, &policy.pod_selector, pods));
                            selected.len() - 1
                        }
                    };
                    for &pod in &selected[at].2 {
                        for &ip in pod.ips.iter().filter(|ip| ip.is_ipv6() == v6) {
                            if only.contains(&ip) {
                                continue; // done whole
                            }
                            for rule in &naming {
                                let peers = self.peers(policy, rule, v6, true);
                                // Only the pairs: the ranges are the pod's, done whole.
                                allow_rule(peers, rule, pod, dir, None, &mut |peer, p| {
                                    merge(&mut pairs, (dir, ip, peer), p);
                                });
                            }
                        }
                    }
                }
            }
        }
        self.pairs = pairs;
    }
}

/// Add to a pair: every protocol and port (`None`), or a port range of a protocol.
fn merge(pairs: &mut Pairs, key: (NpDir, IpAddr, IpAddr), ports: Option<(Protocol, (u16, u16))>) {
    let e = pairs.entry(key).or_default();
    match ports {
        None => e.any = true,
        Some(p) if !e.any => e.ports.push(p),
        Some(_) => {}
    }
}

fn emit_ranges(out: &mut BTreeSet<Elem>, dir: NpDir, ip: IpAddr, allowed: Allowed) {
    let v6 = ip.is_ipv6();
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

fn emit_pair(out: &mut BTreeSet<Elem>, dir: NpDir, pod: IpAddr, peer: IpAddr, acc: PairAcc) {
    if acc.any {
        out.insert(Elem::NpPair {
            dir,
            pod,
            peer,
            ports: None,
        });
        return;
    }
    let mut ports = acc.ports;
    ports.sort_unstable();
    let mut rest = ports.as_slice();
    while let Some(&(protocol, _)) = rest.first() {
        let n = rest.iter().take_while(|(p, _)| *p == protocol).count();
        let (these, next) = rest.split_at(n);
        rest = next;
        let spans = union(
            these
                .iter()
                .map(|(_, (a, b))| (u128::from(*a), u128::from(*b)))
                .collect(),
        );
        for (a, b) in spans {
            let port = |p: u128| u16::try_from(p).unwrap_or(u16::MAX);
            out.insert(Elem::NpPair {
                dir,
                pod,
                peer,
                ports: Some(NpPorts {
                    protocol,
                    first: port(a),
                    last: port(b),
                }),
            });
        }
    }
}

/// What a peer list matches in family `v6`: address ranges (`ipBlock`s, "any"), the pods its
/// selectors select, and the known pods inside its ranges (an egress named port is resolved
/// on each of those). Restricted to `only`: the pods owning one of those addresses.
struct Peers<'a> {
    ranges: Vec<(u128, u128)>,
    pods: Vec<(IpAddr, &'a PodInfo)>,
    in_ranges: Vec<(IpAddr, &'a PodInfo)>,
}

fn peer_ranges<'a>(
    pods: &[&'a PodInfo],
    ns_labels: &BTreeMap<&str, Labels>,
    policy: &Policy,
    peers: &[Peer],
    v6: bool,
    only: Option<&[IpAddr]>,
) -> Peers<'a> {
    let fam = move |a: &&IpAddr| a.is_ipv6() == v6 && only.is_none_or(|o| o.contains(a));
    let all_pods = || {
        pods.iter()
            .flat_map(move |p| p.ips.iter().filter(fam).map(move |ip| (*ip, *p)))
    };
    let mut out = Peers {
        ranges: Vec::new(),
        pods: Vec::new(),
        in_ranges: Vec::new(),
    };
    if peers.is_empty() {
        out.ranges.push((0, max(v6)));
        out.in_ranges.extend(all_pods());
        return out;
    }
    for peer in peers {
        match peer {
            Peer::Pods { .. } => out
                .pods
                .extend(all_pods().filter(|(_, p)| selects(ns_labels, &policy.namespace, peer, p))),
            Peer::Block { cidr, except } if cidr.is_ipv6() == v6 => {
                let (lo, hi) = net_range(cidr);
                let holes: Vec<_> = except.iter().map(net_range).collect();
                let inside = subtract(lo, hi, &holes);
                out.in_ranges.extend(all_pods().filter(|(ip, _)| {
                    let n = num(*ip);
                    inside.iter().any(|(a, b)| *a <= n && n <= *b)
                }));
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

/// Add what `rule` allows `pod` in `dir`: the address ranges to `allowed` (when given), and the pod peers
/// returned as (peer address, what) to be merged per pair.
fn allow_rule(
    peers: &Peers<'_>,
    rule: &Rule,
    pod: &PodInfo,
    dir: NpDir,
    mut allowed: Option<&mut Allowed>,
    pair: &mut impl FnMut(IpAddr, Option<(Protocol, (u16, u16))>),
) {
    if rule.ports.is_empty() {
        if let Some(allowed) = allowed {
            allowed.any.extend(peers.ranges.iter().copied());
        }
        for (ip, _) in &peers.pods {
            pair(*ip, None);
        }
        return;
    }
    for sel in &rule.ports {
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
                for (ip, p) in peers.pods.iter().chain(&peers.in_ranges) {
                    if let Some(port) = p.named_port(name, sel.protocol) {
                        pair(*ip, Some((sel.protocol, (port, port))));
                    }
                }
                None
            }
        };
        if let Some(ports) = ports {
            if let Some(allowed) = allowed.as_deref_mut() {
                let rects = allowed.ports.entry(sel.protocol).or_default();
                rects.extend(peers.ranges.iter().map(|r| (*r, ports)));
            }
            for (ip, _) in &peers.pods {
                pair(*ip, Some((sel.protocol, ports)));
            }
        }
    }
}
