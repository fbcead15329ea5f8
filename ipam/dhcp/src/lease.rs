//! One lease kept by the daemon: a thread that acquires it on the container interface, renews
//! it at T1 (rebinds past T2), gives it back on [`LeaseHandle::stop`] (DHCPRELEASE), and stops
//! when the interface is gone. As the reference (one goroutine locked to an OS thread per
//! lease), but the thread enters the pod netns only to open its sockets.

use std::{
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dhcproto::v4::DhcpOption;
use netops::{Kernel, NetNs, Netlink};

use crate::{
    packet::PacketSocket,
    proto::{Client, Lease, ProtoError},
};

/// RFC 2131's backoff as the reference runs it: 4 quick tries 2 s apart, then 4 s doubling up
/// to `resend_max`, each +-1 s.
const RESEND_FAST_DELAY: Duration = Duration::from_secs(2);
const RESEND_FAST_MAX: u32 = 4;
const RESEND_DELAY0: Duration = Duration::from_secs(4);

/// The daemon's flags that shape every lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `-hostprefix`: prepended to netns paths (and to the socket path).
    pub host_prefix: String,
    /// `-timeout`: how long to wait for each answer.
    pub timeout: Duration,
    /// `-resendmax`: the longest pause between tries.
    pub resend_max: Duration,
    /// `-resendtimeout`: give up after this long.
    pub resend_timeout: Duration,
    /// `-broadcast`: ask servers to broadcast their answers.
    pub broadcast: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host_prefix: String::new(),
            timeout: Duration::from_secs(10),
            resend_max: Duration::from_secs(62),
            resend_timeout: Duration::from_secs(208),
            broadcast: false,
        }
    }
}

/// What one lease is for.
#[derive(Debug, Clone)]
pub struct LeaseParams {
    pub client_id: String,
    /// The pod netns path as the daemon sees it (host prefix applied).
    pub netns: PathBuf,
    pub ifname: String,
    /// The client id option and the `provide`/`request` options.
    pub client_id_option: DhcpOption,
    pub options: Vec<DhcpOption>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("netns {path}: {source}")]
    Netns {
        path: PathBuf,
        source: Box<netops::NetopsError>,
    },
    #[error("error looking up {ifname:?} in {netns}: {reason}")]
    Link {
        ifname: String,
        netns: PathBuf,
        reason: String,
    },
    #[error("{client_id}: {source}")]
    Dhcp {
        client_id: String,
        source: ProtoError,
    },
    #[error("the lease thread ended before answering")]
    Lost,
}

enum Cmd {
    Check,
    Stop,
}

/// A running lease.
pub struct LeaseHandle {
    tx: Sender<Cmd>,
    current: Arc<Mutex<Lease>>,
    thread: JoinHandle<()>,
}

impl LeaseHandle {
    /// Acquire the lease (blocking until bound or given up), then keep it in the background.
    pub fn acquire(params: LeaseParams, settings: Settings) -> Result<Self, LeaseError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("lease {}", params.ifname))
            .spawn(move || keeper(params, settings, rx, ready_tx))
            .map_err(|_| LeaseError::Lost)?;
        match ready_rx.recv() {
            Ok(Ok(current)) => Ok(Self {
                tx,
                current,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(LeaseError::Lost)
            }
        }
    }

    /// The lease as last bound or renewed.
    pub fn lease(&self) -> Option<Lease> {
        self.current.lock().ok().map(|l| l.clone())
    }

    /// Wake the keeper: it looks at the interface again (the reference's `Check`).
    pub fn check(&self) {
        let _ = self.tx.send(Cmd::Check);
    }

    /// False once the keeper gave up (interface gone, lease expired).
    pub fn alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stop keeping the lease and send DHCPRELEASE; returns when done.
    pub fn stop(self) {
        let _ = self.tx.send(Cmd::Stop);
        let _ = self.thread.join();
    }
}

/// The netns and interface of one lease, looked up again for each exchange.
struct Wire<'k> {
    ns: NetNs,
    pod: Netlink<'k>,
    ifname: String,
}

impl Wire<'_> {
    /// A packet socket on the interface, opened inside the pod netns, and its MAC.
    fn socket(&self) -> Result<(PacketSocket, [u8; 6]), String> {
        let link = self
            .pod
            .link(&self.ifname)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no such interface".to_string())?;
        let mac = link
            .mac
            .map(|m| m.0)
            .ok_or_else(|| "the interface has no MAC address".to_string())?;
        let sock = self
            .ns
            .run(|| PacketSocket::open(link.index))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("opening a packet socket: {e}"))?;
        Ok((sock, mac))
    }

    fn exists(&self) -> Result<bool, String> {
        self.pod
            .link(&self.ifname)
            .map(|l| l.is_some())
            .map_err(|e| e.to_string())
    }
}

fn jitter(span: Duration) -> Duration {
    // span +- 1 s; RandomState is seeded from the OS, plenty for spreading retries.
    let r = RandomState::new().hash_one(Instant::now()) % 2000;
    (span + Duration::from_millis(r)).saturating_sub(Duration::from_secs(1))
}

/// Sleep until `until` unless told to stop. `Ok(true)`: a Check arrived (wake early).
fn pause(rx: &Receiver<Cmd>, until: Instant) -> Result<bool, ProtoError> {
    let left = until.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => Err(ProtoError::Stopped),
        Ok(Cmd::Check) => Ok(true),
        Err(RecvTimeoutError::Timeout) => Ok(false),
    }
}

/// Try `f` with the reference's backoff until it works, `settings.resend_timeout` passes, or
/// a Stop arrives.
fn with_retries<T>(
    rx: &Receiver<Cmd>,
    s: &Settings,
    what: &str,
    mut f: impl FnMut() -> Result<T, ProtoError>,
) -> Result<T, ProtoError> {
    let deadline = Instant::now() + s.resend_timeout;
    let mut base = RESEND_DELAY0;
    let mut fast = RESEND_FAST_MAX;
    loop {
        let err = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let delay = if fast > 0 {
            fast -= 1;
            jitter(RESEND_FAST_DELAY)
        } else {
            jitter(base)
        };
        log::warn!("{what}: {err}; retrying in {:.1}s", delay.as_secs_f64());
        let wake = Instant::now() + delay;
        if wake > deadline {
            return Err(err);
        }
        while pause(rx, wake)? {}
        if fast == 0 && base < s.resend_max {
            base = (base * 2).min(s.resend_max);
        }
    }
}

fn keeper(
    params: LeaseParams,
    settings: Settings,
    rx: Receiver<Cmd>,
    ready: mpsc::SyncSender<Result<Arc<Mutex<Lease>>, LeaseError>>,
) {
    let id = params.client_id.clone();
    let fail = |e: LeaseError| {
        let _ = ready.send(Err(e));
    };
    let ns = match NetNs::open(&params.netns) {
        Ok(ns) => ns,
        Err(source) => {
            return fail(LeaseError::Netns {
                path: params.netns.clone(),
                source: Box::new(source),
            })
        }
    };
    let kernel = match Kernel::new() {
        Ok(k) => k,
        Err(source) => {
            return fail(LeaseError::Netns {
                path: params.netns.clone(),
                source: Box::new(source),
            })
        }
    };
    let pod = match kernel.pod(&ns) {
        Ok(p) => p,
        Err(source) => {
            return fail(LeaseError::Netns {
                path: params.netns.clone(),
                source: Box::new(source),
            })
        }
    };
    let link_err = |reason: String| LeaseError::Link {
        ifname: params.ifname.clone(),
        netns: params.netns.clone(),
        reason,
    };
    // The reference brings the interface up when it is down.
    match pod.link(&params.ifname) {
        Ok(Some(l)) if !l.admin_up => {
            log::info!("{id}: link {:?} down, setting it up", params.ifname);
            if let Err(e) = pod.set_up(&l) {
                return fail(link_err(e.to_string()));
            }
        }
        Ok(Some(_)) => {}
        Ok(None) => return fail(link_err("no such interface".into())),
        Err(e) => return fail(link_err(e.to_string())),
    }
    let wire = Wire {
        ns,
        pod,
        ifname: params.ifname.clone(),
    };
    let (_, mac) = match wire.socket() {
        Ok(s) => s,
        Err(e) => return fail(link_err(e)),
    };
    let client = Client {
        mac,
        client_id: params.client_id_option.clone(),
        options: params.options.clone(),
        broadcast: settings.broadcast,
        timeout: settings.timeout,
    };
    let exchange = |f: &dyn Fn(&mut PacketSocket) -> Result<Lease, ProtoError>| {
        let (mut sock, _) = wire.socket().map_err(|e| {
            ProtoError::Io(std::io::Error::other(format!("{}: {e}", params.ifname)))
        })?;
        f(&mut sock)
    };
    log::info!("{id}: acquiring lease");
    let lease = match with_retries(&rx, &settings, &id, || exchange(&|s| client.acquire(s))) {
        Ok(l) => l,
        Err(source) => {
            return fail(LeaseError::Dhcp {
                client_id: id.clone(),
                source,
            })
        }
    };
    log::info!(
        "{id}: lease acquired: {} from {}, renewal in {}s",
        lease.address,
        lease.server,
        lease.renew_after.as_secs()
    );
    let current = Arc::new(Mutex::new(lease));
    if ready.send(Ok(current.clone())).is_err() {
        return;
    }
    maintain(&id, &client, &wire, &settings, &rx, &current, &exchange);
}

fn snapshot(current: &Arc<Mutex<Lease>>) -> Option<Lease> {
    current.lock().ok().map(|l| l.clone())
}

fn commit(current: &Arc<Mutex<Lease>>, lease: Lease) {
    if let Ok(mut l) = current.lock() {
        *l = lease;
    }
}

/// One exchange on a fresh packet socket of the lease's interface.
type Exchange<'a> = dyn Fn(&dyn Fn(&mut PacketSocket) -> Result<Lease, ProtoError>) -> Result<Lease, ProtoError>
    + 'a;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Bound,
    Renewing,
    Rebinding,
}

fn maintain(
    id: &str,
    client: &Client,
    wire: &Wire<'_>,
    settings: &Settings,
    rx: &Receiver<Cmd>,
    current: &Arc<Mutex<Lease>>,
    exchange: &Exchange<'_>,
) {
    let mut state = State::Bound;
    let release = || {
        let Some(lease) = snapshot(current) else {
            return;
        };
        log::info!("{id}: releasing lease {}", lease.address);
        let sent = wire
            .socket()
            .map_err(|e| e.to_string())
            .and_then(|(mut s, _)| client.release(&mut s, &lease).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            log::warn!("{id}: failed to send DHCPRELEASE: {e}");
        }
    };
    loop {
        match wire.exists() {
            Ok(true) => {}
            Ok(false) => {
                log::info!(
                    "{id}: interface {} no longer exists, leaving the lease",
                    wire.ifname
                );
                return;
            }
            Err(e) => log::warn!("{id}: looking up {}: {e}", wire.ifname),
        }
        let Some(lease) = snapshot(current) else {
            return;
        };
        let outcome = match state {
            State::Bound => match pause(rx, lease.renew_at()) {
                Ok(true) => {
                    log::debug!("{id}: checking lease");
                    continue;
                }
                Ok(false) => {
                    log::info!("{id}: renewing lease");
                    state = State::Renewing;
                    continue;
                }
                Err(e) => Err(e),
            },
            State::Renewing => {
                with_retries(rx, settings, id, || exchange(&|s| client.renew(s, &lease)))
            }
            State::Rebinding => with_retries(rx, settings, id, || exchange(&|s| client.acquire(s))),
        };
        match outcome {
            Ok(new) => {
                log::info!(
                    "{id}: lease {} {}, next renewal in {}s",
                    new.address,
                    if state == State::Renewing {
                        "renewed"
                    } else {
                        "rebound"
                    },
                    new.renew_after.as_secs()
                );
                commit(current, new);
                state = State::Bound;
            }
            Err(ProtoError::Stopped) => {
                release();
                return;
            }
            Err(e) => {
                log::warn!("{id}: {e}");
                let now = Instant::now();
                if now >= lease.expires_at() {
                    log::warn!("{id}: lease expired, bringing {} down", wire.ifname);
                    if let Ok(Some(l)) = wire.pod.link(&wire.ifname) {
                        if let Err(e) = wire.pod.set_down(&l) {
                            log::warn!("{id}: setting {} down: {e}", wire.ifname);
                        }
                    }
                    return;
                }
                if state == State::Renewing && now >= lease.rebind_at() {
                    log::info!("{id}: renewal time expired, rebinding");
                    state = State::Rebinding;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_second_of_the_span() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(3) && j < Duration::from_secs(5),
                "{j:?}"
            );
        }
    }

    #[test]
    fn retries_stop_on_stop_and_give_up_at_the_deadline() {
        let s = Settings {
            resend_timeout: Duration::from_millis(1),
            ..Settings::default()
        };
        let (_tx, rx) = mpsc::channel::<Cmd>();
        let mut tries = 0;
        let r: Result<(), _> = with_retries(&rx, &s, "t", || {
            tries += 1;
            Err(ProtoError::Timeout("DHCPOFFER"))
        });
        assert!(matches!(r, Err(ProtoError::Timeout(_))));
        assert_eq!(tries, 1);
        let s = Settings::default();
        let (tx, rx) = mpsc::channel();
        tx.send(Cmd::Stop).ok();
        let r: Result<(), _> = with_retries(&rx, &s, "t", || Err(ProtoError::Nak));
        assert!(matches!(r, Err(ProtoError::Stopped)));
    }
}
