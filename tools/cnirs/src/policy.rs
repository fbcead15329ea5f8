//! `cnirs policy apply|delete -f FILE`, `cnirs policy ls`: Kubernetes NetworkPolicy on this
//! host (see docs/netpol.md). Objects are validated as the API server does (a file with one
//! invalid object changes nothing) and take effect at once: one nftables transaction.

use std::{io::Read, process::ExitCode};

use netpol::{parse, store, PolicyError, Store};

fn read(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    log::error!("{e}");
    ExitCode::from(1)
}

/// `apply` (`delete`: false) or `delete` the objects of `file` (`-`: stdin).
pub fn change(file: &str, delete: bool) -> ExitCode {
    let text = match read(file) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let run = || -> Result<String, PolicyError> {
        let objs = parse(&text)?;
        let store = Store::open()?;
        let (added, removed) = if delete {
            store.delete(&objs)?
        } else {
            store.apply(&objs)?
        };
        let keys: Vec<String> = objs.iter().map(|o| o.key()).collect();
        Ok(format!(
            "{} {} ({} element(s) added, {} removed)",
            if delete { "deleted" } else { "applied" },
            keys.join(", "),
            added,
            removed
        ))
    };
    match run() {
        Ok(msg) => {
            log::info!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// What is in force: every policy, its types and the pods it selects.
pub fn ls() -> ExitCode {
    let run = || -> Result<String, PolicyError> {
        let s = Store::open()?;
        let w = s.world()?;
        Ok(store::listing(&w, &netpol::compile(&w)))
    };
    match run() {
        Ok(text) => {
            use std::io::Write;
            match std::io::stdout().write_all(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Err(e) => fail(e),
    }
}
