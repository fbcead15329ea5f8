//! static IPAM against the reference (`/usr/lib/cni/static`) as a control: the same configs
//! give the same answers (plain tests: static touches nothing, so both binaries run directly),
//! and through cnitool with our bridge the pod ends up with the same addresses and routes
//! whichever static answered (kernel test).
//!
//! Build first: `make build`. Run: `cargo test -p conformance --test static_ipam` and
//! `... -- --ignored` (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use conformance::*;
use serde_json::{json, Value};

fn call(bin: &Path, command_name: &str, cni_args: &str, conf: &Value) -> CmdOutput {
    let mut cmd = command(bin);
    cmd.env("CNI_COMMAND", command_name)
        .env("CNI_CONTAINERID", "ctr-static")
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent");
    if !cni_args.is_empty() {
        cmd.env("CNI_ARGS", cni_args);
    }
    run_with(&mut cmd, conf.to_string().as_bytes(), DEFAULT_TIMEOUT)
}

const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn readme_ipam() -> Value {
    json!({"type": "static",
        "addresses": [
            {"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
            {"address": "3ffe:ffff:0:01ff::1/64", "gateway": "3ffe:ffff:0::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"},
                   {"dst": "3ffe:ffff:0:01ff::1/64"}],
        "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]}})
}

fn conf(version: &str, ipam: Value) -> Value {
    json!({"cniVersion": version, "name": "static-net", "type": "bridge", "ipam": ipam})
}

/// Configs both plugins accept, with the CNI_ARGS to send (the reference 1.1.1 in Debian
/// speaks up to 1.0.0).
fn accepted_cases() -> Vec<(&'static str, Value, &'static str)> {
    let mut cases = Vec::new();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        cases.push(("readme", conf(v, readme_ipam()), ""));
    }
    cases.push((
        "0.2.0 one address per family",
        conf(
            "0.2.0",
            json!({"addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                                 {"address": "fd00:10::1/64"}],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "fd00:99::/64", "gw": "fd00:10::9"}]}),
        ),
        "",
    ));
    cases.push((
        "Go-cased keys",
        conf(
            "1.0.0",
            json!({"Addresses": [{"ADDRESS": "10.1.0.2/24", "Gateway": "10.1.0.1"}],
                   "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.1.0.1"}],
                   "DNS": {"Nameservers": ["10.1.0.53"], "Options": ["ndots:2"]}}),
        ),
        "",
    ));
    cases.push((
        "CNI_ARGS IP appended, GATEWAY only to IP= addresses",
        conf("1.0.0", json!({"addresses": [{"address": "10.9.0.2/24"}]})),
        "IgnoreUnknown=1;IP=10.9.0.3/24, fd00:9::3/64;GATEWAY=10.9.0.1,fd00:9::1",
    ));
    let mut rc = conf(
        "1.0.0",
        json!({"addresses": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1"}]}),
    );
    rc["args"] = json!({"cni": {"ips": ["10.7.0.2/24"]}});
    cases.push(("args.cni.ips replaces", rc.clone(), "IP=10.9.0.3/24"));
    rc["runtimeConfig"] = json!({"ips": ["10.6.0.2/24", "fd00:6::2/64"]});
    cases.push(("runtimeConfig.ips replaces", rc, ""));
    cases
}

/// The same config through both binaries: the same result JSON, in every version.
#[test]
fn static_answers_exactly_as_the_reference() {
    let ours = plugin_bin("static");
    let theirs = reference_plugin_bin("static");
    for (what, conf, cni_args) in accepted_cases() {
        let a = call(&ours, "ADD", cni_args, &conf);
        let b = call(&theirs, "ADD", cni_args, &conf);
        assert!(
            a.success() && b.success(),
            "{what}:\nours: {a}\nreference: {b}"
        );
        assert_eq!(a.json(), b.json(), "{what}: ours vs the reference");
        // DEL has nothing to do, in both.
        assert!(call(&ours, "DEL", cni_args, &conf).success(), "{what}");
    }
}

/// Inputs both refuse (our code is 7, the reference's 999).
#[test]
fn static_refuses_what_the_reference_refuses() {
    let ours = plugin_bin("static");
    let theirs = reference_plugin_bin("static");
    let bad_addr = conf("1.0.0", json!({"addresses": [{"address": "10.0.0.1"}]}));
    let two_v4_old = conf(
        "0.2.0",
        json!({"addresses": [{"address": "10.0.0.2/24"}, {"address": "10.0.1.2/24"}]}),
    );
    let mut bad_rc = conf("1.0.0", json!({}));
    bad_rc["runtimeConfig"] = json!({"ips": ["nope"]});
    let no_ipam = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
    for (what, conf, cni_args) in [
        ("address without prefix", bad_addr, ""),
        ("two IPv4 addresses at 0.2.0", two_v4_old, ""),
        ("runtimeConfig.ips not CIDR", bad_rc, ""),
        ("no ipam", no_ipam, ""),
        (
            "CNI_ARGS IP not CIDR",
            conf("1.0.0", json!({})),
            "IP=10.0.0.5",
        ),
        (
            "CNI_ARGS unknown key",
            conf("1.0.0", json!({})),
            "IP=10.0.0.5/24;FOO=1",
        ),
    ] {
        let a = call(&ours, "ADD", cni_args, &conf);
        let b = call(&theirs, "ADD", cni_args, &conf);
        assert!(!b.success(), "{what}: the reference accepted it: {b}");
        assert!(!a.success(), "{what}: we accepted it: {a}");
        assert!(matches!(a.cni_error_code(), Some(1 | 4 | 7)), "{what}: {a}");
    }
}

/// CHECK against a prevResult: both pass when it holds the addresses; a gateway that differs
/// fails both.
#[test]
fn static_check_agrees_with_the_reference_on_gateways() {
    let ours = plugin_bin("static");
    let theirs = reference_plugin_bin("static");
    let mut c = conf(
        "1.0.0",
        json!({"addresses": [{"address": "10.4.0.2/24", "gateway": "10.4.0.1"}]}),
    );
    c["prevResult"] = json!({"cniVersion": "1.0.0",
        "ips": [{"address": "10.4.0.2/24", "gateway": "10.4.0.1"}]});
    for bin in [&ours, &theirs] {
        call(bin, "CHECK", "", &c).assert_ok();
    }
    c["prevResult"]["ips"][0]["gateway"] = json!("10.4.0.9");
    for bin in [&ours, &theirs] {
        assert!(!call(bin, "CHECK", "", &c).success(), "{}", bin.display());
    }
}

/// A CNI_PATH dir holding our bridge and the given `static` (symlinks).
fn plugin_dir(net: &TestNet, label: &str, static_bin: &Path) -> PathBuf {
    let dir = net.tmp().join(format!("bin-{label}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(plugin_bin("bridge"), dir.join("bridge")).unwrap();
    std::os::unix::fs::symlink(static_bin, dir.join("static")).unwrap();
    dir
}

/// The pod interface's addresses (`addr/prefix`) and routes (`dst via gw`), sorted.
fn pod_state(pod: &Netns) -> (Vec<String>, Vec<String>) {
    let mut addrs = pod.addrs("eth0");
    addrs.retain(|a| !a.starts_with("fe80:"));
    addrs.sort();
    let mut routes: Vec<String> = [false, true]
        .into_iter()
        .flat_map(|v6| pod.routes(v6))
        .filter(|r| r["dev"] == "eth0")
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().unwrap_or("?"),
                r["gateway"].as_str().unwrap_or("-")
            )
        })
        .filter(|r| !r.starts_with("fe80::"))
        .collect();
    routes.sort();
    (addrs, routes)
}

/// bridge + static through cnitool: the config's addresses, then CNI_ARGS IP/GATEWAY, then
/// the `ips` capability; the pod ends up the same with our static as with the reference's.
#[test]
#[ignore]
fn bridge_with_static_gives_the_pod_what_the_reference_static_gives() {
    let net = TestNet::new();
    let pod = net.pod("s");
    let ours = plugin_dir(&net, "ours", &plugin_bin("static"));
    let theirs = plugin_dir(&net, "ref", &reference_plugin_bin("static"));
    let conflist = json!({"cniVersion": "1.0.0", "name": "static-net", "plugins": [{
        "type": "bridge", "bridge": "br-static", "capabilities": {"ips": true},
        "ipam": {"type": "static",
            "addresses": [{"address": "10.214.0.5/24", "gateway": "10.214.0.1"},
                          {"address": "fd00:214::5/64", "gateway": "fd00:214::1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.215.0.0/16", "gw": "10.214.0.9"},
                       {"dst": "::/0"}],
            "dns": {"nameservers": ["10.214.0.53"]}}}]});
    type Tweak = fn(Cnitool<'_>) -> Cnitool<'_>;
    let variants: [(&str, Tweak); 3] = [
        ("config", |t| t),
        ("CNI_ARGS", |t| {
            t.cni_args("IgnoreUnknown=1;IP=10.214.0.6/24;GATEWAY=10.214.0.1")
        }),
        ("ips capability", |t| {
            t.cap_args(json!({"ips": ["10.214.0.7/24", "fd00:214::7/64"]}))
        }),
    ];
    for (what, tweak) in variants {
        let mut seen = Vec::new();
        for dir in [&ours, &theirs] {
            let tool = tweak(net.cnitool(&conflist).cni_path(std::slice::from_ref(dir)));
            let r = tool.add(&pod).assert_ok().json().clone();
            tool.check(&pod).assert_ok();
            let ips: Vec<Value> = r["ips"].as_array().unwrap().clone();
            seen.push((ips, r["routes"].clone(), r["dns"].clone(), pod_state(&pod)));
            tool.del(&pod).assert_ok();
            assert!(pod.link("eth0").is_none(), "{what}: DEL removed eth0");
        }
        assert_eq!(
            seen[0], seen[1],
            "{what}: ours (left) vs the reference static"
        );
        let (addrs, routes) = &seen[0].3;
        assert!(!addrs.is_empty(), "{what}: the pod got addresses");
        if what == "config" {
            assert!(
                routes.contains(&"10.215.0.0/16 via 10.214.0.9".to_string()),
                "{routes:?}"
            );
            assert!(
                routes.contains(&"default via 10.214.0.1".to_string()),
                "{routes:?}"
            );
        }
        if what == "ips capability" {
            assert_eq!(
                addrs,
                &vec!["10.214.0.7/24".to_string(), "fd00:214::7/64".to_string()]
            );
        }
    }
}
