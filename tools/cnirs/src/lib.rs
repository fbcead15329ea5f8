//! `cnirs`, the suite's admin tool: one module per subcommand, `main` only dispatches.
//!
//! ```text
//! cnirs reconcile [--check]   rebuild table inet cnirs from the plugins' state (once)
//! cnirs watch                 stay in the foreground, repair the table whenever it goes
//! ```
//! Logs go to stderr (the journal under systemd); `CNIRS_LOG` sets the level (default `info`).
//! Nothing is written to stdout.

use std::{io::Write, process::ExitCode};

pub mod logging;
pub mod reconcile;
pub mod watch;

const USAGE: &str = "usage: cnirs <command> [args]

Admin tool of the cni-rs plugins, for the network namespace it runs in
(`ip netns exec NS cnirs ...` for another one).

commands:
  reconcile [--check]   rebuild table inet cnirs from the plugins' state
                        (--check: report what is missing, change nothing)
  watch                 foreground: repair the table within milliseconds whenever a
                        flush, a table delete or a ruleset reload removes it
  help                  this text

CNIRS_LOG=error|warn|info|debug sets the log level (default info); CNIRS_RUN_DIR the state
root (default /run/cni-rs); CNIRS_NFT the nft binary.
";

/// Dispatch `args` (without the program name) to a subcommand.
pub fn main(args: &[String]) -> ExitCode {
    let Some((cmd, rest)) = args.split_first() else {
        let _ = std::io::stderr().write_all(USAGE.as_bytes());
        return ExitCode::from(2);
    };
    logging::init(&format!("cnirs {cmd}"));
    match cmd.as_str() {
        "reconcile" => reconcile::run(rest),
        "watch" => watch::run(rest),
        "help" | "-h" | "--help" => {
            let _ = std::io::stderr().write_all(USAGE.as_bytes());
            ExitCode::SUCCESS
        }
        other => {
            log::error!("unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
