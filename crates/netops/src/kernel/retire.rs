//! DEL without the kernel's wait: a veth delete waits for an RCU barrier, while `down` +
//! rename does not (docs/performance.md has the figures). [`Netlink::retire_veth`] makes the pair unobservable at once
//! (both ends down, host end off its bridge, both renamed to a name no ADD derives, so the
//! interface names are free again) and leaves the delete itself to the detached process of
//! `netbase::detach` (a plain synchronous netlink socket, [`delete_link_sync`]). A
//! retired link a killed deleter left behind is removed by [`Netlink::delete_retired`] (GC).

use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST},
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    LinkUnspec,
};

use super::{link_from_msg, Netlink};
use crate::{retired_name, Link, NetopsError, RETIRED_PREFIX};

/// Test hook of the detached deleter (see `netbase::detach::STALL_ENV`).
pub const STALL_ENV: &str = netbase::detach::STALL_ENV;

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
    /// The delete is parked with the kernel's detacher ([`crate::Kernel::with_detacher`]): it
    /// runs in the detached process after a DEL has answered, or here, synchronously, when
    /// the detacher is immediate or the process cannot detach.
    pub fn retire_veth(
        &self,
        host_name: &str,
        pod: Option<(&Netlink<'_>, &str)>,
    ) -> Result<bool, NetopsError> {
        let Some(host) = self.link(host_name)? else {
            return Ok(false);
        };
        self.retire_veth_link(&host, pod)
    }

    /// [`Netlink::retire_veth`] of a link already looked up. A link that is gone by the time
    /// it is changed (its pod netns was being destroyed, which deletes the pair) is
    /// `Ok(false)`, as if the lookup had not found it; so is a pod end gone the same way.
    pub fn retire_veth_link(
        &self,
        host: &Link,
        pod: Option<(&Netlink<'_>, &str)>,
    ) -> Result<bool, NetopsError> {
        let retired = match self.retire(host.index, &host.name) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Some((pod, ifname)) = pod {
            if let Some(peer) = pod.link(ifname)? {
                if peer.kind.as_deref() == Some("veth") {
                    match pod.retire(peer.index, ifname) {
                        Err(e) if !e.is_not_found() => return Err(e),
                        _ => {}
                    }
                }
            }
        }
        // The slow delete: in the detached process when this is a DEL (see `netbase::detach`),
        // here otherwise. The retired name is unique while the link exists.
        self.detach.park_job(move || {
            if let Err(e) = delete_link_sync(&retired) {
                log::warn!("deleting retired link {retired}: {e}");
            }
        });
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

/// Delete link `name` in this process's netns over a plain synchronous netlink socket opened
/// here (no tokio, no state of this process: it runs in the detached process after its fd
/// cleanup). A link already gone (ENODEV) is not an error.
pub fn delete_link_sync(name: &str) -> std::io::Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    sock.send(&dellink_request(name, 1), 0)?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)?;
        let mut off = 0;
        while off < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == 1 {
                if let NetlinkPayload::Error(e) = msg.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(c) if -c.get() == libc::ENODEV => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// `RTM_DELLINK` of the link named `name` (ifindex 0: by name), acked.
fn dellink_request(name: &str, seq: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let mut msg = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)),
    );
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
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

    #[test]
    fn dellink_request_names_the_link_and_asks_for_an_ack() {
        let m = dellink_request("cnirsx0000002a", 7);
        let u16_at = |o: usize| u16::from_ne_bytes([m[o], m[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
        assert_eq!(m.len(), 16 + 16 + 20);
        assert_eq!(u32_at(0) as usize, m.len());
        assert_eq!(u16_at(4), 17, "RTM_DELLINK");
        assert_eq!(u16_at(6), 1 | 4, "NLM_F_REQUEST | NLM_F_ACK");
        assert_eq!(u32_at(8), 7, "seq");
        assert!(m[16..32].iter().all(|&b| b == 0), "ifindex 0: by name");
        assert_eq!(u16_at(32), 4 + 15, "IFLA_IFNAME length");
        assert_eq!(u16_at(34), 3, "IFLA_IFNAME");
        assert_eq!(&m[36..51], b"cnirsx0000002a\0");
    }
}
