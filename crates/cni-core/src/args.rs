//! The `CNI_*` environment: which command, for which container, in which netns.
//!
//! Requirements per command follow the reference skel (`reqForCmdEntry`): ADD and CHECK need a
//! container id, a netns and an ifname; DEL needs the id and the ifname (the netns may be gone:
//! nerdctl sends DEL with an empty `CNI_NETNS` before every ADD); GC and STATUS need neither.

use std::path::PathBuf;

use crate::{
    conf::is_safe_name,
    error::{CniError, ErrorCode},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::env(
                    "CNI_COMMAND",
                    format!(
                    "unknown command {other:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"
                ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(pub Vec<(String, String)>);

/// Keys any plugin accepts in `CNI_ARGS` (CRI runtimes send them).
const ALWAYS_KNOWN: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut out = Vec::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::env(
                    "CNI_ARGS",
                    format!("{pair:?} is not KEY=VALUE"),
                ));
            };
            if k.is_empty() {
                return Err(CniError::env(
                    "CNI_ARGS",
                    format!("{pair:?} has an empty key"),
                ));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(Self(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn ignore_unknown(&self) -> bool {
        matches!(
            self.get("IgnoreUnknown"),
            Some("1" | "true" | "True" | "TRUE")
        )
    }

    /// Refuse keys the plugin does not know unless `IgnoreUnknown=1`, as the reference does.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown() {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !ALWAYS_KNOWN.contains(k) && !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(CniError::env(
                "CNI_ARGS",
                format!("unknown keys {unknown:?} (set IgnoreUnknown=1 to allow them)"),
            ))
        }
    }
}

/// The validated environment of one call.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Read and validate the `CNI_*` variables for an already parsed command.
    pub fn from_vars(
        command: Command,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CniError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let (need_id, need_netns, need_ifname, need_path) = match command {
            Command::Add | Command::Check => (true, true, true, true),
            Command::Del => (true, false, true, true),
            Command::Version | Command::Status | Command::Gc => (false, false, false, false),
        };
        let mut missing = Vec::new();
        for (name, needed) in [
            ("CNI_CONTAINERID", need_id),
            ("CNI_NETNS", need_netns),
            ("CNI_IFNAME", need_ifname),
            ("CNI_PATH", need_path),
        ] {
            if needed && get(name).is_none() {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if need_id {
            validate_container_id(&container_id)?;
        }
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if need_ifname {
            validate_ifname(&ifname)?;
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if let Some(ns) = &netns {
            if !ns.is_absolute() {
                return Err(CniError::env(
                    "CNI_NETNS",
                    format!("{} is not an absolute path", ns.display()),
                ));
            }
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args: CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        })
    }
}

/// The reference rule (`utils.ValidateContainerID`): code 3 when empty, 4 for bad characters.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            "missing containerID",
        ));
    }
    if !is_safe_name(id) {
        return Err(
            CniError::env("CNI_CONTAINERID", "invalid characters in containerID")
                .with_details(id.escape_debug().to_string()),
        );
    }
    Ok(())
}

/// `CNI_IFNAME` checked with the suite's one interface-name rule ([`netbase::IfName`]): code 4
/// naming the variable.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    netbase::IfName::new(name).map(drop).map_err(|e| {
        CniError::env("CNI_IFNAME", format!("interface name {}", e.reason))
            .with_details(name.escape_debug().to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_needs_everything_and_names_what_is_missing() {
        let e = Env::from_vars(Command::Add, &env(&[("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(
            e.msg.contains("CNI_CONTAINERID,CNI_NETNS,CNI_PATH"),
            "{}",
            e.msg
        );
        let ok = Env::from_vars(Command::Add, &env(FULL)).unwrap();
        assert_eq!(ok.path.len(), 2);
    }

    #[test]
    fn del_tolerates_an_empty_netns() {
        let mut vars = FULL.to_vec();
        vars[1] = ("CNI_NETNS", "");
        let e = Env::from_vars(Command::Del, &env(&vars)).unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn gc_and_status_need_nothing() {
        assert!(Env::from_vars(Command::Gc, &env(&[])).is_ok());
        assert!(Env::from_vars(Command::Status, &env(&[])).is_ok());
    }

    #[test]
    fn cni_ifname_of_15_bytes_passes_and_bad_names_are_code_4() {
        assert!(validate_ifname("123456789012345").is_ok());
        for bad in [
            "1234567890123456",
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\0",
            "eth\"0",
            "ethü",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn container_ids_empty_is_code_3_bad_characters_code_4() {
        assert_eq!(validate_container_id("").unwrap_err().code(), 3);
        for bad in ["../x", "a/b", "-a", "a;b", "a\0"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code(), 4, "{bad:?}");
        }
        assert!(validate_container_id("0123abcDEF_.-x").is_ok());
    }

    #[test]
    fn cni_args_rules() {
        let a = CniArgs::parse("IgnoreUnknown=1;IP=10.0.0.5;FOO=bar").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert!(a.check_known(&["IP"]).is_ok());
        let strict = CniArgs::parse("IP=10.0.0.5;FOO=bar;K8S_POD_NAME=p").unwrap();
        let e = strict.check_known(&["IP"]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.msg.contains("FOO") && !e.msg.contains("K8S"), "{}", e.msg);
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code(), 4);
        assert_eq!(CniArgs::parse("=x").unwrap_err().code(), 4);
    }

    #[test]
    fn unknown_command_is_code_4() {
        let e = Command::parse("UPDATE").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.msg.contains("UPDATE"));
    }
}
