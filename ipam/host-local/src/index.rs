//! A layout-compatible cache of one network's lease owners, so ADD and DEL read one file
//! instead of every lease.
//!
//! `<dataDir>/<network>/.cnirs-index` (not an address, so the reference ignores it) maps each
//! lease file name to the owner written in it. It is only a hint: every call still lists the
//! directory (one or two `getdents64`, no file opened), and the listing is the truth for which
//! leases exist. A lease file the index does not know (written by the reference, an admin, or
//! a writer that died before updating the index) is read as before; an index entry without its
//! file (removed by the reference's DEL or by hand) is dropped. A torn index (no matching `end`
//! line) is ignored as a whole.
//!
//! Assumption shared with the reference: a lease file is created (O_EXCL / link) and removed,
//! never rewritten in place with another owner. `last_reserved_ip.<n>` is rewritten in place
//! and is therefore always read from its own file, never from the index.

use std::{collections::BTreeMap, fmt::Write as _, fs, net::IpAddr, path::Path};

use crate::store::Owner;

/// The index file's name.
pub const INDEX_FILE: &str = ".cnirs-index";
const MAGIC: &str = "cnirs-host-local-index v3";
/// What a complete index file says.
#[derive(Debug)]
pub struct Index {
    pub leases: BTreeMap<IpAddr, Owner>,
}

/// The index of `dir`, when it is present and complete; `None` means "read every lease".
pub fn load(dir: &Path) -> Option<Index> {
    parse(&fs::read_to_string(dir.join(INDEX_FILE)).ok()?)
}

fn parse(text: &str) -> Option<Index> {
    let mut lines = text.split_inclusive('\n');
    if lines.next()?.trim_end_matches('\n') != MAGIC {
        return None;
    }
    let mut leases = Vec::new();
    let mut body = MAGIC.len() + 1;
    for raw in lines {
        let line = raw.strip_suffix('\n')?;
        if let Some(tail) = line.strip_prefix("end ") {
            // Only a complete file counts: the count and the hash of everything before this
            // line (a write cut short, or new lines over old ones, fails one or the other).
            let (n, hash) = tail.split_once(' ')?;
            let whole = n.parse::<usize>().ok()? == leases.len()
                && u64::from_str_radix(hash, 16).ok()? == digest(&text.as_bytes()[..body]);
            // Written in address order: collecting is a bulk build.
            return whole.then(|| Index {
                leases: leases.into_iter().collect(),
            });
        }
        body += raw.len();
        let mut f = line.split('\t');
        let ip: IpAddr = f.next()?.parse().ok()?;
        let container_id = f.next()?.to_string();
        let ifname = f.next().map(str::to_string);
        leases.push((
            ip,
            Owner {
                container_id,
                ifname,
            },
        ));
    }
    None
}

/// XXH3, 64 bits: enough to tell a torn file from a whole one (not a defence against an
/// adversary, who could write the lease files themselves). It runs on every read and write of
/// the index, so it is a word-wise hash (v2 used byte-wise FNV-1a, measurably slower).
fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// `ip` as `Display` writes it; IPv4 by hand (the formatter is slower, and every call renders
/// every lease).
fn push_ip(s: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if o >= 100 {
                    s.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    s.push(char::from(b'0' + o / 10 % 10));
                }
                s.push(char::from(b'0' + o % 10));
            }
        }
        // Writing to a String cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(s, "{ip}");
        }
    }
}

/// The same leases always render the same bytes (no counter, no time); `leases` in address
/// order.
fn render<'a>(leases: impl Iterator<Item = (IpAddr, &'a Owner)>) -> String {
    let mut s = String::with_capacity(64 * 1024);
    s.push_str(MAGIC);
    s.push('\n');
    let mut n = 0usize;
    for (ip, o) in leases {
        n += 1;
        push_ip(&mut s, ip);
        s.push('\t');
        s.push_str(&o.container_id);
        if let Some(i) = &o.ifname {
            s.push('\t');
            s.push_str(i);
        }
        s.push('\n');
    }
    let hash = digest(s.as_bytes());
    s.push_str(&format!("end {n} {hash:016x}\n"));
    s
}

/// Record `leases` (called under the network's lock, after the last change, in address
/// order); no leases, no file. The file is overwritten in place: a write cut short leaves new
/// lines followed by old ones, which [`load`] ignores (the `end` line carries the count and a
/// hash of every line before it).
pub fn store<'a>(
    dir: &Path,
    leases: impl Iterator<Item = (IpAddr, &'a Owner)>,
) -> std::io::Result<()> {
    let mut leases = leases.peekable();
    if leases.peek().is_none() {
        // Nothing to remember: leave no file behind (the network's last DEL leaves the
        // directory as the reference would).
        return match fs::remove_file(dir.join(INDEX_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    crate::disk::overwrite(&dir.join(INDEX_FILE), render(leases).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_files() {
        let mut m = BTreeMap::new();
        m.insert("10.0.0.2".parse().unwrap(), Owner::new("c1", "eth0"));
        m.insert(
            "fd00::2".parse().unwrap(),
            Owner {
                container_id: "legacy".into(),
                ifname: None,
            },
        );
        let text = render(m.iter().map(|(i, o)| (*i, o)));
        let i = parse(&text).unwrap();
        assert_eq!(i.leases, m);
        // A write cut short anywhere is no index.
        for cut in 0..text.len() - 1 {
            assert!(parse(&text[..cut]).is_none(), "cut at {cut}");
        }
        assert!(parse(&text.replace("end 2", "end 3")).is_none());
        // New content written over a longer old file and cut short before the final length.
        let mut longer = m.clone();
        longer.insert("10.0.0.3".parse().unwrap(), Owner::new("c3", "eth0"));
        let old = render(longer.iter().map(|(i, o)| (*i, o)));
        let mut shorter = m.clone();
        shorter.remove(&"fd00::2".parse().unwrap());
        let new = render(shorter.iter().map(|(i, o)| (*i, o)));
        for cut in 0..new.len() {
            let mixed = format!("{}{}", &new[..cut], &old[cut.min(old.len())..]);
            if mixed != old {
                assert!(parse(&mixed).is_none(), "mixed at {cut}");
            }
        }
        // Addresses render as `Display` writes them (the lease file names).
        for a in [
            "0.0.0.0",
            "10.0.0.9",
            "10.20.100.255",
            "192.168.1.10",
            "fd00::2",
            "::",
        ] {
            let mut t = String::new();
            push_ip(&mut t, a.parse().unwrap());
            assert_eq!(t, a);
        }
        // A line changed in place is caught by the hash.
        assert!(parse(&text.replace("c1", "c9")).is_none());
    }
}
