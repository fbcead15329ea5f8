//! etcd-ipam against real etcd members started by the test: through cnitool and the bridge
//! plugin (pods get their addresses and reach each other), and as a bare binary from many
//! simulated nodes at once (no duplicate address, one of three members killed mid-test).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{collections::HashSet, net::IpAddr, path::Path, time::Duration};

use conformance::{
    can_ping, cni_path,
    etcd::{EtcdCluster, MemberSpec},
    plugin_bin, run_with, TestNet,
};
use serde_json::{json, Value};

/// The addresses held in network `net` of the cluster at `prefix`, on every node's host:
/// etcd-ipam's lease files `<run_dir>/cluster/<prefix>/<node>/ipam/<net>/<ip>`, as (node, ip).
fn held(run_dir: &Path, prefix: &str, net: &str) -> Vec<(String, String)> {
    let nodes = run_dir.join("cluster").join(prefix.trim_matches('/'));
    let mut out = Vec::new();
    for n in std::fs::read_dir(&nodes).into_iter().flatten().flatten() {
        let node = n.file_name().to_string_lossy().to_string();
        for ip in conformance::lease_files(&n.path().join("ipam").join(net)) {
            out.push((node.clone(), ip));
        }
    }
    out
}

/// The keys under `<prefix>/ipam/<net>/` in etcd.
fn ipam_keys(c: &etcd::Client, prefix: &str, net: &str) -> Vec<String> {
    c.range_prefix(format!("{prefix}/ipam/{net}/"))
        .unwrap()
        .0
        .iter()
        .map(|kv| kv.key_str().to_string())
        .collect()
}

#[test]
#[ignore]
fn bridge_pods_get_dual_stack_addresses_held_on_their_host_and_del_releases_them() {
    let net = TestNet::new();
    // One member inside the test's host netns, on its loopback (the plugins run there).
    let host_ns = net.host().path().to_path_buf();
    let cluster = EtcdCluster::start(vec![MemberSpec {
        name: "m0".into(),
        netns: Some(host_ns.clone()),
        ip: IpAddr::from([127, 0, 0, 1]),
        client_port: 2379,
        peer_port: 2380,
        tls: false,
    }]);
    let conf = json!({"cniVersion": "1.0.0", "name": "ov1", "plugins": [{
        "type": "bridge", "bridge": "br-eipam", "isGateway": true,
        "ipam": {"type": "etcd-ipam", "etcdEndpoints": cluster.endpoints(), "etcdPrefix": "/t1",
                 "ranges": [[{"subnet": "10.213.4.0/24"}], [{"subnet": "fd00:213:4::/64"}]]}}]});
    let tool = net.cnitool(&conf).env("CNIRS_NODE_NAME", "host-a");
    let (a, b) = (net.pod("a"), net.pod("b"));
    let ra = tool.add(&a).assert_ok().json().clone();
    tool.add(&b).assert_ok();
    let addr = |r: &Value, i: usize| r["ips"][i]["address"].as_str().unwrap().to_string();
    let (a4, a6) = (addr(&ra, 0), addr(&ra, 1));
    assert!(a4.starts_with("10.213.4.") && a4.ends_with("/24"), "{ra}");
    assert!(a6.starts_with("fd00:213:4:") && a6.ends_with("/64"), "{ra}");
    let ip_a = a4.split('/').next().unwrap().to_string();
    assert!(can_ping(&b, &ip_a), "b reaches a at {ip_a}");
    tool.check(&a).assert_ok();

    // The addresses are the host's (lease files under its run dir); etcd has the node's
    // blocks and nothing per pod (read from inside the host netns with the crate's client).
    let eps = cluster.endpoints();
    let keys = conformance::in_netns(&host_ns, move || {
        ipam_keys(&etcd::Client::new(&eps).unwrap(), "/t1", "ov1")
    })
    .unwrap();
    assert_eq!(
        keys.len(),
        2,
        "one block per family under the node: {keys:?}"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("/t1/ipam/ov1/nodes/host-a/")),
        "{keys:?}"
    );
    let addrs = held(&net.run_dir(), "/t1", "ov1");
    assert_eq!(addrs.len(), 4, "two pods, two families: {addrs:?}");
    assert!(addrs.iter().all(|(n, _)| n == "host-a"), "{addrs:?}");
    assert!(addrs.iter().any(|(_, ip)| *ip == ip_a), "{addrs:?}");

    tool.del(&a).assert_ok();
    tool.del(&a).assert_ok();
    let addrs = held(&net.run_dir(), "/t1", "ov1");
    assert_eq!(addrs.len(), 2, "DEL released a's addresses: {addrs:?}");
    assert!(!addrs.iter().any(|(_, ip)| *ip == ip_a), "{addrs:?}");
    tool.del(&b).assert_ok();
    drop(cluster);
}

/// Runs the release binary as a runtime would, for `node`.
fn call(dir: &Path, cmd: &str, conf: &Value, node: &str, id: &str) -> conformance::CmdOutput {
    let mut c = std::process::Command::new(plugin_bin("etcd-ipam"));
    c.env_clear()
        .env("CNIRS_RUN_DIR", dir)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/etcd-ipam-test-unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path())
        .env("CNIRS_NODE_NAME", node);
    run_with(&mut c, conf.to_string().as_bytes(), Duration::from_secs(60))
}

fn parallel_adds(dir: &Path, conf: &Value, batch: &str, n: usize, nodes: usize) -> Vec<IpAddr> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (conf, dir) = (conf.clone(), dir.to_path_buf());
            let id = format!("{batch}-{i}");
            std::thread::spawn(move || {
                let out = call(&dir, "ADD", &conf, &format!("node{}", i % nodes), &id);
                out.assert_ok();
                out.json()["ips"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|ip| {
                        let a = ip["address"].as_str().unwrap();
                        a.split('/').next().unwrap().parse::<IpAddr>().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
#[ignore]
fn sixteen_parallel_adds_on_four_nodes_get_distinct_addresses_with_a_member_killed_mid_test() {
    let cluster = EtcdCluster::local(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A /22: eight blocks of 128 addresses, so each of the four nodes claims its own.
    let conf = json!({"cniVersion": "1.1.0", "name": "par", "type": "etcd-ipam",
        "ipam": {"type": "etcd-ipam", "etcdEndpoints": cluster.endpoints(), "etcdPrefix": "/t2",
                 "ranges": [[{"subnet": "10.213.12.0/22"}], [{"subnet": "fd00:213:8::/64"}]]}});
    let first = parallel_adds(dir, &conf, "a", 16, 4);
    assert_eq!(first.len(), 32);
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 32, "{first:?}");

    // Kill the first endpoint (every plugin starts there) while the next 16 ADDs run.
    let (conf2, killer) = (conf.clone(), {
        let pid = cluster.pid(0).unwrap();
        std::thread::spawn(move || {
            // SAFETY: kill(2) on the PID of the etcd member this test started and holds.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        })
    });
    let second = parallel_adds(dir, &conf2, "b", 16, 4);
    killer.join().unwrap();
    cluster.kill(0); // reap it
    let all: HashSet<IpAddr> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len(), 64, "no duplicate across 32 ADDs x 2 families");

    // Each node allocated inside blocks it claimed: 4 nodes x 2 families, no more.
    let c = etcd::Client::new(&cluster.endpoints()[1..]).unwrap();
    let blocks = c.range_prefix("/t2/blocks/par/").unwrap().0;
    assert_eq!(
        blocks.len(),
        8,
        "{:?}",
        blocks.iter().map(|b| b.key_str()).collect::<Vec<_>>()
    );
    assert_eq!(held(dir, "/t2", "par").len(), 64);
    assert_eq!(
        ipam_keys(&c, "/t2", "par").len(),
        8,
        "the blocks, no address key"
    );

    // ADD again answers the same address; DEL (twice) releases; GC on node0 with nothing
    // valid releases node0's and nobody else's.
    let again = call(dir, "ADD", &conf, "node1", "a-1");
    again.assert_ok();
    let a1: IpAddr = again.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first.contains(&a1));
    call(dir, "DEL", &conf, "node1", "a-1").assert_ok();
    call(dir, "DEL", &conf, "node1", "a-1").assert_ok();
    assert_eq!(held(dir, "/t2", "par").len(), 62);
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([]);
    let mut gc = std::process::Command::new(plugin_bin("etcd-ipam"));
    gc.env_clear()
        .env("CNIRS_RUN_DIR", dir)
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", cni_path())
        .env("CNIRS_NODE_NAME", "node0");
    run_with(
        &mut gc,
        gc_conf.to_string().as_bytes(),
        Duration::from_secs(60),
    )
    .assert_ok();
    // node0 had 8 of the 32 attachments (2 addresses each).
    assert_eq!(held(dir, "/t2", "par").len(), 62 - 16);
    assert!(!held(dir, "/t2", "par").iter().any(|(n, _)| n == "node0"));
    // node0's blocks, empty now, went back to the range.
    let blocks = c.range_prefix("/t2/blocks/par/").unwrap().0;
    assert_eq!(blocks.len(), 6, "{blocks:?}");
    assert!(!blocks.iter().any(|b| b.value == br#"{"node":"node0"}"#));
    let mut st = std::process::Command::new(plugin_bin("etcd-ipam"));
    st.env_clear()
        .env("CNIRS_RUN_DIR", dir)
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", cni_path());
    run_with(
        &mut st,
        conf.to_string().as_bytes(),
        Duration::from_secs(60),
    )
    .assert_ok();
}

#[test]
#[ignore]
fn a_full_range_takes_back_what_a_node_held_once_its_leased_host_key_is_gone() {
    let cluster = EtcdCluster::local(1);
    let c = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A /29: 5 addresses. Node "gone" takes them all while its agent's key is alive.
    let conf = json!({"cniVersion": "1.1.0", "name": "dead", "type": "etcd-ipam",
        "ipam": {"type": "etcd-ipam", "etcdEndpoints": cluster.endpoints(), "etcdPrefix": "/t3",
                 "ranges": [[{"subnet": "10.213.9.0/29"}]]}});
    let lease = c.lease_grant(60).unwrap();
    c.put("/t3/hosts/gone", r#"{"vtep":"10.240.0.9"}"#, Some(lease))
        .unwrap();
    c.put("/t3/hosts/alive", r#"{"vtep":"10.240.0.1"}"#, None)
        .unwrap();
    for i in 0..5 {
        call(dir, "ADD", &conf, "gone", &format!("g{i}")).assert_ok();
    }
    let full = call(dir, "ADD", &conf, "alive", "a0");
    assert_eq!(full.cni_error_code(), Some(104), "{full}");
    // The host dies: its lease ends (revoked here rather than waited for).
    c.lease_revoke(lease).unwrap();
    assert!(c.get("/t3/hosts/gone").unwrap().is_none());
    let out = call(dir, "ADD", &conf, "alive", "a0");
    out.assert_ok();
    let ips: Vec<_> = held(dir, "/t3", "dead")
        .into_iter()
        .filter(|(n, _)| n == "alive")
        .collect();
    assert_eq!(ips.len(), 1, "ours came: {ips:?}");
    assert!(
        !ipam_keys(&c, "/t3", "dead")
            .iter()
            .any(|k| k.contains("/gone/")),
        "the dead node's block went from etcd"
    );
    let blocks = c.range_prefix("/t3/blocks/dead/").unwrap().0;
    assert!(
        blocks.iter().all(|b| b.value == br#"{"node":"alive"}"#),
        "its block went too: {blocks:?}"
    );
}
