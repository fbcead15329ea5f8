//! Throw-away network namespaces: the test's "host", its pods and its "outside".

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use crate::exec::{command, run, run_ok, CmdOutput};

/// Every name this harness creates starts with this (plus the process id).
pub const NAME_PREFIX: &str = "cnirs-t";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `cnirs-t<pid>-`: the prefix of every netns this test process creates.
pub fn process_prefix() -> String {
    format!("{NAME_PREFIX}{}-", std::process::id())
}

/// A named network namespace (`/run/netns/NAME`). Cloning does not copy the namespace: the
/// owner ([`TestNet`]) deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn named(name: String) -> Self {
        let path = PathBuf::from(format!("/run/netns/{name}"));
        Self { name, path }
    }

    /// `ip netns add NAME` (panics if it fails).
    #[track_caller]
    fn create(name: String) -> Self {
        run_ok("ip", &["netns", "add", &name]);
        Self::named(name)
    }

    /// A namespace someone else made and owns, by path (a CRI pod's `/proc/PID/ns/net`): for
    /// the helpers that enter it ([`Netns::run_in`], [`crate::TcpServer`],
    /// [`crate::tcp_request`]); `command`, `exec` and `ip` need a named netns.
    pub fn foreign(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            name: path.display().to_string(),
            path,
        }
    }

    /// The name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME` (what CNI_NETNS gets).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a `&str` (for env and argv).
    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }

    /// A command that runs `program` inside this netns: `ip netns exec NAME program`, with a
    /// cleared environment (see [`command`]); add args, env and run it with
    /// [`crate::exec::run`] / [`crate::exec::run_with`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `ip netns exec NAME program args...`; returns whatever happened.
    pub fn exec(&self, program: &str, args: &[&str]) -> CmdOutput {
        run(self.command(program).args(args))
    }

    /// `ip netns exec NAME program args...`; panics with the output unless it succeeds.
    #[track_caller]
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> CmdOutput {
        let out = self.exec(program, args);
        out.assert_ok();
        out
    }

    /// `ip -n NAME args...`; panics with the output unless it succeeds.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> CmdOutput {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// The kernel-level seal of an internal bridge as `ip -4/-6 rule` shows it: every rule with
    /// `iif BRIDGE`, or whose destination is one of `dsts` (network addresses), as
    /// "`-4|-6` JSON".
    #[track_caller]
    pub fn seal_rules(&self, bridge: &str, dsts: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            if let Value::Array(rules) = self.ip_json(&[fam, "rule", "show"]) {
                for r in rules {
                    let dst = r["dst"].as_str().unwrap_or_default();
                    if r["iif"] == bridge || dsts.contains(&dst) {
                        out.push(format!("{fam} {r}"));
                    }
                }
            }
        }
        out
    }

    /// `ip -n NAME -j args...` parsed (e.g. `&["-d", "link", "show"]`).
    #[track_caller]
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = run_ok("ip", &full);
        // `ip -j` prints nothing at all for an empty list in some subcommands.
        if out.stdout.trim().is_empty() {
            return Value::Array(vec![]);
        }
        out.json().clone()
    }

    /// Names of all links (`ip -n NAME -j link show`), once the links a bridge DEL retired
    /// (`cnirsx…`, deleted by its detached process) are gone (waits up to 60 s: a busy kernel
    /// can hold a veth delete that long; any still
    /// there are listed).
    #[track_caller]
    pub fn link_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..3000 {
            names = json_array(&self.ip_json(&["link", "show"]))
                .iter()
                .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
                .collect();
            if !names.iter().any(|n| n.starts_with("cnirsx")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        names
    }

    /// `ip -n NAME -j -d link show dev IFNAME`, `None` if there is no such link.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        let out =
            run(command("ip").args(["-n", &self.name, "-j", "-d", "link", "show", "dev", ifname]));
        if !out.success() {
            return None;
        }
        json_array(out.json.as_ref()?).first().cloned()
    }

    /// Global-scope addresses of `ifname` as `ADDR/PREFIX` strings.
    #[track_caller]
    pub fn addrs(&self, ifname: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", ifname]);
        json_array(&v)
            .iter()
            .flat_map(|l| json_array(l.get("addr_info").unwrap_or(&Value::Null)))
            .filter(|a| a.get("scope").and_then(Value::as_str) == Some("global"))
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a.get("local")?.as_str()?,
                    a.get("prefixlen")?.as_u64()?
                ))
            })
            .collect()
    }

    /// Routes of the main table for one family (`ip -n NAME -j -4|-6 route show`).
    #[track_caller]
    pub fn routes(&self, v6: bool) -> Vec<Value> {
        json_array(&self.ip_json(&[if v6 { "-6" } else { "-4" }, "route", "show"])).to_vec()
    }

    /// Writes a sysctl inside the netns: `ip netns exec NAME sh -c 'echo V > /proc/sys/KEY'`
    /// (`key` in dotted form, e.g. `net.ipv4.ip_forward`).
    #[track_caller]
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_ok("sh", &["-c", &format!("echo {value} > {path}")]);
    }

    /// Reads a sysctl inside the netns (`ip netns exec NAME cat /proc/sys/KEY`).
    #[track_caller]
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_ok("cat", &[&path]).stdout.trim().to_owned()
    }

    /// Runs `f` on a fresh thread that entered this netns (`setns(CLONE_NEWNET)`); sockets
    /// made there stay in this netns for their whole life.
    pub fn run_in<T, F>(&self, f: F) -> std::io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        in_netns(&self.path, f)
    }
}

/// Runs `f` on a new thread inside the netns at `path`; the calling thread never moves.
pub fn in_netns<T, F>(path: &Path, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(path)?;
    let handle = std::thread::spawn(move || -> std::io::Result<T> {
        // SAFETY: setns(2) on a valid open fd (file lives until the end of this closure); it
        // only changes the network namespace of this short-lived thread, which exits after f.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn json_array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Addresses of the link between the host netns and the outside netns (see [`TestNet::outside`]).
pub mod outside_addrs {
    use super::*;
    /// Host side of the /30 link (`cnirs-wan` in the host netns).
    pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// Outside side of the /30 link (`cnirs-isp` in the outside netns); the host's default gateway.
    pub const LINK_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// A "server on the internet": on lo of the outside netns, reached through the host.
    pub const FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// Host side of the IPv6 link (fd00:213::/64).
    pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 1);
    /// Outside side of the IPv6 link; the host's IPv6 default gateway.
    pub const LINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 2);
    /// IPv6 "server on the internet" (on lo of the outside netns).
    pub const FAR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x213, 0, 0, 0, 0, 1);
    /// Interface names on either end of the link.
    pub const HOST_IF: &str = "cnirs-wan";
    pub const OUTSIDE_IF: &str = "cnirs-isp";
}

/// The stand-in for the internet: a netns routed from the host netns by a veth.
#[derive(Clone, Debug)]
pub struct Outside {
    pub ns: Netns,
    /// The address on the outside end of the link (the host's default gateway).
    pub link_v4: Ipv4Addr,
    pub link_v6: Ipv6Addr,
    /// An address on lo of the outside netns, one routed hop beyond the link.
    pub far_v4: Ipv4Addr,
    pub far_v6: Ipv6Addr,
    /// The host end of the link (what masqueraded traffic comes from).
    pub host_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
}

impl Outside {
    /// Deletes the outside netns's default routes back to the host, so that only traffic
    /// masqueraded to the host's own address (192.0.2.1) gets answers:
    /// `ip -n OUT route del default; ip -n OUT -6 route del default`.
    #[track_caller]
    pub fn remove_return_routes(&self) {
        self.ns.ip(&["route", "del", "default"]);
        self.ns.ip(&["-6", "route", "del", "default"]);
    }

    /// The far addresses, v4 then v6, as [`IpAddr`].
    pub fn far(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.far_v4), IpAddr::V6(self.far_v6)]
    }
}

/// One test's private world: a "host" netns (where plugins run), pods beside it, an optional
/// "outside" netns, and temp dirs (IPAM dataDir, CNIRS_RUN_DIR, libcni cache dir, NETCONFPATH
/// dirs). Dropping it deletes every netns and dir it made, best effort, never panicking.
pub struct TestNet {
    id: String,
    host: Netns,
    extra: Mutex<Vec<Netns>>,
    tmp: tempfile::TempDir,
}

impl TestNet {
    /// Creates `cnirs-t<pid>-<n>-host` with lo up, `net.ipv4.ip_forward=1` and
    /// `net.ipv6.conf.all.forwarding=1` inside it. Panics (loudly) when not root or when a
    /// needed tool (ip, nft, busybox) is missing.
    #[track_caller]
    pub fn new() -> Self {
        crate::require_root();
        crate::require_tools(&["ip", "nft", crate::BUSYBOX]);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", process_prefix());
        let tmp = match tempfile::Builder::new().prefix(&format!("{id}-")).tempdir() {
            Ok(t) => t,
            Err(e) => panic!("cannot create temp dir: {e}"),
        };
        for sub in ["data", "run", "cache", "netconf"] {
            if let Err(e) = std::fs::create_dir(tmp.path().join(sub)) {
                panic!("cannot create {}/{sub}: {e}", tmp.path().display());
            }
        }
        let host = Netns::create(format!("{id}-host"));
        // From here on, Drop cleans up if a step below panics.
        let net = Self {
            id,
            host,
            extra: Mutex::new(Vec::new()),
            tmp,
        };
        net.host.ip(&["link", "set", "lo", "up"]);
        net.host.set_sysctl("net.ipv4.ip_forward", "1");
        net.host.set_sysctl("net.ipv6.conf.all.forwarding", "1");
        net
    }

    /// `cnirs-t<pid>-<n>`: the prefix of every netns of this TestNet.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host netns (where plugins and cnitool run).
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// Creates the pod netns `cnirs-t<pid>-<n>-NAME` (path `/run/netns/...`) with lo up.
    #[track_caller]
    pub fn pod(&self, name: &str) -> Netns {
        let ns = Netns::create(format!("{}-{name}", self.id));
        self.remember(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn remember(&self, ns: Netns) {
        match self.extra.lock() {
            Ok(mut v) => v.push(ns),
            Err(poisoned) => poisoned.into_inner().push(ns),
        }
    }

    /// Creates the "outside" netns (`...-outside`) and links it to the host netns:
    /// `cnirs-wan` 192.0.2.1/30 + fd00:213::1/64 in the host, `cnirs-isp` 192.0.2.2/30 +
    /// fd00:213::2/64 outside, 198.51.100.1/32 + 2001:db8:213::1/128 on the outside's lo;
    /// the host's default routes point at the outside, and the outside routes everything
    /// back to the host (see [`Outside::remove_return_routes`]). Call it once per TestNet.
    #[track_caller]
    pub fn outside(&self) -> Outside {
        use outside_addrs::*;
        let ns = Netns::create(format!("{}-outside", self.id));
        self.remember(ns.clone());
        let h = &self.host;
        ns.ip(&["link", "set", "lo", "up"]);
        h.ip(&[
            "link",
            "add",
            HOST_IF,
            "type",
            "veth",
            "peer",
            "name",
            OUTSIDE_IF,
            "netns",
            ns.name(),
        ]);
        h.ip(&["addr", "add", &format!("{HOST_V4}/30"), "dev", HOST_IF]);
        h.ip(&[
            "addr",
            "add",
            &format!("{HOST_V6}/64"),
            "dev",
            HOST_IF,
            "nodad",
        ]);
        h.ip(&["link", "set", HOST_IF, "up"]);
        ns.ip(&["addr", "add", &format!("{LINK_V4}/30"), "dev", OUTSIDE_IF]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{LINK_V6}/64"),
            "dev",
            OUTSIDE_IF,
            "nodad",
        ]);
        ns.ip(&["addr", "add", &format!("{FAR_V4}/32"), "dev", "lo"]);
        ns.ip(&["addr", "add", &format!("{FAR_V6}/128"), "dev", "lo"]);
        ns.ip(&["link", "set", OUTSIDE_IF, "up"]);
        h.ip(&["route", "add", "default", "via", &LINK_V4.to_string()]);
        h.ip(&["-6", "route", "add", "default", "via", &LINK_V6.to_string()]);
        ns.ip(&["route", "add", "default", "via", &HOST_V4.to_string()]);
        ns.ip(&["-6", "route", "add", "default", "via", &HOST_V6.to_string()]);
        // IPv6 over a fresh veth: packets wait ~1 s before the neighbour resolves (measured on
        // kernel 6.18 with busybox and iputils ping, with or without DAD, forwarding on or
        // off, operstate already UP), so a 1 s ping fails once. Wait until the link answers.
        let v6 = LINK_V6.to_string();
        assert!(
            crate::traffic::can_ping_eventually(h, &v6, 5),
            "outside link {HOST_IF} -> {v6} never answered"
        );
        Outside {
            ns,
            link_v4: LINK_V4,
            link_v6: LINK_V6,
            far_v4: FAR_V4,
            far_v6: FAR_V6,
            host_v4: HOST_V4,
            host_v6: HOST_V6,
        }
    }

    /// Root of this test's temp dir.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// A temp dir to give host-local as `dataDir` (empty at start).
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The temp dir passed to plugins as `CNIRS_RUN_DIR`.
    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// libcni's cache dir for cnitool (`CNI_CACHE_DIR`); results land in `results/`.
    pub fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// Netns names of this TestNet still listed by `ip netns list`.
    pub fn listed_netns(&self) -> Vec<String> {
        listed_netns(&format!("{}-", self.id))
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let extra = match self.extra.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for ns in extra.iter().rev().chain(std::iter::once(&self.host)) {
            let out = run(command("ip").args(["netns", "del", ns.name()]));
            if !out.success() {
                eprintln!(
                    "conformance: cleanup: `ip netns del {}` failed: {}",
                    ns.name(),
                    out.stderr.trim()
                );
            }
        }
        // The temp dir is removed by TempDir's own Drop (errors ignored there).
    }
}

/// Names in `ip netns list` that start with `prefix`.
pub fn listed_netns(prefix: &str) -> Vec<String> {
    let out = run(command("ip").args(["netns", "list"]));
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}
