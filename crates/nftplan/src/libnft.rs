//! libnftables in-process: the batches `nlbatch` does not encode (the skeleton, rules) and
//! the `nft -j` listings, run by the same library the `nft` program is a thin wrapper of,
//! without starting that program (docs/performance.md has what that saves).
//!
//! The library is opened with `dlopen` on first use: no link-time dependency, and a host
//! without `libnftables.so.1` answers `None`, so the caller spawns `nft` as before. One context
//! per call, calls serialised (libnftables keeps some global state), output and errors
//! buffered: nothing reaches our stdout (the CNI result) or stderr.
//!
//! `make build` links the per-pod plugins statically (glibc `crt-static`). glibc's `dlopen`
//! from a static binary loads its own copy of `libc.so.6` beside the linked one, which glibc
//! supports only when both come from the same glibc build; so a static binary opens the library
//! only when the banner of the host's `libc.so.6` ("GNU C Library (Debian GLIBC 2.36-9+deb12u14)
//! stable release version 2.36.") is the one linked into it, else it spawns `nft` (binaries
//! copied to another host, or a glibc upgraded since the build).

use std::{
    ffi::{c_char, c_int, c_uint, c_void, CStr, CString},
    sync::{Mutex, OnceLock},
};

/// `NFT_CTX_OUTPUT_HANDLE` (`nft -a`).
const OUTPUT_HANDLE: c_uint = 1 << 3;
/// `NFT_CTX_OUTPUT_JSON` (`nft -j`).
const OUTPUT_JSON: c_uint = 1 << 4;

type Ctx = *mut c_void;

struct Lib {
    ctx_new: unsafe extern "C" fn(u32) -> Ctx,
    ctx_free: unsafe extern "C" fn(Ctx),
    buffer_output: unsafe extern "C" fn(Ctx) -> c_int,
    buffer_error: unsafe extern "C" fn(Ctx) -> c_int,
    output_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    error_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    set_output_flags: unsafe extern "C" fn(Ctx, c_uint),
    run: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
    lock: Mutex<()>,
}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();

fn lib() -> Option<&'static Lib> {
    LIB.get_or_init(load).as_ref()
}

/// The glibc banner in `bytes` (an executable or `libc.so.6`): a C string of its own (a NUL
/// before it), up to its NUL. The needle is put together at run time: as one literal it would
/// sit in this very executable, among other string literals, and be found first.
fn glibc_banner(bytes: &[u8]) -> Option<&[u8]> {
    let needle = format!("GNU C {}y (", "Librar");
    memchr::memmem::find_iter(bytes, needle.as_bytes())
        .filter(|at| *at > 0 && bytes[at - 1] == 0)
        .find_map(|at| {
            let rest = &bytes[at..];
            Some(&rest[..memchr::memchr(0, rest)?])
        })
}

/// A static binary: is the host's `libc.so.6` (where the dynamic loader finds it on the usual
/// layouts) the very glibc build linked into this executable?
fn same_glibc_build() -> bool {
    let Ok(own) = std::fs::read("/proc/self/exe") else {
        return false;
    };
    let arch = std::env::consts::ARCH;
    let host = [
        format!("/lib/{arch}-linux-gnu/libc.so.6"),
        format!("/usr/lib/{arch}-linux-gnu/libc.so.6"),
        "/lib64/libc.so.6".to_owned(),
        "/usr/lib64/libc.so.6".to_owned(),
        "/usr/lib/libc.so.6".to_owned(),
        "/lib/libc.so.6".to_owned(),
    ]
    .into_iter()
    .find_map(|p| std::fs::read(p).ok());
    let same = match (glibc_banner(&own), host.as_deref().and_then(glibc_banner)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    if !same {
        log::debug!("static binary and host glibc differ: spawning nft");
    }
    same
}

fn load() -> Option<Lib> {
    if cfg!(target_feature = "crt-static") && !same_glibc_build() {
        return None;
    }
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is never closed (the
    // function pointers taken from it live as long as the process).
    let h = unsafe {
        libc::dlopen(
            c"libnftables.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if h.is_null() {
        log::debug!("libnftables.so.1 not loadable: spawning nft");
        return None;
    }
    let sym = |name: &CStr| {
        // SAFETY: `h` is a live handle, `name` NUL-terminated.
        let p = unsafe { libc::dlsym(h, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    // SAFETY: each transmute turns a symbol of libnftables' public API
    // (nftables/libnftables.h, stable since 0.9) into the function pointer type that repeats
    // its C signature.
    let lib = unsafe {
        Lib {
            ctx_new: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> Ctx>(sym(
                c"nft_ctx_new",
            )?),
            ctx_free: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx)>(sym(
                c"nft_ctx_free",
            )?),
            buffer_output: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx) -> c_int>(
                sym(c"nft_ctx_buffer_output")?,
            ),
            buffer_error: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx) -> c_int>(
                sym(c"nft_ctx_buffer_error")?,
            ),
            output_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx) -> *const c_char,
            >(sym(c"nft_ctx_get_output_buffer")?),
            error_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx) -> *const c_char,
            >(sym(c"nft_ctx_get_error_buffer")?),
            set_output_flags: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx, c_uint)>(
                sym(c"nft_ctx_output_set_flags")?,
            ),
            run: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
            >(sym(c"nft_run_cmd_from_buffer")?),
            lock: Mutex::new(()),
        }
    };
    log::debug!("libnftables.so.1 loaded: the skeleton, rules and listings run in-process");
    Some(lib)
}

/// What one run answered: success with the output text, or failure with the error text.
pub(crate) type Outcome = Result<String, String>;

/// Run `script` (nft syntax) in this thread's network namespace with output flags `flags`.
/// `None` when the library is not there or cannot run it here (then spawn `nft`).
fn run_with(script: &str, flags: c_uint) -> Option<Outcome> {
    let lib = lib()?;
    let text = CString::new(script).ok()?;
    // libnftables exit()s when it cannot open its netlink socket; make sure it can, so that
    // such a failure stays ours to report (by spawning nft, which reports it).
    netbase::nlwire::Socket::open(libc::NETLINK_NETFILTER).ok()?;
    let _serial = lib.lock.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: a context is created, used and freed within this block by this thread only
    // (calls serialised by `lib.lock`); the buffers read are owned by the context and copied
    // before it is freed; `text` outlives the call.
    unsafe {
        let ctx = (lib.ctx_new)(0);
        if ctx.is_null() {
            return None;
        }
        if (lib.buffer_output)(ctx) != 0 || (lib.buffer_error)(ctx) != 0 {
            (lib.ctx_free)(ctx);
            return None;
        }
        (lib.set_output_flags)(ctx, flags);
        let rc = (lib.run)(ctx, text.as_ptr());
        let read = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let out = read((lib.output_buffer)(ctx));
        let err = read((lib.error_buffer)(ctx));
        (lib.ctx_free)(ctx);
        Some(if rc == 0 {
            Ok(out)
        } else {
            Err(err.trim_end().to_owned())
        })
    }
}

/// `nft -f -` of `script`: `Some(Ok(()))`, `Some(Err(error text))`, or `None` (not here).
pub(crate) fn apply(script: &str) -> Option<Result<(), String>> {
    run_with(script, 0).map(|r| r.map(drop))
}

/// `nft -j ARGS` (`-a` first allowed): `Some(Some(json))`, `Some(None)` when nft fails, or
/// `None` when the library is not there or the arguments are more than plain words.
pub(crate) fn query(args: &[&str]) -> Option<Option<String>> {
    let (flags, words) = match args.split_first() {
        Some((&"-a", rest)) => (OUTPUT_JSON | OUTPUT_HANDLE, rest),
        _ => (OUTPUT_JSON, args),
    };
    let plain = |w: &&str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !w.starts_with('-')
    };
    if words.is_empty() || !words.iter().all(plain) {
        return None;
    }
    run_with(&words.join(" "), flags).map(Result::ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_banners_are_found() {
        let so = b"\x7fELF..GNU C Library (not this).\0GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n\0x";
        assert_eq!(
            glibc_banner(so),
            Some(
                &b"GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n"[..]
            )
        );
        assert_eq!(glibc_banner(b"no banner"), None);
        assert_eq!(glibc_banner(b"GNU C Library (unterminated"), None);
    }

    #[test]
    fn only_plain_listings_are_taken() {
        // Refused before the library is touched: options other than -a, quoting, empty.
        assert!(query(&["-n", "list", "ruleset"]).is_none());
        assert!(query(&["list", "table", "inet", "a;flush ruleset"]).is_none());
        assert!(query(&["-a"]).is_none());
        assert!(query(&[]).is_none());
        assert!(apply("add table inet x\0").is_none(), "NUL in the script");
    }
}
