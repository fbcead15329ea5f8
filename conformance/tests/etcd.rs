//! The etcd client (crates/etcd) against a real etcd 3.4 started by the test: one shared
//! single-member cluster for the API (a key prefix per test), a 3-member one for failover.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::time::Duration;

use conformance::etcd::{EtcdCluster, MemberSpec, TestPki};
use etcd::{
    Compare, CompareOp, Created, EtcdError, EventKind, Op, OpResponse, Tls, TlsFile, TlsPaths,
    TlsSetupError,
};

fn shared() -> etcd::Client {
    EtcdCluster::shared_local().client()
}

#[test]
#[ignore]
fn put_get_range_and_delete_round_trip_binary_safe() {
    let c = shared();
    let p = "/t/kv/";
    assert_eq!(c.get(format!("{p}missing")).unwrap(), None);
    let r1 = c.put(format!("{p}a"), b"\x00\xff{json}", None).unwrap();
    c.put(format!("{p}b/c"), "2", None).unwrap();
    c.put("/t/kv0", "outside the prefix", None).unwrap();
    let a = c.get(format!("{p}a")).unwrap().unwrap();
    assert_eq!(a.value, b"\x00\xff{json}");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.lease),
        (r1, r1, 1, 0)
    );
    let (kvs, rev) = c.range_prefix(p).unwrap();
    let keys: Vec<String> = kvs.iter().map(|k| k.key_str()).collect();
    assert_eq!(keys, ["/t/kv/a", "/t/kv/b/c"]);
    assert!(rev >= r1);
    assert_eq!(c.delete(format!("{p}a")).unwrap(), 1);
    assert_eq!(
        c.delete(format!("{p}a")).unwrap(),
        0,
        "deleting a missing key is not an error"
    );
    assert_eq!(c.delete_prefix(p).unwrap(), 1);
    assert!(
        c.get("/t/kv0").unwrap().is_some(),
        "delete_prefix stays inside the prefix"
    );
}

#[test]
#[ignore]
fn create_is_compare_on_create_revision_and_reports_the_holder() {
    let c = shared();
    let k = "/t/create/ip";
    assert!(c.create(k, "mine", None).unwrap());
    assert!(!c.create(k, "theirs", None).unwrap());
    match c.create_or_get(k, "theirs", None).unwrap() {
        Created::Exists(kv) => assert_eq!(kv.value, b"mine"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.create_or_get("/t/create/other", "x", None).unwrap(),
        Created::Created { .. }
    ));
    // A txn with a failing compare runs the failure branch only.
    let kv = c.get(k).unwrap().unwrap();
    let r = c
        .txn(
            &[Compare::mod_revision(
                k,
                CompareOp::Equal,
                kv.mod_revision + 1000,
            )],
            &[Op::delete(k)],
            &[Op::get_prefix("/t/create/")],
        )
        .unwrap();
    assert!(!r.succeeded);
    assert!(matches!(&r.responses[0], OpResponse::Get(kvs) if kvs.len() == 2));
    let r = c
        .txn(
            &[Compare::value(k, CompareOp::Equal, "mine")],
            &[Op::delete(k), Op::put("/t/create/moved", "mine", None)],
            &[],
        )
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.responses, vec![OpResponse::Delete(1), OpResponse::Put]);
    assert!(c.get(k).unwrap().is_none());
}

#[test]
#[ignore]
fn a_revoked_lease_takes_its_keys_and_cannot_be_kept_alive() {
    let c = shared();
    let id = c.lease_grant(30).unwrap();
    assert!(c.lease_keepalive(id).unwrap() > 0);
    c.put("/t/lease/host", "{}", Some(id)).unwrap();
    assert_eq!(c.get("/t/lease/host").unwrap().unwrap().lease, id);
    c.lease_revoke(id).unwrap();
    assert!(c.get("/t/lease/host").unwrap().is_none());
    assert!(matches!(
        c.lease_keepalive(id),
        Err(EtcdError::LeaseNotFound(_))
    ));
    c.lease_revoke(id).unwrap(); // already gone: fine
                                 // A put on a lease that is gone is refused, not silently unleased.
    assert!(c.put("/t/lease/host", "{}", Some(id)).is_err());
}

#[test]
#[ignore]
fn a_lease_kept_alive_outlives_its_ttl_and_expires_when_dropped() {
    let c = shared();
    let id = c.lease_grant(1).unwrap();
    let put_rev = c.put("/t/keeper/host", "{}", Some(id)).unwrap();
    let keeper = c.keep_alive(id, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        c.get("/t/keeper/host").unwrap().is_some(),
        "kept alive past its 1 s TTL"
    );
    assert!(!keeper.lost());
    drop(keeper);
    // Expiry is etcd's business; wait for it by watching rather than by the clock.
    let w = c.watch_prefix("/t/keeper/", put_rev + 1).unwrap();
    let ev = w.into_iter().next().unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert!(c.get("/t/keeper/host").unwrap().is_none());
}

#[test]
#[ignore]
fn watch_delivers_puts_and_deletes_in_order_from_a_revision() {
    let c = shared();
    let p = "/t/watch/";
    let (_, rev) = c.range_prefix(p).unwrap();
    // Changes made before the watch opens are replayed from the revision.
    c.put(format!("{p}a"), "1", None).unwrap();
    let mut w = c.watch_prefix(p, rev + 1).unwrap();
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.put(format!("{p}b"), "2", None).unwrap();
            c.put("/t/watch0", "outside", None).unwrap();
            c.delete(format!("{p}a")).unwrap();
        })
    };
    let evs: Vec<_> = (&mut w).take(3).map(Result::unwrap).collect();
    writer.join().unwrap();
    let seen: Vec<(EventKind, String)> = evs.iter().map(|e| (e.kind, e.kv.key_str())).collect();
    assert_eq!(
        seen,
        [
            (EventKind::Put, "/t/watch/a".to_string()),
            (EventKind::Put, "/t/watch/b".to_string()),
            (EventKind::Delete, "/t/watch/a".to_string())
        ]
    );
    assert_eq!(evs[2].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(w.next_revision(), evs[2].kv.mod_revision + 1);
}

#[test]
#[ignore]
fn three_members_one_killed_calls_and_watches_fail_over() {
    let cluster = EtcdCluster::local(3);
    let c = cluster.client();
    c.put("/t/ha/before", "1", None).unwrap();
    let mut w = c.watch_prefix("/t/ha/", 0).unwrap();
    // The client prefers the endpoint that answered last: member 0. Kill it.
    assert_eq!(c.endpoints()[0], cluster.endpoint(0));
    cluster.kill(0);
    assert!(cluster.pid(0).is_none());
    for i in 0..20 {
        c.put(format!("/t/ha/k{i:02}"), "x", None).unwrap();
    }
    assert!(c.create("/t/ha/created", "x", None).unwrap());
    let (kvs, _) = c.range_prefix("/t/ha/").unwrap();
    assert_eq!(kvs.len(), 22);
    // The watch reopened on a live member and lost nothing.
    let keys: Vec<String> = (&mut w).take(21).map(|e| e.unwrap().kv.key_str()).collect();
    assert_eq!(keys[0], "/t/ha/k00");
    assert_eq!(keys[19], "/t/ha/k19");
    assert_eq!(keys[20], "/t/ha/created");
    // The member comes back and catches up.
    cluster.restart(0);
    let only0 = etcd::Client::new(&[cluster.endpoint(0)]).unwrap();
    assert_eq!(only0.range_prefix("/t/ha/").unwrap().0.len(), 22);
}

#[test]
#[ignore]
fn killing_the_leader_only_delays_writes_until_a_new_one_is_elected() {
    let cluster = EtcdCluster::local(3);
    let c = cluster.client();
    let leader = cluster.leader();
    c.put("/t/leader/before", "1", None).unwrap();
    cluster.kill(leader);
    // The next writes land whichever member the client tries first: a follower answers
    // "no leader" (retried) until the two survivors elect one.
    for i in 0..5 {
        // A create whose answer was lost to the dead leader may have committed: then the
        // retry finds our own value there, which create_or_get shows.
        match c
            .create_or_get(format!("/t/leader/k{i}"), format!("v{i}"), None)
            .unwrap()
        {
            Created::Created { .. } => {}
            Created::Exists(kv) => assert_eq!(kv.value, format!("v{i}").as_bytes()),
        }
    }
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    assert_eq!(c.range_prefix("/t/leader/").unwrap().0.len(), 6);
}

/// A single TLS member on loopback requiring client certificates (`--client-cert-auth`),
/// with a second, unrelated CA for the strangers.
fn tls_member() -> (EtcdCluster, TestPki) {
    let pki = TestPki::new(&[], &[]);
    let stranger = TestPki::new(&[], &[]);
    (
        EtcdCluster::start_tls(vec![MemberSpec::local("m0")], pki),
        stranger,
    )
}

fn client_with(cluster: &EtcdCluster, paths: &TlsPaths) -> Result<etcd::Client, EtcdError> {
    let tls = Tls::for_endpoints(&cluster.endpoints(), paths)?;
    etcd::Client::with_options(
        &cluster.endpoints(),
        etcd::Options {
            tls,
            ..etcd::Options::default()
        },
    )
}

#[test]
#[ignore]
fn over_mutual_tls_calls_and_watches_work_with_the_clusters_client_certificate() {
    let (cluster, _) = tls_member();
    assert!(cluster.endpoint(0).starts_with("https://127.0.0.1:"));
    let pki = cluster.pki().unwrap();
    let c = client_with(&cluster, &pki.paths("client")).unwrap();
    let (_, rev) = c.range_prefix("/t/tls/").unwrap();
    c.put("/t/tls/a", "1", None).unwrap();
    assert_eq!(c.get("/t/tls/a").unwrap().unwrap().value, b"1");
    let ev = c
        .watch_prefix("/t/tls/", rev + 1)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kv.key_str(), "/t/tls/a");
    // Control for the refusals below: the same member, the same call, a good client.
    assert!(c.lease_grant(5).is_ok());
}

#[test]
#[ignore]
fn a_client_without_certificate_or_with_a_strangers_is_refused_at_once_with_a_clear_error() {
    let (cluster, stranger) = tls_member();
    let pki = cluster.pki().unwrap();
    // The CA only: the member wants a certificate. The error is final (Tls), not a 15 s
    // retry that ends in Unavailable.
    let no_cert = TlsPaths {
        ca: Some(pki.ca()),
        ..TlsPaths::default()
    };
    let c = client_with(&cluster, &no_cert).unwrap();
    match c.put("/t/tls/x", "1", None) {
        Err(EtcdError::Tls { message, .. }) => {
            assert!(message.contains("client certificate"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A certificate from another CA.
    let foreign = TlsPaths {
        ca: Some(pki.ca()),
        cert: Some(stranger.cert("client")),
        key: Some(stranger.key("client")),
    };
    match client_with(&cluster, &foreign).unwrap().get("/t/tls/x") {
        Err(EtcdError::Tls { message, .. }) => assert!(message.contains("refused"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A CA that does not verify the member (ours is fine, theirs is not).
    let wrong_ca = TlsPaths {
        ca: Some(stranger.ca()),
        ..pki.paths("client")
    };
    let c = client_with(&cluster, &wrong_ca).unwrap();
    match c.get("/t/tls/x") {
        Err(EtcdError::Tls { message, .. }) => {
            assert!(
                message.contains("not signed by the configured CA"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.watch_prefix("/t/tls/", 0),
        Err(EtcdError::Tls { .. })
    ));
    // Nothing was written by any of them.
    let good = client_with(&cluster, &pki.paths("client")).unwrap();
    assert!(good.get("/t/tls/x").unwrap().is_none());
}

#[test]
#[ignore]
fn tls_files_that_cannot_work_are_refused_before_any_connection_naming_the_file() {
    let (cluster, stranger) = tls_member();
    let pki = cluster.pki().unwrap();
    // A key that belongs to another certificate.
    let mismatched = TlsPaths {
        key: Some(stranger.key("client")),
        ..pki.paths("client")
    };
    let e = Tls::load(&mismatched).unwrap_err();
    assert_eq!(e.file(), Some(TlsFile::Key), "{e}");
    assert!(
        e.to_string()
            .contains(&*stranger.key("client").to_string_lossy()),
        "{e}"
    );
    // A certificate file that holds a key.
    let swapped = TlsPaths {
        cert: Some(pki.key("client")),
        ..pki.paths("client")
    };
    let e = Tls::load(&swapped).unwrap_err();
    assert_eq!(e.file(), Some(TlsFile::Cert), "{e}");
    // http:// with TLS files, https:// without a CA.
    let http = vec!["http://127.0.0.1:1".to_string()];
    assert!(matches!(
        Tls::for_endpoints(&http, &pki.paths("client")),
        Err(TlsSetupError::Plaintext { .. })
    ));
    assert!(matches!(
        Tls::for_endpoints(&cluster.endpoints(), &TlsPaths::default()),
        Err(TlsSetupError::NoCa)
    ));
}
