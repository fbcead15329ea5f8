//! Objects shared through etcd (an in-memory etcd, `MemStore`): the pods of x, y, z spread
//! over two hosts, each host's store over its own FakeNft, every upstream case applied on
//! host 1 and enforced on both by `sync` (what each host's agent does on a watch event). A
//! cell's verdict is what a packet meets: the netpol chains of the source's host (its
//! egress), then those of the destination's host (its ingress).

use std::sync::Arc;

use etcd::store::{MemStore, Store as _};

use super::*;
use crate::cluster::EtcdSource;

struct Host {
    nft: Arc<FakeNft>,
    store: Store,
}

struct Cluster {
    _dir: tempfile::TempDir,
    etcd: Arc<MemStore>,
    hosts: Vec<Host>,
}

/// Pod `p` of namespace `n` runs on host `(n + p) % 2`.
fn host_of(n: usize, p: usize) -> usize {
    (n + p) % 2
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Arc::new(MemStore::default());
        let hosts: Vec<Host> = (0..2)
            .map(|i| {
                let nft = FakeNft::new();
                let fw = Firewall::with_backend(
                    dir.path().join(format!("netns-h{i}")),
                    Box::new(nft.clone()),
                );
                let src = EtcdSource::new(etcd.clone(), "/cnirs", &format!("h{i}"));
                let store = Store::with_source(dir.path().join("unused"), fw, Box::new(src));
                Host { nft, store }
            })
            .collect();
        let mut objs: Vec<Object> = (0..3)
            .map(|n| Object::Namespace(namespace_obj(n)))
            .collect();
        for n in 0..3 {
            for p in 0..3 {
                objs.push(Object::Pod(pod_obj(n, p, &[])));
            }
        }
        assert_eq!(hosts[0].store.apply(&objs).unwrap(), (0, 0), "only written");
        for n in 0..3 {
            for p in 0..3 {
                hosts[host_of(n, p)]
                    .store
                    .attach(pod_attachment(n, p))
                    .unwrap();
            }
        }
        Cluster {
            _dir: dir,
            etcd,
            hosts,
        }
    }

    fn sync(&self) {
        for h in &self.hosts {
            h.store.sync().unwrap();
        }
    }

    fn elems(&self, i: usize) -> Vec<Elem> {
        self.hosts[i]
            .nft
            .elems()
            .into_iter()
            .filter(Elem::is_netpol)
            .collect()
    }

    fn host_at(ip: IpAddr) -> Option<usize> {
        (0..3)
            .flat_map(|n| (0..3).map(move |p| (n, p)))
            .find(|&(n, p)| pod_ip(n, p) == ip)
            .map(|(n, p)| host_of(n, p))
    }

    /// Every cell against the oracle (over the objects in etcd); (cells, allowed).
    fn truth_table(&self, case: &str) -> (usize, usize) {
        let objs = self.hosts[1].store.objects().unwrap();
        let mut all: Vec<Object> = objs
            .namespaces
            .values()
            .cloned()
            .map(Object::Namespace)
            .collect();
        all.extend(objs.pods.values().cloned().map(Object::Pod));
        all.extend(objs.policies.values().cloned().map(Object::NetworkPolicy));
        let at: Vec<(String, String, IpAddr)> = (0..3)
            .flat_map(|n| {
                (0..3).map(move |p| (NSS[n].to_owned(), PODS[p].to_owned(), pod_ip(n, p)))
            })
            .collect();
        let o = Oracle::from_objects(&all, &at);
        let elems = [self.elems(0), self.elems(1)];
        let mut ends: Vec<IpAddr> = at.iter().map(|a| a.2).collect();
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
                        let got = [Self::host_at(src), Self::host_at(dst)]
                            .into_iter()
                            .flatten()
                            .all(|h| chain_allows(&elems[h], src, dst, proto, port));
                        if got != want {
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
}

#[test]
fn upstream_cases_across_two_hosts_match_the_oracle() {
    for (case, yaml) in upstream_cases() {
        let c = Cluster::new();
        if !yaml.is_empty() {
            // Applied on host 0: written to etcd only; nothing in either kernel yet.
            let before = c.elems(1);
            c.hosts[0].store.apply(&parse(&yaml).unwrap()).unwrap();
            assert_eq!(c.elems(1), before, "{case}: apply touched a kernel");
        }
        c.sync();
        let (cells, allowed) = c.truth_table(case);
        assert_eq!(cells, 11 * 10 * 6 - 2 * 6, "{case}");
        if case == "no policy" {
            assert_eq!(allowed, cells);
        }
        // CHECK on each pod's host finds nothing missing: it wants this host's elements only.
        for n in 0..3 {
            for p in 0..3 {
                let store = &c.hosts[host_of(n, p)].store;
                let (_, missing) = store.missing_for(&[pod_ip(n, p)]).unwrap();
                assert!(missing.is_empty(), "{case}: {n}/{p} lacks {missing:?}");
            }
        }
        // Each host holds the elements of its own pods only.
        for h in 0..2 {
            for e in c.elems(h) {
                if let Elem::NpIsolated { pod, .. } | Elem::NpAllow { pod, .. } = e {
                    assert_eq!(Cluster::host_at(pod), Some(h), "{case}: {e} on h{h}");
                }
            }
        }
    }
}

#[test]
fn keys_one_per_object_deletes_all_or_nothing_and_del_gc_withdraw_endpoints() {
    let c = Cluster::new();
    let keys = |p: &str| c.etcd.keys(&format!("/cnirs/netpol/{p}"));
    assert_eq!(keys("namespaces/").len(), 3);
    assert_eq!(keys("pods/").len(), 9);
    assert_eq!(keys("endpoints/h0/").len(), 5);
    assert_eq!(keys("endpoints/h1/").len(), 4);
    let yaml = np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n");
    let writes = c.etcd.writes();
    c.hosts[1].store.apply(&parse(&yaml).unwrap()).unwrap();
    assert_eq!(c.etcd.writes(), writes + 1, "one transaction");
    assert_eq!(keys("policies/"), ["/cnirs/netpol/policies/x/deny"]);
    // An invalid object: nothing written.
    let bad = yaml.clone() + &np("y", "bad", "  podSelector: {}\n  ingress: [{from: [{}]}]\n");
    assert!(c.hosts[1].store.apply(&parse(&bad).unwrap()).is_err());
    assert_eq!(c.etcd.writes(), writes + 1);
    // Delete of one present and one absent object: nothing deleted.
    let two = yaml.clone() + &np("y", "absent", "  podSelector: {}\n");
    let e = c.hosts[0].store.delete(&parse(&two).unwrap()).unwrap_err();
    assert!(e.to_string().contains("absent"), "{e}");
    assert_eq!(keys("policies/").len(), 1);
    c.hosts[0].store.delete(&parse(&yaml).unwrap()).unwrap();
    assert!(keys("policies/").is_empty());
    // DEL withdraws; GC withdraws what the runtime no longer lists, on its own host only.
    c.hosts[0].store.detach("net", "c-0-0", "eth0").unwrap();
    assert_eq!(keys("endpoints/h0/").len(), 4);
    c.hosts[0].store.detach("net", "c-0-0", "eth0").unwrap();
    c.hosts[0]
        .store
        .gc("net", &[("c-1-1".into(), "eth0".into())])
        .unwrap();
    assert_eq!(
        keys("endpoints/h0/"),
        ["/cnirs/netpol/endpoints/h0/net/c-1-1/eth0"]
    );
    assert_eq!(keys("endpoints/h1/").len(), 4);
    // A record that does not parse is refused, not half-used.
    c.etcd.put("/cnirs/netpol/policies/x/junk", b"{not json");
    assert!(c.hosts[1].store.sync().is_err());
    assert!(c.etcd.list("/cnirs/netpol/").unwrap().0.len() > 1);
}

#[test]
fn a_remote_pod_becomes_a_peer_when_its_host_publishes_it() {
    let c = Cluster::new();
    // x/a (host 0) takes ingress from pods labelled pod=b of namespace y only.
    let yaml = np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    c.hosts[0].store.apply(&parse(&yaml).unwrap()).unwrap();
    c.sync();
    let (xa, yb) = (pod_ip(0, 0), pod_ip(1, 1));
    assert_eq!((host_of(0, 0), host_of(1, 1)), (0, 0));
    assert!(chain_allows(&c.elems(0), yb, xa, "TCP", 80));
    // y/b goes (DEL on its host): host 0 no longer lets its address in after a sync.
    c.hosts[0].store.detach("net", "c-1-1", "eth0").unwrap();
    assert!(!chain_allows(&c.elems(0), yb, xa, "TCP", 80));
    // A pod y/b attached on host 1 under another address: host 0 learns it by its sync.
    let other: IpAddr = "10.0.1.99".parse().unwrap();
    c.hosts[1]
        .store
        .attach(attachment("c-new", "y", "b", other))
        .unwrap();
    assert!(
        !chain_allows(&c.elems(0), other, xa, "TCP", 80),
        "not yet synced"
    );
    c.hosts[0].store.sync().unwrap();
    assert!(chain_allows(&c.elems(0), other, xa, "TCP", 80));
}
