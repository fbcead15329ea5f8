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

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use crate::store::Owner;

/// The index file's name.
pub const INDEX_FILE: &str = ".cnirs-index";
const MAGIC: &str = "cnirs-host-local-index v1";
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
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut leases = BTreeMap::new();
    for line in lines {
        if let Some(n) = line.strip_prefix("end ") {
            // Only a complete file counts (a write cut short has no end line).
            return (n.parse::<usize>().ok()? == leases.len()).then_some(Index { leases });
        }
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
    s.push_str(&format!("end {}\n", leases.len()));
    s
}

/// Record `leases` (called under the network's lock, after the last change); no leases, no
/// file. The file is rewritten in place: a crash mid-write leaves a torn file, which [`load`]
/// ignores.
pub fn store(dir: &Path, leases: &BTreeMap<IpAddr, Owner>) -> std::io::Result<()> {
    if leases.is_empty() {
        // Nothing to remember: leave no file behind (the network's last DEL leaves the
        // directory as the reference would).
        return match fs::remove_file(dir.join(INDEX_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(dir.join(INDEX_FILE))?;
    f.write_all(render(leases).as_bytes())
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
    }
}
