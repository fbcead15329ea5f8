#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&host_local::HostLocal))
}
