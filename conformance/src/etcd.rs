//! Real etcd clusters for tests: 1 or 3 members (Debian's etcd 3.4), each on 127.0.0.1 with
//! free high ports or inside a given netns on a given address, data in a temp dir, stopped by
//! PID on Drop. Never touches the machine's own etcd (port 2379, /var/lib/etcd).
//!
//! ```no_run
//! use conformance::etcd::{EtcdCluster, MemberSpec};
//! // Three members on loopback; kill one by PID mid-test.
//! let c = EtcdCluster::local(3);
//! let client = c.client();
//! client.put("/t/a", "1", None).unwrap();
//! c.kill(0);
//! assert!(client.get("/t/a").unwrap().is_some());
//! // Or one member per host netns, on the host's underlay address (ports 2379/2380 there):
//! # let (ns_a, ns_b, ns_c) = (std::path::PathBuf::new(), std::path::PathBuf::new(), std::path::PathBuf::new());
//! let c = EtcdCluster::start(vec![
//!     MemberSpec::in_netns("a", &ns_a, "10.240.0.1".parse().unwrap()),
//!     MemberSpec::in_netns("b", &ns_b, "10.240.0.2".parse().unwrap()),
//!     MemberSpec::in_netns("c", &ns_c, "10.240.0.3".parse().unwrap()),
//! ]);
//! let urls = c.endpoints(); // http://10.240.0.N:2379, reachable from those netns only
//! ```
//!
//! Members started here die with the test process even when it is killed (PR_SET_PDEATHSIG
//! from a spawner thread that lives as long as the process), and [`EtcdCluster::shared_local`]
//! gives a test file one cluster whose members and dir go at exit.

#![allow(clippy::expect_used)] // test harness: a failure to set up is a test failure

use std::{
    fs::File,
    net::{IpAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use crate::netns::in_netns;

/// One member to start.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    /// Run inside this netns (its address must already be up there); None: the test's netns.
    pub netns: Option<PathBuf>,
    pub ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
}

impl MemberSpec {
    /// A member inside `netns` on `ip`, ports 2379 (clients) and 2380 (peers).
    pub fn in_netns(name: &str, netns: &Path, ip: IpAddr) -> Self {
        MemberSpec {
            name: name.into(),
            netns: Some(netns.to_path_buf()),
            ip,
            client_port: 2379,
            peer_port: 2380,
        }
    }

    /// A member on 127.0.0.1 with two free high ports.
    pub fn local(name: &str) -> Self {
        MemberSpec {
            name: name.into(),
            netns: None,
            ip: IpAddr::from([127, 0, 0, 1]),
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    fn host(&self) -> String {
        match self.ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }

    /// `http://ip:client_port`.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host(), self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host(), self.peer_port)
    }
}

/// A port the kernel just handed out (bound then released; a collision is unlikely).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

struct Member {
    spec: MemberSpec,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed by PID and the data removed on Drop.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Mutex<Vec<Member>>,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl EtcdCluster {
    /// `n` members on 127.0.0.1 (1 or 3, usually), started and serving.
    pub fn local(n: usize) -> Self {
        Self::start(
            (0..n)
                .map(|i| MemberSpec::local(&format!("m{i}")))
                .collect(),
        )
    }

    /// One single-member cluster per test process, stopped at exit: give each test its own
    /// key prefix.
    pub fn shared_local() -> &'static EtcdCluster {
        static SHARED: OnceLock<EtcdCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            extern "C" fn stop_shared() {
                if let Some(c) = SHARED.get() {
                    c.stop_all();
                }
            }
            // SAFETY: atexit(3) with a plain extern "C" fn that takes no arguments; it runs
            // once when the test harness calls exit() after the last test.
            unsafe { libc::atexit(stop_shared) };
            EtcdCluster::local(1)
        })
    }

    /// Starts every member (all at once, as a new cluster) and waits until each serves a
    /// linearizable read. Panics with the members' logs if they don't within 30 s.
    pub fn start(specs: Vec<MemberSpec>) -> Self {
        crate::require_tools(&["etcd"]);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let token = format!("cnirs-t{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{token}-etcd"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd test dir");
        let members = specs
            .into_iter()
            .map(|spec| Member {
                data_dir: dir.join(format!("{}.data", spec.name)),
                log: dir.join(format!("{}.log", spec.name)),
                spec,
                child: None,
            })
            .collect();
        let c = EtcdCluster {
            dir,
            token,
            members: Mutex::new(members),
        };
        let count = c.len();
        for i in 0..count {
            c.spawn(i, "new");
        }
        for i in 0..count {
            c.wait_serving(i);
        }
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock().iter().map(|m| m.spec.client_url()).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.lock()[i].spec.client_url()
    }

    /// A client over every member (usable from the netns the members listen in).
    pub fn client(&self) -> etcd::Client {
        etcd::Client::new(&self.endpoints()).expect("etcd client")
    }

    /// Member `i`'s PID while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.lock()[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.lock()[i].log).unwrap_or_default()
    }

    /// The index of the member that leads now (waits up to 10 s for an election).
    pub fn leader(&self) -> usize {
        let c = self.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = (0..self.len()).find(|&i| c.is_leader(i) == Some(true)) {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i` by PID and reaps it.
    pub fn kill(&self, i: usize) {
        let mut members = self.lock();
        if let Some(mut child) = members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir (after [`EtcdCluster::kill`]) and waits until it
    /// serves.
    pub fn restart(&self, i: usize) {
        assert!(self.pid(i).is_none(), "member {i} is still running");
        self.spawn(i, "existing");
        self.wait_serving(i);
    }

    fn spawn(&self, i: usize, state: &str) {
        let mut members = self.lock();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.spec.name, m.spec.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &mut members[i];
        let spec = &m.spec;
        let mut cmd = match &spec.netns {
            Some(ns) => {
                // nsenter execs etcd after setns: the PID we hold is etcd's.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg("etcd");
                c
            }
            None => Command::new("etcd"),
        };
        let log = File::create(&m.log).expect("create etcd log");
        let log2 = log.try_clone().expect("dup etcd log");
        cmd.args(["--name", &spec.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &spec.client_url()])
            .args(["--advertise-client-urls", &spec.client_url()])
            .args(["--listen-peer-urls", &spec.peer_url()])
            .args(["--initial-advertise-peer-urls", &spec.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // Idle watches hear from the server every second, so a client notices a dead
            // member through its read timeout.
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        m.child = Some(spawn_tied_to_process(cmd));
    }

    /// Waits until member `i` answers a linearizable read (so it has a leader).
    pub fn wait_serving(&self, i: usize) {
        let (url, netns) = {
            let m = &self.lock()[i];
            (m.spec.client_url(), m.spec.netns.clone())
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe_url = url.clone();
            let probe = move || {
                let opts = etcd::Options {
                    retry_deadline: Duration::from_millis(300),
                    ..etcd::Options::default()
                };
                etcd::Client::with_options(&[probe_url], opts)
                    .and_then(|c| c.get("/cnirs-test-probe"))
                    .is_ok()
            };
            let ok = match &netns {
                Some(ns) => in_netns(ns, probe).unwrap_or(false),
                None => probe(),
            };
            if ok {
                return;
            }
            let exited = {
                let mut members = self.lock();
                members[i]
                    .child
                    .as_mut()
                    .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            };
            if exited == Some(true) || Instant::now() > deadline {
                panic!(
                    "etcd member {i} ({url}) did not start serving; logs:\n{}",
                    (0..self.len())
                        .map(|j| format!("--- {j}\n{}", self.log(j)))
                        .collect::<String>()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills every member by PID and removes the data.
    fn stop_all(&self) {
        let mut members = self.lock();
        for m in members.iter_mut() {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Spawns `cmd` from a thread that lives as long as the process, with PR_SET_PDEATHSIG =
/// SIGKILL: the child dies with the test process even if the process is killed (the signal
/// follows the death of the spawning *thread*, hence the long-lived thread).
pub fn spawn_tied_to_process(cmd: Command) -> Child {
    type Req = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the
                // child's own attributes; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .expect("etcd spawner thread is gone");
    reply_rx
        .recv()
        .expect("etcd spawner thread is gone")
        .expect("spawn etcd")
}
