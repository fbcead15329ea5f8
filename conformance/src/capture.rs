//! What crosses the underlay inside VXLAN: `tcpdump -w` on an interface of a netns, stopped by
//! PID, and the pcap read here (Ethernet, then IPv4 or IPv6, UDP to port 4789, VXLAN, and the
//! inner Ethernet frame), for either underlay family (tcpdump's own filters cannot index
//! `udp[]` under IPv6).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The IANA VXLAN port our overlays use.
pub const VXLAN_PORT: u16 = 4789;

/// A running capture; [`Capture::stop`] ends it and parses what it saw.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// `tcpdump -i IFACE -U -w DIR/TAG.pcap udp port 4789` inside `ns`; returns once tcpdump
    /// listens.
    #[track_caller]
    pub fn start(ns: &Netns, iface: &str, dir: &Path, tag: &str) -> Self {
        let file = dir.join(format!("{tag}.pcap"));
        let log = dir.join(format!("{tag}.tcpdump.log"));
        let err = match std::fs::File::create(&log) {
            Ok(f) => f,
            Err(e) => panic!("create {}: {e}", log.display()),
        };
        let mut cmd = ns.command("tcpdump");
        // `-Z root`: Debian's tcpdump drops to its own user, who cannot write in the test's
        // private temp dir. `--immediate-mode`: every packet handed over as it comes (else the
        // last second of a capture may be lost when it is stopped).
        cmd.args([
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            iface,
            "-n",
            "-U",
            "-s",
            "256",
            "-w",
        ])
        .arg(&file)
        .args(["udp", "port", &VXLAN_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn tcpdump: {e}"),
        };
        let c = Capture {
            child: Some(child),
            file,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&c.log)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// SIGINT tcpdump (it flushes and exits), wait for it, and parse the VXLAN frames it wrote.
    pub fn stop(mut self) -> Vec<VxlanFrame> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we own and have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.log);
        parse_pcap(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One VXLAN packet seen on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanFrame {
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    pub vni: u32,
    /// The inner Ethernet frame (truncated at the capture's snap length).
    pub inner: Vec<u8>,
}

impl VxlanFrame {
    /// The inner frame's ethertype.
    pub fn ethertype(&self) -> Option<u16> {
        Some(u16::from_be_bytes([
            *self.inner.get(12)?,
            *self.inner.get(13)?,
        ]))
    }

    /// The inner destination MAC is broadcast or multicast.
    pub fn is_flooded(&self) -> bool {
        self.inner.first().is_some_and(|b| b & 1 == 1)
    }

    /// An ARP request inside.
    pub fn is_arp_request(&self) -> bool {
        self.ethertype() == Some(0x0806) && self.inner.get(20..22) == Some(&[0, 1])
    }

    /// An IPv6 Neighbour Solicitation inside (ICMPv6 type 135 right after the IPv6 header).
    pub fn is_neighbour_solicitation(&self) -> bool {
        self.ethertype() == Some(0x86dd)
            && self.inner.get(14 + 6) == Some(&58)
            && self.inner.get(14 + 40) == Some(&135)
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        let mac = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        format!(
            "{} -> {} vni {} inner {} -> {} type {:04x}",
            self.outer_src,
            self.outer_dst,
            self.vni,
            mac(self.inner.get(6..12).unwrap_or_default()),
            mac(self.inner.get(..6).unwrap_or_default()),
            self.ethertype().unwrap_or_default()
        )
    }
}

fn u32_at(b: &[u8], at: usize, le: bool) -> Option<u32> {
    let x: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(x)
    } else {
        u32::from_be_bytes(x)
    })
}

/// The VXLAN packets of a pcap file (linktype Ethernet, or Linux cooked capture for `-i any`,
/// where a packet forwarded by the switch shows once per port; other packets skipped).
pub fn parse_pcap(b: &[u8]) -> Vec<VxlanFrame> {
    let le = match b.get(..4) {
        Some([0xd4, 0xc3, 0xb2, 0xa1]) | Some([0x4d, 0x3c, 0xb2, 0xa1]) => true,
        Some([0xa1, 0xb2, 0xc3, 0xd4]) | Some([0xa1, 0xb2, 0x3c, 0x4d]) => false,
        _ => return Vec::new(),
    };
    let linktype = u32_at(b, 20, le).unwrap_or(1);
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(caplen) = u32_at(b, at + 8, le) {
        let start = at + 16;
        let Some(pkt) = b.get(start..start + caplen as usize) else {
            break;
        };
        let f = match linktype {
            // Ethernet: the ethertype at 12, the packet at 14.
            1 => pkt
                .get(12..14)
                .and_then(|t| parse_l3(u16::from_be_bytes([t[0], t[1]]), pkt.get(14..)?)),
            // LINUX_SLL (`-i any`, older tcpdump): 16-byte header, ethertype last.
            113 => pkt
                .get(14..16)
                .and_then(|t| parse_l3(u16::from_be_bytes([t[0], t[1]]), pkt.get(16..)?)),
            // LINUX_SLL2 (`-i any`): 20-byte header, ethertype first.
            276 => pkt
                .get(0..2)
                .and_then(|t| parse_l3(u16::from_be_bytes([t[0], t[1]]), pkt.get(20..)?)),
            _ => None,
        };
        if let Some(f) = f {
            out.push(f);
        }
        at = start + caplen as usize;
    }
    out
}

fn parse_l3(ethertype: u16, ip: &[u8]) -> Option<VxlanFrame> {
    let (src, dst, udp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 17 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip.get(ihl..)?)
        }
        0x86dd => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip.get(40..)?)
        }
        _ => return None,
    };
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    if dport != VXLAN_PORT {
        return None;
    }
    let vx = udp.get(8..)?;
    let vni = u32::from_be_bytes([0, *vx.get(4)?, *vx.get(5)?, *vx.get(6)?]);
    Some(VxlanFrame {
        outer_src: src,
        outer_dst: dst,
        vni,
        inner: vx.get(8..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(outer_v6: bool, inner: &[u8]) -> Vec<u8> {
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        vx.extend_from_slice(inner);
        let mut udp = vec![0x12, 0x34, 0x12, 0xb5, 0, 0, 0, 0];
        udp.extend_from_slice(&vx);
        let mut eth = vec![0u8; 12];
        if outer_v6 {
            eth.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
            ip.extend_from_slice(&[0xfd, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip.extend_from_slice(&[0xfd, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            eth.extend_from_slice(&ip);
        } else {
            eth.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&[10, 240, 0, 1, 10, 240, 0, 2]);
            eth.extend_from_slice(&ip);
        }
        eth.extend_from_slice(&udp);
        eth
    }

    fn pcap(pkts: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&256u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for p in pkts {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn arp_requests_and_solicitations_inside_vxlan_are_found_on_either_underlay() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        let mut ns = vec![0x33, 0x33, 0xff, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let mut v6 = vec![0x60, 0, 0, 0, 0, 32, 58, 255];
        v6.extend_from_slice(&[0; 32]);
        ns.extend_from_slice(&v6);
        ns.push(135);
        let got = parse_pcap(&pcap(&[frame(false, &arp), frame(true, &ns)]));
        assert_eq!(got.len(), 2);
        assert!(got[0].is_arp_request() && got[0].is_flooded());
        assert_eq!(got[0].vni, 42);
        assert_eq!(got[0].outer_src.to_string(), "10.240.0.1");
        assert!(got[1].is_neighbour_solicitation());
        assert_eq!(got[1].outer_dst.to_string(), "fd40::2");
        assert!(!got[1].is_arp_request());
    }
}
