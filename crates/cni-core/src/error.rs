//! The CNI error: a code, a message and details, printed as JSON on stdout.
//!
//! Codes 1-99 come from the CNI spec; 100 and up are ours and are listed in the README.
//! Every error of every crate ends up here, mapped once at the plugin's edge.

use serde::{Deserialize, Serialize};

/// Error codes: the spec's well-known ones and the suite's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not one we support, or the verb needs a newer one.
    IncompatibleVersion,
    /// 2: a field the plugin does not support (used sparingly: unknown keys are ignored).
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure (files, pipes).
    Io,
    /// 6: the config or a result could not be decoded (not JSON, truncated).
    Decode,
    /// 7: the config decoded but a value is invalid; the message names the field.
    InvalidConfig,
    /// 11: try again later (a transient condition, e.g. a lock held too long).
    TryAgainLater,
    /// 50: the plugin is not available (STATUS): e.g. the address pool is exhausted.
    NotAvailable,
    /// 100: the kernel refused a netlink or sysctl operation.
    Kernel,
    /// 101: nftables refused a batch or the firewall state is inconsistent.
    Firewall,
    /// 102: a delegated plugin (IPAM) could not be run or gave no valid answer.
    Delegate,
    /// 103: the resource asked for is taken (address, host port, interface name).
    Conflict,
    /// 104: no address left in the configured ranges.
    AddressesExhausted,
    /// 105: the state the plugin was asked to check differs from what it set up.
    CheckFailed,
    /// Any other code, e.g. one passed up from a delegated plugin.
    Other(u32),
}

impl ErrorCode {
    /// The number on the wire.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::NotAvailable => 50,
            Self::Kernel => 100,
            Self::Firewall => 101,
            Self::Delegate => 102,
            Self::Conflict => 103,
            Self::AddressesExhausted => 104,
            Self::CheckFailed => 105,
            Self::Other(n) => n,
        }
    }

    /// The code for a number read from a delegated plugin's answer.
    pub fn from_u32(n: u32) -> Self {
        match n {
            1 => Self::IncompatibleVersion,
            2 => Self::UnsupportedField,
            3 => Self::UnknownContainer,
            4 => Self::InvalidEnvironment,
            5 => Self::Io,
            6 => Self::Decode,
            7 => Self::InvalidConfig,
            11 => Self::TryAgainLater,
            50 => Self::NotAvailable,
            100 => Self::Kernel,
            101 => Self::Firewall,
            102 => Self::Delegate,
            103 => Self::Conflict,
            104 => Self::AddressesExhausted,
            105 => Self::CheckFailed,
            n => Self::Other(n),
        }
    }
}

impl From<netbase::ErrorClass> for ErrorCode {
    fn from(c: netbase::ErrorClass) -> Self {
        use netbase::ErrorClass as C;
        match c {
            C::InvalidConfig => Self::InvalidConfig,
            C::InvalidEnvironment => Self::InvalidEnvironment,
            C::Conflict => Self::Conflict,
            C::Io => Self::Io,
            C::Kernel => Self::Kernel,
            C::Firewall => Self::Firewall,
            C::CheckFailed => Self::CheckFailed,
        }
    }
}

/// `msg: cause: cause...` of an error and its sources, skipping a cause whose text the
/// previous part already contains (many errors print their source inline).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if parts.last().is_none_or(|p| !p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// An error of a crate below the plugins (kernel, firewall) as a CNI error: the code from its
/// class, the message from its text, `details` from its causes and a hint.
pub fn from_classified(
    class: netbase::ErrorClass,
    e: &dyn std::error::Error,
    hint: Option<&str>,
) -> CniError {
    let mut details = Vec::new();
    if let Some(src) = e.source() {
        let c = chain(src);
        if !e.to_string().contains(&c) {
            details.push(c);
        }
    }
    if let Some(h) = hint {
        details.push(format!("hint: {h}"));
    }
    CniError::new(class.into(), e.to_string()).with_details(details.join("; "))
}

/// A lower crate's error (kernel, firewall) as a CNI error: [`from_classified`] with the class
/// and hint it gives itself.
pub fn from_lower<E: netbase::Classified>(e: &E) -> CniError {
    from_classified(e.class(), e, e.hint())
}

/// DEL and GC go on past failures: the first failure decides the code and message, every
/// further one is added to `details`.
pub fn combine(errors: Vec<CniError>) -> Result<(), CniError> {
    let mut it = errors.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    let rest: Vec<String> = it.map(|e| format!("also: {e}")).collect();
    if rest.is_empty() {
        return Err(first);
    }
    let mut details = Vec::new();
    if !first.details.is_empty() {
        details.push(first.details.clone());
    }
    details.extend(rest);
    Err(CniError::new(first.code, first.msg).with_details(details.join("; ")))
}

/// A CNI error as the spec prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 7 naming the field: `invalid config: ipam.ranges[0][0].subnet: ...`.
    pub fn config(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::InvalidConfig,
            format!("invalid config: {field}: {problem}"),
        )
    }

    /// Code 4 naming the variable.
    pub fn env(var: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidEnvironment, format!("{var}: {problem}"))
    }

    pub fn io(what: impl std::fmt::Display, err: &std::io::Error) -> Self {
        Self::new(ErrorCode::Io, format!("{what}: {err}"))
    }

    pub fn code(&self) -> u32 {
        self.code.as_u32()
    }

    /// The error of step `step` (1-based) of a plan, `command` being what the step matches:
    /// this error's code and message, and where it happened at the end of `details`.
    pub fn at_step(self, step: usize, command: &str) -> Self {
        let at = format!("at step {step}: {command}");
        let details = if self.details.is_empty() {
            at
        } else {
            format!("{}; {at}", self.details)
        };
        CniError::new(self.code, self.msg).with_details(details)
    }

    /// The JSON object printed on stdout.
    pub fn to_wire(&self, cni_version: &str) -> WireError {
        WireError {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.msg.clone(),
            details: if self.details.is_empty() {
                None
            } else {
                Some(self.details.clone())
            },
        }
    }
}

/// The error as it travels between plugins (stdout of a failing plugin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl From<WireError> for CniError {
    fn from(w: WireError) -> Self {
        Self {
            code: ErrorCode::from_u32(w.code),
            msg: w.msg,
            details: w.details.unwrap_or_default(),
        }
    }
}

/// A plugin's error enum of the common shape: `Cni(CniError)` (parsing, environment,
/// delegation: already a CNI error with its code) and one variant per lower crate whose errors
/// classify themselves ([`netbase::Classified`]: `netops::NetopsError`, `nftplan::NftError`),
/// each kept with its cause; `From` for each, and the plugin's one mapping to CNI codes,
/// `From<Enum> for CniError` ([`from_lower`]).
///
/// ```
/// # #[derive(Debug, thiserror::Error)] #[error("x")] pub struct KernelError;
/// # impl netbase::Classified for KernelError {
/// #     fn class(&self) -> netbase::ErrorClass { netbase::ErrorClass::Kernel }
/// # }
/// cni_core::plugin_error! {
///     /// The plugin's errors.
///     pub enum PortmapError {
///         Kernel(KernelError),
///     }
/// }
/// let e = cni_core::CniError::from(PortmapError::from(KernelError));
/// assert_eq!(e.code(), 100);
/// ```
#[macro_export]
macro_rules! plugin_error {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($var:ident($ty:ty)),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis enum $name {
            /// Parsing, environment or delegation: already a CNI error with its code.
            Cni($crate::CniError),
            $($var($ty),)*
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    Self::Cni(e) => ::std::fmt::Display::fmt(e, f),
                    $(Self::$var(e) => ::std::fmt::Display::fmt(e, f),)*
                }
            }
        }

        /// Transparent: each variant is its cause.
        impl ::std::error::Error for $name {
            fn source(&self) -> Option<&(dyn ::std::error::Error + 'static)> {
                match self {
                    Self::Cni(e) => ::std::error::Error::source(e),
                    $(Self::$var(e) => ::std::error::Error::source(e),)*
                }
            }
        }

        impl From<$crate::CniError> for $name {
            fn from(e: $crate::CniError) -> Self {
                Self::Cni(e)
            }
        }

        $(impl From<$ty> for $name {
            fn from(e: $ty) -> Self {
                Self::$var(e)
            }
        })*

        /// The one place this plugin's errors become CNI errors.
        impl From<$name> for $crate::CniError {
            fn from(e: $name) -> $crate::CniError {
                match e {
                    $name::Cni(c) => c,
                    $($name::$var(e) => $crate::error::from_lower(&e),)*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("link eth9 not found")]
    struct Lower(#[source] std::io::Error);

    impl netbase::Classified for Lower {
        fn class(&self) -> netbase::ErrorClass {
            netbase::ErrorClass::Kernel
        }
        fn hint(&self) -> Option<&'static str> {
            Some("is it there?")
        }
    }

    crate::plugin_error! {
        enum Test {
            Kernel(Lower),
        }
    }

    #[test]
    fn a_plugin_error_keeps_cni_codes_and_maps_lower_errors_by_class() {
        let c = CniError::from(Test::from(CniError::config("mtu", "too small")));
        assert_eq!(c.code(), 7);
        let e = Test::from(Lower(std::io::Error::from_raw_os_error(libc_enodev())));
        assert!(
            std::error::Error::source(&e).is_some(),
            "transparent: the cause is kept"
        );
        assert_eq!(e.to_string(), "link eth9 not found");
        let c = CniError::from(e);
        assert_eq!(c.code(), 100);
        assert!(c.details.contains("hint: is it there?"), "{}", c.details);
    }

    fn libc_enodev() -> i32 {
        19
    }

    #[test]
    fn a_failed_step_keeps_its_code_and_says_where_in_details() {
        let e = CniError::new(ErrorCode::Kernel, "m").with_details("cause");
        let s = e.at_step(3, "ip link set veth1 master cni0 up");
        assert_eq!((s.code(), s.msg.as_str()), (100, "m"));
        assert_eq!(
            s.details,
            "cause; at step 3: ip link set veth1 master cni0 up"
        );
        let bare = CniError::new(ErrorCode::Kernel, "m").at_step(1, "x");
        assert_eq!(bare.details, "at step 1: x");
    }

    #[test]
    fn codes_round_trip() {
        for n in [
            1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 104, 105, 999,
        ] {
            assert_eq!(ErrorCode::from_u32(n).as_u32(), n);
        }
    }

    #[test]
    fn combine_keeps_the_first_code_and_lists_the_others() {
        assert_eq!(combine(vec![]), Ok(()));
        let one = CniError::new(ErrorCode::Kernel, "a");
        assert_eq!(combine(vec![one.clone()]), Err(one.clone()));
        let e = combine(vec![one, CniError::new(ErrorCode::Firewall, "b")]).unwrap_err();
        assert_eq!((e.code(), e.details.as_str()), (100, "also: b"));
    }

    #[test]
    fn wire_omits_empty_details() {
        let e = CniError::config("ipam.subnet", "not a CIDR");
        let json = serde_json::to_string(&e.to_wire("1.0.0")).unwrap();
        assert_eq!(
            json,
            r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config: ipam.subnet: not a CIDR"}"#
        );
    }
}
