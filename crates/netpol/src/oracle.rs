//! The truth-table oracle: the v1 spec read directly over the raw objects, sharing no code
//! with the compiler (`compile.rs`) or the validation (`policy.rs`). Used by this crate's
//! truth tables and, behind the `oracle` feature, by the conformance tests across hosts.
//! Give it valid objects (as `cnirs policy apply` takes them): a CIDR that does not parse
//! matches nothing, an unknown selector operator nothing.

use std::{collections::BTreeMap, net::IpAddr};

use crate::model::*;

/// A pod as the oracle sees it: its namespace, labels, container ports and address.
#[derive(Debug, Clone)]
pub struct OPod {
    /// namespace
    pub ns: String,
    /// labels
    pub labels: BTreeMap<String, String>,
    /// container ports (named ports)
    pub ports: Vec<ContainerPort>,
    /// its address
    pub ip: IpAddr,
}

/// The world the oracle judges.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    /// namespace -> its labels (as applied)
    pub ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// every pod with an address
    pub pods: Vec<OPod>,
    /// every policy (namespace set)
    pub policies: Vec<NetworkPolicy>,
}

fn sel_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in &s.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in &s.match_expressions {
        let v = labels.get(&r.key);
        let ok = match r.operator.as_str() {
            "In" => v.is_some_and(|v| r.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn cidr_has(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<ipnetwork::IpNetwork>()
        .is_ok_and(|net| net.contains(ip))
}

impl Oracle {
    /// From the objects as applied (later ones replace earlier ones of the same key) and
    /// where each pod is attached: (namespace, name, address). A pod attached without a Pod
    /// object has no labels and no ports.
    pub fn from_objects(objs: &[Object], at: &[(String, String, IpAddr)]) -> Oracle {
        let mut o = Oracle::default();
        let mut pods: BTreeMap<(String, String), Pod> = BTreeMap::new();
        let mut policies: BTreeMap<(String, String), NetworkPolicy> = BTreeMap::new();
        for obj in objs {
            match obj {
                Object::Namespace(n) => {
                    o.ns_labels
                        .insert(n.metadata.name.clone(), n.metadata.labels.clone());
                }
                Object::Pod(p) => {
                    let ns = p.metadata.namespace.clone().unwrap_or("default".into());
                    pods.insert((ns, p.metadata.name.clone()), p.clone());
                }
                Object::NetworkPolicy(p) => {
                    let mut p = p.clone();
                    let ns = p.metadata.namespace.get_or_insert("default".into()).clone();
                    policies.insert((ns, p.metadata.name.clone()), p);
                }
            }
        }
        o.policies = policies.into_values().collect();
        for (ns, name, ip) in at {
            let obj = pods.get(&(ns.clone(), name.clone()));
            o.pods.push(OPod {
                ns: ns.clone(),
                labels: obj.map(|p| p.metadata.labels.clone()).unwrap_or_default(),
                ports: obj
                    .map(|p| {
                        p.spec
                            .containers
                            .iter()
                            .flat_map(|c| c.ports.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                ip: *ip,
            });
        }
        o
    }

    /// The pod with address `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&OPod> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Whether a policy of its namespace selects the pod at `ip` for `Ingress` or `Egress`
    /// (`dir`): then only what some rule allows passes in that direction.
    pub fn isolated(&self, ip: IpAddr, dir: &str) -> bool {
        self.pod_at(ip).is_some_and(|pod| {
            self.policies.iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(pod.ns.as_str())
                    && sel_matches(&p.spec.pod_selector, &pod.labels)
                    && Self::types(p).iter().any(|t| t == dir)
            })
        })
    }

    fn types(p: &NetworkPolicy) -> Vec<String> {
        match &p.spec.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            _ => {
                let mut t = vec!["Ingress".to_string()];
                if p.spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push("Egress".into());
                }
                t
            }
        }
    }

    fn peer_has(&self, policy_ns: &str, peer: &Peer, ip: IpAddr) -> bool {
        if let Some(b) = &peer.ip_block {
            return cidr_has(&b.cidr, ip) && !b.except.iter().flatten().any(|x| cidr_has(x, ip));
        }
        let Some(pod) = self.pod_at(ip) else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            None => pod.ns == policy_ns,
            Some(s) => {
                let mut l = self.ns_labels.get(&pod.ns).cloned().unwrap_or_default();
                l.insert("kubernetes.io/metadata.name".into(), pod.ns.clone());
                sel_matches(s, &l)
            }
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| sel_matches(s, &pod.labels))
    }

    fn port_ok(
        ports: &Option<Vec<PolicyPort>>,
        dst: IpAddr,
        me: &Oracle,
        proto: &str,
        port: u16,
    ) -> bool {
        let Some(list) = ports.as_ref().filter(|l| !l.is_empty()) else {
            return true;
        };
        list.iter().any(|pp| {
            if pp.protocol.as_deref().unwrap_or("TCP") != proto {
                return false;
            }
            match &pp.port {
                None => true,
                Some(IntOrString::Int(p)) => {
                    let end = pp.end_port.unwrap_or(*p);
                    *p <= i64::from(port) && i64::from(port) <= end
                }
                Some(IntOrString::Str(name)) => me.pod_at(dst).is_some_and(|d| {
                    d.ports.iter().any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == proto
                            && cp.container_port == i64::from(port)
                    })
                }),
            }
        })
    }

    /// Whether a new connection `src -> dst` on `proto` (TCP, UDP, SCTP) and `port` passes:
    /// the source's egress and the destination's ingress both allow it.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: &str, port: u16) -> bool {
        // Egress of the source pod.
        if let Some(sp) = self.pod_at(src) {
            let sel: Vec<&NetworkPolicy> = self
                .policies
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(sp.ns.as_str())
                        && sel_matches(&p.spec.pod_selector, &sp.labels)
                        && Self::types(p).iter().any(|t| t == "Egress")
                })
                .collect();
            if !sel.is_empty() {
                let ok = sel.iter().any(|p| {
                    p.spec.egress.iter().flatten().any(|r| {
                        let peer_ok = match &r.to {
                            None => true,
                            Some(v) if v.is_empty() => true,
                            Some(v) => v.iter().any(|peer| self.peer_has(&sp.ns, peer, dst)),
                        };
                        peer_ok && Self::port_ok(&r.ports, dst, self, proto, port)
                    })
                });
                if !ok {
                    return false;
                }
            }
        }
        // Ingress of the destination pod.
        if let Some(dp) = self.pod_at(dst) {
            let sel: Vec<&NetworkPolicy> = self
                .policies
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(dp.ns.as_str())
                        && sel_matches(&p.spec.pod_selector, &dp.labels)
                        && Self::types(p).iter().any(|t| t == "Ingress")
                })
                .collect();
            if !sel.is_empty() {
                return sel.iter().any(|p| {
                    p.spec.ingress.iter().flatten().any(|r| {
                        let peer_ok = match &r.from {
                            None => true,
                            Some(v) if v.is_empty() => true,
                            Some(v) => v.iter().any(|peer| self.peer_has(&dp.ns, peer, src)),
                        };
                        peer_ok && Self::port_ok(&r.ports, dst, self, proto, port)
                    })
                });
            }
        }
        true
    }
}
