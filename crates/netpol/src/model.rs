//! The Kubernetes objects we take, as the API has them (only the fields we use; a
//! NetworkPolicy's spec refuses fields it does not know, as the API server's strict field
//! validation does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace` (`default` when absent, for namespaced kinds)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.labels`
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `kind: Namespace` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// metadata
    pub metadata: ObjectMeta,
}

/// `kind: Pod` (v1): labels and the containers' ports (for named ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// metadata
    pub metadata: ObjectMeta,
    /// spec
    #[serde(default)]
    pub spec: PodSpec,
}

/// `spec` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// containers (only their ports are kept)
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// One container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// ports
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

/// `containers[].ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// IANA_SVC_NAME, what a named port in a policy refers to
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// the port
    pub container_port: i64,
    /// TCP (default), UDP or SCTP
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `kind: NetworkPolicy` (networking.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// metadata
    pub metadata: ObjectMeta,
    /// spec
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// the pods of the policy's namespace it applies to (empty: all of them)
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// ingress rules (`None` and `[]` differ only for policyTypes defaulting: both allow
    /// nothing)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// egress rules
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// `Ingress`, `Egress` (defaulted: `Ingress`, plus `Egress` when there are egress rules)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
}

/// `spec.ingress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// sources (absent or empty: any)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// ports (absent or empty: any port of any protocol)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

/// `spec.egress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// destinations (absent or empty: any)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// ports
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

/// `from[]` / `to[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// pods (of the policy's namespace, or of the namespaces selected)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// namespaces
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// addresses
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// the block
    #[serde(default)]
    pub cidr: String,
    /// parts of it not in this peer
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// `ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// TCP (default), UDP, SCTP
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// a number or a named port (absent: every port of the protocol)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// last port of a range starting at `port`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// A port: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// a number
    Int(i64),
    /// a name
    Str(String),
}

/// `metav1.LabelSelector`. An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// key = value, all of them
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// requirements, all of them
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// `matchExpressions[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// label key
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist
    pub operator: String,
    /// values (In/NotIn: at least one; Exists/DoesNotExist: none)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One object of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// a Namespace
    Namespace(Namespace),
    /// a Pod
    Pod(Pod),
    /// a NetworkPolicy
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    /// `Kind/namespace/name` (`Namespace/name`).
    pub fn key(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace/{}", n.metadata.name),
            Object::Pod(p) => format!(
                "Pod/{}/{}",
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name
            ),
            Object::NetworkPolicy(p) => format!(
                "NetworkPolicy/{}/{}",
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name
            ),
        }
    }
}
