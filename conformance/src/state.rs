//! Snapshots of a host netns (links, addresses, routes, nft ruleset, files) and their diff,
//! to prove that DEL leaves nothing behind.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::exec::run;
use crate::netns::{Netns, TestNet};

/// The addresses leased in an IPAM lease directory (host-local's layout, which etcd-ipam keeps
/// per host too): the names of its files that are addresses, sorted.
pub fn lease_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// One thing of a snapshot: its kind (`link`, `addr`, `route`, `nft`, `file`) and a
/// normalized one-line description.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub kind: &'static str,
    pub text: String,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:5} {}", self.kind, self.text)
    }
}

/// A snapshot of a netns plus some directories.
///
/// Normalization, so that a snapshot compares equal after ADD+DEL when everything was undone:
/// - `link`: `{ifname, kind, master, mtu}` (`ip -j -d link show`; no MAC, flags, counters);
/// - `addr`: `IFNAME ADDR/PREFIX` for non-link-local addresses (`ip -j addr show`);
/// - `route`: every route of every table except IPv6 link-local and multicast ones
///   (`ip -j -4|-6 route show table all`), as `{dst, gateway, dev, table, type, protocol,
///   prefsrc, metric}`;
/// - `nft`: every object of `nft -j list ruleset` (tables, chains, rules, sets with their
///   elements, maps...) without `handle` and with counters zeroed;
/// - `file`: `PREFIX/relative/path = content` for every file under the given dirs (dirs
///   themselves as `PREFIX/relative/dir/`).
#[derive(Clone, Debug, Default)]
pub struct HostState {
    pub items: BTreeSet<Item>,
    /// The raw `ip -j -d link show` output.
    pub links_raw: Value,
    /// The raw `nft -j list ruleset` output.
    pub nft_raw: Value,
}

impl HostState {
    /// Snapshot of `ns` plus files under each `(prefix, dir)`.
    #[track_caller]
    pub fn capture(ns: &Netns, dirs: &[(&str, &Path)]) -> Self {
        wait_retired_gone(ns);
        let mut items = BTreeSet::new();
        let links_raw = ns.ip_json(&["-d", "link", "show"]);
        for l in arr(&links_raw) {
            let mut o = Map::new();
            o.insert(
                "ifname".into(),
                l.get("ifname").cloned().unwrap_or(Value::Null),
            );
            let kind = l
                .pointer("/linkinfo/info_kind")
                .cloned()
                .unwrap_or(Value::Null);
            o.insert("kind".into(), kind);
            o.insert(
                "master".into(),
                l.get("master").cloned().unwrap_or(Value::Null),
            );
            o.insert("mtu".into(), l.get("mtu").cloned().unwrap_or(Value::Null));
            items.insert(Item {
                kind: "link",
                text: Value::Object(o).to_string(),
            });
        }
        for l in arr(&ns.ip_json(&["addr", "show"])) {
            let ifname = l.get("ifname").and_then(Value::as_str).unwrap_or("?");
            for a in arr(l.get("addr_info").unwrap_or(&Value::Null)) {
                if a.get("scope").and_then(Value::as_str) == Some("link") {
                    continue;
                }
                let local = a.get("local").and_then(Value::as_str).unwrap_or("?");
                let plen = a.get("prefixlen").and_then(Value::as_u64).unwrap_or(0);
                items.insert(Item {
                    kind: "addr",
                    text: format!("{ifname} {local}/{plen}"),
                });
            }
        }
        for fam in ["-4", "-6"] {
            for r in arr(&ns.ip_json(&[fam, "route", "show", "table", "all"])) {
                let dst = r.get("dst").and_then(Value::as_str).unwrap_or("");
                if dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                    continue;
                }
                let mut o = Map::new();
                for k in [
                    "dst", "gateway", "dev", "table", "type", "protocol", "prefsrc", "metric",
                ] {
                    if let Some(v) = r.get(k) {
                        o.insert(k.into(), v.clone());
                    }
                }
                items.insert(Item {
                    kind: "route",
                    text: Value::Object(o).to_string(),
                });
            }
        }
        // Policy rules other than the kernel's defaults (the internal-bridge seal).
        for fam in ["-4", "-6"] {
            for r in arr(&ns.ip_json(&[fam, "rule", "show"])) {
                let prio = r.get("priority").and_then(Value::as_u64).unwrap_or(0);
                if [0, 32766, 32767].contains(&prio) {
                    continue;
                }
                items.insert(Item {
                    kind: "rule",
                    text: format!("{fam} {r}"),
                });
            }
        }
        let nft = run(ns.command("nft").args(["-j", "list", "ruleset"]));
        nft.assert_ok();
        let nft_raw = nft.json().clone();
        for obj in arr(nft_raw.get("nftables").unwrap_or(&Value::Null)) {
            if obj.get("metainfo").is_some() {
                continue;
            }
            let mut obj = obj.clone();
            scrub_nft(&mut obj);
            items.insert(Item {
                kind: "nft",
                text: obj.to_string(),
            });
        }
        for (prefix, dir) in dirs {
            walk(dir, dir, prefix, &mut items);
        }
        Self {
            items,
            links_raw,
            nft_raw,
        }
    }

    /// Snapshot of `net`'s host netns plus its dataDir (`data/`), run dir (`run/`) and
    /// cnitool cache dir (`cache/`).
    #[track_caller]
    pub fn of(net: &TestNet) -> Self {
        let (d, r, c) = (net.data_dir(), net.run_dir(), net.cache_dir());
        Self::capture(net.host(), &[("data", &d), ("run", &r), ("cache", &c)])
    }

    /// What changed from `self` (before) to `after`.
    pub fn diff(&self, after: &HostState) -> StateDiff {
        StateDiff {
            added: after.items.difference(&self.items).cloned().collect(),
            removed: self.items.difference(&after.items).cloned().collect(),
        }
    }

    /// Items of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.items.iter().filter(move |i| i.kind == kind)
    }
}

/// The difference between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    pub added: Vec<Item>,
    pub removed: Vec<Item>,
}

impl StateDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// The diff without the items for which `ignore` is true (known, accepted leftovers).
    pub fn without(mut self, ignore: impl Fn(&Item) -> bool) -> Self {
        self.added.retain(|i| !ignore(i));
        self.removed.retain(|i| !ignore(i));
        self
    }

    /// Panics with the whole diff unless it is empty.
    #[track_caller]
    pub fn assert_empty(&self, what: &str) {
        assert!(self.is_empty(), "{what}: host state changed:\n{self}");
    }
}

impl fmt::Display for StateDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.added {
            writeln!(f, "+ {i}")?;
        }
        for i in &self.removed {
            writeln!(f, "- {i}")?;
        }
        Ok(())
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Drops `handle` keys and zeroes `packets`/`bytes` counters, recursively.
fn scrub_nft(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            for (k, val) in m.iter_mut() {
                if (k == "packets" || k == "bytes") && val.is_number() {
                    *val = Value::from(0);
                } else {
                    scrub_nft(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub_nft),
        _ => {}
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, items: &mut BTreeSet<Item>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if path.is_dir() {
            items.insert(Item {
                kind: "file",
                text: format!("{prefix}/{rel}/"),
            });
            walk(root, &path, prefix, items);
        } else {
            let content = std::fs::read(&path).unwrap_or_default();
            let content = String::from_utf8_lossy(&content);
            let content = content.trim_end();
            items.insert(Item {
                kind: "file",
                text: format!("{prefix}/{rel} = {content}"),
            });
        }
    }
}

/// What legitimately stays after the last pod of the `bridges`' networks is gone: the bridges,
/// their addresses and routes, the firewall tables' skeleton (sets and maps without elements),
/// bookkeeping files with no owner in them (host-local's `lock` and `last_reserved_ip.N`,
/// nftplan's `lock`, directories such as libcni's `cache/results/`). Leases, firewall
/// elements, cached results and state records are not.
pub fn legit_leftover<'b>(bridges: &'b [&'b str]) -> impl Fn(&Item) -> bool + 'b {
    move |i: &Item| match i.kind {
        "link" => bridges
            .iter()
            .any(|b| i.text.contains(&format!("\"ifname\":\"{b}\""))),
        "addr" => bridges.iter().any(|b| i.text.starts_with(&format!("{b} "))),
        "route" => bridges
            .iter()
            .any(|b| i.text.contains(&format!("\"dev\":\"{b}\""))),
        "nft" => serde_json::from_str::<serde_json::Value>(&i.text).is_ok_and(|v| {
            let set = v.get("set").or_else(|| v.get("map"));
            set.is_none_or(|s| s.get("elem").is_none())
        }),
        "file" => {
            let name = i.text.rsplit('/').next().unwrap_or_default();
            // table.json: which `inet cnirs` the state last filled; the skeleton stays too.
            i.text.ends_with('/')
                || name == "lock = "
                || name.starts_with("table.json = ")
                || name.starts_with("last_reserved_ip.")
        }
        _ => false,
    }
}

/// Wait (up to 60 s) until the links a bridge DEL retired (`cnirsx…`, deleted by a detached
/// process after DEL answered) are gone, so a snapshot sees the settled kernel. Links still
/// there afterwards stay in the snapshot (and show as a leak in a diff).
pub fn wait_retired_gone(ns: &Netns) {
    ns.link_names();
}

/// The retired links (`cnirsx…`) in `ns`, as `ip -j link show` objects.
pub fn retired_links(ns: &Netns) -> Vec<Value> {
    arr(&ns.ip_json(&["-d", "link", "show"]))
        .iter()
        .filter(|l| {
            l.get("ifname")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("cnirsx"))
        })
        .cloned()
        .collect()
}

/// The detached processes of a DEL (`netbase::detach`) held still by the `CNIRS_RETIRE_STALL`
/// test hook: every plugin of the chain that parked work appends its detached process's pid to
/// [`StalledDeleter::file`] before it exits, and that process waits instead of working.
/// SIGKILLed on drop.
pub struct StalledDeleter {
    pub file: std::path::PathBuf,
    pids: Vec<i32>,
}

impl StalledDeleter {
    pub fn new(net: &TestNet, tag: &str) -> Self {
        Self {
            file: net.tmp().join(format!("retire-stall-{tag}")),
            pids: Vec::new(),
        }
    }

    /// The pids written so far (each plugin writes its line before it exits, so after the
    /// DEL answered they are all there).
    pub fn pids(&mut self) -> Vec<i32> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        for p in text.lines().filter_map(|l| l.trim().parse().ok()) {
            if !self.pids.contains(&p) {
                self.pids.push(p);
            }
        }
        self.pids.clone()
    }

    /// The first detached process's pid; panics when none was written (a DEL that answered
    /// wrote it already).
    #[track_caller]
    pub fn pid(&mut self) -> i32 {
        match self.pids().first() {
            Some(&p) => p,
            None => panic!("no detached process wrote {}", self.file.display()),
        }
    }

    /// SIGKILL every stalled process and reap nothing (they are not our children); true if
    /// all of them were alive until then.
    pub fn kill(&mut self) -> bool {
        let pids = self.pids();
        let _ = std::fs::remove_file(&self.file);
        self.pids.clear();
        let mut alive = !pids.is_empty();
        for p in pids {
            alive &= std::path::Path::new(&format!("/proc/{p}")).exists();
            run(std::process::Command::new("kill").args(["-KILL", &p.to_string()]));
        }
        alive
    }
}

impl Drop for StalledDeleter {
    fn drop(&mut self) {
        self.kill();
    }
}
