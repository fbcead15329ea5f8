//! Our plugins under a real client: containerd 1.6's `ctr run --rm --cni` (issue 7).
//!
//! `ctr` has no flag for the CNI conf or bin dirs (go-cni's defaults `/etc/cni/net.d` and
//! `/opt/cni/bin`, libcni's cache `/var/lib/cni`), so everything runs in a private mount
//! namespace ([`MountNs`]: tmpfs over `/run`, `/var/lib` and `/opt`, then bind mounts from the
//! test's temp dirs) and in the test's host netns: the machine's network, `/etc/cni`,
//! `/var/lib/cni` and `/run/containerd` are never touched. The test starts its own
//! `containerd --config` (socket, root and state in the temp dir, CRI plugin disabled) and stops
//! it by its PID. The container is a directory holding `/bin/busybox` (`ctr run --rootfs`).
//!
//! Proven: with conf-examples/containerd/10-cnirs-bridge.conflist (dataDir patched into the
//! temp dir) the container gets an address of the network on `eth0`, its traffic leaves
//! masqueraded (the outside netns's server sees the host's 192.0.2.1, and only masqueraded
//! traffic has a way back), the host side exists while it runs (veth, lease, masquerade
//! element) and after `ctr run --rm` returns nothing is left (ctr's DEL comes after the netns
//! is gone, with an empty CNI_NETNS).
//!
//! Tested with containerd 1.6.20~ds1 (Debian 12) and runc 1.1.5. Needs root, `containerd`,
//! `ctr`, `runc`, `nsenter`, `unshare` and the release binaries
//! (`cargo build --release --workspace --bins`). Run alone:
//! `cargo test -p conformance --test containerd -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use conformance::*;
use serde_json::Value;

/// A containerd of our own, stopped (SIGTERM, then SIGKILL) by its PID when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    #[track_caller]
    fn start(net: &TestNet, mnt: &MountNs) -> Self {
        let dir = net.tmp().join("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{}\"\n",
                dir.join("root").display(),
                dir.join("state").display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = mnt
            .command(net.host(), "containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("cannot start containerd");
        let me = Self { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !me.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not create {} in 15 s; log:\n{}",
                me.socket.display(),
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not reaped yet (we wait below), so the pid is ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory that `ctr run --rootfs` can run: `/bin/busybox` and empty mount points.
fn busybox_rootfs(net: &TestNet) -> PathBuf {
    let root = net.tmp().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    root
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn ctr_run_rm_cni_gets_an_address_goes_out_masqueraded_and_leaves_nothing() {
    require_tools(&["containerd", "ctr", "runc", "nsenter", "unshare"]);
    for p in ["bridge", "host-local", "portmap", "isolation"] {
        plugin_bin(p);
    }
    let net = TestNet::new();
    let out = net.outside();
    // Only traffic masqueraded to the host's 192.0.2.1 gets answers.
    out.remove_return_routes();
    let server = TcpServer::start(&out.ns, &out.far_v4.to_string(), 0, "cnirs-ctr");

    // The conflist users copy, with host-local's dataDir moved into the temp dir.
    let example = workspace_root().join("conf-examples/containerd/10-cnirs-bridge.conflist");
    let mut conf: Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["dataDir"] = Value::from(net.data_dir().display().to_string());
    let network = conf["name"].as_str().unwrap().to_owned();
    let bridge = conf["plugins"][0]["bridge"].as_str().unwrap().to_owned();
    let netd = net.tmp().join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(
        netd.join("10-cnirs-bridge.conflist"),
        serde_json::to_string_pretty(&conf).unwrap(),
    )
    .unwrap();

    let bin = cni_path();
    let (cache, run_dir) = (net.cache_dir(), net.run_dir());
    let mnt = MountNs::new(
        &net.tmp().join("mnt-stage"),
        &[
            (&netd, "/etc/cni/net.d"),
            (&bin, "/opt/cni/bin"),
            (&cache, "/var/lib/cni"),
            (&run_dir, "/run/cni-rs"),
        ],
    );
    let containerd = Containerd::start(&net, &mnt);
    let rootfs = busybox_rootfs(&net);
    let before = HostState::of(&net);

    // The container prints its addresses, talks to the outside server, then waits until the
    // test has looked at the host side (the file `/go` appears in its rootfs).
    let script = format!(
        "/bin/busybox ip -o addr show dev eth0; \
         echo hi | /bin/busybox nc -w 2 {far} {port}; \
         i=0; while [ ! -e /go ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.05; i=$((i+1)); done",
        far = out.far_v4,
        port = server.port()
    );
    let started = Instant::now();
    let ctr = mnt
        .command(net.host(), "ctr")
        .arg("--address")
        .arg(&containerd.socket)
        .args(["-n", "cnirs", "run", "--rm", "--cni", "--rootfs"])
        .arg(&rootfs)
        .args(["cnirs-ctr1", "/bin/busybox", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ctr");

    // While it runs: a veth on the bridge, a lease, a masquerade element. Sampled once
    // libcni cached the chain's result (the whole ADD is done), not when the veth appears
    // (mid-ADD: the elements may not be there yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let during = loop {
        let s = HostState::of(&net);
        let d = before.diff(&s);
        let veth = d
            .added
            .iter()
            .any(|i| i.kind == "link" && i.text.contains("\"veth"));
        let cached = d.added.iter().any(|i| {
            i.kind == "file" && i.text.starts_with("cache/results/") && !i.text.ends_with('/')
        });
        if veth && cached {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no veth and cached result appeared while ctr runs; containerd log:\n{}",
            containerd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let added = before.diff(&during).added;
    let lease = added
        .iter()
        .find(|i| i.kind == "file" && i.text.starts_with(&format!("data/{network}/10.88.")))
        .unwrap_or_else(|| panic!("no lease in dataDir while the container runs: {added:#?}"))
        .text
        .clone();
    assert!(
        added
            .iter()
            .any(|i| i.kind == "nft" && i.text.contains("masq4") && i.text.contains("10.88.0.0")),
        "no masquerade element while the container runs: {added:#?}"
    );
    assert!(
        added
            .iter()
            .any(|i| i.kind == "file" && i.text.starts_with("cache/results/")),
        "libcni cached no result under /var/lib/cni (bind-mounted cache dir): {added:#?}"
    );
    std::fs::write(rootfs.join("go"), b"").unwrap();

    let done = ctr.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    eprintln!(
        "ctr run --rm --cni took {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        started.elapsed()
    );
    assert!(
        done.status.success(),
        "ctr run failed: {:?}\n{stdout}\n{stderr}\ncontainerd log:\n{}",
        done.status,
        containerd.log_text()
    );
    // eth0 has an address of the network, the one host-local leased.
    let ip = lease
        .trim_start_matches(&format!("data/{network}/"))
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        stdout.contains(&format!("inet {ip}/16")),
        "eth0 of the container does not show the leased {ip}/16:\n{stdout}"
    );
    // Its traffic left masqueraded: the server saw (and told the container) 192.0.2.1.
    let peers = server.peers();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p.ip() == out.host_v4),
        "the outside server saw {peers:?}, not the host's {}",
        out.host_v4
    );
    assert!(
        stdout.contains(&format!("cnirs-ctr {}:", out.host_v4)),
        "the container did not get the server's answer:\n{stdout}"
    );

    // ctr's DEL ran after the netns was gone: nothing of the container is left.
    let after = HostState::of(&net);
    before
        .diff(&after)
        .without(legit_leftover(&[&bridge]))
        .assert_empty("after `ctr run --rm --cni` returned");
    assert!(
        !after
            .of_kind("link")
            .any(|i| i.text.contains("\"ifname\":\"veth")),
        "a veth is left"
    );
}
