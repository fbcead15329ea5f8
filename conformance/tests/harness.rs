//! Tests of the harness itself, proven with the REFERENCE plugins (/usr/lib/cni: bridge +
//! host-local, cniVersion 1.0.0) through our cnitool (libcni 1.1.2). They need root; they do
//! not need our release binaries.
//!
//! Run: `cargo test -p conformance --test harness -- --ignored` (as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::time::Instant;

use conformance::*;
use serde_json::{json, Value};

/// A reference bridge + host-local conflist (version 1.0.0: the newest libcni 1.1.2 knows).
fn bridge_conf(net: &TestNet, name: &str, bridge: &str, subnet: &str, masq: bool) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": masq,
            "ipam": {
                "type": "host-local",
                "dataDir": net.data_dir(),
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    })
}

fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .expect("result has an IP")
        .to_owned()
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn testnet_makes_and_removes_its_namespaces_and_dirs() {
    let net = TestNet::new();
    let id = net.id().to_owned();
    let tmp = net.tmp().to_path_buf();
    let pod = net.pod("p");
    net.outside();
    assert_eq!(net.host().sysctl("net.ipv4.ip_forward"), "1");
    assert!(pod.path().exists(), "{} exists", pod.path().display());
    let mut listed = net.listed_netns();
    listed.sort();
    assert_eq!(
        listed,
        [
            format!("{id}-host"),
            format!("{id}-outside"),
            format!("{id}-p")
        ]
    );
    assert!(net.data_dir().is_dir() && net.run_dir().is_dir() && net.cache_dir().is_dir());
    drop(net);
    assert!(
        listed_netns(&format!("{id}-")).is_empty(),
        "netns left in `ip netns list`"
    );
    assert!(!pod.path().exists(), "{} left behind", pod.path().display());
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn host_reaches_outside_and_its_far_address() {
    let net = TestNet::new();
    let out = net.outside();
    assert!(can_ping(net.host(), &out.link_v4.to_string()));
    assert!(can_ping(net.host(), &out.far_v4.to_string()));
    assert!(can_ping(net.host(), &out.far_v6.to_string()));
    // And something that is not there does not answer.
    assert!(!can_ping(net.host(), "192.0.2.3"));
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn tcp_server_reports_peer_and_closed_port_is_refused() {
    let net = TestNet::new();
    let out = net.outside();
    let srv = TcpServer::start(&out.ns, "0.0.0.0", 0, "hello");
    let reply = tcp_request(net.host(), &out.far_v4.to_string(), srv.port()).expect("reply");
    assert_eq!(
        reply,
        format!("hello {}:{}\n", out.host_v4, srv.peers()[0].port())
    );
    assert_eq!(srv.peers()[0].ip().to_string(), out.host_v4.to_string());
    assert!(can_connect_tcp(
        net.host(),
        &out.far_v4.to_string(),
        srv.port()
    ));
    assert!(!can_connect_tcp(
        net.host(),
        &out.far_v4.to_string(),
        srv.port() + 1
    ));
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn reference_bridge_two_pods_ping_each_other() {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let conf = bridge_conf(&net, "refnet", "cnirs-br0", "10.213.1.0/24", false);
    let tool = net.cnitool(&conf).reference();

    let t = Instant::now();
    let ra = tool.add(&a).assert_ok().json().clone();
    let add_time = t.elapsed();
    let rb = tool.add(&b).assert_ok().json().clone();
    eprintln!("reference bridge ADD via cnitool: {add_time:?}");
    eprintln!("result: {ra}");

    // libcni 1.1.2 passes the plugin's result through in the conflist's version.
    assert_eq!(ra["cniVersion"], "1.0.0");
    let (ip_a, ip_b) = (first_ip(&ra), first_ip(&rb));
    assert_ne!(ip_a, ip_b);
    assert_eq!(a.addrs("eth0"), vec![ip_a.clone()]);
    assert!(can_ping(&a, &ip_b), "a -> b");
    assert!(can_ping(&b, &ip_a), "b -> a");
    assert!(can_ping(&a, "10.213.1.1"), "a -> gateway");

    let srv = TcpServer::start(&b, "0.0.0.0", 8080, "from-b");
    let reply = tcp_request(&a, &ip_b, 8080).expect("a gets b's reply");
    assert!(
        reply.starts_with(&format!("from-b {}:", ip_of(&ip_a))),
        "{reply}"
    );
    drop(srv);
    // The listener is closed when drop returns, but a child another test thread is forking
    // at that moment holds a copy of it until its exec (close-on-exec): poll briefly.
    let stopped = (0..20).any(|_| {
        let refused = !can_connect_tcp(&a, &ip_b, 8080);
        if !refused {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        refused
    });
    assert!(stopped, "server stopped");

    let http = HttpServer::start(&a, 8081, "pod a says hi");
    assert_eq!(
        http_get(&b, &ip_a, http.port()).as_deref(),
        Some("pod a says hi")
    );
    drop(http);
    assert_eq!(http_get(&b, &ip_a, 8081), None, "httpd killed");

    tool.check(&a).assert_ok();
    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    assert!(!can_ping(&b, &ip_a), "a is gone");
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn reference_bridge_pod_reaches_outside_masqueraded() {
    let net = TestNet::new();
    let out = net.outside();
    out.remove_return_routes(); // only masqueraded traffic can come back
    let pod = net.pod("p");
    let conf = bridge_conf(&net, "masqnet", "cnirs-br1", "10.213.2.0/24", true);
    let tool = net.cnitool(&conf).reference();
    let r = tool.add(&pod).assert_ok().json().clone();
    assert!(
        can_ping(&pod, &out.far_v4.to_string()),
        "pod -> far outside"
    );
    let srv = TcpServer::start(&out.ns, &out.far_v4.to_string(), 80, "internet");
    let reply = tcp_request(&pod, &out.far_v4.to_string(), 80).expect("reply");
    assert!(reply.starts_with("internet "), "{reply}");
    let seen = srv.peers()[0].ip().to_string();
    assert_eq!(
        seen,
        out.host_v4.to_string(),
        "outside sees the host address, not {}",
        first_ip(&r)
    );
    tool.del(&pod).assert_ok();
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn reference_del_leaves_no_veth_and_host_state_is_restored() {
    let net = TestNet::new();
    let pod = net.pod("p");
    let conf = bridge_conf(&net, "delnet", "cnirs-br2", "10.213.3.0/24", true);
    let tool = net.cnitool(&conf).reference();
    let before = HostState::of(&net);

    let r = tool.add(&pod).assert_ok().json().clone();
    let added = HostState::of(&net);
    let d = before.diff(&added);
    eprintln!("ADD changed the host netns:\n{d}");
    assert!(
        added.of_kind("link").any(|i| i.text.contains("\"veth\"")),
        "a veth exists"
    );
    assert!(d
        .added
        .iter()
        .any(|i| i.kind == "file" && i.text.starts_with("cache/results/")));
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    assert!(net.host().link(&host_veth).is_some());

    let t = Instant::now();
    tool.del(&pod).assert_ok();
    eprintln!("reference bridge DEL via cnitool: {:?}", t.elapsed());
    assert!(
        net.host().link(&host_veth).is_none(),
        "{host_veth} left behind"
    );
    assert!(pod.link("eth0").is_none(), "eth0 left in the pod");
    let after = HostState::of(&net);
    assert!(
        !after.of_kind("link").any(|i| i.text.contains("\"veth\"")),
        "no veth left"
    );

    let leftover = before.diff(&after);
    eprintln!("after DEL, the reference plugins left:\n{leftover}");
    // Known leftovers of the reference plugins: the bridge (+ its gateway address and
    // connected route), host-local's lock and last_reserved_ip files, and the iptables-nft
    // tables/chains that ipMasq created (the per-container rules are gone).
    let unexplained = leftover.without(|i| {
        i.text.contains("cnirs-br2")
            || i.text.contains("10.213.3.1")
            || i.text.contains("10.213.3.0/24")
            || (i.kind == "file"
                && (i.text.ends_with("/lock = ")
                    || i.text.contains("/last_reserved_ip.0")
                    || i.text.ends_with("/delnet/")
                    || i.text.ends_with("cache/results/")))
            || (i.kind == "nft" && !i.text.contains("\"rule\""))
    });
    unexplained.assert_empty("reference bridge ADD+DEL");
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn host_state_diff_sees_links_routes_nft_and_files() {
    let net = TestNet::new();
    let before = HostState::of(&net);
    assert!(
        before.diff(&HostState::of(&net)).is_empty(),
        "snapshot is stable"
    );
    net.host().ip(&[
        "link",
        "add",
        "cnirs-dummy",
        "type",
        "veth",
        "peer",
        "name",
        "cnirs-dummy2",
    ]);
    net.host()
        .ip(&["addr", "add", "10.213.9.1/24", "dev", "cnirs-dummy"]);
    net.host().ip(&["link", "set", "cnirs-dummy", "up"]);
    net.host()
        .exec_ok("nft", &["add", "table", "inet", "cnirs_probe"]);
    std::fs::write(net.data_dir().join("x"), "1").unwrap();
    let d = before.diff(&HostState::of(&net));
    let kinds: Vec<&str> = d.added.iter().map(|i| i.kind).collect();
    for k in ["link", "addr", "route", "nft", "file"] {
        assert!(kinds.contains(&k), "diff has a {k}: {d}");
    }
    assert!(d.removed.is_empty(), "{d}");
    net.host().ip(&["link", "del", "cnirs-dummy"]);
    net.host()
        .exec_ok("nft", &["delete", "table", "inet", "cnirs_probe"]);
    std::fs::remove_file(net.data_dir().join("x")).unwrap();
    before
        .diff(&HostState::of(&net))
        .assert_empty("after undoing");
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn cnitool_gc_and_status_send_cni_1_1_to_every_plugin() {
    // A fake plugin that records its env and stdin, and fails GC for "fail".
    let net = TestNet::new();
    let dir = net.tmp().join("fakebin");
    std::fs::create_dir(&dir).unwrap();
    let log = net.tmp().join("calls.log");
    let script = format!(
        "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND|$CNI_CONTAINERID|$CNI_NETNS|$CNI_IFNAME|$CNI_PATH|$in\" >> {}\n\
         case \"$in\" in *'\"fail\"'*) echo '{{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"try again\"}}'; exit 1;; esac\n",
        log.display()
    );
    let bin = dir.join("recorder");
    std::fs::write(&bin, script).unwrap();
    run_ok("chmod", &["755", bin.to_str().unwrap()]);
    let conf = json!({"cniVersion": "1.0.0", "name": "gcnet", "plugins": [
        {"type": "recorder", "mode": "fail"},
        {"type": "recorder", "mode": "ok", "name": "overridden"}
    ]});
    let tool = net
        .cnitool(&conf)
        .cni_path(std::slice::from_ref(&dir))
        .valid_attachments(json!([
            {"containerID": "c1", "ifname": "eth0"}
        ]));

    let gc = tool.gc();
    gc.assert_err();
    assert_eq!(gc.cni_error_code(), Some(11), "{gc}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "GC goes on after the first failure: {calls}"
    );
    for l in &lines {
        let f: Vec<&str> = l.splitn(6, '|').collect();
        assert_eq!(&f[..5], ["GC", "", "", "", dir.to_str().unwrap()], "{l}");
        let stdin: Value = serde_json::from_str(f[5]).unwrap();
        assert_eq!(stdin["cniVersion"], "1.1.0");
        assert_eq!(stdin["name"], "gcnet");
        assert_eq!(
            stdin["cni.dev/valid-attachments"],
            json!([{"containerID": "c1", "ifname": "eth0"}])
        );
    }
    std::fs::remove_file(&log).unwrap();

    let st = tool.status();
    st.assert_err();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().count(),
        1,
        "STATUS stops at the first failure: {calls}"
    );
    assert!(calls.starts_with("STATUS|"), "{calls}");
    let stdin: Value =
        serde_json::from_str(calls.trim_end().splitn(6, '|').nth(5).unwrap()).unwrap();
    assert!(stdin.get("cni.dev/valid-attachments").is_none());
    assert_eq!(stdin["cniVersion"], "1.1.0");

    // Default valid attachments: an empty list.
    std::fs::remove_file(&log).unwrap();
    net.cnitool(&conf).cni_path(&[dir]).gc().assert_err();
    let calls = std::fs::read_to_string(&log).unwrap();
    let stdin: Value =
        serde_json::from_str(calls.lines().next().unwrap().splitn(6, '|').nth(5).unwrap()).unwrap();
    assert_eq!(stdin["cni.dev/valid-attachments"], json!([]));
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn cnitool_del_sends_cached_prev_result_and_removes_cache() {
    let net = TestNet::new();
    let pod = net.pod("p");
    let dir = net.tmp().join("fakebin");
    std::fs::create_dir(&dir).unwrap();
    let log = net.tmp().join("calls.log");
    // Returns a fixed 1.0.0 result on ADD, records every call.
    let script = format!(
        "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND|$CNI_CONTAINERID|$CNI_NETNS|$CNI_IFNAME|$CNI_ARGS|$in\" >> {}\n\
         [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.213.4.2/24\"}}]}}'\nexit 0\n",
        log.display()
    );
    std::fs::write(dir.join("recorder"), script).unwrap();
    run_ok("chmod", &["755", dir.join("recorder").to_str().unwrap()]);
    let conf = json!({"cniVersion": "1.0.0", "name": "cachenet", "plugins": [
        {"type": "recorder", "capabilities": {"portMappings": true}}
    ]});
    let tool = net
        .cnitool(&conf)
        .cni_path(&[dir])
        .container_id("ctr1")
        .ifname("net1")
        .cni_args("K8S_POD_NAME=x")
        .cap_args(json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "bandwidth": {}}));
    let add = tool.add(&pod);
    add.assert_ok();
    assert_eq!(add.json()["ips"][0]["address"], "10.213.4.2/24");
    let cache = net.cache_dir().join("results/cachenet-ctr1-net1");
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["result"]["ips"][0]["address"], "10.213.4.2/24");

    tool.del(&pod).assert_ok();
    assert!(!cache.exists(), "DEL removes the cache file");
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = calls.lines().map(|l| l.splitn(6, '|').collect()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        &lines[0][..5],
        ["ADD", "ctr1", pod.path_str(), "net1", "K8S_POD_NAME=x"]
    );
    assert_eq!(
        &lines[1][..5],
        ["DEL", "ctr1", pod.path_str(), "net1", "K8S_POD_NAME=x"]
    );
    let add_in: Value = serde_json::from_str(lines[0][5]).unwrap();
    let del_in: Value = serde_json::from_str(lines[1][5]).unwrap();
    // Only declared capabilities reach runtimeConfig.
    assert_eq!(
        add_in["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    assert!(add_in.get("prevResult").is_none());
    assert_eq!(del_in["prevResult"]["ips"][0]["address"], "10.213.4.2/24");
    assert_eq!(del_in["runtimeConfig"], add_in["runtimeConfig"]);

    // A second DEL (no cache any more) still succeeds and sends no prevResult.
    tool.del(&pod).assert_ok();
    let calls = std::fs::read_to_string(&log).unwrap();
    let last: Value =
        serde_json::from_str(calls.lines().last().unwrap().splitn(6, '|').nth(5).unwrap()).unwrap();
    assert!(last.get("prevResult").is_none(), "{last}");
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn run_plugin_runs_in_the_host_netns() {
    let net = TestNet::new();
    let pod = net.pod("p");
    let conf = json!({"cniVersion": "1.0.0", "name": "direct", "type": "bridge", "bridge": "cnirs-br5",
        "ipam": {"type": "host-local", "dataDir": net.data_dir(), "subnet": "10.213.5.0/24"}});
    let bridge = reference_plugin_bin("bridge");
    let env = cni_env("ADD", "direct1", pod.path_str(), "eth0");
    let mut env: Vec<(String, String)> = env;
    env.push(("CNI_PATH".into(), REFERENCE_CNI_PATH.into()));
    let out = net.run_plugin(&bridge, &env, &conf.to_string());
    out.assert_ok();
    eprintln!("reference bridge ADD direct: {:?}", out.elapsed);
    assert_eq!(out.json()["ips"][0]["address"], "10.213.5.2/24");
    assert!(
        net.host().link("cnirs-br5").is_some(),
        "bridge made in the host netns"
    );
    assert!(
        !host_init_has_link("cnirs-br5"),
        "not in the machine's netns"
    );
    let env = cni_env("DEL", "direct1", pod.path_str(), "eth0");
    let mut env: Vec<(String, String)> = env;
    env.push(("CNI_PATH".into(), REFERENCE_CNI_PATH.into()));
    net.run_plugin(&bridge, &env, &conf.to_string()).assert_ok();
    // A bad config is a CNI error on stdout, parsed.
    let bad = net.run_plugin(&bridge, &env, "{");
    bad.assert_err();
    assert!(bad.cni_error_code().is_some(), "{bad}");
}

fn host_init_has_link(name: &str) -> bool {
    run(command("ip").args(["link", "show", "dev", name])).success()
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn nothing_left_in_the_machine_netns() {
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let net = TestNet::new();
            let pod = net.pod("p");
            let conf = bridge_conf(
                &net,
                "leak",
                "cnirs-br6",
                &format!("10.213.{}.0/24", 60 + i),
                true,
            );
            net.cnitool(&conf).reference().add(&pod).assert_ok();
            net.id().to_owned()
            // net dropped here without DEL: deleting the netns must still clean up.
        })
        .collect();
    for id in ids {
        assert!(
            listed_netns(&format!("{id}-")).is_empty(),
            "{id} left in ip netns list"
        );
    }
    assert!(
        !host_init_has_link("cnirs-br6"),
        "bridge leaked into the machine's netns"
    );
}

#[test]
#[ignore = "kernel test: needs root (make conformance)"]
fn harness_primitives_are_fast_enough() {
    let t = Instant::now();
    let net = TestNet::new();
    let new = t.elapsed();
    let t = Instant::now();
    let pod = net.pod("p");
    let pod_time = t.elapsed();
    let t = Instant::now();
    let out = net.outside();
    let outside = t.elapsed();
    let t = Instant::now();
    let _ = HostState::of(&net);
    let snap = t.elapsed();
    let t = Instant::now();
    assert!(can_ping(net.host(), &out.far_v4.to_string()));
    let ping_ok = t.elapsed();
    let t = Instant::now();
    assert!(!can_connect_tcp(net.host(), &out.far_v4.to_string(), 9));
    let refused = t.elapsed();
    let t = Instant::now();
    assert!(!can_ping(&pod, "10.213.250.1"), "pod has no route");
    let ping_fail = t.elapsed();
    let t = Instant::now();
    drop(net);
    let dropped = t.elapsed();
    eprintln!(
        "TestNet::new {new:?}, pod {pod_time:?}, outside {outside:?}, HostState::of {snap:?}, \
         ping ok {ping_ok:?}, ping unreachable {ping_fail:?}, tcp refused {refused:?}, drop {dropped:?}"
    );
    assert!(new.as_secs() < 5 && outside.as_secs() < 5 && dropped.as_secs() < 5);
}
