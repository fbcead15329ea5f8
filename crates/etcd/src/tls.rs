//! TLS to etcd: a CA that verifies the members' certificates and, for members started with
//! `--client-cert-auth`, this client's certificate and key. PEM files, parsed by
//! `rustls-pki-types`, checked by building the rustls client config once (a key that does
//! not match its certificate is refused here), all before anything is sent: a bad file is a
//! config error of the caller, never a failure halfway through an ADD.
//!
//! Crypto is rustls with the ring provider (ECDSA P-256/P-384, Ed25519 and RSA
//! certificates; TLS 1.2 and 1.3). No system roots: etcd clusters use their own CA.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// Which of the three files a problem is about (callers name it with their own key:
/// `ipam.etcdCACertFile`, `--etcd-cafile`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA bundle that verifies the members.
    Ca,
    /// This client's certificate (chain).
    Cert,
    /// This client's private key.
    Key,
}

impl TlsFile {
    /// The key naming this file in a conflist's `ipam` section (etcd-ipam, overlay).
    pub fn conf_key(self) -> &'static str {
        match self {
            TlsFile::Ca => "etcdCACertFile",
            TlsFile::Cert => "etcdCertFile",
            TlsFile::Key => "etcdKeyFile",
        }
    }

    /// The command-line flag naming this file (`cnirs agent`, flannel's names).
    pub fn flag(self) -> &'static str {
        match self {
            TlsFile::Ca => "--etcd-cafile",
            TlsFile::Cert => "--etcd-certfile",
            TlsFile::Key => "--etcd-keyfile",
        }
    }

    /// What the file is, in words.
    pub fn noun(self) -> &'static str {
        match self {
            TlsFile::Ca => "CA file",
            TlsFile::Cert => "client certificate file",
            TlsFile::Key => "client key file",
        }
    }

    /// The environment variable standing in for the flag.
    pub fn env(self) -> &'static str {
        match self {
            TlsFile::Ca => "CNIRS_ETCD_CAFILE",
            TlsFile::Cert => "CNIRS_ETCD_CERTFILE",
            TlsFile::Key => "CNIRS_ETCD_KEYFILE",
        }
    }
}

/// Where the TLS material is, as configured (all optional; see [`Tls::for_endpoints`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    fn path(&self, which: TlsFile) -> Option<&Path> {
        match which {
            TlsFile::Ca => self.ca.as_deref(),
            TlsFile::Cert => self.cert.as_deref(),
            TlsFile::Key => self.key.as_deref(),
        }
    }
}

/// A TLS setup that cannot work; [`TlsSetupError::file`] says which setting to name.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("https:// endpoints need a CA file to verify the etcd members")]
    NoCa,
    #[error("the {} is given without the {}: give both or neither", have.noun(), missing.noun())]
    Half { have: TlsFile, missing: TlsFile },
    #[error("{endpoint} is plain http:// but TLS files are set: use https:// (or drop the TLS settings)")]
    Plaintext { endpoint: String },
    #[error("http:// and https:// endpoints mixed ({http} and {https}): one cluster speaks one")]
    MixedSchemes { http: String, https: String },
    #[error("{path}: {problem}")]
    File {
        which: TlsFile,
        path: PathBuf,
        problem: String,
    },
}

impl TlsSetupError {
    /// The file setting the problem is about; `None` for the endpoints.
    pub fn file(&self) -> Option<TlsFile> {
        match self {
            TlsSetupError::NoCa => Some(TlsFile::Ca),
            TlsSetupError::Half { missing, .. } => Some(*missing),
            TlsSetupError::File { which, .. } => Some(*which),
            TlsSetupError::Plaintext { .. } | TlsSetupError::MixedSchemes { .. } => None,
        }
    }
}

/// Loaded and checked TLS material, ready for the HTTP agent. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    roots: Vec<Certificate<'static>>,
    client: Option<ClientCert>,
    provider: Arc<CryptoProvider>,
    /// For messages: the files it came from.
    paths: TlsPaths,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Tls").field("paths", &self.paths).finish()
    }
}

/// Two setups are the same when they come from the same files.
impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.paths == other.paths
    }
}

impl Eq for Tls {}

impl Tls {
    /// The TLS a client of `endpoints` needs given `paths`: `None` for `http://` endpoints
    /// and no files; the loaded material for `https://` endpoints. Refused: `https://` without
    /// a CA, a certificate without its key (or the reverse), `http://` with any TLS file, both
    /// schemes in one list, and any file that cannot be read or parsed.
    pub fn for_endpoints(
        endpoints: &[String],
        paths: &TlsPaths,
    ) -> Result<Option<Tls>, TlsSetupError> {
        let http = endpoints.iter().find(|e| e.starts_with("http://"));
        let https = endpoints.iter().find(|e| e.starts_with("https://"));
        match (http, https) {
            (Some(h), Some(s)) => {
                return Err(TlsSetupError::MixedSchemes {
                    http: h.clone(),
                    https: s.clone(),
                })
            }
            (Some(h), None) if !paths.is_empty() => {
                return Err(TlsSetupError::Plaintext {
                    endpoint: h.clone(),
                })
            }
            (_, None) => return Ok(None),
            (None, Some(_)) => {}
        }
        Tls::load(paths).map(Some)
    }

    /// Reads and checks the files: a CA (required), and a certificate with its key (both or
    /// neither).
    pub fn load(paths: &TlsPaths) -> Result<Tls, TlsSetupError> {
        let ca = paths.ca.as_deref().ok_or(TlsSetupError::NoCa)?;
        match (&paths.cert, &paths.key) {
            (Some(_), None) => {
                return Err(TlsSetupError::Half {
                    have: TlsFile::Cert,
                    missing: TlsFile::Key,
                })
            }
            (None, Some(_)) => {
                return Err(TlsSetupError::Half {
                    have: TlsFile::Key,
                    missing: TlsFile::Cert,
                })
            }
            _ => {}
        }
        let provider = Arc::new(provider());
        let bad = |which: TlsFile, problem: String| TlsSetupError::File {
            which,
            path: paths.path(which).map(Path::to_path_buf).unwrap_or_default(),
            problem,
        };

        let ca_certs = read_certs(TlsFile::Ca, ca)?;
        let mut store = RootCertStore::empty();
        for c in &ca_certs {
            store
                .add(c.clone())
                .map_err(|e| bad(TlsFile::Ca, format!("not a usable CA certificate: {e}")))?;
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(TlsFile::Ca, format!("TLS setup: {e}")))?
            .with_root_certificates(store);

        let client = match (&paths.cert, &paths.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(TlsFile::Cert, cert)?;
                let bytes = read(TlsFile::Key, key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    bad(
                        TlsFile::Key,
                        format!("no PEM private key (PKCS#8, SEC1 or PKCS#1) in it: {e}"),
                    )
                })?;
                // What the HTTP agent will do on its first connection, done now: an unsupported
                // key or one that does not belong to the certificate is refused here.
                builder
                    .with_client_auth_cert(chain.clone(), key_der.clone_key())
                    .map_err(|e| {
                        bad(
                            TlsFile::Key,
                            format!(
                                "cannot be used with the certificate {}: {e}",
                                cert.display()
                            ),
                        )
                    })?;
                let key = PrivateKey::from_pem(&bytes)
                    .map_err(|e| bad(TlsFile::Key, format!("unreadable private key: {e}")))?;
                let chain: Vec<Certificate<'static>> = chain
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect();
                Some(ClientCert::new_with_certs(&chain, key))
            }
            _ => None,
        };
        Ok(Tls {
            roots: ca_certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
            client,
            provider,
            paths: paths.clone(),
        })
    }

    /// Whether a client certificate is configured.
    pub fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    /// The files it came from.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    pub(crate) fn ureq_config(&self) -> TlsConfig {
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(self.provider.clone())
            .root_certs(RootCerts::new_with_certs(&self.roots))
            .client_cert(self.client.clone())
            .build()
    }
}

/// rustls with ring, not aws-lc-rs: a plain cargo build (no cmake) and a faster one. rustls
/// 0.23.48 deprecates it for lacking post-quantum key exchange, which etcd 3.4 (Go's TLS of its
/// time) does not offer anyway.
///
/// Key exchange X25519 first, then P-256: the provider's default puts P-384 first, and the
/// client's first key share is then a P-384 one (0.5 ms to make here, more for Go's P-384 on
/// the member). Measured against etcd 3.4.23 on loopback: a full handshake with a client
/// certificate takes 2.7 ms with the default order and 0.5 ms with this one, and every CNI
/// call pays one per process that talks to etcd.
fn provider() -> CryptoProvider {
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
    ];
    p
}

fn read(which: TlsFile, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| TlsSetupError::File {
        which,
        path: path.to_path_buf(),
        problem: format!("cannot read it: {e}"),
    })
}

fn read_certs(which: TlsFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = read(which, path)?;
    let bad = |problem: String| TlsSetupError::File {
        which,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

/// A TLS problem in a conflist's `ipam` keys: the key at fault (`etcdCACertFile`, ...,
/// `etcdEndpoints`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfTlsError {
    pub key: &'static str,
    pub message: String,
}

/// TLS from a conflist's `ipam` keys (`etcdCACertFile`, `etcdCertFile`, `etcdKeyFile`, as
/// given, `None` or empty when absent), read and checked against the endpoints' scheme:
/// shared by etcd-ipam and the overlay plugin, which read the same keys. Paths must be
/// absolute (a plugin's working directory is the runtime's business).
pub fn tls_from_conf(
    endpoints: &[String],
    files: [Option<&str>; 3],
) -> Result<Option<Tls>, ConfTlsError> {
    let mut paths = TlsPaths::default();
    for (file, value) in [TlsFile::Ca, TlsFile::Cert, TlsFile::Key]
        .into_iter()
        .zip(files)
    {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        let p = PathBuf::from(v);
        if !p.is_absolute() {
            return Err(ConfTlsError {
                key: file.conf_key(),
                message: format!("{v:?}: want an absolute path"),
            });
        }
        match file {
            TlsFile::Ca => paths.ca = Some(p),
            TlsFile::Cert => paths.cert = Some(p),
            TlsFile::Key => paths.key = Some(p),
        }
    }
    Tls::for_endpoints(endpoints, &paths).map_err(|e| ConfTlsError {
        key: e.file().map_or("etcdEndpoints", TlsFile::conf_key),
        message: e.to_string(),
    })
}

/// The TLS failure inside a transport error, if that is what it is: a certificate the CA does
/// not verify, or an alert from the member (our certificate refused, or none sent:
/// `with_cert` says which).
pub(crate) fn tls_failure(e: &ureq::Error, with_cert: bool) -> Option<(TlsFile, String)> {
    let rustls_err = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    use rustls::{AlertDescription as A, Error as R};
    let file = match rustls_err {
        R::InvalidCertificate(_) => TlsFile::Ca,
        _ => TlsFile::Cert,
    };
    let hint = match rustls_err {
        R::InvalidCertificate(_) => {
            " (the member's certificate is not signed by the configured CA, or does not name \
             the address used)"
        }
        R::AlertReceived(
            A::CertificateRequired | A::HandshakeFailure | A::BadCertificate | A::UnknownCA,
        ) if !with_cert => {
            " (the member requires a client certificate and none is configured: set the \
             certificate and key files)"
        }
        R::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => {
            " (the member refused this client's certificate: not signed by its trusted CA, \
             expired, or not for client authentication)"
        }
        _ => "",
    };
    Some((file, format!("{rustls_err}{hint}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scheme_and_file_combinations_are_checked_before_reading_anything() {
        let none = TlsPaths::default();
        assert!(Tls::for_endpoints(&eps(&["http://a:1"]), &none)
            .unwrap()
            .is_none());
        let e = Tls::for_endpoints(&eps(&["https://a:1"]), &none).unwrap_err();
        assert!(matches!(e, TlsSetupError::NoCa) && e.file() == Some(TlsFile::Ca));
        let ca_only = TlsPaths {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsPaths::default()
        };
        let e = Tls::for_endpoints(&eps(&["http://a:1"]), &ca_only).unwrap_err();
        assert!(matches!(e, TlsSetupError::Plaintext { .. }) && e.file().is_none());
        let e = Tls::for_endpoints(&eps(&["http://a:1", "https://b:1"]), &ca_only).unwrap_err();
        assert!(matches!(e, TlsSetupError::MixedSchemes { .. }), "{e}");
        let cert_only = TlsPaths {
            cert: Some("/x/c.pem".into()),
            ..ca_only.clone()
        };
        let e = Tls::for_endpoints(&eps(&["https://a:1"]), &cert_only).unwrap_err();
        assert_eq!(e.file(), Some(TlsFile::Key), "{e}");
        let e = Tls::for_endpoints(&eps(&["https://a:1"]), &ca_only).unwrap_err();
        assert_eq!(e.file(), Some(TlsFile::Ca));
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_file_without_pem_is_named_with_the_problem() {
        let dir = std::env::temp_dir().join(format!("etcd-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = Tls::load(&TlsPaths {
            ca: Some(junk.clone()),
            ..TlsPaths::default()
        })
        .unwrap_err();
        assert_eq!(e.file(), Some(TlsFile::Ca));
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
