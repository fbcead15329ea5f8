//! `cnirs reconcile`: put the suite's nftables table (`inet cnirs`) back after something
//! removed it (`nft flush ruleset`, `systemctl reload nftables`, `firewall-cmd --reload`).
//!
//! The plugins keep what they installed in state files under
//! `$CNIRS_RUN_DIR/netns-<inode>-<cookie>/` (default `/run/cni-rs`); this loads the table
//! skeleton and re-adds every element that state knows, in one nft transaction
//! ([`nftplan::Firewall::reconcile`]), for the network namespace it runs in
//! (`ip netns exec NS cnirs reconcile` for another one). It also removes the state directories
//! of namespaces that no longer exist ([`nftplan::nsstate::gc_dead`]).
//!
//! ```text
//! cnirs reconcile            repair (exit 0 ok, 1 failed)
//! cnirs reconcile --check    report what is missing, change nothing
//!                            (exit 0 nothing missing, 1 something missing, 2 cannot tell)
//! ```
use std::{io::Write, process::ExitCode};

use nftplan::{
    nsstate, run_root,
    schema::Family,
    skeleton::{chain_rules, CHAINS},
    Firewall, NetnsId, NftBackend, NftCli, NftError, TABLE,
};
use serde_json::Value;

const USAGE: &str = "usage: cnirs reconcile [--check]

Rebuild the nftables table `inet cnirs` of the CNI plugins (skeleton and every element their
state under $CNIRS_RUN_DIR, default /run/cni-rs, records) in the current network namespace,
and remove the state of network namespaces that no longer exist.

  --check    report what is missing from the kernel and change nothing
             (exit 0: nothing missing, 1: something missing, 2: cannot tell)
  -h, --help this text

CNIRS_LOG=error|warn|info|debug sets the log level (default info); CNIRS_NFT the nft binary.
";

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Repair,
    Check,
    Help,
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut mode = Mode::Repair;
    for a in args {
        match a.as_str() {
            "--check" | "-c" => mode = Mode::Check,
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(mode)
}

/// `cnirs reconcile ARGS`.
pub fn run(args: &[String]) -> ExitCode {
    match parse_args(args) {
        Ok(Mode::Help) => {
            let _ = std::io::stderr().write_all(USAGE.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Mode::Repair) => match repair() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("reconcile failed: {e}");
                ExitCode::from(1)
            }
        },
        Ok(Mode::Check) => match check() {
            Ok(missing) if missing.is_empty() => {
                log::info!("table {TABLE} matches the state: nothing missing");
                ExitCode::SUCCESS
            }
            Ok(missing) => {
                for m in &missing {
                    log::warn!("missing: {m}");
                }
                log::warn!(
                    "{} thing(s) missing from {TABLE}; run `cnirs reconcile` to repair",
                    missing.len()
                );
                ExitCode::from(1)
            }
            Err(e) => {
                log::error!("check failed: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            log::error!("{e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The firewall of this netns, or `None` when no plugin ever ran here (no state directory):
/// then there is nothing to restore and no table is created.
fn firewall() -> Result<Option<Firewall>, NftError> {
    let fw = Firewall::open()?;
    if !fw.state_dir().exists() {
        log::info!(
            "no state in {}: no CNI plugin of this suite ran in this netns, nothing to do",
            fw.state_dir().display()
        );
        return Ok(None);
    }
    Ok(Some(fw))
}

/// `nft -f - <<< skeleton + every element of the state`, after removing dead namespaces'
/// state.
fn repair() -> Result<(), NftError> {
    // Veth pairs a bridge DEL retired whose detached deleter was killed (the kernel is the
    // truth: nothing in the state names them). A failure here does not stop the repair.
    match netops::Kernel::new().and_then(|k| k.host().delete_retired()) {
        Ok(0) => {}
        Ok(n) => log::info!("deleted {n} retired link(s) a killed DEL left"),
        Err(e) => log::warn!("retired links: {e}"),
    }
    let gone = nsstate::gc_dead(&run_root(), NetnsId::current()?)?;
    if !gone.is_empty() {
        log::info!(
            "removed the state of {} network namespace(s) that no longer exist",
            gone.len()
        );
    }
    let Some(fw) = firewall()? else {
        return Ok(());
    };
    let t = std::time::Instant::now();
    let n = fw.reconcile()?;
    log::info!(
        "table {TABLE} reconciled from {} ({n} elements) in {:?}",
        fw.state_dir().display(),
        t.elapsed()
    );
    Ok(())
}

/// Everything that `reconcile` would add and the kernel lacks: the table, skeleton rules per
/// chain (`nft -j list table inet cnirs`), then each element the state records (one `get`
/// batch, element by element only if the batch fails).
fn check() -> Result<Vec<String>, NftError> {
    let Some(fw) = firewall()? else {
        return Ok(Vec::new());
    };
    let mut missing = Vec::new();
    let (table, rest) = TABLE.split_once(' ').unwrap_or(("inet", "cnirs"));
    let Some(listing) = NftCli::new().query(&["list", "table", table, rest])? else {
        missing.push(format!("table {TABLE} (everything)"));
        return Ok(missing);
    };
    missing.extend(missing_rules(&listing));
    missing.extend(fw.missing_elems()?.iter().map(|e| {
        format!(
            "element {} {} {{ {} }}",
            e.table(),
            e.set_name(),
            e.key_text()
        )
    }));
    Ok(missing)
}

/// Chains of the skeleton that are missing or hold fewer rules than the skeleton adds
/// (`listing` is `nft -j list table inet cnirs`).
pub(crate) fn missing_rules(listing: &str) -> Vec<String> {
    let want: Vec<(&str, usize)> = CHAINS
        .iter()
        .filter(|c| c.family == Family::Inet)
        .map(|c| (c.name, chain_rules(c.family, c.name).count()))
        .collect();
    let v: Value = serde_json::from_str(listing).unwrap_or(Value::Null);
    let objs = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let chains: Vec<&str> = objs
        .iter()
        .filter_map(|o| o.get("chain")?.get("name")?.as_str())
        .collect();
    let mut out = Vec::new();
    for (name, n) in want {
        if !chains.contains(&name) {
            out.push(format!("chain {TABLE} {name}"));
            continue;
        }
        let have = objs
            .iter()
            .filter(|o| o.get("rule").and_then(|r| r.get("chain")?.as_str()) == Some(name))
            .count();
        if have < n {
            out.push(format!("{} of {n} rules of chain {TABLE} {name}", n - have));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn args() {
        assert_eq!(parse_args(&[]).unwrap(), Mode::Repair);
        assert_eq!(parse_args(&["--check".into()]).unwrap(), Mode::Check);
        assert_eq!(parse_args(&["--help".into()]).unwrap(), Mode::Help);
        assert!(parse_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn rules_missing_from_a_listing() {
        // A table with only an empty `forward` chain: every other chain is missing and so are
        // forward's rules.
        let listing = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"cnirs"}},
            {"chain":{"family":"inet","table":"cnirs","name":"forward"}}]}"#;
        let m = missing_rules(listing);
        assert!(
            m.iter()
                .any(|s| s == "6 of 6 rules of chain inet cnirs forward"),
            "{m:?}"
        );
        assert!(m.iter().any(|s| s == "chain inet cnirs portmap"), "{m:?}");
        // forward's rules + every other chain of inet cnirs (NetworkPolicy's three included).
        let chains = nftplan::skeleton::CHAINS
            .iter()
            .filter(|c| c.family == nftplan::schema::Family::Inet)
            .count();
        assert_eq!(m.len(), chains, "{m:?}");
        assert!(m.iter().any(|s| s == "chain inet cnirs netpol"), "{m:?}");
    }
}
