#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&bridge_plugin::Bridge(
        bridge_plugin::Mode::Internal,
    )))
}
