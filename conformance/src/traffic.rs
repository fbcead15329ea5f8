//! Traffic between namespaces: ping, a TCP server that tells the client who it saw, clients.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::exec::{run_with, CmdOutput};
use crate::netns::Netns;
use crate::BUSYBOX;

/// Deadline for a TCP connect / read in the helpers below.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses `"10.1.2.3"`, `"10.1.2.3/24"`, `"fd00::1"` or `"fd00::1/64"` (as found in CNI
/// results); panics on anything else.
#[track_caller]
pub fn ip_of(addr: &str) -> IpAddr {
    let bare = addr.split('/').next().unwrap_or(addr);
    match bare.parse() {
        Ok(a) => a,
        Err(e) => panic!("not an IP address: {addr:?}: {e}"),
    }
}

/// One ping from `from` (`ip netns exec FROM busybox ping -c1 -W1 ADDR`); the raw output.
#[track_caller]
pub fn ping(from: &Netns, addr: &str) -> CmdOutput {
    let ip = ip_of(addr).to_string();
    run_with(
        from.command(BUSYBOX).args(["ping", "-c1", "-W1", &ip]),
        b"",
        Duration::from_secs(5),
    )
}

/// True if one ping from `from` to `addr` is answered within 1 s. `addr` may carry a
/// `/prefix` (copied from a CNI result).
#[track_caller]
pub fn can_ping(from: &Netns, addr: &str) -> bool {
    ping(from, addr).success()
}

/// Pings up to `tries` times (1 s each) until one is answered: for the first packet of a
/// fresh attachment, which may wait for neighbour discovery / IPv6 DAD.
#[track_caller]
pub fn can_ping_eventually(from: &Netns, addr: &str, tries: u32) -> bool {
    (0..tries.max(1)).any(|_| can_ping(from, addr))
}

fn sockaddr(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip_of(addr), port)
}

/// True if a TCP connection from a socket made in `from` to `addr:port` is accepted within
/// [`TCP_TIMEOUT`].
#[track_caller]
pub fn can_connect_tcp(from: &Netns, addr: &str, port: u16) -> bool {
    let sa = sockaddr(addr, port);
    match from.run_in(move || TcpStream::connect_timeout(&sa, TCP_TIMEOUT)) {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(e) => panic!("cannot enter netns {}: {e}", from.name()),
    }
}

/// Connects from `from` to `addr:port` and returns everything the server sent (until it
/// closed), or `None` if the connection or the read failed within [`TCP_TIMEOUT`]. Against a
/// [`TcpServer`] the reply is `"<token> <peer-ip>:<peer-port>\n"`.
#[track_caller]
pub fn tcp_request(from: &Netns, addr: &str, port: u16) -> Option<String> {
    let sa = sockaddr(addr, port);
    let res = from.run_in(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&sa, TCP_TIMEOUT)?;
        s.set_read_timeout(Some(TCP_TIMEOUT))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    });
    match res {
        Ok(r) => r.ok(),
        Err(e) => panic!("cannot enter netns {}: {e}", from.name()),
    }
}

/// A TCP server listening inside a netns. Each client gets `"<token> <peer>\n"` and the
/// connection is closed; every peer address seen is recorded (to check masquerade / DNAT
/// sources). Stops when dropped.
pub struct TcpServer {
    addr: SocketAddr,
    token: String,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr:port` inside `ns` (`"0.0.0.0"` / `"::"` for any; port 0 picks one).
    #[track_caller]
    pub fn start(ns: &Netns, addr: &str, port: u16, token: &str) -> Self {
        let sa = sockaddr(addr, port);
        let listener = match ns.run_in(move || TcpListener::bind(sa)) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => panic!("cannot listen on {sa} in {}: {e}", ns.name()),
            Err(e) => panic!("cannot enter netns {}: {e}", ns.name()),
        };
        let local = match listener.local_addr().and_then(|a| {
            listener.set_nonblocking(true)?;
            Ok(a)
        }) {
            Ok(a) => a,
            Err(e) => panic!("listener on {sa}: {e}"),
        };
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop, token) = (peers.clone(), stop.clone(), token.to_owned());
            std::thread::spawn(move || serve(listener, &token, &peers, &stop))
        };
        Self {
            addr: local,
            token: token.to_owned(),
            peers,
            stop,
            thread: Some(thread),
        }
    }

    /// The bound address (with the real port if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Source addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        match self.peers.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn serve(listener: TcpListener, token: &str, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                match peers.lock() {
                    Ok(mut p) => p.push(peer),
                    Err(poisoned) => poisoned.into_inner().push(peer),
                }
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(format!("{token} {peer}\n").as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `busybox httpd` serving one file (`/index.html` = `body`) inside a netns, on all
/// addresses; killed when dropped. A real-process server, for what a socket made by the
/// harness ([`TcpServer`]) would not show (e.g. a server process that lives in the pod).
pub struct HttpServer {
    child: std::process::Child,
    port: u16,
    _www: tempfile::TempDir,
}

impl HttpServer {
    /// `ip netns exec NS busybox httpd -f -p PORT -h WWW`; waits (up to 2 s) until
    /// 127.0.0.1:PORT accepts inside `ns`, so `ns` needs lo up (pods have it).
    #[track_caller]
    pub fn start(ns: &Netns, port: u16, body: &str) -> Self {
        let www = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("temp dir for httpd: {e}"),
        };
        if let Err(e) = std::fs::write(www.path().join("index.html"), body) {
            panic!("writing index.html: {e}");
        }
        let www_path = www.path().display().to_string();
        let child = ns
            .command(BUSYBOX)
            .args(["httpd", "-f", "-p", &port.to_string(), "-h", &www_path])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot start busybox httpd in {}: {e}", ns.name()),
        };
        let server = Self {
            child,
            port,
            _www: www,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !can_connect_tcp(ns, "127.0.0.1", port) {
            assert!(
                std::time::Instant::now() < deadline,
                "busybox httpd on port {port} in {} did not come up",
                ns.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ip netns exec FROM curl -sS -m 2 -g http://ADDR:PORT/`: the body, or `None` if the
/// request failed. `addr` may carry a `/prefix`; IPv6 is bracketed. (Not busybox wget: the
/// busybox-static 1.35 wget segfaults on this machine, exit 139.)
#[track_caller]
pub fn http_get(from: &Netns, addr: &str, port: u16) -> Option<String> {
    let url = match ip_of(addr) {
        IpAddr::V4(a) => format!("http://{a}:{port}/"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
    };
    let out = run_with(
        from.command("curl").args(["-sS", "-m", "2", "-g", &url]),
        b"",
        Duration::from_secs(10),
    );
    out.success().then_some(out.stdout)
}

/// The first address of a CNI result, without its prefix length.
#[track_caller]
pub fn first_ip(result: &serde_json::Value) -> String {
    match result["ips"][0]["address"].as_str() {
        Some(a) => ip_of(a).to_string(),
        None => panic!("no address in {result}"),
    }
}

/// True if a TCP connection from `from` to `addr:port` is accepted within 1 s: for the cells
/// that must fail (a dropped SYN costs the whole timeout; on these veths a reachable peer
/// answers in well under a millisecond). Give every such cell a positive control.
#[track_caller]
pub fn reaches(from: &Netns, addr: &str, port: u16) -> bool {
    let sa = SocketAddr::new(ip_of(addr), port);
    match from.run_in(move || TcpStream::connect_timeout(&sa, Duration::from_secs(1)).is_ok()) {
        Ok(ok) => ok,
        Err(e) => panic!("cannot enter netns {}: {e}", from.name()),
    }
}

/// A UDP echo inside a netns, stopped when dropped: every datagram comes back, as
/// `"<token> <payload>"` when `token` is not empty, else as it was sent.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    #[track_caller]
    pub fn start(ns: &Netns, addr: &str, port: u16, token: &str) -> Self {
        let sa = sockaddr(addr, port);
        let sock = match ns.run_in(move || {
            let s = UdpSocket::bind(sa)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok::<_, std::io::Error>(s)
        }) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("cannot bind UDP {sa} in {}: {e}", ns.name()),
            Err(e) => panic!("cannot enter netns {}: {e}", ns.name()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, token) = (stop.clone(), token.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = if token.is_empty() {
                        sock.send_to(&buf[..n], peer)
                    } else {
                        let reply = format!("{token} {}", String::from_utf8_lossy(&buf[..n]));
                        sock.send_to(reply.as_bytes(), peer)
                    };
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A datagram from a fresh socket in `from` to `to` comes back as sent (from a [`UdpEcho`]
/// without token): 3 tries, `wait` each.
#[track_caller]
pub fn udp_echoes(from: &Netns, to: SocketAddr, wait: Duration) -> bool {
    let sent = from.run_in(move || -> std::io::Result<bool> {
        let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 64];
        for i in 0..3u8 {
            s.send_to(&[b'p', i], to)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if buf[..n] == [b'p', i] {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    });
    match sent {
        Ok(Ok(echoed)) => echoed,
        Ok(Err(e)) => panic!("UDP probe from {} to {to}: {e}", from.name()),
        Err(e) => panic!("cannot enter netns {}: {e}", from.name()),
    }
}
