//! A small `log` backend for short-lived plugin processes: stderr (the runtime captures it)
//! and, when `CNIRS_LOG_FILE` is set, that file too. `CNIRS_LOG` sets the level (default
//! `warn`). Never stdout: stdout belongs to the CNI result.

use std::{
    fs::OpenOptions,
    io::Write,
    sync::{Mutex, OnceLock},
};

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    plugin: String,
    file: Option<Mutex<std::fs::File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {} [{}] {}\n",
            self.plugin,
            r.level(),
            std::process::id(),
            r.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

fn level_from(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Install the logger once for a plugin (default level `warn`); later calls do nothing.
pub fn init(plugin: &'static str) {
    init_with_default(plugin, LevelFilter::Warn)
}

/// Install the logger once with `default` as the level when `CNIRS_LOG` is unset or not a
/// level (admin tools log their repairs at `info`).
pub fn init_with_default(plugin: &str, default: LevelFilter) {
    let level = std::env::var("CNIRS_LOG")
        .map(|s| level_from(&s).unwrap_or(default))
        .unwrap_or(default);
    let file = std::env::var_os("CNIRS_LOG_FILE").and_then(|p| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    let logger = LOGGER.get_or_init(|| Logger {
        plugin: plugin.to_owned(),
        file,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_are_case_insensitive_and_unknown_ones_fall_back() {
        assert_eq!(level_from("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(level_from("nonsense"), None);
        assert_eq!(level_from("warn"), Some(LevelFilter::Warn));
    }
}
