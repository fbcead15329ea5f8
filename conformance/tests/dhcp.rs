//! dhcp IPAM and its daemon against dnsmasq serving DHCP on a parent network, through cnitool.
//!
//! The world: the test's host netns (plugins, cnitool and the daemon run there) has `dpar0`, a
//! veth whose peer `dsrv0` sits in a server netns with 10.216.0.1/24 and dnsmasq (a lease
//! range, router option, and T1/T2 of a few seconds so renewals happen within the test). Pods
//! hang off `dpar0` through the main plugin ([`MAIN_TYPE`], macvlan). dnsmasq's lease file and
//! log show what the server saw: a lease per client id, renewals, the release on DEL.
//!
//! Controls: the reference plugin with the reference daemon on the same conflist gives the pod
//! the same address, gateway and routes; and the protocol is the reference's both ways (the
//! reference plugin against our daemon, ours against the reference daemon).
//!
//! Every daemon and dnsmasq is started by the test and stopped by PID.
//!
//! Run: `make build`, then `cargo test -p conformance --test dhcp -- --ignored` (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use conformance::{etcd::spawn_tied_to_process, *};
use serde_json::{json, Value};

/// The main plugin of the test network. Ours when it is built in the plugin dir (macvlan
/// comes with its own issue), else the reference's: change this one line (and
/// [`main_conf`]) to run dhcp under another main plugin.
const MAIN_TYPE: &str = "macvlan";

fn main_bin() -> PathBuf {
    let ours = cni_path().join(MAIN_TYPE);
    if ours.is_file() {
        ours
    } else {
        reference_plugin_bin(MAIN_TYPE)
    }
}

/// The main plugin's part of the conflist (its IPAM section is added by [`conflist`]).
fn main_conf() -> Value {
    json!({"type": MAIN_TYPE, "master": PARENT, "mode": "bridge"})
}

const PARENT: &str = "dpar0";
const SERVER_IF: &str = "dsrv0";
const SERVER_IP: &str = "10.216.0.1";
/// T1 (renewal) and T2 that dnsmasq hands out, in seconds.
const T1: u64 = 3;
const T2: u64 = 6;

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process started by the test, stopped by PID: SIGTERM, then SIGKILL if it lingers.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn start(what: &'static str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Self {
            child: spawn_tied_to_process(cmd),
            what,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM by PID; true when it exited within 5 s.
    fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} (pid {}) needed SIGKILL", self.what, self.pid());
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// dnsmasq as a DHCP server (no DNS) in the server netns.
struct Dnsmasq {
    /// Stopped (by PID) when dropped.
    _proc: Proc,
    leases: PathBuf,
    log: PathBuf,
}

impl Dnsmasq {
    fn start(net: &TestNet, srv: &Netns) -> Self {
        let dir = net.tmp().join("dnsmasq");
        std::fs::create_dir_all(&dir).unwrap();
        let (leases, log) = (dir.join("leases"), dir.join("log"));
        let mut cmd = command("ip");
        cmd.args([
            "netns",
            "exec",
            srv.name(),
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .arg("--conf-file=/dev/null")
        .arg("--user=root")
        .arg("--port=0")
        .arg(format!("--interface={SERVER_IF}"))
        .arg("--bind-interfaces")
        .arg("--dhcp-range=10.216.0.50,10.216.0.99,255.255.255.0,2m")
        .arg(format!("--dhcp-option=option:router,{SERVER_IP}"))
        .arg(format!("--dhcp-option=option:T1,{T1}"))
        .arg(format!("--dhcp-option=option:T2,{T2}"))
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--log-facility={}", log.display()))
        .arg("--log-dhcp");
        let d = Self {
            _proc: Proc::start("dnsmasq", cmd),
            leases,
            log,
        };
        wait_for("dnsmasq to start", Duration::from_secs(10), || {
            d.log_text().contains("DHCP, IP range")
        });
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lease file lines `EXPIRY MAC IP HOSTNAME CLIENT-ID`.
    fn leases(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    fn lease_of(&self, ip: &str) -> Option<Vec<String>> {
        self.leases()
            .into_iter()
            .find(|l| l.get(2).map(String::as_str) == Some(ip))
    }

    /// Log lines of one kind (`DHCPACK`, `DHCPRELEASE`...) for `mac`.
    fn count(&self, kind: &str, mac: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(&format!("{kind}({SERVER_IF})")) && l.contains(mac))
            .count()
    }
}

/// A dhcp daemon (`BIN daemon`) in the host netns on a private socket.
struct Daemon {
    proc: Proc,
    socket: PathBuf,
    pidfile: PathBuf,
}

impl Daemon {
    fn start(net: &TestNet, bin: &Path, label: &str, extra: &[&str]) -> Self {
        let socket = net.tmp().join(format!("dhcp-{label}/dhcp.sock"));
        let pidfile = net.tmp().join(format!("dhcp-{label}.pid"));
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", net.host().name()])
            .arg(bin)
            .arg("daemon")
            .arg("-socketpath")
            .arg(&socket)
            .arg(format!("-pidfile={}", pidfile.display()))
            .args(["-timeout", "2s"])
            .args(extra);
        let d = Self {
            proc: Proc::start("dhcp daemon", cmd),
            socket,
            pidfile,
        };
        wait_for("the dhcp daemon's socket", Duration::from_secs(10), || {
            d.socket.exists()
        });
        let pid = std::fs::read_to_string(&d.pidfile).unwrap_or_default();
        assert_eq!(
            pid.trim(),
            d.proc.pid().to_string(),
            "the pidfile holds the daemon's PID"
        );
        d
    }
}

fn conflist(socket: &Path) -> Value {
    let mut main = main_conf();
    main["ipam"] = json!({"type": "dhcp", "daemonSocketPath": socket});
    json!({"cniVersion": "1.0.0", "name": "dhcp-net", "plugins": [main]})
}

/// A CNI_PATH dir with the main plugin and the given `dhcp`.
fn plugin_dir(net: &TestNet, label: &str, dhcp: &Path) -> PathBuf {
    let dir = net.tmp().join(format!("bin-{label}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(main_bin(), dir.join(MAIN_TYPE)).unwrap();
    std::os::unix::fs::symlink(dhcp, dir.join("dhcp")).unwrap();
    dir
}

/// The server netns and the parent link `dpar0` (up, no address) in the host netns.
fn parent_network(net: &TestNet) -> Netns {
    let srv = net.pod("dsrv");
    net.host().ip(&[
        "link",
        "add",
        PARENT,
        "type",
        "veth",
        "peer",
        "name",
        SERVER_IF,
        "netns",
        srv.name(),
    ]);
    srv.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", SERVER_IF]);
    srv.ip(&["link", "set", SERVER_IF, "up"]);
    net.host().ip(&["link", "set", PARENT, "up"]);
    srv
}

fn lease_ip(r: &Value) -> String {
    let a = r["ips"][0]["address"].as_str().unwrap_or_default();
    a.split('/').next().unwrap_or_default().to_string()
}

fn pod_mac(pod: &Netns) -> String {
    pod.link("eth0").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What a pod ends up with: its eth0 addresses and routes, sorted.
fn pod_state(pod: &Netns) -> (Vec<String>, Vec<String>) {
    let mut addrs = pod.addrs("eth0");
    addrs.sort();
    let mut routes: Vec<String> = pod
        .routes(false)
        .iter()
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().unwrap_or("?"),
                r["gateway"].as_str().unwrap_or("-")
            )
        })
        .collect();
    routes.sort();
    (addrs, routes)
}

/// Our plugin and our daemon: a lease from dnsmasq inside the pod netns, the pod reaches the
/// server, the lease is renewed, CHECK passes, DEL releases it (gone from dnsmasq's lease
/// file), the daemon stops on SIGTERM and removes its socket and pidfile.
#[test]
#[ignore]
fn dhcp_lease_is_acquired_renewed_and_released_on_del() {
    let net = TestNet::new();
    let srv = parent_network(&net);
    let dnsmasq = Dnsmasq::start(&net, &srv);
    let mut daemon = Daemon::start(&net, &plugin_bin("dhcp"), "ours", &["-resendtimeout=20s"]);
    let dir = plugin_dir(&net, "ours", &plugin_bin("dhcp"));
    let tool = net.cnitool(&conflist(&daemon.socket)).cni_path(&[dir]);
    let pod = net.pod("p1");
    let r = tool.add(&pod).assert_ok().json().clone();
    let ip = lease_ip(&r);
    assert!(ip.starts_with("10.216.0."), "{r}");
    assert_eq!(r["ips"][0]["address"], format!("{ip}/24"));
    assert_eq!(r["ips"][0]["gateway"], SERVER_IP, "{r}");
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["dst"] == "0.0.0.0/0" && x["gw"] == SERVER_IP),
        "the reference's default route via the router: {r}"
    );
    assert_eq!(pod.addrs("eth0"), vec![format!("{ip}/24")]);
    assert!(
        can_ping_eventually(&pod, SERVER_IP, 3),
        "the pod reaches the DHCP server"
    );

    // Without -broadcast the server answers by unicast (the control of the -broadcast test).
    assert!(
        !dnsmasq.log_text().contains("broadcast response"),
        "{}",
        dnsmasq.log_text()
    );
    // The server holds a lease for the pod's MAC under the reference's client id.
    let mac = pod_mac(&pod);
    let lease = dnsmasq.lease_of(&ip).expect("dnsmasq has the lease");
    assert_eq!(lease[1], mac);
    let id = format!("\0{}/dhcp-net/eth0", tool.container_id_for(&pod));
    let hex: Vec<String> = id.bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        lease[4],
        hex.join(":"),
        "client id as the reference sends it"
    );

    // Renewed: a second DHCPACK (a DHCPREQUEST at T1), the lease's expiry pushed on.
    let expiry0: u64 = lease[0].parse().unwrap();
    // (dnsmasq pings an address before offering it: the first DISCOVER may go unanswered.)
    let discovers = dnsmasq.count("DHCPDISCOVER", &mac);
    wait_for("a renewal", Duration::from_secs(T1 * 5 + 10), || {
        dnsmasq.count("DHCPACK", &mac) >= 2
            && dnsmasq
                .lease_of(&ip)
                .and_then(|l| l[0].parse::<u64>().ok())
                .is_some_and(|e| e > expiry0)
    });
    assert_eq!(
        dnsmasq.count("DHCPDISCOVER", &mac),
        discovers,
        "renewals do not start over:\n{}",
        dnsmasq.log_text()
    );
    tool.check(&pod).assert_ok();
    assert_eq!(
        dnsmasq.count("DHCPDISCOVER", &mac),
        discovers,
        "CHECK keeps the held lease"
    );

    tool.del(&pod).assert_ok();
    wait_for(
        "the release in dnsmasq's lease file",
        Duration::from_secs(10),
        || dnsmasq.lease_of(&ip).is_none(),
    );
    assert_eq!(dnsmasq.count("DHCPRELEASE", &mac), 1);
    // DEL again: nothing held, still fine.
    tool.del(&pod).assert_ok();
    // No renewal after the release.
    let acks = dnsmasq.count("DHCPACK", &mac);
    std::thread::sleep(Duration::from_secs(T1 + 1));
    assert_eq!(
        dnsmasq.count("DHCPACK", &mac),
        acks,
        "no renewals after DEL"
    );

    assert!(daemon.proc.stop(), "the daemon stops on SIGTERM");
    assert!(
        !daemon.socket.exists() && !daemon.pidfile.exists(),
        "socket and pidfile removed"
    );
    // With no daemon, DEL still succeeds (nothing can be held); ADD fails with a hint.
    tool.del(&pod).assert_ok();
    let out = tool.add(&net.pod("p2"));
    assert!(!out.success());
    assert!(out.stdout.contains("daemon"), "{out}");
}

/// `-hostprefix` (a daemon whose view of the host's files is under a prefix, as in a
/// container with the host's root mounted) and `-broadcast`: the daemon listens on
/// PREFIX+socket and opens PREFIX+netns; the plugin, on the host, dials the plain path. Here
/// the prefix is a symlink to `/`, standing for the host's root mounted into a container.
#[test]
#[ignore]
fn dhcp_daemon_takes_a_host_prefix_and_asks_for_broadcast_answers() {
    let net = TestNet::new();
    let srv = parent_network(&net);
    let dnsmasq = Dnsmasq::start(&net, &srv);
    let socket = net.tmp().join("prefixed/dhcp.sock");
    let prefix = net.tmp().join("hostroot");
    std::os::unix::fs::symlink("/", &prefix).unwrap();
    let mut cmd = command("ip");
    cmd.args(["netns", "exec", net.host().name()])
        .arg(plugin_bin("dhcp"))
        .args(["daemon", "-broadcast", "-timeout=2s"])
        .arg(format!("-hostprefix={}", prefix.display()))
        .arg(format!("-socketpath={}", socket.display()));
    let mut daemon = Proc::start("dhcp daemon", cmd);
    wait_for("the prefixed socket", Duration::from_secs(10), || {
        socket.exists()
    });
    let dir = plugin_dir(&net, "prefix", &plugin_bin("dhcp"));
    let tool = net.cnitool(&conflist(&socket)).cni_path(&[dir]);
    let pod = net.pod("p1");
    let r = tool.add(&pod).assert_ok().json().clone();
    let ip = lease_ip(&r);
    assert!(dnsmasq.lease_of(&ip).is_some(), "{r}");
    assert!(
        dnsmasq.log_text().contains("broadcast response"),
        "dnsmasq answered by broadcast:\n{}",
        dnsmasq.log_text()
    );
    tool.del(&pod).assert_ok();
    wait_for("the release", Duration::from_secs(10), || {
        dnsmasq.lease_of(&ip).is_none()
    });
    assert!(daemon.stop());
    assert!(!socket.exists(), "socket removed on exit");
}

/// STATUS (CNI 1.1) answers 50 without a daemon and 0 with one. Run on the plugin directly:
/// the reference main plugins in Debian (1.1.1) do not speak 1.1.0.
#[test]
#[ignore]
fn dhcp_status_tells_whether_the_daemon_answers() {
    let net = TestNet::new();
    let status = |socket: &Path| {
        let conf = json!({"cniVersion": "1.1.0", "name": "dhcp-net", "type": MAIN_TYPE,
            "ipam": {"type": "dhcp", "daemonSocketPath": socket}});
        net.run_plugin(
            &plugin_bin("dhcp"),
            &[("CNI_COMMAND", "STATUS")],
            &conf.to_string(),
        )
    };
    let out = status(&net.tmp().join("none/dhcp.sock"));
    assert_eq!(out.cni_error_code(), Some(50), "{out}");
    let mut daemon = Daemon::start(&net, &plugin_bin("dhcp"), "status", &[]);
    status(&daemon.socket).assert_ok();
    assert!(daemon.proc.stop());
    let out = status(&daemon.socket);
    assert_eq!(out.cni_error_code(), Some(50), "stopped daemon: {out}");
}

/// The same conflist with the reference plugin and daemon: the pod ends up with the same
/// address (one client id, one lease), prefix, gateway and routes; and the wire protocol is
/// the reference's both ways: the reference plugin gets its lease from our daemon, ours from
/// the reference daemon, and each DEL releases.
#[test]
#[ignore]
fn dhcp_matches_the_reference_and_speaks_its_protocol_both_ways() {
    let net = TestNet::new();
    let srv = parent_network(&net);
    let dnsmasq = Dnsmasq::start(&net, &srv);
    let ours = plugin_bin("dhcp");
    let theirs = reference_plugin_bin("dhcp");
    let pod = net.pod("p1");

    let mut seen = Vec::new();
    for (label, plugin, daemon_bin) in [
        ("ours", &ours, &ours),
        ("reference", &theirs, &theirs),
        ("reference plugin, our daemon", &theirs, &ours),
        ("our plugin, reference daemon", &ours, &theirs),
    ] {
        let tag = label.replace([' ', ','], "-");
        let mut daemon = Daemon::start(&net, daemon_bin, &tag, &[]);
        let dir = plugin_dir(&net, &tag, plugin);
        let tool = net.cnitool(&conflist(&daemon.socket)).cni_path(&[dir]);
        let r = tool.add(&pod).assert_ok().json().clone();
        let ip = lease_ip(&r);
        assert!(
            dnsmasq.lease_of(&ip).is_some(),
            "{label}: dnsmasq holds {ip}"
        );
        let mut routes = r["routes"].as_array().cloned().unwrap_or_default();
        routes.sort_by_key(|x| x.to_string());
        // dnsmasq may pick another address for the pod's new MAC: compare all but the host part.
        let mut ips = r["ips"].clone();
        ips[0]["address"] = json!(r["ips"][0]["address"].as_str().unwrap().replace(&ip, "IP"));
        let (addrs, pod_routes) = pod_state(&pod);
        let addrs: Vec<String> = addrs.iter().map(|a| a.replace(&ip, "IP")).collect();
        seen.push((label, ips, routes, (addrs, pod_routes)));
        tool.del(&pod).assert_ok();
        wait_for(
            &format!("{label}: the release"),
            Duration::from_secs(10),
            || dnsmasq.lease_of(&ip).is_none(),
        );
        assert!(daemon.proc.stop(), "{label}: daemon stopped");
    }
    for s in &seen[1..] {
        assert_eq!(
            (&s.1, &s.2, &s.3),
            (&seen[0].1, &seen[0].2, &seen[0].3),
            "{} vs {}",
            s.0,
            seen[0].0
        );
    }
}
