//! The normalized, typed form of validated objects ([`crate::policy::validate`]'s output)
//! that the compiler and `ls` work on.

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use nftplan::Protocol;
use serde::{Deserialize, Serialize};

/// The label the API server puts on every namespace.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels.
pub type Labels = BTreeMap<String, String>;

/// A label selector, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    pub(crate) labels: Labels,
    pub(crate) exprs: Vec<(String, Op, Vec<String>)>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// In
    In,
    /// NotIn
    NotIn,
    /// Exists
    Exists,
    /// DoesNotExist
    DoesNotExist,
}

impl Selector {
    /// Does it select an object with `labels`? (Empty: everything.)
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, vals)| {
                let got = labels.get(k);
                match op {
                    Op::In => got.is_some_and(|g| vals.contains(g)),
                    Op::NotIn => got.is_none_or(|g| !vals.contains(g)),
                    Op::Exists => got.is_some(),
                    Op::DoesNotExist => got.is_none(),
                }
            })
    }

    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.exprs.is_empty()
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for (k, op, vals) in &self.exprs {
            parts.push(match op {
                Op::In => format!("{k} in ({})", vals.join(",")),
                Op::NotIn => format!("{k} notin ({})", vals.join(",")),
                Op::Exists => k.clone(),
                Op::DoesNotExist => format!("!{k}"),
            });
        }
        if parts.is_empty() {
            f.write_str("<all>")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// A NetworkPolicy, validated and defaulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// its namespace
    pub namespace: String,
    /// its name
    pub name: String,
    /// the pods of its namespace it applies to
    pub pod_selector: Selector,
    /// `Some` when policyTypes holds Ingress: the rules (none: nothing allowed in)
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when policyTypes holds Egress
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// peers; empty: any address
    pub peers: Vec<Peer>,
    /// ports; empty: any port of any protocol
    pub ports: Vec<PortSel>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// pods: `namespaces` None = the policy's namespace; `pods` None = all pods
    Pods {
        /// namespaceSelector
        namespaces: Option<Selector>,
        /// podSelector
        pods: Option<Selector>,
    },
    /// ipBlock
    Block {
        /// cidr
        cidr: IpNetwork,
        /// except (each strictly inside cidr)
        except: Vec<IpNetwork>,
    },
}

/// One entry of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSel {
    /// protocol (defaulted to TCP)
    pub protocol: Protocol,
    /// which ports
    pub port: PortSpec,
}

/// Ports of a [`PortSel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortSpec {
    /// every port of the protocol
    All,
    /// port..=endPort (a single port: equal)
    Range(u16, u16),
    /// a named port, resolved on the destination pod
    Named(String),
}

/// A pod as the policy store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PodInfo {
    /// namespace
    pub namespace: String,
    /// name
    pub name: String,
    /// labels (from a Pod object; none if only its attachment is known)
    pub labels: Labels,
    /// named ports: (name, protocol, port)
    pub ports: Vec<(String, Protocol, u16)>,
    /// its addresses (from its attachments)
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    /// The port called `name` with `protocol`, if any.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// A validated object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Valid {
    /// a namespace and its labels (the name label added)
    Namespace(String, Labels),
    /// a pod: namespace, name, labels, named ports
    Pod(PodInfo),
    /// a policy
    Policy(Policy),
}
