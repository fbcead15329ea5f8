//! The client's values: errors, keys and values, txn compares and ops, watch events, options.

use super::*;

/// Everything that can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("bad etcd endpoint {0:?}: want http://host:port or https://host:port")]
    BadEndpoint(String),
    /// The TLS settings cannot work (checked before anything is sent).
    #[error("etcd TLS: {0}")]
    TlsSetup(#[from] TlsSetupError),
    /// TLS with a member failed: its certificate is not verified by the CA, or it refused
    /// ours. Final (no retry until the deadline): it is a configuration problem.
    #[error("etcd {path} on {endpoint}: TLS failed: {message}")]
    Tls {
        endpoint: String,
        path: String,
        /// The setting to look at: the CA (the member's certificate was not verified) or the
        /// client certificate (refused, or none given).
        file: TlsFile,
        message: String,
    },
    #[error("etcd unreachable ({endpoints}) for {path}: {last}")]
    Unavailable {
        endpoints: String,
        path: String,
        last: String,
    },
    #[error("etcd {path} on {endpoint}: {message} (grpc code {code})")]
    Server {
        endpoint: String,
        path: String,
        code: i64,
        message: String,
    },
    #[error("etcd {path} on {endpoint}: unreadable answer: {source}")]
    Decode {
        endpoint: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("etcd lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(i64),
    #[error("etcd watch from revision {requested} compacted (oldest kept {compact_revision}): list again")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    #[error("etcd watch canceled: {0}")]
    WatchCanceled(String),
}

impl EtcdError {
    /// For a TLS setup or handshake problem: which file setting it is about (the caller names
    /// it with its own key or flag).
    pub fn tls_file(&self) -> Option<TlsFile> {
        match self {
            EtcdError::Tls { file, .. } => Some(*file),
            EtcdError::TlsSetup(e) => e.file(),
            _ => None,
        }
    }

    /// A configuration problem (TLS, endpoints) rather than an outage: retrying cannot help.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            EtcdError::Tls { .. }
                | EtcdError::TlsSetup(_)
                | EtcdError::BadEndpoint(_)
                | EtcdError::NoEndpoints
        )
    }
}

/// One key with its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// 0 when the key has no lease.
    pub lease: i64,
}

impl Kv {
    /// The key as text (keys in our schema are UTF-8).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a [`Compare`] looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    /// 0 means "the key does not exist".
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One condition of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
    /// `Some`: the condition holds for every key in `[key, range_end)` (and, on etcd, when
    /// there is none: an absent key compares as revision 0).
    pub range_end: Option<Vec<u8>>,
}

impl Compare {
    pub fn create_revision(key: impl AsRef<[u8]>, op: CompareOp, rev: i64) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            op,
            target: CompareTarget::CreateRevision(rev),
            range_end: None,
        }
    }
    pub fn mod_revision(key: impl AsRef<[u8]>, op: CompareOp, rev: i64) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            op,
            target: CompareTarget::ModRevision(rev),
            range_end: None,
        }
    }
    /// The key is still at `rev` (not changed since it was read).
    pub fn unchanged(key: impl AsRef<[u8]>, rev: i64) -> Self {
        Compare::mod_revision(key, CompareOp::Equal, rev)
    }
    pub fn value(key: impl AsRef<[u8]>, op: CompareOp, value: impl AsRef<[u8]>) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            op,
            target: CompareTarget::Value(value.as_ref().to_vec()),
            range_end: None,
        }
    }
    pub fn version(key: impl AsRef<[u8]>, op: CompareOp, version: i64) -> Self {
        Compare {
            key: key.as_ref().to_vec(),
            op,
            target: CompareTarget::Version(version),
            range_end: None,
        }
    }
    /// The key does not exist.
    pub fn absent(key: impl AsRef<[u8]>) -> Self {
        Self::create_revision(key, CompareOp::Equal, 0)
    }
    /// Every key under `prefix` has a mod revision `op rev` (true when there is none): e.g.
    /// `Less, read + 1` = nothing under the prefix was written since a read at `read`.
    pub fn prefix_mod_revision(prefix: impl AsRef<[u8]>, op: CompareOp, rev: i64) -> Self {
        let p = prefix.as_ref();
        Compare {
            key: p.to_vec(),
            op,
            target: CompareTarget::ModRevision(rev),
            range_end: Some(prefix_end(p)),
        }
    }
}

/// One operation of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Delete {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn get(key: impl AsRef<[u8]>) -> Self {
        Op::Get {
            key: key.as_ref().to_vec(),
            range_end: None,
        }
    }
    pub fn get_prefix(prefix: impl AsRef<[u8]>) -> Self {
        let p = prefix.as_ref();
        Op::Get {
            key: p.to_vec(),
            range_end: Some(prefix_end(p)),
        }
    }
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: Option<i64>) -> Self {
        Op::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            lease,
        }
    }
    pub fn delete(key: impl AsRef<[u8]>) -> Self {
        Op::Delete {
            key: key.as_ref().to_vec(),
            range_end: None,
        }
    }
    pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> Self {
        let p = prefix.as_ref();
        Op::Delete {
            key: p.to_vec(),
            range_end: Some(prefix_end(p)),
        }
    }
}

/// The answer to one txn operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    Get(Vec<Kv>),
    Put,
    Delete(i64),
}

/// The answer to a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// The compares held, so the success ops ran (else the failure ops ran).
    pub succeeded: bool,
    /// The store revision after the txn.
    pub revision: i64,
    pub responses: Vec<OpResponse>,
}

/// What [`Client::create_or_get`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key was absent and now holds our value.
    Created { revision: i64 },
    /// The key exists (possibly written by us on an earlier try whose answer was lost).
    Exists(Kv),
}

/// Event kind of a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv` has only the key and mod_revision;
/// `prev_kv` has the value it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: Kv,
    pub prev_kv: Option<Kv>,
}

/// Timeouts and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP connect to one endpoint.
    pub connect_timeout: Duration,
    /// One request to one endpoint, answer included.
    pub request_timeout: Duration,
    /// How long a call goes on trying endpoints (a leader election takes ~1.5 s).
    pub retry_deadline: Duration,
    /// A watch stream that sends nothing for this long is reopened (None: wait forever).
    /// etcd sends nothing on an idle watch unless started with
    /// `--experimental-watch-progress-notify-interval`; watches ask for progress notifies.
    pub watch_idle_timeout: Option<Duration>,
    /// TLS for `https://` endpoints (see [`Tls::for_endpoints`]); `None` for `http://`.
    pub tls: Option<Tls>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            retry_deadline: Duration::from_secs(15),
            watch_idle_timeout: None,
            tls: None,
        }
    }
}

/// The range end that selects every key starting with `prefix`: the prefix with its last
/// byte + 1 (trailing 0xff bytes dropped first); `\0` (all keys) for an empty or all-0xff
/// prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Checks one endpoint: `http://host:port` or `https://host:port` (a trailing `/` is
/// dropped).
pub fn parse_endpoint(ep: &str) -> Result<String, EtcdError> {
    let bad = || EtcdError::BadEndpoint(ep.to_string());
    let (scheme, rest) = if let Some(r) = ep.strip_prefix("https://") {
        ("https", r)
    } else {
        ("http", ep.strip_prefix("http://").ok_or_else(bad)?)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(format!("{scheme}://{rest}"))
}
