//! The one side-effect seam: something that applies an nft script atomically.

use std::{
    collections::VecDeque,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use crate::NftError;

/// Applies one nft script as one transaction (`nft -f -`).
pub trait NftBackend: Send + Sync {
    /// Run `script`; Ok when nft exits 0.
    fn apply(&self, script: &str) -> Result<(), NftError>;

    /// Run `nft -j ARGS` (a listing) and return its JSON text; `None` when nft fails (e.g. the
    /// table or chain does not exist). Fakes answer `None`: no foreign tables.
    fn query(&self, _args: &[&str]) -> Result<Option<String>, NftError> {
        Ok(None)
    }

    /// Does table `inet cnirs` exist, and which one is it (its handle, never reused within a
    /// namespace)? One netlink request, no exec. Fakes and backends that run nft elsewhere
    /// answer [`TableProbe::Unknown`] (then nothing is checked).
    fn probe_table(&self) -> Result<TableProbe, NftError> {
        Ok(TableProbe::Unknown)
    }
}

/// What [`NftBackend::probe_table`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableProbe {
    /// This backend cannot tell.
    #[default]
    Unknown,
    /// No table `inet cnirs`.
    Missing,
    /// The table, with its handle.
    Present(u64),
}

impl<T: NftBackend + ?Sized> NftBackend for Arc<T> {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        (**self).apply(script)
    }

    fn query(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        (**self).query(args)
    }

    fn probe_table(&self) -> Result<TableProbe, NftError> {
        (**self).probe_table()
    }
}

/// The real backend: spawns `nft -f -`, script on stdin, stderr captured.
#[derive(Debug, Clone)]
pub struct NftCli {
    program: PathBuf,
    prefix: Vec<String>,
    /// Element batches go over nfnetlink in-process (see `nlbatch`), other scripts and the
    /// listings through libnftables in-process when it loads (see `libnft`): only when nft
    /// would run in this namespace and nobody chose the nft program (`$CNIRS_NFT`, tests'
    /// fakes).
    netlink: bool,
}

impl NftCli {
    /// `$CNIRS_NFT` if set, else `/usr/sbin/nft`, `/sbin/nft`, else `nft` from `PATH`.
    pub fn new() -> Self {
        let chosen = std::env::var_os("CNIRS_NFT").filter(|v| !v.is_empty());
        let netlink = chosen.is_none();
        let program = chosen
            .map(PathBuf::from)
            .or_else(|| {
                ["/usr/sbin/nft", "/sbin/nft"]
                    .iter()
                    .map(Path::new)
                    .find(|p| p.exists())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from("nft"));
        NftCli {
            program,
            prefix: Vec::new(),
            netlink,
        }
    }

    /// Run `program prefix... -f -` instead, e.g. `ip netns exec NS nft` in tests.
    pub fn with_command(program: impl Into<PathBuf>, prefix: &[&str]) -> Self {
        NftCli {
            program: program.into(),
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            netlink: false,
        }
    }
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli::new()
    }
}

impl NftBackend for NftCli {
    /// `nft -f - <<< script`
    fn apply(&self, script: &str) -> Result<(), NftError> {
        if self.netlink {
            if let Some(ops) = crate::nlbatch::parse(script) {
                return crate::nlbatch::apply(&ops).map_err(|source| NftError::Netlink {
                    what: "element batch",
                    source,
                });
            }
            // The rest (the skeleton, a reload) through libnftables in-process, if it is there.
            if let Some(outcome) = crate::libnft::apply(script) {
                return outcome.map_err(|stderr| NftError::Nft {
                    status: "libnftables: failed".to_owned(),
                    stderr,
                });
            }
        }
        let spawn_err = |source| NftError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(&self.prefix)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error (EPIPE: nft died early) shows up as the exit status below.
            if let Err(e) = stdin.write_all(script.as_bytes()) {
                log::debug!("writing the nft script: {e}");
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(());
        }
        Err(NftError::Nft {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
        })
    }

    /// `nft -j ARGS`, stdout captured (libnftables in-process when it can).
    fn query(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        if self.netlink {
            if let Some(answer) = crate::libnft::query(args) {
                return Ok(answer);
            }
        }
        let out = Command::new(&self.program)
            .args(&self.prefix)
            .arg("-j")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `NFT_MSG_GETTABLE inet cnirs` in this thread's netns; Unknown when nft runs elsewhere
    /// (a prefix such as `ip netns exec`).
    fn probe_table(&self) -> Result<TableProbe, NftError> {
        if !self.prefix.is_empty() {
            return Ok(TableProbe::Unknown);
        }
        let handle = crate::nfnl::Nfnl::open()
            .and_then(|mut s| s.table_handle(crate::nfnl::NFPROTO_INET, "cnirs"))
            .map_err(|source| NftError::Netlink {
                what: "get table inet cnirs",
                source,
            })?;
        Ok(handle.map_or(TableProbe::Missing, TableProbe::Present))
    }
}

/// In-tree fake: records every script; fails the calls that [`RecordingNft::fail_next`] queued.
#[derive(Debug, Default)]
pub struct RecordingNft {
    scripts: Mutex<Vec<String>>,
    failures: Mutex<VecDeque<bool>>,
    table: Mutex<TableProbe>,
}

impl RecordingNft {
    /// A fake whose calls all succeed.
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingNft::default())
    }

    /// Queue outcomes for the next calls: `true` = that call fails.
    pub fn fail_next(&self, outcomes: &[bool]) {
        if let Ok(mut q) = self.failures.lock() {
            q.extend(outcomes.iter().copied());
        }
    }

    /// Every script applied so far (failed ones included).
    pub fn scripts(&self) -> Vec<String> {
        self.scripts.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What [`NftBackend::probe_table`] answers from now on (default Unknown).
    pub fn set_table(&self, probe: TableProbe) {
        if let Ok(mut t) = self.table.lock() {
            *t = probe;
        }
    }

    /// Forget the recorded scripts.
    pub fn clear(&self) {
        if let Ok(mut s) = self.scripts.lock() {
            s.clear();
        }
    }
}

impl NftBackend for RecordingNft {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        if let Ok(mut s) = self.scripts.lock() {
            s.push(script.to_owned());
        }
        let fail = self
            .failures
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or(false);
        if fail {
            return Err(NftError::Nft {
                status: "exit status: 1".to_owned(),
                stderr: "fake failure".to_owned(),
            });
        }
        Ok(())
    }

    fn probe_table(&self) -> Result<TableProbe, NftError> {
        Ok(self.table.lock().map(|t| *t).unwrap_or_default())
    }
}
