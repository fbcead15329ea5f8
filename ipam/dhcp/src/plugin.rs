//! The CNI side: each verb is one call to the daemon (`DHCP.Allocate` for ADD and CHECK,
//! `DHCP.Release` for DEL), exactly as the reference plugin makes it, so our plugin works with
//! the reference daemon and the reference plugin with ours.

use cni_core::{CniError, CniResult, ErrorCode, Plugin, Request};

use crate::{
    config,
    rpc::{self, CmdArgs, Empty, GoResult, RpcError},
};

/// The plugin, for `cni_core::skel::run`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dhcp;

/// The call as the reference sends it (`skel.CmdArgs`; the netns made absolute).
pub fn cmd_args(req: &Request) -> CmdArgs {
    CmdArgs {
        container_id: req.container_id.clone(),
        netns: req
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ifname: req.ifname.clone(),
        args: req
            .args
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        path: req
            .cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
        netns_override: String::new(),
        stdin_data: req.stdin.clone(),
    }
}

fn to_cni(e: RpcError) -> CniError {
    let code = match &e {
        RpcError::Dial { .. } => ErrorCode::TryAgainLater,
        _ => ErrorCode::Delegate,
    };
    let hint = match &e {
        RpcError::Dial { .. } => "hint: is the DHCP daemon running (`dhcp daemon`)?",
        _ => "",
    };
    CniError::new(code, e.to_string()).with_details(hint)
}

fn allocate(req: &Request) -> Result<CniResult, CniError> {
    let conf = config::parse(&req.stdin)?;
    let answer: GoResult =
        rpc::call(&conf.socket_path, rpc::ALLOCATE, &cmd_args(req)).map_err(to_cni)?;
    answer.to_result().map_err(to_cni)
}

impl Plugin for Dhcp {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let r = allocate(req)?;
        log::info!(
            "{}: {}",
            req.tag(),
            r.ips
                .iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(r)
    }

    /// Release; a daemon that is not running holds no lease, so DEL succeeds (the reference
    /// fails it).
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let conf = config::parse(&req.stdin)?;
        match rpc::call::<Empty>(&conf.socket_path, rpc::RELEASE, &cmd_args(req)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_absent() => {
                log::warn!("{}: {e}: no daemon, no lease to release", req.tag());
                Ok(())
            }
            Err(e) => Err(to_cni(e)),
        }
    }

    /// The daemon checks its lease (as the reference, through Allocate); the address it holds
    /// must be the one in `prevResult` when there is one.
    fn check(&self, req: &Request) -> Result<(), CniError> {
        let r = allocate(req)?;
        if let Some(prev) = req.prev_result()? {
            for ip in &r.ips {
                if !prev.ips.iter().any(|p| p.address.ip() == ip.address.ip()) {
                    return Err(CniError::new(
                        ErrorCode::CheckFailed,
                        format!(
                            "the DHCP lease holds {} but prevResult does not list it",
                            ip.address
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Unavailable (50) when the daemon does not answer.
    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = config::parse(&req.stdin)?;
        std::os::unix::net::UnixStream::connect(&conf.socket_path)
            .map(drop)
            .map_err(|e| {
                CniError::new(
                    ErrorCode::NotAvailable,
                    format!(
                        "the DHCP daemon does not answer at {}: {e}",
                        conf.socket_path.display()
                    ),
                )
            })
    }
}
