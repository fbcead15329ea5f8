#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&netpol_plugin::Netpol))
}
