//! [`LinkWatch`]: "did any link of this netns appear, change or go since I last asked?",
//! answered from an `RTMGRP_LINK` subscription without blocking. The overlay's agent polls it
//! to program a network's new VXLAN device at once instead of at its next resync.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `RTMGRP_LINK`: link notifications (RTM_NEWLINK, RTM_DELLINK).
const RTMGRP_LINK: u32 = 1;

/// A non-blocking `NETLINK_ROUTE` socket subscribed to link notifications of the netns the
/// creating thread is in.
pub struct LinkWatch(OwnedFd);

impl LinkWatch {
    /// Subscribe (in the current thread's netns). Equivalent: `ip monitor link`.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; we set the family and groups, and pass its
        // exact size.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = RTMGRP_LINK;
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkWatch(fd))
    }

    /// True when a link notification arrived since the last call (they are all read and
    /// dropped), or the socket overflowed (something may have been missed). Never blocks.
    pub fn changed(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: `buf` is a valid writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                any = true;
                continue;
            }
            if n == 0 {
                return any;
            }
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => any,
                Some(libc::EINTR) => continue,
                // ENOBUFS: notifications were dropped; the caller re-reads the links.
                _ => true,
            };
        }
    }
}
