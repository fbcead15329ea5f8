#![allow(clippy::unwrap_used)]

use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn defaults_and_flags() {
    let o = parse(&[]).unwrap();
    assert_eq!(o.src, PathBuf::from("/opt/cni/bin"));
    assert_eq!(o.dest, PathBuf::from("/host/opt/cni/bin"));
    let o = parse(&s(&[
        "--dest=/d",
        "--conflist",
        "/c.conflist",
        "--conf-name",
        "10-x.conflist",
    ]))
    .unwrap();
    assert_eq!(o.dest, PathBuf::from("/d"));
    assert_eq!(o.conf_name.as_deref(), Some("10-x.conflist"));
    for bad in [
        &["--dest"][..],
        &["--nope"],
        &["--conf-name", "../x"],
        &["--src="],
    ] {
        assert!(parse(&s(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn installs_every_file_executable_replaces_atomically_and_leaves_others() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, conf) = (
        t.path().join("src"),
        t.path().join("dest"),
        t.path().join("net.d"),
    );
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dest).unwrap();
    fs::write(src.join("bridge"), b"new bridge").unwrap();
    fs::write(src.join("dhcp"), b"dhcp").unwrap();
    fs::write(dest.join("bridge"), b"old").unwrap();
    fs::write(dest.join("flannel"), b"someone else's").unwrap();
    let cl = t.path().join("c.conflist");
    fs::write(&cl, b"{}").unwrap();
    let o = Opts {
        src: src.clone(),
        dest: dest.clone(),
        conflist: Some(cl),
        conf_dir: conf.clone(),
        conf_name: Some("10-cnirs.conflist".into()),
    };
    let done = run(&o).unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(fs::read(dest.join("bridge")).unwrap(), b"new bridge");
    assert_eq!(fs::read(dest.join("flannel")).unwrap(), b"someone else's");
    let mode = fs::metadata(dest.join("dhcp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(fs::read(conf.join("10-cnirs.conflist")).unwrap(), b"{}");
    let leftovers: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left");
    // Nothing to install is an error, not a silent success.
    let empty = t.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert!(run(&Opts { src: empty, ..o }).is_err());
}
