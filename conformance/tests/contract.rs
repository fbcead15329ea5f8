//! Conformance of every binary to the CNI contract (SPEC + shared/CNI-NOTES.md §1.10), and
//! host-local + bridge through cnitool (libcni 1.1.2) in every version it speaks.
//!
//! Plain tests run each release binary with a chosen environment and stdin, without root and
//! without touching any namespace: the config they get is "poisoned" with a key of the wrong
//! type that the plugin itself rejects (code 7) before any side effect, so even a call that
//! wrongly passes the contract checks cannot touch the machine. Kernel tests (`--ignored`,
//! root) run inside their own [`TestNet`].
//!
//! Build first: `cargo build --release --workspace --bins` (or the five packages).
//! Run: `cargo test -p conformance --test contract` and `... -- --ignored` (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conformance::*;
use serde_json::{json, Value};

/// The binaries held to the contract (firewall and tuning are stubs for now).
const BINARIES: &[&str] = &[
    "bridge",
    "internal-bridge",
    "portmap",
    "isolation",
    "netpol",
    "host-local",
    "etcd-ipam",
    "static",
    "dhcp",
    "bandwidth",
    "ptp",
    "macvlan",
    "host-device",
    "tap",
];

/// Exactly what every binary must advertise.
const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The code every poisoned config gets from the plugin itself (invalid config).
const POISON_CODE: u64 = 7;

// ---------------------------------------------------------------------------------------------
// Plain (no root) helpers
// ---------------------------------------------------------------------------------------------

/// A config for `bin` that passes every generic check of the contract and that the plugin
/// itself refuses (code 7) before doing anything: `mtu` of the wrong type for the bridges,
/// `snat` for portmap, no `prevResult` for isolation, `ipam.ranges` for host-local,
/// `ipam.etcdEndpoints` for etcd-ipam.
fn poisoned(bin: &str, version: &str, name: &str, data_dir: &Path) -> Value {
    let mut c = match bin {
        "bridge" | "internal-bridge" => json!({
            "type": bin, "bridge": "cnirs-c0", "mtu": "poison",
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.231.0.0/24"}]]}
        }),
        "portmap" => json!({"type": "portmap", "snat": "poison",
                            "capabilities": {"portMappings": true}}),
        "isolation" => json!({"type": "isolation"}),
        "netpol" => json!({"type": "netpol"}),
        "host-local" => json!({
            "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": "poison"}
        }),
        // Refused before etcd is contacted: nothing listens there anyway.
        "etcd-ipam" => json!({
            "type": "etcd-ipam",
            "ipam": {"type": "etcd-ipam", "etcdEndpoints": "poison",
                     "ranges": [[{"subnet": "10.231.0.0/24"}]]}
        }),
        "static" => json!({
            "type": "bridge",
            "ipam": {"type": "static", "addresses": "poison"}
        }),
        // Refused before the daemon is dialled (none listens on that path anyway).
        "dhcp" => json!({
            "type": "bridge",
            "ipam": {"type": "dhcp", "priority": "poison",
                     "daemonSocketPath": "/nonexistent/cnirs-contract/dhcp.sock"}
        }),
        "bandwidth" => json!({"type": "bandwidth", "ingressRate": "poison",
                              "capabilities": {"bandwidth": true}}),
        "ptp" | "tap" => json!({"type": bin, "mtu": "poison",
                                "ipam": {"type": "host-local", "dataDir": data_dir,
                                         "ranges": [[{"subnet": "10.231.0.0/24"}]]}}),
        "macvlan" => json!({"type": "macvlan", "mode": "poison"}),
        "host-device" => json!({"type": "host-device", "device": 5}),
        other => panic!("no poisoned config for {other}"),
    };
    c["cniVersion"] = json!(version);
    c["name"] = json!(name);
    c
}

/// Whether the poison of [`poisoned`] stops `bin` for `cmd` before any side effect. When it
/// does not (portmap DEL/GC/STATUS, isolation DEL/GC/STATUS go straight to the firewall state;
/// portmap's DEL goes on past a config ADD refused, so a runtime's chain DEL is not cut short),
/// the plain tests leave that pair to the kernel test `bad_inputs_leave_nothing_behind`, so a
/// broken contract check can never act on the machine's own netns.
fn poison_bites(bin: &str, cmd: &str) -> bool {
    // The interface plugins and bandwidth do not parse their own keys on DEL (it must succeed
    // on a config ADD refused), GC and STATUS.
    !matches!(
        (bin, cmd),
        ("portmap", "DEL" | "GC" | "STATUS")
            | ("isolation" | "netpol", "DEL" | "GC" | "STATUS")
            // static holds nothing: DEL, GC and STATUS do not read the config.
            | ("static", "DEL" | "GC" | "STATUS")
            // dhcp's GC has nothing to do (the daemon keeps no list to collect).
            | ("dhcp", "GC")
            | (
                "bandwidth" | "ptp" | "macvlan" | "host-device" | "tap",
                "DEL" | "GC" | "STATUS"
            )
    )
}

/// One plain run of a binary: a cleared environment plus `env`, `stdin`, a 30 s deadline.
struct Plain {
    tmp: tempfile::TempDir,
}

impl Plain {
    fn new() -> Self {
        Self {
            tmp: tempfile::Builder::new()
                .prefix("cnirs-contract-")
                .tempdir()
                .unwrap(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The usual full environment of `command` (netns path that does not exist).
    fn env(&self, command: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", "cnirs-contract-ctr1".to_owned()),
            (
                "CNI_NETNS",
                "/run/netns/cnirs-t-contract-no-such-ns".to_owned(),
            ),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", cni_path().display().to_string()),
            (
                "CNIRS_RUN_DIR",
                self.tmp.path().join("run").display().to_string(),
            ),
        ] {
            m.insert(k.to_owned(), v);
        }
        m
    }

    fn run(&self, bin: &str, env: &BTreeMap<String, String>, stdin: &[u8]) -> CmdOutput {
        if let Some(c) = env.get("CNI_COMMAND") {
            assert!(
                poison_bites(bin, c),
                "test bug: plain run of {bin} {c} is not side-effect free"
            );
        }
        let mut cmd = command(plugin_bin(bin));
        cmd.envs(env);
        run_with(&mut cmd, stdin, Duration::from_secs(30))
    }

    /// Runs `bin` with the full env of `command` changed by `edit`, and `conf` on stdin.
    fn call(
        &self,
        bin: &str,
        command: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>),
        conf: &Value,
    ) -> CmdOutput {
        let mut env = self.env(command);
        edit(&mut env);
        self.run(bin, &env, conf.to_string().as_bytes())
    }
}

/// Collects every violation so one run reports all binaries at once.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} contract violation(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// Checks that `out` is a CNI error: non-zero exit (not killed), stdout is exactly one JSON
/// object with `cniVersion` (a supported version; `version` if given), `code` == `code`,
/// non-empty `msg`, and that msg+details mention each of `mentions`.
fn check_error(
    f: &mut Failures,
    case: &str,
    out: &CmdOutput,
    code: u64,
    version: Option<&str>,
    mentions: &[&str],
) {
    let mut problems = Vec::new();
    if out.timed_out || out.code.is_none() {
        problems.push("killed / timed out".to_owned());
    } else if out.success() {
        problems.push("exit status 0".to_owned());
    }
    match &out.json {
        None => problems.push("stdout is not exactly one JSON value".to_owned()),
        Some(v) => {
            if !v.is_object() {
                problems.push("stdout JSON is not an object".to_owned());
            }
            match v.get("cniVersion").and_then(Value::as_str) {
                None => problems.push("no cniVersion".to_owned()),
                Some(s) if !SUPPORTED.contains(&s) => {
                    problems.push(format!("cniVersion {s:?} is not a supported version"))
                }
                Some(s) => {
                    if let Some(want) = version {
                        if s != want {
                            problems
                                .push(format!("cniVersion {s:?}, expected the request's {want:?}"));
                        }
                    }
                }
            }
            if v.get("code").and_then(Value::as_u64) != Some(code) {
                problems.push(format!("code {:?}, expected {code}", v.get("code")));
            }
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
            if msg.is_empty() {
                problems.push("empty or missing msg".to_owned());
            }
            let text = format!(
                "{msg} {}",
                v.get("details").and_then(Value::as_str).unwrap_or_default()
            );
            for m in mentions {
                if !text.contains(m) {
                    problems.push(format!("msg/details do not mention {m:?}"));
                }
            }
        }
    }
    f.check(problems.is_empty(), || {
        format!("[{case}] {}\n{out}", problems.join("; "))
    });
}

/// Checks that the call got past the generic contract checks to the plugin's own config
/// parsing (the poisoned key), i.e. the input was accepted.
fn check_reached_plugin(f: &mut Failures, case: &str, out: &CmdOutput) {
    let ok = !out.success()
        && out.cni_error_code() == Some(POISON_CODE)
        && out.stdout.contains("invalid config");
    f.check(ok, || {
        format!("[{case}] expected the input to be accepted (plugin's own code 7 on the poisoned config)\n{out}")
    });
}

// ---------------------------------------------------------------------------------------------
// Plain tests: every binary, every contract rule
// ---------------------------------------------------------------------------------------------

#[test]
fn poisoned_configs_reach_the_plugin() {
    // The control for every plain test below: with a correct environment, each binary gets
    // past the contract checks and rejects its poisoned key itself, so a rule that should
    // fail earlier proves it by failing with another code.
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for v in SUPPORTED {
            let out = p.call(bin, "ADD", |_| {}, &poisoned(bin, v, "net1", &p.data_dir()));
            check_reached_plugin(&mut f, &format!("{bin} ADD {v}"), &out);
            check_error(
                &mut f,
                &format!("{bin} ADD {v}"),
                &out,
                POISON_CODE,
                Some(v),
                &[],
            );
        }
    }
    f.assert_none();
    assert!(
        !p.data_dir().exists() && !p.tmp.path().join("run").exists(),
        "a rejected call wrote files"
    );
}

#[test]
fn no_command_prints_the_banner() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for env in [BTreeMap::new(), {
            let mut e = BTreeMap::new();
            e.insert("CNI_COMMAND".to_owned(), String::new());
            e
        }] {
            let out = p.run(bin, &env, b"");
            let want = format!("CNI {bin} plugin v");
            f.check(
                out.success() && out.stdout.is_empty() && out.stderr.starts_with(&want),
                || format!("[{bin} no CNI_COMMAND {env:?}] want exit 0, empty stdout, stderr starting {want:?}\n{out}"),
            );
        }
    }
    f.assert_none();
}

#[test]
fn version_lists_exactly_the_supported_versions() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".to_owned(), "VERSION".to_owned());
        for stdin in [
            "".to_owned(),
            r#"{"cniVersion":"0.4.0"}"#.to_owned(),
            poisoned(bin, "1.0.0", "net1", &p.data_dir()).to_string(),
        ] {
            let out = p.run(bin, &env, stdin.as_bytes());
            let list: Option<Vec<&str>> = out
                .json
                .as_ref()
                .and_then(|j| j.get("supportedVersions"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect());
            let v = out
                .json
                .as_ref()
                .and_then(|j| j.get("cniVersion"))
                .and_then(Value::as_str);
            f.check(
                out.success()
                    && list.as_deref() == Some(SUPPORTED)
                    && v.is_some_and(|v| SUPPORTED.contains(&v)),
                || format!("[{bin} VERSION stdin={stdin}] want exit 0 and supportedVersions {SUPPORTED:?}\n{out}"),
            );
        }
    }
    f.assert_none();
}

#[test]
fn unknown_command_is_code_4() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for cmd in ["FOO", "add", "ADD ", "UPDATE"] {
            let out = p.call(
                bin,
                cmd,
                |_| {},
                &poisoned(bin, "1.0.0", "n", &p.data_dir()),
            );
            check_error(
                &mut f,
                &format!("{bin} CNI_COMMAND={cmd:?}"),
                &out,
                4,
                None,
                &["CNI_COMMAND"],
            );
        }
    }
    f.assert_none();
}

#[test]
fn missing_env_vars_are_code_4_and_named() {
    let p = Plain::new();
    let mut f = Failures::default();
    let all = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"];
    for bin in BINARIES {
        let conf = poisoned(bin, "1.0.0", "n", &p.data_dir());
        // ADD and CHECK need all four.
        for cmd in ["ADD", "CHECK"] {
            let out = p.call(
                bin,
                cmd,
                |e| all.iter().for_each(|k| drop(e.remove(*k))),
                &conf,
            );
            check_error(&mut f, &format!("{bin} {cmd} no env"), &out, 4, None, &all);
            for k in all {
                let out = p.call(bin, cmd, |e| drop(e.remove(k)), &conf);
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} without {k}"),
                    &out,
                    4,
                    None,
                    &[k],
                );
                // Empty counts as missing.
                let out = p.call(
                    bin,
                    cmd,
                    |e| drop(e.insert(k.to_owned(), String::new())),
                    &conf,
                );
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} with empty {k}"),
                    &out,
                    4,
                    None,
                    &[k],
                );
            }
        }
        // DEL needs the id, ifname and path, not the netns (it may be gone).
        if !poison_bites(bin, "DEL") {
            continue;
        }
        for k in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"] {
            let out = p.call(bin, "DEL", |e| drop(e.remove(k)), &conf);
            check_error(
                &mut f,
                &format!("{bin} DEL without {k}"),
                &out,
                4,
                None,
                &[k],
            );
        }
        let out = p.call(bin, "DEL", |e| drop(e.remove("CNI_NETNS")), &conf);
        check_reached_plugin(&mut f, &format!("{bin} DEL without CNI_NETNS"), &out);
    }
    f.assert_none();
}

#[test]
fn garbage_json_is_code_6() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for stdin in [
            &b""[..],
            b"{not json",
            b"{\"cniVersion\":",
            b"\xff\xfe\x00",
            b"   ",
        ] {
            let out = p.run(bin, &p.env("ADD"), stdin);
            check_error(
                &mut f,
                &format!("{bin} ADD stdin={:?}", String::from_utf8_lossy(stdin)),
                &out,
                6,
                None,
                &[],
            );
        }
    }
    f.assert_none();
}

/// A valid config followed by more bytes is not one JSON document: the reference
/// (`json.Unmarshal`) refuses it with code 6 ("invalid character ... after top-level value").
#[test]
fn trailing_bytes_after_the_config_are_code_6() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        let conf = poisoned(bin, "1.0.0", "n", &p.data_dir()).to_string();
        for tail in ["{}", "garbage", "]", "\"{\""] {
            let out = p.run(bin, &p.env("ADD"), format!("{conf}{tail}").as_bytes());
            check_error(
                &mut f,
                &format!("{bin} ADD config+{tail:?}"),
                &out,
                6,
                None,
                &[],
            );
        }
    }
    f.assert_none();
}

#[test]
fn unknown_cni_version_is_code_1() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for v in ["0.5.0", "1.2.0", "2.0.0", "1.0", "abc", ""] {
            for cmd in ["ADD", "DEL"] {
                if !poison_bites(bin, cmd) {
                    continue;
                }
                let out = p.call(bin, cmd, |_| {}, &poisoned(bin, v, "n", &p.data_dir()));
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} cniVersion={v:?}"),
                    &out,
                    1,
                    None,
                    &[],
                );
            }
        }
    }
    f.assert_none();
}

#[test]
fn check_needs_0_4_0_and_gc_status_need_1_1_0() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for v in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
            let out = p.call(bin, "CHECK", |_| {}, &poisoned(bin, v, "n", &p.data_dir()));
            check_error(
                &mut f,
                &format!("{bin} CHECK {v}"),
                &out,
                1,
                Some(v),
                &["CHECK"],
            );
        }
        for v in ["0.4.0", "1.0.0"] {
            let out = p.call(bin, "CHECK", |_| {}, &poisoned(bin, v, "n", &p.data_dir()));
            check_reached_plugin(&mut f, &format!("{bin} CHECK {v}"), &out);
        }
        for cmd in ["GC", "STATUS"] {
            if !poison_bites(bin, cmd) {
                continue;
            }
            for v in ["0.3.1", "0.4.0", "1.0.0"] {
                let out = p.call(bin, cmd, |_| {}, &poisoned(bin, v, "n", &p.data_dir()));
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} {v}"),
                    &out,
                    1,
                    Some(v),
                    &[cmd],
                );
            }
            // GC/STATUS need no CNI_CONTAINERID/NETNS/IFNAME.
            let out = p.call(
                bin,
                cmd,
                |e| {
                    for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
                        e.remove(k);
                    }
                },
                &poisoned(bin, "1.1.0", "n", &p.data_dir()),
            );
            check_reached_plugin(&mut f, &format!("{bin} {cmd} 1.1.0 bare env"), &out);
        }
    }
    f.assert_none();
}

#[test]
fn unsafe_network_names_are_code_7_naming_name() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        for name in ["../x", "a/b", "/etc", ".hidden", "-x", "x y", "net\n", ""] {
            let out = p.call(
                bin,
                "ADD",
                |_| {},
                &poisoned(bin, "0.4.0", name, &p.data_dir()),
            );
            check_error(
                &mut f,
                &format!("{bin} ADD name={name:?}"),
                &out,
                7,
                Some("0.4.0"),
                &["name"],
            );
        }
        // The libcni pattern allows these.
        for name in ["a", "Net_1.x-y", "9"] {
            let out = p.call(
                bin,
                "ADD",
                |_| {},
                &poisoned(bin, "0.4.0", name, &p.data_dir()),
            );
            check_reached_plugin(&mut f, &format!("{bin} ADD name={name:?}"), &out);
        }
    }
    f.assert_none();
}

#[test]
fn bad_ifnames_and_container_ids_are_code_4() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        let conf = poisoned(bin, "1.0.0", "n", &p.data_dir());
        for cmd in ["ADD", "DEL", "CHECK"] {
            if !poison_bites(bin, cmd) {
                continue;
            }
            for ifname in ["abcdefghijklmnop", "a/b", "/", ".", "..", "a:b", "e th0"] {
                let out = p.call(
                    bin,
                    cmd,
                    |e| drop(e.insert("CNI_IFNAME".into(), ifname.into())),
                    &conf,
                );
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} CNI_IFNAME={ifname:?}"),
                    &out,
                    4,
                    None,
                    &["CNI_IFNAME"],
                );
            }
            for id in ["a/b", "../../etc/passwd", "/abs", "a b", ".x"] {
                let out = p.call(
                    bin,
                    cmd,
                    |e| drop(e.insert("CNI_CONTAINERID".into(), id.into())),
                    &conf,
                );
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} CNI_CONTAINERID={id:?}"),
                    &out,
                    4,
                    None,
                    &["CNI_CONTAINERID"],
                );
            }
        }
        // The longest legal name (15 bytes) is accepted.
        let out = p.call(
            bin,
            "ADD",
            |e| drop(e.insert("CNI_IFNAME".into(), "abcdefghijklmno".into())),
            &conf,
        );
        check_reached_plugin(&mut f, &format!("{bin} ADD 15-byte ifname"), &out);
    }
    f.assert_none();
}

#[test]
fn unknown_cni_args_need_ignore_unknown() {
    let p = Plain::new();
    let mut f = Failures::default();
    for bin in BINARIES {
        let conf = poisoned(bin, "1.0.0", "n", &p.data_dir());
        for cmd in ["ADD", "DEL", "CHECK"] {
            if !poison_bites(bin, cmd) {
                continue;
            }
            // The reference bandwidth, ptp and host-device parse no CNI_ARGS and refuse none:
            // neither do ours (an unknown key reaches the plugin, as below).
            let any_args = matches!(*bin, "bandwidth" | "ptp" | "host-device");
            for args in [
                "FOO=bar",
                "K8S_POD_NAME=p;FOO=bar",
                "IgnoreUnknown=0;FOO=bar",
            ] {
                if any_args {
                    let out = p.call(
                        bin,
                        cmd,
                        |e| drop(e.insert("CNI_ARGS".into(), args.into())),
                        &conf,
                    );
                    check_reached_plugin(&mut f, &format!("{bin} {cmd} CNI_ARGS={args:?}"), &out);
                    continue;
                }
                let out = p.call(
                    bin,
                    cmd,
                    |e| drop(e.insert("CNI_ARGS".into(), args.into())),
                    &conf,
                );
                check_error(
                    &mut f,
                    &format!("{bin} {cmd} CNI_ARGS={args:?}"),
                    &out,
                    4,
                    None,
                    &["CNI_ARGS", "FOO"],
                );
            }
            for args in [
                "IgnoreUnknown=1;FOO=bar",
                "FOO=bar;IgnoreUnknown=1",
                "IgnoreUnknown=true;NERDCTL_CNI_DHCP_HOSTNAME=h",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
                "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
            ] {
                let out = p.call(bin, cmd, |e| drop(e.insert("CNI_ARGS".into(), args.into())), &conf);
                check_reached_plugin(&mut f, &format!("{bin} {cmd} CNI_ARGS={args:?}"), &out);
            }
        }
    }
    f.assert_none();
}

#[test]
fn huge_stdin_is_a_prompt_decode_error() {
    let p = Plain::new();
    let mut f = Failures::default();
    let spaces = vec![b' '; 10 << 20];
    let garbage: Vec<u8> = (0..(10u32 << 20))
        .map(|i| b"x{[\"\\"[(i % 5) as usize])
        .collect();
    // Valid JSON start, then 20 MiB of string: more than any plugin should read.
    let mut endless = br#"{"cniVersion":"1.0.0","name":"n","type":"x","pad":""#.to_vec();
    endless.extend(std::iter::repeat_n(b'a', 20 << 20));
    for bin in BINARIES {
        for (what, stdin) in [
            ("10 MiB spaces", &spaces),
            ("10 MiB garbage", &garbage),
            ("20 MiB string", &endless),
        ] {
            let t = Instant::now();
            let out = p.run(bin, &p.env("ADD"), stdin);
            let took = t.elapsed();
            check_error(&mut f, &format!("{bin} ADD {what}"), &out, 6, None, &[]);
            f.check(took < Duration::from_secs(5), || {
                format!("[{bin} ADD {what}] took {took:?} (want < 5 s)")
            });
        }
    }
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Kernel tests
// ---------------------------------------------------------------------------------------------

/// Ignores the round-robin hint host-local rewrites on every allocation.
fn volatile(i: &Item) -> bool {
    i.kind == "file" && i.text.contains("last_reserved_ip")
}

/// Our bridge (or internal-bridge) + host-local as one plugin config (for direct runs).
fn bridge_plugin_conf(net: &TestNet, ty: &str, bridge: &str, subnet: &str) -> Value {
    json!({
        "type": ty,
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": ty == "bridge",
        "ipam": {
            "type": "host-local",
            "dataDir": net.data_dir(),
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

fn with_common(mut plugin: Value, version: &str, name: &str) -> Value {
    plugin["cniVersion"] = json!(version);
    plugin["name"] = json!(name);
    plugin
}

/// A valid ADD result (1.0.0) of an attachment to put in `prevResult` for chained plugins.
fn fake_prev(ifname: &str, netns: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cnirs-c0", "mac": "02:00:00:00:00:01"},
            {"name": "vethdeadbeef", "mac": "02:00:00:00:00:02"},
            {"name": ifname, "mac": "02:00:00:00:00:03", "sandbox": netns}
        ],
        "ips": [{"address": "10.232.0.2/24", "gateway": "10.232.0.1", "interface": 2}]
    })
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bad_inputs_leave_nothing_behind() {
    let net = TestNet::new();
    let pod = net.pod("p");
    let np = pod.path_str().to_owned();
    let base_env = |cmd: &str| -> Vec<(String, String)> {
        let mut e = cni_env(cmd, "cnirs-ctr-bad", &np, "eth0");
        e.push(("CNI_PATH".into(), cni_path().display().to_string()));
        e
    };
    // A valid config for each binary: the bad inputs below are the only problem.
    let good = |bin: &str, version: &str, name: &str| -> Value {
        let plugin = match bin {
            "bridge" | "internal-bridge" => {
                bridge_plugin_conf(&net, bin, "cnirs-b0", "10.232.0.0/24")
            }
            "host-local" => bridge_plugin_conf(&net, "bridge", "cnirs-b0", "10.232.0.0/24"),
            // Nothing listens there: every case must be refused before etcd is tried.
            "etcd-ipam" => json!({"type": "etcd-ipam", "ipam": {"type": "etcd-ipam",
                "etcdEndpoints": ["http://127.0.0.1:9"],
                "ranges": [[{"subnet": "10.232.0.0/24"}]]}}),
            "portmap" => json!({"type": "portmap", "capabilities": {"portMappings": true},
                                "runtimeConfig": {"portMappings": [
                                    {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
                                "prevResult": fake_prev("eth0", &np)}),
            "isolation" => json!({"type": "isolation", "prevResult": fake_prev("eth0", &np)}),
            "netpol" => json!({"type": "netpol", "prevResult": fake_prev("eth0", &np)}),
            "static" => json!({"type": "static", "ipam": {"type": "static",
                "addresses": [{"address": "10.232.0.5/24"}]}}),
            // No daemon listens there: every case must be refused before it is dialled.
            "dhcp" => json!({"type": "dhcp", "ipam": {"type": "dhcp",
                "daemonSocketPath": net.tmp().join("no-daemon/dhcp.sock")}}),
            "bandwidth" => json!({"type": "bandwidth", "ingressRate": 1_000_000,
                                  "ingressBurst": 100_000, "prevResult": fake_prev("eth0", &np)}),
            "ptp" | "tap" => json!({"type": bin, "ipam": {"type": "host-local",
                "dataDir": net.data_dir(), "ranges": [[{"subnet": "10.232.1.0/24"}]]}}),
            "macvlan" => json!({"type": "macvlan", "master": "eth0"}),
            "host-device" => json!({"type": "host-device", "device": "cnirs-nodev"}),
            other => panic!("{other}"),
        };
        with_common(plugin, version, name)
    };
    let before = HostState::of(&net);
    let pod_links = pod.link_names();
    let mut f = Failures::default();
    let t = Instant::now();
    let mut n = 0;
    for bin in BINARIES {
        let exe = plugin_bin(bin);
        type Edit = Box<dyn Fn(&mut Vec<(String, String)>)>;
        let set = |k: &'static str, v: &'static str| -> Edit {
            Box::new(move |e: &mut Vec<(String, String)>| {
                e.retain(|(ek, _)| ek != k);
                e.push((k.into(), v.into()));
            })
        };
        let unset = |k: &'static str| -> Edit {
            Box::new(move |e: &mut Vec<(String, String)>| e.retain(|(ek, _)| ek != k))
        };
        let cases: Vec<(&str, &str, Edit, Value, u64)> = vec![
            (
                "unknown command",
                "ADDX",
                Box::new(|_| {}),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "missing CNI_NETNS",
                "ADD",
                unset("CNI_NETNS"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "missing CNI_PATH",
                "ADD",
                set("CNI_PATH", ""),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "unknown cniVersion",
                "ADD",
                Box::new(|_| {}),
                good(bin, "9.9.9", "badnet"),
                1,
            ),
            (
                "CHECK 0.3.1",
                "CHECK",
                Box::new(|_| {}),
                good(bin, "0.3.1", "badnet"),
                1,
            ),
            (
                "GC 1.0.0",
                "GC",
                Box::new(|_| {}),
                good(bin, "1.0.0", "badnet"),
                1,
            ),
            (
                "STATUS 1.0.0",
                "STATUS",
                Box::new(|_| {}),
                good(bin, "1.0.0", "badnet"),
                1,
            ),
            (
                "name ../x",
                "ADD",
                Box::new(|_| {}),
                good(bin, "1.0.0", "../x"),
                7,
            ),
            (
                "name ../x DEL",
                "DEL",
                Box::new(|_| {}),
                good(bin, "1.0.0", "../x"),
                7,
            ),
            (
                "ifname 16 bytes",
                "ADD",
                set("CNI_IFNAME", "abcdefghijklmnop"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "ifname with /",
                "ADD",
                set("CNI_IFNAME", "a/b"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "container id with /",
                "ADD",
                set("CNI_CONTAINERID", "../a/b"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "container id with / DEL",
                "DEL",
                set("CNI_CONTAINERID", "../a/b"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "unknown CNI_ARGS",
                "ADD",
                set("CNI_ARGS", "FOO=bar"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "unknown CNI_ARGS DEL",
                "DEL",
                set("CNI_ARGS", "FOO=bar"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "unknown cniVersion DEL",
                "DEL",
                Box::new(|_| {}),
                good(bin, "0.9.0", "badnet"),
                1,
            ),
            (
                "ifname 16 bytes DEL",
                "DEL",
                set("CNI_IFNAME", "abcdefghijklmnop"),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "missing CNI_IFNAME DEL",
                "DEL",
                set("CNI_IFNAME", ""),
                good(bin, "1.0.0", "badnet"),
                4,
            ),
            (
                "GC name ../x",
                "GC",
                Box::new(|_| {}),
                good(bin, "1.1.0", "../x"),
                7,
            ),
            (
                "STATUS unknown CNI_ARGS",
                "STATUS",
                set("CNI_ARGS", "FOO=bar"),
                good(bin, "1.1.0", "badnet"),
                4,
            ),
            (
                "GC 0.4.0",
                "GC",
                Box::new(|_| {}),
                good(bin, "0.4.0", "badnet"),
                1,
            ),
        ];
        // bandwidth, ptp and host-device read no CNI_ARGS, as the reference: none is unknown.
        let any_args = matches!(*bin, "bandwidth" | "ptp" | "host-device");
        for (what, cmd, edit, conf, code) in cases {
            if any_args && what.contains("CNI_ARGS") {
                continue;
            }
            let mut env = base_env(cmd);
            edit(&mut env);
            let out = net.run_plugin(&exe, &env, &conf.to_string());
            n += 1;
            check_error(&mut f, &format!("{bin} {what}"), &out, code, None, &[]);
        }
        let mut env = base_env("ADD");
        env.retain(|(k, _)| k != "CNI_ARGS");
        let out = net.run_plugin(&exe, &env, &" ".repeat(10 << 20));
        n += 1;
        check_error(&mut f, &format!("{bin} 10 MiB spaces"), &out, 6, None, &[]);
    }
    // Plugin-level refusals of the bridge: made before touching anything, or rolled back.
    let bridge = plugin_bin("bridge");
    let long_bridge = with_common(
        bridge_plugin_conf(&net, "bridge", "cnirs-0123456789", "10.232.0.0/24"),
        "1.0.0",
        "badnet",
    );
    let mut bad_subnet = with_common(
        bridge_plugin_conf(&net, "bridge", "cnirs-b0", "10.232.0.0/24"),
        "1.0.0",
        "badnet",
    );
    bad_subnet["ipam"]["ranges"] = json!([[{"subnet": "10.232.0.0/33"}]]);
    let mut no_ipam_bin = with_common(
        bridge_plugin_conf(&net, "bridge", "cnirs-b0", "10.232.0.0/24"),
        "1.0.0",
        "badnet",
    );
    no_ipam_bin["ipam"]["type"] = json!("cnirs-no-such-ipam");
    for (what, conf) in [
        ("ipam type not in CNI_PATH", no_ipam_bin),
        ("bridge name 16 bytes", long_bridge),
        ("ipam subnet /33", bad_subnet),
    ] {
        let out = net.run_plugin(&bridge, &base_env("ADD"), &conf.to_string());
        n += 1;
        f.check(!out.success() && out.json.is_some(), || {
            format!("[bridge {what}] want a CNI error\n{out}")
        });
    }
    let took = t.elapsed();
    f.check(pod.link_names() == pod_links, || {
        format!(
            "pod links changed: {:?} -> {:?}",
            pod_links,
            pod.link_names()
        )
    });
    let diff = before.diff(&HostState::of(&net));
    f.check(diff.is_empty(), || {
        format!("host state changed by rejected calls:\n{diff}")
    });
    f.assert_none();
    eprintln!("bad_inputs_leave_nothing_behind: {n} rejected calls in {took:?}");
}

/// Our bridge + host-local (+ portmap + isolation) conflist in `version`.
fn chain_conf(net: &TestNet, version: &str, name: &str, subnet: &str, full: bool) -> Value {
    let mut plugins = vec![bridge_plugin_conf(net, "bridge", "cnirs-b1", subnet)];
    if full {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        plugins.push(json!({"type": "isolation"}));
    }
    json!({"cniVersion": version, "name": name, "plugins": plugins})
}

/// Lease files (`dataDir/<net>/<ip>`) and their contents.
fn leases(net: &TestNet, name: &str) -> BTreeMap<String, String> {
    let dir = net.data_dir().join(name);
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f.parse::<std::net::IpAddr>().is_ok() {
            out.insert(f, std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

/// The first IPv4 address (no prefix) and gateway of an ADD result in any version.
fn v4_of(result: &Value) -> (String, String) {
    if let Some(ip4) = result.get("ip4") {
        let a = ip4["ip"].as_str().unwrap();
        return (
            a.split('/').next().unwrap().to_owned(),
            ip4["gateway"].as_str().unwrap().to_owned(),
        );
    }
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| !i["address"].as_str().unwrap().contains(':'))
        .expect("an IPv4 address in the result");
    (
        ip["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned(),
        ip["gateway"].as_str().unwrap().to_owned(),
    )
}

/// ADD / CHECK / STATUS / GC / DEL through cnitool with a conflist in `version`.
fn cnitool_cycle(version: &str, subnet: &str) {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let name = format!("cnt{}", version.replace('.', ""));
    let conf = chain_conf(
        &net,
        version,
        &name,
        subnet,
        version != "0.2.0" && version != "0.1.0",
    );
    let tool = net.cnitool(&conf);
    let t0 = Instant::now();
    let ra = tool.add(&a).assert_ok().json().clone();
    let t_add = t0.elapsed();
    // The result is in the conflist's version.
    assert_eq!(ra["cniVersion"], version, "result version\n{ra:#}");
    match version {
        "0.1.0" | "0.2.0" => {
            assert!(
                ra["ip4"]["ip"].is_string(),
                "legacy result has ip4.ip: {ra:#}"
            );
            assert!(
                ra.get("ips").is_none() && ra.get("interfaces").is_none(),
                "{ra:#}"
            );
        }
        "0.3.0" | "0.3.1" => {
            assert_eq!(
                ra["ips"][0]["version"], "4",
                "0.3.x result has ips[].version: {ra:#}"
            );
            assert!(ra["interfaces"].is_array(), "{ra:#}");
        }
        "0.4.0" => assert_eq!(ra["ips"][0]["version"], "4", "{ra:#}"),
        _ => {
            assert!(
                ra["ips"][0].get("version").is_none(),
                "1.0.0 result has no version: {ra:#}"
            );
            assert!(ra["interfaces"].is_array(), "{ra:#}");
        }
    }
    let (ip_a, gw) = v4_of(&ra);
    assert!(can_ping(&a, &gw), "pod a cannot ping its gateway {gw}");
    let rb = tool.add(&b).assert_ok().json().clone();
    let (ip_b, _) = v4_of(&rb);
    assert_ne!(ip_a, ip_b);
    assert!(can_ping(&b, &ip_a), "pod b cannot ping pod a {ip_a}");
    let l = leases(&net, &name);
    assert_eq!(l.len(), 2, "two leases: {l:?}");
    assert!(l.contains_key(&ip_a) && l.contains_key(&ip_b), "{l:?}");

    let v_ge_040 = !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1");
    if v_ge_040 {
        tool.check(&a).assert_ok();
    } else {
        // libcni refuses CHECK for these versions itself.
        tool.check(&a).assert_err();
    }
    tool.status().assert_ok();
    // GC keeping both: nothing released.
    let id = |p: &Netns| tool.container_id_for(p);
    let keep = json!([{"containerID": id(&a), "ifname": "eth0"}, {"containerID": id(&b), "ifname": "eth0"}]);
    let out = net.cnitool(&conf).valid_attachments(keep).gc();
    out.assert_ok();
    assert_eq!(
        leases(&net, &name).len(),
        2,
        "GC released a valid attachment"
    );
    if v_ge_040 {
        tool.check(&a).assert_ok();
        tool.check(&b).assert_ok();
    }
    // GC keeping only a: b's lease goes.
    let keep = json!([{"containerID": id(&a), "ifname": "eth0"}]);
    net.cnitool(&conf).valid_attachments(keep).gc().assert_ok();
    let l = leases(&net, &name);
    assert_eq!(
        l.keys().cloned().collect::<Vec<_>>(),
        vec![ip_a.clone()],
        "GC kept only a"
    );
    assert!(can_ping(&a, &gw), "GC broke the valid pod a");
    tool.del(&b).assert_ok();
    let t1 = Instant::now();
    tool.del(&a).assert_ok();
    let t_del = t1.elapsed();
    assert!(leases(&net, &name).is_empty(), "DEL released the lease");
    // DEL is idempotent.
    tool.del(&a).assert_ok();
    let host_links = net.host().link_names();
    assert!(
        !host_links.iter().any(|l| l.starts_with("veth")),
        "veths left: {host_links:?}"
    );
    eprintln!("cnitool {version}: ADD {t_add:?}, DEL {t_del:?}");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cnitool_cycle_0_2_0() {
    cnitool_cycle("0.2.0", "10.233.2.0/24");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cnitool_cycle_0_3_0() {
    cnitool_cycle("0.3.0", "10.233.30.0/24");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cnitool_cycle_0_3_1() {
    cnitool_cycle("0.3.1", "10.233.31.0/24");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cnitool_cycle_0_4_0() {
    cnitool_cycle("0.4.0", "10.233.4.0/24");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn cnitool_cycle_1_0_0() {
    cnitool_cycle("1.0.0", "10.233.10.0/24");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn del_from_cache_after_the_netns_is_gone() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "1.0.0", "gone", "10.234.0.0/24", true);
    let tool = net.cnitool(&conf);
    // A sentinel pod keeps the network's own objects (bridge, table) alive.
    let sentinel = net.pod("s");
    tool.add(&sentinel).assert_ok();
    let baseline = HostState::of(&net);
    let pod = net.pod("p");
    let path = pod.path_str().to_owned();
    let id = tool.container_id_for(&pod);
    let r = tool.add(&pod).assert_ok().json().clone();
    let (ip, _) = v4_of(&r);
    assert!(leases(&net, "gone").contains_key(&ip));
    run_ok("ip", &["netns", "del", pod.name()]);
    assert!(!Path::new(&path).exists());
    // libcni reads the cached result and runs DEL (reverse order) with it as prevResult.
    let out = tool.del_path(&path, &id);
    out.assert_ok();
    assert!(
        !leases(&net, "gone").contains_key(&ip),
        "lease of the gone pod released"
    );
    let diff = baseline.diff(&HostState::of(&net)).without(volatile);
    diff.assert_empty("ADD then DEL after `ip netns del`");
    // And again (runtimes retry).
    tool.del_path(&path, &id).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn disable_check_makes_check_a_no_op() {
    let net = TestNet::new();
    let mut conf = chain_conf(&net, "1.0.0", "nochk", "10.235.0.0/24", false);
    let mut control = chain_conf(&net, "1.0.0", "chk", "10.235.1.0/24", false);
    control["plugins"][0]["bridge"] = json!("cnirs-b2");
    conf["disableCheck"] = json!(true);
    let (a, b) = (net.pod("a"), net.pod("b"));
    let tool = net.cnitool(&conf);
    let ctl = net.cnitool(&control);
    tool.add(&a).assert_ok();
    ctl.add(&b).assert_ok();
    tool.check(&a).assert_ok();
    ctl.check(&b).assert_ok();
    // Break both attachments the same way: the pod's interface is gone.
    a.ip(&["link", "del", "eth0"]);
    b.ip(&["link", "del", "eth0"]);
    let out = ctl.check(&b);
    out.assert_err();
    tool.check(&a).assert_ok();
    tool.del(&a).assert_ok();
    ctl.del(&b).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn disable_gc_keeps_every_lease() {
    let net = TestNet::new();
    let mut conf = chain_conf(&net, "1.0.0", "nogc", "10.235.2.0/24", false);
    conf["disableGC"] = json!(true);
    let mut control = chain_conf(&net, "1.0.0", "gc", "10.235.3.0/24", false);
    control["plugins"][0]["bridge"] = json!("cnirs-b3");
    let (a, b) = (net.pod("a"), net.pod("b"));
    let (tool, ctl) = (net.cnitool(&conf), net.cnitool(&control));
    tool.add(&a).assert_ok();
    ctl.add(&b).assert_ok();
    // An empty valid list: GC would release everything.
    tool.gc().assert_ok();
    ctl.gc().assert_ok();
    assert_eq!(leases(&net, "nogc").len(), 1, "disableGC: the lease stays");
    assert!(
        leases(&net, "gc").is_empty(),
        "control: GC released the lease"
    );
    tool.del(&a).assert_ok();
    ctl.del(&b).assert_ok();
}

/// A temp CNI_PATH with `bridge` and `host-local` symlinked to the chosen implementations.
fn mixed_path(net: &TestNet, bridge: &Path, host_local: &Path) -> PathBuf {
    let dir = net
        .tmp()
        .join(format!("mixed-{}", bridge.display().to_string().len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(bridge, dir.join("bridge")).unwrap();
    std::os::unix::fs::symlink(host_local, dir.join("host-local")).unwrap();
    dir
}

fn drop_in(reference_bridge: bool) {
    let net = TestNet::new();
    let (bridge, hl) = if reference_bridge {
        (reference_plugin_bin("bridge"), plugin_bin("host-local"))
    } else {
        (plugin_bin("bridge"), reference_plugin_bin("host-local"))
    };
    let dir = mixed_path(&net, &bridge, &hl);
    let mut conf = chain_conf(&net, "1.0.0", "dropin", "10.236.0.0/24", false);
    // The reference bridge masquerades with iptables: keep it out of the way.
    conf["plugins"][0]["ipMasq"] = json!(false);
    let tool = net.cnitool(&conf).cni_path(&[dir]);
    let before = HostState::of(&net);
    let (a, b) = (net.pod("a"), net.pod("b"));
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    let ((ip_a, gw), (ip_b, _)) = (v4_of(&ra), v4_of(&rb));
    assert_ne!(ip_a, ip_b);
    assert!(
        can_ping(&a, &gw) && can_ping(&b, &ip_a),
        "pods reach the gateway and each other"
    );
    let l = leases(&net, "dropin");
    assert!(l.contains_key(&ip_a) && l.contains_key(&ip_b), "{l:?}");
    tool.check(&a).assert_ok();
    tool.check(&b).assert_ok();
    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    tool.del(&b).assert_ok();
    assert!(
        leases(&net, "dropin").is_empty(),
        "leases left: {:?}",
        leases(&net, "dropin")
    );
    // Only the bridge itself (and host-local's lock) may stay.
    let diff = before.diff(&HostState::of(&net)).without(|i| {
        volatile(i)
            || i.text.contains("cnirs-b1")
            || (i.kind == "file"
                && (i.text.ends_with("/dropin/") || i.text.contains("dropin/lock")))
            || (i.kind == "file" && i.text.starts_with("cache/"))
            // Our suite's table and its state dir (lock, empty dirs, which table it filled)
            // outlive the last DEL.
            || (i.kind == "nft" && !reference_bridge)
            || (i.kind == "file"
                && !reference_bridge
                && i.text.starts_with("run/")
                && (i.text.ends_with('/')
                    || i.text.ends_with("/lock = ")
                    || i.text.contains("/table.json = ")))
    });
    diff.assert_empty("drop-in ADD/DEL");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn drop_in_reference_bridge_with_our_host_local() {
    drop_in(true);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn drop_in_our_bridge_with_reference_host_local() {
    drop_in(false);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn ignore_unknown_args_pass_the_whole_chain_and_unknown_ones_change_nothing() {
    let net = TestNet::new();
    let conf = chain_conf(&net, "1.0.0", "args", "10.237.0.0/24", true);
    let pod = net.pod("p");
    let before = HostState::of(&net);
    let links = pod.link_names();
    let out = net.cnitool(&conf).cni_args("FOO=bar").add(&pod);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(4), "unknown CNI_ARGS key\n{out}");
    assert!(out.stdout.contains("FOO"), "error names the key\n{out}");
    before
        .diff(&HostState::of(&net))
        .assert_empty("ADD refused for CNI_ARGS");
    assert_eq!(pod.link_names(), links);
    let tool = net
        .cnitool(&conf)
        .cni_args("IgnoreUnknown=1;FOO=bar;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u")
        .cap_args(
            json!({"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}),
        );
    let r = tool.add(&pod).assert_ok().json().clone();
    let (_, gw) = v4_of(&r);
    assert!(can_ping(&pod, &gw));
    tool.check(&pod).assert_ok();
    tool.del(&pod).assert_ok();
    assert!(leases(&net, "args").is_empty());
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn concurrent_adds_through_the_bridge_get_distinct_addresses() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 12;
    let net = TestNet::new();
    let conf = with_common(
        bridge_plugin_conf(&net, "bridge", "cnirs-b3", "10.238.0.0/24"),
        "1.0.0",
        "race",
    );
    let conf_s = conf.to_string();
    let bin = plugin_bin("bridge");
    let t0 = Instant::now();
    // Pods first (netns creation is not what is measured).
    let pods: Vec<Vec<Netns>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let net = &net;
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| net.pod(&format!("{t}x{i}")))
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t_ns = t0.elapsed();
    let env_for = |cmd: &str, pod: &Netns| {
        let mut e = cni_env(cmd, &format!("ctr-{}", pod.name()), pod.path_str(), "eth0");
        e.push(("CNI_PATH".into(), cni_path().display().to_string()));
        e
    };
    let t1 = Instant::now();
    let results: Vec<(Netns, CmdOutput)> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|group| {
                let (net, bin, conf_s, env_for) = (&net, &bin, &conf_s, &env_for);
                s.spawn(move || {
                    group
                        .iter()
                        .map(|p| (p.clone(), net.run_plugin(bin, &env_for("ADD", p), conf_s)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let t_add = t1.elapsed();
    let mut seen = BTreeSet::new();
    let mut gw = None;
    for (p, out) in &results {
        out.assert_ok();
        let (ip, g) = v4_of(out.json());
        assert!(
            seen.insert(ip.clone()),
            "duplicate address {ip} (pod {})",
            p.name()
        );
        gw = Some(g);
    }
    let n = THREADS * PER_THREAD;
    assert_eq!(seen.len(), n);
    assert_eq!(leases(&net, "race").len(), n, "one lease per pod");
    let gw = gw.unwrap();
    let t2 = Instant::now();
    let unreachable: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|group| {
                let gw = &gw;
                s.spawn(move || {
                    group
                        .iter()
                        .filter(|p| !can_ping_eventually(p, gw, 3))
                        .map(|p| p.name().to_owned())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let t_ping = t2.elapsed();
    assert!(
        unreachable.is_empty(),
        "pods that cannot ping {gw}: {unreachable:?}"
    );
    let t3 = Instant::now();
    std::thread::scope(|s| {
        for group in &pods {
            let (net, bin, conf_s, env_for) = (&net, &bin, &conf_s, &env_for);
            s.spawn(move || {
                for p in group {
                    net.run_plugin(bin, &env_for("DEL", p), conf_s).assert_ok();
                }
            });
        }
    });
    let t_del = t3.elapsed();
    assert!(leases(&net, "race").is_empty(), "leases left after DEL");
    let veths = net
        .host()
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .count();
    assert_eq!(veths, 0, "veths left after DEL");
    eprintln!(
        "concurrency: {n} pods ({THREADS} threads): netns {t_ns:?}, ADD {t_add:?}, ping {t_ping:?}, DEL {t_del:?}"
    );
}
