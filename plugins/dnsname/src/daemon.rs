//! The plugin's side of the resolver: is it up, start it, tell it, stop it.
//!
//! The resolver is this same binary run as `dnsname --serve <dir>`, detached (its own session,
//! stdin and stdout on /dev/null, stderr appended to `<dir>/log`). It says `ready` on a pipe
//! once its sockets are bound, so an ADD returns only when the names answer. It holds
//! `<dir>/daemon.lock` for its life: the plugin probes that lock to know whether it is up.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cni_core::{CniError, ErrorCode};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::store::{DaemonConfig, NetDir};

/// How long a starting resolver may take to bind its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping resolver may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The argument that turns the plugin binary into the resolver.
pub const SERVE_FLAG: &str = "--serve";

fn io_err(what: impl std::fmt::Display, e: impl Into<std::io::Error>) -> CniError {
    CniError::io(what, &e.into())
}

/// The resolver's pid if it is up (its lock is held), else `None`.
pub fn running(dir: &NetDir) -> Result<Option<Pid>, CniError> {
    let path = dir.file("daemon.lock");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("opening {}", path.display()), e)),
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        // Nobody holds it: no resolver (our shared lock goes with the file).
        Ok(_free) => Ok(None),
        Err((_, Errno::EWOULDBLOCK)) => {
            let pid_path = dir.file("pid");
            let text = std::fs::read_to_string(&pid_path)
                .map_err(|e| io_err(format!("reading {}", pid_path.display()), e))?;
            let pid: i32 = text.trim().parse().map_err(|_| {
                CniError::new(
                    ErrorCode::Io,
                    format!("{}: not a pid: {text:?}", pid_path.display()),
                )
            })?;
            Ok(Some(Pid::from_raw(pid)))
        }
        Err((_, e)) => Err(io_err(format!("probing {}", path.display()), e)),
    }
}

/// Makes sure a resolver with `cfg` runs: SIGHUP to a running one with the same config
/// (re-read the entries and the upstreams), else (re)start it and wait until it is ready.
pub fn ensure(dir: &NetDir, cfg: &DaemonConfig) -> Result<(), CniError> {
    if let Some(pid) = running(dir)? {
        if dir.config()?.as_ref() == Some(cfg) {
            return hup(pid);
        }
        log::info!("{}: resolver config changed, restarting it", cfg.network);
        stop(dir)?;
    }
    dir.write_config(cfg)?;
    start(dir, &cfg.network)
}

/// SIGHUP: re-read the entries and the upstreams. A resolver that just died is not an error
/// here (the next ADD restarts it; CHECK reports it).
pub fn hup(pid: Pid) -> Result<(), CniError> {
    match kill(pid, Signal::SIGHUP) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io_err(format!("signalling resolver {pid}"), e)),
    }
}

fn start(dir: &NetDir, network: &str) -> Result<(), CniError> {
    let exe = std::env::current_exe().map_err(|e| io_err("finding our own binary", e))?;
    let log_path = dir.file("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| io_err(format!("opening {}", log_path.display()), e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg(SERVE_FLAG)
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Not the runtime's cwd: a long-lived process would pin whatever that is.
        .current_dir("/")
        .env_remove("CNI_COMMAND")
        // stderr is the log file already; info by default: start, stop and reloads.
        .env_remove("CNIRS_LOG_FILE")
        .env(
            "CNIRS_LOG",
            std::env::var("CNIRS_LOG").unwrap_or_else(|_| "info".into()),
        );
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it detaches
    // the resolver from the runtime's session so it outlives the plugin call.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io_err(format!("starting {} {SERVE_FLAG}", exe.display()), e))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(CniError::new(ErrorCode::Io, "resolver has no stdout pipe"));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    if line.trim() == "ready" {
        log::info!("{network}: resolver {} started", child.id());
        // Reaped by init once we exit: it runs in its own session.
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(CniError::new(
        ErrorCode::Io,
        format!("the resolver of network {network} did not start"),
    )
    .with_details(tail(&log_path)))
}

/// The last lines of the resolver's log, for an error message.
fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("; ")
}

/// Stops the resolver (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]); nothing to do if it
/// is not up.
pub fn stop(dir: &NetDir) -> Result<(), CniError> {
    let Some(pid) = running(dir)? else {
        return Ok(());
    };
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while running(dir)?.is_some() {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
