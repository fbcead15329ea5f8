//! Kubernetes' path (issue 16): kubelet -> CRI -> containerd 1.6 -> our conflist. Each test
//! starts its own containerd with the CRI plugin ([`CriNode`]: private mount namespace, the
//! test's host netns, a pause image built from busybox-static) and drives it over the CRI's
//! gRPC API as kubelet does: RunPodSandbox with port mappings, PodSandboxStatus,
//! StopPodSandbox, RemovePodSandbox, a daemon restart with pods running.
//!
//! The network is the shipped conf-examples/containerd/10-cnirs-bridge.conflist (dual stack,
//! portmap, isolation), host-local's dataDir moved into the test's temp dir. "Nothing left"
//! is [`HostState`]: links, addresses, routes, nft elements, leases, libcni's cache and our
//! state files, compared with before the first pod.
//!
//! Needs root, containerd 1.6 (`containerd`, `ctr`), `runc`, busybox-static, and the release
//! binaries; no reference plugin is on the CRI's plugin path (its `loopback` and `bandwidth`
//! are ours). Run alone, under the global lock:
//! `flock /tmp/cnirs-global.lock cargo test -p conformance --test cri -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;

use conformance::{cri::*, *};
use serde_json::Value;

const BRIDGE: &str = "cni0";

fn require() {
    require_root();
    require_tools(&[
        "containerd",
        "ctr",
        "runc",
        "nsenter",
        "unshare",
        "tar",
        "sha256sum",
    ]);
}

/// The shipped containerd conflist with dataDir in the test's temp dir, in its own conf dir.
fn conf_dir(net: &TestNet, patch: impl FnOnce(&mut Value)) -> PathBuf {
    let example = workspace_root().join("conf-examples/containerd/10-cnirs-bridge.conflist");
    let mut conf: Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["dataDir"] = Value::from(net.data_dir().display().to_string());
    patch(&mut conf);
    let dir = net.tmp().join("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-cnirs-bridge.conflist"),
        serde_json::to_string_pretty(&conf).unwrap(),
    )
    .unwrap();
    dir
}

/// A TCP server on `port` inside the pod (what the pod's container would run).
fn serve(node: &CriNode, id: &str, port: u16, token: &str) -> TcpServer {
    TcpServer::start(&node.pod_netns(id), "::", port, token)
}

fn answers(from: &Netns, addr: &str, port: u16, token: &str) -> bool {
    tcp_request(from, addr, port).is_some_and(|r| r.starts_with(token))
}

#[track_caller]
fn assert_nothing_left(net: &TestNet, before: &HostState, what: &str) {
    let after = HostState::of(net);
    before
        .diff(&after)
        .without(legit_leftover(&[BRIDGE]))
        .assert_empty(what);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pods_publish_host_ports_report_both_families_reach_each_other_and_leave_nothing() {
    require();
    let net = TestNet::new();
    let out = net.outside();
    let node = CriNode::start(&net, &conf_dir(&net, |_| {}));
    let before = HostState::of(&net);

    let a = node.run_pod_ok(
        &PodSpec::new("web")
            .port(80, 8080, "")
            .port(81, 8081, "127.0.0.1"),
    );
    let b = node.run_pod_ok(&PodSpec::new("db"));

    // PodSandboxStatus: the IPv4 address first (ip_pref ipv4), the IPv6 one as additional.
    let (ips_a, ips_b) = (node.pod_ips(&a), node.pod_ips(&b));
    for ips in [&ips_a, &ips_b] {
        assert_eq!(ips.len(), 2, "one address per family: {ips:?}");
        assert!(ips[0].starts_with("10.88."), "{ips:?}");
        assert!(ips[1].starts_with("fd00:88:"), "{ips:?}");
    }

    // What the CRI handed the chain, as libcni cached it: go-cni's Go field names. Before
    // keys were matched as Go matches them, portmap refused these and every hostPort pod
    // failed.
    let cached: String = std::fs::read_dir(net.cache_dir().join("results"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        cached.contains(r#""HostPort":8080"#) && cached.contains(r#""HostIP":"127.0.0.1""#),
        "the CRI's capability args are not Go-spelled portMappings: {cached}"
    );

    let _s80 = serve(&node, &a, 80, "cri-web-80");
    let _s81 = serve(&node, &a, 81, "cri-web-81");
    // hostPort on every address: from the outside, to the host's address.
    assert!(
        answers(&out.ns, &out.host_v4.to_string(), 8080, "cri-web-80"),
        "hostPort 8080 (hostIP empty) does not answer from outside"
    );
    // hostIP 127.0.0.1: from the host itself, on loopback only.
    assert!(
        answers(net.host(), "127.0.0.1", 8081, "cri-web-81"),
        "hostPort 127.0.0.1:8081 does not answer on the host"
    );
    assert!(
        !answers(&out.ns, &out.host_v4.to_string(), 8081, "cri-web-81"),
        "127.0.0.1:8081 answers on the host's external address"
    );

    // Two sandboxes of the network reach each other, in both families.
    let _sb = serve(&node, &b, 5432, "cri-db");
    let pod_a = node.pod_netns(&a);
    for ip in &ips_b {
        assert!(
            answers(&pod_a, ip, 5432, "cri-db"),
            "pod web does not reach pod db at {ip}"
        );
    }

    node.stop_and_remove(&a);
    node.stop_and_remove(&b);
    assert_nothing_left(
        &net,
        &before,
        "after StopPodSandbox + RemovePodSandbox of both pods",
    );
    assert!(!answers(
        &out.ns,
        &out.host_v4.to_string(),
        8080,
        "cri-web-80"
    ));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn stop_pod_sandbox_after_the_netns_is_gone_succeeds_and_leaves_nothing() {
    require();
    let net = TestNet::new();
    let node = CriNode::start(&net, &conf_dir(&net, |_| {}));
    let before = HostState::of(&net);
    let id = node.run_pod_ok(&PodSpec::new("lost").port(80, 8085, ""));
    assert!(!node.pod_ips(&id).is_empty());

    // The pod's netns disappears under the CRI (a crash, a reboot): the pause process dies
    // and the netns mount is gone, so the kernel destroys the netns and the veth with it.
    let netns_path = node.pod_netns_path(&id);
    let pause = node.pod_netns(&id).path().to_path_buf();
    let pid: i32 = pause
        .to_str()
        .unwrap()
        .split('/')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the pause process of the pod this test made.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    node.node_sh(&format!("umount {netns_path} && rm -f {netns_path}"))
        .assert_ok();

    node.stop_and_remove(&id);
    assert_nothing_left(&net, &before, "after StopPodSandbox with the netns gone");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_failed_run_pod_sandbox_leaks_nothing_and_the_retry_works() {
    require();
    let net = TestNet::new();
    let out = net.outside();
    let node = CriNode::start(&net, &conf_dir(&net, |_| {}));
    let before = HostState::of(&net);

    // `holder` has hostPort 8090; `late` asks for it too: our portmap refuses (code 103) and
    // RunPodSandbox fails after bridge and host-local did their part.
    let holder = node.run_pod_ok(&PodSpec::new("holder").port(80, 8090, ""));
    let with_holder = HostState::of(&net);
    let late = PodSpec::new("late").port(80, 8090, "");
    let err = node
        .run_pod(&late)
        .expect_err("a taken hostPort must fail the sandbox");
    assert!(
        err.message().contains("8090"),
        "the CRI's error should carry portmap's message naming the port: {err}"
    );
    // Nothing of the failed attempt stays: no veth, no lease, no element, no cached result
    // (the CRI ran the chain's DEL; host-local's last_reserved_ip moved on, as it should).
    let moved_on = |i: &Item| i.text.contains("/last_reserved_ip.");
    with_holder
        .diff(&HostState::of(&net))
        .without(moved_on)
        .assert_empty("after the failed RunPodSandbox");

    // A mapping portmap refuses as invalid (code 7, `::1`): the CRI's teardown runs the
    // chain's DEL with the same runtimeConfig; portmap's DEL must not refuse it too, or
    // libcni stops there and bridge's veth and host-local's lease stay (and the CRI keeps
    // the netns).
    let bad = PodSpec::new("bad").port(80, 8091, "::1");
    let err = node.run_pod(&bad).expect_err("hostIP ::1 is refused");
    assert!(err.message().contains("hostIP"), "{err}");
    with_holder
        .diff(&HostState::of(&net))
        .without(moved_on)
        .assert_empty("after RunPodSandbox refused by portmap's config check");

    // kubelet retries the same pod once the port is free: it works.
    node.stop_and_remove(&holder);
    let id = node.run_pod_ok(&late);
    let _s = serve(&node, &id, 80, "cri-late");
    assert!(answers(&out.ns, &out.host_v4.to_string(), 8090, "cri-late"));
    node.stop_and_remove(&id);
    assert_nothing_left(&net, &before, "after the retried pod was removed");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pods_survive_a_containerd_restart_and_tear_down_cleanly_afterwards() {
    require();
    let net = TestNet::new();
    let out = net.outside();
    let mut node = CriNode::start(&net, &conf_dir(&net, |_| {}));
    let before = HostState::of(&net);
    let a = node.run_pod_ok(&PodSpec::new("stay").port(80, 8095, ""));
    let b = node.run_pod_ok(&PodSpec::new("peer"));
    let (ips_a, ips_b) = (node.pod_ips(&a), node.pod_ips(&b));
    let _s = serve(&node, &a, 80, "cri-stay");
    let _sb = serve(&node, &b, 7000, "cri-peer");
    assert!(answers(&out.ns, &out.host_v4.to_string(), 8095, "cri-stay"));

    node.restart();
    assert_eq!(node.pod_ips(&a), ips_a, "the CRI lost pod stay's addresses");
    assert_eq!(node.pod_ips(&b), ips_b);
    assert!(
        answers(&out.ns, &out.host_v4.to_string(), 8095, "cri-stay"),
        "hostPort 8095 stopped answering after the restart"
    );
    assert!(answers(&node.pod_netns(&a), &ips_b[0], 7000, "cri-peer"));

    node.stop_and_remove(&a);
    node.stop_and_remove(&b);
    assert_nothing_left(&net, &before, "after teardown by the restarted containerd");
}

/// Every capability containerd's CRI passes, declared by the plugins of the chain: ours accept
/// (portMappings) or ignore (dns, io.kubernetes.cri.pod-annotations, bandwidth) them as the
/// reference does, and our `bandwidth`, chained after them, finds the pod's host veth in the
/// result and shapes it: a TBF on the veth and one on an IFB, with containerd's burst
/// (math.MaxUint32 bits for a rate-only annotation) capped to 100 ms of the rate.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cri_capability_args_reach_the_chain_and_our_bandwidth_shapes_the_veth() {
    require();
    let net = TestNet::new();
    let out = net.outside();
    let all = serde_json::json!({"portMappings": true, "bandwidth": true, "dns": true,
        "io.kubernetes.cri.pod-annotations": true});
    let node = CriNode::start(
        &net,
        &conf_dir(&net, |c| {
            let plugins = c["plugins"].as_array_mut().unwrap();
            for p in plugins.iter_mut() {
                p["capabilities"] = all.clone();
            }
            plugins.push(serde_json::json!({"type": "bandwidth",
                "capabilities": {"bandwidth": true}}));
        }),
    );
    let before = HostState::of(&net);
    let id = node.run_pod_ok(
        &PodSpec::new("shaped")
            .port(80, 8097, "")
            .annotate("kubernetes.io/ingress-bandwidth", "10M")
            .annotate("kubernetes.io/egress-bandwidth", "10M"),
    );
    let _s = serve(&node, &id, 80, "cri-shaped");
    assert!(answers(
        &out.ns,
        &out.host_v4.to_string(),
        8097,
        "cri-shaped"
    ));
    // Our bandwidth plugin put a TBF on the host-side veth (towards the pod) and on an IFB
    // (from the pod), the burst capped: 100 ms of 10 Mbit/s is 125000 bytes.
    let links = net.host().link_names();
    let veth = links
        .iter()
        .find(|l| l.starts_with("veth"))
        .expect("the pod's host veth");
    let ifb = links
        .iter()
        .find(|l| l.starts_with("bwp"))
        .unwrap_or_else(|| panic!("no IFB among {links:?}"));
    for dev in [veth, ifb] {
        let tc = run(net
            .host()
            .command("tc")
            .args(["-j", "qdisc", "show", "dev", dev]));
        let q: Value = serde_json::from_str(&tc.stdout).unwrap();
        let tbf = q
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["kind"] == "tbf")
            .unwrap_or_else(|| panic!("no tbf qdisc on {dev}: {tc:?}"));
        assert_eq!(tbf["options"]["rate"], 1_250_000, "{dev}: {tbf}");
        assert_eq!(tbf["options"]["burst"], 125_000, "{dev}: {tbf}");
    }
    // No reference plugin was on the CRI's plugin path.
    let bin = net.tmp().join("cri/cni-bin");
    for e in std::fs::read_dir(&bin).unwrap() {
        let target = std::fs::read_link(e.unwrap().path()).unwrap();
        assert!(
            !target.starts_with(REFERENCE_CNI_PATH),
            "a reference plugin is on the CRI's path: {}",
            target.display()
        );
    }
    node.stop_and_remove(&id);
    assert_nothing_left(&net, &before, "after the shaped pod was removed");
}
