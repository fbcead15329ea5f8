//! `dhcp daemon`: keeps the leases. Same flags as the reference (Go `flag` syntax:
//! `-socketpath PATH`, `-socketpath=PATH`, `--socketpath=PATH`), the same socket
//! (`/run/cni/dhcp.sock`, or the systemd socket-activation fd), the same net/rpc protocol
//! ([`crate::rpc`]).

use std::{
    collections::HashMap,
    io::{BufReader, BufWriter, Write},
    os::{
        fd::FromRawFd,
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use gobwire::{StreamDecoder, StreamEncoder};
use nix::sys::signal::{SigSet, Signal};

use crate::{
    config,
    lease::{LeaseHandle, LeaseParams, Settings},
    rpc::{self, CmdArgs, Empty, GoResult, RpcError, RpcRequest, RpcResponse},
};

/// The daemon's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Flags {
    pub pidfile: Option<PathBuf>,
    pub socket_path: String,
    pub settings: Settings,
}

/// A Go `time.Duration` string: `10s`, `1m30s`, `1.5h`, `250ms`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parse the arguments after `daemon` as Go's `flag` package would.
pub fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags {
        pidfile: None,
        socket_path: String::new(),
        settings: Settings::default(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "broadcast" {
            f.settings.broadcast = match inline.as_deref() {
                None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for -broadcast")),
            };
            continue;
        }
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("flag needs an argument: -{name}")),
            }
        };
        match name {
            "pidfile" => {
                f.pidfile = Some(PathBuf::from(value()?)).filter(|p| !p.as_os_str().is_empty())
            }
            "hostprefix" => f.settings.host_prefix = value()?,
            "socketpath" => f.socket_path = value()?,
            "timeout" => f.settings.timeout = parse_go_duration(&value()?)?,
            "resendmax" => f.settings.resend_max = parse_go_duration(&value()?)?,
            "resendtimeout" => f.settings.resend_timeout = parse_go_duration(&value()?)?,
            other => return Err(format!("flag provided but not defined: -{other}")),
        }
    }
    if f.socket_path.is_empty() {
        f.socket_path = config::DEFAULT_SOCKET_PATH.to_string();
    }
    Ok(f)
}

/// The leases, by client id. Each entry has its own lock, held while acquiring or releasing,
/// so two calls for one client never race while calls for others go on.
#[derive(Default)]
pub struct Daemon {
    settings: Settings,
    leases: Mutex<HashMap<String, Arc<Mutex<Option<LeaseHandle>>>>>,
}

impl Daemon {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            leases: Mutex::default(),
        }
    }

    fn slot(&self, client_id: &str) -> Arc<Mutex<Option<LeaseHandle>>> {
        let mut m = match self.leases.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(client_id.to_string()).or_default().clone()
    }

    fn parse(args: &CmdArgs) -> Result<(config::DhcpConfig, String), String> {
        let conf =
            config::parse(&args.stdin_data).map_err(|e| format!("error parsing netconf: {e}"))?;
        let id = config::client_id(&args.container_id, &conf.network, &args.ifname);
        Ok((conf, id))
    }

    /// `DHCP.Allocate`: the lease for (container, network, ifname), acquired now or kept from
    /// before (then the keeper is woken to look at the interface).
    pub fn allocate(&self, args: &CmdArgs) -> Result<GoResult, String> {
        let (conf, id) = Self::parse(args)?;
        let options = config::prepare_options(&args.args, &conf.provide, &conf.request)
            .map_err(|e| e.to_string())?;
        let slot = self.slot(&id);
        let mut held = match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(h) = held.as_ref().filter(|h| h.alive()) {
            h.check();
        } else {
            if let Some(dead) = held.take() {
                dead.stop();
            }
            let netns = PathBuf::from(format!("{}{}", self.settings.host_prefix, args.netns));
            let acquired = LeaseHandle::acquire(
                LeaseParams {
                    client_id: id.clone(),
                    netns,
                    ifname: args.ifname.clone(),
                    client_id_option: config::client_id_option(&id),
                    options,
                },
                self.settings.clone(),
            );
            match acquired {
                Ok(h) => *held = Some(h),
                Err(e) => {
                    drop(held);
                    drop(slot);
                    self.forget_if_idle(&id);
                    return Err(e.to_string());
                }
            }
        }
        let lease = held
            .as_ref()
            .and_then(LeaseHandle::lease)
            .ok_or_else(|| format!("{id}: lease lost"))?;
        Ok(GoResult::from_result(&lease.result(conf.priority)))
    }

    /// `DHCP.Release`: stop keeping the lease and send DHCPRELEASE. Unknown: nothing to do.
    pub fn release(&self, args: &CmdArgs) -> Result<(), String> {
        let (_, id) = Self::parse(args)?;
        let slot = self.slot(&id);
        let handle = match slot.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            h.stop();
        }
        drop(slot);
        self.forget_if_idle(&id);
        Ok(())
    }

    /// Drop the entry of `id` when it holds no lease and no other call holds it (one may be
    /// acquiring again).
    fn forget_if_idle(&self, id: &str) {
        if let Ok(mut m) = self.leases.lock() {
            let idle = m.get(id).is_some_and(|s| {
                Arc::strong_count(s) == 1 && s.try_lock().is_ok_and(|g| g.is_none())
            });
            if idle {
                m.remove(id);
            }
        }
    }
}

/// Serve one connection: the HTTP CONNECT, then calls until the client closes.
pub fn serve(daemon: &Daemon, stream: &UnixStream) -> Result<(), RpcError> {
    let mut r = BufReader::new(stream);
    let mut w = BufWriter::new(stream);
    let head = rpc::read_head(&mut r)?;
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        write!(
            w,
            "HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n405 must CONNECT\n"
        )?;
        w.flush()?;
        return Err(RpcError::Handshake(format!("{method} {path}")));
    }
    if path != rpc::RPC_PATH {
        write!(w, "HTTP/1.0 404 Not Found\r\n\r\n")?;
        w.flush()?;
        return Err(RpcError::Handshake(format!("CONNECT {path}")));
    }
    write!(w, "{}\n\n", rpc::CONNECTED)?;
    w.flush()?;
    drop(w);
    let mut dec = StreamDecoder::new(r);
    // Each encode is one write of a whole message: no buffer to flush.
    let mut enc = StreamEncoder::new(stream);
    loop {
        let Some(req) = dec.decode::<RpcRequest>()? else {
            return Ok(());
        };
        let args: CmdArgs = dec.decode()?.ok_or_else(|| {
            RpcError::Answer("connection closed before the call's argument".into())
        })?;
        log::info!(
            "{} {}/{} in {}",
            req.service_method,
            args.container_id,
            args.ifname,
            args.netns
        );
        let mut resp = RpcResponse {
            service_method: req.service_method.clone(),
            seq: req.seq,
            error: String::new(),
        };
        match req.service_method.as_str() {
            rpc::ALLOCATE => match daemon.allocate(&args) {
                Ok(result) => {
                    enc.encode(&resp)?;
                    enc.encode(&result)?;
                }
                Err(e) => {
                    log::warn!("{}: {e}", req.service_method);
                    resp.error = e;
                    enc.encode(&resp)?;
                    enc.encode(&Empty {})?;
                }
            },
            rpc::RELEASE => {
                if let Err(e) = daemon.release(&args) {
                    resp.error = e;
                }
                enc.encode(&resp)?;
                enc.encode(&Empty {})?;
            }
            other => {
                resp.error = format!("rpc: can't find method {other}");
                enc.encode(&resp)?;
                enc.encode(&Empty {})?;
            }
        }
    }
}

/// The listener: the systemd socket-activation fd when one is passed (`LISTEN_PID` is us,
/// `LISTEN_FDS=1`), else a fresh socket at `path` (its directory made 0700). A stale socket
/// file nobody answers on is replaced; a live one is refused (another daemon runs).
fn listen(path: &Path) -> Result<UnixListener, String> {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    match std::env::var("LISTEN_FDS").ok().filter(|_| ours).as_deref() {
        Some("1") => {
            // SAFETY: systemd passes the listening socket as fd 3 (SD_LISTEN_FDS_START) and
            // nothing else in this process owns it.
            return Ok(unsafe { UnixListener::from_raw_fd(3) });
        }
        Some(n) => {
            return Err(format!(
                "Too many ({n}) FDs passed through socket activation"
            ))
        }
        None => {}
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "{}: a DHCP daemon is already listening there",
                    path.display()
                ))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    UnixListener::bind(path).map_err(|e| format!("Error getting listener: {}: {e}", path.display()))
}

/// `dhcp daemon ARGS...`; returns the exit code. Runs until SIGTERM or SIGINT, then removes
/// its socket and pidfile. Leases are not released on exit (as the reference): pods keep their
/// addresses until the lease ends.
pub fn main(args: &[String]) -> i32 {
    let flags = match parse_flags(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // Block the stop signals in every thread; the main thread waits for them below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        log::error!("blocking signals: {e}");
        return 1;
    }
    if let Some(p) = &flags.pidfile {
        if !p.is_absolute() {
            log::error!("Error writing pidfile {}: path not absolute", p.display());
            return 1;
        }
        if let Err(e) = std::fs::write(p, std::process::id().to_string()) {
            log::error!("Error writing pidfile {}: {e}", p.display());
            return 1;
        }
    }
    let socket = PathBuf::from(format!(
        "{}{}",
        flags.settings.host_prefix, flags.socket_path
    ));
    let listener = match listen(&socket) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    log::info!("dhcp daemon listening on {}", socket.display());
    let daemon = Arc::new(Daemon::new(flags.settings.clone()));
    let accept = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                };
                let d = daemon.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpc".into())
                    .spawn(move || {
                        if let Err(e) = serve(&d, &stream) {
                            log::warn!("rpc connection: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("cannot start a connection thread: {e}");
                }
            }
        });
    if let Err(e) = accept {
        log::error!("cannot start the accept thread: {e}");
        return 1;
    }
    let code = match stop.wait() {
        Ok(sig) => {
            log::info!("{sig}: stopping");
            0
        }
        Err(e) => {
            log::error!("waiting for signals: {e}");
            1
        }
    };
    let _ = std::fs::remove_file(&socket);
    if let Some(p) = &flags.pidfile {
        let _ = std::fs::remove_file(p);
    }
    code
}

#[cfg(test)]
mod tests;
