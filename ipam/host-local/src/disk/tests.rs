use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn layout_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(tmp.path(), "net1").unwrap();
    assert!(s
        .reserve(&Owner::new("c1", "eth0"), ip("10.0.0.2"), 0)
        .unwrap());
    assert!(s
        .reserve(&Owner::new("c1", "eth0"), ip("fd00::2"), 1)
        .unwrap());
    assert!(!s
        .reserve(&Owner::new("c2", "eth0"), ip("10.0.0.2"), 0)
        .unwrap());
    let dir = tmp.path().join("net1");
    assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
    assert_eq!(fs::read(dir.join("fd00::2")).unwrap(), b"c1\r\neth0");
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00::2"
    );
    assert!(dir.join("lock").exists());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "10.0.0.2",
            "fd00::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(s.last_reserved(0), Some(ip("10.0.0.2")));
    s.release(ip("10.0.0.2")).unwrap();
    assert!(!dir.join("10.0.0.2").exists());
}

#[test]
fn legacy_and_stale_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.0.0.3"), "old-id\n").unwrap();
    fs::write(dir.join("10.0.0.4"), "").unwrap();
    fs::write(dir.join(format!("{TMP_PREFIX}1-1")), "x").unwrap();
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(!dir.join(format!("{TMP_PREFIX}1-1")).exists());
    assert_eq!(s.get_by_id("old-id", "eth9"), [ip("10.0.0.3")]);
    assert_eq!(s.leases().len(), 1, "the empty file is no lease");
    // The empty file does not block its address.
    assert!(s
        .reserve(&Owner::new("c", "eth0"), ip("10.0.0.4"), 0)
        .unwrap());
    assert_eq!(fs::read(dir.join("10.0.0.4")).unwrap(), b"c\r\neth0");
    fs::write(dir.join("10.0.0.5"), " \n").unwrap();
    drop(s);
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert_eq!(s.drop_stale().unwrap(), 1);
    assert!(!dir.join("10.0.0.5").exists());
    assert_eq!(s.release_by_id("old-id", "eth0").unwrap(), [ip("10.0.0.3")]);
}

#[test]
fn open_existing_creates_nothing_and_bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(DiskStore::open_existing(tmp.path(), "n").unwrap().is_none());
    assert!(!tmp.path().join("n").exists());
    assert!(matches!(
        DiskStore::open(tmp.path(), "../x"),
        Err(Error::Config { .. })
    ));
}

#[test]
fn the_index_answers_while_the_listing_matches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    {
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(!s.from_index(), "first open reads the files");
        assert!(s
            .reserve(&Owner::new("c1", "eth0"), ip("10.0.0.2"), 0)
            .unwrap());
    }
    assert!(dir.join(index::INDEX_FILE).exists());
    let s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(s.from_index(), "nothing changed: the index answers");
    assert_eq!(s.get_by_id("c1", "eth0"), [ip("10.0.0.2")]);
    drop(s);
    // Proof that the index, not the file, answered: an owner only the index names.
    let mut idx = index::load(&dir).unwrap();
    idx.leases
        .insert(ip("10.0.0.2"), Owner::new("ghost", "eth0"));
    index::store(&dir, idx.leases.iter().map(|(i, o)| (*i, o))).unwrap();
    let s = DiskStore::open(tmp.path(), "n").unwrap();
    assert_eq!(s.get_by_id("ghost", "eth0"), [ip("10.0.0.2")]);
    // ...but a lease the index names without its file does not exist.
    drop(s);
    let mut idx = index::load(&dir).unwrap();
    idx.leases
        .insert(ip("10.0.0.7"), Owner::new("phantom", "eth0"));
    index::store(&dir, idx.leases.iter().map(|(i, o)| (*i, o))).unwrap();
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(s.get_by_id("phantom", "eth0").is_empty());
    assert!(s
        .reserve(&Owner::new("c9", "eth0"), ip("10.0.0.7"), 0)
        .unwrap());
}

#[test]
fn only_canonical_names_count_as_indexed() {
    // IPv4 text that parses has one spelling; `load` relies on it.
    for other in ["10.0.0.02", "010.0.0.2", "10.0.2", "10.0.0.2 "] {
        assert!(other.parse::<IpAddr>().is_err(), "{other}");
    }
    assert!(is_canonical(ip("fd00::2"), "fd00::2"));
    assert!(!is_canonical(ip("fd00::2"), "FD00::2"));
    assert!(!is_canonical(ip("fd00::2"), "fd00:0::2"));
    // An IPv6 lease under another spelling, beside the indexed one: both files are seen,
    // the index is not trusted as clean, and the indexed lease is not lost.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    {
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(s
            .reserve(&Owner::new("c1", "eth0"), ip("fd00::2"), 0)
            .unwrap());
        assert!(s
            .reserve(&Owner::new("c2", "eth0"), ip("fd00::3"), 0)
            .unwrap());
    }
    fs::write(dir.join("FD00::2"), "c1\r\neth0").unwrap();
    let s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(!s.from_index());
    assert_eq!(s.get_by_id("c1", "eth0"), [ip("fd00::2")]);
    assert_eq!(s.get_by_id("c2", "eth0"), [ip("fd00::3")]);
}

#[test]
fn a_lease_written_by_someone_else_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    {
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(s
            .reserve(&Owner::new("c1", "eth0"), ip("10.0.0.2"), 0)
            .unwrap());
    }
    assert!(DiskStore::open(tmp.path(), "n").unwrap().from_index());
    // What the reference does: O_EXCL create of <ip> holding "id\r\nifname".
    fs::write(dir.join("10.0.0.5"), "ref\r\neth0").unwrap();
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(!s.from_index(), "an unknown file was read");
    assert_eq!(s.get_by_id("ref", "eth0"), [ip("10.0.0.5")]);
    assert!(!s
        .reserve(&Owner::new("c", "eth0"), ip("10.0.0.5"), 0)
        .unwrap());
    // Even while we hold the lock and before our index is written (a writer ignoring
    // the lock): the next call lists it.
    fs::write(dir.join("10.0.0.6"), "late\r\neth0").unwrap();
    drop(s);
    let s = DiskStore::open(tmp.path(), "n").unwrap();
    assert_eq!(s.get_by_id("late", "eth0"), [ip("10.0.0.6")]);
    drop(s);
    // The rebuilt index knows both.
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(s.from_index());
    assert_eq!(s.get_by_id("ref", "eth0"), [ip("10.0.0.5")]);
    // The last lease gone, no index file stays.
    s.release_by_id("ref", "eth0").unwrap();
    s.release_by_id("late", "eth0").unwrap();
    s.release_by_id("c1", "eth0").unwrap();
    drop(s);
    assert!(!dir.join(index::INDEX_FILE).exists());
}

#[test]
fn a_lease_removed_by_someone_else_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    {
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(s
            .reserve(&Owner::new("c1", "eth0"), ip("10.0.0.2"), 0)
            .unwrap());
        assert!(s
            .reserve(&Owner::new("c2", "eth0"), ip("10.0.0.3"), 0)
            .unwrap());
    }
    // The reference's DEL: remove the file.
    fs::remove_file(dir.join("10.0.0.2")).unwrap();
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(!s.from_index());
    assert!(s.get_by_id("c1", "eth0").is_empty());
    assert_eq!(s.get_by_id("c2", "eth0"), [ip("10.0.0.3")]);
    assert!(s
        .reserve(&Owner::new("c3", "eth0"), ip("10.0.0.2"), 0)
        .unwrap());
}

#[test]
fn a_torn_index_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    {
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(s
            .reserve(&Owner::new("c1", "eth0"), ip("10.0.0.2"), 0)
            .unwrap());
    }
    let good = fs::read_to_string(dir.join(index::INDEX_FILE)).unwrap();
    let torn = good[..good.len() - 6].replace("\tc1\t", "\tghost\t");
    fs::write(dir.join(index::INDEX_FILE), torn).unwrap();
    let s = DiskStore::open(tmp.path(), "n").unwrap();
    assert!(!s.from_index());
    assert_eq!(s.get_by_id("c1", "eth0"), [ip("10.0.0.2")]);
    drop(s);
    assert_eq!(
        fs::read_to_string(dir.join(index::INDEX_FILE))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(
        DiskStore::open(tmp.path(), "n").unwrap().from_index(),
        "rewritten whole"
    );
}
