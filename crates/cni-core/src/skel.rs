//! The dispatcher every binary's `main` calls: environment + stdin in, result or error out.
//!
//! Everything it touches is injected (`var`, `stdin`, `stdout`, `stderr`), so the whole
//! contract is unit-tested without root. stdout carries the result or the error JSON and
//! nothing else.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{
    args::{CniArgs, Command, Env},
    conf::{self, Attachment, NetConf},
    delegate,
    error::{CniError, ErrorCode},
    result::CniResult,
    version::{Version, CURRENT, SUPPORTED},
};

/// The largest config we read: far above any real conflist, low enough to stay small.
const MAX_STDIN: u64 = 16 << 20;

/// One validated call: the environment, the raw config and its common keys.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub cni_path: Vec<PathBuf>,
    /// The config exactly as received (passed on unchanged to delegates).
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: Version,
    /// Where this call parks work only the kernel can observe (`netbase::detach`): deferred
    /// until the answer is out when the skeleton runs a verb ([`run`]), immediate otherwise.
    pub detach: netbase::Detacher,
}

impl Request {
    /// A request from its parts (unit tests of plugins, and tools that call a plugin's verbs
    /// directly): parses the common keys and negotiates the version like `dispatch`.
    pub fn build(
        command: Command,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        stdin: &[u8],
    ) -> Result<Self, CniError> {
        let conf: NetConf = conf::parse(stdin)?;
        let version = Version::negotiate(conf.cni_version.as_deref())?;
        Ok(Self {
            command,
            container_id: container_id.to_string(),
            netns: netns.map(PathBuf::from),
            ifname: ifname.to_string(),
            args: CniArgs::default(),
            cni_path: Vec::new(),
            stdin: stdin.to_vec(),
            conf,
            version,
            detach: netbase::Detacher::immediate(),
        })
    }

    /// The plugin's own typed view of the config.
    pub fn parse_conf<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        conf::parse(&self.stdin)
    }

    /// `prevResult`, in whatever version it came.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        match &self.conf.prev_result {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => CniResult::from_json(v, "prevResult").map(Some),
        }
    }

    /// `prevResult`, required (chained plugins on ADD and CHECK).
    pub fn require_prev_result(&self) -> Result<CniResult, CniError> {
        self.prev_result()?.ok_or_else(|| {
            CniError::config(
                "prevResult",
                format!(
                    "missing: the {} plugin must follow an interface-creating plugin in a conflist",
                    self.conf.plugin_type
                ),
            )
        })
    }

    /// The pod's netns path (ADD and CHECK always have one).
    pub fn netns(&self) -> Result<&PathBuf, CniError> {
        self.netns
            .as_ref()
            .ok_or_else(|| CniError::env("CNI_NETNS", "missing"))
    }

    /// GC's list of attachments to keep (empty when absent: release everything).
    pub fn valid_attachments(&self) -> &[Attachment] {
        self.conf.valid_attachments.as_deref().unwrap_or(&[])
    }

    /// Run the IPAM plugin named in `ipam.type` for `command` with our stdin.
    pub fn delegate_ipam(&self, command: Command) -> Result<Option<CniResult>, CniError> {
        let ty = self
            .conf
            .ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .unwrap_or_default();
        let bin = delegate::find_plugin(ty, &self.cni_path, "ipam.type")?;
        delegate::run(&bin, command, &self.stdin)
    }

    /// GC's keep-list as (container id, ifname) pairs.
    pub fn valid_pairs(&self) -> Vec<(String, String)> {
        self.valid_attachments()
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect()
    }

    /// A short tag for logs: `network/container/ifname`.
    pub fn tag(&self) -> String {
        format!("{}/{}/{}", self.conf.name, self.container_id, self.ifname)
    }
}

impl netbase::AttachmentKey for Request {
    fn network(&self) -> &str {
        &self.conf.name
    }
    fn container_id(&self) -> &str {
        &self.container_id
    }
    fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// What a plugin implements. Unimplemented verbs default to a clear error or a no-op.
pub trait Plugin {
    /// The CNI type name (`bridge`), used in the `CNI <type> plugin v<version>` banner.
    fn name(&self) -> &'static str;

    /// `CNI_ARGS` keys this plugin understands besides the common ones.
    fn known_args(&self) -> &'static [&'static str] {
        &[]
    }

    /// True for a plugin that reads no `CNI_ARGS` key and so refuses none, as the reference
    /// plugins that never parse them (loopback, bandwidth, ptp, host-device) accept any.
    fn any_args(&self) -> bool {
        false
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;

    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }

    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

/// Run one call; returns the process exit code. Work the verb parks runs at once.
pub fn dispatch(
    plugin: &dyn Plugin,
    var: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    dispatch_with(
        plugin,
        &netbase::Detacher::immediate(),
        var,
        stdin,
        stdout,
        stderr,
    )
}

/// [`dispatch`] with the detacher the verb parks its work with ([`Request::detach`]).
pub fn dispatch_with(
    plugin: &dyn Plugin,
    detach: &netbase::Detacher,
    var: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let Some(cmd) = var("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        // Run by hand, or by nerdctl probing for the plugin.
        let _ = writeln!(
            stderr,
            "CNI {} plugin v{}",
            plugin.name(),
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    };
    let mut version_for_errors = CURRENT.to_string();
    let outcome = run_command(plugin, &cmd, detach, var, stdin, &mut version_for_errors);
    match outcome {
        Ok(Some(value)) => match serde_json::to_writer(&mut *stdout, &value) {
            Ok(()) => {
                let _ = stdout.flush();
                0
            }
            Err(e) => {
                log::error!("writing result: {e}");
                1
            }
        },
        Ok(None) => 0,
        Err(e) => {
            log::warn!("{} {cmd} failed: code {}: {e}", plugin.name(), e.code());
            let _ = serde_json::to_writer(&mut *stdout, &e.to_wire(&version_for_errors));
            let _ = stdout.flush();
            1
        }
    }
}

fn run_command(
    plugin: &dyn Plugin,
    cmd: &str,
    detach: &netbase::Detacher,
    var: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version_for_errors: &mut String,
) -> Result<Option<serde_json::Value>, CniError> {
    let command = Command::parse(cmd)?;
    let mut bytes = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CniError::io("reading stdin", &e))?;
    if bytes.len() as u64 > MAX_STDIN {
        return Err(CniError::new(
            ErrorCode::Decode,
            "network config on stdin is larger than 16 MiB",
        ));
    }

    if command == Command::Version {
        // stdin may be empty or carry {"cniVersion": ...}; answer with the version asked for.
        let asked = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                crate::gokeys::pointer(&v, &["cniVersion"])
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .filter(|s| SUPPORTED.contains(&s.as_str()))
            .unwrap_or_else(|| CURRENT.to_string());
        return Ok(Some(
            json!({ "cniVersion": asked, "supportedVersions": SUPPORTED }),
        ));
    }

    let env = Env::from_vars(command, var)?;
    let conf: NetConf = conf::parse(&bytes)?;
    let version = Version::negotiate(conf.cni_version.as_deref())?;
    *version_for_errors = version.to_string();
    match command {
        Command::Check if version < Version::V0_4_0 => {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("config version {version} does not allow CHECK (needs 0.4.0 or later)"),
            ))
        }
        Command::Status | Command::Gc if version < Version::V1_1_0 => {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "config version {version} does not allow {} (needs 1.1.0)",
                    command.as_str()
                ),
            ))
        }
        _ => {}
    }
    conf::validate_network_name(&conf.name)?;
    if !plugin.any_args() {
        env.args.check_known(plugin.known_args())?;
    }

    let req = Request {
        command,
        container_id: env.container_id,
        netns: env.netns,
        ifname: env.ifname,
        args: env.args,
        cni_path: env.path,
        stdin: bytes,
        conf,
        version,
        detach: detach.clone(),
    };
    log::debug!("{} {} {}", plugin.name(), command.as_str(), req.tag());
    match command {
        Command::Add => plugin.add(&req).map(|r| Some(r.to_json(version))),
        Command::Del => plugin.del(&req).map(|()| None),
        Command::Check => plugin.check(&req).map(|()| None),
        Command::Status => plugin.status(&req).map(|()| None),
        Command::Gc => plugin.gc(&req).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// `main` of every binary: real environment and stdio, logging set up.
///
/// A verb may park work only the kernel can observe (a veth delete, the close of an nfnetlink
/// socket) with its request's detacher: it runs in a detached process once the answer is out
/// (`netbase::detach`), so the runtime sees this process exit without waiting for it. Every
/// verb that may touch nftables gets a deferring detacher, not DEL alone: the release of an
/// nfnetlink socket waits for any pending nf_tables destroy work in the whole kernel (one RCU
/// grace period), so an ADD or CHECK right after some DEL would pay for it.
pub fn run(plugin: &dyn Plugin) -> i32 {
    crate::logging::init(plugin.name());
    let var = |k: &str| std::env::var(k).ok();
    let detach = if matches!(
        var("CNI_COMMAND").as_deref(),
        Some("ADD" | "DEL" | "CHECK" | "GC")
    ) {
        netbase::Detacher::deferred()
    } else {
        netbase::Detacher::immediate()
    };
    let code = dispatch_with(
        plugin,
        &detach,
        &var,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    detach.finish();
    code
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;
    use crate::result::IpConfig;

    /// Records what it was asked and answers a fixed result.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
    }

    impl Plugin for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn known_args(&self) -> &'static [&'static str] {
            &["IP"]
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.calls.borrow_mut().push(format!("ADD {}", req.tag()));
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.7.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(format!("DEL {:?}", req.netns));
            Ok(())
        }
        fn check(&self, _req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push("CHECK".into());
            Ok(())
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.calls
                .borrow_mut()
                .push(format!("GC {}", req.valid_attachments().len()));
            Ok(())
        }
    }

    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    fn call(p: &Fake, vars: &[(&str, &str)], stdin: &str) -> Out {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = move |k: &str| m.get(k).cloned();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = dispatch(p, &var, &mut stdin.as_bytes(), &mut out, &mut err);
        Out {
            code,
            stdout: String::from_utf8(out).unwrap(),
            stderr: String::from_utf8(err).unwrap(),
        }
    }

    fn add_env(cmd: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    fn conf(v: &str) -> String {
        format!(r#"{{"cniVersion":"{v}","name":"net1","type":"fake"}}"#)
    }

    fn err_json(o: &Out) -> serde_json::Value {
        assert_ne!(o.code, 0, "expected failure, got {}", o.stdout);
        serde_json::from_str(&o.stdout).unwrap()
    }

    #[test]
    fn no_command_prints_banner_on_stderr() {
        let o = call(&Fake::default(), &[], "");
        assert_eq!(o.code, 0);
        assert!(o.stdout.is_empty());
        assert!(o.stderr.starts_with("CNI fake plugin v"), "{}", o.stderr);
    }

    #[test]
    fn version_lists_every_supported_version() {
        let o = call(
            &Fake::default(),
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(o.code, 0);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        let o = call(&Fake::default(), &[("CNI_COMMAND", "VERSION")], "");
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], CURRENT);
    }

    #[test]
    fn add_answers_in_the_config_version() {
        for (v, legacy) in [
            ("0.2.0", true),
            ("0.3.1", false),
            ("1.0.0", false),
            ("1.1.0", false),
        ] {
            let o = call(&Fake::default(), &add_env("ADD"), &conf(v));
            assert_eq!(o.code, 0, "{}", o.stdout);
            let r: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r.get("ip4").is_some(), legacy, "{v}: {r}");
        }
    }

    #[test]
    fn missing_cni_version_means_0_1_0() {
        let o = call(
            &Fake::default(),
            &add_env("ADD"),
            r#"{"name":"n","type":"fake"}"#,
        );
        let r: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(r["cniVersion"], "0.1.0");
    }

    #[test]
    fn errors_carry_spec_codes() {
        let f = Fake::default();
        assert_eq!(
            err_json(&call(&f, &add_env("ADD"), &conf("9.9.9")))["code"],
            1
        );
        assert_eq!(err_json(&call(&f, &add_env("ADD"), "{garbage"))["code"], 6);
        assert_eq!(
            err_json(&call(
                &f,
                &add_env("ADD"),
                r#"{"cniVersion":"1.0.0","name":"../x"}"#
            ))["code"],
            7
        );
        assert_eq!(
            err_json(&call(&f, &[("CNI_COMMAND", "ADD")], &conf("1.0.0")))["code"],
            4
        );
        assert_eq!(
            err_json(&call(&f, &[("CNI_COMMAND", "NOPE")], &conf("1.0.0")))["code"],
            4
        );
        let e = err_json(&call(&f, &add_env("CHECK"), &conf("0.3.1")));
        assert_eq!(e["code"], 1);
        assert_eq!(e["cniVersion"], "0.3.1");
        assert_eq!(
            err_json(&call(&f, &[("CNI_COMMAND", "GC")], &conf("1.0.0")))["code"],
            1
        );
        assert_eq!(
            err_json(&call(&f, &[("CNI_COMMAND", "STATUS")], &conf("0.4.0")))["code"],
            1
        );
        assert!(
            f.calls.borrow().is_empty(),
            "no verb ran: {:?}",
            f.calls.borrow()
        );
    }

    #[test]
    fn unknown_cni_args_need_ignore_unknown() {
        let f = Fake::default();
        let mut env = add_env("ADD");
        env.push(("CNI_ARGS", "FOO=1;IP=10.0.0.9"));
        assert_eq!(err_json(&call(&f, &env, &conf("1.0.0")))["code"], 4);
        env.pop();
        env.push(("CNI_ARGS", "IgnoreUnknown=1;FOO=1"));
        assert_eq!(call(&f, &env, &conf("1.0.0")).code, 0);
    }

    #[test]
    fn del_runs_without_a_netns_and_gc_gets_attachments() {
        let f = Fake::default();
        let mut env = add_env("DEL");
        env[2] = ("CNI_NETNS", "");
        let o = call(&f, &env, &conf("1.0.0"));
        assert_eq!(o.code, 0);
        assert!(o.stdout.is_empty());
        let gc = r#"{"cniVersion":"1.1.0","name":"n","type":"fake",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        assert_eq!(call(&f, &[("CNI_COMMAND", "GC")], gc).code, 0);
        assert_eq!(
            *f.calls.borrow(),
            vec!["DEL None".to_string(), "GC 1".to_string()]
        );
    }

    #[test]
    fn oversized_stdin_is_refused() {
        let big = " ".repeat((MAX_STDIN + 10) as usize);
        let o = call(&Fake::default(), &add_env("ADD"), &big);
        assert_eq!(err_json(&o)["code"], 6);
    }
}
