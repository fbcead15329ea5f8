//! Driving plugins: directly (env + stdin), or through cnitool (libcni 1.1.2).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

use crate::exec::{command, run, run_with, CmdOutput, DEFAULT_TIMEOUT};
use crate::netns::{Netns, TestNet};

/// Where Debian's reference plugins (containernetworking-plugins) live.
pub const REFERENCE_CNI_PATH: &str = "/usr/lib/cni";

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The directory of OUR built plugin binaries: `$CNIRS_BIN_DIR` if set, else
/// `$CARGO_TARGET_DIR/release`, else `<workspace>/target/release`.
pub fn cni_path() -> PathBuf {
    if let Some(d) = std::env::var_os("CNIRS_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("release");
    }
    workspace_root().join("target").join("release")
}

/// The reference plugins' directory, [`REFERENCE_CNI_PATH`].
pub fn reference_cni_path() -> PathBuf {
    PathBuf::from(REFERENCE_CNI_PATH)
}

/// Our plugin `name` (e.g. `"bridge"`), panicking with how to build it if it is missing.
#[track_caller]
pub fn plugin_bin(name: &str) -> PathBuf {
    let p = cni_path().join(name);
    assert!(
        p.is_file(),
        "plugin binary {} missing: build it first (`cargo build --release --workspace --bins`, \
         or `make build`), or point CNIRS_BIN_DIR at the binaries",
        p.display()
    );
    p
}

/// The reference plugin `name`, panicking if containernetworking-plugins is not installed.
#[track_caller]
pub fn reference_plugin_bin(name: &str) -> PathBuf {
    let p = reference_cni_path().join(name);
    assert!(
        p.is_file(),
        "reference plugin {} missing (apt-get install containernetworking-plugins)",
        p.display()
    );
    p
}

/// Joins directories into a `CNI_PATH` value (`a:b`), e.g. ours first, then the reference.
pub fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// The cnitool binary: `$CNITOOL` if set, else `conformance/cnitool/bin/cnitool`, built (once
/// per test process) with `conformance/cnitool/build.sh`, which does nothing when it is up to
/// date. Panics with the build output if the build fails.
#[track_caller]
pub fn cnitool_path() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        if let Some(p) = std::env::var_os("CNITOOL").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "CNITOOL={} does not exist (make cnitool)",
                    p.display()
                ))
            };
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cnitool");
        let mut cmd = command(dir.join("build.sh"));
        if let Some(home) = std::env::var_os("HOME") {
            cmd.env("HOME", home);
        }
        let out = run_with(&mut cmd, b"", std::time::Duration::from_secs(600));
        if out.success() {
            Ok(dir.join("bin").join("cnitool"))
        } else {
            Err(format!(
                "building cnitool failed (needs golang-go and golang-github-appc-cni-dev):\n{out}"
            ))
        }
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The usual CNI environment of one call: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
/// `CNI_IFNAME` (pass "" for `netns` to leave CNI_NETNS out, as for GC/STATUS/VERSION).
pub fn cni_env(
    command: &str,
    container_id: &str,
    netns: &str,
    ifname: &str,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("CNI_COMMAND".to_owned(), command.to_owned()),
        ("CNI_CONTAINERID".to_owned(), container_id.to_owned()),
        ("CNI_IFNAME".to_owned(), ifname.to_owned()),
    ];
    if !netns.is_empty() {
        env.push(("CNI_NETNS".to_owned(), netns.to_owned()));
    }
    env
}

impl TestNet {
    /// Runs a plugin binary inside the host netns (`ip netns exec HOST BIN`) with `stdin` and
    /// a cleared environment plus: `CNI_PATH` = [`cni_path`] (unless `env` sets it),
    /// `CNIRS_RUN_DIR` = [`TestNet::run_dir`], then `env`.
    #[track_caller]
    pub fn run_plugin<K: AsRef<str>, V: AsRef<str>>(
        &self,
        bin: &Path,
        env: &[(K, V)],
        stdin: &str,
    ) -> CmdOutput {
        let mut cmd = self.host().command(&bin.display().to_string());
        cmd.env("CNI_PATH", cni_path())
            .env("CNIRS_RUN_DIR", self.run_dir());
        for (k, v) in env {
            cmd.env(k.as_ref(), v.as_ref());
        }
        run_with(&mut cmd, stdin.as_bytes(), DEFAULT_TIMEOUT)
    }

    /// A cnitool driver for `conflist` (its `name` is the network name), running in the host
    /// netns against [`cni_path`] (see [`Cnitool::cni_path`] to use the reference plugins).
    /// The conflist is written to a fresh NETCONFPATH dir under the test's temp dir.
    #[track_caller]
    pub fn cnitool(&self, conflist: &Value) -> Cnitool<'_> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = match conflist.get("name").and_then(Value::as_str) {
            Some(n) => n.to_owned(),
            None => panic!("conflist has no \"name\": {conflist}"),
        };
        let dir = self
            .tmp()
            .join(format!("netconf/{}", N.fetch_add(1, Ordering::SeqCst)));
        let file = dir.join(format!("{name}.conflist"));
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, conflist.to_string()))
        {
            panic!("cannot write {}: {e}", file.display());
        }
        Cnitool {
            net: self,
            netconf_dir: dir,
            name,
            cni_path: join_path(&[cni_path()]),
            ifname: "eth0".to_owned(),
            container_id: None,
            cap_args: None,
            cni_args: None,
            valid_attachments: None,
            extra_env: Vec::new(),
            mount_ns: None,
        }
    }
}

/// Runs cnitool inside the host netns with NETCONFPATH, CNI_PATH, CNI_CONTAINERID,
/// CNI_IFNAME, CAP_ARGS, CNI_ARGS, CNI_CACHE_DIR and CNIRS_RUN_DIR set from the test.
pub struct Cnitool<'a> {
    net: &'a TestNet,
    netconf_dir: PathBuf,
    name: String,
    cni_path: String,
    ifname: String,
    container_id: Option<String>,
    cap_args: Option<Value>,
    cni_args: Option<String>,
    valid_attachments: Option<Value>,
    extra_env: Vec<(String, String)>,
    mount_ns: Option<&'a crate::MountNs>,
}

impl<'a> Cnitool<'a> {
    /// Run cnitool (and so the plugins) inside `mns` with the plugins' DEFAULT state root
    /// (no `CNIRS_RUN_DIR`): `mns` gives it a private `/run/cni-rs`
    /// ([`crate::MountNs::private_dirs`]).
    pub fn mount_ns(mut self, mns: &'a crate::MountNs) -> Self {
        self.mount_ns = Some(mns);
        self
    }

    /// Plugin directories (CNI_PATH), e.g. `&[reference_cni_path()]`.
    pub fn cni_path(mut self, dirs: &[PathBuf]) -> Self {
        self.cni_path = join_path(dirs);
        self
    }

    /// Uses the reference plugins in /usr/lib/cni.
    pub fn reference(self) -> Self {
        self.cni_path(&[reference_cni_path()])
    }

    /// CNI_IFNAME (default `eth0`).
    pub fn ifname(mut self, ifname: &str) -> Self {
        self.ifname = ifname.to_owned();
        self
    }

    /// CNI_CONTAINERID (default: `cnirs-<pod netns name>`).
    pub fn container_id(mut self, id: &str) -> Self {
        self.container_id = Some(id.to_owned());
        self
    }

    /// CAP_ARGS: capability args (`{"portMappings": [...]}`), injected by libcni into
    /// `runtimeConfig` for the plugins that declare the capability.
    pub fn cap_args(mut self, args: Value) -> Self {
        self.cap_args = Some(args);
        self
    }

    /// CNI_ARGS (`K=V;K=V`).
    pub fn cni_args(mut self, args: &str) -> Self {
        self.cni_args = Some(args.to_owned());
        self
    }

    /// CNI_VALID_ATTACHMENTS for `gc`: `[{"containerID": .., "ifname": ..}]`.
    pub fn valid_attachments(mut self, list: Value) -> Self {
        self.valid_attachments = Some(list);
        self
    }

    /// Any other env var for cnitool (inherited by the plugins it runs).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The container id used for `pod`.
    pub fn container_id_for(&self, pod: &Netns) -> String {
        self.container_id
            .clone()
            .unwrap_or_else(|| format!("cnirs-{}", pod.name()))
    }

    /// The network name (the conflist's `name`).
    pub fn network(&self) -> &str {
        &self.name
    }

    fn run(&self, args: &[&str], container_id: Option<String>) -> CmdOutput {
        let tool = cnitool_path().display().to_string();
        let mut cmd = match self.mount_ns {
            Some(m) => m.command(self.net.host(), &tool),
            None => self.net.host().command(&tool),
        };
        cmd.args(args)
            .env("NETCONFPATH", &self.netconf_dir)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_CACHE_DIR", self.net.cache_dir());
        if self.mount_ns.is_none() {
            cmd.env("CNIRS_RUN_DIR", self.net.run_dir());
        }
        if let Some(id) = container_id {
            cmd.env("CNI_CONTAINERID", id);
        }
        if let Some(c) = &self.cap_args {
            cmd.env("CAP_ARGS", c.to_string());
        }
        if let Some(a) = &self.cni_args {
            cmd.env("CNI_ARGS", a);
        }
        if let Some(v) = &self.valid_attachments {
            cmd.env("CNI_VALID_ATTACHMENTS", v.to_string());
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    /// `cnitool add NET POD-PATH`; stdout is the result JSON on success.
    #[track_caller]
    pub fn add(&self, pod: &Netns) -> CmdOutput {
        self.run(
            &["add", &self.name, pod.path_str()],
            Some(self.container_id_for(pod)),
        )
    }

    /// `cnitool check NET POD-PATH`.
    #[track_caller]
    pub fn check(&self, pod: &Netns) -> CmdOutput {
        self.run(
            &["check", &self.name, pod.path_str()],
            Some(self.container_id_for(pod)),
        )
    }

    /// `cnitool del NET POD-PATH`.
    #[track_caller]
    pub fn del(&self, pod: &Netns) -> CmdOutput {
        self.run(
            &["del", &self.name, pod.path_str()],
            Some(self.container_id_for(pod)),
        )
    }

    /// `cnitool del NET PATH` for a netns path that may no longer exist (DEL after the pod is gone).
    #[track_caller]
    pub fn del_path(&self, netns_path: &str, container_id: &str) -> CmdOutput {
        self.run(
            &["del", &self.name, netns_path],
            Some(container_id.to_owned()),
        )
    }

    /// `cnitool gc NET` (CNI 1.1 GC, cniVersion 1.1.0, valid attachments from
    /// [`Cnitool::valid_attachments`], default none).
    #[track_caller]
    pub fn gc(&self) -> CmdOutput {
        self.run(&["gc", &self.name], None)
    }

    /// `cnitool status NET` (CNI 1.1 STATUS, cniVersion 1.1.0).
    #[track_caller]
    pub fn status(&self) -> CmdOutput {
        self.run(&["status", &self.name], None)
    }
}
