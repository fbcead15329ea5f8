//! The command line: arguments (flags, then their environment variables), signals, exit codes.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use cluster::schema;

use crate::run;

pub const USAGE: &str = "usage: cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]
                   [--etcd-cafile FILE --etcd-certfile FILE --etcd-keyfile FILE]

The overlay's node agent: registers this host (its VTEP: the IPv4 address of IFACE, or its
IPv6 address when it has no IPv4 one) in etcd under <prefix>/hosts/<node>, programs on every
overlay network's VXLAN device of this host the FDB entry, neighbour and block routes of each
other host with blocks in that network (from <prefix>/hosts/, networks/ and blocks/), and
admits VXLAN only from registered hosts (sets vtep4/vtep6 of table inet cnirs). Foreground;
SIGTERM stops it.

  --etcd-endpoints  comma-separated http://host:port or https://host:port list (failover)
  --underlay        the interface whose address is this host's VTEP
  --node-name       default: $CNIRS_NODE_NAME, else the hostname; must be unique in the
                    cluster (a name registered by another VTEP stops the agent)
  --etcd-prefix     default /cnirs (the conflists' etcdPrefix)
  --etcd-cafile     CA that verifies the etcd members (required for https://);
                    default $CNIRS_ETCD_CAFILE
  --etcd-certfile   client certificate (etcd --client-cert-auth); default $CNIRS_ETCD_CERTFILE
  --etcd-keyfile    its private key; default $CNIRS_ETCD_KEYFILE

CNIRS_LOG=error|warn|info|debug sets the log level (default info).
Exit status: 0 on SIGTERM/SIGINT, 1 on failure (node name taken, etcd TLS refused, ...),
2 on a usage error.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub endpoints: Vec<String>,
    pub underlay: String,
    pub node: String,
    /// Where the node name came from: `--node-name`, `CNIRS_NODE_NAME` or `the hostname`.
    pub node_source: &'static str,
    pub prefix: String,
    /// TLS files from the flags or their environment variables (read at start).
    pub tls: etcd::TlsPaths,
}

/// `None` for `--help`. Defaults from the process environment.
pub fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    parse_args_env(args, &|k| std::env::var(k).ok())
}

/// [`parse_args`] with the environment injected (`CNIRS_NODE_NAME`, `CNIRS_ETCD_*FILE`).
pub fn parse_args_env(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Args>, String> {
    use etcd::TlsFile;
    let (mut endpoints, mut underlay, mut node, mut prefix) = (None, None, None, None);
    let mut files: [Option<String>; 3] = [None, None, None];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--etcd-endpoints" => endpoints = Some(value()?),
            "--underlay" => underlay = Some(value()?),
            "--node-name" => node = Some(value()?),
            "--etcd-prefix" => prefix = Some(value()?),
            "--etcd-cafile" => files[0] = Some(value()?),
            "--etcd-certfile" => files[1] = Some(value()?),
            "--etcd-keyfile" => files[2] = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut tls = etcd::TlsPaths::default();
    for (i, which) in [TlsFile::Ca, TlsFile::Cert, TlsFile::Key]
        .into_iter()
        .enumerate()
    {
        let v = files[i]
            .take()
            .or_else(|| env(which.env()))
            .filter(|v| !v.is_empty());
        let slot = match which {
            TlsFile::Ca => &mut tls.ca,
            TlsFile::Cert => &mut tls.cert,
            TlsFile::Key => &mut tls.key,
        };
        *slot = v.map(std::path::PathBuf::from);
    }
    let endpoints: Vec<String> = endpoints
        .ok_or("--etcd-endpoints is required")?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--etcd-endpoints is empty".into());
    }
    let underlay = underlay.ok_or("--underlay is required")?;
    netops::validate_ifname(&underlay).map_err(|e| format!("--underlay: {e}"))?;
    let (node, node_source) = match node {
        Some(n) => (n, "--node-name"),
        None => match env("CNIRS_NODE_NAME").filter(|n| !n.is_empty()) {
            Some(n) => (n, "CNIRS_NODE_NAME"),
            None => (schema::node().name, "the hostname"),
        },
    };
    if node.is_empty() || node.contains('/') {
        return Err(format!(
            "node name {node:?} (from {node_source}): empty or contains '/'"
        ));
    }
    let prefix = prefix.unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(format!("--etcd-prefix {prefix:?} does not start with /"));
    }
    Ok(Some(Args {
        endpoints,
        underlay,
        node,
        node_source,
        prefix: prefix.trim_end_matches('/').to_string(),
        tls,
    }))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signals() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(s, &sa) }.map_err(|e| format!("sigaction {s}: {e}"))?;
    }
    Ok(())
}

/// The command: parse, run until SIGTERM, exit code.
pub fn cli(args: &[String]) -> ExitCode {
    cni_core::logging::init("cnirs-agent");
    if std::env::var_os("CNIRS_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cnirs-agent: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_signals() {
        log::error!("{e}");
        return ExitCode::from(1);
    }
    match run(&args, &STOP) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
