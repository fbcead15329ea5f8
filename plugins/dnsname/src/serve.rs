//! The resolver of one network (`dnsname --serve <dir>`), on hickory-dns's message types.
//!
//! - Listens on the network's gateway addresses, port 53, UDP and TCP, each socket bound to
//!   the bridge (SO_BINDTODEVICE): a packet that came in on another interface, e.g. from a pod
//!   of another network routed to this gateway address, finds no socket.
//! - Answers the network's own names itself (see [`crate::zone`]): A/AAAA/ANY for names and
//!   aliases, bare and under the domain, any case; NODATA + SOA for a type a name has no
//!   record of; PTR for pods' addresses; NXDOMAIN for other names in the domain and for
//!   single-label names (never sent upstream).
//! - Forwards every other query to the host's resolvers (see [`crate::forward`]) and passes
//!   their answer on as they gave it (see [`crate::wire`]), except that, as dnsmasq (the Go
//!   dnsname), it answers nothing when every upstream refused or failed a UDP query without
//!   EDNS0 options; answers REFUSED instead when the network does not forward
//!   (`forward: false`).
//! - Re-reads `entries.json` when its identity (inode, size, mtime) changed, checked before
//!   each answer, so an answer never lags a finished ADD or DEL; SIGHUP also re-reads it and
//!   the upstreams. Exits on SIGTERM/SIGINT, when its directory is gone, and when its bridge
//!   is gone or was made again (checked every second).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::DNSClass};
use nix::fcntl::{Flock, FlockArg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    signal::unix::{signal, SignalKind},
    sync::Semaphore,
};

use crate::{
    forward::{self, Outcome, Upstreams},
    store::{DaemonConfig, Entries, NetDir},
    wire::{self, ClientQuery, Incoming},
    zone::{self, Local, Zone},
};

/// Forwarded queries in flight at once; more are dropped (the client asks again).
const MAX_INFLIGHT: usize = 1024;
/// TCP connections at once; more are closed at once.
const MAX_TCP_CONNS: usize = 128;
/// How long a TCP connection may stay idle between queries (RFC 7766: seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The least time between two log lines of one kind that a query can cause (SERVFAIL, drops):
/// a chatty container and a dead upstream must not fill the log file.
const LOG_EVERY_SECS: u64 = 60;

/// At most one log line per [`LOG_EVERY_SECS`]; counts the ones it held back.
#[derive(Default)]
struct LogLimit {
    last: AtomicU64,
    held: AtomicU64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn ready(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + LOG_EVERY_SECS {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last.store(now.max(1), Ordering::Relaxed);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

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

/// What to do with one incoming packet.
enum Action {
    Reply(Vec<u8>),
    Forward(Box<ClientQuery>, usize),
    Nothing,
}

/// The resolver's state, shared by the listeners and the signal loop.
struct State {
    entries_path: PathBuf,
    domain: String,
    forward: bool,
    zone: RwLock<Arc<(Stamp, Zone)>>,
    upstreams: Mutex<Upstreams>,
    servfail_log: LogLimit,
    drop_log: LogLimit,
}

impl State {
    fn new(dir: &NetDir, cfg: &DaemonConfig, upstream_port: u16) -> Self {
        let h = Self {
            entries_path: dir.file("entries.json"),
            domain: cfg.domain.clone(),
            forward: cfg.forward,
            zone: RwLock::new(Arc::new((None, Zone::default()))),
            upstreams: Mutex::new(Upstreams::new(
                cfg.resolv_conf.clone(),
                upstream_port,
                cfg.listen
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, cfg.port))
                    .collect(),
            )),
            servfail_log: LogLimit::default(),
            drop_log: LogLimit::default(),
        };
        h.reload(true);
        h
    }

    /// Re-reads the entries (always when `force`, else only if the file changed) and, when
    /// `force`, the upstreams.
    fn reload(&self, force: bool) {
        let now = stamp(&self.entries_path);
        let current = self.zone.read().map(|z| z.0).unwrap_or(None);
        if force || now != current {
            let entries = NetDir::at(self.entries_path.parent().unwrap_or(Path::new("/")))
                .entries()
                .unwrap_or_else(|e| {
                    log::warn!("no names: {e}");
                    Entries::default()
                });
            let mtime = std::fs::metadata(&self.entries_path)
                .and_then(|m| m.modified())
                .ok();
            let zone = Zone::new(&entries, &self.domain, zone::serial_of(mtime));
            log::debug!("{} names loaded", zone.len());
            if let Ok(mut z) = self.zone.write() {
                *z = Arc::new((now, zone));
            }
        }
        if force && self.forward {
            if let Ok(mut u) = self.upstreams.lock() {
                u.current(true);
            }
        }
    }

    fn zone(&self) -> Arc<(Stamp, Zone)> {
        self.reload(false);
        self.zone
            .read()
            .map(|z| z.clone())
            .unwrap_or_else(|_| Arc::new((None, Zone::default())))
    }

    /// Answers `packet` from the zone, or says it goes upstream. `tcp`: it came over TCP.
    fn decide(&self, packet: &[u8], tcp: bool) -> Action {
        let q = match wire::parse(packet) {
            Incoming::Query(q) => q,
            Incoming::Reply(r) => return Action::Reply(r),
            Incoming::Ignore => return Action::Nothing,
        };
        let limit = if tcp { wire::MAX_TCP } else { q.udp_limit() };
        let class = q.query.query_class();
        let local = if matches!(class, DNSClass::IN | DNSClass::ANY) {
            self.zone().1.answer(q.query.name(), q.query.query_type())
        } else {
            Local::NotOurs
        };
        match local {
            Local::Answer { .. } if q.bad_edns_version() => {
                Action::Reply(q.bare_answer(ResponseCode::BADVERS, self.forward))
            }
            Local::Answer {
                nxdomain,
                answers,
                authority,
            } => {
                let rcode = if nxdomain {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                Action::Reply(q.local_answer(rcode, answers, authority, self.forward, limit))
            }
            Local::NotOurs if !self.forward => {
                Action::Reply(q.bare_answer(ResponseCode::Refused, false))
            }
            Local::NotOurs => Action::Forward(q, limit),
        }
    }

    /// The upstreams' answer to `q` for the client, our SERVFAIL when none answered, or
    /// nothing where dnsmasq answers nothing (an upstream's REFUSED or SERVFAIL to a UDP
    /// query without EDNS0 options: see [`ClientQuery::dnsmasq_withholds`]).
    async fn forward(&self, q: &ClientQuery, limit: usize, tcp: bool) -> Option<Vec<u8>> {
        let servers = match self.upstreams.lock() {
            Ok(mut u) => u.current(false),
            Err(_) => Arc::new(Vec::new()),
        };
        match forward::forward(&servers, q, tcp, limit).await {
            Outcome::Reply(reply) => Some(reply),
            Outcome::Withheld => {
                log::debug!(
                    "{servers:?} refused or failed {} {}: no answer, as dnsmasq",
                    q.query.name(),
                    q.query.query_type()
                );
                None
            }
            Outcome::Silent => {
                if let Some(held) = self.servfail_log.ready() {
                    log::info!(
                        "no upstream of {servers:?} answered {} {}: SERVFAIL ({held} more since \
                         the last such line)",
                        q.query.name(),
                        q.query.query_type()
                    );
                }
                Some(q.bare_answer(ResponseCode::ServFail, true))
            }
        }
    }
}

/// Serves one UDP socket: our names answered in line, forwarded queries in their own task.
async fn serve_udp(sock: Arc<UdpSocket>, state: Arc<State>) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("udp receive: {e}");
                continue;
            }
        };
        match state.decide(&buf[..n], false) {
            Action::Nothing => {}
            Action::Reply(r) => {
                if let Err(e) = sock.send_to(&r, peer).await {
                    log::debug!("udp answer to {peer}: {e}");
                }
            }
            Action::Forward(q, limit) => {
                let Ok(permit) = inflight.clone().try_acquire_owned() else {
                    if let Some(held) = state.drop_log.ready() {
                        log::warn!(
                            "{MAX_INFLIGHT} queries in flight: dropped one from {peer} ({held} \
                             more since the last such line)"
                        );
                    }
                    continue;
                };
                let (sock, state) = (sock.clone(), state.clone());
                tokio::spawn(async move {
                    if let Some(r) = state.forward(&q, limit, false).await {
                        if let Err(e) = sock.send_to(&r, peer).await {
                            log::debug!("udp answer to {peer}: {e}");
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Serves one TCP listener: each connection in its own task, queries one after the other.
async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("tcp accept: {e}");
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            if let Some(held) = state.drop_log.ready() {
                log::warn!(
                    "{MAX_TCP_CONNS} tcp connections open: closed one from {peer} ({held} more \
                     since the last such line)"
                );
            }
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(stream, &state).await {
                log::debug!("tcp {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            // EOF, error or idle: the client is done.
            _ => return Ok(()),
        };
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let reply = match state.decide(&packet, true) {
            Action::Nothing => continue,
            Action::Reply(r) => r,
            Action::Forward(q, limit) => match state.forward(&q, limit, true).await {
                Some(r) => r,
                None => continue,
            },
        };
        let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply[..usize::from(n)]);
        stream.write_all(&framed).await?;
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
    rt.block_on(run(dir, cfg, 53, ready))
}

/// The resolver's loop: binds, calls `on_ready`, serves until told to stop. Upstreams are
/// asked on `upstream_port` (53; tests use another).
async fn run(
    dir: NetDir,
    cfg: DaemonConfig,
    upstream_port: u16,
    on_ready: impl FnOnce() -> Result<(), ServeError>,
) -> Result<(), ServeError> {
    let state = Arc::new(State::new(&dir, &cfg, upstream_port));
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for ip in &cfg.listen {
        let addr = SocketAddr::new(*ip, cfg.port);
        let dev = cfg.device.as_deref();
        udp.push(
            UdpSocket::from_std(socket(addr, Type::DGRAM, dev)?.into())
                .map_err(io(format!("udp {addr}")))?,
        );
        tcp.push(
            TcpListener::from_std(socket(addr, Type::STREAM, dev)?.into())
                .map_err(io(format!("tcp {addr}")))?,
        );
    }
    let mut tasks = Vec::new();
    for s in udp {
        tasks.push(tokio::spawn(serve_udp(Arc::new(s), state.clone())));
    }
    for l in tcp {
        tasks.push(tokio::spawn(serve_tcp(l, state.clone())));
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
    for t in tasks {
        t.abort();
    }
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
mod tests;
