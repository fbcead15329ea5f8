//! The resolver of one network (`dnsname --serve <dir>`), on hickory-dns.
//!
//! - Listens on the network's gateway addresses, port 53, UDP and TCP, each socket bound to
//!   the bridge (SO_BINDTODEVICE): a packet that came in on another interface, e.g. from a pod
//!   of another network routed to this gateway address, finds no socket.
//! - Answers A and AAAA for the names and aliases in `entries.json`, bare and under the
//!   network's domain, with the authoritative bit; NXDOMAIN for any other name in the domain
//!   and for unknown single-label names (they are never sent upstream).
//! - Forwards every other name to the resolvers of `resolv_conf` (hickory-resolver).
//! - Re-reads `entries.json` when its identity (inode, size, mtime) changed, checked before
//!   each answer, so an answer never lags a finished ADD or DEL; SIGHUP also re-reads it and
//!   the upstreams. Exits on SIGTERM/SIGINT, when its directory is gone, and when its bridge
//!   is gone or was made again (checked every second).

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Header, HeaderCounts, Metadata, ResponseCode},
    rr::{rdata, RData, Record, RecordType},
};
use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::{Time, TokioRuntimeProvider},
    Resolver, TokioResolver,
};
use hickory_server::{
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
    Server,
};
use nix::fcntl::{Flock, FlockArg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};

use crate::store::{DaemonConfig, Entries, NetDir};

/// TTL of our own answers: short, names come and go with containers.
const TTL: u32 = 5;

/// The resolver's failures (logged to its log file; the plugin sees "did not start").
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another resolver holds {0}")]
    Busy(PathBuf),
    #[error("{0}")]
    Config(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Identity of the entries file as last read.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

struct Zone {
    stamp: Stamp,
    names: BTreeMap<String, Vec<IpAddr>>,
}

/// The resolver's state, shared by the server's handler and the signal loop.
struct State {
    entries_path: PathBuf,
    domain: String,
    forward: bool,
    resolv_conf: PathBuf,
    zone: RwLock<Arc<Zone>>,
    upstream: RwLock<Option<Arc<TokioResolver>>>,
}

impl State {
    fn new(dir: &NetDir, cfg: &DaemonConfig) -> Self {
        let h = Self {
            entries_path: dir.file("entries.json"),
            domain: cfg.domain.clone(),
            forward: cfg.forward,
            resolv_conf: cfg.resolv_conf.clone(),
            zone: RwLock::new(Arc::new(Zone {
                stamp: None,
                names: BTreeMap::new(),
            })),
            upstream: RwLock::new(None),
        };
        h.reload(true);
        h
    }

    /// Re-reads the entries (always when `force`, else only if the file changed) and, when
    /// `force`, the upstreams.
    fn reload(&self, force: bool) {
        let now = stamp(&self.entries_path);
        let current = self.zone.read().map(|z| z.stamp).unwrap_or(None);
        if force || now != current {
            let entries = NetDir::at(self.entries_path.parent().unwrap_or(Path::new("/")))
                .entries()
                .unwrap_or_else(|e| {
                    log::warn!("keeping the old names: {e}");
                    Entries::default()
                });
            let names = entries.table(&self.domain);
            log::debug!("{} names loaded", names.len());
            if let Ok(mut z) = self.zone.write() {
                *z = Arc::new(Zone { stamp: now, names });
            }
        }
        if force && self.forward {
            let r = upstream(&self.resolv_conf).map(Arc::new);
            if let Err(e) = &r {
                log::warn!("no upstream resolvers: {e}");
            }
            if let Ok(mut u) = self.upstream.write() {
                *u = r.ok();
            }
        }
    }

    fn lookup_local(&self, name: &str) -> Local {
        self.reload(false);
        let zone = match self.zone.read() {
            Ok(z) => z.clone(),
            Err(_) => return Local::NotOurs,
        };
        if let Some(ips) = zone.names.get(name) {
            return Local::Found(ips.clone());
        }
        let in_domain = !self.domain.is_empty()
            && (name == self.domain || name.ends_with(&format!(".{}", self.domain)));
        if in_domain || !name.contains('.') {
            Local::NxDomain
        } else {
            Local::NotOurs
        }
    }
}

enum Local {
    Found(Vec<IpAddr>),
    NxDomain,
    NotOurs,
}

/// A resolver for the nameservers of `resolv_conf` (hickory's own resolv.conf parser), with
/// no hosts file, no search list and a short timeout.
fn upstream(resolv_conf: &Path) -> Result<TokioResolver, ServeError> {
    let text =
        std::fs::read(resolv_conf).map_err(io(format!("reading {}", resolv_conf.display())))?;
    let (parsed, _) = hickory_resolver::system_conf::parse_resolv_conf(&text)
        .map_err(|e| ServeError::Config(format!("{}: {e}", resolv_conf.display())))?;
    let servers: Vec<NameServerConfig> = parsed
        .name_servers()
        .iter()
        .map(|ns| NameServerConfig::udp_and_tcp(ns.ip))
        .collect();
    if servers.is_empty() {
        return Err(ServeError::Config(format!(
            "{}: no nameserver",
            resolv_conf.display()
        )));
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.ndots = 0;
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    opts.preserve_intermediates = true;
    let b = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts);
    b.build()
        .map_err(|e| ServeError::Config(format!("building the forwarder: {e}")))
}

struct Handler(Arc<State>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        let (owner, qtype) = match request.request_info() {
            Ok(info) => (
                info.query.original().name().clone(),
                info.query.original().query_type(),
            ),
            Err(_) => {
                meta.response_code = ResponseCode::FormErr;
                return send(request, &mut response, meta, &[]).await;
            }
        };
        let name = owner.to_string();
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        match self.0.lookup_local(&key) {
            Local::Found(ips) => {
                meta.authoritative = true;
                let records: Vec<Record> = ips
                    .iter()
                    .filter_map(|ip| match (ip, qtype) {
                        (IpAddr::V4(a), RecordType::A | RecordType::ANY) => {
                            Some(RData::A(rdata::A(*a)))
                        }
                        (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => {
                            Some(RData::AAAA(rdata::AAAA(*a)))
                        }
                        _ => None,
                    })
                    .map(|rd| Record::from_rdata(owner.clone(), TTL, rd))
                    .collect();
                send(request, &mut response, meta, &records).await
            }
            Local::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                send(request, &mut response, meta, &[]).await
            }
            Local::NotOurs => {
                meta.recursion_available = true;
                let resolver = self.0.upstream.read().ok().and_then(|u| u.clone());
                let Some(resolver) = resolver.filter(|_| self.0.forward) else {
                    meta.response_code = ResponseCode::Refused;
                    return send(request, &mut response, meta, &[]).await;
                };
                match resolver.lookup(owner.clone(), qtype).await {
                    Ok(lookup) => {
                        let records = lookup.answers().to_vec();
                        send(request, &mut response, meta, &records).await
                    }
                    Err(e) => {
                        meta.response_code = if e.is_nx_domain() {
                            ResponseCode::NXDomain
                        } else if e.is_no_records_found() {
                            ResponseCode::NoError
                        } else {
                            log::debug!("forwarding {name} {qtype}: {e}");
                            ResponseCode::ServFail
                        };
                        send(request, &mut response, meta, &[]).await
                    }
                }
            }
        }
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    response: &mut R,
    meta: Metadata,
    answers: &[Record],
) -> ResponseInfo {
    let builder = MessageResponseBuilder::new(&request.queries, None);
    let msg = builder.build(meta, answers.iter(), [], [], []);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            log::debug!("sending an answer: {e}");
            let mut failed = meta;
            failed.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: failed,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// A socket on `addr`, bound to `device` if given, bindable before the address is usable
/// (IP_FREEBIND: an IPv6 gateway may still be tentative).
fn socket(addr: SocketAddr, ty: Type, device: Option<&str>) -> Result<Socket, ServeError> {
    let what = format!(
        "{} socket on {addr}",
        if ty == Type::DGRAM { "udp" } else { "tcp" }
    );
    let proto = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto)).map_err(io(&what))?;
    s.set_reuse_address(true).map_err(io(&what))?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(io(&what))?;
        s.set_freebind_v6(true).map_err(io(&what))?;
    } else {
        s.set_freebind_v4(true).map_err(io(&what))?;
    }
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))
            .map_err(io(format!("{what}: SO_BINDTODEVICE {dev}")))?;
    }
    s.bind(&addr.into()).map_err(io(&what))?;
    if ty == Type::STREAM {
        s.listen(128).map_err(io(&what))?;
    }
    s.set_nonblocking(true).map_err(io(&what))?;
    Ok(s)
}

/// `dnsname --serve <dir>`: the resolver's `main`. Returns when told to stop or when its
/// directory is removed.
pub fn serve(dir: &Path) -> Result<(), ServeError> {
    let dir = NetDir::at(dir);
    let lock_path = dir.file("daemon.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| ServeError::Busy(lock_path.clone()))?;
    // Never unlocked by us: the kernel drops the lock when the process exits, so "the lock is
    // free" means "the resolver is gone", not "it is on its way out".
    std::mem::forget(lock);
    let pid_path = dir.file("pid");
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(io(format!("writing {}", pid_path.display())))?;
    let cfg = dir
        .config()
        .map_err(|e| ServeError::Config(e.to_string()))?
        .ok_or_else(|| ServeError::Config("no config.json".into()))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    rt.block_on(run(dir, cfg, ready))
}

/// The resolver's loop: binds, calls `on_ready`, serves until told to stop.
async fn run(
    dir: NetDir,
    cfg: DaemonConfig,
    on_ready: impl FnOnce() -> Result<(), ServeError>,
) -> Result<(), ServeError> {
    let state = Arc::new(State::new(&dir, &cfg));
    let mut server = Server::new(Handler(state.clone()));
    for ip in &cfg.listen {
        let addr = SocketAddr::new(*ip, cfg.port);
        let dev = cfg.device.as_deref();
        let udp = tokio::net::UdpSocket::from_std(socket(addr, Type::DGRAM, dev)?.into())
            .map_err(io(format!("udp {addr}")))?;
        server.register_socket(udp);
        let tcp = tokio::net::TcpListener::from_std(socket(addr, Type::STREAM, dev)?.into())
            .map_err(io(format!("tcp {addr}")))?;
        server.register_listener(tcp, Duration::from_secs(5), 32);
    }
    log::info!(
        "network {}: answering for {} on {:?} port {} (device {:?})",
        cfg.network,
        cfg.domain,
        cfg.listen,
        cfg.port,
        cfg.device
    );
    // A bridge deleted and made again has another ifindex: our sockets stay bound to the old
    // one and would never see a packet. Exit then: CHECK reports the resolver down and the
    // next ADD starts a new one on the new bridge.
    let ifindex = |dev: &str| nix::net::if_::if_nametoindex(dev).ok();
    let device_index = cfg.device.as_deref().map(ifindex);
    on_ready()?;

    let mut hup = signal(SignalKind::hangup()).map_err(io("SIGHUP handler"))?;
    let mut term = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                log::debug!("SIGHUP: reloading");
                state.reload(true);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if !dir.exists() {
                    log::info!("{} is gone: exiting", dir.path().display());
                    break;
                }
                if let (Some(dev), Some(before)) = (cfg.device.as_deref(), device_index) {
                    if ifindex(dev) != before {
                        log::warn!("bridge {dev} is gone or was made again: exiting");
                        break;
                    }
                }
            }
        }
    }
    let _ = server.shutdown_gracefully().await;
    Ok(())
}

/// Tells the plugin the sockets are bound, then puts /dev/null on stdout (the pipe's reader
/// exits with the plugin).
fn ready() -> Result<(), ServeError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(io("writing ready"))?;
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(io("opening /dev/null"))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| ServeError::Io {
        what: "dup2 /dev/null".into(),
        source: e.into(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The resolver on 127.0.0.1 (no device binding, no root): what it answers, and that a
    //! change of its entries file shows in the next answer.

    use std::net::UdpSocket;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;

    use super::*;
    use crate::store::Entry;

    fn query(port: u16, name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
            .unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    fn ips(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn answers_names_aliases_and_nxdomain_and_follows_the_entries_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NetDir::at(tmp.path().join("n"));
        let _l = dir.lock(true).unwrap();
        // A port of our own: bind 0, read it, free it (the resolver binds it right after).
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = DaemonConfig {
            network: "n".into(),
            domain: "dns.test".into(),
            listen: vec!["127.0.0.1".parse().unwrap()],
            port,
            device: None,
            resolv_conf: "/nonexistent".into(),
            forward: false,
        };
        let entry = |id: &str, name: &str, ip: &str| Entry {
            container_id: id.into(),
            ifname: "eth0".into(),
            name: name.into(),
            aliases: vec!["db".into()],
            ips: vec![ip.parse().unwrap(), "fd00::2".parse().unwrap()],
        };
        let mut entries = Entries::default();
        entries.upsert(entry("c1", "api", "10.0.0.2"));
        dir.write_entries(&entries).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = {
            let (dir, cfg) = (dir.clone(), cfg.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(dir, cfg, move || {
                    tx.send(()).unwrap();
                    Ok(())
                }))
            })
        };
        rx.recv_timeout(Duration::from_secs(10)).unwrap();

        let a = query(port, "API.dns.test.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(ips(&a), ["10.0.0.2"]);
        assert_eq!(ips(&query(port, "api.", RecordType::AAAA)), ["fd00::2"]);
        assert_eq!(
            ips(&query(port, "db.dns.test.", RecordType::A)),
            ["10.0.0.2"]
        );
        let mx = query(port, "api.dns.test.", RecordType::MX);
        assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
        assert!(mx.answers.is_empty());
        for nx in ["web.dns.test.", "web."] {
            assert_eq!(
                query(port, nx, RecordType::A).metadata.response_code,
                ResponseCode::NXDomain,
                "{nx}"
            );
        }
        // forward: false -> the rest is refused.
        assert_eq!(
            query(port, "example.org.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::Refused
        );
        // A new entry answers at once (no signal: the file changed), a removed one is gone.
        entries.upsert(entry("c2", "web", "10.0.0.3"));
        entries.remove("c1", "eth0");
        dir.write_entries(&entries).unwrap();
        assert_eq!(ips(&query(port, "web.", RecordType::A)), ["10.0.0.3"]);
        assert_eq!(
            query(port, "api.", RecordType::A).metadata.response_code,
            ResponseCode::NXDomain
        );
        // The resolver exits when its directory goes.
        dir.remove().unwrap();
        server.join().unwrap().unwrap();
    }
}
