//! `cnirs-install`: put the suite on a host from inside a container, as the install-cni
//! init containers of flannel and Calico do.
//!
//! ```text
//! cnirs-install [--src DIR] [--dest DIR] [--conflist FILE --conf-dir DIR [--conf-name NAME]]
//! ```
//!
//! Copies every regular file of `--src` (default `/opt/cni/bin`, the image's) into `--dest`
//! (default `/host/opt/cni/bin`, the host's mounted plugin dir), then the conflist, if given,
//! into `--conf-dir` (default name: the file's own). Each file is written beside its target
//! under a temporary name, synced, and renamed over it: a runtime that runs a plugin at that
//! moment runs the old or the new binary, never half of one. Files of the destination that the
//! source does not have (another suite's plugins) are left alone.
//!
//! It runs as the entrypoint of a `FROM scratch` image: statically linked, std only.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, PartialEq, Eq)]
struct Opts {
    src: PathBuf,
    dest: PathBuf,
    conflist: Option<PathBuf>,
    conf_dir: PathBuf,
    conf_name: Option<String>,
}

const USAGE: &str = "usage: cnirs-install [--src DIR] [--dest DIR] \
[--conflist FILE [--conf-dir DIR] [--conf-name NAME]]";

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        src: "/opt/cni/bin".into(),
        dest: "/host/opt/cni/bin".into(),
        conflist: None,
        conf_dir: "/host/etc/cni/net.d".into(),
        conf_name: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "--src" => o.src = value()?.into(),
            "--dest" => o.dest = value()?.into(),
            "--conflist" => o.conflist = Some(value()?.into()),
            "--conf-dir" => o.conf_dir = value()?.into(),
            "--conf-name" => {
                let n = value()?;
                if n.contains('/') || n.starts_with('.') {
                    return Err(format!("--conf-name {n:?}: a plain file name"));
                }
                o.conf_name = Some(n);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// Write `data` as `dir/name` atomically (temp file in `dir`, fsync, rename), with `mode`.
fn install_bytes(data: &[u8], dir: &Path, name: &str, mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.cnirs-install.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The regular files of `src`, sorted by name.
fn sources(src: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(src)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = e.file_name().to_str() {
            if !name.starts_with('.') {
                out.push((name.to_string(), e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn run(o: &Opts) -> Result<Vec<String>, String> {
    let files = sources(&o.src).map_err(|e| format!("reading {}: {e}", o.src.display()))?;
    if files.is_empty() {
        return Err(format!("{}: no files to install", o.src.display()));
    }
    fs::create_dir_all(&o.dest).map_err(|e| format!("creating {}: {e}", o.dest.display()))?;
    let mut done = Vec::new();
    for (name, path) in &files {
        let data = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        install_bytes(&data, &o.dest, name, 0o755)
            .map_err(|e| format!("installing {}/{name}: {e}", o.dest.display()))?;
        done.push(o.dest.join(name).display().to_string());
    }
    if let Some(conf) = &o.conflist {
        let name = match &o.conf_name {
            Some(n) => n.clone(),
            None => conf
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .ok_or_else(|| format!("{}: no file name", conf.display()))?,
        };
        let data = fs::read(conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
        fs::create_dir_all(&o.conf_dir)
            .map_err(|e| format!("creating {}: {e}", o.conf_dir.display()))?;
        install_bytes(&data, &o.conf_dir, &name, 0o644)
            .map_err(|e| format!("installing {}/{name}: {e}", o.conf_dir.display()))?;
        done.push(o.conf_dir.join(&name).display().to_string());
    }
    Ok(done)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = parse(&args).and_then(|o| run(&o));
    match outcome {
        Ok(done) => {
            for d in done {
                eprintln!("cnirs-install: installed {d}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cnirs-install: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
