//! The ways to install the suite: the Debian package (`make deb`) installed into a scratch
//! root with dpkg, and the OCI image (`make image`) run with podman against a host dir. Both
//! must carry every binary the Makefile builds (`make print-bins`: PLUGINS, then TOOLS), and
//! every plugin must then answer VERSION.
//!
//! Build first: `make build`. Run (root): `cargo test -p conformance --test package -- --ignored`.
//! The image test takes `/tmp/cnirs-global.lock` itself (podman's store is machine-wide).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use conformance::*;
use serde_json::Value;

/// (plugins, tools) as the Makefile lists them.
fn makefile_bins() -> (Vec<String>, Vec<String>) {
    let out = run(command("make").args([
        "-s",
        "-C",
        &workspace_root().display().to_string(),
        "print-bins",
    ]));
    assert!(out.success(), "{out}");
    let lines: Vec<Vec<String>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "print-bins: plugins line, tools line: {out}"
    );
    assert!(lines[0].contains(&"static".to_owned()) && lines[0].contains(&"dhcp".to_owned()));
    (lines[0].clone(), lines[1].clone())
}

fn version() -> String {
    std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .unwrap()
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .unwrap()
}

/// `bin` answers CNI VERSION with the versions we speak.
fn answers_version(bin: &Path) {
    let out = run_with(
        command(bin).env("CNI_COMMAND", "VERSION"),
        br#"{"cniVersion":"1.0.0"}"#,
        std::time::Duration::from_secs(20),
    );
    assert!(out.success(), "{}: {out}", bin.display());
    let v: &Value = out.json();
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.1.0")),
        "{}: {v}",
        bin.display()
    );
}

fn is_executable_elf(p: &Path) -> bool {
    let exec = p
        .metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    exec && std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x7fELF"))
}

fn check_installed(dir: &Path, plugins: &[String], tools: &[String], what: &str) {
    for b in plugins.iter().chain(tools) {
        let p = dir.join(b);
        assert!(
            is_executable_elf(&p),
            "{what}: {} missing or not executable",
            p.display()
        );
    }
    for b in plugins {
        answers_version(&dir.join(b));
    }
    let help = run(command(dir.join("cnirs")).arg("--help"));
    assert!(help.success(), "{what}: cnirs --help: {help}");
}

#[test]
#[ignore]
fn deb_installs_every_binary_into_a_scratch_root_beside_the_reference_package() {
    require_root();
    require_tools(&["dpkg", "dpkg-deb", "make"]);
    let (plugins, tools) = makefile_bins();
    let tmp = tempfile::tempdir().unwrap();
    let mut build = command(workspace_root().join("scripts/build-deb.sh"));
    build
        .arg(tmp.path().join("out"))
        .arg(cni_path())
        .args(plugins.iter().chain(&tools));
    let out = run_with(&mut build, b"", std::time::Duration::from_secs(600));
    assert!(out.success(), "build-deb: {out}");
    let deb = PathBuf::from(out.stdout.trim());
    assert!(deb.is_file(), "{out}");

    let field = |f: &str| {
        run(command("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "cnirs");
    assert_eq!(field("Version"), version());
    assert!(
        field("Depends").contains("nftables"),
        "{}",
        field("Depends")
    );
    let ctrl = tmp.path().join("ctrl");
    run_ok(
        "dpkg-deb",
        &["-e", deb.to_str().unwrap(), ctrl.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/default/cnirs-agent"
    );

    // Nothing of ours where Debian's containernetworking-plugins has a file.
    let ours: BTreeSet<String> = run_ok("dpkg-deb", &["-c", deb.to_str().unwrap()])
        .stdout
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let reference = run_ok("dpkg", &["-L", "containernetworking-plugins"]).stdout;
    let clash: Vec<&str> = reference.lines().filter(|p| ours.contains(*p)).collect();
    assert!(
        clash.is_empty(),
        "files also in containernetworking-plugins: {clash:?}"
    );
    assert!(
        ours.iter().all(|p| !p.starts_with("/usr/lib/cni")),
        "{ours:?}"
    );

    // Install into a scratch root with dpkg itself.
    let root = tmp.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    let rootarg = format!("--root={}", root.display());
    let dpkg = |args: &[&str]| {
        let mut c = command("dpkg");
        c.arg(&rootarg).arg("--force-depends").args(args);
        run(&mut c)
    };
    dpkg(&["-i", deb.to_str().unwrap()]).assert_ok();
    let status = dpkg(&["-s", "cnirs"]);
    assert!(
        status.stdout.contains("Status: install ok installed"),
        "{status}"
    );
    check_installed(&root.join("opt/cni/bin"), &plugins, &tools, "deb");
    for unit in std::fs::read_dir(workspace_root().join("contrib/systemd")).unwrap() {
        let name = unit.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".service") || name.ends_with(".socket") {
            assert!(
                root.join("lib/systemd/system").join(&name).is_file(),
                "unit {name} not installed"
            );
        }
    }
    let doc = root.join("usr/share/doc/cnirs");
    for f in [
        "README.md",
        "copyright",
        "conf-examples/kubernetes/cnirs.yaml",
        "conf-examples/containerd/10-cnirs-bridge.conflist",
        "docs/install.md",
        "docs/dhcp.md",
        "docs/static.md",
    ] {
        assert!(doc.join(f).is_file(), "{f} not under /usr/share/doc/cnirs");
    }
    let conffile = root.join("etc/default/cnirs-agent");
    assert!(conffile.is_file());

    // remove keeps the conffile, purge removes it; the binaries go with remove.
    dpkg(&["-r", "cnirs"]).assert_ok();
    assert!(!root.join("opt/cni/bin/bridge").exists());
    assert!(conffile.is_file(), "remove keeps the conffile");
    dpkg(&["-P", "cnirs"]).assert_ok();
    assert!(!conffile.exists(), "purge removes the conffile");
}

/// Holds `/tmp/cnirs-global.lock` (podman's store and the runtimes are machine-wide) until
/// dropped: closing the file releases the lock.
struct GlobalLock(#[allow(dead_code)] std::fs::File);

impl GlobalLock {
    fn take() -> Self {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/cnirs-global.lock")
            .unwrap();
        // SAFETY: flock(2) on a descriptor we own for the lock's whole life.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock /tmp/cnirs-global.lock");
        Self(f)
    }
}

/// podman with a private store in `dir` (nothing left in the machine's), the flags this
/// machine's root needs (cgroupfs, runc; no CAP_SYS_RESOURCE for runc's default rlimits).
struct Podman {
    global: Vec<String>,
}

impl Podman {
    fn new(dir: &Path) -> Self {
        let d = |s: &str| dir.join(s).display().to_string();
        let global = [
            "--root",
            &d("root"),
            "--runroot",
            &d("runroot"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
            "--events-backend",
            "file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Self { global }
    }

    /// The command line, for scripts (`PODMAN=...`).
    fn line(&self) -> String {
        std::iter::once("podman".to_owned())
            .chain(self.global.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn run(&self, args: &[&str]) -> CmdOutput {
        run_with(
            command("podman").args(&self.global).args(args),
            b"",
            std::time::Duration::from_secs(120),
        )
    }

    /// `podman run --rm --network=none` with rlimits root may set here, then `args`.
    fn run_image(&self, args: &[&str]) -> CmdOutput {
        let mut all = vec![
            "run",
            "--rm",
            "--network=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        all.extend_from_slice(args);
        self.run(&all)
    }
}

#[test]
#[ignore]
fn image_copies_every_binary_into_the_mounted_host_dir() {
    require_root();
    require_tools(&["podman", "make"]);
    let _lock = GlobalLock::take();
    let (plugins, tools) = makefile_bins();
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    let tag = "localhost/cnirs-test:latest";
    let mut build = command(workspace_root().join("scripts/build-image.sh"));
    build
        .env("PODMAN", podman.line())
        .arg(tag)
        .arg(cni_path())
        .args(plugins.iter().chain(&tools));
    let built = run_with(&mut build, b"", std::time::Duration::from_secs(600));
    assert!(built.success(), "build-image: {built}");

    let inspect = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        tag,
    ]);
    assert_eq!(
        inspect.stdout.trim(),
        r#"["/opt/cni/bin/cnirs-install"]"#,
        "{inspect}"
    );
    // FROM scratch: no shell in the image.
    let sh = podman.run_image(&["--entrypoint", "/bin/sh", tag, "-c", "true"]);
    assert!(!sh.success(), "the image has a shell: {sh}");

    let (bin, netd, cfg) = (
        tmp.path().join("opt-cni-bin"),
        tmp.path().join("net.d"),
        tmp.path().join("cfg"),
    );
    for d in [&bin, &netd, &cfg] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(bin.join("flannel"), b"not ours").unwrap();
    std::fs::write(
        cfg.join("10-cnirs.conflist"),
        br#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let vol = |host: &Path, inside: &str| format!("{}:{inside}", host.display());
    let out = podman.run_image(&[
        "-v",
        &vol(&bin, "/host/opt/cni/bin"),
        "-v",
        &vol(&netd, "/host/etc/cni/net.d"),
        "-v",
        &vol(&cfg, "/etc/cnirs:ro"),
        tag,
        "--conflist=/etc/cnirs/10-cnirs.conflist",
    ]);
    assert!(out.success(), "the image's entrypoint: {out}");
    check_installed(&bin, &plugins, &tools, "image");
    assert_eq!(std::fs::read(bin.join("flannel")).unwrap(), b"not ours");
    assert!(
        netd.join("10-cnirs.conflist").is_file(),
        "conflist installed"
    );

    // The dynamic tools run inside the image too (its bundled glibc): the agent container.
    let help = podman.run_image(&["--entrypoint", "/opt/cni/bin/cnirs", tag, "--help"]);
    assert!(
        help.success() && help.stdout.contains("agent"),
        "cnirs in the image: {help}"
    );
}
