//! `dhcp`: the CNI plugin, or with the argument `daemon`, the lease daemon.

#[allow(clippy::exit)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("daemon") {
        cni_core::logging::init("dhcp-daemon");
        std::process::exit(dhcp::daemon::main(&args[1..]));
    }
    std::process::exit(cni_core::skel::run(&dhcp::Dhcp))
}
