//! `make bench-scale` reduced (N=20 hosts, 10 pods each, 20 replacements/s for 10 s): the
//! harness runs end to end against a real 3-member etcd and a real host, writes every field of
//! `scale.json`, and the cluster converged (no ADD left unapplied, no duplicate address, the
//! real host's agent programmed at least one entry per remote host). Figures are not asserted:
//! they belong to the bench (docs/scale.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::process::Command;

use conformance::cni::{cni_path, plugin_bin, workspace_root};
use serde_json::Value;

/// The fields docs/scale.md and #27 promise, besides `summary`.
const FIELDS: &[&str] = &[
    "hosts",
    "pods",
    "churn_per_s",
    "fill_s",
    "etcd_writes_per_add",
    "etcd_events_per_add_per_host",
    "converge_p50_ms",
    "converge_p99_ms",
    "agent_rss_mib",
    "agent_cpu_pct",
    "kernel_entries_real_host",
    "etcd_db_mib",
    "errors",
    "duplicates",
];

#[test]
#[ignore]
fn bench_scale_reduced_run_reports_every_field_and_converges() {
    conformance::require_root();
    conformance::require_tools(&["etcd", "jq", "ip", "bridge"]);
    for b in ["cnirs-scale", "cnirs-agent", "overlay", "etcd-ipam"] {
        plugin_bin(b);
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(workspace_root().join("bench/scale.sh"))
        .env("CNIRS_BIN_DIR", cni_path())
        .env("BENCH_OUT", out.path())
        .env("N", "20")
        .env("P", "10")
        .env("CHURN", "20")
        .env("DURATION", "10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The script names its namespaces after its pid.
    let ns_tag = format!("cnirs-sc{}-", run.id());
    let run = run.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench/scale.sh failed:\n{log}");
    let text = std::fs::read_to_string(out.path().join("scale.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let obj = v.as_object().unwrap();
    for f in FIELDS {
        assert!(obj[*f].is_number(), "{f} missing or not a number in {text}");
    }
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = FIELDS.iter().copied().chain(["summary"]).collect();
    want.sort_unstable();
    assert_eq!(keys, want, "exactly the promised fields");
    assert!(!v["summary"].as_array().unwrap().is_empty());
    assert_eq!(v["hosts"], 20);
    // 19 simulated hosts x 10 pods, plus the real host's 2.
    assert_eq!(v["pods"], 19 * 10 + 2, "{text}");
    // Unconverged ADDs count as errors: 0 means every ADD reached every other host.
    assert_eq!(v["errors"], 0, "{text}\n{log}");
    assert_eq!(v["duplicates"], 0, "{text}");
    assert!(v["churn_per_s"].as_f64().unwrap() > 0.0, "{text}");
    // A replacement in a block its host holds writes nothing to etcd (the address is the
    // host's; DEL keeps the block).
    assert_eq!(v["etcd_writes_per_add"].as_f64(), Some(0.0), "{text}");
    // The real host's agent converged too: at least one entry per remote host.
    assert!(
        v["kernel_entries_real_host"].as_u64().unwrap() >= 19,
        "{text}"
    );
    assert!(out.path().join("scale-n20.json").is_file());
    // Nothing of the run is left.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&ns_tag),
        "netns {ns_tag}* left behind"
    );
}
