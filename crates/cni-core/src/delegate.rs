//! Delegation to another plugin (IPAM), as the reference `invoke.DelegateAdd` does: find the
//! binary named by `type` on `CNI_PATH`, run it with our environment (command overridden) and
//! the same stdin, read its result or its error from stdout; its stderr goes to ours.
//!
//! A main plugin reaches its IPAM plugin through the [`Ipam`] trait of its verbs' context:
//! [`ExecIpam`] runs the binary, [`FakeIpam`] (tests) hands out addresses from a list and
//! records what it was asked.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
};

use crate::{
    args::Command,
    error::{CniError, ErrorCode, WireError},
    result::CniResult,
    skel::Request,
};

/// The IPAM plugin of a main plugin's config (`ipam.type`), as its verbs see it.
pub trait Ipam {
    /// Run it for `command` with the request's stdin and environment. ADD returns its result.
    fn run(&self, req: &Request, command: Command) -> Result<Option<CniResult>, CniError>;
}

/// The binary named by `ipam.type`, found on `CNI_PATH` ([`Request::delegate_ipam`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecIpam;

impl Ipam for ExecIpam {
    fn run(&self, req: &Request, command: Command) -> Result<Option<CniResult>, CniError> {
        req.delegate_ipam(command)
    }
}

/// An in-memory IPAM for tests: ADD hands the next result of its list to the attachment
/// (network, container id, ifname) and holds it until DEL or GC; a second ADD of a held
/// attachment returns what it holds. Failures are injected per command.
#[derive(Debug, Default)]
pub struct FakeIpam {
    results: std::cell::RefCell<std::collections::VecDeque<CniResult>>,
    held: std::cell::RefCell<Vec<(String, CniResult)>>,
    calls: std::cell::RefCell<Vec<Command>>,
    fail: std::cell::RefCell<Vec<(Command, CniError)>>,
}

impl FakeIpam {
    /// An IPAM that answers these results, one per ADD, in order.
    pub fn new(results: impl IntoIterator<Item = CniResult>) -> Self {
        Self {
            results: std::cell::RefCell::new(results.into_iter().collect()),
            ..Self::default()
        }
    }

    /// The next call of `command` fails with `e` (each queued failure is used once).
    pub fn fail(&self, command: Command, e: CniError) {
        self.fail.borrow_mut().push((command, e));
    }

    /// Every command it was asked, in order.
    pub fn calls(&self) -> Vec<Command> {
        self.calls.borrow().clone()
    }

    /// The attachments (`network/container/ifname`) holding an address.
    pub fn held(&self) -> Vec<String> {
        self.held.borrow().iter().map(|(k, _)| k.clone()).collect()
    }
}

impl Ipam for FakeIpam {
    fn run(&self, req: &Request, command: Command) -> Result<Option<CniResult>, CniError> {
        self.calls.borrow_mut().push(command);
        let failing = {
            let mut fail = self.fail.borrow_mut();
            fail.iter()
                .position(|(c, _)| *c == command)
                .map(|i| fail.remove(i).1)
        };
        if let Some(e) = failing {
            return Err(e);
        }
        let key = req.tag();
        let mut held = self.held.borrow_mut();
        match command {
            Command::Add => {
                if let Some((_, r)) = held.iter().find(|(k, _)| *k == key) {
                    return Ok(Some(r.clone()));
                }
                let r = self.results.borrow_mut().pop_front().ok_or_else(|| {
                    CniError::new(ErrorCode::Delegate, "fake IPAM: no addresses left")
                })?;
                held.push((key, r.clone()));
                Ok(Some(r))
            }
            Command::Del => {
                held.retain(|(k, _)| *k != key);
                Ok(None)
            }
            Command::Gc => {
                let keep: Vec<String> = req
                    .valid_attachments()
                    .iter()
                    .map(|a| format!("{}/{}/{}", req.conf.name, a.container_id, a.ifname))
                    .collect();
                held.retain(|(k, _)| {
                    !k.starts_with(&format!("{}/", req.conf.name)) || keep.contains(k)
                });
                Ok(None)
            }
            Command::Check if !held.iter().any(|(k, _)| *k == key) => Err(CniError::new(
                ErrorCode::CheckFailed,
                format!("fake IPAM: {key} holds no address"),
            )),
            _ => Ok(None),
        }
    }
}

/// Where `plugin_type` lives on `path`; the name must be a plain file name.
pub fn find_plugin(plugin_type: &str, path: &[PathBuf], field: &str) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() {
        return Err(CniError::config(field, "missing plugin type"));
    }
    if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(CniError::config(
            field,
            format!("{plugin_type:?} is not a plugin name"),
        ));
    }
    for dir in path {
        let candidate = dir.join(plugin_type);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(CniError::new(
        ErrorCode::Delegate,
        format!(
            "failed to find plugin {plugin_type:?} ({field}) in CNI_PATH [{}]",
            path.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Run the delegate for `command` with `stdin`. ADD returns its result; other commands `None`.
pub fn run(binary: &Path, command: Command, stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Process::new(binary)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Delegate,
                format!("running {}: {e}", binary.display()),
            )
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A delegate that exits without reading its stdin closes the pipe: its exit status
        // and stdout then tell what happened, so a write error here is not the error to report.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            ErrorCode::Delegate,
            format!("waiting for {}: {e}", binary.display()),
        )
    })?;
    if !out.status.success() {
        return Err(match serde_json::from_slice::<WireError>(&out.stdout) {
            Ok(w) => {
                let mut e = CniError::from(w);
                e.msg = format!("{name}: {}", e.msg);
                e
            }
            Err(_) => CniError::new(
                ErrorCode::Delegate,
                format!(
                    "{name} failed ({}) without a CNI error on stdout",
                    out.status
                ),
            )
            .with_details(
                String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .take(512)
                    .collect::<String>(),
            ),
        });
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            ErrorCode::Delegate,
            format!("{name} answered ADD with invalid JSON: {e}"),
        )
    })?;
    CniResult::from_json(&value, &format!("{name} result")).map(Some)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_fake_ipam_holds_an_address_per_attachment_until_del() {
        let r = |ip: &str| CniResult {
            ips: vec![crate::IpConfig {
                address: ip.parse().unwrap(),
                gateway: None,
                interface: None,
            }],
            ..Default::default()
        };
        let ipam = FakeIpam::new([r("10.1.0.2/24"), r("10.1.0.3/24")]);
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"x","ipam":{"type":"f"}}"#;
        let req = |cmd, cid| Request::build(cmd, cid, None, "eth0", conf).unwrap();
        let a = ipam
            .run(&req(Command::Add, "a"), Command::Add)
            .unwrap()
            .unwrap();
        let again = ipam
            .run(&req(Command::Add, "a"), Command::Add)
            .unwrap()
            .unwrap();
        assert_eq!(a, again, "a held attachment keeps its address");
        ipam.run(&req(Command::Add, "b"), Command::Add).unwrap();
        assert_eq!(ipam.held(), ["n/a/eth0", "n/b/eth0"]);
        ipam.fail(Command::Del, CniError::new(ErrorCode::Io, "disk"));
        assert!(ipam.run(&req(Command::Del, "a"), Command::Del).is_err());
        ipam.run(&req(Command::Del, "a"), Command::Del).unwrap();
        assert_eq!(ipam.held(), ["n/b/eth0"]);
        assert!(ipam.run(&req(Command::Check, "a"), Command::Check).is_err());
        assert_eq!(ipam.calls().len(), 6);
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_on_path_and_refuses_traversal() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "ipam", "true");
        let path = vec![PathBuf::from("/nonexistent"), d.path().to_path_buf()];
        assert_eq!(
            find_plugin("ipam", &path, "ipam.type").unwrap(),
            d.path().join("ipam")
        );
        let e = find_plugin("../ipam", &path, "ipam.type").unwrap_err();
        assert_eq!(e.code(), 7);
        let e = find_plugin("nothere", &path, "ipam.type").unwrap_err();
        assert_eq!(e.code(), 102);
        assert!(e.msg.contains("nothere"));
    }

    #[test]
    fn passes_result_and_errors_through() {
        let d = tempfile::tempdir().unwrap();
        let ok = script(
            d.path(),
            "ok",
            r#"cat >/dev/null; echo '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.0.2/24"}]}'"#,
        );
        let r = run(&ok, Command::Add, b"{}").unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/24");
        let bad = script(
            d.path(),
            "bad",
            r#"echo '{"cniVersion":"1.0.0","code":104,"msg":"no addresses left"}'; exit 1"#,
        );
        let e = run(&bad, Command::Add, b"{}").unwrap_err();
        assert_eq!(e.code(), 104);
        assert!(e.msg.contains("no addresses left"));
        let garbage = script(d.path(), "garbage", "echo oops; exit 3");
        assert_eq!(run(&garbage, Command::Del, b"{}").unwrap_err().code(), 102);
        let env = script(d.path(), "env", r#"[ "$CNI_COMMAND" = DEL ] || exit 1"#);
        assert!(run(&env, Command::Del, b"{}").unwrap().is_none());
    }
}
