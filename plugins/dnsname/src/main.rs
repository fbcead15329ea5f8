//! `dnsname`: the CNI plugin, or with `--serve <dir>` the resolver of one network.

#[allow(clippy::exit)]
fn main() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(dnsname_plugin::daemon::SERVE_FLAG)) {
        cni_core::logging::init("dnsname-serve");
        let code = match args.next() {
            Some(dir) => match dnsname_plugin::serve::serve(std::path::Path::new(&dir)) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    1
                }
            },
            None => {
                log::error!("usage: dnsname --serve <dir>");
                2
            }
        };
        std::process::exit(code);
    }
    std::process::exit(cni_core::skel::run(&dnsname_plugin::DnsName))
}
