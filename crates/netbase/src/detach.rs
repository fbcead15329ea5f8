//! Work only the kernel can observe, taken off the runtime's clock: the one place the suite
//! forks.
//!
//! Some kernel calls answer at once but make their caller wait afterwards: a veth delete sits
//! in an RCU barrier, and closing an nfnetlink socket after a batch that deleted something
//! waits for nf_tables' destroy work (an RCU grace period), although the
//! commit was already done. During a verb the code that would pay such a wait hands it to the
//! verb's [`Detacher`] instead: [`Detacher::park_fd`] (a socket whose close waits) and
//! [`Detacher::park_job`] (work that needs no state of this process, e.g. "delete the retired
//! link `cnirsx…`"). When the verb has answered, [`Detacher::finish`] forks once: a child in a
//! session of its own, with stdio on `/dev/null` and every inherited fd closed except the
//! parked ones, runs the jobs, closes the parked fds and exits, while this process exits at
//! once, so the runtime's pipes reach EOF without waiting for it.
//!
//! Nothing parked may matter to a later call: the caller makes its effect visible first (a
//! link set down and renamed, an nft commit acknowledged). A child killed half-way leaves
//! only what GC removes (retired links).
//!
//! The detacher is part of a verb's context: the skeleton makes a deferring one for ADD, DEL,
//! CHECK and GC (the release of an nfnetlink socket waits whichever verb closes it) and hands
//! it, through the request, to whatever opens sockets or retires links (`netops`' kernel
//! session and conntrack flush, `nftplan`'s backend). Anything else holds
//! [`Detacher::immediate`] (the default): parked fds are closed and jobs run right away.

use std::{
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex},
};

/// Test hook: when set to a file path, [`Detacher::finish`] appends the detached process's pid
/// to it (one line, written before this process returns) and the detached process waits
/// forever instead of doing its work, so a test can look at the state in between and SIGKILL
/// it.
pub const STALL_ENV: &str = "CNIRS_RETIRE_STALL";

/// A piece of work for the detached process. It runs after the fd cleanup: it must open
/// whatever it needs itself.
pub type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Parked {
    deferred: bool,
    fds: Vec<OwnedFd>,
    jobs: Vec<Job>,
}

/// Where a verb parks work only the kernel can observe (module doc). A cheap handle: clones
/// park into the same list.
#[derive(Clone, Default)]
pub struct Detacher(Arc<Mutex<Parked>>);

impl std::fmt::Debug for Detacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.parked();
        f.debug_struct("Detacher")
            .field("deferred", &p.deferred)
            .field("fds", &p.fds.len())
            .field("jobs", &p.jobs.len())
            .finish()
    }
}

impl Detacher {
    /// Parked fds are closed and parked jobs run at once (tools, daemons, tests).
    pub fn immediate() -> Self {
        Self::default()
    }

    /// Parked work waits for [`Detacher::finish`] (the skeleton's, for a verb).
    pub fn deferred() -> Self {
        let d = Self::default();
        d.parked().deferred = true;
        d
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether parked work waits for [`Detacher::finish`].
    pub fn is_deferred(&self) -> bool {
        self.parked().deferred
    }

    /// How many fds and jobs wait for [`Detacher::finish`] (tests).
    pub fn pending(&self) -> (usize, usize) {
        let p = self.parked();
        (p.fds.len(), p.jobs.len())
    }

    /// Close `fd` in the detached process (now, when not deferred).
    pub fn park_fd(&self, fd: OwnedFd) {
        let mut p = self.parked();
        if p.deferred {
            p.fds.push(fd);
        } else {
            drop(p);
            drop(fd);
        }
    }

    /// Run `job` in the detached process (now, when not deferred).
    pub fn park_job(&self, job: impl FnOnce() + Send + 'static) {
        let mut p = self.parked();
        if p.deferred {
            p.jobs.push(Box::new(job));
        } else {
            drop(p);
            job();
        }
    }

    /// Hand everything parked to a detached process and return at once; with nothing parked,
    /// nothing happens. When it cannot detach (fork fails, or this process has other threads,
    /// where fork is unsafe) the work runs here. Call it once, after the answer was written;
    /// the detacher parks nothing afterwards.
    pub fn finish(&self) {
        let (fds, jobs) = {
            let mut p = self.parked();
            p.deferred = false;
            (std::mem::take(&mut p.fds), std::mem::take(&mut p.jobs))
        };
        if fds.is_empty() && jobs.is_empty() {
            return;
        }
        let stall = std::env::var_os(STALL_ENV);
        let keep: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut work = Some((fds, jobs));
        let detached = single_threaded()
            && spawn_detached(&keep, stall.as_deref(), || {
                if let Some((fds, jobs)) = work.take() {
                    run(fds, jobs, true);
                }
            });
        // Detached: the child owns its copies; closing ours releases nothing.
        if let Some((fds, jobs)) = work.take() {
            if detached {
                drop((fds, jobs));
            } else {
                run(fds, jobs, false);
            }
        }
    }
}

fn run(fds: Vec<OwnedFd>, jobs: Vec<Job>, detached: bool) {
    for job in jobs {
        job();
    }
    if detached && !fds.is_empty() {
        settle();
    }
    drop(fds);
}

/// Wait until nf_tables' destroy work of our commits has most likely run, before the parked
/// sockets close. The release of any nfnetlink socket takes the netns' nf_tables commit mutex
/// and, while destroy work is pending, flushes it (an RCU grace period) with the mutex held:
/// closed at once, our sockets would make the next plugin's commit wait for it.
/// `membarrier(GLOBAL)` is one grace period (`synchronize_rcu`); the sleep covers the work
/// item's own and lets the runtime's next call (an ADD right after this DEL) finish first. How
/// the length of the sleep was chosen: docs/performance.md.
#[allow(unsafe_code)]
fn settle() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; an error (EINVAL on nohz_full) only means no wait.
    let ok = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0;
    std::thread::sleep(std::time::Duration::from_millis(if ok { 60 } else { 100 }));
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|v| v.trim() == "1")
        })
        .unwrap_or(false)
}

/// The fd ranges to close so that only 0-2 and `keep` stay open: `(first, last)` inclusive.
fn close_ranges(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut out = Vec::new();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            out.push((from, fd - 1));
        }
        from = fd + 1;
    }
    out.push((from, u32::MAX));
    out
}

/// Run `f` in a child in a session of its own (signals to the runtime's process group do not
/// reach it), with stdio on /dev/null and every fd but `keep` closed (so the runtime's pipes
/// close when this process exits and no lock is inherited). This process does not wait for
/// it: when it exits the child is re-parented (to init or the runtime's subreaper, which reaps
/// it). With `stall`, the child's pid is appended to that file before this returns, and the
/// child waits forever instead of running `f`. Returns false (and `f` has not run) when the
/// fork failed.
#[allow(unsafe_code, clippy::exit)]
fn spawn_detached(keep: &[RawFd], stall: Option<&std::ffi::OsStr>, f: impl FnOnce()) -> bool {
    let ranges = close_ranges(keep);
    // SAFETY: the caller checked this process has one thread, so the child may run ordinary
    // code (allocate, take locks). The child only ever leaves through `_exit`, never
    // returning into the caller.
    unsafe {
        match libc::fork() {
            -1 => false,
            0 => {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
                for (first, last) in ranges {
                    libc::syscall(libc::SYS_close_range, first, last, 0u32);
                }
                if stall.is_some() {
                    loop {
                        libc::pause();
                    }
                }
                f();
                libc::_exit(0)
            }
            child => {
                if let Some(path) = stall {
                    append_pid(path, child);
                }
                true
            }
        }
    }
}

fn append_pid(path: &std::ffi::OsStr, pid: libc::pid_t) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{pid}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_ranges_keep_stdio_and_the_parked_fds() {
        assert_eq!(close_ranges(&[]), vec![(3, u32::MAX)]);
        assert_eq!(close_ranges(&[5]), vec![(3, 4), (6, u32::MAX)]);
        assert_eq!(close_ranges(&[3, 4, 9, 1]), vec![(5, 8), (10, u32::MAX)]);
        assert_eq!(close_ranges(&[7, 7, 6]), vec![(3, 5), (8, u32::MAX)]);
    }

    #[test]
    fn an_immediate_detacher_runs_parked_work_at_once() {
        let d = Detacher::immediate();
        let (tx, rx) = std::sync::mpsc::channel();
        d.park_job(move || tx.send(1).unwrap_or(()));
        assert_eq!(rx.try_recv().ok(), Some(1));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        d.park_fd(OwnedFd::from(a));
        // The peer sees EOF: our end was closed, not parked.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0);
        assert_eq!(d.pending(), (0, 0));
    }

    #[test]
    fn a_deferred_detacher_keeps_work_until_finish_and_clones_share_it() {
        let d = Detacher::deferred();
        let clone = d.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        clone.park_job(move || tx.send(1).unwrap_or(()));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        clone.park_fd(OwnedFd::from(a));
        assert!(rx.try_recv().is_err(), "the job waits for finish");
        assert_eq!(d.pending(), (1, 1));
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert!(
            std::io::Read::read(&mut &b, &mut buf).is_err(),
            "the parked end is still open"
        );
        assert!(d.is_deferred());
    }
}
