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

use std::{collections::BTreeMap, fs, net::IpAddr, path::Path};

use crate::store::Owner;

/// The index file's name.
pub const INDEX_FILE: &str = ".cnirs-index";
const MAGIC: &str = "cnirs-host-local-index v2";
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
    let mut leases = BTreeMap::new();
    let mut body = MAGIC.len() + 1;
    for raw in lines {
        let line = raw.strip_suffix('\n')?;
        if let Some(tail) = line.strip_prefix("end ") {
            // Only a complete file counts: the count and the hash of everything before this
            // line (a write cut short, or new lines over old ones, fails one or the other).
            let (n, hash) = tail.split_once(' ')?;
            let whole = n.parse::<usize>().ok()? == leases.len()
                && u64::from_str_radix(hash, 16).ok()? == fnv1a(&text.as_bytes()[..body]);
            return whole.then_some(Index { leases });
        }
        body += raw.len();
        let mut f = line.split('\t');
        let ip: IpAddr = f.next()?.parse().ok()?;
        let container_id = f.next()?.to_string();
        let ifname = f.next().map(str::to_string);
        leases.insert(
            ip,
            Owner {
                container_id,
                ifname,
            },
        );
    }
    None
}

/// FNV-1a, 64 bits: enough to tell a torn file from a whole one (not a defence against an
/// adversary, who could write the lease files themselves).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The same leases always render the same bytes (no counter, no time).
fn render(leases: &BTreeMap<IpAddr, Owner>) -> String {
    let mut s = format!("{MAGIC}\n");
    for (ip, o) in leases {
        s.push_str(&ip.to_string());
        s.push('\t');
        s.push_str(&o.container_id);
        if let Some(i) = &o.ifname {
            s.push('\t');
            s.push_str(i);
        }
        s.push('\n');
    }
    let hash = fnv1a(s.as_bytes());
    s.push_str(&format!("end {} {hash:016x}\n", leases.len()));
    s
}

/// Record `leases` (called under the network's lock, after the last change); no leases, no
/// file. The file is overwritten in place: a write cut short leaves new lines followed by old
/// ones, which [`load`] ignores (the `end` line carries the count and a hash of every line
/// before it).
pub fn store(dir: &Path, leases: &BTreeMap<IpAddr, Owner>) -> std::io::Result<()> {
    if leases.is_empty() {
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
        let text = render(&m);
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
        let old = render(&longer);
        let mut shorter = m.clone();
        shorter.remove(&"fd00::2".parse().unwrap());
        let new = render(&shorter);
        for cut in 0..new.len() {
            let mixed = format!("{}{}", &new[..cut], &old[cut.min(old.len())..]);
            if mixed != old {
                assert!(parse(&mixed).is_none(), "mixed at {cut}");
            }
        }
        // A line changed in place is caught by the hash.
        assert!(parse(&text.replace("c1", "c9")).is_none());
    }
}
