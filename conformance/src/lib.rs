//! Test harness: throw-away network namespaces and helpers that drive the built plugins.
//!
//! Every kernel test makes a [`TestNet`]: a private "host" netns (`cnirs-t<pid>-<n>-host`)
//! where the plugins run, pods beside it ([`TestNet::pod`]), optionally an "outside" netns
//! standing in for the internet ([`TestNet::outside`]), and temp dirs for the IPAM dataDir,
//! `CNIRS_RUN_DIR` and libcni's cache. Dropping it deletes all of that.
//!
//! ```no_run
//! use conformance::*;
//! use serde_json::json;
//!
//! let net = TestNet::new();
//! let (a, b) = (net.pod("a"), net.pod("b"));
//! let conf = json!({"cniVersion": "1.0.0", "name": "t", "plugins": [{
//!     "type": "bridge", "bridge": "br0", "isGateway": true,
//!     "ipam": {"type": "host-local", "dataDir": net.data_dir(),
//!              "ranges": [[{"subnet": "10.213.1.0/24"}]]}}]});
//! let tool = net.cnitool(&conf).reference();
//! let ra = tool.add(&a).assert_ok().json().clone();
//! tool.add(&b).assert_ok();
//! let ip_a = ra["ips"][0]["address"].as_str().unwrap();
//! assert!(can_ping(&b, ip_a));
//! ```
//!
//! Kernel tests are `#[ignore]`d (so `make unit` runs without root) and run with
//! `cargo test -p conformance -- --ignored` as root; they fail loudly, never skip, when not
//! root or when a tool is missing.

pub mod capture;
pub mod cni;
pub mod cri;
pub mod etcd;
pub mod exec;
pub mod iperf;
pub mod mountns;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod state;
pub mod traffic;

pub use cni::{
    cni_env, cni_path, cnitool_path, join_path, plugin_bin, reference_cni_path,
    reference_plugin_bin, workspace_root, Cnitool, REFERENCE_CNI_PATH,
};
pub use exec::{command, eventually, have_tool, poll_until, run, run_ok, run_with, CmdOutput};
pub use iperf::{iperf3_receive, Iperf3Server, Rates};
pub use mountns::MountNs;
pub use netns::{
    in_netns, listed_netns, outside_addrs, process_prefix, Netns, Outside, TestNet, NAME_PREFIX,
};
pub use nft::nft_elems;
pub use state::{
    lease_files, legit_leftover, retired_links, wait_retired_gone, HostState, Item, StalledDeleter,
    StateDiff,
};
pub use traffic::{
    can_connect_tcp, can_ping, can_ping_eventually, first_ip, http_get, ip_of, ping, reaches,
    tcp_request, udp_echoes, HttpServer, TcpServer, UdpEcho,
};

/// The busybox used for ping (static build from busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Panics unless the process runs as root (kernel tests must fail, not skip, without it).
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "conformance kernel tests need root (euid is {euid}): run them as root, e.g. \
         `sudo make conformance` or `sudo -E cargo test -p conformance -- --ignored`"
    );
}

/// Panics, naming the missing ones, unless every tool is installed.
#[track_caller]
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_tool(t)).collect();
    assert!(
        missing.is_empty(),
        "conformance kernel tests need {missing:?}: install them (see .ci/run: iproute2, \
         nftables, busybox-static, ...)"
    );
}
