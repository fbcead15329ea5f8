//! dnsname through cnitool (issue 15): names and aliases answer on the network's gateway,
//! other names are forwarded to an upstream resolver the test runs in its "outside" netns,
//! another network's pods cannot reach the resolver, DEL/GC remove names, CHECK sees a dead
//! resolver and the next ADD restarts it.
//!
//! Queries are made from pod namespaces with `busybox nslookup NAME SERVER`. The upstream is
//! our own resolver binary (`dnsname --serve`) with a fixed zone, listening on 198.51.100.1
//! in the outside netns; the plugins are pointed at it with `CNIRS_DNS_RESOLV_CONF`. Every
//! resolver a test starts is stopped by pid when the test ends.
//!
//! Run alone: `cargo test -p conformance --test dnsname -- --ignored` (after `make build cnitool`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use conformance::*;
use serde_json::{json, Value};

const DOMAIN: &str = "dns.test";
/// The name the upstream resolver knows, and its address.
const FAR_NAME: &str = "far.upstream.test";
const FAR_ADDR: &str = "198.51.100.7";

/// What `busybox nslookup` got.
#[derive(Debug, PartialEq)]
enum Answer {
    Addrs(Vec<IpAddr>),
    NxDomain,
    /// No answer at all (timeout, refused, unreachable): the raw output.
    Nothing(String),
}

/// `ip netns exec FROM busybox nslookup NAME SERVER`.
fn lookup(from: &Netns, name: &str, server: &str) -> Answer {
    let out = from.exec(BUSYBOX, &["nslookup", name, server]);
    let text = format!("{}{}", out.stdout, out.stderr);
    if text.contains("NXDOMAIN") {
        return Answer::NxDomain;
    }
    let mut addrs = Vec::new();
    let mut in_answer = false;
    for line in out.stdout.lines() {
        if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer {
            if let Some(a) = line.strip_prefix("Address:") {
                if let Ok(ip) = a.trim().parse() {
                    addrs.push(ip);
                }
            }
        }
    }
    if out.success() && !addrs.is_empty() {
        addrs.sort();
        Answer::Addrs(addrs)
    } else {
        Answer::Nothing(text)
    }
}

fn addrs(ips: &[&str]) -> Answer {
    let mut v: Vec<IpAddr> = ips.iter().map(|s| ip_of(s)).collect();
    v.sort();
    Answer::Addrs(v)
}

/// Stops every resolver started under the test's run dir (by the pid it wrote), and the
/// upstream, when dropped.
struct Resolvers<'a> {
    net: &'a TestNet,
    upstream: Option<Child>,
}

impl Drop for Resolvers<'_> {
    fn drop(&mut self) {
        for dir in net_dirs(self.net) {
            if let Some(pid) = resolver_pid(&dir) {
                // SAFETY: kill(2) with a pid read from a pid file our own resolver wrote, and
                // checked to be a `dnsname --serve` of this dir just before.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.upstream.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every `<run_dir>/netns-*/dnsname/<network>` directory.
fn net_dirs(net: &TestNet) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(net.run_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let d = ns.path().join("dnsname");
        for n in std::fs::read_dir(d).into_iter().flatten().flatten() {
            out.push(n.path());
        }
    }
    out.sort();
    out
}

fn net_dir(net: &TestNet, network: &str) -> Option<PathBuf> {
    net_dirs(net)
        .into_iter()
        .find(|d| d.file_name().is_some_and(|n| n == network))
}

/// The pid of the resolver of `dir`, if that process is alive and is `dnsname --serve dir`.
fn resolver_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("--serve") && cmdline.contains(&*dir.to_string_lossy())).then_some(pid)
}

/// True if `pid` runs (a zombie does not: the resolver's parent, the plugin, is gone, and
/// whoever inherited it may reap it late).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

/// Waits (up to 2 s) for `pid` to be gone: its lock, which the plugin waits for, goes a few
/// instructions before the process does.
fn gone(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    !alive(pid)
}

/// Starts the upstream: `dnsname --serve` in the outside netns on 198.51.100.1:53, knowing
/// only far.upstream.test, forwarding nothing. Returns once it is listening.
fn start_upstream(net: &TestNet, outside: &Outside) -> Child {
    let dir = net.tmp().join("upstream");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        json!({"network": "upstream", "domain": "upstream.test",
               "listen": [outside.far_v4.to_string()], "port": 53, "device": null,
               "resolv_conf": "/nonexistent", "forward": false})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("entries.json"),
        json!({"entries": [{"container_id": "x", "ifname": "eth0", "name": "far",
                            "aliases": [], "ips": [FAR_ADDR]}]})
        .to_string(),
    )
    .unwrap();
    let mut child = outside
        .ns
        .command(&plugin_bin("dnsname").display().to_string())
        .arg("--serve")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "upstream resolver did not start");
    child
}

/// The host's resolv.conf as the plugins see it: the upstream only.
fn resolv_conf(net: &TestNet, outside: &Outside) -> String {
    let p = net.tmp().join("resolv.conf");
    std::fs::write(&p, format!("nameserver {}\n", outside.far_v4)).unwrap();
    p.display().to_string()
}

/// bridge (gateway .1 of `subnet`) + dnsname.
fn conflist(net: &TestNet, name: &str, bridge: &str, subnet: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "dnsname", "domainName": DOMAIN, "capabilities": {"aliases": true}}]})
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn names_and_aliases_resolve_other_names_are_forwarded_and_del_removes_them() {
    let net = TestNet::new();
    let outside = net.outside();
    let mut guard = Resolvers {
        net: &net,
        upstream: None,
    };
    guard.upstream = Some(start_upstream(&net, &outside));
    let rc = resolv_conf(&net, &outside);
    let conf = conflist(&net, "dn1", "br-dn1", "10.213.50.0/24");
    let (api, web) = (net.pod("api"), net.pod("web"));
    let gw = "10.213.50.1";

    let r_api = net
        .cnitool(&conf)
        .env("CNIRS_DNS_RESOLV_CONF", &rc)
        .cni_args("K8S_POD_NAME=api")
        .cap_args(json!({"aliases": {"dn1": ["db", "cache.internal"], "other": ["nope"]}}))
        .add(&api)
        .assert_ok()
        .json()
        .clone();
    assert_eq!(r_api["dns"]["nameservers"], json!([gw]), "{r_api}");
    assert_eq!(r_api["dns"]["search"], json!([DOMAIN]), "{r_api}");
    let web_tool = net
        .cnitool(&conf)
        .env("CNIRS_DNS_RESOLV_CONF", &rc)
        .cni_args("K8S_POD_NAME=Web");
    let r_web = web_tool.add(&web).assert_ok().json().clone();
    let (api_ip, web_ip) = (first_ip(&r_api), first_ip(&r_web));

    // Names, bare and qualified, case-insensitive; aliases; both ways.
    assert_eq!(lookup(&web, "api.dns.test", gw), addrs(&[&api_ip]));
    assert_eq!(lookup(&web, "API", gw), addrs(&[&api_ip]));
    assert_eq!(lookup(&web, "db.dns.test", gw), addrs(&[&api_ip]));
    assert_eq!(lookup(&web, "cache.internal", gw), addrs(&[&api_ip]));
    assert_eq!(lookup(&api, "web.dns.test", gw), addrs(&[&web_ip]));
    // The alias of another network is not ours; unknown names in the domain are NXDOMAIN.
    assert_eq!(lookup(&web, "nope.dns.test", gw), Answer::NxDomain);
    assert_eq!(lookup(&web, "nope", gw), Answer::NxDomain);
    // Everything else goes to the host's resolvers (here: the upstream in the outside netns).
    assert_eq!(lookup(&web, FAR_NAME, gw), addrs(&[FAR_ADDR]));
    assert_eq!(
        lookup(&web, "other.upstream.test", gw),
        Answer::NxDomain,
        "upstream's NXDOMAIN passed on"
    );

    // A network with `forward: false` (for an internal network) answers its own names and
    // refuses the rest: DNS is no way out of it.
    let mut sealed = conflist(&net, "dn1i", "br-dn1i", "10.213.56.0/24");
    sealed["plugins"][1]["forward"] = json!(false);
    let inner = net.pod("inner");
    let r_inner = net
        .cnitool(&sealed)
        .env("CNIRS_DNS_RESOLV_CONF", &rc)
        .cni_args("K8S_POD_NAME=inner")
        .add(&inner)
        .assert_ok()
        .json()
        .clone();
    let gw_i = "10.213.56.1";
    assert_eq!(lookup(&inner, "inner", gw_i), addrs(&[&first_ip(&r_inner)]));
    match lookup(&inner, FAR_NAME, gw_i) {
        Answer::Nothing(text) => assert!(text.contains("REFUSED"), "{text}"),
        other => panic!("forward: false still forwarded: {other:?}"),
    }
    net.cnitool(&sealed).del(&inner).assert_ok();

    // CHECK passes for both; the resolver is one process for the network.
    net.cnitool(&conf)
        .env("CNIRS_DNS_RESOLV_CONF", &rc)
        .cni_args("K8S_POD_NAME=api")
        .cap_args(json!({"aliases": {"dn1": ["db", "cache.internal"]}}))
        .check(&api)
        .assert_ok();
    web_tool.check(&web).assert_ok();
    let dir = net_dir(&net, "dn1").expect("dnsname state dir of dn1");
    let pid = resolver_pid(&dir).expect("resolver of dn1 running");

    // DEL: the name is gone as soon as DEL returns; the other stays; same resolver.
    web_tool.del(&api).assert_ok();
    assert_eq!(lookup(&web, "api.dns.test", gw), Answer::NxDomain);
    assert_eq!(lookup(&web, "db.dns.test", gw), Answer::NxDomain);
    assert_eq!(lookup(&web, "web.dns.test", gw), addrs(&[&web_ip]));
    assert_eq!(resolver_pid(&dir), Some(pid));
    // DEL again: idempotent.
    web_tool.del(&api).assert_ok();

    // The last DEL stops the resolver and removes its files.
    web_tool.del(&web).assert_ok();
    assert!(!dir.exists(), "{} left after the last DEL", dir.display());
    assert!(gone(pid), "resolver {pid} still running after the last DEL");
    web_tool.del(&web).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn another_networks_pods_cannot_reach_the_resolver_nor_see_its_names() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let (a, b) = (net.pod("a"), net.pod("b"));
    let conf_a = conflist(&net, "dna", "br-dna", "10.213.51.0/24");
    let conf_b = conflist(&net, "dnb", "br-dnb", "10.213.52.0/24");
    let (gw_a, gw_b) = ("10.213.51.1", "10.213.52.1");
    let ra = net
        .cnitool(&conf_a)
        .cni_args("K8S_POD_NAME=alpha")
        .add(&a)
        .assert_ok()
        .json()
        .clone();
    let rb = net
        .cnitool(&conf_b)
        .cni_args("K8S_POD_NAME=beta")
        .add(&b)
        .assert_ok()
        .json()
        .clone();
    // Positive controls: each pod resolves its own network's name; b reaches a's gateway
    // address at all (routed by the host: no isolation plugin in these conflists).
    assert_eq!(lookup(&a, "alpha.dns.test", gw_a), addrs(&[&first_ip(&ra)]));
    assert_eq!(lookup(&b, "beta.dns.test", gw_b), addrs(&[&first_ip(&rb)]));
    assert!(
        can_ping(&b, gw_a),
        "b -> {gw_a} must be routed for this test to mean anything"
    );
    // b's packets reach a's gateway on b's bridge: the resolver bound to br-dna never sees them.
    match lookup(&b, "alpha.dns.test", gw_a) {
        Answer::Nothing(_) => {}
        other => panic!("a pod of dnb got an answer from dna's resolver: {other:?}"),
    }
    // Each resolver knows only its own network's names.
    assert_eq!(lookup(&a, "beta.dns.test", gw_a), Answer::NxDomain);
    assert_eq!(lookup(&b, "alpha", gw_b), Answer::NxDomain);
    net.cnitool(&conf_a).del(&a).assert_ok();
    net.cnitool(&conf_b).del(&b).assert_ok();
    assert!(net_dirs(&net).is_empty(), "{:?}", net_dirs(&net));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn check_reports_a_dead_resolver_and_the_next_add_restarts_it() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let (p1, p2) = (net.pod("p1"), net.pod("p2"));
    let conf = conflist(&net, "dnc", "br-dnc", "10.213.53.0/24");
    let gw = "10.213.53.1";
    let t1 = net.cnitool(&conf).cni_args("K8S_POD_NAME=one");
    let r1 = t1.add(&p1).assert_ok().json().clone();
    t1.check(&p1).assert_ok();
    let dir = net_dir(&net, "dnc").unwrap();
    let pid = resolver_pid(&dir).unwrap();
    // SAFETY: kill(2) on the pid of the resolver this test started (checked by cmdline).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = t1.check(&p1);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(105), "{out}");
    assert!(out.stdout.contains("not running"), "{out}");
    // The next ADD brings it back, with every name it had.
    let t2 = net.cnitool(&conf).cni_args("K8S_POD_NAME=two");
    let r2 = t2.add(&p2).assert_ok().json().clone();
    let new_pid = resolver_pid(&dir).expect("resolver restarted by ADD");
    assert_ne!(new_pid, pid);
    assert_eq!(lookup(&p2, "one", gw), addrs(&[&first_ip(&r1)]));
    assert_eq!(lookup(&p1, "two", gw), addrs(&[&first_ip(&r2)]));
    t1.check(&p1).assert_ok();
    t2.check(&p2).assert_ok();

    // GC: only p2's attachment is valid -> "one" goes, "two" stays.
    let id2 = t2.container_id_for(&p2);
    let out = net
        .cnitool(&json!({"cniVersion": "1.1.0", "name": "dnc", "plugins": [
            {"type": "dnsname", "domainName": DOMAIN}]}))
        .valid_attachments(json!([{"containerID": id2, "ifname": "eth0"}]))
        .gc();
    out.assert_ok();
    assert_eq!(lookup(&p2, "one", gw), Answer::NxDomain);
    assert_eq!(lookup(&p1, "two", gw), addrs(&[&first_ip(&r2)]));
    let out = t1.check(&p1);
    assert_eq!(out.cni_error_code(), Some(105), "{out}");
    // GC with nothing valid: the resolver stops and its files go.
    net.cnitool(&json!({"cniVersion": "1.1.0", "name": "dnc", "plugins": [
            {"type": "dnsname", "domainName": DOMAIN}]}))
        .gc()
        .assert_ok();
    assert!(!dir.exists());
    assert!(
        gone(new_pid),
        "resolver {new_pid} still running after GC emptied it"
    );
    t1.del(&p1).assert_ok();
    t2.del(&p2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn names_that_are_not_dns_labels_are_refused_before_any_side_effect_and_no_name_is_none() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let p = net.pod("p");
    let conf = conflist(&net, "dnd", "br-dnd", "10.213.54.0/24");
    for (args, caps) in [
        ("K8S_POD_NAME=bad.name", json!({})),
        ("K8S_POD_NAME=-x", json!({})),
        (
            "K8S_POD_NAME=ok",
            json!({"aliases": {"dnd": ["fine", "not fine"]}}),
        ),
    ] {
        let out = net.cnitool(&conf).cni_args(args).cap_args(caps).add(&p);
        out.assert_err();
        assert_eq!(out.cni_error_code(), Some(7), "{out}");
        assert!(net_dirs(&net).is_empty(), "{:?}", net_dirs(&net));
        net.cnitool(&conf).del(&p).assert_ok();
    }
    // Without a name at all (nerdctl passes none): the pod gets the resolver, and is known
    // by its aliases only.
    let out = net
        .cnitool(&conf)
        .cap_args(json!({"aliases": {"dnd": ["anon"]}}))
        .add(&p);
    let r = out.assert_ok().json().clone();
    assert_eq!(r["dns"]["nameservers"], json!(["10.213.54.1"]), "{r}");
    assert_eq!(lookup(&p, "anon", "10.213.54.1"), addrs(&[&first_ip(&r)]));
    net.cnitool(&conf).del(&p).assert_ok();
    assert!(net_dirs(&net).is_empty());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn dual_stack_names_answer_a_and_aaaa_on_both_gateways() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let (a, b) = (net.pod("a"), net.pod("b"));
    let conf = json!({"cniVersion": "1.0.0", "name": "dn6", "plugins": [
        {"type": "bridge", "bridge": "br-dn6", "isGateway": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": "10.213.55.0/24"}], [{"subnet": "fd00:213:55::/64"}]]}},
        {"type": "dnsname", "domainName": DOMAIN}]});
    let ta = net.cnitool(&conf).cni_args("K8S_POD_NAME=six");
    let r = ta.add(&a).assert_ok().json().clone();
    net.cnitool(&conf)
        .cni_args("K8S_POD_NAME=client")
        .add(&b)
        .assert_ok();
    assert_eq!(
        r["dns"]["nameservers"],
        json!(["10.213.55.1", "fd00:213:55::1"]),
        "{r}"
    );
    let ips: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    for server in ["10.213.55.1", "fd00:213:55::1"] {
        assert_eq!(
            lookup(&b, "six.dns.test", server),
            addrs(&ips),
            "A and AAAA through {server}"
        );
    }
    ta.check(&a).assert_ok();
    ta.del(&a).assert_ok();
    net.cnitool(&conf).del(&b).assert_ok();
    assert!(net_dirs(&net).is_empty());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_bridge_made_again_gets_a_resolver_on_the_new_bridge() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let (p1, p2) = (net.pod("p1"), net.pod("p2"));
    let conf = conflist(&net, "dne", "br-dne", "10.213.57.0/24");
    let gw = "10.213.57.1";
    let t1 = net.cnitool(&conf).cni_args("K8S_POD_NAME=one");
    t1.add(&p1).assert_ok();
    let dir = net_dir(&net, "dne").unwrap();
    let pid = resolver_pid(&dir).unwrap();
    // An admin (or a flush) deletes the bridge: the resolver's sockets are bound to it.
    net.host().ip(&["link", "del", "br-dne"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(pid), "resolver {pid} outlived its bridge");
    // The next ADD makes the bridge again and a resolver on it.
    let t2 = net.cnitool(&conf).cni_args("K8S_POD_NAME=two");
    let r2 = t2.add(&p2).assert_ok().json().clone();
    assert!(resolver_pid(&dir).is_some_and(|p| p != pid));
    assert_eq!(lookup(&p2, "two", gw), addrs(&[&first_ip(&r2)]));
    t1.del(&p1).assert_ok();
    t2.del(&p2).assert_ok();
    assert!(net_dirs(&net).is_empty());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn parallel_adds_and_dels_share_one_resolver() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let conf = conflist(&net, "dnp", "br-dnp", "10.213.58.0/24");
    let gw = "10.213.58.1";
    let pods: Vec<Netns> = (0..8).map(|i| net.pod(&format!("q{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (net, conf) = (&net, &conf);
                s.spawn(move || {
                    net.cnitool(conf)
                        .cni_args(&format!("K8S_POD_NAME=q{i}"))
                        .add(p)
                        .assert_ok()
                        .json()
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dir = net_dir(&net, "dnp").unwrap();
    assert!(resolver_pid(&dir).is_some());
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            lookup(&pods[0], &format!("q{i}"), gw),
            addrs(&[&first_ip(r)])
        );
    }
    std::thread::scope(|s| {
        for p in &pods {
            let (net, conf) = (&net, &conf);
            s.spawn(move || net.cnitool(conf).del(p).assert_ok().code);
        }
    });
    assert!(net_dirs(&net).is_empty(), "{:?}", net_dirs(&net));
}
