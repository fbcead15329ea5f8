//! The CNI contract shared by every plugin of the suite.
//!
//! - [`skel`]: the dispatcher (`CNI_*` env + stdin -> verb -> result/error on stdout);
//! - [`args`]: the environment, validated per command;
//! - [`conf`]: the common config keys and typed parsing with errors naming the field;
//! - [`gokeys`]: keys matched case-insensitively, as Go's `encoding/json` does;
//! - [`result`]: the ADD result in every spec version, with conversion both ways;
//! - [`error`]: `CniError` and its codes (spec 1-99, ours 100+);
//! - [`delegate`]: running the IPAM plugin found on `CNI_PATH`;
//! - [`version`]: the versions we speak and what each verb needs.
//!
//! Pure: nothing here needs root or touches the kernel.

pub mod args;
pub mod conf;
pub mod delegate;
pub mod error;
pub mod gokeys;
pub mod logging;
pub mod result;
pub mod skel;
pub mod version;

pub use args::{CniArgs, Command};
pub use conf::{Attachment, NetConf};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, Request};
pub use version::Version;
