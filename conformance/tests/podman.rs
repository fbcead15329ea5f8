//! Our plugins under a real client: podman 4.3 with its CNI backend (issue 7).
//!
//! Podman reads `CONTAINERS_CONF` (written by the test: `network_backend = "cni"`,
//! `cni_plugin_dirs` = `/opt/cni/bin` only, where our release dir is bind-mounted,
//! `network_config_dir`, tmp dir and event log in the temp dir) and gets its storage by flags (`--root`, `--runroot`, `--storage-driver vfs`,
//! also handed to conmon's cleanup process). What cannot be configured (libcni's cache and
//! host-local's default dataDir `/var/lib/cni`, tuning's `/run/cni`, our state dir
//! `/run/cni-rs`, podman's netns under `/run/netns`, runc's `/run/runc`) lives in a private
//! mount namespace ([`MountNs`]: tmpfs over `/run`, `/var/lib`, `/opt` plus bind mounts from
//! the test's temp dirs), and every podman process (and so conmon and its cleanup) runs in it
//! and in the test's host netns (`nsenter --mount=... --net=...`). The container is a
//! directory holding `/bin/busybox` (`podman run --rootfs`), no image, no registry.
//!
//! Why the environment cannot carry the state dir (`CNIRS_RUN_DIR`): conmon starts
//! `podman container cleanup` with only `CONTAINERS_CONF`, `LC_*` and `XDG_RUNTIME_DIR`, so a
//! teardown done by the cleanup would use another state dir than the setup.
//!
//! Why `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`: rootful podman asks runc for
//! RLIMIT_NOFILE/NPROC 1048576, and this machine's root has no CAP_SYS_RESOURCE (runc: "error
//! setting rlimit type 7: operation not permitted"); lower limits need no capability.
//!
//! Proven: `podman network create` (our plugin dir only) writes bridge + portmap + firewall +
//! tuning + dnsname (podman adds dnsname because it finds our `dnsname` binary) at
//! cniVersion 0.4.0, the same as conf-examples/podman/podman-generated.conflist;
//! `podman run -d --network NET -p 127.0.0.1:PORT:80` serves busybox httpd of the container
//! on 127.0.0.1:PORT of the host netns; `podman network connect`/`disconnect` of a second
//! network adds and removes eth1 (reachable from the host while connected); `podman rm -f`
//! (teardown possibly finished by conmon's cleanup, waited for) leaves no veth, lease, cached
//! result, tuning record, state record or nft element.
//!
//! Tested with podman 4.3.1, conmon 2.1.6, runc 1.1.5 (Debian 12). Needs root, `podman`,
//! `conmon`, `runc`, `nsenter`, `unshare` and the release binaries
//! (`cargo build --release --workspace --bins`). Run alone:
//! `cargo test -p conformance --test podman -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::{Duration, Instant};

use conformance::*;
use serde_json::Value;

/// Rootless-free, registry-free podman confined to one [`TestNet`]: its own containers.conf,
/// storage, network config dir and private mount namespace. Dropping it removes every
/// container it still has (`podman rm -af -t 0`), best effort.
struct Podman<'a> {
    net: &'a TestNet,
    mnt: MountNs,
    conf: PathBuf,
    storage: PathBuf,
    netd: PathBuf,
    rootfs: PathBuf,
}

/// What the container's httpd serves.
const BODY: &str = "hello from a podman container";

/// Flags every `podman run` needs on this machine (see the module doc).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

impl<'a> Podman<'a> {
    #[track_caller]
    fn new(net: &'a TestNet) -> Self {
        require_tools(&["podman", "conmon", "runc", "nsenter", "unshare"]);
        for p in [
            "bridge",
            "host-local",
            "portmap",
            "firewall",
            "tuning",
            "dnsname",
        ] {
            plugin_bin(p);
        }
        let base = net.tmp().join("podman");
        let (netd, storage, tmp) = (base.join("net.d"), base.join("storage"), base.join("tmp"));
        for d in [&netd, &storage, &tmp] {
            std::fs::create_dir_all(d).unwrap();
        }
        let conf = base.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"/opt/cni/bin\"]\n\
                 network_config_dir = \"{netd}\"\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{tmp}/events.log\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 static_dir = \"{storage}/libpod\"\n\
                 volume_path = \"{storage}/volumes\"\n",
                netd = netd.display(),
                tmp = tmp.display(),
                storage = storage.display(),
            ),
        )
        .unwrap();
        let rootfs = base.join("rootfs");
        for d in ["bin", "www", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        std::fs::write(rootfs.join("www/index.html"), BODY).unwrap();
        let (data, cache, run, bin) = (net.data_dir(), net.cache_dir(), net.run_dir(), cni_path());
        // The host's resolvers as podman and dnsname's resolver see them: the test's host
        // netns' own loopback, where nothing listens (no query ever leaves the test).
        let resolv = base.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        // host-local's default dataDir and libcni's cache -> data/ (networks/, results/);
        // tuning's records -> cache/tuning/; our firewall state -> run/; our binaries (only)
        // -> /opt/cni/bin, as `make install` puts them.
        let mnt = MountNs::new(
            &net.tmp().join("mnt-stage"),
            &[
                (&data, "/var/lib/cni"),
                (&cache, "/run/cni"),
                (&run, "/run/cni-rs"),
                (&bin, "/opt/cni/bin"),
                (&resolv, "/etc/resolv.conf"),
            ],
        );
        Self {
            net,
            mnt,
            conf,
            storage,
            netd,
            rootfs,
        }
    }

    /// `podman GLOBAL-FLAGS args...` in the private mount ns and the host netns.
    fn run(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = self.mnt.command(self.net.host(), "podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        conformance::exec::run(&mut cmd)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> CmdOutput {
        let out = self.run(args);
        out.assert_ok();
        out
    }

    /// `podman network create --subnet SUBNET NAME`; returns the conflist podman wrote.
    #[track_caller]
    fn network_create(&self, name: &str, subnet: &str) -> Value {
        self.ok(&["network", "create", "--subnet", subnet, name]);
        let path = self.netd.join(format!("{name}.conflist"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("podman wrote no {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// `podman run -d --name NAME [extra...] --rootfs ROOTFS busybox httpd` (port 80).
    #[track_caller]
    fn run_httpd(&self, name: &str, extra: &[&str]) -> CmdOutput {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(&ULIMITS);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--rootfs",
            &rootfs,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        self.run(&args)
    }

    /// Global addresses of `ifname` inside the container (`busybox ip -o addr`), or `None` if
    /// it has no such interface.
    fn ctr_addrs(&self, name: &str, ifname: &str) -> Option<String> {
        let out = self.run(&[
            "exec",
            name,
            "/bin/busybox",
            "ip",
            "-o",
            "addr",
            "show",
            "dev",
            ifname,
        ]);
        out.success().then_some(out.stdout)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let out = self.run(&["rm", "-af", "-t", "0"]);
        if !out.success() {
            eprintln!("podman cleanup: {out}");
        }
    }
}

/// Waits (up to 15 s: podman's teardown may be finished by conmon's cleanup process) until
/// the host state is `before` again but for [`legit_leftover`], then asserts it.
#[track_caller]
fn assert_settles(net: &TestNet, before: &HostState, bridges: &[&str], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let diff = before
            .diff(&HostState::of(net))
            .without(legit_leftover(bridges));
        if diff.is_empty() || Instant::now() > deadline {
            diff.assert_empty(what);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `http://127.0.0.1:PORT/` from the host netns, retried for up to 5 s (httpd starts after
/// `podman run -d` returns).
fn get_local(net: &TestNet, port: u16) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = http_get(net.host(), "127.0.0.1", port);
        if body.is_some() || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leases(net: &TestNet, network: &str) -> Vec<String> {
    let dir = net.data_dir().join("networks").join(network);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

fn veths(net: &TestNet) -> Vec<String> {
    let mut v: Vec<String> = net
        .host()
        .link_names()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect();
    v.sort();
    v
}

/// The `inet A.B.C.D/N` address in `busybox ip -o addr` output.
fn inet_of(out: &str) -> Option<String> {
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            return words
                .next()
                .map(|a| a.split('/').next().unwrap().to_owned());
        }
    }
    None
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_network_create_writes_the_documented_conflist() {
    let net = TestNet::new();
    let podman = Podman::new(&net);
    let mut got = podman.network_create("cnirs-doc", "10.241.9.0/24");
    assert_eq!(got["cniVersion"], "0.4.0", "{got:#}");
    let types: Vec<&str> = got["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    // podman 4.3's CNI backend appends dnsname when it finds a `dnsname` binary in its plugin
    // dirs: ours.
    assert_eq!(
        types,
        ["bridge", "portmap", "firewall", "tuning", "dnsname"],
        "{got:#}"
    );
    // Same as the documented copy but for what the user chose (name, subnet) and the bridge
    // name podman numbered.
    let example_path = workspace_root().join("conf-examples/podman/podman-generated.conflist");
    let example: Value =
        serde_json::from_str(&std::fs::read_to_string(&example_path).unwrap()).unwrap();
    got["name"] = example["name"].clone();
    got["plugins"][0]["bridge"] = example["plugins"][0]["bridge"].clone();
    got["plugins"][0]["ipam"]["ranges"] = example["plugins"][0]["ipam"]["ranges"].clone();
    assert_eq!(
        got,
        example,
        "podman now writes something else than {}",
        example_path.display()
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_publishes_connects_disconnects_and_rm_leaves_nothing() {
    let net = TestNet::new();
    let podman = Podman::new(&net);
    let web_conf = podman.network_create("cnirs-web", "10.241.1.0/24");
    let side_conf = podman.network_create("cnirs-side", "10.241.2.0/24");
    let br_web = web_conf["plugins"][0]["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    let br_side = side_conf["plugins"][0]["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = HostState::of(&net);

    // A published port on 127.0.0.1 of the host netns.
    podman
        .run_httpd(
            "web",
            &["--network", "cnirs-web", "-p", "127.0.0.1:18080:80"],
        )
        .assert_ok();
    assert_eq!(
        get_local(&net, 18080).as_deref(),
        Some(BODY),
        "busybox httpd of the container through 127.0.0.1:18080"
    );
    let web_ip = inet_of(&podman.ctr_addrs("web", "eth0").expect("web has eth0")).unwrap();
    assert!(web_ip.starts_with("10.241.1."), "{web_ip}");
    assert_eq!(leases(&net, "cnirs-web"), std::slice::from_ref(&web_ip));
    let added = before.diff(&HostState::of(&net)).added;
    assert!(
        added
            .iter()
            .any(|i| i.kind == "nft" && i.text.contains("18080") && i.text.contains(&web_ip)),
        "no port element 127.0.0.1:18080 -> {web_ip}:80: {added:#?}"
    );
    for (what, prefix) in [
        ("libcni's cached result", "data/results/cnirs-web-"),
        ("tuning's record", "cache/tuning/"),
    ] {
        assert!(
            added
                .iter()
                .any(|i| i.kind == "file" && i.text.starts_with(prefix) && !i.text.ends_with('/')),
            "no {what} ({prefix}...): {added:#?}"
        );
    }
    let web_veths = veths(&net);
    assert_eq!(web_veths.len(), 1, "{web_veths:?}");

    // A second network connected to and disconnected from a running container.
    podman
        .run_httpd("side", &["--network", "cnirs-web"])
        .assert_ok();
    assert_eq!(veths(&net).len(), 2);
    podman.ok(&["network", "connect", "cnirs-side", "side"]);
    let eth1 = podman
        .ctr_addrs("side", "eth1")
        .expect("side has eth1 after `podman network connect`");
    let side_ip = inet_of(&eth1).unwrap();
    assert!(side_ip.starts_with("10.241.2."), "{eth1}");
    assert_eq!(leases(&net, "cnirs-side"), std::slice::from_ref(&side_ip));
    assert_eq!(veths(&net).len(), 3);
    assert!(
        can_ping_eventually(net.host(), &side_ip, 3),
        "host -> {side_ip} (eth1 on {br_side})"
    );
    podman.ok(&["network", "disconnect", "cnirs-side", "side"]);
    assert!(
        podman.ctr_addrs("side", "eth1").is_none(),
        "eth1 still in the container after `podman network disconnect`"
    );
    assert!(
        leases(&net, "cnirs-side").is_empty(),
        "{:?}",
        leases(&net, "cnirs-side")
    );
    assert_eq!(veths(&net).len(), 2, "{:?}", veths(&net));
    assert_eq!(
        get_local(&net, 18080).as_deref(),
        Some(BODY),
        "web still published"
    );

    // rm -f: nothing of either container is left (teardown may end in conmon's cleanup).
    podman.ok(&["rm", "-f", "-t", "0", "web", "side"]);
    assert_settles(
        &net,
        &before,
        &[&br_web, &br_side],
        "after `podman rm -f web side`",
    );
    assert!(veths(&net).is_empty(), "{:?}", veths(&net));
    assert!(leases(&net, "cnirs-web").is_empty());
    assert_eq!(
        http_get(net.host(), "127.0.0.1", 18080),
        None,
        "port closed"
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_publishes_a_port_of_a_container_on_two_networks() {
    let net = TestNet::new();
    let podman = Podman::new(&net);
    let a = podman.network_create("cnirs-a", "10.241.3.0/24");
    let b = podman.network_create("cnirs-b", "10.241.4.0/24");
    let (br_a, br_b) = (
        a["plugins"][0]["bridge"].as_str().unwrap().to_owned(),
        b["plugins"][0]["bridge"].as_str().unwrap().to_owned(),
    );
    let before = HostState::of(&net);
    podman
        .run_httpd(
            "two",
            &["--network", "cnirs-a,cnirs-b", "-p", "127.0.0.1:18081:80"],
        )
        .assert_ok();
    assert_eq!(get_local(&net, 18081).as_deref(), Some(BODY));
    // The network that publishes the port goes: the other one takes it over.
    podman.ok(&["network", "disconnect", "cnirs-a", "two"]);
    assert_eq!(
        get_local(&net, 18081).as_deref(),
        Some(BODY),
        "port handed over to the container's remaining network"
    );
    podman.ok(&["rm", "-f", "-t", "0", "two"]);
    assert_settles(&net, &before, &[&br_a, &br_b], "after `podman rm -f two`");
}

/// podman's own reload test flushes an iptables chain; ours flushes the whole ruleset (what
/// `systemctl restart nftables` and `firewall-cmd --reload` do), and `podman network reload`
/// (DEL + ADD of every network of the container) brings the published port back.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_network_reload_after_flush_ruleset_brings_ports_back() {
    let net = TestNet::new();
    let podman = Podman::new(&net);
    podman.network_create("cnirs-rl", "10.241.5.0/24");
    podman
        .run_httpd("rl", &["--network", "cnirs-rl", "-p", "127.0.0.1:18082:80"])
        .assert_ok();
    assert_eq!(get_local(&net, 18082).as_deref(), Some(BODY));

    net.host().exec_ok("nft", &["flush", "ruleset"]);
    assert_eq!(
        http_get(net.host(), "127.0.0.1", 18082),
        None,
        "negative control: the flush took the published port away"
    );

    podman.ok(&["network", "reload", "rl"]);
    assert_eq!(
        get_local(&net, 18082).as_deref(),
        Some(BODY),
        "published port after `podman network reload`"
    );
    podman.ok(&["rm", "-f", "-t", "0", "rl"]);
}

/// `busybox nslookup NAME` inside container `ctr` (its own resolv.conf): the addresses
/// answered, empty if none.
fn ctr_lookup(podman: &Podman, ctr: &str, name: &str) -> Vec<String> {
    let out = podman.run(&["exec", ctr, "/bin/busybox", "nslookup", name]);
    let mut in_answer = false;
    let mut v = Vec::new();
    for line in out.stdout.lines() {
        if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer {
            if let Some(a) = line.strip_prefix("Address:") {
                v.push(a.trim().to_owned());
            }
        }
    }
    v
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_containers_resolve_each_other_by_name_and_alias() {
    let net = TestNet::new();
    let podman = Podman::new(&net);
    let conf = podman.network_create("cnirs-dns", "10.241.20.0/24");
    let dnsname = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "dnsname")
        .unwrap_or_else(|| panic!("no dnsname in {conf:#}"));
    assert_eq!(dnsname["domainName"], "dns.podman", "{conf:#}");
    let br = conf["plugins"][0]["bridge"].as_str().unwrap().to_owned();
    let before = HostState::of(&net);

    podman
        .run_httpd(
            "api",
            &["--network", "cnirs-dns", "--network-alias", "backend"],
        )
        .assert_ok();
    podman
        .run_httpd("web", &["--network", "cnirs-dns"])
        .assert_ok();
    let api_ip = inet_of(&podman.ctr_addrs("api", "eth0").unwrap()).unwrap();
    let web_ip = inet_of(&podman.ctr_addrs("web", "eth0").unwrap()).unwrap();

    // podman wrote the gateway and the domain from our result into the containers.
    let rc = podman.ok(&["exec", "web", "/bin/busybox", "cat", "/etc/resolv.conf"]);
    assert!(
        rc.stdout.contains("nameserver 10.241.20.1"),
        "{}",
        rc.stdout
    );
    assert!(rc.stdout.contains("dns.podman"), "{}", rc.stdout);

    // By name, bare and qualified, both ways, and by the alias.
    assert_eq!(
        ctr_lookup(&podman, "web", "api"),
        std::slice::from_ref(&api_ip)
    );
    assert_eq!(
        ctr_lookup(&podman, "web", "api.dns.podman"),
        std::slice::from_ref(&api_ip)
    );
    assert_eq!(
        ctr_lookup(&podman, "web", "backend"),
        std::slice::from_ref(&api_ip)
    );
    assert_eq!(ctr_lookup(&podman, "api", "web.dns.podman"), [web_ip]);
    assert!(ctr_lookup(&podman, "web", "nosuch.dns.podman").is_empty());
    // web reaches api by the address its name resolved to.
    assert!(can_ping_eventually(net.host(), &api_ip, 3));
    let out = podman.ok(&[
        "exec",
        "web",
        "/bin/busybox",
        "ping",
        "-c1",
        "-W2",
        &ctr_lookup(&podman, "web", "api")[0],
    ]);
    assert!(out.stdout.contains("1 packets received"), "{out}");

    // rm: the name goes with the container; the last one stops the resolver.
    podman.ok(&["rm", "-f", "-t", "0", "api"]);
    assert!(ctr_lookup(&podman, "web", "api").is_empty());
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert_settles(&net, &before, &[&br], "after `podman rm -f api web`");
}

/// The host's resolver for the forwarding test: dnsmasq on 127.0.0.1:53 of the test's host
/// netns (what the private /etc/resolv.conf names), `--no-resolv`, with `google.com` as an
/// `--address` (an A record; AAAA of that name is REFUSED: the scenario podman's
/// `podman network create` test met) and `aonly.test` as a local `--host-record` (A only;
/// AAAA is NOERROR with no answer, as real resolvers answer). Killed by pid when dropped.
struct HostResolver(std::process::Child);

impl Drop for HostResolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn podman_containers_get_upstream_answers_as_from_the_go_dnsname_never_servfail() {
    let net = TestNet::new();
    require_tools(&["dnsmasq", "dig"]);
    let up = HostResolver(
        net.host()
            .command("dnsmasq")
            .args([
                "-k",
                "--conf-file=/dev/null",
                "--pid-file=",
                "-u",
                "root",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--address=/google.com/198.51.100.30",
                "--host-record=aonly.test,198.51.100.31",
                // Local: answered from the record above (NODATA for AAAA), never forwarded.
                "--local=/aonly.test/",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let dig = |args: &[&str]| {
        let mut all = vec!["@127.0.0.1", "+time=1", "+tries=1"];
        all.extend_from_slice(args);
        net.host().exec("dig", &all)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dig(&["+short", "google.com", "A"])
        .stdout
        .contains("198.51.100.30")
    {
        assert!(Instant::now() < deadline, "dnsmasq never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The upstream as the containers' resolver will find it.
    assert!(dig(&["google.com", "AAAA"])
        .stdout
        .contains("status: REFUSED"));
    let nodata = dig(&["aonly.test", "AAAA"]);
    assert!(nodata.stdout.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.stdout.contains("ANSWER: 0"), "{nodata}");

    let podman = Podman::new(&net);
    let conf = podman.network_create("cnirs-fwd", "10.241.21.0/24");
    let br = conf["plugins"][0]["bridge"].as_str().unwrap().to_owned();
    let before = HostState::of(&net);
    podman
        .run_httpd("c", &["--network", "cnirs-fwd"])
        .assert_ok();
    // An A-only name: busybox asks A and AAAA, gets the A and a NODATA, and exits 0.
    let out = podman.run(&["exec", "c", "/bin/busybox", "nslookup", "aonly.test"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("198.51.100.31"), "{out}");
    // podman's own test: `nslookup google.com`. The A comes through; the upstream's REFUSED
    // for the AAAA (a query without EDNS0) gets no answer, as from the Go dnsname's dnsmasq,
    // never a SERVFAIL of ours: busybox waits for its timeout and exits 0 (it exits 1 on any
    // error code, REFUSED included: see docs/dnsname.md).
    let out = podman.run(&["exec", "c", "/bin/busybox", "nslookup", "google.com"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("198.51.100.30"), "{out}");
    assert!(!out.stdout.contains("REFUSED"), "{out}");
    assert!(!out.stdout.contains("SERVFAIL"), "{out}");
    podman.ok(&["rm", "-f", "-t", "0", "c"]);
    assert_settles(&net, &before, &[&br], "after `podman rm -f c`");
    drop(up);
}
