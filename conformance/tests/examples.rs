//! The shipped conflists (`conf-examples/`): each one is a well-formed conflist libcni 1.1.2
//! can load, names only our plugins, and (kernel tests) works as shipped through cnitool:
//! ADD / CHECK / STATUS / DEL of a pod that reaches its gateway(s). Only `ipam.dataDir` is
//! patched (into the TestNet's dir); everything else, `cniVersion` included, is as shipped.
//!
//! Build first: `cargo build --release --workspace --bins`.
//! Run: `cargo test -p conformance --test examples` and `... -- --ignored` (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use conformance::*;
use serde_json::{json, Value};

/// Every plugin type of our suite, and the crate directory that builds it.
const OUR_TYPES: &[(&str, &str)] = &[
    ("bridge", "plugins/bridge"),
    ("internal-bridge", "plugins/internal-bridge"),
    ("portmap", "plugins/portmap"),
    ("isolation", "plugins/isolation"),
    ("firewall", "plugins/firewall"),
    ("tuning", "plugins/tuning"),
    ("dnsname", "plugins/dnsname"),
    ("host-local", "ipam/host-local"),
    ("static", "ipam/static"),
    ("dhcp", "ipam/dhcp"),
    ("etcd-ipam", "ipam/etcd-ipam"),
    ("overlay", "plugins/overlay"),
    ("loopback", "plugins/loopback"),
    ("bandwidth", "plugins/bandwidth"),
    ("ptp", "plugins/ptp"),
    ("macvlan", "plugins/macvlan"),
    ("host-device", "plugins/host-device"),
    ("tap", "plugins/tap"),
];

/// Versions libcni 1.1.2 (containerd 1.6, our cnitool) can load and convert results to.
const LIBCNI_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Versions our plugins speak (for the `cniVersions` list of CNI 1.1 runtimes).
const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn examples_dir() -> PathBuf {
    workspace_root().join("conf-examples")
}

/// Every file under conf-examples/ (recursively), sorted.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&examples_dir(), &mut out);
    out.sort();
    out
}

fn load(rel: &str) -> Value {
    let p = examples_dir().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// libcni's name rule (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
fn is_safe_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Every problem of one conflist (empty when it is fine).
fn conflist_problems(v: &Value) -> Vec<String> {
    let mut p = Vec::new();
    match v.get("cniVersion").and_then(Value::as_str) {
        Some(s) if LIBCNI_VERSIONS.contains(&s) => {}
        other => p.push(format!(
            "cniVersion {other:?}: must be one libcni 1.1.2 knows ({LIBCNI_VERSIONS:?})"
        )),
    }
    if let Some(list) = v.get("cniVersions") {
        match list.as_array() {
            Some(a)
                if a.iter()
                    .all(|x| x.as_str().is_some_and(|s| SUPPORTED.contains(&s))) => {}
            _ => p.push(format!(
                "cniVersions {list} lists a version we do not speak"
            )),
        }
    }
    match v.get("name").and_then(Value::as_str) {
        Some(n) if is_safe_name(n) => {}
        other => p.push(format!("name {other:?} is not a valid network name")),
    }
    let Some(plugins) = v.get("plugins").and_then(Value::as_array) else {
        p.push("no \"plugins\" array (a .conflist needs one)".to_owned());
        return p;
    };
    if plugins.is_empty() {
        p.push("empty plugins".to_owned());
    }
    for (i, pl) in plugins.iter().enumerate() {
        let mut types = vec![("type", pl.get("type"))];
        if let Some(ipam) = pl.get("ipam") {
            types.push(("ipam.type", ipam.get("type")));
        }
        for (key, ty) in types {
            match ty.and_then(Value::as_str) {
                Some(t) => match OUR_TYPES.iter().find(|(n, _)| *n == t) {
                    Some((_, dir)) if workspace_root().join(dir).join("Cargo.toml").is_file() => {}
                    Some((_, dir)) => {
                        p.push(format!("plugins[{i}].{key} {t}: crate {dir} missing"))
                    }
                    None => p.push(format!(
                        "plugins[{i}].{key} {t:?} is not one of our plugins"
                    )),
                },
                None => p.push(format!("plugins[{i}] has no {key}")),
            }
        }
        if pl.get("name").is_some() || pl.get("cniVersion").is_some() {
            p.push(format!(
                "plugins[{i}] sets name/cniVersion (libcni injects the list's own)"
            ));
        }
    }
    p
}

/// Whether our binary `ty` is implemented: built, and answers with its banner.
fn implemented(ty: &str) -> bool {
    let bin = cni_path().join(ty);
    bin.is_file() && {
        let out = run(&mut command(&bin));
        out.success() && out.stderr.starts_with(&format!("CNI {ty} plugin v"))
    }
}

/// Every plugin and IPAM type a conflist uses.
fn types_of(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for pl in v["plugins"].as_array().into_iter().flatten() {
        out.extend(pl["type"].as_str().map(str::to_owned));
        out.extend(pl["ipam"]["type"].as_str().map(str::to_owned));
    }
    out
}

#[test]
fn every_example_is_a_valid_conflist_of_our_plugins() {
    let files = example_files();
    assert!(
        files.len() >= 5,
        "expected at least the containerd, crio, nerdctl and seed examples, found {files:?}"
    );
    let mut bad = Vec::new();
    let mut names = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(examples_dir())
            .unwrap()
            .display()
            .to_string();
        if rel.ends_with("README.md") || rel.ends_with(".toml") || rel.ends_with(".yaml") {
            // READMEs say where each runtime's file goes; .toml are runtime config fragments
            // (conf-examples/containerd/config-cri.toml is loaded by tests/cri.rs); .yaml are
            // Kubernetes manifests (checked below, their conflists included).
            continue;
        }
        if !rel.ends_with(".conflist") {
            bad.push(format!("{rel}: not a .conflist"));
            continue;
        }
        let v: Value = match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                bad.push(format!("{rel}: {e}"));
                continue;
            }
        };
        for p in conflist_problems(&v) {
            bad.push(format!("{rel}: {p}"));
        }
        // Two files of one dir with the same network name would shadow each other in libcni.
        let dir = f.parent().unwrap().to_path_buf();
        if let Some(n) = v["name"].as_str() {
            if let Some(other) = names.insert((dir, n.to_owned()), rel.clone()) {
                bad.push(format!("{rel}: network name {n:?} also used by {other}"));
            }
        }
    }
    assert!(bad.is_empty(), "bad examples:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_catches_bad_conflists() {
    // The checker above must be able to fail.
    let cases = [
        json!({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "../x", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "x", "plugins": []}),
        json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}),
        json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "vlan"}]}),
        json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge", "ipam": {"type": "whereabouts"}}]}),
        json!({"cniVersion": "1.0.0", "cniVersions": ["2.0.0"], "name": "x", "plugins": [{"type": "bridge"}]}),
    ];
    for c in cases {
        assert!(!conflist_problems(&c).is_empty(), "not caught: {c}");
    }
    let good = json!({"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local"}}, {"type": "portmap"}]});
    assert_eq!(conflist_problems(&good), Vec::<String>::new());
}

/// Every document of a YAML file, as JSON (python3's yaml: no YAML crate in the workspace).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = run(command("python3").args([
        "-c",
        "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        &path.display().to_string(),
    ]));
    assert!(out.success(), "{}: not YAML: {out}", path.display());
    let docs: Vec<Value> = serde_json::from_str(out.stdout.trim()).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Problems of the DaemonSet manifest (empty when fine): it parses, its ConfigMap's conflist is
/// a valid conflist of our plugins, the init container installs the binaries and that
/// conflist into the host's dirs, the agent runs privileged in the host's network, every
/// mount has its volume, and the image is the one `make image` tags.
fn manifest_problems(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let of_kind = |k: &'static str| docs.iter().find(move |d| d["kind"] == k);
    let Some(cm) = of_kind("ConfigMap") else {
        return vec!["no ConfigMap".into()];
    };
    let Some(ds) = of_kind("DaemonSet") else {
        return vec!["no DaemonSet".into()];
    };
    let cm_name = cm["metadata"]["name"].as_str().unwrap_or_default();
    let conflists: Vec<(&String, &Value)> = cm["data"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.ends_with(".conflist")).collect())
        .unwrap_or_default();
    if conflists.len() != 1 {
        p.push(format!(
            "ConfigMap {cm_name}: {} conflists, want one",
            conflists.len()
        ));
    }
    for (key, text) in &conflists {
        match serde_json::from_str::<Value>(text.as_str().unwrap_or_default()) {
            Ok(v) => p.extend(
                conflist_problems(&v)
                    .into_iter()
                    .map(|e| format!("{key}: {e}")),
            ),
            Err(e) => p.push(format!("{key}: not JSON: {e}")),
        }
    }
    let spec = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if &labels[k] != v {
            p.push(format!(
                "selector {k}={v} does not match the pod template's labels"
            ));
        }
    }
    if spec["hostNetwork"] != true {
        p.push("the DaemonSet's pods must use hostNetwork".into());
    }
    let version = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .unwrap()
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .unwrap();
    let image = format!("localhost/cnirs:{version}");
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for want in ["/opt/cni/bin", "/etc/cni/net.d"] {
        if !host_paths.contains(&want) {
            p.push(format!("no hostPath volume for {want}"));
        }
    }
    if !volumes.iter().any(|v| v["configMap"]["name"] == cm_name) {
        p.push(format!("no volume from ConfigMap {cm_name}"));
    }
    let containers: Vec<(&str, &Value)> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| {
            spec[*k]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| (*k, c))
        })
        .collect();
    for (_, c) in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        if c["image"] != image.as_str() {
            p.push(format!(
                "{name}: image {} is not {image} (make image)",
                c["image"]
            ));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if !volumes.iter().any(|v| v["name"] == m["name"]) {
                p.push(format!("{name}: mount {} has no volume", m["name"]));
            }
        }
    }
    let args_of = |c: &Value| -> Vec<String> {
        ["command", "args"]
            .iter()
            .flat_map(|k| c[*k].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let install = containers.iter().find(|(k, c)| {
        *k == "initContainers" && args_of(c).iter().any(|a| a.starts_with("--dest="))
    });
    match install {
        None => p.push("no init container installing the binaries (--dest=...)".into()),
        Some((_, c)) => {
            let args = args_of(c);
            let key = conflists.first().map(|(k, _)| k.as_str()).unwrap_or("?");
            for want in [
                "--dest=/host/opt/cni/bin".to_owned(),
                format!("--conflist=/etc/cnirs/{key}"),
                "--conf-dir=/host/etc/cni/net.d".to_owned(),
            ] {
                if !args.contains(&want) {
                    p.push(format!("install-cni: missing {want}"));
                }
            }
        }
    }
    let agent = containers.iter().find(|(k, c)| {
        *k == "containers"
            && args_of(c).get(..2)
                == Some(&["/opt/cni/bin/cnirs".to_owned(), "agent".to_owned()][..])
    });
    match agent {
        None => p.push("no container running `cnirs agent`".into()),
        Some((_, c)) => {
            let sc = &c["securityContext"];
            if sc["privileged"] != true
                || !sc["capabilities"]["add"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "NET_ADMIN"))
            {
                p.push("the agent must be privileged with NET_ADMIN".into());
            }
            let usage =
                std::fs::read_to_string(workspace_root().join("crates/agent/src/lib.rs")).unwrap();
            for a in args_of(c).iter().filter(|a| a.starts_with("--")) {
                let flag = a.split('=').next().unwrap_or_default();
                if !usage.contains(flag) {
                    p.push(format!("cnirs agent has no flag {flag}"));
                }
            }
        }
    }
    p
}

#[test]
fn the_kubernetes_manifest_parses_and_installs_a_valid_conflist_and_the_agent() {
    let path = examples_dir().join("kubernetes/cnirs.yaml");
    let docs = yaml_docs(&path);
    let problems = manifest_problems(&docs);
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    // The checker can fail: a broken copy is caught.
    let mut broken = docs.clone();
    for d in &mut broken {
        if d["kind"] == "DaemonSet" {
            d["spec"]["template"]["spec"]["hostNetwork"] = json!(false);
            d["spec"]["template"]["spec"]["volumes"] = json!([]);
        }
    }
    assert!(
        manifest_problems(&broken).len() >= 3,
        "{:?}",
        manifest_problems(&broken)
    );
}

#[test]
fn runnable_examples_use_only_implemented_plugins() {
    // The kernel tests below run these as shipped: every plugin they name must be real.
    for rel in RUNNABLE {
        let v = load(rel);
        let missing: Vec<String> = types_of(&v)
            .into_iter()
            .filter(|t| !implemented(t))
            .collect();
        assert!(
            missing.is_empty(),
            "{rel} uses plugins that are not built or not implemented: {missing:?} (build: cargo build --release --workspace --bins)"
        );
    }
}

/// The examples whose plugins are all implemented.
const RUNNABLE: &[&str] = &[
    "containerd/10-cnirs-bridge.conflist",
    "crio/10-cnirs-crio.conflist",
    "seed/frontend.conflist",
    "seed/backend.conflist",
];

/// The example with every `ipam.dataDir` pointed into the TestNet.
fn as_shipped(net: &TestNet, rel: &str) -> Value {
    let mut v = load(rel);
    for pl in v["plugins"].as_array_mut().unwrap() {
        if pl.get("ipam").is_some() {
            pl["ipam"]["dataDir"] = json!(net.data_dir());
        }
    }
    v
}

fn lease_count(net: &TestNet, network: &str) -> usize {
    std::fs::read_dir(net.data_dir().join(network))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

/// ADD / CHECK / STATUS / DEL of two pods with the shipped conflist `rel`.
fn run_example(rel: &str) {
    let net = TestNet::new();
    let conf = as_shipped(&net, rel);
    let network = conf["name"].as_str().unwrap().to_owned();
    let ips_per_pod = conf["plugins"][0]["ipam"]["ranges"]
        .as_array()
        .map_or(1, Vec::len);
    let tool = net.cnitool(&conf);
    let (a, b) = (net.pod("a"), net.pod("b"));
    let t = Instant::now();
    let ra = tool.add(&a).assert_ok().json().clone();
    let t_add = t.elapsed();
    let rb = tool.add(&b).assert_ok().json().clone();
    assert_eq!(
        ra["cniVersion"], conf["cniVersion"],
        "result version\n{ra:#}"
    );
    let ips = ra["ips"].as_array().expect("ips in the result");
    assert_eq!(ips.len(), ips_per_pod, "one address per range set\n{ra:#}");
    for ip in ips {
        let addr = ip["address"].as_str().unwrap();
        let gw = ip["gateway"]
            .as_str()
            .unwrap_or_else(|| panic!("{rel}: no gateway for {addr}\n{ra:#}"));
        assert!(
            can_ping_eventually(&a, gw, 5),
            "{rel}: pod a ({addr}) cannot reach its gateway {gw}"
        );
        assert!(
            a.addrs("eth0").iter().any(|x| x == addr),
            "{addr} on eth0 of pod a"
        );
    }
    // The two pods of one network reach each other.
    let ip_a = ra["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(ra["ips"][0]["address"], rb["ips"][0]["address"]);
    assert!(
        can_ping_eventually(&b, &ip_a, 3),
        "{rel}: pod b cannot reach pod a {ip_a}"
    );
    assert_eq!(lease_count(&net, &network), 2 * ips_per_pod);
    tool.check(&a).assert_ok();
    tool.check(&b).assert_ok();
    tool.status().assert_ok();
    let t = Instant::now();
    tool.del(&a).assert_ok();
    let t_del = t.elapsed();
    tool.del(&b).assert_ok();
    tool.del(&b).assert_ok();
    assert_eq!(
        lease_count(&net, &network),
        0,
        "{rel}: leases left after DEL"
    );
    let veths: Vec<String> = net
        .host()
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(veths.is_empty(), "{rel}: veths left: {veths:?}");
    eprintln!("{rel}: ADD {t_add:?}, DEL {t_del:?}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn containerd_example_works_as_shipped() {
    run_example("containerd/10-cnirs-bridge.conflist");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn crio_example_works_as_shipped() {
    run_example("crio/10-cnirs-crio.conflist");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn seed_frontend_example_works_as_shipped() {
    run_example("seed/frontend.conflist");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn seed_backend_example_works_as_shipped() {
    run_example("seed/backend.conflist");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn nerdctl_example_works_as_shipped() {
    run_example("nerdctl/nerdctl-bridge.conflist");
}
