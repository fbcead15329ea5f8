//! Random worlds against the oracle.

use std::collections::BTreeSet;

use super::*;

/// A small deterministic generator (xorshift), so the random cases are the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize].clone()
    }
    fn chance(&mut self, in_n: u64) -> bool {
        self.next().is_multiple_of(in_n)
    }
}

fn random_selector(r: &mut Rng, key: &str, values: &[&str]) -> LabelSelector {
    let v = |r: &mut Rng| r.pick(values).to_owned();
    match r.next() % 6 {
        0 => LabelSelector::default(),
        1 => LabelSelector {
            match_labels: [(key.to_owned(), v(r))].into(),
            ..Default::default()
        },
        n => LabelSelector {
            match_expressions: vec![Requirement {
                key: if r.chance(4) {
                    "role".into()
                } else {
                    key.to_owned()
                },
                operator: ["In", "NotIn", "Exists", "DoesNotExist"][(n - 2) as usize].into(),
                values: if n < 4 { vec![v(r), v(r)] } else { vec![] },
            }],
            ..Default::default()
        },
    }
}

fn random_peer(r: &mut Rng) -> Peer {
    match r.next() % 5 {
        0 => Peer {
            pod_selector: Some(random_selector(r, "pod", &PODS)),
            ..Default::default()
        },
        1 => Peer {
            namespace_selector: Some(random_selector(r, "ns", &NSS)),
            ..Default::default()
        },
        2 => Peer {
            pod_selector: Some(random_selector(r, "pod", &PODS)),
            namespace_selector: Some(random_selector(r, "ns", &NSS)),
            ..Default::default()
        },
        _ => {
            let (cidr, excepts): (&str, &[&str]) = r.pick(&[
                ("10.0.0.0/16", &["10.0.2.0/24", "10.0.1.1/32"][..]),
                ("10.0.1.0/24", &["10.0.1.0/31"][..]),
                ("0.0.0.0/0", &["10.0.0.0/8"][..]),
                ("192.168.0.0/16", &[][..]),
                ("10.0.3.0/30", &["10.0.3.2/32"][..]),
            ]);
            Peer {
                ip_block: Some(IpBlock {
                    cidr: cidr.into(),
                    except: (!excepts.is_empty() && r.chance(2))
                        .then(|| excepts.iter().map(|s| (*s).to_owned()).collect()),
                }),
                ..Default::default()
            }
        }
    }
}

fn random_port(r: &mut Rng) -> PolicyPort {
    let protocol = r
        .pick(&[None, Some("UDP"), Some("SCTP"), Some("TCP")])
        .map(str::to_owned);
    match r.next() % 5 {
        0 => PolicyPort {
            protocol,
            ..Default::default()
        },
        1 | 2 => PolicyPort {
            protocol,
            port: Some(IntOrString::Int(r.pick(&[80, 81, 79]))),
            ..Default::default()
        },
        3 => PolicyPort {
            protocol,
            port: Some(IntOrString::Int(80)),
            end_port: Some(r.pick(&[80, 81, 100])),
        },
        _ => {
            let p = protocol
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_lowercase();
            PolicyPort {
                protocol,
                port: Some(IntOrString::Str(format!("serve-{}-{p}", r.pick(&[80, 81])))),
                ..Default::default()
            }
        }
    }
}

fn random_policy(r: &mut Rng, i: usize) -> NetworkPolicy {
    let rules = |r: &mut Rng| -> Option<Vec<(Option<Vec<Peer>>, Option<Vec<PolicyPort>>)>> {
        if r.chance(4) {
            return None;
        }
        Some(
            (0..r.next() % 3)
                .map(|_| {
                    let peers = (!r.chance(4))
                        .then(|| (0..1 + r.next() % 2).map(|_| random_peer(r)).collect());
                    let ports = (!r.chance(3))
                        .then(|| (0..1 + r.next() % 2).map(|_| random_port(r)).collect());
                    (peers, ports)
                })
                .collect(),
        )
    };
    let ingress = rules(r).map(|v| {
        v.into_iter()
            .map(|(from, ports)| IngressRule { from, ports })
            .collect()
    });
    let egress: Option<Vec<EgressRule>> = rules(r).map(|v| {
        v.into_iter()
            .map(|(to, ports)| EgressRule { to, ports })
            .collect()
    });
    let policy_types = r
        .pick(&[
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ])
        .map(|v| v.into_iter().map(str::to_owned).collect());
    NetworkPolicy {
        metadata: ObjectMeta {
            name: format!("r{i}"),
            namespace: Some(r.pick(&NSS).to_owned()),
            labels: BTreeMap::new(),
        },
        spec: NetworkPolicySpec {
            pod_selector: random_selector(r, "pod", &PODS),
            ingress,
            egress,
            policy_types,
        },
    }
}

fn attach(h: &Harness, n: usize, p: usize) {
    h.store.attach(pod_attachment(n, p)).unwrap();
}

/// The elements the kernel holds after DEL/ADDs (each changing only what touches its pod)
/// are those of a full compile, and `compile_touching` is the full compile filtered.
fn incremental_equals_full(h: &Harness) {
    let full = || {
        let w = h.store.world().unwrap();
        (crate::compile(&w), w)
    };
    for (n, p) in [(0, 0), (1, 2), (2, 1)] {
        h.store
            .detach("net", &format!("c-{n}-{p}"), "eth0")
            .unwrap();
        let held: BTreeSet<Elem> = h.elems().into_iter().collect();
        assert_eq!(held, full().0, "after DEL of {n}/{p}");
        attach(h, n, p);
        let held: BTreeSet<Elem> = h.elems().into_iter().collect();
        assert_eq!(held, full().0, "after ADD of {n}/{p}");
    }
    let (all, w) = full();
    for pod in &w.pods {
        let want: BTreeSet<Elem> = all
            .iter()
            .filter(|e| crate::compile::touches(e, &pod.ips))
            .cloned()
            .collect();
        assert_eq!(crate::compile::compile_touching(&w, &pod.ips), want);
    }
}

#[test]
fn random_policies_match_the_oracle_cell_by_cell() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = (0, 0);
    for world in 0..60 {
        let h = Harness::new();
        // Some pods get role=db (selectors on `role` then bite).
        for (n, p) in [(0, 1), (1, 2), (2, 0)] {
            if r.chance(2) {
                h.store
                    .apply(&[Object::Pod(pod_obj(n, p, &[("role", "db")]))])
                    .unwrap();
            }
        }
        let policies: Vec<Object> = (0..1 + r.next() % 4)
            .map(|i| Object::NetworkPolicy(random_policy(&mut r, i as usize)))
            .collect();
        h.store.apply(&policies).unwrap();
        // Half the worlds: three pods DEL and ADD again under the policies (the incremental
        // path), which must end where a full compile does.
        if world % 2 == 0 {
            incremental_equals_full(&h);
        }
        let (cells, allowed) = truth_table(&h, &format!("random world {world}"));
        total = (total.0 + cells, total.1 + allowed);
    }
    // Both verdicts occur plenty.
    assert!(
        total.1 > total.0 / 5 && total.1 < total.0 * 4 / 5,
        "{total:?}"
    );
}

/// An ADD or DEL reads only the policies filed under its pod's namespace and labels
/// (`crate::index`): for every pod of random worlds (one in a namespace no object names, and
/// selectors on the name label, included) they give the same elements as all the policies.
#[test]
fn the_policies_filed_for_a_pod_are_all_that_concern_it() {
    use crate::{
        compile::{compile_touching, World},
        index::Index,
    };
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    for world in 0..40 {
        let h = Harness::new();
        h.store
            .attach(attachment("c-q", "q", "d", "10.0.9.1".parse().unwrap()))
            .unwrap();
        if r.chance(2) {
            h.store
                .apply(&[Object::Pod(pod_obj(1, 2, &[("role", "db")]))])
                .unwrap();
        }
        let mut policies: Vec<Object> = (0..1 + r.next() % 5)
            .map(|i| Object::NetworkPolicy(random_policy(&mut r, i as usize)))
            .collect();
        let by_name = r.pick(&[
            "{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}",
            "{matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [q, y]}]}",
            "{matchLabels: {kubernetes.io/metadata.name: q}}",
            "{matchExpressions: [{key: ns, operator: DoesNotExist}]}",
        ]);
        let ns = r.pick(&NSS);
        policies.extend(
            parse(&np(
                ns,
                "by-name",
                &format!(
                    "  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {by_name}}}]\n  egress:\n  - to: [{{namespaceSelector: {by_name}, podSelector: {{}}}}]\n    ports: [{{port: serve-80-tcp}}]\n"
                ),
            ))
            .unwrap(),
        );
        h.store.apply(&policies).unwrap();
        let full = h.store.world().unwrap();
        let dir = h._dir.path().join("policy");
        let (_, _, mut filed) = Index::open(&dir).unwrap().base(&dir);
        for pod in &full.pods {
            let sub = World {
                policies: filed
                    .policies_for(&[(pod.namespace.as_str(), &pod.labels)])
                    .unwrap(),
                ..full.clone()
            };
            assert_eq!(
                compile_touching(&sub, &pod.ips),
                compile_touching(&full, &pod.ips),
                "world {world}, pod {}/{}",
                pod.namespace,
                pod.name
            );
        }
        incremental_equals_full(&h);
    }
}

/// `objects.json` edited by hand: the next ADD compiles it again (and refuses it when it
/// is invalid, changing nothing), never the stale compiled form.
#[test]
fn a_hand_edited_objects_file_is_compiled_again_or_refused() {
    let h = Harness::new();
    let dir = h._dir.path().join("policy");
    let mut o = h.store.objects().unwrap();
    let deny = parse(&np(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ))
    .unwrap();
    let Object::NetworkPolicy(p) = &deny[0] else {
        panic!("not a policy")
    };
    o.policies.insert("x/deny".into(), p.clone());
    std::fs::write(dir.join("objects.json"), serde_json::to_vec(&o).unwrap()).unwrap();
    h.store.detach("net", "c-0-0", "eth0").unwrap();
    attach(&h, 0, 0);
    assert!(h.elems().contains(&Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod: pod_ip(0, 0)
    }));
    let mut bad = p.clone();
    bad.spec.policy_types = Some(vec!["Sideways".into()]);
    o.policies.insert("x/deny".into(), bad);
    std::fs::write(dir.join("objects.json"), serde_json::to_vec(&o).unwrap()).unwrap();
    let before = h.elems();
    let err = h
        .store
        .attach(attachment("c-new", "x", "new", "10.0.1.9".parse().unwrap()))
        .unwrap_err();
    assert!(err.to_string().contains("Sideways"), "{err}");
    assert_eq!(h.elems(), before);
    // A compiled file lost or torn (a crash before it reached the disk): compiled again, not
    // taken for "no policy".
    o.policies.insert("x/deny".into(), p.clone());
    std::fs::write(dir.join("objects.json"), serde_json::to_vec(&o).unwrap()).unwrap();
    h.store.detach("net", "c-0-1", "eth0").unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("compiled-") {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                std::fs::write(f.path(), b"[").unwrap();
            }
        }
    }
    attach(&h, 0, 1);
    assert!(h.elems().contains(&Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod: pod_ip(0, 1)
    }));
    // (Only the pod's own elements: a hand edit is enforced for the others by the next sync.)
    let mine = [pod_ip(0, 1)];
    let held: BTreeSet<Elem> = h
        .elems()
        .into_iter()
        .filter(|e| crate::compile::touches(e, &mine))
        .collect();
    let w = h.store.world().unwrap();
    assert_eq!(held, crate::compile::compile_touching(&w, &mine));
}
