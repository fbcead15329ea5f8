use super::*;

#[test]
fn any_record_skips_dot_names_across_many_small_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("a");
    assert_eq!(
        any_record(&d).unwrap_err().kind(),
        ErrorKind::NotFound,
        "a missing directory is the caller's to judge"
    );
    fs::create_dir(&d).unwrap();
    assert!(!any_record(&d).unwrap());
    // Far more dot entries (write temporaries) than one 1 KB read holds.
    for i in 0..200 {
        fs::write(d.join(format!(".{}-{i}.tmp", "x".repeat(60))), "").unwrap();
    }
    assert!(!any_record(&d).unwrap());
    fs::write(d.join("ctr@eth0"), "{}").unwrap();
    assert!(any_record(&d).unwrap());
}

#[test]
fn records_are_rewritten_in_place_when_they_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let big: Vec<u32> = (0..10).collect();
    write_json(d, "r.json", &big).unwrap();
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let first = ino(&d.join("r.json"));
    // Shorter: same inode, padded, reads back exactly.
    write_json(d, "r.json", &[7u32]).unwrap();
    assert_eq!(ino(&d.join("r.json")), first);
    assert_eq!(fs::read(d.join("r.json")).unwrap().len(), 21);
    assert_eq!(
        read_json::<Vec<u32>>(&d.join("r.json")).unwrap(),
        Some(vec![7])
    );
    // Longer than the file: a new file renamed over it, no padding, no temp file left.
    let longer: Vec<u32> = (0..20).collect();
    write_json(d, "r.json", &longer).unwrap();
    assert_ne!(ino(&d.join("r.json")), first);
    assert_eq!(
        read_json::<Vec<u32>>(&d.join("r.json")).unwrap(),
        Some(longer)
    );
    assert!(!d.join(".r.json.tmp").exists());
    // Over a page: never in place.
    let huge: Vec<u32> = (0..2000).collect();
    write_json(d, "h.json", &huge).unwrap();
    let h = ino(&d.join("h.json"));
    write_json(d, "h.json", &[1u32]).unwrap();
    assert_ne!(ino(&d.join("h.json")), h);
    assert_eq!(fs::read(d.join("h.json")).unwrap(), b"[1]");
}

#[test]
fn fs_key_escapes_separators_and_leading_dot() {
    assert_eq!(fs_key("net-1_a.b"), "net-1_a.b");
    assert_eq!(fs_key("../x"), "%2E.%2Fx");
    assert_eq!(fs_key("a@b c"), "a%40b%20c");
}
