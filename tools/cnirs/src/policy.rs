//! `cnirs policy apply|delete -f FILE`, `cnirs policy ls`: Kubernetes NetworkPolicy on this
//! host (see docs/netpol.md). Objects are validated as the API server does (a file with one
//! invalid object changes nothing) and take effect at once: one nftables transaction. With
//! `--etcd-endpoints` the objects are the cluster's, in etcd: written in one transaction,
//! enforced by each host's `cnirs agent` ([`run_beside_agent`]).

use std::{io::Read, process::ExitCode, sync::Arc};

use netpol::{cluster::EtcdSource, parse, store, PolicyError, Store};

/// Where the objects live: etcd when endpoints are given (flags, else `CNIRS_ETCD_*`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdFlags {
    /// The cluster's objects in etcd: endpoints, http(s)://host:port, comma-separated;
    /// default $CNIRS_ETCD_ENDPOINTS. Without: this host's objects
    #[arg(long, global = true, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA that verifies the etcd members; default $CNIRS_ETCD_CAFILE
    #[arg(long, global = true)]
    pub etcd_cafile: Option<String>,
    /// Client certificate; default $CNIRS_ETCD_CERTFILE
    #[arg(long, global = true)]
    pub etcd_certfile: Option<String>,
    /// Its private key; default $CNIRS_ETCD_KEYFILE
    #[arg(long, global = true)]
    pub etcd_keyfile: Option<String>,
    /// Default $CNIRS_ETCD_PREFIX, else /cnirs (the conflists' etcdPrefix)
    #[arg(long, global = true)]
    pub etcd_prefix: Option<String>,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// This host's store, or the cluster's (nothing contacted yet).
fn open(f: &EtcdFlags) -> Result<Store, String> {
    let endpoints: Vec<String> = if f.etcd_endpoints.is_empty() {
        env("CNIRS_ETCD_ENDPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    } else {
        f.etcd_endpoints.clone()
    };
    let endpoints: Vec<String> = endpoints.into_iter().filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        return Store::open().map_err(|e| e.to_string());
    }
    use etcd::TlsFile;
    let pick = |flag: &Option<String>, which: TlsFile| {
        flag.clone()
            .or_else(|| env(which.env()))
            .map(std::path::PathBuf::from)
    };
    let paths = etcd::TlsPaths {
        ca: pick(&f.etcd_cafile, TlsFile::Ca),
        cert: pick(&f.etcd_certfile, TlsFile::Cert),
        key: pick(&f.etcd_keyfile, TlsFile::Key),
    };
    let tls = etcd::Tls::for_endpoints(&endpoints, &paths).map_err(|e| match e.file() {
        Some(w) => format!("{} (or ${}): {e}", w.flag(), w.env()),
        None => format!("--etcd-endpoints: {e}"),
    })?;
    let prefix = f
        .etcd_prefix
        .clone()
        .or_else(|| env("CNIRS_ETCD_PREFIX"))
        .unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/') {
        return Err(format!("--etcd-prefix {prefix:?} does not start with /"));
    }
    let client = etcd::Client::with_options(
        &endpoints,
        etcd::Options {
            tls,
            ..etcd::Options::default()
        },
    )
    .map_err(|e| format!("--etcd-endpoints: {e}"))?;
    let src = EtcdSource::new(Arc::new(client), &prefix, &cluster::schema::node_name());
    Store::open_with(Box::new(src)).map_err(|e| e.to_string())
}

/// `cnirs agent`'s NetworkPolicy loop ([`netpol::cluster::run`]) with the agent's own etcd
/// flags (`args`, as `cnirs-agent` takes them). A setup error is the agent's to report (it
/// parses the same flags and exits); this loop then just does not run.
pub fn run_beside_agent(args: &[String]) {
    let Ok(Some(a)) = agent::parse_args(args) else {
        return;
    };
    let Ok(tls) = etcd::Tls::for_endpoints(&a.endpoints, &a.tls) else {
        return;
    };
    let client = match etcd::Client::with_options(
        &a.endpoints,
        etcd::Options {
            watch_idle_timeout: Some(std::time::Duration::from_secs(10)),
            tls,
            ..etcd::Options::default()
        },
    ) {
        Ok(c) => c,
        Err(e) => return log::error!("netpol: {e}"),
    };
    static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = netpol::cluster::run(&client, &a.prefix, &a.node, &NEVER) {
        log::error!("netpol: {e}");
    }
}

fn read(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    log::error!("{e}");
    ExitCode::from(1)
}

/// `apply` (`delete`: false) or `delete` the objects of `file` (`-`: stdin).
pub fn change(file: &str, delete: bool, etcd: &EtcdFlags) -> ExitCode {
    let text = match read(file) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let store = match open(etcd) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let run = || -> Result<String, PolicyError> {
        let objs = parse(&text)?;
        let (added, removed) = if delete {
            store.delete(&objs)?
        } else {
            store.apply(&objs)?
        };
        let keys: Vec<String> = objs.iter().map(|o| o.key()).collect();
        if store.shared() {
            return Ok(format!(
                "{} {} in etcd (one transaction; each host's agent enforces)",
                if delete { "deleted" } else { "applied" },
                keys.join(", ")
            ));
        }
        Ok(format!(
            "{} {} ({} element(s) added, {} removed)",
            if delete { "deleted" } else { "applied" },
            keys.join(", "),
            added,
            removed
        ))
    };
    match run() {
        Ok(msg) => {
            log::info!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// What is in force: every policy, its types and the pods it selects.
pub fn ls(etcd: &EtcdFlags) -> ExitCode {
    let s = match open(etcd) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let run = || -> Result<String, PolicyError> {
        let w = s.world()?;
        Ok(store::listing(&w, &netpol::compile(&w)))
    };
    match run() {
        Ok(text) => {
            use std::io::Write;
            match std::io::stdout().write_all(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Err(e) => fail(e),
    }
}
