//! stderr logging, one line per record, prefixed with the command.

use std::{io::Write, sync::OnceLock};

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLog {
    prefix: OnceLock<String>,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let prefix = self.prefix.get().map(String::as_str).unwrap_or("cnirs");
            let line = format!("{prefix} {} {}\n", r.level(), r.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog {
    prefix: OnceLock::new(),
};

/// Log to stderr at `$CNIRS_LOG` (default info), lines prefixed with `prefix`.
pub fn init(prefix: &str) {
    let level = match std::env::var("CNIRS_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    let _ = LOGGER.prefix.set(prefix.to_owned());
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
