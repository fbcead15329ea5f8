#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&host_device_plugin::HostDevice))
}
