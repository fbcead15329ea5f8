//! The one side-effect seam: something that applies a [`Batch`] atomically. [`NftCli`] is the
//! real one (which way it reaches the kernel is its [`Engine`], chosen when it is built and
//! logged once per process); [`crate::FakeNft`] is the in-memory table for tests.

use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Once},
};

use netbase::Detacher;

use crate::{batch::Batch, NftError};

/// Applies one batch as one transaction.
pub trait NftBackend: Send + Sync {
    /// Run `batch`, all or nothing.
    fn apply(&self, batch: &Batch) -> Result<(), NftError>;

    /// Run `nft -j ARGS` (a listing) and return its JSON text; `None` when nft fails (e.g. the
    /// table or chain does not exist). The default: no listing (no foreign tables).
    fn query(&self, _args: &[&str]) -> Result<Option<String>, NftError> {
        Ok(None)
    }

    /// Does table `inet cnirs` exist, and which one is it (its handle, never reused within a
    /// namespace)? One netlink request, no exec. Backends that run nft elsewhere answer
    /// [`TableProbe::Unknown`] (then nothing is checked).
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
    fn apply(&self, batch: &Batch) -> Result<(), NftError> {
        (**self).apply(batch)
    }

    fn query(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        (**self).query(args)
    }

    fn probe_table(&self) -> Result<TableProbe, NftError> {
        (**self).probe_table()
    }
}

/// How [`NftCli`] reaches the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// `$CNIRS_NFT` unset: in this process, in this thread's netns. Batches of element
    /// changes, and batches of `get`s, over nfnetlink (encoded from the schema, no text); the
    /// rest (the skeleton, rules in the host's chains) and the listings through libnftables,
    /// or through `nft` (the program) when the library does not load (see `libnft.rs`).
    InProcess {
        /// The nft program for what libnftables cannot take.
        nft: PathBuf,
    },
    /// Every batch as text through `program prefix... -f -` and listings through
    /// `program prefix... -j`: `$CNIRS_NFT`, or [`NftCli::with_command`] (`ip netns exec NS
    /// nft` in tests).
    Program {
        /// The program.
        program: PathBuf,
        /// Arguments before nft's own.
        prefix: Vec<String>,
    },
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::InProcess { nft } => write!(
                f,
                "element batches over nfnetlink in-process; skeleton, rules and listings through \
                 libnftables in-process, else {}",
                nft.display()
            ),
            Engine::Program { program, prefix } => {
                write!(f, "every batch as text through {}", program.display())?;
                for p in prefix {
                    write!(f, " {p}")?;
                }
                f.write_str(" -f -")
            }
        }
    }
}

/// The real backend: applies batches to the kernel of this thread's network namespace, the
/// way its [`Engine`] says.
#[derive(Debug, Clone)]
pub struct NftCli {
    engine: Engine,
    /// Where the nfnetlink sockets' closes are parked (module `netbase::detach`).
    detach: Detacher,
}

static LOGGED: Once = Once::new();

impl NftCli {
    /// [`Engine::Program`] with `$CNIRS_NFT` if set, else [`Engine::InProcess`] with
    /// `/usr/sbin/nft`, `/sbin/nft`, else `nft` from `PATH` for what libnftables cannot take.
    pub fn new() -> Self {
        let engine = match std::env::var_os("CNIRS_NFT").filter(|v| !v.is_empty()) {
            Some(program) => Engine::Program {
                program: PathBuf::from(program),
                prefix: Vec::new(),
            },
            None => Engine::InProcess {
                nft: ["/usr/sbin/nft", "/sbin/nft"]
                    .iter()
                    .map(Path::new)
                    .find(|p| p.exists())
                    .map_or_else(|| PathBuf::from("nft"), Path::to_path_buf),
            },
        };
        NftCli::with_engine(engine)
    }

    /// Run `program prefix... -f -` instead, e.g. `ip netns exec NS nft` in tests.
    pub fn with_command(program: impl Into<PathBuf>, prefix: &[&str]) -> Self {
        NftCli::with_engine(Engine::Program {
            program: program.into(),
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// This engine; the first one built in a process is logged (debug).
    pub fn with_engine(engine: Engine) -> Self {
        LOGGED.call_once(|| log::debug!("nftables backend: {engine}"));
        NftCli {
            engine,
            detach: Detacher::immediate(),
        }
    }

    /// Park the close of its nfnetlink sockets with `detach` (the verb's: a close waits for
    /// nf_tables' destroy work after any deleting batch, see `netbase::detach`).
    pub fn with_detacher(mut self, detach: Detacher) -> Self {
        self.detach = detach;
        self
    }

    /// How this backend reaches the kernel.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `program prefix... ARGS` with `input` on stdin: `Err` when it cannot be run,
    /// `Ok(Ok(stdout))` when it exits 0, `Ok(Err(..))` with its stderr when it fails.
    fn program(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<Result<Vec<u8>, NftError>, NftError> {
        let (program, prefix): (&Path, &[String]) = match &self.engine {
            Engine::InProcess { nft } => (nft, &[]),
            Engine::Program { program, prefix } => (program, prefix),
        };
        let spawn_err = |source| NftError::Spawn {
            program: program.display().to_string(),
            source,
        };
        let mut child = Command::new(program)
            .args(prefix)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
            // A write error (EPIPE: nft died early) shows up as the exit status below.
            if let Err(e) = stdin.write_all(input.as_bytes()) {
                log::debug!("writing the nft script: {e}");
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(Ok(out.stdout));
        }
        Ok(Err(NftError::Nft {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
        }))
    }
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli::new()
    }
}

impl NftBackend for NftCli {
    fn apply(&self, batch: &Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Engine::InProcess { .. } = self.engine {
            if let Some(ops) = crate::nlbatch::plan(batch) {
                let ops = crate::nlbatch::coalesce(ops);
                return crate::nlbatch::apply(&ops, &self.detach).map_err(|source| {
                    NftError::Netlink {
                        what: "element batch",
                        source,
                    }
                });
            }
        }
        let text = batch.text();
        if let Engine::InProcess { .. } = self.engine {
            // The skeleton, rules: libnftables in-process, if it is there.
            if let Some(outcome) = crate::libnft::apply(&text) {
                return outcome.map_err(|stderr| NftError::Nft {
                    status: "libnftables: failed".to_owned(),
                    stderr,
                });
            }
        }
        self.program(&["-f", "-"], Some(&text))?.map(drop)
    }

    /// `nft -j ARGS`, stdout captured (libnftables in-process when it can).
    fn query(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        if let Engine::InProcess { .. } = self.engine {
            if let Some(answer) = crate::libnft::query(args) {
                return Ok(answer);
            }
        }
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        Ok(self
            .program(&all, None)?
            .ok()
            .map(|out| String::from_utf8_lossy(&out).into_owned()))
    }

    /// `NFT_MSG_GETTABLE inet cnirs` in this thread's netns; Unknown when nft runs elsewhere
    /// (a prefix such as `ip netns exec`).
    fn probe_table(&self) -> Result<TableProbe, NftError> {
        if let Engine::Program { prefix, .. } = &self.engine {
            if !prefix.is_empty() {
                return Ok(TableProbe::Unknown);
            }
        }
        let handle = crate::nfnl::Nfnl::open_with(&self.detach)
            .and_then(|mut s| s.table_handle(crate::nfnl::NFPROTO_INET, "cnirs"))
            .map_err(|source| NftError::Netlink {
                what: "get table inet cnirs",
                source,
            })?;
        Ok(handle.map_or(TableProbe::Missing, TableProbe::Present))
    }
}
