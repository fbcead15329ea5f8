//! DEL without the kernel's wait: a veth delete spends 15-30 ms in an RCU barrier, while
//! `down` + rename costs ~1 ms. [`Netlink::retire_veth`] makes the pair unobservable at once
//! (both ends down, host end off its bridge, both renamed to a name no ADD derives, so the
//! interface names are free again) and leaves the delete itself to a detached process. A
//! retired link a killed deleter left behind is removed by [`Netlink::delete_retired`] (GC).

use futures::TryStreamExt;
use rtnetlink::{packet_route::link::LinkMessage, LinkUnspec};

use super::{link_from_msg, Kernel, Netlink};
use crate::NetopsError;

/// Prefix of retired link names. ADD derives `veth<hex>` (bridge) or the runtime's ifname
/// (`eth0`…), never this prefix.
pub const RETIRED_PREFIX: &str = "cnirsx";

/// Test hook: when set to a file path, the detached deleter writes its pid there and waits
/// forever instead of deleting (so a test can SIGKILL it and check GC cleans up).
pub const STALL_ENV: &str = "CNIRS_RETIRE_STALL";

/// The retired name of the link with this index: unique in its netns (the kernel never
/// reuses a live index), 14 bytes.
pub fn retired_name(index: u32) -> String {
    format!("{RETIRED_PREFIX}{index:08x}")
}

impl Netlink<'_> {
    fn retire(&self, index: u32, name: &str) -> Result<String, NetopsError> {
        // Down and off the bridge first: no frame reaches the pod after this message.
        self.set_link(
            "retire (down, nomaster)",
            name,
            LinkUnspec::new_with_index(index)
                .down()
                .nocontroller()
                .build(),
        )?;
        let new = retired_name(index);
        self.set_link(
            "retire (rename)",
            name,
            LinkUnspec::new_with_index(index).name(new.clone()).build(),
        )?;
        Ok(new)
    }

    /// Take the veth `host_name` (in this host netns) out of service at once and delete it in a
    /// detached process. `pod` is the pod netns handle and the pod-side ifname when the netns
    /// still exists: that end is set down and renamed too, so a new ADD with the same ifname in
    /// the same netns works right away. `Ok(false)` if there is no link `host_name`.
    ///
    /// When the deleter cannot be detached (fork fails, or this process has other threads, where
    /// fork is unsafe), the delete runs here, synchronously.
    pub fn retire_veth(
        &self,
        host_name: &str,
        pod: Option<(&Netlink<'_>, &str)>,
    ) -> Result<bool, NetopsError> {
        let Some(host) = self.link(host_name)? else {
            return Ok(false);
        };
        let retired = self.retire(host.index, host_name)?;
        if let Some((pod, ifname)) = pod {
            if let Some(peer) = pod.link(ifname)? {
                if peer.kind.as_deref() == Some("veth") {
                    pod.retire(peer.index, ifname)?;
                }
            }
        }
        if !spawn_detached(|| {
            if let Ok(path) = std::env::var(STALL_ENV) {
                let _ = std::fs::write(path, std::process::id().to_string());
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            if let Ok(k) = Kernel::new() {
                let _ = k.host().delete_link(&retired);
            }
        }) {
            self.delete_link(&retired)?;
        }
        Ok(true)
    }

    /// Delete every retired link in this netns (left behind by a deleter that was killed).
    /// Returns how many were deleted; one another deleter removed first is not an error.
    pub fn delete_retired(&self) -> Result<usize, NetopsError> {
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(|source| NetopsError::Dump {
                what: "links",
                netns: self.label.clone(),
                source: Box::new(source),
            })?;
        let mut n = 0;
        for l in msgs.into_iter().map(link_from_msg) {
            if l.name.starts_with(RETIRED_PREFIX) && self.delete_link(&l.name)? {
                n += 1;
            }
        }
        Ok(n)
    }
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

/// Run `f` in a grandchild in its own session, with stdio on /dev/null and every other fd
/// closed (so the runtime's pipes close when this process exits, and no lock is inherited).
/// Returns false (and runs nothing) when it could not detach.
#[allow(unsafe_code, clippy::exit)]
fn spawn_detached(f: impl FnOnce()) -> bool {
    if !single_threaded() {
        return false;
    }
    // SAFETY: this process has one thread (checked above), so the child may run ordinary code.
    // The children only ever leave through `_exit`, never returning into the caller.
    unsafe {
        match libc::fork() {
            -1 => false,
            0 => {
                libc::setsid();
                // A failed second fork runs `f` here: the caller then waits for it.
                if matches!(libc::fork(), 0 | -1) {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    if null >= 0 {
                        for fd in 0..3 {
                            libc::dup2(null, fd);
                        }
                    }
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    f();
                }
                libc::_exit(0)
            }
            pid => {
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) == -1
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_names_are_valid_unique_and_never_derived_by_add() {
        for i in [0, 1, 42, u32::MAX] {
            let n = retired_name(i);
            assert!(crate::validate_ifname(&n).is_ok(), "{n}");
            assert!(n.len() <= 15, "{n}");
            assert!(!n.starts_with("veth") && !n.starts_with("eth"), "{n}");
        }
        assert_ne!(retired_name(1), retired_name(2));
    }
}
