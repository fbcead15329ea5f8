//! TAP devices. rtnetlink cannot create them (the kernel's tun driver refuses RTM_NEWLINK): a
//! TAP is made by `TUNSETIFF` on `/dev/net/tun`, in the netns the file was opened in, and kept
//! after the file is closed by `TUNSETPERSIST`.

use std::{
    fs::OpenOptions,
    io,
    os::fd::{AsRawFd, RawFd},
};

use crate::{validate_ifname, NetNs, NetopsError};

/// What [`create_tap`] makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapSpec {
    pub name: String,
    /// `IFF_MULTI_QUEUE`: several file descriptors may attach queues to it.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR`: frames carry a virtio-net header (what VMMs want).
    pub vnet_hdr: bool,
    /// The user and group allowed to attach to it without CAP_NET_ADMIN.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// The `IFF_*` flags of `TUNSETIFF` for `spec`: a TAP, no packet information header, and
/// `IFF_TUN_EXCL` so an existing device of that name is an error (EBUSY) instead of being
/// attached to.
pub fn tap_flags(spec: &TapSpec) -> libc::c_short {
    let mut f = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL;
    if spec.multi_queue {
        f |= libc::IFF_MULTI_QUEUE;
    }
    if spec.vnet_hdr {
        f |= libc::IFF_VNET_HDR;
    }
    // The flags are a 16-bit field of struct ifreq; every flag above is below 0x10000.
    f as libc::c_short
}

fn ioctl_int(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST/TUNSETOWNER/TUNSETGROUP take an integer argument by value; `fd`
    // is an open /dev/net/tun file owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Create the persistent TAP `spec.name` in `ns`, down. Equivalent: `ip -n NS tuntap add mode
/// tap name NAME [multi_queue] [vnet_hdr] [user U] [group G]`. A link of that name already in
/// `ns` is an error (EEXIST or EBUSY: [`NetopsError::is_exists`] covers EEXIST only, so check
/// first). Undo: `Netlink::delete_link` in `ns`.
pub fn create_tap(ns: &NetNs, spec: &TapSpec) -> Result<(), NetopsError> {
    validate_ifname(&spec.name)?;
    let err = |what: &'static str, source: io::Error| NetopsError::Tap {
        name: spec.name.clone(),
        netns: ns.path().display().to_string(),
        what,
        source,
    };
    // The device lives in the netns the file was opened in.
    let file = ns
        .run(|| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
        })?
        .map_err(|e| err("open /dev/net/tun", e))?;
    let fd = file.as_raw_fd();
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(spec.name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = tap_flags(spec);
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is, alive for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, std::ptr::from_mut(&mut ifr)) };
    if rc < 0 {
        return Err(err("TUNSETIFF", io::Error::last_os_error()));
    }
    if let Some(uid) = spec.owner {
        ioctl_int(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid))
            .map_err(|e| err("TUNSETOWNER", e))?;
    }
    if let Some(gid) = spec.group {
        ioctl_int(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid))
            .map_err(|e| err("TUNSETGROUP", e))?;
    }
    // Closing the file without this would destroy the device.
    ioctl_int(fd, libc::TUNSETPERSIST, 1).map_err(|e| err("TUNSETPERSIST", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_tap_without_pi_and_exclusive() {
        let f = tap_flags(&TapSpec::default()) as u16 as libc::c_int;
        assert_eq!(
            f,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL,
            "{f:#x}"
        );
        let f = tap_flags(&TapSpec {
            multi_queue: true,
            vnet_hdr: true,
            ..Default::default()
        }) as u16 as libc::c_int;
        assert_ne!(f & libc::IFF_MULTI_QUEUE, 0);
        assert_ne!(f & libc::IFF_VNET_HDR, 0);
    }
}
