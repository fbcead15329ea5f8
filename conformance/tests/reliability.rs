//! Reliability (issue 9): what happens to pods when the host's firewall is reloaded, when a
//! plugin is SIGKILLed half-way through an ADD, under concurrent churn, and after a reboot.
//! Every test builds its own TestNet and drives the release binaries of the suite
//! (`cargo build --release --workspace --bins`), including `cnirs-reconcile`.
//!
//! * `firewall_reload_then_reconcile`: `nft flush ruleset` breaks published ports,
//!   isolation and masquerade and makes CHECK fail naming what is missing; `cnirs-reconcile`
//!   brings all of it back and CHECK passes again.
//! * `sigkill_during_add_then_del_leaves_nothing`: the chain bridge(+host-local) -> portmap
//!   -> isolation is killed (whole process group) after a delay swept over the ADD's duration
//!   (`CNIRS_CRASH_POINTS`, default 40); a DEL then restores the host to its baseline, and the
//!   next ADD works. `sigkill_after_nft_commit_then_del_leaves_nothing` hits the one window
//!   the sweep found deterministically (fixed: nftplan writes its state as intent before nft runs).
//! * `concurrent_churn_keeps_addresses_unique_and_leaks_nothing`: 16 workers ADD/DEL through
//!   cnitool over 3 isolated networks with published ports. `CNIRS_SOAK_OPS` sets the total
//!   number of operations (default 192; `make soak` uses 2000).
//! * `reboot_then_gc_removes_the_dead`: pods vanish without DEL; leases survive; `cnitool gc`
//!   with the survivors removes the rest.
//!
//! Run: `cargo test -p conformance --test reliability -- --ignored` (as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use conformance::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers

/// bridge (gateway, default route, masquerade) + host-local on `subnet`, then portmap and
/// isolation.
fn chain_conf(net: &TestNet, name: &str, bridge: &str, subnet: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": true, "isDefaultGateway": true,
         "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": subnet}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "isolation"}
    ]})
}

fn ports(host_port: u16, container_port: u16) -> Value {
    json!({"portMappings": [{"hostPort": host_port, "containerPort": container_port,
                             "protocol": "tcp"}]})
}

/// Every published-port element (`pm4_any`), as text.
fn port_elems(net: &TestNet) -> Vec<String> {
    nft_elems(net, "map", "pm4_any")
}

fn reconcile_bin() -> PathBuf {
    plugin_bin("cnirs-reconcile")
}

/// `ip netns exec HOST cnirs-reconcile ARGS` with the test's CNIRS_RUN_DIR.
fn run_reconcile(net: &TestNet, args: &[&str]) -> CmdOutput {
    let mut cmd = net.host().command(&reconcile_bin().display().to_string());
    cmd.args(args).env("CNIRS_RUN_DIR", net.run_dir());
    run(&mut cmd)
}

/// Files that legitimately change across ADD/DEL cycles: host-local's round-robin cursor,
/// which `inet cnirs` table the state last filled (a new handle after a flush + restore), and
/// the run dir's directories (a network's stay after its last DEL until reconcile prunes them).
fn volatile(i: &Item) -> bool {
    i.kind == "file"
        && (i.text.contains("last_reserved_ip")
            || i.text.contains("/table.json = ")
            // A network's state directories: kept after its last DEL, pruned by reconcile.
            || (i.text.starts_with("run/") && i.text.ends_with('/')))
}

/// A snapshot diff against `base`, without the volatile items.
fn leaks(base: &HostState, net: &TestNet) -> StateDiff {
    base.diff(&HostState::of(net)).without(volatile)
}

// ---------------------------------------------------------------------------------------------
// 1. firewall reload

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn firewall_reload_then_reconcile() {
    let net = TestNet::new();
    let out = net.outside();
    // Only masqueraded traffic comes back from the outside.
    out.remove_return_routes();
    let conf_a = chain_conf(&net, "rel-a", "cnirs-ra", "10.231.1.0/24");
    let conf_b = chain_conf(&net, "rel-b", "cnirs-rb", "10.231.2.0/24");
    let (a, b) = (net.pod("a"), net.pod("b"));
    let tool_a = || net.cnitool(&conf_a).cap_args(ports(8081, 80));
    let tool_b = || net.cnitool(&conf_b);
    let ip_a = first_ip(tool_a().add(&a).assert_ok().json());
    let ip_b = first_ip(tool_b().add(&b).assert_ok().json());
    let _srv_a = TcpServer::start(&a, "0.0.0.0", 80, "a");
    let _srv_b = TcpServer::start(&b, "0.0.0.0", 80, "b");
    let far = out.far_v4.to_string();
    let host_v4 = out.host_v4.to_string();

    let published = || tcp_request(&out.ns, &host_v4, 8081).is_some_and(|r| r.starts_with("a "));
    let isolated = || !reaches(&a, &ip_b, 80) && !reaches(&b, &ip_a, 80);
    let masquerade = || can_ping(&a, &far) && can_ping(&b, &far);

    assert!(
        can_ping_eventually(&a, &far, 3),
        "a -> outside before the flush"
    );
    assert!(published(), "outside -> host:8081 -> a before the flush");
    assert!(isolated(), "a and b isolated before the flush");
    assert!(masquerade(), "masquerade before the flush");
    tool_a().check(&a).assert_ok();
    tool_b().check(&b).assert_ok();
    run_reconcile(&net, &["--check"]).assert_ok();

    // The admin reloads the firewall.
    net.host().exec_ok("nft", &["flush", "ruleset"]);

    let t = Instant::now();
    let chk = tool_a().check(&a);
    chk.assert_err();
    assert_eq!(
        chk.cni_error_code(),
        Some(105),
        "CHECK after the flush:\n{chk}"
    );
    let msg = chk.json()["msg"].as_str().unwrap_or_default().to_owned()
        + chk.json()["details"].as_str().unwrap_or_default();
    assert!(
        msg.contains("missing") && (msg.contains("cnirs-ra") || msg.contains("managed_br")),
        "CHECK should name what is missing: {msg}"
    );
    eprintln!("CHECK after flush: {msg} ({:?})", t.elapsed());
    tool_b().check(&b).assert_err();
    let rc = run_reconcile(&net, &["--check"]);
    assert_eq!(rc.code, Some(1), "--check after the flush:\n{rc}");
    assert!(rc.stderr.contains("missing"), "{rc}");
    // Negative controls: the flush really broke everything the table does.
    assert!(!published(), "published port still answers after the flush");
    assert!(
        !isolated(),
        "isolation still drops after the flush (no table)"
    );
    assert!(
        !can_ping(&a, &far),
        "masquerade still works after the flush"
    );

    let rc = run_reconcile(&net, &[]);
    rc.assert_ok();
    eprintln!("cnirs-reconcile: {:?}\n{}", rc.elapsed, rc.stderr.trim());
    assert!(
        !rc.stdout.contains('{') && rc.stdout.trim().is_empty(),
        "stdout must stay empty: {rc}"
    );
    run_reconcile(&net, &["--check"]).assert_ok();
    assert!(published(), "published port after reconcile");
    assert!(isolated(), "isolation after reconcile");
    assert!(masquerade(), "masquerade after reconcile");
    tool_a().check(&a).assert_ok();
    tool_b().check(&b).assert_ok();

    // Idempotent: a second run changes nothing in the ruleset.
    let before = HostState::of(&net);
    run_reconcile(&net, &[]).assert_ok();
    before
        .diff(&HostState::of(&net))
        .assert_empty("second reconcile");

    // And the pods still come apart cleanly.
    tool_a().del(&a).assert_ok();
    tool_b().del(&b).assert_ok();
    assert!(port_elems(&net).is_empty(), "{:?}", port_elems(&net));
}

/// Without any state (no plugin ever ran in this netns) the tool does nothing: no table.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reconcile_without_state_creates_nothing() {
    let net = TestNet::new();
    let before = HostState::of(&net);
    run_reconcile(&net, &[]).assert_ok();
    run_reconcile(&net, &["--check"]).assert_ok();
    before
        .diff(&HostState::of(&net))
        .assert_empty("reconcile without state");
    let bad = run_reconcile(&net, &["--bogus"]);
    assert_eq!(bad.code, Some(2), "{bad}");
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL during ADD

/// One plugin call of the chain, spawned in its own process group so that a kill takes its
/// children (host-local, nft) too.
fn spawn_plugin(net: &TestNet, bin: &str, env: &[(&str, &str)], stdin: &Value) -> Child {
    let mut cmd = net.host().command(&plugin_bin(bin).display().to_string());
    cmd.env("CNI_PATH", cni_path())
        .env("CNIRS_RUN_DIR", net.run_dir())
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut input = child.stdin.take().unwrap();
    // A killed child gives EPIPE: fine.
    let _ = input.write_all(stdin.to_string().as_bytes());
    drop(input);
    child
}

fn kill_group(child: &Child) {
    // SAFETY: kill(2) of the process group our own, not yet reaped child leads
    // (process_group(0) made its pid the pgid); the pid cannot have been reused.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
}

/// How one chain ADD ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddEnd {
    /// Killed while plugin number `.0` (0 bridge, 1 portmap, 2 isolation) ran.
    Killed(usize),
    /// All three plugins finished.
    Done,
}

/// The plugin configs of the chain, as libcni would hand them out (name, cniVersion,
/// runtimeConfig, prevResult).
fn plugin_conf(conf: &Value, i: usize, prev: Option<&Value>, host_port: u16) -> Value {
    let mut p = conf["plugins"][i].clone();
    p["name"] = conf["name"].clone();
    p["cniVersion"] = conf["cniVersion"].clone();
    if p["type"] == "portmap" {
        p["runtimeConfig"] = ports(host_port, 80);
    }
    if let Some(prev) = prev {
        p["prevResult"] = prev.clone();
    }
    p
}

const CHAIN: [&str; 3] = ["bridge", "portmap", "isolation"];

/// The chain ADD, killing the running plugin's process group once `kill_after` has passed
/// since the start (`None`: never).
fn chain_add(
    net: &TestNet,
    conf: &Value,
    pod: &Netns,
    id: &str,
    host_port: u16,
    kill_after: Option<Duration>,
) -> AddEnd {
    let start = Instant::now();
    let mut prev: Option<Value> = None;
    for (i, bin) in CHAIN.iter().enumerate() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", pod.path_str()),
        ];
        let stdin = plugin_conf(conf, i, prev.as_ref(), host_port);
        let mut child = spawn_plugin(net, bin, &env, &stdin);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if kill_after.is_some_and(|d| start.elapsed() >= d) {
                kill_group(&child);
                child.wait().unwrap();
                break None;
            }
            if start.elapsed() > Duration::from_secs(30) {
                kill_group(&child);
                panic!("{bin} ADD hangs");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        match status {
            None => return AddEnd::Killed(i),
            Some(st) => {
                assert!(st.success(), "{bin} ADD failed ({st}):\n{out}\n{err}");
                prev = Some(serde_json::from_str(&out).unwrap());
            }
        }
    }
    AddEnd::Done
}

/// The chain DEL in reverse order, without prevResult (a crashed ADD left no cached result),
/// with the runtime's portMappings. Every plugin must succeed.
fn chain_del(net: &TestNet, conf: &Value, pod: &Netns, id: &str, host_port: u16) {
    for i in (0..CHAIN.len()).rev() {
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", pod.path_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let stdin = plugin_conf(conf, i, None, host_port).to_string();
        net.run_plugin(&plugin_bin(CHAIN[i]), &env, &stdin)
            .assert_ok();
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sigkill_during_add_then_del_leaves_nothing() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "crash", "cnirs-crash", "10.232.1.0/24");
    let pod = net.pod("p");
    let id = "cnirs-crash-p";
    let port = 8181;

    // Warm-up: the first cycle creates the bridge, the table and the state dirs, which stay.
    assert_eq!(chain_add(&net, &conf, &pod, id, port, None), AddEnd::Done);
    chain_del(&net, &conf, &pod, id, port);
    let base = HostState::of(&net);
    let points: u32 = std::env::var("CNIRS_CRASH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut tally: HashMap<&'static str, u32> = HashMap::new();
    let mut midway = 0;
    let mut leaked: Vec<String> = Vec::new();
    let mut tmp_files = 0;
    let mut orphan_owners = 0;
    // The sweep is calibrated on uninterrupted ADDs; under a changing load (CI runs other
    // kernel tests beside this one) a pass can miss the window: recalibrate and sweep again.
    let (mut full, mut horizon) = (Duration::ZERO, Duration::ZERO);
    for _pass in 0..3 {
        // How long an uninterrupted ADD takes (median of 3).
        let mut times: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(chain_add(&net, &conf, &pod, id, port, None), AddEnd::Done);
                let d = t.elapsed();
                chain_del(&net, &conf, &pod, id, port);
                d
            })
            .collect();
        times.sort();
        leaks(&base, &net).assert_empty("uninterrupted ADD+DEL");
        full = times[1];
        horizon = full + Duration::from_millis(3);
        for k in 0..=points {
            let delay = horizon * k / points;
            let end = chain_add(&net, &conf, &pod, id, port, Some(delay));
            // Did it leave something behind (interrupted mid-way) or nothing (killed before)?
            let partial = !leaks(&base, &net).is_empty();
            let label = match (end, partial) {
                (AddEnd::Done, _) => "completed",
                (AddEnd::Killed(i), true) => {
                    midway += 1;
                    [
                        "killed in bridge, partial",
                        "killed in portmap, partial",
                        "killed in isolation, partial",
                    ][i]
                }
                (AddEnd::Killed(_), false) => "killed before any change",
            };
            *tally.entry(label).or_default() += 1;
            chain_del(&net, &conf, &pod, id, port);
            let d = leaks(&base, &net);
            if !d.is_empty() {
                // Only nft elements may be left (the known window); count them, put the host back
                // and go on, so one run measures how often the window is hit.
                // Known leftovers: nft elements, and nftplan's temporary state file (with the
                // directory it was created in) when the kill hit the write itself.
                let known =
                    |i: &Item| i.kind == "nft" || (i.kind == "file" && i.text.starts_with("run/"));
                assert!(
                    d.added.iter().chain(&d.removed).all(known),
                    "DEL after a kill at {delay:?} ({label}) left more than the known leftovers:\n{d}"
                );
                if d.added.iter().any(|i| i.text.contains(".tmp")) {
                    tmp_files += 1;
                }
                if d.added
                    .iter()
                    .any(|i| i.text.starts_with("run/") && i.text.contains("/ports/"))
                {
                    orphan_owners += 1;
                }
                eprintln!("DEL after a kill at {delay:?} ({label}) left behind:\n{d}");
                leaked.push(format!("{delay:?} ({label})"));
                net.host().exec_ok("nft", &["flush", "ruleset"]);
                run_reconcile(&net, &[]).assert_ok();
                for i in &d.added {
                    if let Some(rel) = i.text.strip_prefix("run/") {
                        let path = net.run_dir().join(rel.split(" = ").next().unwrap());
                        if path.is_file() {
                            std::fs::remove_file(&path).unwrap();
                        }
                    }
                }
                for i in d.added.iter().rev() {
                    if let Some(rel) = i.text.strip_prefix("run/").filter(|t| t.ends_with('/')) {
                        let _ = std::fs::remove_dir(net.run_dir().join(rel));
                    }
                }
                leaks(&base, &net).assert_empty("after the repair of a leak");
            }
            assert_eq!(
                pod.link_names(),
                ["lo"],
                "pod links after DEL (kill at {delay:?})"
            );
            // The container can be attached again, and detached cleanly.
            assert_eq!(
                chain_add(&net, &conf, &pod, id, port, None),
                AddEnd::Done,
                "ADD after a kill at {delay:?}"
            );
            chain_del(&net, &conf, &pod, id, port);
            leaks(&base, &net).assert_empty(&format!("ADD+DEL after a kill at {delay:?}"));
        }
        if midway >= points / 4 {
            break;
        }
    }
    eprintln!(
        "crash sweep: {} kill points over 0..{horizon:?} (uninterrupted ADD {full:?}): {tally:?}",
        points + 1
    );
    eprintln!(
        "crash sweep: {} kills left something behind after DEL ({tmp_files} with a state temp \
         file, {orphan_owners} with an orphaned port owner file): {leaked:?}",
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "{} of {} kills left nft elements or state files behind after DEL: {leaked:?}",
        leaked.len(),
        points + 1
    );
    assert!(
        midway >= points / 4,
        "too few kills landed mid-way ({midway} of {}): {tally:?}",
        points + 1
    );
}

/// The exact window the sweep above hits now and then, made deterministic: `nft` commits a
/// batch that adds elements and the plugin is SIGKILLed right after (a wrapper given as
/// `CNIRS_NFT` runs the real nft, then kills its parent), before the plugin wrote its state.
/// DEL must still remove what was added.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sigkill_after_nft_commit_then_del_leaves_nothing() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "window", "cnirs-win", "10.232.2.0/24");
    let pod = net.pod("p");
    let id = "cnirs-window-p";
    let port = 8282;
    let killer = net.tmp().join("nft-then-die");
    std::fs::write(
        &killer,
        "#!/bin/sh\n\
         # Run the real nft on the script; if it added elements and succeeded, die with the caller.\n\
         script=$(cat)\n\
         printf '%s\\n' \"$script\" | /usr/sbin/nft \"$@\"\n\
         rc=$?\n\
         case \"$script\" in *'add element'*) case \"$script\" in *'delete element'*) ;; *)\n\
           [ $rc -eq 0 ] && kill -9 $PPID ;; esac ;; esac\n\
         exit $rc\n",
    )
    .unwrap();
    run_ok("chmod", &["0755", &killer.display().to_string()]);

    assert_eq!(chain_add(&net, &conf, &pod, id, port, None), AddEnd::Done);
    chain_del(&net, &conf, &pod, id, port);
    let base = HostState::of(&net);

    let mut leaked = Vec::new();
    for (stage, bin) in CHAIN.iter().enumerate() {
        let mut prev: Option<Value> = None;
        for (i, b) in CHAIN.iter().enumerate().take(stage + 1) {
            let mut env = vec![
                ("CNI_COMMAND", "ADD".to_owned()),
                ("CNI_CONTAINERID", id.to_owned()),
                ("CNI_NETNS", pod.path_str().to_owned()),
                ("CNI_IFNAME", "eth0".to_owned()),
            ];
            if i == stage {
                env.push(("CNIRS_NFT", killer.display().to_string()));
            }
            let stdin = plugin_conf(&conf, i, prev.as_ref(), port).to_string();
            let out = net.run_plugin(&plugin_bin(b), &env, &stdin);
            if i < stage {
                out.assert_ok();
                prev = out.json.clone();
            } else {
                assert_eq!(
                    out.code, None,
                    "{bin} should have been killed by its nft:\n{out}"
                );
            }
        }
        chain_del(&net, &conf, &pod, id, port);
        let d = leaks(&base, &net);
        if !d.is_empty() {
            eprintln!("killed right after {bin}'s nft commit, then DEL: left behind\n{d}");
            leaked.push(*bin);
        }
        // Whatever leaked, put the host back for the next stage (the test's own cleanup).
        net.host().exec_ok("nft", &["flush", "ruleset"]);
        run_reconcile(&net, &[]).assert_ok();
    }
    assert!(
        leaked.is_empty(),
        "elements left behind after a kill between nft and the state write in: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. concurrent churn

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn concurrent_churn_keeps_addresses_unique_and_leaks_nothing() {
    const WORKERS: usize = 16;
    let total: usize = std::env::var("CNIRS_SOAK_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(192);
    // One cycle = one ADD + one DEL.
    let cycles = total.div_ceil(WORKERS * 2).max(1);
    let net = TestNet::new();
    let confs: Vec<(Value, &str)> = (0..3)
        .map(|n| {
            let name = ["churn-a", "churn-b", "churn-c"][n];
            let conf = chain_conf(
                &net,
                name,
                ["cnirs-ca", "cnirs-cb", "cnirs-cc"][n],
                &format!("10.233.{n}.0/24"),
            );
            (conf, name)
        })
        .collect();
    // Two pods per worker: cycle c attaches pod c % 2, then detaches the previous cycle's
    // attachment from the other pod, so every worker holds one or two addresses at any time.
    let pods: Vec<[Netns; 2]> = (0..WORKERS)
        .map(|w| [net.pod(&format!("w{w}a")), net.pod(&format!("w{w}b"))])
        .collect();
    // Warm-up on each network: bridges, table and state dirs exist in the baseline.
    for (conf, _) in &confs {
        let tool = net.cnitool(conf).cap_args(ports(29999, 80));
        tool.add(&pods[0][0]).assert_ok();
        tool.del(&pods[0][0]).assert_ok();
    }
    let base = HostState::of(&net);

    let holders: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let max_live = Mutex::new((0usize, 0usize)); // (live now, max seen)
    let t = Instant::now();
    std::thread::scope(|s| {
        for (w, pods) in pods.iter().enumerate() {
            let (net, confs, holders, max_live) = (&net, &confs, &holders, &max_live);
            s.spawn(move || {
                let attachment = |c: usize| {
                    let (conf, name) = &confs[(w + c) % 3];
                    let id = format!("churn-w{w}-c{c}");
                    let host_port = 20000 + (w * 1000 + c) as u16;
                    let tool = net
                        .cnitool(conf)
                        .container_id(&id)
                        .cap_args(ports(host_port, 80));
                    (tool, *name, id, &pods[c % 2])
                };
                let mut previous: Option<(usize, String)> = None;
                for c in 0..cycles {
                    let (tool, name, id, pod) = attachment(c);
                    let out = tool.add(pod);
                    assert!(out.success(), "worker {w} cycle {c}: ADD failed:\n{out}");
                    let ip = first_ip(out.json());
                    // The lease file names this container.
                    let lease = net.data_dir().join(name).join(&ip);
                    let owner = std::fs::read_to_string(&lease).unwrap_or_default();
                    assert!(
                        owner.starts_with(&id),
                        "lease {} holds {owner:?}, not {id}",
                        lease.display()
                    );
                    {
                        let mut h = holders.lock().unwrap();
                        let key = format!("{name}/{ip}");
                        if let Some(other) = h.insert(key.clone(), id.clone()) {
                            panic!("{key} handed to {id} while {other} holds it");
                        }
                        let mut m = max_live.lock().unwrap();
                        m.0 += 1;
                        m.1 = m.1.max(m.0);
                    }
                    if let Some((pc, pip)) = previous.replace((c, ip)) {
                        let (tool, name, _, pod) = attachment(pc);
                        holders.lock().unwrap().remove(&format!("{name}/{pip}"));
                        max_live.lock().unwrap().0 -= 1;
                        let out = tool.del(pod);
                        assert!(out.success(), "worker {w} cycle {pc}: DEL failed:\n{out}");
                    }
                }
                if let Some((pc, pip)) = previous {
                    let (tool, name, _, pod) = attachment(pc);
                    holders.lock().unwrap().remove(&format!("{name}/{pip}"));
                    max_live.lock().unwrap().0 -= 1;
                    let out = tool.del(pod);
                    assert!(out.success(), "worker {w} cycle {pc}: DEL failed:\n{out}");
                }
            });
        }
    });
    let ops = WORKERS * cycles * 2;
    let elapsed = t.elapsed();
    eprintln!(
        "churn: {ops} operations ({WORKERS} workers x {cycles} ADD+DEL) over 3 networks in \
         {elapsed:?} ({:.1} ops/s), max {} pods attached at once",
        ops as f64 / elapsed.as_secs_f64(),
        max_live.lock().unwrap().1
    );
    leaks(&base, &net).assert_empty(&format!("after {ops} concurrent operations"));
    assert!(port_elems(&net).is_empty(), "{:?}", port_elems(&net));
    // Still works: a fresh pod on each network reaches its gateway and publishes a port.
    for (n, (conf, _)) in confs.iter().enumerate() {
        let tool = net.cnitool(conf).cap_args(ports(29999, 80));
        let pod = &pods[n][0];
        tool.add(pod).assert_ok();
        assert!(
            can_ping_eventually(pod, &format!("10.233.{n}.1"), 3),
            "pod on network {n} after the churn"
        );
        tool.check(pod).assert_ok();
        tool.del(pod).assert_ok();
    }
}

// ---------------------------------------------------------------------------------------------
// 4. reboot

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reboot_then_gc_removes_the_dead() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "reboot", "cnirs-rbt", "10.234.1.0/24");
    let pods: Vec<Netns> = (0..4).map(|i| net.pod(&format!("r{i}"))).collect();
    let tool = |i: usize| net.cnitool(&conf).cap_args(ports(9100 + i as u16, 80));
    // Warm-up for the baseline (bridge, table, state dirs).
    tool(0).add(&pods[0]).assert_ok();
    tool(0).del(&pods[0]).assert_ok();
    let base = HostState::of(&net);

    let ips: Vec<String> = (0..4)
        .map(|i| first_ip(tool(i).add(&pods[i]).assert_ok().json()))
        .collect();
    let lease = |i: usize| net.data_dir().join("reboot").join(&ips[i]);
    let published = |i: usize| {
        port_elems(&net)
            .iter()
            .any(|e| e.starts_with(&format!("tcp . {} :", 9100 + i)))
    };
    let state_mentions = |i: usize| {
        let id = tool(i).container_id_for(&pods[i]);
        HostState::of(&net)
            .of_kind("file")
            .filter(|f| f.text.starts_with("run/") && f.text.contains(&id))
            .count()
    };
    for i in 0..4 {
        assert!(lease(i).exists() && published(i), "pod {i} after ADD");
    }
    assert!(state_mentions(2) > 0, "firewall state names pod 2");

    // "Reboot" of pods 2 and 3: their netns go away (and with them both veth ends) without
    // any DEL. A new empty netns takes each name so the TestNet cleanup stays quiet.
    for p in &pods[2..] {
        run_ok("ip", &["netns", "del", p.name()]);
        run_ok("ip", &["netns", "add", p.name()]);
    }
    for i in 0..4 {
        assert!(lease(i).exists(), "lease {i} survives the reboot");
    }

    let id = |i: usize| tool(i).container_id_for(&pods[i]);
    let t = Instant::now();
    net.cnitool(&conf)
        .valid_attachments(json!([{"containerID": id(0), "ifname": "eth0"},
                                  {"containerID": id(1), "ifname": "eth0"}]))
        .gc()
        .assert_ok();
    eprintln!("cnitool gc: {:?}", t.elapsed());
    for i in 2..4 {
        assert!(!lease(i).exists(), "stale lease {i} kept by GC");
        assert!(!published(i), "stale port element {i} kept by GC");
        assert_eq!(
            state_mentions(i),
            0,
            "stale firewall state of pod {i} kept by GC"
        );
    }
    for (i, pod) in pods.iter().enumerate().take(2) {
        assert!(lease(i).exists(), "survivor {i}'s lease dropped by GC");
        assert!(published(i), "survivor {i}'s port dropped by GC");
        tool(i).check(pod).assert_ok();
    }
    assert!(can_ping(&pods[0], &ips[1]), "survivors still talk");

    // The survivors leave as usual, and then nothing is left at all.
    tool(0).del(&pods[0]).assert_ok();
    tool(1).del(&pods[1]).assert_ok();
    // libcni's cache still holds the dead pods' results (the runtime's job to drop them).
    leaks(&base, &net)
        .without(|i| i.kind == "file" && i.text.starts_with("cache/"))
        .assert_empty("after GC and the survivors' DEL");
}

/// A whole-host reboot: every pod netns, the bridge, the ruleset and `/run` (the firewall
/// state) are gone; only host-local's dataDir (on disk) survives. New pods come up (one
/// publishing a dead pod's host port), and GC with the new pods as the valid list drops the
/// dead leases.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn full_reboot_then_new_pods_and_gc() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "reboot2", "cnirs-rb2", "10.234.2.0/24");
    let old: Vec<Netns> = (0..3).map(|i| net.pod(&format!("old{i}"))).collect();
    let tool = |port: u16| net.cnitool(&conf).cap_args(ports(port, 80));
    tool(9200).add(&old[0]).assert_ok();
    tool(9200).del(&old[0]).assert_ok();
    let base = HostState::of(&net);
    let old_ips: Vec<String> = (0..3)
        .map(|i| first_ip(tool(9200 + i as u16).add(&old[i]).assert_ok().json()))
        .collect();
    let lease = |ip: &str| net.data_dir().join("reboot2").join(ip);

    // Reboot.
    for p in &old {
        run_ok("ip", &["netns", "del", p.name()]);
        run_ok("ip", &["netns", "add", p.name()]);
    }
    net.host().ip(&["link", "del", "cnirs-rb2"]);
    net.host().exec_ok("nft", &["flush", "ruleset"]);
    std::fs::remove_dir_all(net.run_dir()).unwrap();
    std::fs::create_dir(net.run_dir()).unwrap();
    // libcni's cache is on disk too (/var/lib/cni), it survives like the leases.
    for ip in &old_ips {
        assert!(lease(ip).exists(), "lease {ip} survives the reboot");
    }

    // New pods: one takes a dead pod's host port.
    let new: Vec<Netns> = (0..2).map(|i| net.pod(&format!("new{i}"))).collect();
    let new_ips: Vec<String> = (0..2)
        .map(|i| first_ip(tool(9200 + i as u16).add(&new[i]).assert_ok().json()))
        .collect();
    for ip in &new_ips {
        assert!(
            !old_ips.contains(ip),
            "{ip} handed out while a stale lease holds it"
        );
    }
    let _srv = TcpServer::start(&new[0], "0.0.0.0", 80, "new0");
    assert!(
        tcp_request(net.host(), "127.0.0.1", 9200).is_some_and(|r| r.starts_with("new0 ")),
        "the dead pod's host port now reaches the new pod"
    );

    let id = |p: &Netns| tool(0).container_id_for(p);
    net.cnitool(&conf)
        .valid_attachments(json!([{"containerID": id(&new[0]), "ifname": "eth0"},
                                  {"containerID": id(&new[1]), "ifname": "eth0"}]))
        .gc()
        .assert_ok();
    for ip in &old_ips {
        assert!(!lease(ip).exists(), "stale lease {ip} kept by GC");
    }
    for (i, ip) in new_ips.iter().enumerate() {
        assert!(lease(ip).exists(), "new pod's lease {ip} dropped by GC");
        tool(9200 + i as u16).check(&new[i]).assert_ok();
    }
    assert!(can_ping(&new[0], &new_ips[1]), "new pods talk");
    tool(9200).del(&new[0]).assert_ok();
    tool(9201).del(&new[1]).assert_ok();
    leaks(&base, &net)
        .without(|i| i.kind == "file" && i.text.starts_with("cache/"))
        .assert_empty("after reboot, GC and DEL of the new pods");
}

/// A bridge DEL whose detached deleter is SIGKILLed leaves only a retired link
/// (`cnirsx…`); `cnirs-reconcile` deletes it and the host is back to its state before ADD.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn killed_del_deleter_leaves_a_retired_link_reconcile_removes() {
    let net = TestNet::new();
    let pod = net.pod("k");
    let conf = chain_conf(&net, "reldoff", "cnirs-rbdo", "10.226.9.0/24");
    let tool = net.cnitool(&conf).cap_args(ports(8095, 80));
    tool.add(&pod).assert_ok();
    tool.del(&pod).assert_ok();
    let base = HostState::of(&net);

    tool.add(&pod).assert_ok();
    let mut stall = StalledDeleter::new(&net, "k");
    net.cnitool(&conf)
        .cap_args(ports(8095, 80))
        .env("CNIRS_RETIRE_STALL", stall.file.to_str().unwrap())
        .del(&pod)
        .assert_ok();
    stall.pid();
    assert!(stall.kill(), "the deleter was alive until killed");
    assert_eq!(
        retired_links(net.host()).len(),
        1,
        "the retired link is left"
    );
    run_reconcile(&net, &[]).assert_ok();
    assert!(retired_links(net.host()).is_empty(), "reconcile deleted it");
    leaks(&base, &net).assert_empty("after DEL, kill and reconcile");
}

// ---------------------------------------------------------------------------------------------
// DEL off the kernel's clock (issue 19)

/// The detached processes' open fds, as `/proc/PID/fd` link targets.
fn open_fds(pid: i32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

/// Field 6 of `/proc/PID/stat`: the session id.
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// The full chain (bridge + host-local + portmap + isolation), its DEL's detached part held
/// still (`CNIRS_RETIRE_STALL`). When the DEL answered:
/// (f) cnitool got EOF on the plugins' pipes although the detached processes still live: each
///     is in a session of its own and holds only /dev/null and netlink sockets, no pipe;
/// (c) the old pod's address and its published port answer nothing;
/// (b) another pod publishes the same hostPort, which answers from it;
/// (d) the next ADD gets the freed address (the last one of a 3-address range);
/// (a) a new ADD with the same ifname in the old pod's netns works, while the old pair still
///     exists (retired);
/// (e) after a SIGKILL of the detached processes, GC (`cnitool gc`) or `cnirs-reconcile`
///     leaves the host as it was before the first ADD.
fn del_answers_with_everything_free(layout_default: bool, cleanup_with_reconcile: bool) {
    let net = TestNet::new();
    let out = net.outside();
    let (a, b, c, d) = (net.pod("a"), net.pod("b"), net.pod("c"), net.pod("d"));
    let mns = layout_default.then(|| MountNs::private_dirs(&["/run/cni-rs"]));
    let name = if layout_default { "reldfd" } else { "reldft" };
    let mut conf = chain_conf(&net, name, "cnirs-rdf", "10.226.10.0/24");
    conf["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.226.10.0/24", "rangeStart": "10.226.10.10", "rangeEnd": "10.226.10.12"}]]);
    let tool = |port: Option<u16>| {
        let t = net.cnitool(&conf);
        let t = match &mns {
            Some(m) => t.mount_ns(m),
            None => t,
        };
        match port {
            Some(p) => t.cap_args(ports(p, 80)),
            None => t,
        }
    };
    let before = HostState::of(&net);

    let ra = tool(Some(8097)).add(&a).assert_ok().json().clone();
    let rb = tool(None).add(&b).assert_ok().json().clone();
    let (ip_a, ip_b) = (first_ip(&ra), first_ip(&rb));
    let _srv_a = TcpServer::start(&a, "0.0.0.0", 80, "pod-a");
    let host_v4 = out.host_v4.to_string();
    assert!(can_ping_eventually(&b, &ip_a, 3), "b->a before DEL");
    let via_port = tcp_request(&out.ns, &host_v4, 8097).unwrap_or_default();
    assert!(
        via_port.starts_with("pod-a "),
        "port before DEL: {via_port:?}"
    );

    let mut stall = StalledDeleter::new(&net, "a");
    tool(Some(8097))
        .env("CNIRS_RETIRE_STALL", stall.file.to_str().unwrap())
        .del(&a)
        .assert_ok();

    // (f) cnitool returned: every plugin's stdout/stderr reached EOF. The detached processes
    // (bridge's: the veth delete; portmap's: the socket of its element batch; isolation has
    // nothing of this pod's to delete while b is on the network) are alive and hold no pipe.
    let pids = stall.pids();
    assert_eq!(
        pids.len(),
        2,
        "bridge's and portmap's detached processes: {pids:?}"
    );
    let ours = session_of(std::process::id() as i32);
    for &p in &pids {
        let fds = open_fds(p);
        assert!(
            fds.iter()
                .all(|f| f == "/dev/null" || f.starts_with("socket:[")),
            "detached {p} holds more than /dev/null and its sockets: {fds:?}"
        );
        assert!(!fds.iter().any(|f| f.starts_with("pipe:")), "{fds:?}");
        assert_eq!(session_of(p), p, "detached {p} leads a session of its own");
        assert_ne!(session_of(p), ours);
    }
    assert_eq!(
        retired_links(net.host()).len(),
        1,
        "the old pair, retired, still there"
    );

    // (c) nothing reaches the old pod.
    assert!(
        !can_ping(&b, &ip_a),
        "b still reaches the old pod at {ip_a}"
    );
    assert!(!can_connect_tcp(&b, &ip_a, 80), "old pod's :80 from b");
    assert!(
        !can_connect_tcp(&out.ns, &host_v4, 8097),
        "the old pod's published port still accepts"
    );

    // (b) another pod publishes the same hostPort at once, and it answers from there.
    let rc = tool(Some(8097)).add(&c).assert_ok().json().clone();
    assert_ne!(
        first_ip(&rc),
        ip_a,
        "round robin: c gets the range's third address"
    );
    let _srv_c = TcpServer::start(&c, "0.0.0.0", 80, "pod-c");
    let via_port = tcp_request(&out.ns, &host_v4, 8097).unwrap_or_default();
    assert!(
        via_port.starts_with("pod-c "),
        "port published again: {via_port:?}"
    );
    // (d) the old pod's address is free: the next ADD gets it (the only one left) and works.
    // (Not through the port: the host's neighbour entry for a reused address names the old
    // MAC until it expires, with a synchronous delete too.)
    let rd = tool(None).add(&d).assert_ok().json().clone();
    assert_eq!(first_ip(&rd), ip_a, "the freed address is allocated again");
    assert!(can_ping_eventually(&d, &ip_b, 3), "d (old a's address)->b");
    tool(Some(8097)).del(&c).assert_ok();
    tool(None).del(&d).assert_ok();

    // (a) the same ifname in the same netns, while the old pair still exists.
    assert!(a.link("eth0").is_none(), "pod ifname freed");
    assert_eq!(retired_links(&a).len(), 1, "a's old end, retired");
    tool(None).add(&a).assert_ok();
    assert!(can_ping_eventually(&a, &ip_b, 3), "new a->b");

    // (e) kill the detached part: only retired links are left, and cleanup removes them.
    assert!(
        stall.kill(),
        "the detached processes were alive until killed"
    );
    assert_eq!(retired_links(net.host()).len(), 1, "retired link left");
    if cleanup_with_reconcile {
        let mut cmd = match &mns {
            Some(m) => m.command(net.host(), &reconcile_bin().display().to_string()),
            None => {
                let mut c = net.host().command(&reconcile_bin().display().to_string());
                c.env("CNIRS_RUN_DIR", net.run_dir());
                c
            }
        };
        run(&mut cmd).assert_ok();
    } else {
        tool(None)
            .valid_attachments(json!([
                {"containerID": tool(None).container_id_for(&a), "ifname": "eth0"},
                {"containerID": tool(None).container_id_for(&b), "ifname": "eth0"},
            ]))
            .gc()
            .assert_ok();
    }
    assert!(retired_links(net.host()).is_empty(), "cleanup removed it");
    assert!(
        retired_links(&a).is_empty(),
        "the pod end went with the pair"
    );
    assert!(can_ping_eventually(&a, &ip_b, 3), "a->b after cleanup");

    tool(None).del(&a).assert_ok();
    tool(None).del(&b).assert_ok();
    leaks(&before, &net)
        .without(legit_leftover(&["cnirs-rdf"]))
        .assert_empty("after DEL, kill, cleanup and DEL");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn del_answers_with_everything_free_test_dir_gc() {
    del_answers_with_everything_free(false, false);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn del_answers_with_everything_free_default_paths_reconcile() {
    del_answers_with_everything_free(true, true);
}
