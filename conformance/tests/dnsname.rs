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
//! Forwarding (issue 29): dnsmasq run as an authoritative server in the test's host netns (on
//! 127.0.0.1 and on systemd-resolved's 127.0.0.53) is the host's upstream; `dig` from a pod
//! shows what reaches the client: NODATA with the upstream's SOA, NXDOMAIN, REFUSED, TC over
//! UDP and the whole answer over TCP; our own names answer AAAA with NODATA and PTR.
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
    // PTR in ip6.arpa and in-addr.arpa for the pod's addresses.
    for ip in &ips {
        let addr = ip.split('/').next().unwrap();
        let ptr = dig(&b, "fd00:213:55::1", &["-x", addr]);
        assert_eq!(ptr.data("PTR"), ["six.dns.test."], "{}", ptr.raw);
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

// ------------------------------------------------------------------ forwarding (issue 29)

/// The zone every upstream of these tests serves authoritatively (dnsmasq's auth mode: AA,
/// and the zone's SOA in NODATA and NXDOMAIN answers).
const UP_ZONE: &str = "up.test";

/// A name with an A record whose AAAA the upstream refuses (see [`refusing_upstream`]):
/// google.com in podman's `podman network create` test against a host resolver refusing AAAA.
const A_REFUSED: &str = "arefused.example";

/// dnsmasq run as an authoritative server for [`UP_ZONE`] on `addr`:53 inside the test's host
/// netns: `aonly` (A only), `both` (A and AAAA), `big` (30 TXT records of 200 bytes: too large
/// for UDP), `who` (TXT: the upstream's label), any other name of the zone NXDOMAIN, and
/// REFUSED for every name outside it. Killed by pid when dropped.
struct Upstream {
    child: Child,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream(net: &TestNet, addr: &str, label: &str) -> Upstream {
    require_tools(&["dnsmasq"]);
    let mut args: Vec<String> = [
        "-k",
        "--conf-file=/dev/null",
        "--pid-file=",
        "-u",
        "root",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--listen-address={addr}"));
    args.push("--host-record=aonly.up.test,198.51.100.10".into());
    args.push("--host-record=both.up.test,198.51.100.11,2001:db8:213::11".into());
    args.push(format!("--txt-record=who.up.test,{label}"));
    for i in 0..30 {
        args.push(format!(
            "--txt-record=big.up.test,{i:03}{}",
            "x".repeat(197)
        ));
    }
    args.push(format!("--auth-zone={UP_ZONE}"));
    // The address, not `lo`: with an interface, dnsmasq binds every address of it and a
    // second instance finds 127.0.0.1 taken. Authoritative answers (AA, SOA in negative
    // answers) come only on an address configured on the interface: 127.0.0.1, not
    // 127.0.0.53 (recursive-style answers there, as a stub resolver gives).
    args.push(format!("--auth-server=ns.{UP_ZONE},{addr}"));
    args.push(format!("--auth-soa=7,hostmaster.{UP_ZONE}"));
    let child = net
        .host()
        .command("dnsmasq")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (scripts/install-deps.sh)");
    let up = Upstream { child };
    // Ready when it answers, itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let d = dig(net.host(), addr, &["who.up.test", "TXT", "+time=1"]);
        if d.data("TXT") == [format!("\"{label}\"")] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq on {addr} never answered: {}",
            d.raw
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    up
}

/// dnsmasq on `addr`:53 as a host resolver that knows [`A_REFUSED`] only as an A record
/// (`--address`, 198.51.100.12) and, with no upstream of its own, refuses its AAAA and every
/// other name (an authoritative dnsmasq refuses every name outside its zone, A included).
fn refusing_upstream(net: &TestNet, addr: &str) -> Upstream {
    let child = net
        .host()
        .command("dnsmasq")
        .args([
            "-k",
            "--conf-file=/dev/null",
            "--pid-file=",
            "-u",
            "root",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .arg(format!("--listen-address={addr}"))
        .arg(format!("--address=/{A_REFUSED}/198.51.100.12"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (scripts/install-deps.sh)");
    let up = Upstream { child };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dig(net.host(), addr, &[A_REFUSED, "A", "+time=1"]).data("A") != ["198.51.100.12"] {
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq on {addr} never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    up
}

/// What `dig` printed, parsed.
#[derive(Debug, Default)]
struct Dig {
    /// NOERROR, NXDOMAIN, REFUSED, SERVFAIL... (empty: no answer at all).
    status: String,
    /// Header flags (`qr`, `aa`, `tc`, `rd`, `ra`).
    flags: Vec<String>,
    /// `(name, type, data)` of the answer section.
    answer: Vec<(String, String, String)>,
    /// `(name, type, data)` of the authority section.
    authority: Vec<(String, String, String)>,
    /// dig said ";; Truncated, retrying in TCP mode."
    retried_over_tcp: bool,
    raw: String,
}

impl Dig {
    fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|(_, t, _)| t == rtype)
            .map(|(_, _, d)| d.clone())
            .collect();
        v.sort();
        v
    }

    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// NOERROR with no answer and the SOA of `zone` in the authority section.
    #[track_caller]
    fn assert_nodata_with_soa(&self, zone: &str) {
        assert_eq!(self.status, "NOERROR", "{}", self.raw);
        assert!(self.answer.is_empty(), "{}", self.raw);
        assert_eq!(
            self.authority
                .iter()
                .map(|(n, t, _)| (n.to_lowercase(), t.as_str()))
                .collect::<Vec<_>>(),
            [(format!("{zone}."), "SOA")],
            "{}",
            self.raw
        );
    }
}

/// `ip netns exec FROM dig @SERVER ARGS... +tries=1 +time=6` (one try, longer than the
/// resolver's 4 s budget, so a SERVFAIL of ours is seen).
fn dig(from: &Netns, server: &str, args: &[&str]) -> Dig {
    require_tools(&["dig"]);
    let at = format!("@{server}");
    let mut all = vec![at.as_str(), "+tries=1", "+time=6"];
    all.extend_from_slice(args);
    let out = from.exec("dig", &all);
    let raw = format!("{}{}", out.stdout, out.stderr);
    let mut d = Dig {
        raw: raw.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in out.stdout.lines() {
        if line.starts_with(";; Truncated, retrying in TCP mode") {
            d.retried_over_tcp = true;
        } else if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            if let Some(s) = rest.split("status: ").nth(1) {
                d.status = s.split(',').next().unwrap_or("").trim().to_owned();
            }
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(';') || line.trim().is_empty() {
            section = if line.trim().is_empty() { "" } else { section };
        } else if !section.is_empty() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let rr = (f[0].to_owned(), f[3].to_owned(), f[4..].join(" "));
                if section == "answer" {
                    d.answer.push(rr);
                } else {
                    d.authority.push(rr);
                }
            }
        }
    }
    d
}

/// A resolv.conf for the plugins (`CNIRS_DNS_RESOLV_CONF`) naming `servers`, written in place
/// (the resolver must notice the change by itself).
fn write_resolv_conf(path: &Path, servers: &[&str]) {
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn forwarded_answers_reach_pods_as_the_upstream_gave_them_and_large_ones_over_tcp() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let _up = upstream(&net, "127.0.0.1", "local");
    let rc = net.tmp().join("resolv.conf");
    write_resolv_conf(&rc, &["127.0.0.1"]);
    let conf = conflist(&net, "dnf", "br-dnf", "10.213.60.0/24");
    let gw = "10.213.60.1";
    let client = net.pod("client");
    net.cnitool(&conf)
        .env("CNIRS_DNS_RESOLV_CONF", rc.to_str().unwrap())
        .cni_args("K8S_POD_NAME=client")
        .add(&client)
        .assert_ok();

    // The A-only name: A answered; AAAA is NOERROR/NODATA with the upstream's SOA, and the
    // upstream's flags (AA) pass through.
    let a = dig(&client, gw, &["aonly.up.test", "A"]);
    assert_eq!(a.data("A"), ["198.51.100.10"], "{}", a.raw);
    let aaaa = dig(&client, gw, &["AOnly.up.test", "AAAA"]);
    aaaa.assert_nodata_with_soa(UP_ZONE);
    assert!(aaaa.flag("aa"), "upstream's AA lost: {}", aaaa.raw);
    assert!(
        aaaa.raw.contains("AOnly.up.test."),
        "the client's question: {}",
        aaaa.raw
    );
    // busybox nslookup asks A and AAAA: it must succeed (it exits 1 on a SERVFAIL).
    let out = client.exec(BUSYBOX, &["nslookup", "aonly.up.test", gw]);
    assert!(out.success(), "busybox nslookup failed: {out}");
    assert!(out.stdout.contains("198.51.100.10"), "{out}");
    let both = dig(&client, gw, &["both.up.test", "AAAA"]);
    assert_eq!(both.data("AAAA"), ["2001:db8:213::11"], "{}", both.raw);
    // NXDOMAIN with the zone's SOA; REFUSED as the upstream said it.
    let nx = dig(&client, gw, &["nothing.up.test", "A"]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert_eq!(nx.authority.len(), 1, "{}", nx.raw);
    // REFUSED, to dig's query (EDNS0 with a COOKIE option), as the upstream said it; over
    // TCP to any query.
    let refused = dig(&client, gw, &["elsewhere.example", "A"]);
    assert_eq!(refused.status, "REFUSED", "{}", refused.raw);
    let tcp = dig(&client, gw, &["elsewhere.example", "A", "+tcp", "+noedns"]);
    assert_eq!(tcp.status, "REFUSED", "{}", tcp.raw);
    // Over UDP without EDNS0 options (no OPT, as busybox, glibc and musl ask; or an empty
    // one): no answer at all, as dnsmasq (the Go dnsname) gives none. dig waits 6 s, more
    // than our 4 s budget, so a SERVFAIL or REFUSED of ours would show.
    for opts in ["+noedns", "+nocookie"] {
        let none = dig(&client, gw, &["elsewhere.example", "A", opts]);
        assert_eq!(none.status, "", "{opts}: {}", none.raw);
        assert!(none.raw.contains("timed out"), "{opts}: {}", none.raw);
    }
    // So busybox's nslookup of a name whose AAAA the host's resolver refuses prints the A and
    // exits 0, as with the Go dnsname (an answer REFUSED makes it exit 1).
    let _refusing = refusing_upstream(&net, "127.0.0.2");
    write_resolv_conf(&rc, &["127.0.0.2"]);
    let up = dig(net.host(), "127.0.0.2", &[A_REFUSED, "AAAA", "+noedns"]);
    assert_eq!(up.status, "REFUSED", "the upstream refuses: {}", up.raw);
    let out = client.exec(BUSYBOX, &["nslookup", A_REFUSED, gw]);
    assert!(out.success(), "busybox nslookup {A_REFUSED}: {out}");
    assert!(out.stdout.contains("198.51.100.12"), "{out}");
    assert!(!out.stdout.contains("REFUSED"), "{out}");
    write_resolv_conf(&rc, &["127.0.0.1"]);
    // Too large for UDP: TC set (for the client's EDNS0 size), then complete over TCP.
    let udp = dig(
        &client,
        gw,
        &["big.up.test", "TXT", "+ignore", "+bufsize=1232"],
    );
    assert!(udp.flag("tc"), "no TC over UDP: {}", udp.raw);
    let full = dig(&client, gw, &["big.up.test", "TXT"]);
    assert!(full.retried_over_tcp, "{}", full.raw);
    assert!(!full.flag("tc"), "{}", full.raw);
    assert_eq!(full.data("TXT").len(), 30, "{}", full.raw);
    let noedns = dig(&client, gw, &["big.up.test", "TXT", "+noedns", "+ignore"]);
    assert!(noedns.flag("tc"), "512 bytes without EDNS0: {}", noedns.raw);
    let tcp = dig(&client, gw, &["big.up.test", "TXT", "+tcp"]);
    assert_eq!(tcp.data("TXT").len(), 30, "{}", tcp.raw);
    net.cnitool(&conf).del(&client).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn own_names_answer_aaaa_with_nodata_and_ptr_for_pods() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    let conf = conflist(&net, "dno", "br-dno", "10.213.61.0/24");
    let gw = "10.213.61.1";
    let (api, client) = (net.pod("api"), net.pod("client"));
    let r = net
        .cnitool(&conf)
        .cni_args("K8S_POD_NAME=api")
        .cap_args(json!({"aliases": {"dno": ["db"]}}))
        .add(&api)
        .assert_ok()
        .json()
        .clone();
    net.cnitool(&conf)
        .cni_args("K8S_POD_NAME=client")
        .add(&client)
        .assert_ok();
    let ip = first_ip(&r);
    // An IPv4-only pod: AAAA is NODATA with the network's SOA, bare and qualified, any case.
    for name in ["api.dns.test", "API.DNS.TEST", "api", "db"] {
        let d = dig(&client, gw, &[name, "AAAA"]);
        d.assert_nodata_with_soa(DOMAIN);
        assert!(d.flag("aa"), "{}", d.raw);
        assert_eq!(
            dig(&client, gw, &[name, "A"]).data("A"),
            std::slice::from_ref(&ip),
            "{name}"
        );
    }
    let out = client.exec(BUSYBOX, &["nslookup", "api", gw]);
    assert!(out.success(), "busybox nslookup api: {out}");
    // An unknown name in the domain: NXDOMAIN with the SOA.
    let nx = dig(&client, gw, &["nope.dns.test", "AAAA"]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    // PTR for the pod's address: its names under the domain.
    let ptr = dig(&client, gw, &["-x", &ip]);
    assert_eq!(ptr.status, "NOERROR", "{}", ptr.raw);
    assert_eq!(
        ptr.data("PTR"),
        ["api.dns.test.", "db.dns.test."],
        "{}",
        ptr.raw
    );
    let out = client.exec(BUSYBOX, &["nslookup", &ip, gw]);
    assert!(out.stdout.contains("api.dns.test"), "{out}");
    net.cnitool(&conf).del(&api).assert_ok();
    net.cnitool(&conf).del(&client).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn upstreams_are_tried_in_order_a_resolved_stub_works_and_resolv_conf_changes_apply() {
    let net = TestNet::new();
    let _guard = Resolvers {
        net: &net,
        upstream: None,
    };
    // systemd-resolved's stub address, and a second upstream on 127.0.0.1.
    let _resolved = upstream(&net, "127.0.0.53", "resolved");
    let _local = upstream(&net, "127.0.0.1", "local");
    let rc = net.tmp().join("resolv.conf");
    write_resolv_conf(&rc, &["127.0.0.53"]);
    let conf = conflist(&net, "dnu", "br-dnu", "10.213.62.0/24");
    let gw = "10.213.62.1";
    let client = net.pod("client");
    net.cnitool(&conf)
        .env("CNIRS_DNS_RESOLV_CONF", rc.to_str().unwrap())
        .cni_args("K8S_POD_NAME=client")
        .add(&client)
        .assert_ok();
    let who = |want: &str| {
        let d = dig(&client, gw, &["who.up.test", "TXT"]);
        assert_eq!(d.data("TXT"), [format!("\"{want}\"")], "{}", d.raw);
    };
    who("resolved");
    // resolv.conf changed in place: the next query uses it, no signal, no ADD.
    write_resolv_conf(&rc, &["127.0.0.1", "127.0.0.53"]);
    who("local");
    // The first upstream does not listen (port unreachable): the next answers.
    write_resolv_conf(&rc, &["127.0.0.9", "127.0.0.53"]);
    who("resolved");
    // No upstream answers at all: SERVFAIL, ours (and only then).
    write_resolv_conf(&rc, &["127.0.0.9", "127.0.0.10"]);
    let sf = dig(&client, gw, &["who.up.test", "TXT"]);
    assert_eq!(sf.status, "SERVFAIL", "{}", sf.raw);
    // A silent upstream (takes the query, never answers) is given up for the next in time.
    let silent = net
        .host()
        .run_in(|| std::net::UdpSocket::bind("127.0.0.11:53").unwrap())
        .unwrap();
    write_resolv_conf(&rc, &["127.0.0.11", "127.0.0.1"]);
    who("local");
    let mut buf = [0u8; 512];
    silent.set_nonblocking(true).unwrap();
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the silent upstream was never asked"
    );
    net.cnitool(&conf).del(&client).assert_ok();
}
