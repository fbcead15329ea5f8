//! Validation as the API server does it (`pkg/apis/networking/validation`, the v1 defaults)
//! and the normalized, typed form the compiler and `ls` work on.

use ipnetwork::IpNetwork;
use nftplan::Protocol;

use crate::{
    model::{self, IntOrString, LabelSelector, Object},
    PolicyError,
};

pub use crate::typed::*;

/// An ingress or egress rule as given: its peers and ports.
type RawRule<'a> = (
    Option<&'a Vec<model::Peer>>,
    Option<&'a Vec<model::PolicyPort>>,
);

/// Collects `field: message` errors of one object.
struct Errs {
    object: String,
    errs: Vec<String>,
}

impl Errs {
    fn push(&mut self, field: &str, msg: impl Into<String>) {
        self.errs.push(format!("{field}: {}", msg.into()));
    }
    fn required(&mut self, field: &str, detail: &str) {
        self.push(field, format!("Required value{}", with_detail(detail)));
    }
    fn invalid(&mut self, field: &str, value: impl std::fmt::Debug, detail: &str) {
        self.push(field, format!("Invalid value: {value:?}: {detail}"));
    }
    fn unsupported(&mut self, field: &str, value: &str, supported: &[&str]) {
        let s: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            field,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                s.join(", ")
            ),
        );
    }
    fn finish<T>(self, ok: T) -> Result<T, PolicyError> {
        if self.errs.is_empty() {
            Ok(ok)
        } else {
            Err(PolicyError::Invalid {
                object: self.object,
                errors: self.errs,
            })
        }
    }
}

fn with_detail(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// Validate and default an object as the API server would before storing it.
pub fn validate(obj: &Object) -> Result<Valid, PolicyError> {
    let mut e = Errs {
        object: obj.key(),
        errs: Vec::new(),
    };
    match obj {
        Object::Namespace(n) => {
            check_name(&mut e, &n.metadata.name, true);
            check_labels(&mut e, "metadata.labels", &n.metadata.labels);
            let mut labels = n.metadata.labels.clone();
            labels.insert(NS_NAME_LABEL.to_owned(), n.metadata.name.clone());
            e.finish(Valid::Namespace(n.metadata.name.clone(), labels))
        }
        Object::Pod(p) => {
            let namespace = namespace_of(&mut e, &p.metadata);
            check_name(&mut e, &p.metadata.name, false);
            check_labels(&mut e, "metadata.labels", &p.metadata.labels);
            let mut ports = Vec::new();
            for (ci, c) in p.spec.containers.iter().enumerate() {
                for (pi, cp) in c.ports.iter().enumerate() {
                    let path = format!("spec.containers[{ci}].ports[{pi}]");
                    let proto = protocol(&mut e, &format!("{path}.protocol"), &cp.protocol);
                    let port = match u16::try_from(cp.container_port) {
                        Ok(v) if v > 0 => v,
                        _ => {
                            e.invalid(
                                &format!("{path}.containerPort"),
                                cp.container_port,
                                "must be between 1 and 65535, inclusive",
                            );
                            0
                        }
                    };
                    if let Some(name) = &cp.name {
                        if let Err(msg) = port_name(name) {
                            e.invalid(&format!("{path}.name"), name, msg);
                        }
                        ports.push((name.clone(), proto, port));
                    }
                }
            }
            e.finish(Valid::Pod(PodInfo {
                namespace,
                name: p.metadata.name.clone(),
                labels: p.metadata.labels.clone(),
                ports,
                ips: Vec::new(),
            }))
        }
        Object::NetworkPolicy(np) => {
            let namespace = namespace_of(&mut e, &np.metadata);
            check_name(&mut e, &np.metadata.name, false);
            let spec = &np.spec;
            let pod_selector = selector(&mut e, "spec.podSelector", &spec.pod_selector);
            let mut rules = |dir: &str, list: Vec<RawRule<'_>>, peer_field: &str| {
                list.into_iter()
                    .enumerate()
                    .map(|(i, (peers, ports))| {
                        let path = format!("spec.{dir}[{i}]");
                        Rule {
                            peers: peers
                                .into_iter()
                                .flatten()
                                .enumerate()
                                .filter_map(|(j, p)| {
                                    peer(&mut e, &format!("{path}.{peer_field}[{j}]"), p)
                                })
                                .collect(),
                            ports: ports
                                .into_iter()
                                .flatten()
                                .enumerate()
                                .filter_map(|(j, p)| {
                                    policy_port(&mut e, &format!("{path}.ports[{j}]"), p)
                                })
                                .collect(),
                        }
                    })
                    .collect::<Vec<_>>()
            };
            let ingress = rules(
                "ingress",
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                "from",
            );
            let egress = rules(
                "egress",
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
                "to",
            );
            // Defaulting: no policyTypes = Ingress, plus Egress when there are egress rules.
            let types: Vec<String> = match &spec.policy_types {
                Some(t) if !t.is_empty() => t.clone(),
                _ => {
                    let mut t = vec!["Ingress".to_owned()];
                    if spec.egress.as_ref().is_some_and(|r| !r.is_empty()) {
                        t.push("Egress".to_owned());
                    }
                    t
                }
            };
            if types.len() > 2 {
                e.invalid(
                    "spec.policyTypes",
                    &types,
                    "may not specify more than two policyTypes",
                );
            }
            for (i, t) in types.iter().enumerate() {
                if t != "Ingress" && t != "Egress" {
                    e.unsupported(&format!("spec.policyTypes[{i}]"), t, &["Ingress", "Egress"]);
                }
            }
            let has = |t: &str| types.iter().any(|x| x == t);
            let policy = Policy {
                namespace,
                name: np.metadata.name.clone(),
                pod_selector,
                ingress: has("Ingress").then_some(ingress),
                egress: has("Egress").then_some(egress),
            };
            e.finish(Valid::Policy(policy))
        }
    }
}

fn namespace_of(e: &mut Errs, m: &model::ObjectMeta) -> String {
    let ns = m.namespace.clone().unwrap_or_else(|| "default".to_owned());
    if let Err(msg) = dns_label(&ns) {
        e.invalid("metadata.namespace", &ns, msg);
    }
    ns
}

fn check_name(e: &mut Errs, name: &str, label: bool) {
    if name.is_empty() {
        e.required("metadata.name", "name or generateName is required");
        return;
    }
    let r = if label {
        dns_label(name)
    } else {
        dns_subdomain(name)
    };
    if let Err(msg) = r {
        e.invalid("metadata.name", name, msg);
    }
}

fn dns_label(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then_some(()).ok_or(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character",
    )
}

fn dns_subdomain(s: &str) -> Result<(), &'static str> {
    let ok = s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok());
    ok.then_some(()).ok_or(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
         '-' or '.', and must start and end with an alphanumeric character",
    )
}

/// A label name or value part: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63.
fn label_part(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.first().is_none_or(u8::is_ascii_alphanumeric)
        && b.last().is_none_or(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    !name.is_empty() && label_part(name) && prefix.is_none_or(|p| dns_subdomain(p).is_ok())
}

fn check_labels(e: &mut Errs, field: &str, labels: &Labels) {
    for (k, v) in labels {
        if !label_key(k) {
            e.invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
        }
        if !label_part(v) {
            e.invalid(&format!("{field}.{k}"), v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
        }
    }
}

fn selector(e: &mut Errs, field: &str, s: &LabelSelector) -> Selector {
    check_labels(e, &format!("{field}.matchLabels"), &s.match_labels);
    let mut exprs = Vec::new();
    for (i, r) in s.match_expressions.iter().enumerate() {
        let path = format!("{field}.matchExpressions[{i}]");
        if !label_key(&r.key) {
            e.invalid(&format!("{path}.key"), &r.key, "not a valid label key");
        }
        let op = match r.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            o => {
                e.invalid(
                    &format!("{path}.operator"),
                    o,
                    "not a valid selector operator",
                );
                continue;
            }
        };
        match op {
            Op::In | Op::NotIn if r.values.is_empty() => e.required(
                &format!("{path}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Op::Exists | Op::DoesNotExist if !r.values.is_empty() => e.push(
                &format!("{path}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            _ => {}
        }
        exprs.push((r.key.clone(), op, r.values.clone()));
    }
    Selector {
        labels: s.match_labels.clone(),
        exprs,
    }
}

fn peer(e: &mut Errs, path: &str, p: &model::Peer) -> Option<Peer> {
    let n = usize::from(p.pod_selector.is_some())
        + usize::from(p.namespace_selector.is_some())
        + usize::from(p.ip_block.is_some());
    if n == 0 {
        e.required(path, "must specify a peer");
        return None;
    }
    if n > 1 && p.ip_block.is_some() {
        e.push(
            path,
            "Forbidden: may not specify both ipBlock and another peer",
        );
        return None;
    }
    if let Some(b) = &p.ip_block {
        let field = format!("{path}.ipBlock");
        if b.cidr.is_empty() {
            e.required(&format!("{field}.cidr"), "");
            return None;
        }
        let Ok(cidr) = b.cidr.parse::<IpNetwork>() else {
            e.invalid(
                &format!("{field}.cidr"),
                &b.cidr,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            );
            return None;
        };
        let mut except = Vec::new();
        for (i, x) in b.except.iter().flatten().enumerate() {
            let xf = format!("{field}.except[{i}]");
            match x.parse::<IpNetwork>() {
                Ok(n)
                    if n.is_ipv4() == cidr.is_ipv4()
                        && cidr.contains(n.network())
                        && n.prefix() > cidr.prefix() =>
                {
                    except.push(n)
                }
                Ok(_) => e.invalid(&xf, x, "must be a strict subset of `cidr`"),
                Err(_) => e.invalid(
                    &xf,
                    x,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ),
            }
        }
        let cidr = IpNetwork::new(cidr.network(), cidr.prefix()).unwrap_or(cidr);
        return Some(Peer::Block { cidr, except });
    }
    Some(Peer::Pods {
        namespaces: p
            .namespace_selector
            .as_ref()
            .map(|s| selector(e, &format!("{path}.namespaceSelector"), s)),
        pods: p
            .pod_selector
            .as_ref()
            .map(|s| selector(e, &format!("{path}.podSelector"), s)),
    })
}

fn protocol(e: &mut Errs, field: &str, p: &Option<String>) -> Protocol {
    match p.as_deref() {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            e.unsupported(field, other, &["SCTP", "TCP", "UDP"]);
            Protocol::Tcp
        }
    }
}

fn port_num(e: &mut Errs, field: &str, v: i64) -> Option<u16> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            e.invalid(field, v, "must be between 1 and 65535, inclusive");
            None
        }
    }
}

fn policy_port(e: &mut Errs, path: &str, p: &model::PolicyPort) -> Option<PortSel> {
    let protocol = protocol(e, &format!("{path}.protocol"), &p.protocol);
    let end_field = format!("{path}.endPort");
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSpec::All,
        (None, Some(end)) => {
            e.invalid(
                &end_field,
                end,
                "may not be specified when `port` is not specified",
            );
            return None;
        }
        (Some(IntOrString::Str(name)), end) => {
            if let Some(end) = end {
                e.invalid(
                    &end_field,
                    end,
                    "may not be specified when `port` is non-numeric",
                );
            }
            if let Err(msg) = port_name(name) {
                e.invalid(&format!("{path}.port"), name, msg);
            }
            PortSpec::Named(name.clone())
        }
        (Some(IntOrString::Int(v)), end) => {
            let start = port_num(e, &format!("{path}.port"), *v)?;
            let last = match end {
                None => start,
                Some(end) => {
                    let last = port_num(e, &end_field, end)?;
                    if last < start {
                        e.invalid(&end_field, end, "must be greater than or equal to `port`");
                        return None;
                    }
                    last
                }
            };
            PortSpec::Range(start, last)
        }
    };
    Some(PortSel { protocol, port })
}

/// IANA_SVC_NAME: at most 15 of `[a-z0-9-]`, at least one letter, no `-` at either end and
/// no `--`.
fn port_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err("must not begin or end with a hyphen, nor contain adjacent hyphens");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    Ok(())
}
