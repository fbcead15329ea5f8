//! Unit, golden and truth-table tests. The truth tables compare, cell by cell, the verdict
//! of the compiled elements (as the FakeNft holds them after the store applied them, read
//! through a model of the `netpol` chains) with an oracle written apart from the compiler:
//! a direct reading of the v1 spec over the raw objects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    clippy::type_complexity
)]

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use nftplan::{Elem, FakeNft, Firewall, NpDir};

use crate::{
    model::*,
    oracle::{OPod, Oracle},
    parse,
    policy::{validate, Valid},
    store::Store,
    PodAttachment, PolicyError,
};

// ---------------------------------------------------------------------------------------
// parsing and validation

const PODS_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
---
"#;

#[test]
fn yaml_streams_lists_and_json_parse() {
    let objs = parse(PODS_YAML).unwrap();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[1].key(), "Pod/x/a");
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
         "metadata":{"name":"deny","namespace":"x"},"spec":{"podSelector":{}}},
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}}]}"#;
    let objs = parse(list).unwrap();
    assert_eq!(
        objs.iter().map(Object::key).collect::<Vec<_>>(),
        ["NetworkPolicy/x/deny", "Namespace/y"]
    );
    for (bad, want) in [
        ("kind: Service\napiVersion: v1\n", "kind \"Service\""),
        ("kind: NetworkPolicy\napiVersion: v1\nmetadata: {name: a}\n", "apiVersion"),
        (
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\nspec: {podselector: {}}\n",
            "unknown field `podselector`",
        ),
        ("a: [\n", "document 1"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

fn policy(yaml_spec: &str) -> Result<Valid, PolicyError> {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{yaml_spec}"
    );
    validate(&parse(&text)?[0])
}

#[test]
fn validation_defaults_and_refuses_as_the_api_server() {
    // policyTypes: Ingress by default, Egress too when there are egress rules.
    let Valid::Policy(p) = policy("  podSelector: {}\n").unwrap() else {
        panic!()
    };
    assert!(p.ingress.is_some() && p.egress.is_none());
    let Valid::Policy(p) = policy("  podSelector: {}\n  egress: [{}]\n").unwrap() else {
        panic!()
    };
    assert!(p.ingress.is_some() && p.egress.is_some());
    // An explicit Egress only: ingress rules are ignored.
    let Valid::Policy(p) =
        policy("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n").unwrap()
    else {
        panic!()
    };
    assert!(p.ingress.is_none() && p.egress.as_ref().unwrap().is_empty());
    // protocol defaults to TCP.
    let Valid::Policy(p) =
        policy("  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        p.ingress.unwrap()[0].ports[0].protocol,
        nftplan::Protocol::Tcp
    );
    for (spec, want) in [
        ("  podSelector: {}\n  ingress: [{from: [{}]}]\n", "spec.ingress[0].from[0]: Required value: must specify a peer"),
        ("  podSelector: {}\n  egress: [{to: [{}]}]\n", "spec.egress[0].to[0]: Required value: must specify a peer"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 90}]}]\n", "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n", "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`"),
        ("  podSelector: {}\n  ingress: [{ports: [{endPort: 80}]}]\n", "endPort: Invalid value: 80: may not be specified when `port` is not specified"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n", "spec.ingress[0].ports[0].port: Invalid value: 0"),
        ("  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n", "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\""),
        ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]\n", "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`"),
        ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]\n", "except[0]: Invalid value: \"10.0.0.0/16\": must be a strict subset"),
        ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n", "ipBlock.cidr: Invalid value"),
        ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n", "Forbidden: may not specify both ipBlock and another peer"),
        ("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n", "spec.podSelector.matchExpressions[0].values: Required value"),
        ("  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}\n", "values: Forbidden"),
        ("  podSelector: {matchExpressions: [{key: a, operator: Has}]}\n", "not a valid selector operator"),
        ("  podSelector: {}\n  policyTypes: [Ingress, Sideways]\n", "spec.policyTypes[1]: Unsupported value: \"Sideways\""),
        ("  podSelector: {}\n  ingress: [{ports: [{port: Not_A_Name}]}]\n", "spec.ingress[0].ports[0].port: Invalid value"),
    ] {
        let e = policy(spec).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: got {e}");
        assert!(e.starts_with("NetworkPolicy/x/p is invalid"), "{e}");
    }
    // A namespace gets its name label, as the API server adds it.
    let Valid::Namespace(_, labels) = validate(&parse(PODS_YAML).unwrap()[0]).unwrap() else {
        panic!()
    };
    assert_eq!(labels["kubernetes.io/metadata.name"], "x");
}

// ---------------------------------------------------------------------------------------
// the world of the truth tables: namespaces x, y, z; pods a, b, c in each

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// An address that is no pod (inside the pods' /16) and one outside it.
const STRANGERS: [&str; 2] = ["10.0.9.9", "192.168.1.1"];
const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    format!("10.0.{}.{}", ns + 1, pod + 1).parse().unwrap()
}

/// Pods serve 80 and 81 over TCP, UDP and SCTP, named `serve-80-tcp` ... Pod `c` of each
/// namespace serves its `serve-81-*` names on 80 instead (a named port resolved on the
/// wrong pod shows).
/// The attachment of container `id`'s eth0 to network "net" as pod `ns`/`name` at `ip`.
fn attachment(id: &str, ns: &str, name: &str, ip: IpAddr) -> PodAttachment {
    PodAttachment {
        network: "net".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
        namespace: ns.into(),
        name: name.into(),
        ips: vec![ip],
    }
}

/// The attachment of pod `PODS[pod]` of `NSS[ns]` (container `c-NS-POD`) at [`pod_ip`].
fn pod_attachment(ns: usize, pod: usize) -> PodAttachment {
    attachment(
        &format!("c-{ns}-{pod}"),
        NSS[ns],
        PODS[pod],
        pod_ip(ns, pod),
    )
}

fn pod_obj(ns: usize, pod: usize, extra: &[(&str, &str)]) -> Pod {
    let mut labels: BTreeMap<String, String> = [("pod".to_owned(), PODS[pod].to_owned())].into();
    for (k, v) in extra {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut ports = Vec::new();
    for port in [80, 81] {
        for proto in PROTOS {
            let target = if pod == 2 && port == 81 { 80 } else { port };
            ports.push(ContainerPort {
                name: Some(format!("serve-{port}-{}", proto.to_lowercase())),
                container_port: target,
                protocol: Some(proto.to_owned()),
            });
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: PODS[pod].to_owned(),
            namespace: Some(NSS[ns].to_owned()),
            labels,
        },
        spec: PodSpec {
            containers: vec![Container { ports }],
        },
    }
}

fn namespace_obj(ns: usize) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: NSS[ns].to_owned(),
            namespace: None,
            labels: [("ns".to_owned(), NSS[ns].to_owned())].into(),
        },
    }
}

/// A store over a FakeNft, with the namespaces, the pods (objects and attachments).
struct Harness {
    _dir: tempfile::TempDir,
    nft: Arc<FakeNft>,
    store: Store,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nft = FakeNft::new();
        let fw = Firewall::with_backend(dir.path().join("netns-1"), Box::new(nft.clone()));
        let store = Store::with(dir.path().join("policy"), fw);
        let mut objs: Vec<Object> = (0..3)
            .map(|n| Object::Namespace(namespace_obj(n)))
            .collect();
        for n in 0..3 {
            for p in 0..3 {
                objs.push(Object::Pod(pod_obj(n, p, &[])));
            }
        }
        store.apply(&objs).unwrap();
        for n in 0..3 {
            for p in 0..3 {
                store.attach(pod_attachment(n, p)).unwrap();
            }
        }
        Harness {
            _dir: dir,
            nft,
            store,
        }
    }

    fn elems(&self) -> Vec<Elem> {
        self.nft
            .elems()
            .into_iter()
            .filter(Elem::is_netpol)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// the model of the chains `netpol`, `np_egress`, `np_ingress` over the kernel's elements

fn n(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn chain_allows(elems: &[Elem], src: IpAddr, dst: IpAddr, proto: &str, port: u16) -> bool {
    let proto = nftplan::Protocol::parse(proto).unwrap();
    let pass = |dir: NpDir, pod: IpAddr, peer: IpAddr| {
        if !elems.contains(&Elem::NpIsolated { dir, pod }) {
            return true;
        }
        elems.iter().any(|e| match e {
            Elem::NpAllow {
                dir: d,
                pod: p,
                first,
                last,
                ports,
            } => {
                *d == dir
                    && *p == pod
                    && n(*first) <= n(peer)
                    && n(peer) <= n(*last)
                    && ports.is_none_or(|pp| {
                        pp.protocol == proto && pp.first <= port && port <= pp.last
                    })
            }
            Elem::NpPair {
                dir: d,
                pod: p,
                peer: q,
                ports,
            } => {
                *d == dir
                    && *p == pod
                    && *q == peer
                    && ports.is_none_or(|pp| {
                        pp.protocol == proto && pp.first <= port && port <= pp.last
                    })
            }
            _ => false,
        })
    };
    pass(NpDir::Egress, src, dst) && pass(NpDir::Ingress, dst, src)
}

/// The oracle of what the store holds.
fn oracle(h: &Harness) -> Oracle {
    let o = h.store.objects().unwrap();
    let atts = h.store.attachments().unwrap();
    let pods = atts
        .values()
        .map(|a| {
            let obj = o.pods.get(&format!("{}/{}", a.namespace, a.name)).unwrap();
            OPod {
                ns: a.namespace.clone(),
                labels: obj.metadata.labels.clone(),
                ports: obj
                    .spec
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.clone())
                    .collect(),
                ip: a.ips[0],
            }
        })
        .collect();
    Oracle {
        ns_labels: o
            .namespaces
            .values()
            .map(|n| (n.metadata.name.clone(), n.metadata.labels.clone()))
            .collect(),
        pods,
        policies: o
            .policies
            .values()
            .cloned()
            .map(|mut p| {
                p.metadata.namespace.get_or_insert_with(|| "default".into());
                p
            })
            .collect(),
    }
}

/// Every cell: sources and destinations among the 9 pods and the strangers (not stranger to
/// stranger), TCP/UDP/SCTP, ports 80 and 81. Returns the number of cells and of allowed
/// ones; panics naming the first cells that differ.
fn truth_table(h: &Harness, case: &str) -> (usize, usize) {
    let elems = h.elems();
    let o = oracle(h);
    let mut ends: Vec<IpAddr> = (0..3)
        .flat_map(|n| (0..3).map(move |p| pod_ip(n, p)))
        .collect();
    ends.extend(STRANGERS.iter().map(|s| s.parse::<IpAddr>().unwrap()));
    let (mut cells, mut allowed, mut diffs) = (0, 0, Vec::new());
    for &src in &ends {
        for &dst in &ends {
            if src == dst || (o.pod_at(src).is_none() && o.pod_at(dst).is_none()) {
                continue;
            }
            for proto in PROTOS {
                for port in [80, 81] {
                    cells += 1;
                    let want = o.allows(src, dst, proto, port);
                    allowed += usize::from(want);
                    if chain_allows(&elems, src, dst, proto, port) != want {
                        diffs.push(format!("{src} -> {dst} {proto}/{port}: oracle {want}"));
                    }
                }
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{case}: {} of {cells} cells differ, e.g. {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(8)]
    );
    (cells, allowed)
}

fn apply_yaml(h: &Harness, yaml: &str) {
    h.store.apply(&parse(yaml).unwrap()).unwrap();
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// The upstream e2e netpol cases (test/e2e/network/netpol/network_policy.go), each alone
/// on the x/y/z world, and the counts of allowed cells they give.
fn upstream_cases() -> Vec<(&'static str, String)> {
    vec![
        ("no policy", String::new()),
        ("default-deny-ingress", np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n")),
        ("default-deny-all", np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")),
        ("egress deny on the client", np("x", "deny", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n")),
        ("ingress from a pod", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")),
        ("ingress from a namespace", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]}]\n")),
        ("AND of selectors", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n")),
        ("OR of selectors", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n")),
        ("NotIn and DoesNotExist", np("x", "p", "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}, namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}}]}]\n")),
        ("ports", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]\n")),
        ("stacked policies", np("x", "p1", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}], from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n") + &np("x", "p2", "  podSelector: {}\n  ingress: [{ports: [{port: 81, protocol: UDP}]}]\n")),
        ("named port ingress", np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]}]\n")),
        ("named port egress", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-81-tcp}]}]\n")),
        ("named port egress to a block", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}], ports: [{port: serve-81-udp, protocol: UDP}]}]\n")),
        ("ipBlock with except", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24, 10.0.3.2/32]}}]}]\n")),
        ("except scoped to its peer", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n")),
        ("egress ipBlock", np("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 192.168.0.0/16}}, {podSelector: {}}]}]\n")),
        ("protocol without port", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP}]}]\n")),
        ("endPort", np("x", "p", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 79, endPort: 80}, {port: 81, endPort: 81, protocol: UDP}]}]\n")),
        ("SCTP not TCP", np("x", "p", "  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: SCTP}]}]\n")),
        ("both directions, two namespaces", np("x", "p", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{namespaceSelector: {}}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]\n") + &np("y", "q", "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {}}]}]\n")),
        ("allow all ingress", np("x", "p", "  podSelector: {}\n  ingress: [{}]\n")),
        ("allow all egress, deny ingress", np("x", "p", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress: [{}]\n")),
    ]
}

#[test]
fn upstream_cases_match_the_oracle_cell_by_cell() {
    let mut counts = Vec::new();
    for (case, yaml) in upstream_cases() {
        let h = Harness::new();
        if !yaml.is_empty() {
            apply_yaml(&h, &yaml);
        }
        let (cells, allowed) = truth_table(&h, case);
        counts.push((case, allowed));
        assert_eq!(cells, 11 * 10 * 6 - 2 * 6, "{case}");
    }
    // The cases must not all be "allow everything": the policies bite.
    let none = counts[0].1;
    assert_eq!(none, 648, "no policy: every cell allowed");
    for (case, allowed) in &counts[1..] {
        if *case == "allow all ingress" {
            assert_eq!(
                *allowed, none,
                "{case}: isolated, then everything allowed back"
            );
        } else {
            assert!(*allowed < none, "{case}: nothing denied ({allowed})");
        }
    }
}

#[test]
fn deleting_a_policy_and_relabelling_a_pod_take_effect() {
    let h = Harness::new();
    let deny = np("x", "deny", "  podSelector: {matchLabels: {role: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n");
    apply_yaml(&h, &deny);
    let (a, b) = (pod_ip(0, 0), pod_ip(0, 1));
    let c = pod_ip(0, 2);
    assert!(
        chain_allows(&h.elems(), c, a, "TCP", 80),
        "a not selected yet"
    );
    // Label update: a becomes role=db, now isolated; b allowed, c not.
    h.store
        .apply(&[Object::Pod(pod_obj(0, 0, &[("role", "db")]))])
        .unwrap();
    truth_table(&h, "relabelled");
    assert!(!chain_allows(&h.elems(), c, a, "TCP", 80));
    assert!(chain_allows(&h.elems(), b, a, "TCP", 80));
    // Delete: back to allow, and no netpol element remains.
    h.store.delete(&parse(&deny).unwrap()).unwrap();
    assert!(chain_allows(&h.elems(), c, a, "TCP", 80));
    assert!(h.elems().is_empty());
    // Deleting what does not exist changes nothing and says so.
    let e = h
        .store
        .delete(&parse(&deny).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found: NetworkPolicy/x/deny"), "{e}");
    // An invalid object in a file: nothing of the file is applied.
    let bad = deny.clone() + &np("x", "bad", "  podSelector: {}\n  ingress: [{from: [{}]}]\n");
    let e = h
        .store
        .apply(&parse(&bad).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NetworkPolicy/x/bad is invalid: spec.ingress[0].from[0]"),
        "{e}"
    );
    assert!(h.store.objects().unwrap().policies.is_empty());
}

#[test]
fn a_pod_is_isolated_by_its_own_add_and_forgotten_by_del() {
    let h = Harness::new();
    apply_yaml(&h, &np("x", "deny", "  podSelector: {}\n"));
    let new: IpAddr = "10.0.1.50".parse().unwrap();
    let att = attachment("new", "x", "d", new);
    h.store.attach(att).unwrap();
    let iso = Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod: new,
    };
    assert!(h.nft.contains(&iso), "isolated by its ADD");
    let (want, missing) = h.store.missing_for(&[new]).unwrap();
    assert!(want.contains(&iso) && missing.is_empty());
    h.nft.remove(&iso);
    let (_, missing) = h.store.missing_for(&[new]).unwrap();
    assert_eq!(missing, vec![iso.clone()], "CHECK sees it gone");
    h.store.sync().unwrap();
    assert!(h.nft.contains(&iso), "sync puts it back");
    h.store.detach("net", "new", "eth0").unwrap();
    assert!(!h.nft.contains(&iso));
    h.store.detach("net", "new", "eth0").unwrap(); // idempotent
                                                   // GC: only listed attachments stay.
    h.store
        .gc("net", &[("c-0-0".into(), "eth0".into())])
        .unwrap();
    assert_eq!(h.store.attachments().unwrap().len(), 1);
}

#[test]
fn golden_elements_of_a_small_policy() {
    let h = Harness::new();
    apply_yaml(
        &h,
        &np(
            "x",
            "p",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 10.0.0.0/22, except: [10.0.1.0/24]}}]\n    ports: [{port: 80}, {port: 81, endPort: 90}, {port: serve-81-udp, protocol: UDP}]\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]\n",
        ),
    );
    let text: Vec<String> = h.elems().iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "np_iiso4 { 10.0.1.1 }",
            // a pod peer on one port (the named one): the hash set
            "np_in_one4 { 10.0.1.1 . 10.0.1.2 . udp . 81 }",
            // the ipBlock less its except: ranges (pipapo), never merged with pod peers
            "np_in4 { 10.0.1.1 . 10.0.0.0-10.0.0.255 . tcp . 80-90 }",
            "np_in4 { 10.0.1.1 . 10.0.0.0-10.0.0.255 . udp . 81 }",
            "np_in4 { 10.0.1.1 . 10.0.2.0-10.0.3.255 . tcp . 80-90 }",
            "np_in4 { 10.0.1.1 . 10.0.2.0-10.0.3.255 . udp . 81 }",
            // a pod peer on every port (hash), and on a port range
            "np_in_pp4 { 10.0.1.1 . 10.0.3.3 }",
            "np_in_pr4 { 10.0.1.1 . 10.0.1.2 . tcp . 80-90 }",
        ],
        "{text:#?}"
    );
}

mod cluster;
mod random;
