//! `make bench`'s CRI rows (issue 27): pod start and stop as kubelet feels them.
//!
//! One containerd 1.6 with its CRI plugin ([`CriNode`], as in tests/cri.rs), one run, two
//! chains behind it: ours (the shipped conf-examples/containerd/10-cnirs-bridge.conflist:
//! bridge + host-local + portmap + isolation, dual stack) and the reference Go plugins from
//! /usr/lib/cni (bridge + host-local + portmap + firewall, the same ranges' shape on another
//! bridge and subnet), put on the CRI's plugin path as `ref-<name>`. The conflist is swapped
//! between the phases (the CRI reloads its conf dir), and a warm-up pod, not measured, shows
//! by its address which chain the CRI runs.
//!
//! Per chain: `CRI_BENCH_PODS` (50) RunPodSandbox calls, each with a hostPort, while the
//! earlier ones stay; then StopPodSandbox + RemovePodSandbox of each. Writes
//! `target/bench/cri.json` and `target/bench/cri.md` (p50/p95 and the ratio ours/reference).
//! No timing is asserted: every pod must start and go, that is all that can fail.
//!
//! Run under the global lock (make bench does):
//! `flock /tmp/cnirs-global.lock cargo test -p conformance --test cri_bench -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use conformance::{cri::*, *};
use serde_json::{json, Value};

const REFERENCE: &str = "/usr/lib/cni";

fn ours(net: &TestNet) -> Value {
    let example = workspace_root().join("conf-examples/containerd/10-cnirs-bridge.conflist");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["dataDir"] =
        Value::from(net.data_dir().join("ours").display().to_string());
    conf
}

fn reference(net: &TestNet) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "ref-bridge",
        "plugins": [
            {
                "type": "ref-bridge",
                "bridge": "cniref0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "ref-host-local",
                    "dataDir": net.data_dir().join("ref").display().to_string(),
                    "ranges": [[{ "subnet": "10.89.0.0/16" }], [{ "subnet": "fd00:89::/64" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]
                }
            },
            { "type": "ref-portmap", "capabilities": { "portMappings": true } },
            { "type": "ref-firewall" }
        ]
    })
}

/// Put `conf` in place atomically (the CRI watches the directory).
fn install(dir: &Path, conf: &Value) {
    let tmp = dir.join(".10-bench.conflist.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(conf).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join("10-bench.conflist")).unwrap();
}

/// Until a pod gets an address of `prefix` (the CRI reloaded the conflist): that pod is a
/// warm-up, stopped and removed, not measured.
fn warm_up(node: &CriNode, chain: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 0.. {
        let id = node.run_pod_ok(&PodSpec::new(&format!("warm-{chain}-{k}")));
        let ips = node.pod_ips(&id);
        node.stop_and_remove(&id);
        if ips.first().is_some_and(|ip| ip.starts_with(prefix)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRI did not load the {chain} conflist in 30 s (pod got {ips:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let r = q * (s.len() - 1) as f64;
    let (lo, hi) = (r.floor() as usize, r.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (r - lo as f64)
}

struct Phase {
    run_ms: Vec<f64>,
    stop_ms: Vec<f64>,
}

fn phase(node: &CriNode, chain: &str, prefix: &str, pods: usize, port0: u16) -> Phase {
    warm_up(node, chain, prefix);
    let mut ids = Vec::new();
    let mut run_ms = Vec::new();
    for i in 0..pods {
        let spec = PodSpec::new(&format!("{chain}-{i}")).port(80, port0 + i as u16, "");
        let t = Instant::now();
        let id = node.run_pod_ok(&spec);
        run_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(id);
    }
    // Every pod of this phase is the chain's (its address), and published its hostPort.
    for id in &ids {
        let ips = node.pod_ips(id);
        assert!(
            ips.first().is_some_and(|ip| ip.starts_with(prefix)),
            "{chain} pod got {ips:?}"
        );
    }
    let mut stop_ms = Vec::new();
    for id in &ids {
        let t = Instant::now();
        node.stop_and_remove(id);
        stop_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    assert!(node.pods().is_empty(), "sandboxes left: {:?}", node.pods());
    Phase { run_ms, stop_ms }
}

fn out_dir() -> PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/bench"))
}

#[test]
#[ignore = "benchmark (root, containerd, reference plugins): run by make bench under the global lock"]
fn cri_run_and_stop_pod_sandbox_ours_against_the_reference() {
    require_root();
    require_tools(&[
        "containerd",
        "ctr",
        "runc",
        "nsenter",
        "unshare",
        "tar",
        "sha256sum",
        "iptables",
    ]);
    let refs = ["bridge", "host-local", "portmap", "firewall"];
    for p in refs {
        assert!(
            Path::new(REFERENCE).join(p).exists(),
            "{REFERENCE}/{p} missing (containernetworking-plugins)"
        );
    }
    let pods: usize = std::env::var("CRI_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let net = TestNet::new();
    let dir = net.tmp().join("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    install(&dir, &ours(&net));
    let targets: Vec<(String, PathBuf)> = refs
        .iter()
        .map(|p| (format!("ref-{p}"), Path::new(REFERENCE).join(p)))
        .collect();
    let extra: Vec<(&str, &Path)> = targets
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_path()))
        .collect();
    let node = CriNode::start_with_bins(&net, &dir, &extra);

    // One phase per chain keeps the run short: ours first, the reference second (so the
    // reference gets the containerd that is already warm, not ours).
    let a = phase(&node, "ours", "10.88.", pods, 20000);
    install(&dir, &reference(&net));
    let b = phase(&node, "ref", "10.89.", pods, 21000);

    let row = |what: &str, o: &[f64], r: &[f64]| -> (String, Value) {
        let (o50, o95, r50, r95) = (pct(o, 0.5), pct(o, 0.95), pct(r, 0.5), pct(r, 0.95));
        (
            format!(
                "| {what} | {o50:.1} / {o95:.1} ms | {r50:.1} / {r95:.1} ms | {:.2}x / {:.2}x |",
                o50 / r50.max(1e-9),
                o95 / r95.max(1e-9)
            ),
            json!({"what": what, "ours_p50_ms": o50, "ours_p95_ms": o95,
                   "ref_p50_ms": r50, "ref_p95_ms": r95,
                   "ratio_p50": o50 / r50.max(1e-9), "ratio_p95": o95 / r95.max(1e-9)}),
        )
    };
    let (run_md, run_js) = row("RunPodSandbox (hostPort)", &a.run_ms, &b.run_ms);
    let (stop_md, stop_js) = row("StopPodSandbox + RemovePodSandbox", &a.stop_ms, &b.stop_ms);
    let md = format!(
        "## Pod start and stop through containerd's CRI\n\n\
         containerd 1.6 CRI, {pods} sandboxes per chain (each with a hostPort, kept until all \
         {pods} run, then stopped and removed), ours (bridge + host-local + portmap + \
         isolation) against the reference plugins (bridge + host-local + portmap + firewall, \
         {REFERENCE}), same containerd, same run; load average {}.\n\n\
         | CRI call | ours p50 / p95 | reference p50 / p95 | ratio p50 / p95 |\n\
         |---|---|---|---|\n{run_md}\n{stop_md}\n",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("cri.md"), &md).unwrap();
    std::fs::write(
        out.join("cri.json"),
        serde_json::to_string_pretty(&json!({
            "pods_per_chain": pods,
            "rows": [run_js, stop_js],
            "ours": {"run_ms": a.run_ms, "stop_remove_ms": a.stop_ms},
            "reference": {"run_ms": b.run_ms, "stop_remove_ms": b.stop_ms},
        }))
        .unwrap(),
    )
    .unwrap();
    println!("{md}");
}
