#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure
//! The built binary driven like a runtime drives it (env + stdin), against a temp dataDir,
//! side by side with the reference plugin in /usr/lib/cni. No root needed.

use std::{
    collections::HashSet,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

const OURS: &str = env!("CARGO_BIN_EXE_host-local");
const REFERENCE: &str = "/usr/lib/cni/host-local";

struct Out {
    code: i32,
    json: Value,
    stderr: String,
}

fn run_bin(bin: &str, cmd: &str, id: &str, ifname: &str, args: &str, conf: &str) -> Out {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/run/netns/cnirs-t-none")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        json: if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        },
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ours(cmd: &str, id: &str, conf: &str) -> Out {
    run_bin(OURS, cmd, id, "eth0", "", conf)
}

fn conf(version: &str, name: &str, dir: &Path, ranges: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"{name}","type":"bridge",
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":{ranges},
                     "routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        dir.display()
    )
}

fn addr(o: &Out, i: usize) -> String {
    assert_eq!(o.code, 0, "{} {}", o.json, o.stderr);
    o.json["ips"][i]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[{i}] in {}", o.json))
        .to_string()
}

fn leases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const V4: &str = r#"[[{"subnet":"10.20.0.0/24"}]]"#;

#[test]
fn every_verb_in_every_version() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let dual = r#"[[{"subnet":"10.20.0.0/24"}],[{"subnet":"fd00:20::/64"}]]"#;
        let c = conf(v, &format!("net{i}"), tmp.path(), dual);
        let add = ours("ADD", "ctr1", &c);
        assert_eq!(add.json["cniVersion"], *v);
        assert_eq!(addr(&add, 0), "10.20.0.2/24");
        assert_eq!(addr(&add, 1), "fd00:20::2/64");
        assert_eq!(add.json["ips"][0]["gateway"], "10.20.0.1");
        assert!(add.json["ips"][0].get("interface").is_none());
        assert_eq!(add.json["ips"][0].get("version").is_some(), *v < "1.0.0");
        assert_eq!(add.json["routes"][0]["dst"], "0.0.0.0/0");
        let dir = tmp.path().join(format!("net{i}"));
        assert_eq!(leases(&dir), ["10.20.0.2", "fd00:20::2"]);
        if *v >= "0.4.0" {
            assert_eq!(ours("CHECK", "ctr1", &c).code, 0);
            let e = ours("CHECK", "nobody", &c);
            assert_eq!(e.json["code"], 105, "{}", e.json);
        }
        if *v == "1.1.0" {
            let st = ours("STATUS", "", &c);
            assert_eq!(st.code, 0, "{}", st.json);
            assert!(st.json.is_null());
            let gc = c.replacen(
                "\"type\":\"bridge\"",
                r#""type":"bridge","cni.dev/valid-attachments":[{"containerID":"ctr1","ifname":"eth0"}]"#,
                1,
            );
            assert_eq!(ours("GC", "", &gc).code, 0);
            assert_eq!(leases(&dir).len(), 2, "GC kept the valid attachment");
        }
        for _ in 0..2 {
            let del = ours("DEL", "ctr1", &c);
            assert_eq!(del.code, 0, "{}", del.json);
            assert!(del.json.is_null());
        }
        assert!(leases(&dir).is_empty());
        assert!(dir.join("lock").exists() && dir.join("last_reserved_ip.1").exists());
    }
    let v = run_bin(OURS, "VERSION", "", "", "", r#"{"cniVersion":"1.1.0"}"#);
    assert!(v.json["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&Value::from("1.1.0")));
}

#[test]
fn repeated_add_gets_the_same_address_and_del_never_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", "n", tmp.path(), V4);
    let a = addr(&ours("ADD", "c1", &c), 0);
    assert_eq!(addr(&ours("ADD", "c1", &c), 0), a);
    let other_if = run_bin(OURS, "ADD", "c1", "eth1", "", &c);
    assert_ne!(addr(&other_if, 0), a);
    assert_eq!(leases(&tmp.path().join("n")).len(), 2);
    // DEL of something never added, and of a network never seen: success, nothing created.
    assert_eq!(ours("DEL", "ghost", &c).code, 0);
    let c2 = conf("1.0.0", "never", tmp.path(), V4);
    assert_eq!(ours("DEL", "c1", &c2).code, 0);
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn bad_config_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (ranges, field) in [
        (
            r#"[[{"subnet":"10.0.0.5/24"}]]"#,
            "ipam.ranges[0][0].subnet",
        ),
        (
            r#"[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}]]"#,
            "ipam.ranges[0][0].rangeStart: 10.0.1.5 is outside subnet 10.0.0.0/24",
        ),
        (
            r#"[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/16"}]]"#,
            "ipam.ranges[1]",
        ),
        (
            r#"[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]"#,
            "ipam.ranges[0][1].subnet",
        ),
        (r#"[[{"subnet":"10.0.0.0/32"}]]"#, "too small"),
    ] {
        let o = ours("ADD", "c1", &conf("1.0.0", "n", &data, ranges));
        assert_eq!(o.json["code"], 7, "{ranges}: {}", o.json);
        let msg = o.json["msg"].as_str().unwrap();
        assert!(msg.contains(field), "{msg:?} lacks {field:?}");
    }
    let o = ours("ADD", "c1", "{not json");
    assert_eq!(o.json["code"], 6);
    // A requested address outside every range: refused before anything is written.
    let o = run_bin(
        OURS,
        "ADD",
        "c1",
        "eth0",
        "IP=10.99.0.5",
        &conf("1.0.0", "n", &data, V4),
    );
    assert_eq!(o.json["code"], 7, "{}", o.json);
    assert!(o.json["msg"].as_str().unwrap().contains("CNI_ARGS IP"));
    assert!(!data.exists(), "dataDir was created");
}

#[test]
fn requested_ip_and_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", "n", tmp.path(), V4);
    let o = run_bin(
        OURS,
        "ADD",
        "a",
        "eth0",
        "IgnoreUnknown=1;IP=10.20.0.77",
        &c,
    );
    assert_eq!(addr(&o, 0), "10.20.0.77/24");
    let o = run_bin(OURS, "ADD", "b", "eth0", "IP=10.20.0.77", &c);
    assert_eq!(o.json["code"], 103, "{}", o.json);
    assert!(o.json["msg"].as_str().unwrap().contains("a/eth0"));
    let o = run_bin(OURS, "ADD", "b", "eth0", "IP=10.20.0.1", &c);
    assert_eq!(o.json["code"], 7, "gateway: {}", o.json);
    // runtimeConfig.ips (the `ips` capability).
    let rc = c.replacen(
        "\"type\":\"bridge\"",
        r#""type":"bridge","runtimeConfig":{"ips":["10.20.0.88/24"]}"#,
        1,
    );
    assert_eq!(addr(&ours("ADD", "c", &rc), 0), "10.20.0.88/24");
    assert_eq!(
        leases(&tmp.path().join("n")),
        ["10.20.0.77", "10.20.0.88"],
        "the failed ADDs left nothing"
    );
}

#[test]
fn full_range_answers_104_and_status_50() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "small",
        tmp.path(),
        r#"[[{"subnet":"10.30.0.0/29"}]]"#,
    );
    let got: HashSet<String> = (0..5)
        .map(|i| addr(&ours("ADD", &format!("c{i}"), &c), 0))
        .collect();
    assert_eq!(got.len(), 5);
    let o = ours("ADD", "c9", &c);
    assert_eq!(o.json["code"], 104, "{}", o.json);
    assert!(
        o.json["msg"]
            .as_str()
            .unwrap()
            .contains("10.30.0.1-10.30.0.6"),
        "{}",
        o.json
    );
    let st = ours("STATUS", "", &c);
    assert_eq!(st.json["code"], 50, "{}", st.json);
    assert_eq!(ours("DEL", "c3", &c).code, 0);
    assert_eq!(ours("STATUS", "", &c).code, 0);
    assert_eq!(addr(&ours("ADD", "c9", &c), 0).len(), "10.30.0.x/29".len());
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.1.0", "g", tmp.path(), V4);
    for id in ["keep", "drop1", "drop2"] {
        addr(&ours("ADD", id, &c), 0);
    }
    let dir = tmp.path().join("g");
    // A legacy id-only lease of a valid container, and an empty (stale) file.
    fs::write(dir.join("10.20.0.100"), "keep").unwrap();
    fs::write(dir.join("10.20.0.101"), "").unwrap();
    let gc = c.replacen(
        "\"type\":\"bridge\"",
        r#""type":"bridge","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"},{"containerID":"other","ifname":"eth0"}]"#,
        1,
    );
    let o = ours("GC", "", &gc);
    assert_eq!(o.code, 0, "{}", o.json);
    assert_eq!(leases(&dir), ["10.20.0.100", "10.20.0.2"]);
    assert!(dir.join("lock").exists() && dir.join("last_reserved_ip.0").exists());
    // No valid attachments: release everything.
    let none = c.replacen(
        "\"type\":\"bridge\"",
        r#""type":"bridge","cni.dev/valid-attachments":[]"#,
        1,
    );
    assert_eq!(ours("GC", "", &none).code, 0);
    assert!(leases(&dir).is_empty());
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", "busy", tmp.path(), V4);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..13)
                    .map(|i| t * 13 + i)
                    .filter(|n| *n < 200)
                    .map(|n| addr(&ours("ADD", &format!("ctr{n}"), &c), 0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<String> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 200);
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 200, "duplicate addresses handed out");
    let files = leases(&tmp.path().join("busy"));
    assert_eq!(files.len(), 200);
    for f in &files {
        let body = fs::read_to_string(tmp.path().join("busy").join(f)).unwrap();
        assert!(
            body.starts_with("ctr") && body.ends_with("\r\neth0"),
            "{f}: {body:?}"
        );
    }
    let stray: Vec<PathBuf> = fs::read_dir(tmp.path().join("busy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".cnirs-tmp"))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
}

/// Leases written by the reference are honoured by ours, and the other way round.
#[test]
fn drop_in_with_the_reference_plugin() {
    assert!(Path::new(REFERENCE).exists(), "reference plugin missing");
    let tmp = tempfile::tempdir().unwrap();
    // The reference speaks up to 1.0.0.
    let dual = r#"[[{"subnet":"10.40.0.0/24"}],[{"subnet":"fd00:40::/64"}]]"#;
    let c = conf("1.0.0", "mix", tmp.path(), dual);
    let dir = tmp.path().join("mix");

    let r = run_bin(REFERENCE, "ADD", "r1", "eth0", "", &c);
    let (r4, r6) = (addr(&r, 0), addr(&r, 1));
    let o = ours("ADD", "r1", &c);
    assert_eq!((addr(&o, 0), addr(&o, 1)), (r4.clone(), r6.clone()));
    assert_eq!(ours("CHECK", "r1", &c).code, 0);
    // Ours continues the reference's round robin and skips its leases.
    let o2 = ours("ADD", "o2", &c);
    assert_ne!(addr(&o2, 0), r4);
    assert_eq!(addr(&o2, 0), "10.40.0.3/24");
    assert_eq!(addr(&o2, 1), "fd00:40::3/64");
    // The reference sees our leases: its next address is after ours, and it refuses a
    // duplicate for our (id, ifname), naming our address.
    let r3 = run_bin(REFERENCE, "ADD", "r3", "eth0", "", &c);
    assert_eq!(addr(&r3, 0), "10.40.0.4/24");
    let dup = run_bin(REFERENCE, "ADD", "o2", "eth0", "", &c);
    assert_ne!(dup.code, 0);
    assert!(
        dup.json["msg"].as_str().unwrap().contains("10.40.0.3"),
        "{}",
        dup.json
    );
    assert_eq!(run_bin(REFERENCE, "CHECK", "o2", "eth0", "", &c).code, 0);
    // DEL across: ours removes the reference's lease, the reference removes ours.
    assert_eq!(ours("DEL", "r1", &c).code, 0);
    assert_eq!(run_bin(REFERENCE, "DEL", "o2", "eth0", "", &c).code, 0);
    assert_eq!(
        leases(&dir),
        ["10.40.0.4", "fd00:40::4"],
        "only r3's leases are left"
    );
    // A legacy id-only file (pre-0.7 reference) is honoured and released by ours.
    fs::write(dir.join("10.40.0.9"), "legacy").unwrap();
    assert_eq!(addr(&ours("ADD", "legacy", &c), 0), "10.40.0.9/24");
    assert_eq!(ours("DEL", "legacy", &c).code, 0);
    assert!(!dir.join("10.40.0.9").exists());
}

#[test]
fn empty_reservation_file_does_not_block_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "crash",
        tmp.path(),
        r#"[[{"subnet":"10.50.0.0/30"}]]"#,
    );
    let dir = tmp.path().join("crash");
    fs::create_dir_all(&dir).unwrap();
    // The only address of a /30 (.2), left empty by a crashed writer.
    fs::write(dir.join("10.50.0.2"), "").unwrap();
    let o = ours("ADD", "c1", &c);
    assert_eq!(addr(&o, 0), "10.50.0.2/30", "{}", o.stderr);
    assert!(
        o.stderr.contains("stale"),
        "stale file not reported: {}",
        o.stderr
    );
    assert_eq!(fs::read(dir.join("10.50.0.2")).unwrap(), b"c1\r\neth0");
}

#[test]
fn del_removes_the_empty_file_of_a_killed_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", "killed", tmp.path(), V4);
    let dir = tmp.path().join("killed");
    assert_eq!(addr(&ours("ADD", "c1", &c), 0), "10.20.0.2/24");
    // The ADD of c2 was SIGKILLed between O_EXCL create and write.
    fs::write(dir.join("10.20.0.3"), "").unwrap();
    let del = ours("DEL", "c2", &c);
    assert_eq!(del.code, 0, "{}", del.stderr);
    assert_eq!(leases(&dir), ["10.20.0.2"], "{}", del.stderr);
    // Idempotent, and the live lease is untouched.
    assert_eq!(ours("DEL", "c2", &c).code, 0);
    assert_eq!(fs::read(dir.join("10.20.0.2")).unwrap(), b"c1\r\neth0");
}
