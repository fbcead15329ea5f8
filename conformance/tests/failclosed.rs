//! Fail closed (issue 13): when our bookkeeping and the kernel disagree, pods stay sealed.
//!
//! * `reused_inode_*`: a host netns deleted without DEL, then a new one at the same inode
//!   (namespaces are created until the inode repeats): the new one inherits no state, so its
//!   first internal ADD seals and a published port is not refused with 103 by a ghost.
//! * `flush_between_adds_*`: `nft flush ruleset` between two ADDs; the second seals the
//!   internal network again and brings back the published port of a running pod; and the
//!   kernel-level seal (policy rules) keeps an internal pod in even with no table at all.
//! * `watch_*`: `cnirs watch` running; `nft flush ruleset`, then a firewalld-style reload
//!   (`nft -f` of a file starting with `flush ruleset`): sealed again and the port answering,
//!   polled up to a deadline; SIGTERM exits 0.
//! * `reconcile_removes_dead_namespaces_state`: `cnirs reconcile` deletes state directories of
//!   namespaces that no longer exist and keeps the live one.
//!
//! Each runs twice: with a per-test `CNIRS_RUN_DIR`, and with the DEFAULT state root
//! (`/run/cni-rs`, no override) inside a private mount namespace ([`MountNs::private_dirs`]).
//!
//! Run: `cargo test -p conformance --test failclosed -- --ignored` (as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use conformance::*;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// `CNIRS_RUN_DIR` = a temp dir of the test.
    TestDir,
    /// No override: `/run/cni-rs`, private to the test through a mount namespace.
    Default,
}

/// Where the plugins of one test keep their state, and how to run things against it.
struct Run {
    layout: Layout,
    mns: Option<MountNs>,
    dir: tempfile::TempDir,
}

impl Run {
    fn new(layout: Layout) -> Self {
        Run {
            layout,
            mns: (layout == Layout::Default).then(|| MountNs::private_dirs(&["/run/cni-rs"])),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn tool<'a>(&'a self, net: &'a TestNet, conf: &Value) -> Cnitool<'a> {
        let t = net.cnitool(conf);
        match &self.mns {
            Some(m) => t.mount_ns(m),
            None => t.env("CNIRS_RUN_DIR", &self.root().display().to_string()),
        }
    }

    /// A command in `net`'s host netns that sees the same state root as the plugins.
    fn command(&self, net: &TestNet, program: &str) -> std::process::Command {
        match &self.mns {
            Some(m) => m.command(net.host(), program),
            None => {
                let mut c = net.host().command(program);
                c.env("CNIRS_RUN_DIR", self.root());
                c
            }
        }
    }

    /// Names under the state root.
    fn state_dirs(&self, net: &TestNet) -> Vec<String> {
        let root = match self.layout {
            Layout::Default => "/run/cni-rs".to_owned(),
            Layout::TestDir => self.root().display().to_string(),
        };
        let out = run(self.command(net, "ls").args(["-1a", &root]));
        let mut v: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| *l != "." && *l != "..")
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }
}

fn internal_conf(net: &TestNet) -> Value {
    json!({"cniVersion": "1.0.0", "name": "fc-int", "plugins": [
        {"type": "internal-bridge", "bridge": "cnirs-fci", "isGateway": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": "10.236.1.0/24"}], [{"subnet": "fd00:236:1::/64"}]]}}
    ]})
}

fn ported_conf(net: &TestNet) -> Value {
    json!({"cniVersion": "1.0.0", "name": "fc-pm", "plugins": [
        {"type": "bridge", "bridge": "cnirs-fcp", "isGateway": true, "isDefaultGateway": true,
         "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": "10.236.2.0/24"}], [{"subnet": "fd00:236:2::/64"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
    ]})
}

fn ports(host_port: u16) -> Value {
    json!({"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]})
}

fn inode(ns: &Netns) -> u64 {
    std::fs::metadata(ns.path()).unwrap().ino()
}

fn internal_elems(net: &TestNet) -> Vec<String> {
    nft_elems(net, "set", "internal_br")
}

fn sealed_in_nft(net: &TestNet) -> bool {
    internal_elems(net).iter().any(|e| e.contains("cnirs-fci"))
}

/// The kernel-level seal: `ip -4/-6 rule` with `iif cnirs-fci` and action unreachable.
fn seal_rules(net: &TestNet) -> Vec<String> {
    // `iif BR` (out of the network) and the subnet rules (into it).
    net.host()
        .seal_rules("cnirs-fci", &["10.236.1.0", "fd00:236:1::"])
}

// ---------------------------------------------------------------------------------------------
// 1. a dead namespace's state is never inherited

/// The reused-inode tests take it exclusively, the others shared: namespaces the others
/// create would take the inode they wait for.
static INODES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    INODES.read().unwrap_or_else(|e| e.into_inner())
}

fn reused_inode(layout: Layout) {
    let _x = INODES.write().unwrap_or_else(|e| e.into_inner());
    let r = Run::new(layout);
    let net1 = TestNet::new();
    let ino = inode(net1.host());
    let (a, b) = (net1.pod("a"), net1.pod("b"));
    r.tool(&net1, &internal_conf(&net1)).add(&a).assert_ok();
    r.tool(&net1, &ported_conf(&net1))
        .cap_args(ports(8090))
        .add(&b)
        .assert_ok();
    assert!(sealed_in_nft(&net1));
    let before = r.state_dirs(&net1);
    let of_ino =
        |d: &String| d == &format!("netns-{ino}") || d.starts_with(&format!("netns-{ino}-"));
    let old: Vec<&String> = before.iter().filter(|d| of_ino(d)).collect();
    assert_eq!(
        old.len(),
        1,
        "one state dir for the first namespace: {before:?}"
    );
    let old = old[0].clone();
    // The node goes away without a single DEL.
    drop((a, b));
    drop(net1);

    // Namespaces until the kernel hands out the same inode again. It gives the lowest free
    // one: keep those that take a lower inode (they are in the way), drop the others at once
    // (so as not to hold inodes another test waits for).
    let t = Instant::now();
    let mut spare = Vec::new();
    let (net2, ghost) = loop {
        let n = TestNet::new();
        let got = inode(n.host());
        if got == ino {
            eprintln!("inode {ino} reused after {:?}", t.elapsed());
            break (n, old.clone());
        }
        if t.elapsed() > Duration::from_secs(10) {
            // Usually the inode comes back within 0.2 s. Now and then the kernel keeps the
            // deleted namespace (no process, fd or mount refers to it; its release is still
            // pending) for longer, or another process took the inode: put the dead
            // namespace's state where one at this new inode would have left it.
            let cookie = old.rsplit('-').next().unwrap_or("1");
            let ghost = format!("netns-{got}-{cookie}");
            let root = match layout {
                Layout::Default => "/run/cni-rs".to_owned(),
                Layout::TestDir => r.root().display().to_string(),
            };
            run(r
                .command(&n, "mv")
                .args([format!("{root}/{old}"), format!("{root}/{ghost}")]))
            .assert_ok();
            eprintln!(
                "inode {ino} not reused within {:?}: state moved to {ghost}",
                t.elapsed()
            );
            break (n, ghost);
        }
        if got < ino {
            spare.push(n);
        } else {
            drop(n);
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    drop(spare);
    let ino = inode(net2.host());
    let old = ghost;
    let of_ino =
        |d: &String| d == &format!("netns-{ino}") || d.starts_with(&format!("netns-{ino}-"));

    let (a2, b2) = (net2.pod("a"), net2.pod("b"));
    assert!(!sealed_in_nft(&net2), "a fresh namespace has no table");
    r.tool(&net2, &internal_conf(&net2)).add(&a2).assert_ok();
    assert!(
        sealed_in_nft(&net2),
        "the internal ADD in the new namespace must seal: {:?}",
        internal_elems(&net2)
    );
    assert_eq!(seal_rules(&net2).len(), 6, "{:?}", seal_rules(&net2));
    // The port the dead namespace's pod held is free here.
    let add = r
        .tool(&net2, &ported_conf(&net2))
        .cap_args(ports(8090))
        .add(&b2);
    assert!(add.success(), "ADD with the ghost's port: {add}");
    assert!(
        nft_elems(&net2, "map", "pm4_any")
            .iter()
            .any(|e| e.contains("8090")),
        "{:?}",
        nft_elems(&net2, "map", "pm4_any")
    );
    let after = r.state_dirs(&net2);
    assert!(
        !after.contains(&old),
        "the dead namespace's state {old} must be gone: {after:?}"
    );
    assert_eq!(after.iter().filter(|d| of_ino(d)).count(), 1, "{after:?}");

    r.tool(&net2, &internal_conf(&net2)).del(&a2).assert_ok();
    r.tool(&net2, &ported_conf(&net2))
        .cap_args(ports(8090))
        .del(&b2)
        .assert_ok();
    assert!(
        seal_rules(&net2).is_empty(),
        "last DEL removes the seal rules"
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reused_inode_inherits_nothing() {
    reused_inode(Layout::TestDir);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reused_inode_inherits_nothing_default_layout() {
    reused_inode(Layout::Default);
}

// ---------------------------------------------------------------------------------------------
// 2. flush between ADDs

fn flush_between_adds(layout: Layout) {
    let _s = shared();
    let r = Run::new(layout);
    let net = TestNet::new();
    let out = net.outside(); // return routes kept: only a seal can stop internal traffic
    let (a, b, c) = (net.pod("a"), net.pod("b"), net.pod("c"));
    let ti = || r.tool(&net, &internal_conf(&net));
    let tp = || r.tool(&net, &ported_conf(&net)).cap_args(ports(8091));
    tp().add(&c).assert_ok();
    let _srv = TcpServer::start(&c, "0.0.0.0", 80, "c");
    let host_v4 = out.host_v4.to_string();
    let published = || tcp_request(&out.ns, &host_v4, 8091).is_some_and(|s| s.starts_with("c "));
    assert!(published(), "published before the flush");
    let ra = ti().add(&a).assert_ok().json().clone();
    let ip_a = first_ip(&ra);

    net.host().exec_ok("nft", &["flush", "ruleset"]);
    assert!(
        !published(),
        "negative control: the flush removed the published port"
    );
    assert!(!sealed_in_nft(&net));

    // The next ADD on the internal network seals it again, and restores the running pod's port.
    ti().add(&b).assert_ok();
    assert!(sealed_in_nft(&net), "{:?}", internal_elems(&net));
    assert!(published(), "the ADD restored the published port of c");
    ti().check(&b).assert_ok();

    // The kernel-level seal: no table at all, and b still cannot leave its bridge.
    net.host().exec_ok("nft", &["flush", "ruleset"]);
    assert!(
        can_ping_eventually(&b, &ip_a, 3),
        "b -> a (same bridge) still works"
    );
    for pod in [&a, &b] {
        pod.ip(&["route", "add", "default", "via", "10.236.1.1"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:236:1::1"]);
    }
    assert!(
        can_ping_eventually(&c, &out.far_v4.to_string(), 3),
        "control: c reaches the outside after the flush"
    );
    for far in out.far() {
        assert!(
            !can_ping(&b, &far.to_string()),
            "internal b reached {far} with no nft table"
        );
    }
    let far_srv = TcpServer::start(&out.ns, "0.0.0.0", 0, "far");
    assert!(
        can_connect_tcp(&c, &out.far_v4.to_string(), far_srv.port()),
        "control: c connects to the outside"
    );
    assert!(
        !can_connect_tcp(&b, &out.far_v4.to_string(), far_srv.port()),
        "internal b reached the outside over TCP"
    );
    // Control: the rules are what holds (without them b gets out).
    let rules = seal_rules(&net);
    assert_eq!(rules.len(), 6, "{rules:?}");
    for (fam, sel, what) in [
        ("-4", "iif", "cnirs-fci"),
        ("-6", "iif", "cnirs-fci"),
        ("-4", "to", "10.236.1.0/24"),
        ("-6", "to", "fd00:236:1::/64"),
    ] {
        net.host().ip(&[
            fam,
            "rule",
            "del",
            "priority",
            "10",
            sel,
            what,
            "unreachable",
        ]);
    }
    assert!(
        can_ping(&b, &out.far_v4.to_string()),
        "control: without the seal rules b reaches the outside"
    );
    // Put it back the way an ADD does, then take everything down.
    let d = net.pod("d");
    ti().add(&d).assert_ok();
    assert_eq!(seal_rules(&net).len(), 6);
    for p in [&a, &b] {
        ti().del(p).assert_ok();
    }
    assert_eq!(seal_rules(&net).len(), 6, "d is still attached");
    ti().del(&d).assert_ok();
    assert!(seal_rules(&net).is_empty(), "{:?}", seal_rules(&net));
    tp().del(&c).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn flush_between_adds_seals_and_restores() {
    flush_between_adds(Layout::TestDir);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn flush_between_adds_seals_and_restores_default_layout() {
    flush_between_adds(Layout::Default);
}

// ---------------------------------------------------------------------------------------------
// 3. cnirs watch

struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(r: &Run, net: &TestNet) -> Self {
        let log = r.dir.path().join("watch.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = r
            .command(net, &plugin_bin("cnirs").display().to_string())
            .arg("watch")
            .env("CNIRS_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .unwrap();
        let w = Watch { child, log };
        // Ready once it logged that it watches (subscribed before that line).
        assert!(
            poll_until(Duration::from_secs(10), || w.log().contains("watching")).is_some(),
            "cnirs watch did not start: {}",
            w.log()
        );
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused).
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.child.id());
        self.child.wait().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn watch_repairs(layout: Layout) {
    let _s = shared();
    let r = Run::new(layout);
    let net = TestNet::new();
    let out = net.outside();
    let (a, c) = (net.pod("a"), net.pod("c"));
    let ti = r.tool(&net, &internal_conf(&net));
    let tp = r.tool(&net, &ported_conf(&net)).cap_args(ports(8092));
    ti.add(&a).assert_ok();
    tp.add(&c).assert_ok();
    let _srv = TcpServer::start(&c, "0.0.0.0", 80, "c");
    let host_v4 = out.host_v4.to_string();
    let published = || tcp_request(&out.ns, &host_v4, 8092).is_some_and(|s| s.starts_with("c "));
    assert!(published());

    let w = Watch::start(&r, &net);
    let healthy = || sealed_in_nft(&net) && published();

    net.host().exec_ok("nft", &["flush", "ruleset"]);
    let took = poll_until(Duration::from_secs(5), healthy);
    assert!(took.is_some(), "not repaired after a flush:\n{}", w.log());
    eprintln!("flush ruleset -> sealed and port answering after {took:?}");

    // firewalld / nftables.service style: a file that starts with `flush ruleset`.
    let file = r.dir.path().join("reload.nft");
    std::fs::write(
        &file,
        "flush ruleset\ntable inet filter {\n  chain input {\n    type filter hook input \
         priority 0; policy accept;\n  }\n}\n",
    )
    .unwrap();
    net.host()
        .exec_ok("nft", &["-f", &file.display().to_string()]);
    let took = poll_until(Duration::from_secs(5), healthy);
    assert!(took.is_some(), "not repaired after nft -f:\n{}", w.log());
    eprintln!("nft -f (flush ruleset + table) -> repaired after {took:?}");

    // Deleting only our table is repaired too.
    net.host()
        .exec_ok("nft", &["delete", "table", "inet", "cnirs"]);
    assert!(
        poll_until(Duration::from_secs(5), healthy).is_some(),
        "not repaired after delete table:\n{}",
        w.log()
    );

    // The plugins' own DEL is not undone by the watcher.
    tp.del(&c).assert_ok();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !nft_elems(&net, "map", "pm4_any")
            .iter()
            .any(|e| e.contains("8092")),
        "the watcher put a deleted port back"
    );

    let log = w.log();
    let repairs = log.matches("repaired table inet cnirs").count();
    assert!(
        repairs >= 3,
        "one repair per event, naming what went:\n{log}"
    );
    assert!(log.contains("the table was deleted"), "{log}");
    let status = w.stop();
    assert!(status.success(), "SIGTERM must exit 0: {status:?}");
    ti.del(&a).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn watch_repairs_flush_and_reload() {
    watch_repairs(Layout::TestDir);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn watch_repairs_flush_and_reload_default_layout() {
    watch_repairs(Layout::Default);
}

// ---------------------------------------------------------------------------------------------
// 4. cnirs reconcile removes the state of namespaces that no longer exist

fn reconcile_gc(layout: Layout) {
    let _s = shared();
    let r = Run::new(layout);
    let net = TestNet::new();
    let a = net.pod("a");
    r.tool(&net, &internal_conf(&net)).add(&a).assert_ok();
    let root = match layout {
        Layout::Default => "/run/cni-rs".to_owned(),
        Layout::TestDir => r.root().display().to_string(),
    };
    // Two dead namespaces' state: an inode nobody has (both layouts).
    for d in ["netns-1-1/network", "netns-2/network"] {
        run(r
            .command(&net, "mkdir")
            .args(["-p", &format!("{root}/{d}")]))
        .assert_ok();
    }
    let mine: Vec<String> = r
        .state_dirs(&net)
        .into_iter()
        .filter(|d| d.starts_with(&format!("netns-{}-", inode(net.host()))))
        .collect();
    assert_eq!(mine.len(), 1, "{:?}", r.state_dirs(&net));
    let out = run(r
        .command(&net, &plugin_bin("cnirs").display().to_string())
        .arg("reconcile"));
    out.assert_ok();
    let left = r.state_dirs(&net);
    assert!(
        !left.iter().any(|d| d == "netns-1-1" || d == "netns-2"),
        "dead namespaces' state removed: {left:?}\n{out}"
    );
    assert!(left.contains(&mine[0]), "live state kept: {left:?}");
    assert!(out.stderr.contains("no longer exist"), "{out}");
    assert!(sealed_in_nft(&net));
    r.tool(&net, &internal_conf(&net)).del(&a).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reconcile_removes_dead_namespaces_state() {
    reconcile_gc(Layout::TestDir);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn reconcile_removes_dead_namespaces_state_default_layout() {
    reconcile_gc(Layout::Default);
}
