//! A small blocking etcd v3 client over the JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
//! `/v3/watch`), HTTP/1.1 through `ureq`, with multi-endpoint failover.
//!
//! Why the gateway and not gRPC: no protoc at build time, a few hundred kB of binary, and a
//! request per endpoint, so one dead member never fails a call (the gRPC client's
//! multi-endpoint connect does, on etcd 3.4).
//!
//! Failover: every call starts at the endpoint that answered last, and on a connect error, a
//! timeout or an "unavailable" answer (no leader, leader changed, 5xx) moves on to the next,
//! round and round with a short backoff until [`Options::retry_deadline`]. A write whose
//! answer was lost may therefore be applied twice: puts and deletes don't care; a
//! create-if-absent txn answers "exists" the second time, so callers compare the value they
//! find with the one they wrote (see [`Client::create_or_get`]).
//!
//! ```no_run
//! let c = etcd::Client::new(&["http://127.0.0.1:2379".to_string()])?;
//! c.put("/cnirs/hosts/a", br#"{"vtep":"10.240.0.1"}"#, None)?;
//! assert!(!c.create("/cnirs/hosts/a", b"x", None)?);
//! let (kvs, rev) = c.range_prefix("/cnirs/hosts/")?;
//! for ev in c.watch_prefix("/cnirs/hosts/", rev + 1)? {
//!     let ev = ev?;
//!     eprintln!("{:?} {}", ev.kind, String::from_utf8_lossy(&ev.kv.key));
//! #   break;
//! }
//! # let _ = kvs;
//! # Ok::<(), etcd::EtcdError>(())
//! ```

use std::{
    io::{BufReader, Read},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod store;
mod stream;
mod tls;
mod types;
mod wire;

use stream::KeeperState;
pub use stream::{LeaseKeeper, Watch};
pub use tls::{tls_from_conf, ConfTlsError, Tls, TlsFile, TlsPaths, TlsSetupError};
pub use types::*;

/// gRPC status codes the gateway reports, that mean "try again, maybe elsewhere".
const GRPC_DEADLINE_EXCEEDED: i64 = 4;
const GRPC_NOT_FOUND: i64 = 5;
const GRPC_UNAVAILABLE: i64 = 14;

/// ureq's default resolver spawns a thread for every request when a timeout is set, even
/// for an IP address (a `clone3` before each etcd call of an ADD). Endpoints are usually IP
/// addresses: those are answered here without a thread, names as ureq does.
#[derive(Debug)]
struct LiteralResolver;

impl ureq::unversioned::resolver::Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        let ip = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok());
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        match (ip, port) {
            (Some(ip), Some(port)) => {
                let mut v = self.empty();
                v.push(std::net::SocketAddr::new(ip, port));
                Ok(v)
            }
            _ => DefaultResolver::default().resolve(uri, config, timeout),
        }
    }
}

/// A blocking etcd v3 client over the JSON gateway. Cheap to clone; Send + Sync.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// For watches: no overall timeout.
    stream_agent: ureq::Agent,
    preferred: AtomicUsize,
    opts: Options,
}

/// Why one attempt on one endpoint failed.
enum Attempt {
    /// Try the next endpoint.
    Retry(String),
    /// Give up: the answer is final.
    Fatal(EtcdError),
    /// TLS failed with this member (certificate not verified, ours refused): try the others,
    /// but do not wait for any of them to change its mind.
    Tls(TlsFile, String),
}

impl Client {
    /// A client over `endpoints` (each `http://host:port`, or `https://` with
    /// [`Options::tls`]), with default [`Options`].
    /// Nothing is contacted yet.
    pub fn new(endpoints: &[String]) -> Result<Client, EtcdError> {
        Self::with_options(endpoints, Options::default())
    }

    pub fn with_options(endpoints: &[String], opts: Options) -> Result<Client, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let endpoints = endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        check_schemes(&endpoints, opts.tls.as_ref())?;
        let tls = opts.tls.as_ref().map(Tls::ureq_config).unwrap_or_default();
        // One agent per purpose, each keeping its connections (and so its TLS sessions) for
        // every later call of this process.
        let base = |global: Option<Duration>| -> ureq::Agent {
            let config = ureq::Agent::config_builder()
                .tls_config(tls.clone())
                .http_status_as_error(false)
                .timeout_connect(Some(opts.connect_timeout))
                .timeout_global(global)
                .timeout_per_read(if global.is_none() {
                    opts.watch_idle_timeout
                } else {
                    None
                })
                .build();
            ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                LiteralResolver,
            )
        };
        let agent = base(Some(opts.request_timeout));
        let stream_agent = base(None);
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                agent,
                stream_agent,
                preferred: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    fn with_cert(&self) -> bool {
        self.inner
            .opts
            .tls
            .as_ref()
            .is_some_and(Tls::has_client_cert)
    }

    /// The endpoints, normalized.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// POSTs `body` to `path`, failing over between endpoints; decodes the answer.
    fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, EtcdError> {
        self.failover(path, |ep| self.attempt(ep, path, body))
    }

    /// `attempt` on each endpoint in turn, from the one that answered last, round after round
    /// with a doubling pause until the retry deadline: the first answer wins, a fatal error
    /// ends it, a TLS failure is reported after its round (it does not heal by waiting).
    pub(crate) fn failover<T>(
        &self,
        path: &str,
        mut attempt: impl FnMut(&str) -> Result<T, Attempt>,
    ) -> Result<T, EtcdError> {
        let inner = &self.inner;
        let n = inner.endpoints.len();
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::new();
        loop {
            let first = inner.preferred.load(Ordering::Relaxed) % n;
            let mut tls_failed = None;
            for i in 0..n {
                let idx = (first + i) % n;
                let ep = &inner.endpoints[idx];
                match attempt(ep) {
                    Ok(v) => {
                        inner.preferred.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Retry(why)) => {
                        log::debug!("etcd {path} on {ep}: {why}; trying the next endpoint");
                        last = format!("{ep}: {why}");
                    }
                    Err(Attempt::Tls(file, why)) => {
                        log::debug!("etcd {path} on {ep}: TLS: {why}; trying the next endpoint");
                        tls_failed.get_or_insert((ep.clone(), file, why));
                    }
                }
            }
            if let Some((endpoint, file, message)) = tls_failed {
                return Err(EtcdError::Tls {
                    endpoint,
                    path: path.to_string(),
                    file,
                    message,
                });
            }
            if start.elapsed() + backoff > inner.opts.retry_deadline {
                return Err(EtcdError::Unavailable {
                    endpoints: inner.endpoints.join(","),
                    path: path.to_string(),
                    last,
                });
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn attempt<T: DeserializeOwned>(
        &self,
        ep: &str,
        path: &str,
        body: &Value,
    ) -> Result<T, Attempt> {
        let url = format!("{ep}{path}");
        let payload = body.to_string();
        let mut resp = match self
            .inner
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(payload.as_bytes())
        {
            Ok(r) => r,
            Err(e) => return Err(transport_failure(&e, self.with_cert(), "")),
        };
        let status = resp.status().as_u16();
        let bytes = match resp.body_mut().with_config().limit(64 << 20).read_to_vec() {
            Ok(b) => b,
            Err(e) => {
                return Err(transport_failure(
                    &e,
                    self.with_cert(),
                    "reading the answer: ",
                ))
            }
        };
        if status != 200 {
            let err: wire::ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = if err.message.is_empty() {
                err.error
            } else {
                err.message
            };
            if status >= 500 || matches!(err.code, GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED) {
                return Err(Attempt::Retry(format!("HTTP {status}: {message}")));
            }
            return Err(Attempt::Fatal(EtcdError::Server {
                endpoint: ep.to_string(),
                path: path.to_string(),
                code: err.code,
                message,
            }));
        }
        serde_json::from_slice(&bytes).map_err(|source| {
            Attempt::Fatal(EtcdError::Decode {
                endpoint: ep.to_string(),
                path: path.to_string(),
                source,
            })
        })
    }

    /// One key, if it exists.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Kv>, EtcdError> {
        let r: wire::RangeResponse =
            self.call("/v3/kv/range", &wire::range_body(key.as_ref(), None))?;
        Ok(r.kvs.into_iter().next().map(Kv::from))
    }

    /// Every key starting with `prefix`, sorted by key, and the store revision they were read
    /// at (watch from `revision + 1` to see every later change).
    pub fn range_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(Vec<Kv>, i64), EtcdError> {
        let p = prefix.as_ref();
        let r: wire::RangeResponse =
            self.call("/v3/kv/range", &wire::range_body(p, Some(&prefix_end(p))))?;
        Ok((r.kvs.into_iter().map(Kv::from).collect(), r.header.revision))
    }

    /// Sets `key`, attached to `lease` if given; returns the new revision.
    pub fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let r: wire::PutResponse = self.call(
            "/v3/kv/put",
            &wire::put_body(key.as_ref(), value.as_ref(), lease),
        )?;
        Ok(r.header.revision)
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<i64, EtcdError> {
        let r: wire::DeleteRangeResponse =
            self.call("/v3/kv/deleterange", &wire::range_body(key.as_ref(), None))?;
        Ok(r.deleted)
    }

    /// Deletes every key starting with `prefix`; returns how many went.
    pub fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<i64, EtcdError> {
        let p = prefix.as_ref();
        let r: wire::DeleteRangeResponse = self.call(
            "/v3/kv/deleterange",
            &wire::range_body(p, Some(&prefix_end(p))),
        )?;
        Ok(r.deleted)
    }

    /// A transaction: if every compare holds, run `success`, else `failure`.
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, EtcdError> {
        self.txn_call(&wire::txn_body(compares, success, failure))
    }

    /// A read-only transaction of `ops` (gets) answered by the member this client talks to
    /// from its own state: no quorum round (a linearizable read waits for one, milliseconds
    /// under load), but possibly behind the leader by what the member has not applied yet.
    /// For reads whose staleness a later write's compares catch.
    pub fn read_serializable(&self, ops: &[Op]) -> Result<TxnResponse, EtcdError> {
        self.txn_call(&wire::serializable_read_body(ops))
    }

    fn txn_call(&self, body: &Value) -> Result<TxnResponse, EtcdError> {
        let r: wire::TxnResponse = self.call("/v3/kv/txn", body)?;
        let responses = r
            .responses
            .into_iter()
            .map(|op| {
                if let Some(g) = op.response_range {
                    OpResponse::Get(g.kvs.into_iter().map(Kv::from).collect())
                } else if let Some(d) = op.response_delete_range {
                    OpResponse::Delete(d.deleted)
                } else {
                    debug_assert!(op.response_put.is_some());
                    OpResponse::Put
                }
            })
            .collect();
        Ok(TxnResponse {
            succeeded: r.succeeded,
            revision: r.header.revision,
            responses,
        })
    }

    /// Puts `key` only if it does not exist (create revision 0); true when it was created.
    pub fn create(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<i64>,
    ) -> Result<bool, EtcdError> {
        let key = key.as_ref();
        Ok(self
            .txn(&[Compare::absent(key)], &[Op::put(key, value, lease)], &[])?
            .succeeded)
    }

    /// Like [`Client::create`], but when the key exists, returns what it holds (one round trip).
    /// A caller that finds its own value there knows an earlier try of its own won.
    pub fn create_or_get(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<i64>,
    ) -> Result<Created, EtcdError> {
        let key = key.as_ref();
        let r = self.txn(
            &[Compare::absent(key)],
            &[Op::put(key, value, lease)],
            &[Op::get(key)],
        )?;
        if r.succeeded {
            return Ok(Created::Created {
                revision: r.revision,
            });
        }
        let kv = r.responses.into_iter().find_map(|op| match op {
            OpResponse::Get(kvs) => kvs.into_iter().next(),
            _ => None,
        });
        // Deleted between the compare and the get cannot happen (a txn is atomic); an empty
        // answer would mean a gateway surprise, reported as a key with no value.
        Ok(Created::Exists(kv.unwrap_or_else(|| Kv {
            key: key.to_vec(),
            ..Kv::default()
        })))
    }

    /// Whether the member at endpoint `index` is the leader (`/v3/maintenance/status` on that
    /// endpoint only, no failover): Some(true|false), or None when it does not answer.
    pub fn is_leader(&self, index: usize) -> Option<bool> {
        let ep = self.inner.endpoints.get(index)?;
        match self.attempt::<wire::StatusResponse>(
            ep,
            "/v3/maintenance/status",
            &Value::Object(Default::default()),
        ) {
            Ok(r) => Some(r.leader != 0 && r.leader == r.header.member_id),
            Err(_) => None,
        }
    }

    /// A lease of `ttl_s` seconds; returns its id.
    pub fn lease_grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let body = serde_json::json!({ "TTL": ttl_s.to_string(), "ID": "0" });
        let r: wire::LeaseGrantResponse = self.call("/v3/lease/grant", &body)?;
        if !r.error.is_empty() || r.id == 0 {
            return Err(EtcdError::Server {
                endpoint: String::new(),
                path: "/v3/lease/grant".into(),
                code: 0,
                message: r.error,
            });
        }
        Ok(r.id)
    }

    /// Renews lease `id` once; returns its TTL. `LeaseNotFound` when it has expired.
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let body =
            serde_json::to_value(wire::LeaseId { id: id.to_string() }).unwrap_or(Value::Null);
        let r: wire::LeaseKeepAliveFrame = self.call("/v3/lease/keepalive", &body)?;
        match r.result {
            Some(res) if res.ttl > 0 => Ok(res.ttl),
            _ => Err(EtcdError::LeaseNotFound(id)),
        }
    }

    /// Revokes lease `id`, deleting its keys. A lease already gone is not an error.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let body =
            serde_json::to_value(wire::LeaseId { id: id.to_string() }).unwrap_or(Value::Null);
        match self.call::<Value>("/v3/lease/revoke", &body) {
            Ok(_) => Ok(()),
            Err(EtcdError::Server {
                code: GRPC_NOT_FOUND,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keeps lease `id` alive from a background thread every `every` until the returned
    /// guard is dropped (or the lease is found gone: see [`LeaseKeeper::lost`]).
    pub fn keep_alive(&self, id: i64, every: Duration) -> LeaseKeeper {
        let state = Arc::new(Mutex::new(KeeperState::default()));
        let (client, st) = (self.clone(), Arc::clone(&state));
        let handle = thread::spawn(move || loop {
            {
                let s = st.lock().unwrap_or_else(|p| p.into_inner());
                if s.stop {
                    return;
                }
            }
            let sent = Instant::now();
            match client.lease_keepalive(id) {
                Ok(_) => st.lock().unwrap_or_else(|p| p.into_inner()).renewed = Some(sent),
                Err(EtcdError::LeaseNotFound(_)) => {
                    st.lock().unwrap_or_else(|p| p.into_inner()).lost = true;
                    return;
                }
                Err(e) => log::warn!("etcd lease {id:x} keepalive: {e}"),
            }
            let deadline = Instant::now() + every;
            while Instant::now() < deadline {
                if st.lock().unwrap_or_else(|p| p.into_inner()).stop {
                    return;
                }
                thread::sleep(Duration::from_millis(50).min(every));
            }
        });
        LeaseKeeper {
            id,
            state,
            handle: Some(handle),
        }
    }

    /// A blocking stream of changes to keys under `prefix`, from `start_revision` (0: from
    /// now). The stream reopens itself on another endpoint when its connection drops,
    /// resuming after the last event it delivered, so no event is lost or repeated.
    /// It yields `Err` when no endpoint answers within the retry deadline (the next call tries
    /// again), and `Err(Compacted)` then ends when the revision is gone (list again).
    pub fn watch_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let p = prefix.as_ref();
        self.watch_range(p, &prefix_end(p), start_revision)
    }

    /// [`Client::watch_prefix`] over the keys in `[key, range_end)` (several sibling
    /// prefixes in one stream, e.g. `/cnirs/blocks/` through `/cnirs/hosts/`).
    pub fn watch_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let mut w = Watch {
            client: self.clone(),
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            next_revision: start_revision,
            stream: None,
            pending: Default::default(),
            done: false,
        };
        w.open()?;
        Ok(w)
    }
}

/// A transport error: TLS failures apart (final for this member), the rest worth a retry.
fn transport_failure(e: &ureq::Error, with_cert: bool, context: &str) -> Attempt {
    match tls::tls_failure(e, with_cert) {
        Some((file, why)) => Attempt::Tls(file, why),
        None => Attempt::Retry(format!("{context}{e}")),
    }
}

/// `https://` endpoints need [`Options::tls`]; `http://` ones must not have it; one scheme.
fn check_schemes(endpoints: &[String], tls: Option<&Tls>) -> Result<(), EtcdError> {
    let http = endpoints.iter().find(|e| e.starts_with("http://"));
    let https = endpoints.iter().find(|e| e.starts_with("https://"));
    let err = match (http, https, tls) {
        (Some(h), Some(s), _) => TlsSetupError::MixedSchemes {
            http: h.clone(),
            https: s.clone(),
        },
        (Some(h), None, Some(_)) => TlsSetupError::Plaintext {
            endpoint: h.clone(),
        },
        (None, Some(_), None) => TlsSetupError::NoCa,
        _ => return Ok(()),
    };
    Err(err.into())
}

#[cfg(test)]
mod tests;
