#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&bandwidth_plugin::Bandwidth))
}
