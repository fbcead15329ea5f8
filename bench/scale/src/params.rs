//! The run's knobs, from the environment (bench/scale.sh sets them from N, P, CHURN, ...).

use std::{path::PathBuf, time::Duration};

#[derive(Debug, Clone)]
pub struct Params {
    /// Hosts in the cluster, the real one included.
    pub hosts: usize,
    /// Pods per simulated host.
    pub pods_per_host: usize,
    /// Pods replaced per second during the churn (each: DEL of a host's oldest pod, ADD of a
    /// new one on the same host).
    pub churn_per_s: f64,
    pub churn: Duration,
    /// Parallel ADDs during the fill (and churn workers).
    pub workers: usize,
    /// The fill stops here even if it is not complete (the run still measures the churn).
    pub fill_budget: Duration,
    /// The whole run (registration, fill, churn, measures) aims to end within this.
    pub budget: Duration,
    /// ...or when this process grows past this many MiB.
    pub max_rss_mib: f64,
    pub endpoints: Vec<String>,
    /// The real host: its agent's PID and netns, and how many real pods it runs.
    pub real_pid: Option<u32>,
    pub real_netns: Option<String>,
    pub real_pods: usize,
    pub etcd_pids: Vec<u32>,
    pub out: PathBuf,
    pub subnet: String,
    pub vni: u32,
    pub network: String,
}

fn env<T: std::str::FromStr>(key: &str, default: T) -> Result<T, String> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{key}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn list(key: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Params {
    pub fn from_env() -> Result<Self, String> {
        let endpoints = list("SCALE_ETCD");
        if endpoints.is_empty() {
            return Err("SCALE_ETCD (comma-separated etcd client URLs) is required".into());
        }
        let real_pid = match env("SCALE_REAL_AGENT_PID", 0u32)? {
            0 => None,
            p => Some(p),
        };
        let p = Params {
            hosts: env("SCALE_N", 1000usize)?,
            pods_per_host: env("SCALE_P", 110usize)?,
            churn_per_s: env("SCALE_CHURN", 100.0f64)?,
            churn: Duration::from_secs_f64(env("SCALE_CHURN_S", 60.0f64)?),
            workers: env("SCALE_WORKERS", 16usize)?.max(1),
            fill_budget: Duration::from_secs_f64(env("SCALE_FILL_BUDGET_S", 540.0f64)?),
            budget: Duration::from_secs_f64(env("SCALE_BUDGET_S", 780.0f64)?),
            max_rss_mib: env("SCALE_MAX_RSS_MIB", 8192.0f64)?,
            endpoints,
            real_pid,
            real_netns: std::env::var("SCALE_REAL_NETNS")
                .ok()
                .filter(|s| !s.is_empty()),
            real_pods: env("SCALE_REAL_PODS", 0usize)?,
            etcd_pids: list("SCALE_ETCD_PIDS")
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            out: PathBuf::from(env("SCALE_OUT", "target/bench/scale.json".to_string())?),
            subnet: env("SCALE_SUBNET", "10.64.0.0/12".to_string())?,
            vni: env("SCALE_VNI", 4242u32)?,
            network: env("SCALE_NETWORK", "scale".to_string())?,
        };
        if p.hosts < 2 {
            return Err("SCALE_N must be at least 2".into());
        }
        Ok(p)
    }

    /// Simulated hosts: all but the real one.
    pub fn sims(&self) -> usize {
        if self.real_pid.is_some() {
            self.hosts - 1
        } else {
            self.hosts
        }
    }

    /// The overlay conflist's plugin config every simulated host uses (the real host's is the
    /// same, written by the script).
    pub fn conf(&self) -> Vec<u8> {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "overlay",
            "vni": self.vni,
            "underlay": "ul0",
            "ipam": {
                "type": "etcd-ipam",
                "etcdEndpoints": self.endpoints,
                "ranges": [[{"subnet": self.subnet}]],
            },
        })
        .to_string()
        .into_bytes()
    }
}
