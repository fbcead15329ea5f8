//! Running child processes with a deadline, and what they returned.

use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Default deadline for one child process (a plugin, cnitool, `ip`, `nft`...).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The PATH children get: the environment is cleared for every child so runs are
/// reproducible, but the reference plugins look up `iptables` & co. through PATH.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a finished child returned.
#[derive(Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code; `None` if killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, if it is JSON.
    pub json: Option<Value>,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// The child was killed because it outlived its deadline.
    pub timed_out: bool,
}

impl CmdOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the exit code is 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics with the whole output if the exit code is 0.
    #[track_caller]
    pub fn assert_err(&self) -> &Self {
        assert!(!self.success(), "command should have failed:\n{self}");
        self
    }

    /// stdout as JSON; panics with the whole output if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> &Value {
        match &self.json {
            Some(v) => v,
            None => panic!("stdout is not JSON:\n{self}"),
        }
    }

    /// The CNI error code on stdout (`{"code": N, "msg": ...}`), if any.
    pub fn cni_error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.cmdline)?;
        writeln!(
            f,
            "exit: {:?}{} in {:?}",
            self.code,
            if self.timed_out {
                " (timed out, killed)"
            } else {
                ""
            },
            self.elapsed
        )?;
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

impl fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Builds a command with a cleared environment (only PATH, RUST_LOG, RUST_BACKTRACE kept).
pub fn command<S: AsRef<OsStr>>(program: S) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", CHILD_PATH);
    for key in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with `stdin` on its standard input, killing it after `timeout`.
/// Panics only if the program cannot be started (missing tool: a broken test machine).
#[track_caller]
pub fn run_with(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> CmdOutput {
    let cmdline = describe(cmd);
    let start = Instant::now();
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot start `{cmdline}`: {e} (is the tool installed? see .ci/run)"),
    };
    let pid = child.id();
    if let Some(mut input) = child.stdin.take() {
        // A child that exits without reading its stdin gives EPIPE: not our failure.
        let _ = input.write_all(stdin);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let mut timed_out = false;
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            timed_out = true;
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
            // (the waiter thread is still blocked in wait), so the pid cannot be reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            match rx.recv() {
                Ok(r) => r,
                Err(e) => panic!("`{cmdline}`: waiter thread lost: {e}"),
            }
        }
    };
    let elapsed = start.elapsed();
    let out = match result {
        Ok(o) => o,
        Err(e) => panic!("`{cmdline}`: wait failed: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim()).ok();
    CmdOutput {
        cmdline,
        code: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
        elapsed,
        timed_out,
    }
}

/// [`run_with`] with empty stdin and [`DEFAULT_TIMEOUT`].
#[track_caller]
pub fn run(cmd: &mut Command) -> CmdOutput {
    run_with(cmd, b"", DEFAULT_TIMEOUT)
}

/// Runs `program args...` (cleared environment) and panics with its output unless it succeeds.
#[track_caller]
pub fn run_ok(program: &str, args: &[&str]) -> CmdOutput {
    let out = run(command(program).args(args));
    out.assert_ok();
    out
}

/// `command -v NAME`: true if `name` is an executable in [`CHILD_PATH`] (or a path to one).
pub fn have_tool(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        return is_exec(std::path::Path::new(name));
    }
    CHILD_PATH
        .split(':')
        .any(|dir| is_exec(&std::path::Path::new(dir).join(name)))
}

/// Poll `f` until it holds or `deadline` passes (every 20 ms); the time it took.
pub fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` up to ~`tries` x 100 ms; true as soon as it holds.
pub fn eventually(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
