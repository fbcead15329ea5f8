//! What the harness reads from outside itself: a process's CPU and memory (/proc), etcd's
//! counters (`/metrics` of each member), and the entries our agent keeps in the real host's
//! kernel (`bridge`/`ip` in that netns, read once at the end).

use std::{collections::BTreeMap, process::Command, time::Instant};

use serde_json::Value;

/// CPU seconds (user + system) a process has used so far; None when it is gone.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU share of a process over a window: start with [`CpuMeter::start`], read with `pct`.
pub struct CpuMeter {
    pid: u32,
    t0: Instant,
    c0: f64,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Option<Self> {
        Some(CpuMeter {
            pid,
            t0: Instant::now(),
            c0: cpu_s(pid)?,
        })
    }

    /// Percent of one core since the start.
    pub fn pct(&self) -> Option<f64> {
        let dt = self.t0.elapsed().as_secs_f64();
        Some((cpu_s(self.pid)? - self.c0) / dt.max(1e-3) * 100.0)
    }
}

/// One member's Prometheus counters we use, by metric name (labels dropped, values summed).
pub fn etcd_metrics(endpoint: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let url = format!("{endpoint}/metrics");
    let Ok(mut resp) = ureq::get(&url).call() else {
        return out;
    };
    let Ok(text) = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
    else {
        return out;
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// Writes committed through raft (puts, deletes, txns, lease grants/revokes): the same on
/// every member; the largest answer wins (a member may lag).
pub fn proposals_committed(endpoints: &[String]) -> f64 {
    endpoints
        .iter()
        .filter_map(|e| {
            etcd_metrics(e)
                .get("etcd_server_proposals_committed_total")
                .copied()
        })
        .fold(0.0, f64::max)
}

/// The largest member's backend database, MiB.
pub fn db_mib(endpoints: &[String]) -> f64 {
    endpoints
        .iter()
        .filter_map(|e| {
            etcd_metrics(e)
                .get("etcd_mvcc_db_total_size_in_bytes")
                .copied()
        })
        .fold(0.0, f64::max)
        / (1024.0 * 1024.0)
}

fn json_of(args: &[&str]) -> Vec<Value> {
    let out = match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            log::warn!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
            return Vec::new();
        }
        Err(e) => {
            log::warn!("{args:?}: {e}");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<Value>(&out) {
        Ok(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Entries on the real host that our agent keeps, on the overlay's VXLAN devices: FDB entries
/// naming a remote VTEP (all-zero flood entries counted apart: the routed design has none),
/// permanent neighbours and routes through those devices, in every table.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelEntries {
    pub fdb: usize,
    pub fdb_flood: usize,
    pub neigh: usize,
    pub routes: usize,
}

impl KernelEntries {
    pub fn total(&self) -> usize {
        self.fdb + self.neigh + self.routes
    }
}

pub fn kernel_entries(netns: &str) -> KernelEntries {
    let ours = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .is_some_and(|d| cluster::vni_of_name(d).is_some())
    };
    let mut k = KernelEntries::default();
    for e in json_of(&["bridge", "-n", netns, "-j", "fdb", "show"]) {
        if !ours(&e, "ifname") || e.get("dst").is_none() {
            continue;
        }
        k.fdb += 1;
        if e.get("mac").and_then(Value::as_str) == Some("00:00:00:00:00:00") {
            k.fdb_flood += 1;
        }
    }
    for fam in ["-4", "-6"] {
        // Permanent neighbours only (the kernel's own resolutions come and go), and routes
        // someone added (not the kernel's link-local, multicast and local ones).
        k.neigh += json_of(&["ip", "-n", netns, fam, "-j", "neigh", "show"])
            .iter()
            .filter(|e| ours(e, "dev"))
            .filter(|e| e["state"].to_string().contains("PERMANENT"))
            .count();
        k.routes += json_of(&[
            "ip", "-n", netns, fam, "-j", "route", "show", "table", "all",
        ])
        .iter()
        .filter(|e| ours(e, "dev"))
        .filter(|e| e.get("protocol").and_then(Value::as_str) != Some("kernel"))
        .filter(|e| e.get("table").and_then(Value::as_str) != Some("local"))
        .count();
    }
    k
}
