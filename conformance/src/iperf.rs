//! iperf3 between namespaces, for shaping tests: a one-off server in one netns (stopped by PID
//! when dropped) and a client that receives (`-R`), so every rate is measured where the
//! traffic arrives, second by second (the sender's own count includes what its socket buffer
//! swallowed and overstates the first second).

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::exec::{run_with, CmdOutput};
use crate::netns::Netns;

/// An `iperf3 -s -1` in a netns; killed (by its PID) and reaped when dropped.
pub struct Iperf3Server {
    child: Child,
    port: u16,
}

impl Iperf3Server {
    /// `ip netns exec NS iperf3 -s -1 -p PORT` (`ip netns exec` execs iperf3 in place, so the
    /// child's PID is the server's).
    #[track_caller]
    pub fn start(ns: &Netns, port: u16) -> Self {
        crate::require_tools(&["iperf3"]);
        let mut cmd = ns.command("iperf3");
        cmd.args(["-s", "-1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("starting iperf3 in {}: {e}", ns.name()),
        };
        Self { child, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client run measured at the receiver: bits per second, one value per second.
#[derive(Debug, Clone)]
pub struct Rates {
    pub per_second: Vec<f64>,
}

impl Rates {
    /// The first second.
    pub fn first(&self) -> f64 {
        self.per_second.first().copied().unwrap_or(0.0)
    }

    /// The mean of every second after the first.
    pub fn after_first(&self) -> f64 {
        let rest = &self.per_second[1.min(self.per_second.len())..];
        if rest.is_empty() {
            return 0.0;
        }
        rest.iter().sum::<f64>() / rest.len() as f64
    }
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self
            .per_second
            .iter()
            .map(|r| format!("{:.1}", r / 1e6))
            .collect();
        write!(f, "[{}] Mbit/s", v.join(", "))
    }
}

fn parse_rates(out: &CmdOutput) -> Option<Rates> {
    let v: &Value = out.json.as_ref()?;
    let per_second = v["intervals"]
        .as_array()?
        .iter()
        .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
        .collect::<Vec<_>>();
    (!per_second.is_empty()).then_some(Rates { per_second })
}

/// Runs `iperf3 -c ADDR -p PORT -R -J -t SECS -i 1 [-B BIND]` in `client` (the server sends,
/// the client receives) and returns what arrived each second. Retries the connection for a
/// few seconds while the server starts.
#[track_caller]
pub fn iperf3_receive(
    client: &Netns,
    server_addr: &str,
    port: u16,
    secs: u32,
    bind: Option<&str>,
) -> Rates {
    let mut last = None;
    for _ in 0..50 {
        let mut cmd = client.command("iperf3");
        cmd.args([
            "-c",
            server_addr,
            "-p",
            &port.to_string(),
            "-R",
            "-J",
            "-t",
            &secs.to_string(),
            "-i",
            "1",
        ]);
        if let Some(b) = bind {
            cmd.args(["-B", b]);
        }
        let out = run_with(&mut cmd, b"", Duration::from_secs(u64::from(secs) + 30));
        if out.success() {
            if let Some(r) = parse_rates(&out) {
                return r;
            }
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(100));
    }
    match last {
        Some(out) => panic!("iperf3 never measured {server_addr}:{port}:\n{out}"),
        None => panic!("iperf3 never ran"),
    }
}
